//! `node_state`: durability on *every* node. After healing, each founding member's own applied state
//! — read with a serializable Get, which that member answers itself without asking the leader — must
//! hold every acknowledged grant (its resource's fence is at least the grant's token) and no
//! acknowledged release (a released token is not the holder any more). Each member is first given
//! time to apply as far as the leader had when the check began, so a member merely behind is not
//! blamed; one that never catches up is a violation of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::checker::Verdict;
use crate::cluster::Cluster;
use crate::history::{Event, Kind, Op};

/// How long a member may take to apply up to the leader's index after healing.
const CATCH_UP: Duration = Duration::from_secs(60);

/// What the history says must hold on every node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Per resource: the highest token of an acknowledged grant.
    pub fence_at_least: BTreeMap<String, u64>,
    /// Per resource: tokens whose release was acknowledged.
    pub released: BTreeMap<String, BTreeSet<u64>>,
}

impl Expected {
    pub fn from_history(events: &[Event]) -> Self {
        let mut out = Self::default();
        for e in events.iter().filter(|e| e.kind == Kind::Ok) {
            let Some(token) = e.token else { continue };
            match e.f {
                Op::Acquire => {
                    let f = out.fence_at_least.entry(e.resource.clone()).or_default();
                    *f = (*f).max(token);
                }
                Op::Release => {
                    out.released
                        .entry(e.resource.clone())
                        .or_default()
                        .insert(token);
                }
                _ => {}
            }
        }
        out
    }

    /// What is wrong with one node's answer for `resource`, if anything.
    pub fn judge(
        &self,
        resource: &str,
        fence: u64,
        holder_token: Option<u64>,
    ) -> Option<serde_json::Value> {
        let floor = self.fence_at_least.get(resource).copied().unwrap_or(0);
        if fence < floor {
            return Some(
                json!({"resource": resource, "fence": fence, "acknowledged_grant": floor}),
            );
        }
        match holder_token {
            Some(t) if self.released.get(resource).is_some_and(|r| r.contains(&t)) => {
                Some(json!({"resource": resource, "holder_token": t, "release_acknowledged": true}))
            }
            _ => None,
        }
    }
}

/// Read every resource in `names` from every founding member's own state and judge it.
pub async fn check(cluster: &Cluster, names: &[String], events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    let expected = Expected::from_history(events);
    // How far the cluster had applied (the most any member has: applied means committed): every
    // member should get there. Once a leader is known, so that healing has settled.
    let mut target = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while target.is_none() && Instant::now() < deadline {
        if cluster.leader().await.is_some() {
            for id in cluster.ids() {
                if let Ok(c) = cluster.node_client(id) {
                    if let Ok(s) = c.status().await {
                        target = target.max(Some(s.last_applied));
                    }
                }
            }
        }
        if target.is_none() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let Some(target) = target else {
        v.violation(json!({"error": "no leader answered within 20 s"}));
        return v;
    };
    for id in cluster.ids() {
        let client = match cluster.node_client(id) {
            Ok(c) => c,
            Err(e) => {
                v.violation(json!({"node": id, "error": format!("{e:#}")}));
                continue;
            }
        };
        let deadline = Instant::now() + CATCH_UP;
        let caught_up = loop {
            match client.status().await {
                Ok(s) if s.last_applied >= target => break true,
                _ if Instant::now() >= deadline => break false,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if !caught_up {
            v.violation(json!({"node": id, "error": format!("did not apply up to index {target} within {CATCH_UP:?}")}));
            continue;
        }
        v.count("nodes_checked");
        for resource in names {
            match client.get_serializable(resource).await {
                Ok(r) => {
                    v.count("reads");
                    let holder = r.holder.as_ref().map(|h| h.token);
                    if let Some(mut bad) = expected.judge(resource, r.fence, holder) {
                        bad["node"] = json!(id);
                        bad["applied_index"] = json!(r.applied_index);
                        v.violation(bad);
                    }
                }
                Err(e) => {
                    v.violation(json!({"node": id, "resource": resource, "error": e.to_string()}))
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(f: Op, resource: &str, token: u64) -> Event {
        Event::new(Kind::Ok, f, 1, resource).token(token)
    }

    #[test]
    fn a_node_missing_a_grant_or_holding_a_released_lease_is_caught() {
        let events = [
            ok(Op::Acquire, "r", 3),
            ok(Op::Release, "r", 3),
            ok(Op::Acquire, "r", 5),
            Event::new(Kind::Info, Op::Acquire, 2, "r").token(9),
            ok(Op::Acquire, "s", 4),
        ];
        let x = Expected::from_history(&events);
        assert_eq!(
            x.fence_at_least.get("r"),
            Some(&5),
            "unknown outcomes are not owed"
        );
        assert!(x.judge("r", 5, Some(5)).is_none());
        assert!(x.judge("r", 9, None).is_none(), "a higher fence is fine");
        let lost = x.judge("r", 4, None).unwrap();
        assert_eq!(lost["acknowledged_grant"], 5);
        let zombie = x.judge("r", 5, Some(3)).unwrap();
        assert_eq!(zombie["holder_token"], 3);
        assert!(x.judge("never-granted", 0, None).is_none());
    }
}
