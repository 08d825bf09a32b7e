//! The incoming side of the node-to-node transport: decodes openraft RPCs and hands them to the
//! local Raft instance.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    Control, ForwardRequest, IdentifyAsk, Identity, Learned, NodeId, PeerNode, Raft,
    CLUSTER_ID_METADATA,
};
use crate::model::Command;
use crate::proto::raft::raft_server;
use crate::proto::raft::RaftMessage;
use crate::storage::{self, ClusterId, Standing};

/// Set once this node no longer serves (removed, or a voter that lost its data): why.
pub type Retired = std::sync::Arc<std::sync::OnceLock<String>>;

/// Serves `warrant.raft.v1.Raft` for one node.
pub struct RaftService {
    node: NodeId,
    raft: Raft,
    cluster_id: ClusterId,
    /// Whether this node may vote, take log entries and lead (DESIGN rule 6).
    standing: Standing,
    retired: Retired,
    /// Where [`Control`] notices go (the node acts on them).
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    /// Where forwarded commands go (the node proposes them).
    forward: tokio::sync::mpsc::Sender<ForwardRequest>,
    /// Becomes true when the node stops: its append streams end (their connections may outlive
    /// the server).
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Who may speak Raft to this node.
    gate: Gate,
}

/// Only current members speak Raft (issue 25 item 1). What a sender may do depends on what this
/// node's membership (joint configurations included) says of the certificate's node:
/// - votes, log appends and snapshots only from a voter (a learner never sends them; a voter this
///   node's log does not list yet is let in once a majority of its voters vouch for it: `learned`,
///   asked for through `learn`, valid while this node's membership stays the one it was learned at);
/// - notices, forwarded checks and admissions from any member (voter or learner);
/// - while this node has no membership at all (it is joining), from any node certificate of the
///   cluster's CA, as `cluster add-node` needs (the new node's config need not list the leader).
///
/// Insecure nodes have no certificates to check.
#[derive(Clone)]
struct Gate {
    raft: Raft,
    learned: Learned,
    learn: tokio::sync::mpsc::UnboundedSender<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Voter,
    Member,
}

impl Gate {
    fn check(&self, sender: Sender, needs: Needs) -> Result<(), Status> {
        let Sender(Some(id)) = sender else {
            return Ok(());
        };
        let (allowed, at) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let at = m.membership_config.log_id().map_or(0, |l| l.index);
            let membership = m.membership_config.membership();
            let allowed = if membership.nodes().next().is_none() {
                true
            } else if needs == Needs::Voter {
                membership.voter_ids().any(|n| n == id)
            } else {
                membership.nodes().any(|(n, _)| *n == id)
            };
            (allowed, at)
        };
        if allowed || self.learned.lock().is_ok_and(|l| l.get(&id) == Some(&at)) {
            return Ok(());
        }
        let _ = self.learn.send(id);
        Err(Status::permission_denied(format!(
            "raft: node {id} is not a {} of this cluster; only members speak Raft",
            if needs == Needs::Voter {
                "voter"
            } else {
                "member"
            }
        )))
    }
}

/// How a Raft call's sender is known: the certificate's node (secure), or not at all (insecure).
#[derive(Debug, Clone, Copy)]
struct Sender(Option<NodeId>);

impl Sender {
    /// The message speaks for `claimed` (the candidate of a vote, the leader of an append or a
    /// snapshot, the asker of an identify): it must be the certificate's own node.
    fn speaks_for(self, claimed: Option<NodeId>, what: &str) -> Result<(), Status> {
        match (self.0, claimed) {
            (Some(cert), Some(claimed)) if cert != claimed => {
                Err(Status::permission_denied(format!(
                    "raft: node {cert}'s certificate sent a {what} in the name of node {claimed}"
                )))
            }
            _ => Ok(()),
        }
    }
}

