//! `warrant approvals list`, `warrant approve`, `warrant reject`: the humans' side of an
//! acquisition that policy sent to approval.

use serde_json::{json, Value};

use super::answer::{self, approver_names, expires_in, now_ms, pending_json};
use super::{table, Outcome};
use crate::client::{Client, ClientError};
use crate::proto;

/// Longest intent shown in the table (the json has it whole).
const INTENT_CHARS: usize = 40;

/// `approvals list`: a table (text) or an array (json).
pub(super) async fn list(client: &Client) -> Result<Outcome, ClientError> {
    let pending = client.list_approvals().await?;
    let json = Value::Array(pending.iter().map(pending_json).collect());
    if pending.is_empty() {
        return Ok(Outcome::ok("no requests are waiting for approval", json));
    }
    let now = now_ms();
    let rows = pending
        .iter()
        .map(|p| {
            vec![
                p.request_id.clone(),
                p.resource.clone(),
                p.principal.clone(),
                shorten(
                    &p.intent
                        .as_ref()
                        .map(|i| i.text.clone())
                        .unwrap_or_default(),
                    INTENT_CHARS,
                ),
                format!("{}/{}", p.approvers.len(), p.approvals_needed),
                expires_in(p.expires_at_ms, now),
                p.policy_version_now.to_string(),
                p.digest.clone(),
            ]
        })
        .collect();
    let text = table(
        &[
            "REQUEST",
            "RESOURCE",
            "PRINCIPAL",
            "INTENT",
            "APPROVALS",
            "EXPIRES",
            "POLICY",
            "DIGEST",
        ],
        rows,
    );
    Ok(Outcome::ok(text, json))
}

/// The digest and policy version the decision is about: as given, or read now (and said on
/// stderr, so the human sees what is decided on). A request that is not pending gets no digest:
/// the cluster's answer then says what became of it.
async fn shown(
    client: &Client,
    request_id: &str,
    seen: super::Seen,
    verb: &str,
) -> Result<(String, u64), ClientError> {
    if let (Some(digest), Some(version)) = (seen.digest, seen.policy_version) {
        return Ok((digest, version));
    }
    let pending = client.list_approvals().await?;
    let Some(p) = pending.iter().find(|p| p.request_id == request_id) else {
        // Not pending: the cluster says why (decided, expired, unknown), exactly as it would.
        return Ok((String::new(), 0));
    };
    let intent = p.intent.as_ref().map(|i| i.text.as_str()).unwrap_or("");
    let shown = format!(
        "{verb} request {request_id}: {} ({}) wants {} for {} ms, intent {intent:?}; policy \
         version {}, digest {}",
        p.principal, p.instance, p.resource, p.ttl_ms, p.policy_version_now, p.digest
    );
    eprintln!("{}", super::escape_untrusted(&shown));
    Ok((p.digest.clone(), p.policy_version_now))
}

/// `approve`: the progress towards the quorum, or what the requester got when it was reached.
pub(super) async fn approve(
    client: &Client,
    request_id: &str,
    comment: &str,
    seen: super::Seen,
) -> Result<Outcome, ClientError> {
    let (digest, version) = shown(client, request_id, seen, "approving").await?;
    let resp = client
        .approve_seen(request_id, comment, &digest, version)
        .await?;
    Ok(approve_outcome(request_id, &resp))
}

fn approve_outcome(request_id: &str, resp: &proto::ApproveResponse) -> Outcome {
    let p = resp.pending.clone().unwrap_or_default();
    let (k, n) = (p.approvers.len(), p.approvals_needed as usize);
    let mut text = format!("approved request {request_id}: {k}/{n} approvals");
    if !p.approvers.is_empty() {
        text.push_str(&format!(" ({})", approver_names(&p)));
    }
    let outcome = resp.outcome.as_ref().map(answer::acquire_response);
    match &outcome {
        Some(o) => text.push_str(&format!(
            "; quorum reached, {} got:\n{}",
            if p.principal.is_empty() {
                "the requester"
            } else {
                &p.principal
            },
            o.text
        )),
        None => text.push_str(&format!(
            "; waiting for {} more",
            n.saturating_sub(k).max(1)
        )),
    }
    Outcome::ok(
        text,
        json!({"request_id": request_id, "approvals": k, "approvals_needed": n,
            "approvers": p.approvers.iter().map(|a| json!({"principal": a.principal, "comment": a.comment})).collect::<Vec<_>>(),
            "quorum_reached": outcome.is_some(), "outcome": outcome.map(|o| o.json)}),
    )
}

/// `reject`: the request ends at once.
pub(super) async fn reject(
    client: &Client,
    request_id: &str,
    reason: &str,
    seen: super::Seen,
) -> Result<Outcome, ClientError> {
    let (digest, version) = shown(client, request_id, seen, "rejecting").await?;
    let p = client
        .reject_seen(request_id, reason, &digest, version)
        .await?;
    Ok(Outcome::ok(
        format!(
            "rejected request {request_id}: {} may not acquire {}: {reason}",
            p.principal, p.resource
        ),
        json!({"request_id": request_id, "rejected": true, "resource": p.resource,
            "principal": p.principal, "reason": reason}),
    ))
}

/// `s` cut to at most `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(approvers: &[&str]) -> proto::PendingApproval {
        proto::PendingApproval {
            request_id: "r-1".into(),
            approvals_needed: 2,
            approvers: approvers
                .iter()
                .map(|a| proto::Approver {
                    principal: a.to_string(),
                    comment: String::new(),
                })
                .collect(),
            resource: "k8s/prod/payments".into(),
            principal: "agent/deployer".into(),
            ..Default::default()
        }
    }

    #[test]
    fn approve_shows_progress_until_the_quorum_then_the_grant() {
        let progress = approve_outcome(
            "r-1",
            &proto::ApproveResponse {
                pending: Some(pending(&["human/ann"])),
                outcome: None,
            },
        );
        assert_eq!(
            progress.text,
            "approved request r-1: 1/2 approvals (human/ann); waiting for 1 more"
        );
        assert_eq!(progress.json["quorum_reached"], false);
        assert_eq!(progress.json["outcome"], Value::Null);

        let done = approve_outcome(
            "r-1",
            &proto::ApproveResponse {
                pending: Some(pending(&["human/ann", "human/bob"])),
                outcome: Some(proto::AcquireResponse {
                    outcome: Some(proto::acquire_response::Outcome::Granted(proto::Granted {
                        ended: String::new(),
                        lease: Some(proto::Lease {
                            lease_id: "0000000000000002".into(),
                            resource: "k8s/prod/payments".into(),
                            token: 7,
                            ttl_ms: 60_000,
                            ..Default::default()
                        }),
                        previous: None,
                        certificate: String::new(),
                    })),
                }),
            },
        );
        assert_eq!(done.code, super::super::exit::OK);
        assert!(
            done.text.ends_with(
                "quorum reached, agent/deployer got:\ngranted k8s/prod/payments lease 0000000000000002 token 7 ttl 60000ms"
            ),
            "{}",
            done.text
        );
        assert_eq!(done.json["outcome"]["outcome"], "granted");
        assert_eq!(done.json["outcome"]["token"], 7);
    }

    #[test]
    fn long_intents_are_shortened_by_characters() {
        assert_eq!(shorten("scale", 40), "scale");
        assert_eq!(shorten("ééééé", 3), "éé…");
    }
}
