//! Reading the audit trail: query, export (streamed) and verify.
//!
//! Every node keeps the same committed, hash-chained audit log, so these calls may be served by any
//! node; they go through the same endpoint discovery as every call. Records arrive as
//! [`AuditRecord`]s, rebuilt exactly from the wire (hashes are lowercase hex there), so a record
//! received here hashes to what the cluster stored and [`crate::audit::verify`] can check it.
//!
//! An export survives a node going away mid-stream: it resumes on another node from the next
//! sequence number, so no record is skipped or repeated.

use std::time::Duration;

use futures::Stream;
use tonic::Code;

use super::{from_status, transient, Client, ClientError, ATTEMPT_TIMEOUT};
use crate::audit::{AuditFilter, AuditRecord};
use crate::proto;

/// Longest wait for the next record of a stream before the node is presumed gone (a dead
/// connection is noticed sooner, by the channel's HTTP/2 keepalives).
const RECORD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Times a stream is reopened after failing mid-way without delivering a record in between.
const STREAM_RETRIES: u32 = 3;

/// Longest a node may take to recompute its whole chain (millions of records take seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(600);

/// A record as the cluster sent it, rebuilt as an [`AuditRecord`] ([`crate::audit::wire`]); a
/// malformed one is DATA_LOSS.
pub fn audit_record_from_proto(p: proto::AuditRecord) -> Result<AuditRecord, ClientError> {
    let seq = p.seq;
    crate::audit::wire::from_proto(p).map_err(|what| ClientError::Server {
        code: Code::DataLoss,
        message: format!("the server sent a malformed audit record (seq {seq}): {what}"),
    })
}

/// State of an export between records.
struct Export {
    client: Client,
    /// The seq to ask for when (re)opening the stream: one past the last record delivered.
    next_seq: u64,
    stream: Option<tonic::Streaming<proto::AuditRecord>>,
    /// Reopens since the last record delivered.
    retries: u32,
    done: bool,
}