impl RaftService {
    pub fn new(
        node: NodeId,
        raft: Raft,
        cluster_id: ClusterId,
        (standing, retired): (Standing, Retired),
        (control, forward): (
            tokio::sync::mpsc::UnboundedSender<Control>,
            tokio::sync::mpsc::Sender<ForwardRequest>,
        ),
        stopping: tokio::sync::watch::Receiver<bool>,
        (learned, learn): (Learned, tokio::sync::mpsc::UnboundedSender<NodeId>),
    ) -> raft_server::RaftServer<Self> {
        let gate = Gate {
            raft: raft.clone(),
            learned,
            learn,
        };
        raft_server::RaftServer::new(Self {
            node,
            raft,
            cluster_id,
            standing,
            retired,
            control,
            forward,
            stopping,
            gate,
        })
        .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// The certificate's node, checked by the [`Gate`] for what the call needs.
    fn sender<T>(&self, request: &Request<T>, needs: Needs) -> Result<Sender, Status> {
        let sender = Sender(request.extensions().get::<PeerNode>().map(|p| p.0));
        self.gate.check(sender, needs)?;
        Ok(sender)
    }

    /// Refuse a call from another cluster. With `adopt` (log replication: only a leader sends it),
    /// record the sender's cluster id if this node has none; other calls (votes, notices, probes)
    /// record nothing, so a stray vote request or a mistaken add-node cannot claim a fresh node.
    /// A sender without an id (a node that has not heard from its cluster yet) is let through.
    fn check_cluster<T>(&self, request: &Request<T>, adopt: bool) -> Result<(), Status> {
        self.check_cluster_with(request, adopt, true)
    }

    /// [`check_cluster`](Self::check_cluster); with `required`, a call without a cluster id is
    /// refused once this node has one.
    fn check_cluster_with<T>(
        &self,
        request: &Request<T>,
        adopt: bool,
        required: bool,
    ) -> Result<(), Status> {
        let Some(theirs) = request.metadata().get(CLUSTER_ID_METADATA) else {
            // Only a node that has not heard from its cluster yet sends none, and it sends only
            // identify asks; once this node has an id, every other call must name it.
            if required && self.cluster_id.get().is_some() {
                return Err(Status::failed_precondition(
                    "raft: this node belongs to a cluster and the message names none",
                ));
            }
            return Ok(());
        };
        let theirs = theirs
            .to_str()
            .map_err(|_| Status::invalid_argument("the cluster id metadata is not ASCII"))?;
        let checked = if adopt {
            self.cluster_id.adopt(theirs)
        } else {
            self.cluster_id.check(theirs)
        };
        checked.map_err(|e| match e {
            storage::Error::OtherCluster { .. } => {
                tracing::warn!(error = %e, "refused a Raft message from another cluster");
                Status::failed_precondition(e.to_string())
            }
            storage::Error::BadClusterId(_) => Status::invalid_argument(e.to_string()),
            e => Status::internal(format!("cannot record the cluster id: {e}")),
        })
    }
}

impl RaftService {
    /// DESIGN rule 6: a node on a new data directory may have acknowledged entries and seen terms
    /// it no longer remembers, so it would accept a deposed leader of an old term and let it
    /// commit over entries committed since. It takes no log entry and no snapshot until admitted
    /// (an admitted newcomer then catches up), nor once retired.
    fn accepts_log(&self) -> Result<(), Status> {
        if let Some(why) = self.retired.get() {
            return Err(Status::failed_precondition(why.clone()));
        }
        if self.standing.is_joining() {
            return Err(Status::failed_precondition(format!(
                "node {} started on an empty data directory and has not been admitted to the \
                 cluster yet: it takes no log entries",
                self.node
            )));
        }
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(msg: Request<RaftMessage>) -> Result<T, Status> {
    decode_message(&msg.into_inner())
}

fn decode_message<T: serde::de::DeserializeOwned>(msg: &RaftMessage) -> Result<T, Status> {
    decode_payload(&msg.payload)
}

/// A Raft message's payload as `T`: how every message a peer sends is read (and fuzzed).
pub fn decode_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    bincode::deserialize(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply_message<T: serde::Serialize>(value: &T) -> Result<RaftMessage, Status> {
    let payload = bincode::serialize(value)
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
    Ok(RaftMessage { payload })
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    reply_message(value).map(Response::new)
}

/// Replies of one [`AppendStream`](raft_server::Raft::append_stream), in request order.
type AppendReplies = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

/// Serves one append stream: each request in turn, its reply sent before the next is read (a
/// sender has one request in flight per stream). An undecodable message ends the stream with
/// INVALID_ARGUMENT; the sender's going away or this node's stopping ends it quietly.
async fn serve_appends(
    raft: Raft,
    mut inbound: Streaming<RaftMessage>,
    replies: mpsc::Sender<Result<RaftMessage, Status>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    (sender, gate): (Sender, Gate),
) {
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            // The sender dropped the stream; no one reads the replies.
            () = replies.closed() => return,
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        let message = match message {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return,
        };
        let answer = match decode_message::<crate::raft::AppendRequest>(&message) {
            // Checked for every message: a stream opened before its sender was removed must
            // not carry appends after.
            Ok(req) => match gate
                .check(sender, Needs::Voter)
                .and_then(|()| sender.speaks_for(req.vote.leader_id().voted_for(), "log append"))
            {
                Ok(()) => reply_message(&raft.append_entries(req).await),
                Err(status) => Err(status),
            },
            Err(status) => Err(status),
        };
        let failed = answer.is_err();
        if replies.send(answer).await.is_err() || failed {
            return;
        }
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    type AppendStreamStream = AppendReplies;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<AppendReplies>, Status> {
        let sender = self.sender(&request, Needs::Voter)?;
        self.accepts_log()?;
        self.check_cluster(&request, true)?;
        // One reply in flight: the sender waits for it before the next request.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(serve_appends(
            self.raft.clone(),
            request.into_inner(),
            tx,
            self.stopping.clone(),
            (sender, self.gate.clone()),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&request, Needs::Voter)?;
        self.accepts_log()?;
        self.check_cluster(&request, true)?;
        let req: crate::raft::AppendRequest = decode(request)?;
        sender.speaks_for(req.vote.leader_id().voted_for(), "log append")?;
        reply(&self.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&request, Needs::Voter)?;
        self.check_cluster(&request, false)?;
        // DESIGN rule 6: a node on a new data directory may have voted, and acknowledged entries,
        // before it lost them; its vote could elect a leader missing a committed grant. The
        // candidate sees an unreachable voter, never a granted vote.
        if self.standing.is_joining() {
            return Err(Status::failed_precondition(format!(
                "node {} started on an empty data directory and has not been admitted to the \
                 cluster yet: it grants no vote",
                self.node
            )));
        }
        let req: openraft::raft::VoteRequest<NodeId> = decode(request)?;
        sender.speaks_for(req.vote.leader_id().voted_for(), "vote request")?;
        reply(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&request, Needs::Voter)?;
        self.accepts_log()?;
        self.check_cluster(&request, true)?;
        let req: crate::raft::SnapshotRequest = decode(request)?;
        sender.speaks_for(req.vote.leader_id().voted_for(), "snapshot")?;
        reply(&self.raft.install_snapshot(req).await)
    }

    async fn control(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&request, Needs::Member)?;
        self.check_cluster(&request, false)?;
        let notice: Control = decode(request)?;
        let from = match notice {
            Control::TakeOver { from, .. } => from,
            Control::Removed { by, .. } => by,
        };
        sender.speaks_for(Some(from), "notice")?;
        self.control
            .send(notice)
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        reply(&())
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.sender(&request, Needs::Member)?;
        self.check_cluster(&request, false)?;
        let command: Command = decode(request)?;
        let check = match &command {
            Command::AsToken { cmd, .. } | Command::ViaToken { cmd, .. } => cmd.as_ref(),
            cmd => cmd,
        };
        if !matches!(check, Command::AdminCheck { .. }) {
            return Err(Status::invalid_argument(
                "only admin checks are forwarded between nodes",
            ));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.forward
            .send(ForwardRequest { command, reply: tx })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        let answer = rx
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        reply(&answer)
    }

    async fn identify(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        // Anyone with a node certificate may ask who this node is (a node not yet a member asks
        // to be admitted), but only for itself, and only a member may admit this node.
        let member = self.sender(&request, Needs::Member);
        let cert = request.extensions().get::<PeerNode>().map(|p| p.0);
        // A node that has not heard from its cluster yet asks without an id.
        self.check_cluster_with(&request, false, false)?;
        let message = request.into_inner();
        let ask: Option<IdentifyAsk> = if message.payload.is_empty() {
            None
        } else {
            Some(decode_message(&message)?)
        };
        Sender(cert).speaks_for(ask.as_ref().map(|a| a.from), "identify ask")?;
        if ask.as_ref().is_some_and(|a| a.admit) && member.is_err() {
            return Err(Status::permission_denied(
                "raft: only a member of this cluster may admit a node",
            ));
        }
        if ask.as_ref().is_some_and(|a| a.admit)
            && self.standing.is_joining()
            && self.retired.get().is_none()
        {
            self.standing
                .admit()
                .map_err(|e| Status::internal(format!("cannot record the admission: {e}")))?;
            self.raft.runtime_config().elect(true);
            tracing::info!(
                by = ask.as_ref().map_or(0, |a| a.from),
                "admitted to the cluster as a new member (the leader adds it as a learner)"
            );
        }
        let founding = match &ask {
            Some(ask) if ask.joining => self
                .standing
                .take_founding(ask.from, &ask.incarnation)
                .map_err(|e| Status::internal(format!("cannot record a founding member: {e}")))?,
            _ => false,
        };
        // A joining node decides on the leader's word (admitted as a learner, or found out as a
        // voter that lost its data): a leader answers it only after confirming its leadership
        // with a quorum, and only with a membership it has applied (so committed). Otherwise it
        // names no leader, and the joining node asks again.
        // (A founding answer settles it: no confirmation needed, and none delays it.)
        let joining_asks = ask.as_ref().is_some_and(|a| a.joining) && !founding;
        let mut m = self.raft.metrics().borrow().clone();
        if joining_asks && m.current_leader == Some(self.node) {
            let confirmed = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                self.raft.ensure_linearizable(),
            )
            .await;
            m = self.raft.metrics().borrow().clone();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let membership_at = m.membership_config.log_id().map_or(0, |l| l.index);
            if !matches!(confirmed, Ok(Ok(_))) || membership_at > applied {
                m.current_leader = None;
            }
        }
        let membership = m.membership_config.membership();
        reply(&Identity {
            node: self.node,
            cluster_id: self.cluster_id.get(),
            applied: m.last_applied.map_or(0, |l| l.index),
            leader: m.current_leader,
            term: m.current_term,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            founding,
        })
    }
}
