//! Forming a cluster and admitting a node that started on an empty data directory (DESIGN rule 6:
//! a node never votes from a state it has lost).
//!
//! - The bootstrap node forms the cluster only once **every** configured peer answers and none has
//!   a cluster yet; it records the other founding members before the cluster gets its id
//!   ([`crate::storage::Standing`]). A bootstrap node that lost its data therefore refuses (a peer
//!   has the id), or waits while its peers are down, instead of founding a second cluster.
//! - Any other node on a new data directory is *joining*: it grants no vote and never stands for
//!   election. [`await_admission`] asks its peers until one of them settles it:
//!   - the bootstrap node answers "founding" (once per founding member): admitted;
//!   - the leader, about to add it with `add-node` (it is no member), admits it (`IdentifyAsk`);
//!   - the leader lists it as a learner (a learner that lost its data never voted): admitted;
//!   - the leader lists it as a voter: this is a voter that lost its data. It retires with a
//!     message saying how to replace it, and a restart refuses with the same message.
//!
//! Why a voter that lost its data must not come back as itself: it may have acknowledged a grant
//! that only it and one other node held, and voted in a term it no longer remembers; with a blank
//! vote it could elect a node missing that grant, and the grant's token would be issued again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Config, Error, Shared};
use crate::raft::network::Network;
use crate::raft::{IdentifyAsk, Identity, NodeId};
use crate::storage::{ClusterId, Standing};

/// How long one Identify may take (a leader answering a joining node first confirms its
/// leadership, for up to 1 s).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a joining node or a forming bootstrap node asks again: often, since a founding
/// member that is not admitted yet neither votes nor takes entries.
const ASK_EVERY: Duration = Duration::from_millis(200);
/// How often a forming bootstrap node says whom it still waits for.
const SAY_EVERY: Duration = Duration::from_secs(5);

/// The message a voter that lost its data retires with, and refuses to start with.
pub fn lost_data_message(me: NodeId, leader: NodeId, data_dir: &std::path::Path) -> String {
    format!(
        "node {me} is a voter of its cluster (leader {leader} says so), but it started on an empty \
         data directory: its data was lost or wiped. A voter that lost its data must not vote or \
         rejoin as itself (it may have acknowledged grants and votes it no longer has), so it does \
         not serve. To replace it: stop this process; run `warrant cluster remove-node {me}` \
         against the cluster; empty {}; start this node again (bootstrap = false); then run \
         `warrant cluster add-node {me} RAFT_ADDR CLIENT_ADDR`: it joins as a learner and becomes a \
         voter once it has caught up",
        data_dir.display()
    )
}