impl Export {
    async fn next(&mut self) -> Option<Result<AuditRecord, ClientError>> {
        if self.done {
            return None;
        }
        loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => match self.client.open_export(self.next_seq).await {
                    Ok(s) => self.stream.insert(s),
                    Err(e) => return self.fail(e),
                },
            };
            let failure = match tokio::time::timeout(RECORD_IDLE_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(p))) => {
                    return match audit_record_from_proto(p) {
                        Ok(r) => {
                            self.next_seq = r.seq.saturating_add(1);
                            self.retries = 0;
                            Some(Ok(r))
                        }
                        Err(e) => self.fail(e),
                    }
                }
                Ok(Ok(None)) => {
                    self.done = true;
                    return None;
                }
                Ok(Err(s)) if transient(s.code()) => s,
                Ok(Err(s)) => return self.fail(from_status(s)),
                Err(_) => tonic::Status::deadline_exceeded(format!(
                    "no audit record within {}s",
                    RECORD_IDLE_TIMEOUT.as_secs()
                )),
            };
            self.stream = None;
            self.retries += 1;
            if self.retries > STREAM_RETRIES {
                return self.fail(ClientError::Unavailable {
                    last: format!(
                        "the audit export broke off before seq {} ({})",
                        self.next_seq,
                        failure.message()
                    ),
                });
            }
        }
    }

    fn fail(&mut self, e: ClientError) -> Option<Result<AuditRecord, ClientError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl Client {
    /// Audit records matching `filter`, oldest first, at most `limit` (`None`: the server's default
    /// of 1000; it caps at 100,000). A filter whose `since` is after its `until` is
    /// [`ClientError::Invalid`] without a call.
    pub async fn query_audit(
        &self,
        filter: &AuditFilter,
        limit: Option<u32>,
    ) -> Result<Vec<AuditRecord>, ClientError> {
        filter
            .validate()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let req = proto::QueryAuditRequest {
            resource_prefix: filter.resource_prefix.clone().unwrap_or_default(),
            principal: filter.principal.clone().unwrap_or_default(),
            decision: filter
                .decision
                .map(|d| d.as_str().to_string())
                .unwrap_or_default(),
            since_ms: filter.since_ms.unwrap_or(0),
            until_ms: filter.until_ms.unwrap_or(0),
            limit: limit.unwrap_or(0),
            via_token: filter.via_token.clone().unwrap_or_default(),
        };
        let mut tries = 0;
        'query: loop {
            tries += 1;
            let mut stream = self
                .call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.query_audit(req).await }
                })
                .await?;
            let mut records = Vec::new();
            loop {
                let failure =
                    match tokio::time::timeout(RECORD_IDLE_TIMEOUT, stream.message()).await {
                        Ok(Ok(Some(p))) => {
                            records.push(audit_record_from_proto(p)?);
                            continue;
                        }
                        Ok(Ok(None)) => return Ok(records),
                        Ok(Err(s)) if transient(s.code()) => s.message().to_string(),
                        Ok(Err(s)) => return Err(from_status(s)),
                        Err(_) => "no audit record in time".to_string(),
                    };
                // A filtered query cannot resume by seq: start it again, elsewhere if need be.
                if tries > STREAM_RETRIES {
                    return Err(ClientError::Unavailable {
                        last: format!("the audit query broke off ({failure})"),
                    });
                }
                continue 'query;
            }
        }
    }

    /// Every audit record from `from_seq` (1 or 0: from the start) to the cluster's chain head when
    /// the export began, in order, streamed: memory stays bounded however long the trail is. If the
    /// serving node goes away mid-way the export resumes on another node from the next seq. The
    /// stream ends after an error.
    ///
    /// Write each record with [`AuditRecord::to_json_line`] to produce the file
    /// `warrant audit verify --file` checks.
    pub fn export_audit(
        &self,
        from_seq: u64,
    ) -> impl Stream<Item = Result<AuditRecord, ClientError>> + Send + 'static {
        let state = Export {
            client: self.clone(),
            next_seq: from_seq.max(1),
            stream: None,
            retries: 0,
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            state.next().await.map(|item| (item, state))
        })
    }

    async fn open_export(
        &self,
        from_seq: u64,
    ) -> Result<tonic::Streaming<proto::AuditRecord>, ClientError> {
        let req = proto::ExportAuditRequest { from_seq };
        self.call(
            self.inner.config.call_timeout,
            ATTEMPT_TIMEOUT,
            |mut c| async move { c.export_audit(req).await },
        )
        .await
    }

    /// Ask a node to recompute its stored hash chain and compare it with the replicated chain head:
    /// `ok`, or the first broken record and why. May take a while on a long trail (bounded by ten
    /// minutes per node).
    pub async fn verify_audit(&self) -> Result<proto::VerifyAuditResponse, ClientError> {
        self.call(
            self.inner.config.call_timeout + VERIFY_TIMEOUT,
            VERIFY_TIMEOUT,
            |mut c| async move { c.verify_audit(proto::VerifyAuditRequest {}).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::wire::to_proto;
    use crate::audit::{AuditChain, AuditDecision, AuditEntry};

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut chain = AuditChain::default();
        (0..n)
            .map(|i| {
                let decision = AuditDecision::ALL[i as usize % AuditDecision::ALL.len()];
                let entry = AuditEntry {
                    principal: format!("agent/a{i}"),
                    resource: "k8s/prod/payments".into(),
                    token: i,
                    intent: "scale up".into(),
                    labels: [
                        ("scale".to_string(), "up".to_string()),
                        ("env".to_string(), "prod".to_string()),
                    ]
                    .into(),
                    policies: vec!["p2".into(), "p1".into()],
                    approvers: vec!["human/ann".into(), "human/bob".into()],
                    via_token: if i % 2 == 0 {
                        String::new()
                    } else {
                        format!("tok{i}")
                    },
                    ..AuditEntry::new("acquire", decision)
                };
                chain.append(10 + i, 1_700_000_000_000 + i, entry)
            })
            .collect()
    }

    #[test]
    fn records_from_the_wire_are_rebuilt_exactly_and_keep_their_hash() {
        let records = chain(30);
        let back: Vec<AuditRecord> = records
            .iter()
            .map(|r| audit_record_from_proto(to_proto(r)).unwrap())
            .collect();
        assert_eq!(back, records);
        for r in &back {
            assert_eq!(r.compute_hash(), r.hash);
            // The export line is the same as one written from the stored record.
            let original = records.iter().find(|o| o.seq == r.seq).unwrap();
            assert_eq!(r.to_json_line(), original.to_json_line());
        }
        assert!(crate::audit::verify(back.into_iter().map(Ok)).is_ok());
    }

    #[test]
    fn a_malformed_hash_or_decision_from_the_wire_is_refused() {
        let r = &chain(1)[0];
        for edit in [
            |p: &mut proto::AuditRecord| p.hash = p.hash.to_uppercase(),
            |p: &mut proto::AuditRecord| p.prev_hash.truncate(10),
            |p: &mut proto::AuditRecord| p.decision = "Granted".into(),
            |p: &mut proto::AuditRecord| p.decision = "maybe".into(),
        ] {
            let mut p = to_proto(r);
            edit(&mut p);
            let e = audit_record_from_proto(p).unwrap_err();
            assert_eq!(e.code(), Code::DataLoss, "{e}");
            assert!(
                e.to_string().contains("malformed audit record (seq 1)"),
                "{e}"
            );
        }
    }
}
