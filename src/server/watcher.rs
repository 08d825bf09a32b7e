//! `Watch`: lease events under a prefix, from a revision on, then live.
//!
//! Each watcher is a task that pages through the node's in-memory watch history
//! ([`crate::audit::watch::History`]) and feeds a small channel; when it has sent everything up to
//! the head it waits for the head to move. Memory per watcher is the channel (`BUFFER` events): a
//! slow watcher makes its task wait, never the node buffer. If the history rotates past a waiting
//! watcher's position it gets OUT_OF_RANGE "compacted" and must resync.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::api::{Api, WatchStream};
use super::auth::Caller;
use super::requests::existing_resource;
use crate::audit::watch::{Compacted, WatchEvent};
use crate::proto;

/// Events in flight to one watcher.
const BUFFER: usize = 256;
/// Events taken from the history per page, and events looked at per page (bounds the lock).
const PAGE: usize = 256;
const SCAN: usize = 4096;

/// The metadata key that carries the oldest revision still held, with a "compacted" error.
pub const COMPACT_REVISION_METADATA: &str = "warrant-compact-revision";

fn event(e: &WatchEvent) -> proto::WatchEvent {
    proto::WatchEvent {
        revision: e.revision,
        kind: e.kind.as_str().to_string(),
        resource: e.resource.clone(),
        lease_id: e.lease_id.clone(),
        token: e.token,
        principal: e.principal.clone(),
        instance: e.instance.clone(),
        at_ms: e.at_ms,
        log_index: e.log_index,
        reason: e.reason.clone(),
    }
}

fn compacted(c: &Compacted) -> Status {
    let mut status = Status::out_of_range(c.to_string());
    if let Ok(v) = c.floor.to_string().parse() {
        status.metadata_mut().insert(COMPACT_REVISION_METADATA, v);
    }
    status
}

impl Api {
    pub(super) async fn watch_rpc(
        &self,
        caller: Caller,
        r: proto::WatchRequest,
    ) -> Result<Response<WatchStream>, Status> {
        let prefix = if r.prefix.is_empty() {
            String::new()
        } else {
            existing_resource(&r.prefix)?.to_string()
        };
        // The policy version is read before the check, so a policy applied while the check is on
        // its way is judged again by the first `holds`.
        let mut standing = Standing::new(self.shared.clone(), caller.clone());
        self.authorize_audit_read(
            &caller,
            format!("watch {prefix:?} from revision {}", r.from_revision),
        )
        .await?;
        let feed = self.shared.watch.clone();
        let mut head = feed.subscribe();
        let mut next = match r.from_revision {
            0 => feed.history().head() + 1,
            from => from,
        };
        // Refuse a compacted start at once, as the call's status rather than in the stream.
        feed.history().check(next).map_err(|c| compacted(&c))?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut stopping = self.shared.stopping.clone();
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if let Err(status) = standing.holds() {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                head.borrow_and_update();
                let page = feed.history().read(next, &prefix, PAGE, SCAN);
                let page = match page {
                    Ok(page) => page,
                    Err(c) => {
                        let _ = tx.send(Err(compacted(&c))).await;
                        return;
                    }
                };
                let more = page.next <= feed.history().head();
                next = page.next;
                for e in page.events {
                    if tx.send(Ok(event(&e))).await.is_err() {
                        return; // the watcher went away
                    }
                }
                if more {
                    continue;
                }
                let stopped = async {
                    let _ = stopping.wait_for(|s| *s).await;
                };
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = recheck.tick() => {}
                    _ = tx.closed() => return,
                    _ = stopped => {
                        let _ = tx.send(Err(Status::unavailable("node is shutting down; resume the watch on another node"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How often an idle watch checks that its caller may still read (a busy one checks per page).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a watch's caller may still read what it opened: its credential has not expired, its
/// access token has not been revoked, and, after every policy change, the policy still permits
/// it the audit read it was granted at open. A watch that loses any of these ends with the reason.
struct Standing {
    shared: std::sync::Arc<super::Shared>,
    caller: Caller,
    /// The principal the read was authorized for (none: a node, or insecure mode).
    by: Option<crate::model::Principal>,
    by_admin: bool,
    /// The policy version last checked.
    policy_version: u64,
}

impl Standing {
    fn new(shared: std::sync::Arc<super::Shared>, caller: Caller) -> Self {
        let by = match &caller.identity {
            Some(crate::security::Identity::Principal(p)) => Some(p.clone()),
            _ => None,
        };
        let by_admin = by.as_ref().is_some_and(|p| shared.admins.contains(p));
        let policy_version = shared.sm.read().state.policy_version();
        Self {
            shared,
            caller,
            by,
            by_admin,
            policy_version,
        }
    }

    fn holds(&mut self) -> Result<(), Status> {
        self.shared.auth.still_valid(&self.caller)?;
        let Some(by) = &self.by else {
            return Ok(());
        };
        let sm = self.shared.sm.read();
        let version = sm.state.policy_version();
        if version != self.policy_version {
            sm.state.admin_allowed(by, self.by_admin).map_err(|d| {
                Status::permission_denied(format!(
                    "watch ended: policy version {version} no longer lets {by} read the audit: {d}"
                ))
            })?;
            self.policy_version = version;
        }
        Ok(())
    }
}