/// The bootstrap node's wait before it forms a cluster: until every peer answers Identify, or
/// [`Error::AlreadyBootstrapped`] as soon as one has a cluster id.
pub(super) async fn await_founding_peers(network: &Network, config: &Config) -> Result<(), Error> {
    let ask = IdentifyAsk {
        from: config.node_id,
        joining: false,
        incarnation: String::new(),
        admit: false,
    };
    let mut said = tokio::time::Instant::now();
    loop {
        let asks = config
            .peers
            .iter()
            .filter(|(id, _)| **id != config.node_id)
            .map(|(id, p)| {
                let ask = &ask;
                async move {
                    let found = network.identify(&p.raft, Some(ask), ASK_TIMEOUT).await;
                    (*id, p.raft.clone(), found)
                }
            });
        let mut silent = Vec::new();
        for (peer, addr, found) in futures::future::join_all(asks).await {
            match found {
                Ok(Identity {
                    cluster_id: Some(cluster_id),
                    ..
                }) => {
                    return Err(Error::AlreadyBootstrapped {
                        peer,
                        addr,
                        cluster_id,
                        me: config.node_id,
                    })
                }
                Ok(_) => {}
                Err(_) => silent.push(peer),
            }
        }
        if silent.is_empty() {
            return Ok(());
        }
        if said.elapsed() >= SAY_EVERY {
            said = tokio::time::Instant::now();
            tracing::warn!(
                waiting_for = ?silent,
                "bootstrap: the cluster is formed once every peer answers and none has a cluster \
                 yet (a bootstrap node that lost its data must not found a second cluster)"
            );
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

/// What the answers of one round say about a joining node.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Admitted: a founding member told so, or a learner of the leader's membership.
    Admit(&'static str),
    /// The leader lists it as a voter: it lost its data.
    LostData { leader: NodeId },
    /// Nothing settled yet (no leader known, or not a member yet).
    Wait,
}

/// Judge one round of answers for node `me` (cluster id `ours`, if it has one).
fn judge(me: NodeId, ours: Option<&str>, answers: &[Identity]) -> Verdict {
    let same_cluster = |a: &Identity| match (ours, a.cluster_id.as_deref()) {
        (Some(ours), Some(theirs)) => ours == theirs,
        _ => true,
    };
    if answers.iter().any(|a| a.founding && same_cluster(a)) {
        return Verdict::Admit("a founding member");
    }
    // The leader's view, from the node that says it leads in the highest term.
    let Some(leader) = answers
        .iter()
        .filter(|a| a.leader == Some(a.node) && same_cluster(a))
        .max_by_key(|a| a.term)
    else {
        return Verdict::Wait;
    };
    if leader.voters.contains(&me) {
        Verdict::LostData {
            leader: leader.node,
        }
    } else if leader.learners.contains(&me) {
        Verdict::Admit("a learner the leader added")
    } else {
        Verdict::Wait
    }
}

/// Does the leader (the peer that says it leads, in the highest term) list this node as a member?
/// `None` when no leader answers.
pub(super) async fn leader_lists(shared: &Shared) -> Option<bool> {
    let answers = ask_peers(shared, None).await;
    let leader = answers
        .iter()
        .filter(|a| a.leader == Some(a.node))
        .max_by_key(|a| a.term)?;
    Some(leader.voters.contains(&shared.node_id) || leader.learners.contains(&shared.node_id))
}

/// Whether a majority of this node's voters (counted without this node, whose log does not name
/// `id`) name `id` as a voter or learner of their membership: a node this node's log does not list yet (it missed the
/// entries that added it) may then speak Raft to it (issue 25 item 1).
pub(super) async fn members_vouch_for(shared: &Shared, id: NodeId) -> bool {
    let voters: BTreeSet<NodeId> = shared
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    if voters.is_empty() {
        return false;
    }
    let answers = ask_peers(shared, None).await;
    let vouching: BTreeSet<NodeId> = answers
        .iter()
        .filter(|a| voters.contains(&a.node))
        .filter(|a| a.voters.contains(&id) || a.learners.contains(&id))
        .map(|a| a.node)
        .collect();
    vouching.len() > voters.len() / 2
}

/// Ask every peer (the configured ones and the members this node has heard of) who they are.
async fn ask_peers(shared: &Shared, ask: Option<&IdentifyAsk>) -> Vec<Identity> {
    ask_peers_noting(shared, ask, &mut Vec::new()).await
}

/// [`ask_peers`], noting in `errors` why a peer did not answer.
async fn ask_peers_noting(
    shared: &Shared,
    ask: Option<&IdentifyAsk>,
    errors: &mut Vec<String>,
) -> Vec<Identity> {
    let addrs: BTreeSet<String> = {
        let m = shared.raft.metrics().borrow().clone();
        let known = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != shared.node_id)
            .map(|(_, n)| n.raft.clone())
            .collect::<Vec<_>>();
        shared
            .config
            .peers
            .iter()
            .filter(|(id, _)| **id != shared.node_id)
            .map(|(_, p)| p.raft.clone())
            .chain(known)
            .collect()
    };
    let asks = addrs
        .iter()
        .map(|addr| shared.network.identify(addr, ask, ASK_TIMEOUT));
    let mut answers = Vec::new();
    for (addr, answer) in addrs.iter().zip(futures::future::join_all(asks).await) {
        match answer {
            Ok(a) => answers.push(a),
            Err(e) => errors.push(format!("{addr}: {}", e.message())),
        }
    }
    answers
}

/// A joining node's task: ask the peers (the configured ones and the members this node has heard
/// of) until admitted or found to have lost its data.
pub(super) async fn await_admission(
    shared: Arc<Shared>,
    standing: Standing,
    cluster_id: ClusterId,
) {
    let ask = IdentifyAsk {
        from: shared.node_id,
        joining: true,
        incarnation: standing.incarnation(),
        admit: false,
    };
    let mut stopping = shared.stopping.clone();
    tracing::info!(
        "this node started on an empty data directory: it grants no vote until the bootstrap node \
         says it is a founding member or the leader has added it as a learner"
    );
    let mut rounds = 0u64;
    while standing.is_joining() {
        let mut errors = Vec::new();
        let answers = ask_peers_noting(&shared, Some(&ask), &mut errors).await;
        let ours = cluster_id.get();
        let verdict = judge(shared.node_id, ours.as_deref(), &answers);
        rounds += 1;
        if rounds % 25 == 0 {
            tracing::info!(
                rounds,
                answers = answers.len(),
                ?errors,
                leaders = ?answers.iter().filter_map(|a| a.leader).collect::<Vec<_>>(),
                "still joining: not a founding member by the bootstrap node's word, and no \
                 confirmed leader lists this node yet"
            );
        }
        match verdict {
            Verdict::Admit(how) => {
                if let Some(id) = answers
                    .iter()
                    .find_map(|a| a.founding.then_some(a.cluster_id.clone()).flatten())
                {
                    if let Err(e) = cluster_id.adopt(&id) {
                        tracing::error!(error = %e, "cannot record the cluster id");
                    }
                }
                match standing.admit() {
                    Ok(()) => {
                        shared.raft.runtime_config().elect(true);
                        tracing::info!("admitted to the cluster as {how}: this node votes now");
                        return;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot record the admission"),
                }
            }
            // Admitted meanwhile (the leader's add-node): the answers of this round are older.
            Verdict::LostData { .. } if !standing.is_joining() => return,
            Verdict::LostData { leader } => {
                shared
                    .retire(lost_data_message(
                        shared.node_id,
                        leader,
                        &shared.config.data_dir,
                    ))
                    .await;
                return;
            }
            Verdict::Wait => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(ASK_EVERY) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node: NodeId, leader: Option<NodeId>, term: u64) -> Identity {
        Identity {
            node,
            cluster_id: Some("c1".into()),
            applied: 0,
            leader,
            term,
            voters: [1, 2, 3].into(),
            learners: BTreeSet::new(),
            founding: false,
        }
    }

    #[test]
    fn a_voter_the_leader_lists_lost_its_data_and_a_learner_is_admitted() {
        let follower = answer(3, Some(1), 2);
        assert_eq!(
            judge(2, None, std::slice::from_ref(&follower)),
            Verdict::Wait
        );
        let leader = answer(1, Some(1), 2);
        assert_eq!(
            judge(2, None, &[follower.clone(), leader.clone()]),
            Verdict::LostData { leader: 1 }
        );
        let mut readded = leader.clone();
        readded.voters = [1, 3].into();
        readded.learners = [2].into();
        assert_eq!(
            judge(2, None, &[readded.clone()]),
            Verdict::Admit("a learner the leader added")
        );
        let mut removed = readded;
        removed.learners.clear();
        assert_eq!(
            judge(2, None, &[removed]),
            Verdict::Wait,
            "not a member yet"
        );
    }

    #[test]
    fn the_newest_leader_decides_and_another_clusters_answers_do_not_count() {
        let mut old = answer(1, Some(1), 2);
        old.voters = [1, 3].into();
        old.learners = [2].into();
        let new = answer(3, Some(3), 5);
        assert_eq!(
            judge(2, None, &[old.clone(), new]),
            Verdict::LostData { leader: 3 }
        );
        let mut founding = answer(1, None, 0);
        founding.cluster_id = Some("other".into());
        founding.founding = true;
        assert_eq!(judge(2, Some("c1"), &[founding.clone()]), Verdict::Wait);
        assert_eq!(
            judge(2, Some("c1"), &[old]),
            Verdict::Admit("a learner the leader added")
        );
        founding.cluster_id = None;
        assert_eq!(
            judge(2, None, &[founding]),
            Verdict::Admit("a founding member")
        );
    }
}
