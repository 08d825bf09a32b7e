//! openraft glue: the type configuration and the node-to-node transport, nothing else.
//!
//! Log entries carry a [`model::Request`] (a command stamped with the leader's wall clock); applying
//! one yields a [`CommandResponse`]. Storage lives in [`crate::storage`].

use serde::{Deserialize, Serialize};

use crate::model;

pub mod network;
pub mod service;

/// Where a member listens: its Raft transport and its client API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// host:port of the node-to-node Raft service.
    pub raft: String,
    /// host:port of the client API.
    pub client: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} raft {}", self.client, self.raft)
    }
}

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

/// The state machine's answer to one log entry; `None` for blank and membership entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResponse(pub Option<model::Response>);

openraft::declare_raft_types!(
    /// Warrant's openraft type configuration. A log entry's request is shared (`Arc`): the log
    /// store's cache of recent entries, replication and apply hand the same request around instead
    /// of copying or decoding it again; it is stored and sent exactly as a bare `Request` (serde
    /// encodes an `Arc<T>` as its `T`), so the data format is unchanged.
    pub TypeConfig:
        D = std::sync::Arc<model::Request>,
        R = CommandResponse,
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::storage::SnapshotFile,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type AppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type SnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
