//! Membership changes online (openraft joint consensus), leadership hand-over, and retirement of a
//! removed node.
//!
//! Every change is an admin action: authorized in apply (`Command::AdminCheck`, action
//! `membership`) and audited, denials too. The check's own log entry doubles as the liveness probe:
//! a voter that has not replicated it within [`PROBE_WAIT`] counts as down when we ask whether the
//! new voter set keeps a live quorum.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::{Response, Status};

use super::api::Api;
use super::auth::Caller;
use super::{Shared, PROPOSE_TIMEOUT};
use crate::model;
use crate::proto;
use crate::raft::{Control, NodeAddr, NodeId};

/// How long voters get to replicate the admin check's entry before they count as down.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// Default and largest time a new node may take to catch up.
const DEFAULT_CATCH_UP: Duration = Duration::from_secs(60);
const MAX_CATCH_UP: Duration = Duration::from_secs(3600);
/// How long add-node waits for the new node to say who it is.
const IDENTIFY_WAIT: Duration = Duration::from_secs(3);
/// A learner within this many entries of the leader is caught up enough to vote.
const CAUGHT_UP_LAG: u64 = 100;
/// The file in a data directory that marks a node removed from its cluster.
pub const RETIRED_FILE: &str = "WARRANT-REMOVED";

/// The message a retired node answers every request with, and refuses to start with.
pub fn retired_message(node: NodeId, by: NodeId, log_index: u64) -> String {
    format!(
        "node {node} was removed from the cluster (by leader {by}, membership at log index {log_index}) \
         and no longer serves. To bring this machine back, stop it, empty its data_dir and run \
         `warrant cluster add-node` for it"
    )
}

/// Quorum of a voter set of this size.
fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

fn ids(set: &BTreeSet<NodeId>) -> String {
    let v: Vec<String> = set.iter().map(|i| i.to_string()).collect();
    format!("{{{}}}", v.join(", "))
}

impl Shared {
    /// Is this node the leader? Otherwise the redirect to give.
    fn require_leader(&self) -> Result<(), Status> {
        if self.raft.metrics().borrow().current_leader == Some(self.node_id) {
            Ok(())
        } else {
            Err(self.redirect())
        }
    }

