//! The audit checker: after healing, every node's hash-chained audit log is intact, the nodes agree on
//! it record for record, and every grant a client saw acknowledged is in it (issue 4's durability,
//! extended to the audit trail).
//!
//! Unlike the other checkers it reads the cluster (each node alone, through its own client address):
//! - `verify`: each node recomputes its chain and it matches the replicated head (polled until the
//!   node has caught up, bounded);
//! - `identical`: the record at the shortest node's last seq has the same hash everywhere, which with
//!   the chaining means the common prefix is identical;
//! - `grants_in_audit`: every acknowledged acquire (resource, token) appears as a `granted` record;
//!   `releases_in_audit`: every acknowledged release as a `released`, `done` or `failed` record;
//!   `checkpoints_in_audit`: every acknowledged checkpoint as a `checkpoint` record — each within
//!   the prefix every node holds identically, so it is in every node's log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use warrant::audit::AuditDecision;
use warrant::client::Client;

use crate::checker::Verdict;
use crate::history::{Event, Kind, Op};
use crate::security::Security;

/// How long a node may take to catch up and verify after healing.
const CATCH_UP: Duration = Duration::from_secs(60);

fn client(endpoint: &str, security: &Security) -> anyhow::Result<Client> {
    Ok(Client::new(
        // Reading the audit is an admin action: the nodes' config names human/admin.
        security.client([endpoint.to_string()], "human/admin")?,
    )?)
}

/// Check every node's audit log against the others and against the history.
pub async fn check(endpoints: &[String], events: &[Event], security: &Security) -> Verdict {
    let mut v = Verdict::new();
    let mut lengths = Vec::new();
    for endpoint in endpoints {
        let Ok(c) = client(endpoint, security) else {
            v.violation(json!({"node": endpoint, "error": "no client"}));
            continue;
        };
        let deadline = Instant::now() + CATCH_UP;
        let report = loop {
            match c.verify_audit().await {
                Ok(r) if r.ok => break Ok(r),
                Ok(r) if Instant::now() >= deadline => break Err(format!("{r:?}")),
                Err(e) if Instant::now() >= deadline => break Err(e.to_string()),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        match report {
            Ok(r) => {
                v.count("nodes_verified");
                lengths.push((endpoint.clone(), r.checked));
            }
            Err(why) => v.violation(json!({"node": endpoint, "verify": why})),
        }
    }

    // The common prefix is identical: same hash at the shortest node's last record.
    if let Some(n) = lengths.iter().map(|(_, n)| *n).min().filter(|n| *n > 0) {
        let mut hashes = BTreeSet::new();
        for (endpoint, _) in &lengths {
            let Ok(c) = client(endpoint, security) else {
                continue;
            };
            let mut records = Box::pin(c.export_audit(n));
            match records.next().await {
                Some(Ok(r)) if r.seq == n => {
                    hashes.insert(hex::encode(r.hash));
                }
                other => {
                    v.violation(json!({"node": endpoint, "record": n, "got": format!("{other:?}")}))
                }
            }
        }
        if hashes.len() > 1 {
            v.violation(json!({"record": n, "differing_hashes": hashes}));
        }
        v.counts.insert("common_records".into(), n);
    }

    // Every acknowledged grant, release and checkpoint is in the trail (read from the first node
    // that verified), within the prefix that every node holds identically.
    let common = v.counts.get("common_records").copied().unwrap_or(0);
    // (resource, token) → how many were acknowledged. Records carry no checkpoint data, so a
    // lease's n acknowledged checkpoints need n checkpoint records of that lease on every node.
    let acknowledged = |op: Op| -> BTreeMap<(String, u64), usize> {
        let mut out = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == Kind::Ok && e.f == op) {
            if let Some(t) = e.token {
                *out.entry((e.resource.clone(), t)).or_default() += 1;
            }
        }
        if op != Op::Checkpoint {
            // One record per grant or release, however often a retry was acknowledged.
            out.values_mut().for_each(|n| *n = 1);
        }
        out
    };
    let wanted = [
        ("grants_in_audit", acknowledged(Op::Acquire), "grant"),
        ("releases_in_audit", acknowledged(Op::Release), "release"),
        (
            "checkpoints_in_audit",
            acknowledged(Op::Checkpoint),
            "checkpoint",
        ),
    ];
    if let Some((endpoint, _)) = lengths.first() {
        if let Ok(c) = client(endpoint, security) {
            // (kind, resource, token) → the records' seqs, in order.
            let mut found: BTreeMap<(&str, String, u64), Vec<u64>> = BTreeMap::new();
            let mut records = Box::pin(c.export_audit(1));
            while let Some(r) = records.next().await {
                match r {
                    Ok(r) => {
                        let kind = match r.entry.decision {
                            AuditDecision::Granted => "grant",
                            AuditDecision::Released
                            | AuditDecision::Done
                            | AuditDecision::Failed => "release",
                            AuditDecision::Checkpoint => "checkpoint",
                            _ => continue,
                        };
                        found
                            .entry((kind, r.entry.resource.clone(), r.entry.token))
                            .or_default()
                            .push(r.seq);
                    }
                    Err(e) => {
                        v.violation(json!({"node": endpoint, "export": e.to_string()}));
                        break;
                    }
                }
            }
            for (counter, acked, kind) in wanted {
                for ((resource, token), n) in acked {
                    let seqs = found
                        .get(&(kind, resource.clone(), token))
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    // The n-th record of this lease (the first n at least are there).
                    match seqs.get(n - 1) {
                        Some(&seq) if seq <= common => {
                            *v.counts.entry(counter.to_string()).or_default() += n as u64
                        }
                        Some(&seq) => v.violation(json!({
                            "not_on_every_node": {"what": kind, "resource": resource, "token": token, "seq": seq, "common_records": common}
                        })),
                        None => v.violation(json!({
                            "missing_from_audit": {"what": kind, "resource": resource, "token": token, "acknowledged": n, "records": seqs.len()}
                        })),
                    }
                }
            }
        }
    }
    v
}
