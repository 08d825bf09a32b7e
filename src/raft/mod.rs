//! The node-to-node transport and its messages, nothing else. openraft's type configuration is
//! [`crate::typeconfig`] (re-exported here), below both this layer and [`crate::storage`].

use serde::{Deserialize, Serialize};

use crate::model;

pub use crate::typeconfig::{
    AppendRequest, CommandResponse, Entry, LogId, NodeAddr, NodeId, Raft, Snapshot, SnapshotMeta,
    SnapshotRequest, StorageError, StoredMembership, TypeConfig,
};

pub mod network;
pub mod service;

/// Warrant's own node-to-node notices, sent on the Raft port (so only nodes can send them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// The leader `from` of `term` is stepping down (shutdown, or its own removal) and has stopped
    /// writing; the receiver, whose log matches the leader's, stands for election at once.
    /// `to` names the receiver: a notice reaching another node at a reused address is ignored.
    TakeOver { from: NodeId, to: NodeId, term: u64 },
    /// Leader `by` committed a membership without node `to` at `log_index`: it stops serving.
    Removed {
        by: NodeId,
        to: NodeId,
        log_index: u64,
    },
}

/// The node id of the certificate a Raft call came with (set by the Raft port's authentication;
/// absent on an insecure node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNode(pub NodeId);

/// Nodes this node has learned are members from its known members' own answers, though its log
/// does not say so yet (a follower that missed the entries adding a node that leads now), with the
/// index of this node's membership when it learned it: valid only while that membership stands.
pub type Learned = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, u64>>>;

/// Metadata every node-to-node call carries: the sender's cluster id ([`crate::storage::ClusterId`]).
pub const CLUSTER_ID_METADATA: &str = "warrant-cluster-id";

/// A forwarded command's outcome: the leader's answer and the log index it had applied when it
/// answered (the follower waits to apply as much), or its gRPC status as code and message.
pub type Forwarded = Result<(model::Response, u64), (i32, String)>;

/// A command a follower forwards to the leader, with where the answer goes.
pub struct ForwardRequest {
    pub command: model::Command,
    pub reply: tokio::sync::oneshot::Sender<Forwarded>,
}

/// Who asks `Identify` (its payload; empty from a caller that does not say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifyAsk {
    pub from: NodeId,
    /// The asker started on an empty data directory and is not admitted yet
    /// ([`crate::storage::Standing`]): it wants to know whether it is a founding member.
    pub joining: bool,
    /// The joining data directory's incarnation (a nonce made with it): a founding member is told
    /// so again only under the incarnation it was first told under.
    pub incarnation: String,
    /// The leader asks a node it is about to add as a learner (not a member yet, so it never
    /// voted in this cluster): a joining node is admitted.
    pub admit: bool,
}

/// What a node answers to `Identify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node: NodeId,
    pub cluster_id: Option<String>,
    /// The log index this node has applied (a follower compares it with its own to judge whether
    /// it has caught up).
    pub applied: u64,
    /// The leader this node knows of, and its term.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Voters (of every configuration, while a change is joint) and learners of this node's
    /// latest membership.
    pub voters: std::collections::BTreeSet<NodeId>,
    pub learners: std::collections::BTreeSet<NodeId>,
    /// Answered by the bootstrap node to a joining founding member that it has not told before:
    /// "you are a founding member, you never held data; vote".
    pub founding: bool,
}