    /// On the leader: the voters, and node `id`'s addresses if it is a member. A joint config left
    /// by an interrupted change (its leader died between the two steps) is finished first, so the
    /// voters are those of one config.
    async fn leader_view(
        &self,
        id: NodeId,
    ) -> Result<(BTreeSet<NodeId>, Option<NodeAddr>), Status> {
        self.require_leader()?;
        let joint = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1;
        if joint {
            tracing::info!("finishing a membership change left in its joint config");
            // Adding no voter moves a joint config to its last (uniform) config.
            self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::new()))
                .await?;
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters = membership
            .get_joint_config()
            .last()
            .cloned()
            .unwrap_or_default();
        Ok((voters, membership.get_node(&id).cloned()))
    }

    /// Run a membership change to its end even if the caller goes away (a change cut after its
    /// first step would leave the joint config behind).
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, NodeAddr>,
    ) -> Result<u64, Status> {
        let raft = self.raft.clone();
        let task = tokio::spawn(async move {
            tokio::time::timeout(PROPOSE_TIMEOUT * 2, raft.change_membership(change, false)).await
        });
        match task.await {
            Err(e) => Err(Status::internal(format!(
                "membership change task failed: {e}"
            ))),
            Ok(Err(_)) => Err(Status::unavailable(
                "the membership change did not commit in time; its outcome is unknown: check \
                 `warrant cluster status` (retrying is safe)",
            )),
            Ok(Ok(Err(e))) => Err(membership_error(e, self)),
            Ok(Ok(Ok(resp))) => Ok(resp.log_id.index),
        }
    }

    /// The voters (this leader included) whose replication reached `index` within `wait`.
    async fn live_voters(&self, index: u64, wait: Duration) -> BTreeSet<NodeId> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (voters, live) = {
                let m = rx.borrow_and_update();
                let voters: BTreeSet<NodeId> =
                    m.membership_config.membership().voter_ids().collect();
                let matched = m.replication.clone().unwrap_or_default();
                let live: BTreeSet<NodeId> = voters
                    .iter()
                    .copied()
                    .filter(|id| {
                        *id == self.node_id
                            || matched
                                .get(id)
                                .and_then(|l| l.as_ref())
                                .is_some_and(|l| l.index >= index)
                    })
                    .collect();
                (voters, live)
            };
            if live.len() == voters.len() {
                return live;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return live;
            }
        }
    }

    /// Authorize (and audit) a membership change; returns the index of the check's entry.
    async fn authorize_membership(
        &self,
        caller: &Caller,
        by: model::Principal,
        detail: String,
    ) -> Result<u64, Status> {
        self.admin_check(caller, by, "membership", detail).await?;
        Ok(self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index))
    }

    /// Refuse a change after which the voters `after` would not have a live quorum.
    async fn check_quorum(
        &self,
        probe_index: u64,
        after: &BTreeSet<NodeId>,
        also_live: Option<NodeId>,
        what: &str,
    ) -> Result<(), Status> {
        let mut live = self.live_voters(probe_index, PROBE_WAIT).await;
        live.extend(also_live);
        let live_after: BTreeSet<NodeId> = after.intersection(&live).copied().collect();
        if live_after.len() < majority(after.len()) {
            let down: BTreeSet<NodeId> = after.difference(&live_after).copied().collect();
            return Err(Status::failed_precondition(format!(
                "{what} would leave voters {} with {} reachable (nodes {} did not acknowledge a probe \
                 within {}ms), below their quorum of {}: the cluster would stop. Bring those nodes \
                 back first",
                ids(after),
                live_after.len(),
                ids(&down),
                PROBE_WAIT.as_millis(),
                majority(after.len())
            )));
        }
        Ok(())
    }

    /// The answer to a membership call: the members now, the index of the change made (else of the
    /// current membership), and the time taken.
    fn membership_response(
        &self,
        changed_at: Option<u64>,
        started: Instant,
    ) -> Response<proto::MembershipResponse> {
        let (members, current) = self.members();
        Response::new(proto::MembershipResponse {
            members,
            log_index: changed_at.unwrap_or(current),
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Members as the API shows them.
    pub(super) fn members(&self) -> (Vec<proto::Member>, u64) {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| proto::Member {
                id: *id,
                address: node.client.clone(),
                raft_address: node.raft.clone(),
                role: if Some(*id) == m.current_leader {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                }
                .to_string(),
            })
            .collect();
        let index = m.membership_config.log_id().map_or(0, |l| l.index);
        (members, index)
    }

    /// Hand leadership to the most up-to-date voter: stop writing, wait until that voter's log
    /// matches ours, and ask it to stand for election. Our own vote (and, once their leader lease
    /// of `election_timeout_max` runs out, the other followers') elects it. Returns the new leader,
    /// or `None` if this node does not lead or no voter took over within `wait`.
    pub(super) async fn hand_over(&self, wait: Duration) -> Option<NodeId> {
        let (term, target, target_addr) = {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(self.node_id) {
                return None;
            }
            let membership = m.membership_config.membership();
            let matched = m.replication.clone().unwrap_or_default();
            let (id, _) = membership
                .voter_ids()
                .filter(|id| *id != self.node_id)
                .map(|id| {
                    (
                        id,
                        matched.get(&id).cloned().flatten().map_or(0, |l| l.index),
                    )
                })
                .max_by_key(|(_, index)| *index)?;
            (m.current_term, id, membership.get_node(&id)?.clone())
        };
        let started = Instant::now();
        // Stop writing and stop heartbeats (the followers' leader lease runs from the last one);
        // and never stand for election ourselves meanwhile, or we would win back what we hand over.
        if self
            .draining
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return None; // another hand-over is under way
        }
        let _restore = Draining {
            raft: self.raft.clone(),
            draining: self.draining.clone(),
            retired: self.retired.clone(),
        };
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().elect(false);
        let result = self.hand_over_to(term, target, &target_addr, wait).await;
        match result {
            Some(leader) => tracing::info!(
                to = leader,
                took_ms = started.elapsed().as_millis() as u64,
                "handed leadership over"
            ),
            None => tracing::warn!(
                to = target,
                "leadership hand-over did not complete in time; the cluster elects a leader on its own"
            ),
        }
        result
    }

    async fn hand_over_to(
        &self,
        term: u64,
        target: NodeId,
        addr: &NodeAddr,
        wait: Duration,
    ) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + wait;
        // Proposals already handed to openraft may still append: let them finish first.
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut rx = self.raft.metrics();
        // The target's log must match ours, or our vote (and everyone's) refuses it.
        loop {
            {
                let m = rx.borrow_and_update();
                if m.current_leader != Some(self.node_id) {
                    return m.current_leader;
                }
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .map_or(0, |l| l.index);
                if matched >= last {
                    break;
                }
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .ok()?
                .ok()?;
        }
        // Ask again now and then: followers refuse any candidate while their leader lease from
        // our last heartbeat runs, so in a cluster of five the second vote may come only later.
        let notice = Control::TakeOver {
            from: self.node_id,
            to: target,
            term,
        };
        loop {
            if let Err(e) = self
                .network
                .control(addr, &notice, Duration::from_millis(500))
                .await
            {
                tracing::warn!(error = %e, to = target, "take-over notice not delivered");
            }
            let retry = tokio::time::Instant::now() + Duration::from_millis(300);
            loop {
                {
                    let m = rx.borrow_and_update();
                    if m.current_leader.is_some_and(|l| l != self.node_id) {
                        return m.current_leader;
                    }
                }
                match tokio::time::timeout_at(retry.min(deadline), rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Before adding node `id`, ask who answers at its raft address (over mTLS on a secure
    /// cluster). Refused, with what to do: nobody answers (not started, or its certificate is not
    /// from this cluster's CA), a different node answers, or a node of another cluster (one that
    /// kept old data, say).
    async fn identify_joiner(&self, id: NodeId, addr: &NodeAddr) -> Result<(), Status> {
        // A node started a moment ago may not listen yet: ask again until the wait is over. It is
        // not a member, so it never voted here: a node on a new data directory is admitted
        // (DESIGN rule 6; `storage::Standing`).
        let ask = crate::raft::IdentifyAsk {
            from: self.node_id,
            joining: false,
            incarnation: String::new(),
            admit: true,
        };
        let deadline = tokio::time::Instant::now() + IDENTIFY_WAIT;
        let answer = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = self
                .network
                .identify(&addr.raft, Some(&ask), left.max(Duration::from_millis(100)))
                .await;
            match &answer {
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() + Duration::from_millis(100) < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => break answer,
            }
        };
        match answer {
            Ok(ref found) if found.node != id => Err(Status::failed_precondition(format!(
                "node {} answers at {}, not node {id}: check the address (or add it as node {})",
                found.node, addr.raft, found.node
            ))),
            Ok(found) => match (found.cluster_id, self.network.cluster_id()) {
                (Some(theirs), ours) if Some(&theirs) != ours.as_ref() => {
                    Err(Status::failed_precondition(format!(
                        "node {id} at {} belongs to another cluster (id {theirs}; this one is {}): \
                         empty its data directory and start it again to join this one",
                        addr.raft,
                        ours.as_deref().unwrap_or("without an id")
                    )))
                }
                _ => Ok(()),
            },
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                Err(Status::failed_precondition(format!(
                    "node {id} at {} belongs to another cluster: {}",
                    addr.raft,
                    s.message()
                )))
            }
            Err(s) => Err(Status::failed_precondition(format!(
                "cannot reach node {id} at {} ({}: {}): start it first, with `bootstrap = false` and, \
                 on a secure cluster, a node certificate from this cluster's CA, then retry",
                addr.raft,
                s.code(),
                s.message()
            ))),
        }
    }

    /// The removed node may never receive the entry that removes it: tell it.
    async fn tell_removed(&self, id: NodeId, addr: &NodeAddr, log_index: u64) {
        let notice = Control::Removed {
            by: self.node_id,
            to: id,
            log_index,
        };
        if let Err(e) = self
            .network
            .control(addr, &notice, Duration::from_secs(2))
            .await
        {
            tracing::warn!(node = id, error = %e, "could not tell the removed node; it learns from its log if it can");
        }
    }

    /// Act on a notice from a peer.
    pub(super) async fn on_control(&self, notice: Control) {
        let (Control::TakeOver { to, .. } | Control::Removed { to, .. }) = notice;
        if to != self.node_id {
            tracing::warn!(
                to,
                ?notice,
                "ignored a notice meant for another node (an address reused?)"
            );
            return;
        }
        match notice {
            Control::TakeOver { from, term, .. } => {
                // DESIGN rule 6: a node that may not vote may not lead either.
                if self.standing.is_joining() || self.retired.get().is_some() {
                    tracing::info!(from, "ignored a take-over notice: this node may not lead");
                    return;
                }
                let m = self.raft.metrics().borrow().clone();
                // Once we stand, we know no leader: the sender repeats its notice until we win.
                if m.current_leader.is_some_and(|l| l != from) || m.current_term < term {
                    tracing::info!(
                        from,
                        term,
                        "ignored a take-over notice from a node that does not lead"
                    );
                    return;
                }
                tracing::info!(from, term, "the leader hands over: standing for election");
                if let Err(e) = self.raft.trigger().elect().await {
                    tracing::warn!(error = %e, "could not stand for election");
                }
            }
            Control::Removed { by, log_index, .. } => {
                // A notice is a claim (issue 25 item 1): retire only once a leader, asked by this
                // node, no longer lists it. No leader answering: its own log will tell it.
                for _ in 0..5 {
                    match super::standing::leader_lists(self).await {
                        Some(false) => {
                            return self
                                .retire(retired_message(self.node_id, by, log_index))
                                .await
                        }
                        Some(true) => {
                            tracing::warn!(
                                by,
                                "ignored a removal notice: the leader still lists this node"
                            );
                            return;
                        }
                        None => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                tracing::warn!(by, "ignored a removal notice: no leader could confirm it");
            }
        }
    }

    /// Stop serving for good: refuse every client call with `why`, never stand for election, and
    /// mark the data directory so a restart refuses too.
    pub(super) async fn retire(&self, why: String) {
        if self.retired.set(why.clone()).is_err() {
            return;
        }
        self.raft.runtime_config().elect(false);
        let marker = self.config.data_dir.join(RETIRED_FILE);
        if let Err(e) = std::fs::write(&marker, format!("{why}\n")) {
            tracing::error!(error = %e, path = %marker.display(), "cannot record the removal");
        }
        tracing::error!("{why}");
    }
}

/// Ends a hand-over however it ends (also when its caller goes away): heartbeats and elections
/// back on, writes accepted again.
struct Draining {
    raft: crate::raft::Raft,
    draining: Arc<std::sync::atomic::AtomicBool>,
    retired: Arc<std::sync::OnceLock<String>>,
}

impl Drop for Draining {
    fn drop(&mut self) {
        self.raft.runtime_config().heartbeat(true);
        if self.retired.get().is_none() {
            self.raft.runtime_config().elect(true);
        }
        self.draining.store(false, Ordering::SeqCst);
    }
}

/// Has this node been removed? `joined` is the log index of the latest membership that had it.
/// Only an applied (so committed) membership without it, newer than that, says so: an
/// uncommitted membership can be truncated, and the one before it may predate our joining.
fn removed_at(
    m: &openraft::RaftMetrics<NodeId, NodeAddr>,
    me: NodeId,
    joined: &mut Option<u64>,
) -> Option<u64> {
    let index = m.membership_config.log_id().map_or(0, |l| l.index);
    if m.membership_config.membership().get_node(&me).is_some() {
        *joined = Some(joined.map_or(index, |j| j.max(index)));
        return None;
    }
    let applied = m.last_applied.map_or(0, |l| l.index);
    joined
        .is_some_and(|j| index > j && applied >= index)
        .then_some(index)
}

/// Watch the membership: a node that was a member and has applied a membership without itself
/// has been removed (the leader also tells it directly, as it may never receive that entry).
pub(super) async fn watch_removal(shared: Arc<Shared>) {
    let mut rx = shared.raft.metrics();
    let mut joined = None;
    loop {
        let removed_at = {
            let m = rx.borrow_and_update();
            removed_at(&m, shared.node_id, &mut joined).map(|index| (m.current_leader, index))
        };
        if let Some((leader, index)) = removed_at {
            match super::standing::leader_lists(&shared).await {
                // A node added again after a removal replays its old memberships (voter, then
                // removed, then learner again) as it catches up: the leader says which is now.
                Some(true) => {
                    joined = None;
                }
                Some(false) => {
                    shared
                        .retire(retired_message(shared.node_id, leader.unwrap_or(0), index))
                        .await;
                    return;
                }
                // No leader to ask: look again in a moment.
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn membership_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>,
    shared: &Shared,
) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => shared.redirect(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => Status::aborted(format!(
                "another membership change is in progress ({p}); retry when it completes"
            )),
            other => Status::failed_precondition(other.to_string()),
        },
        other => Status::unavailable(format!("membership change failed: {other}")),
    }
}

fn parse_addr(field: &str, value: &str) -> Result<String, Status> {
    match value.parse::<std::net::SocketAddr>() {
        Ok(a) => Ok(a.to_string()),
        Err(_) => super::config::check_host_port(value)
            .map(|()| value.to_string())
            .map_err(|m| Status::invalid_argument(format!("{field}: {m}"))),
    }
}

impl Api {
    pub(super) async fn add_node_rpc(
        &self,
        caller: Caller,
        r: proto::AddNodeRequest,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        let started = Instant::now();
        let shared = &self.shared;
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be greater than 0"));
        }
        let node = NodeAddr {
            raft: parse_addr("raft_address", &r.raft_address)?,
            client: parse_addr("client_address", &r.client_address)?,
        };
        let catch_up = match r.catch_up_timeout_ms {
            0 => DEFAULT_CATCH_UP,
            ms => Duration::from_millis(ms).min(MAX_CATCH_UP),
        };
        let by = caller.principal(&r.principal)?;
        let (voters, known) = shared.leader_view(r.node_id).await?;
        if let Some(known) = &known {
            if *known != node {
                return Err(Status::failed_precondition(format!(
                    "node {} is already a member at {known}; remove it first to move it",
                    r.node_id
                )));
            }
        }
        let probe = shared
            .authorize_membership(&caller, by, format!("add node {} ({node})", r.node_id))
            .await?;
        if voters.contains(&r.node_id) {
            if r.learner {
                return Err(Status::failed_precondition(format!(
                    "node {} is a voter already; remove it first to make it a learner",
                    r.node_id
                )));
            }
            return Ok(shared.membership_response(None, started));
        }
        // A confirmed leader's membership holds every committed change: a node it does not list
        // as a voter never voted in this cluster's current configuration, and may be admitted.
        shared.confirm_leadership().await?;
        if known.is_some() {
            // A learner already (it may have lost its data and be joining again: a learner never
            // voted, so it is admitted before it is promoted).
            shared.identify_joiner(r.node_id, &node).await?;
        }
        if known.is_none() {
            shared.identify_joiner(r.node_id, &node).await?;
            tracing::info!(node = r.node_id, addr = %node, "adding a learner");
            tokio::time::timeout(
                PROPOSE_TIMEOUT,
                shared.raft.add_learner(r.node_id, node.clone(), false),
            )
            .await
            .map_err(|_| {
                Status::deadline_exceeded("adding the learner did not commit in time; retry")
            })?
            .map_err(|e| membership_error(e, shared))?;
        }
        if r.learner {
            return Ok(shared.membership_response(None, started));
        }
        self.wait_caught_up(r.node_id, catch_up).await?;
        let mut after = voters.clone();
        after.insert(r.node_id);
        shared
            .check_quorum(
                probe,
                &after,
                Some(r.node_id),
                &format!("adding node {}", r.node_id),
            )
            .await?;
        tracing::info!(node = r.node_id, "promoting the learner to voter");
        let log_index = shared
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.node_id])))
            .await?;
        Ok(shared.membership_response(Some(log_index), started))
    }

    /// Wait until the learner's log is within [`CAUGHT_UP_LAG`] entries of the leader's.
    async fn wait_caught_up(&self, id: NodeId, wait: Duration) -> Result<(), Status> {
        let mut rx = self.shared.raft.metrics();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (matched, last) = {
                let m = rx.borrow_and_update();
                if m.current_leader != Some(self.shared.node_id) {
                    return Err(self.shared.redirect());
                }
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                (matched, m.last_log_index.unwrap_or(0))
            };
            if matched.is_some_and(|i| i + CAUGHT_UP_LAG >= last) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(Status::failed_precondition(format!(
                    "node {id} has not caught up within {} (it has {} of {last} entries); it stays a \
                     learner: check that it runs and that the leader can reach its raft address, then \
                     retry add-node (or remove-node {id})",
                    humantime::format_duration(wait),
                    matched.map_or("none".to_string(), |i| i.to_string())
                )));
            }
        }
    }

    pub(super) async fn remove_node_rpc(
        &self,
        caller: Caller,
        r: proto::RemoveNodeRequest,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        let started = Instant::now();
        let shared = &self.shared;
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be greater than 0"));
        }
        let by = caller.principal(&r.principal)?;
        let (voters, node) = shared.leader_view(r.node_id).await?;
        let Some(node) = node else {
            // Already gone (a retry after an answer that was lost): the goal holds. Authorized
            // and audited all the same, and the node is told again if this leader removed it.
            shared
                .authorize_membership(
                    &caller,
                    by,
                    format!("remove node {} (not a member)", r.node_id),
                )
                .await?;
            let told = shared
                .removed
                .lock()
                .ok()
                .and_then(|m| m.get(&r.node_id).cloned());
            if let Some((addr, log_index)) = told {
                shared.tell_removed(r.node_id, &addr, log_index).await;
            }
            return Ok(shared.membership_response(None, started));
        };
        let is_voter = voters.contains(&r.node_id);
        let after: BTreeSet<NodeId> = voters
            .iter()
            .copied()
            .filter(|id| *id != r.node_id)
            .collect();
        if is_voter && after.is_empty() {
            return Err(Status::failed_precondition(format!(
                "node {} is the only voter; removing it would leave no cluster",
                r.node_id
            )));
        }
        let probe = shared
            .authorize_membership(&caller, by, format!("remove node {} ({node})", r.node_id))
            .await?;
        if is_voter {
            shared
                .check_quorum(probe, &after, None, &format!("removing node {}", r.node_id))
                .await?;
        }
        if r.node_id == shared.node_id {
            // A leader does not remove itself: it hands over and the caller retries at the new one.
            let wait = shared.config.raft.election_timeout_max * 3;
            return Err(match shared.hand_over(wait).await {
                Some(_) => shared.redirect(),
                None => Status::unavailable(
                    "this node leads and could not hand leadership over in time; retry",
                ),
            });
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([r.node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([r.node_id]))
        };
        tracing::info!(node = r.node_id, "removing a node");
        let log_index = shared.change_membership(change).await?;
        if let Ok(mut removed) = shared.removed.lock() {
            removed.insert(r.node_id, (node.clone(), log_index));
        }
        shared.tell_removed(r.node_id, &node, log_index).await;
        Ok(shared.membership_response(Some(log_index), started))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, LogId, Membership, RaftMetrics, StoredMembership};

    use super::removed_at;
    use crate::raft::{NodeAddr, NodeId};

    fn log_id(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    /// Metrics of node 4 seeing voters {1, 2, 3} plus `learners` at `index`, applied to `applied`.
    fn seen(index: u64, learners: &[NodeId], applied: u64) -> RaftMetrics<NodeId, NodeAddr> {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let nodes: BTreeMap<NodeId, NodeAddr> = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, NodeAddr::default()))
            .collect();
        let mut m = RaftMetrics::new_initial(4);
        m.membership_config = Arc::new(StoredMembership::new(
            log_id(index),
            Membership::new(vec![voters], nodes),
        ));
        m.last_applied = log_id(applied);
        m
    }

    #[test]
    fn a_node_that_never_was_a_member_is_not_removed() {
        let mut joined = None;
        assert_eq!(removed_at(&seen(5, &[], 9), 4, &mut joined), None);
    }

    #[test]
    fn an_applied_membership_without_us_after_we_joined_removes_us() {
        let mut joined = None;
        assert_eq!(removed_at(&seen(10, &[4], 10), 4, &mut joined), None);
        assert_eq!(joined, Some(10));
        // Not yet applied: it may still be truncated.
        assert_eq!(removed_at(&seen(20, &[], 15), 4, &mut joined), None);
        assert_eq!(removed_at(&seen(20, &[], 20), 4, &mut joined), Some(20));
    }

    #[test]
    fn a_truncated_add_falls_back_to_an_older_membership_and_does_not_remove_us() {
        let mut joined = None;
        // The add-learner entry at 10 reached us uncommitted, then a new leader truncated it: the
        // membership falls back to the one at 5, already applied.
        assert_eq!(removed_at(&seen(10, &[4], 3), 4, &mut joined), None);
        assert_eq!(removed_at(&seen(5, &[], 9), 4, &mut joined), None);
        // Added again for real later, then removed.
        assert_eq!(removed_at(&seen(30, &[4], 31), 4, &mut joined), None);
        assert_eq!(removed_at(&seen(40, &[], 40), 4, &mut joined), Some(40));
    }
}
