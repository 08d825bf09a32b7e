//! Filling this node's audit log after it installed a snapshot: snapshots carry the audit chain's head
//! (in the replicated state), not its records, so a follower that caught up by snapshot fetches the
//! records it lacks from its peers' client API (`ExportAudit`).
//!
//! Invariant: a fetched record is written only if it links to the record before it (starting from
//! this node's own record `from - 1`, or the genesis hash), and the gap is closed only when the last
//! one hashes to exactly the head the replicated state named. A peer that serves anything else is
//! skipped; the next is tried. Until the gap is closed, this node refuses audit queries, exports and
//! verification with UNAVAILABLE (never a partial or falsely broken trail).

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::audit::GENESIS_HASH;
use crate::proto;
use crate::storage::AuditGap;

/// How often the gap is looked at.
const INTERVAL: Duration = Duration::from_millis(500);
/// One attempt at one peer may take this long (a million records stream in about 5 s).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Records written per batch while fetching.
const CHUNK: usize = 1024;

/// Runs for the node's life: closes the audit gap whenever there is one.
pub(super) async fn fill_audit_gaps(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gap = match shared.audit.gap() {
            Ok(Some(gap)) => gap,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the audit gap");
                continue;
            }
        };
        for peer in peers(&shared) {
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(&shared, &peer, gap))
                .await
                .unwrap_or_else(|_| Err("timed out".to_string()));
            match fetched {
                Ok(()) => {
                    tracing::info!(from = gap.from, to = gap.to, %peer, "audit records fetched");
                    break;
                }
                Err(e) => tracing::warn!(%peer, error = %e, "could not fetch audit records"),
            }
        }
    }
}

/// Client addresses of the other members.
fn peers(shared: &Shared) -> Vec<String> {
    let m = shared.raft.metrics().borrow().clone();
    m.membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != shared.node_id)
        .map(|(_, n)| n.client.clone())
        .collect()
}

/// The peer's audit trail from record `from` on, over the client port, authenticated by this
/// node's own certificate (a node identity; a member may read the audit to fill its gap).
async fn open_export(
    shared: &Shared,
    peer: &str,
    from: u64,
) -> Result<tonic::Streaming<proto::AuditRecord>, String> {
    let scheme = if shared.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{peer}"))
        .map_err(|_| format!("peer address {peer:?} is not host:port"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2));
    if let Some(tls) = &shared.tls {
        endpoint = endpoint
            .tls_config(tls.client())
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let answer = proto::warrant_client::WarrantClient::new(channel)
        .max_decoding_message_size(super::api::MAX_RESPONSE_BYTES)
        .export_audit(proto::ExportAuditRequest { from_seq: from })
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    Ok(answer.into_inner())
}

async fn fetch(shared: &Shared, peer: &str, gap: AuditGap) -> Result<(), String> {
    let log = &shared.audit;
    let mut prev = if gap.from <= 1 {
        GENESIS_HASH
    } else {
        log.get(gap.from - 1)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("this node lacks record {} too", gap.from - 1))?
            .hash
    };
    let mut records = open_export(shared, peer, gap.from).await?;
    let mut next = gap.from;
    let mut chunk = Vec::with_capacity(CHUNK);
    while next <= gap.to {
        let Some(record) = records.message().await.map_err(|e| e.to_string())? else {
            break;
        };
        let record = crate::audit::wire::from_proto(record)?;
        if record.seq != next || record.prev_hash != prev || record.compute_hash() != record.hash {
            return Err(format!("record {} from the peer does not link", record.seq));
        }
        prev = record.hash;
        next += 1;
        chunk.push(record);
        if chunk.len() >= CHUNK {
            log.write(&chunk).map_err(|e| e.to_string())?;
            chunk.clear();
        }
    }
    log.write(&chunk).map_err(|e| e.to_string())?;
    if next != gap.to + 1 || prev != gap.hash_at_to {
        return Err(format!(
            "the peer's trail ends at record {} without reaching the replicated head (record {})",
            next - 1,
            gap.to
        ));
    }
    log.sync().map_err(|e| e.to_string())?;
    // Close only the gap we filled: a newer install may have widened it meanwhile.
    if log.gap().map_err(|e| e.to_string())? == Some(gap) {
        log.set_gap(None).map_err(|e| e.to_string())?;
    }
    Ok(())
}
