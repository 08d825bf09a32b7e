//! The outgoing side of the node-to-node transport: openraft's RPCs as bincode over tonic gRPC.
//!
//! One lazily connected channel per peer; a peer that cannot be reached is reported to openraft as
//! `Unreachable`, which backs off and retries on its own. Log replication and heartbeats travel on
//! long-lived append streams (`AppendStream`), one request in flight on each; votes, snapshots and
//! the rest are unary calls.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{
    Control, Forwarded, IdentifyAsk, Identity, NodeAddr, NodeId, TypeConfig, CLUSTER_ID_METADATA,
};
use crate::model::Command;
use crate::proto::raft::raft_client::RaftClient;
use crate::proto::raft::RaftMessage;
use crate::storage::ClusterId;

/// Creates a [`PeerClient`] per peer for openraft. One HTTP/2 channel per peer address is shared by
/// every client openraft asks for: openraft makes a fresh client for each leadership check
/// (`ensure_linearizable`), and a new TCP connection per check would cost more than the check.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// mTLS to peers (this node's certificate, the cluster CA); `None` in insecure mode.
    tls: Option<ClientTlsConfig>,
    /// This node's cluster id, sent with every call.
    cluster_id: ClusterId,
    /// `raft.dial_via`: peer addresses dialled through another address (chaos testing).
    dial_via: Arc<std::collections::BTreeMap<String, String>>,
    /// Append streams not in use, per peer address.
    streams: Arc<Mutex<Streams>>,
}

/// Most idle append streams kept per peer (one per replication, plus a few for concurrent checks).
const MAX_IDLE_STREAMS: usize = 4;

/// One open append stream to a peer: a request goes out on `requests`, its reply is the next
/// message of `replies`. Held by one caller at a time; dropped (never reused) when an exchange on it
/// fails or is abandoned, so a late reply cannot answer the next request.
struct AppendStream {
    requests: mpsc::Sender<RaftMessage>,
    replies: tonic::Streaming<RaftMessage>,
    /// The cluster id its metadata carried at open.
    cluster_id: Option<String>,
}

#[derive(Default)]
struct Streams {
    idle: HashMap<String, Vec<AppendStream>>,
    /// Peers that answered UNIMPLEMENTED (an older version): unary AppendEntries for them.
    unary: HashSet<String>,
}

impl Streams {
    /// An idle stream to `addr` opened with `cluster_id` (others are closed).
    fn take(&mut self, addr: &str, cluster_id: &Option<String>) -> Option<AppendStream> {
        let idle = self.idle.get_mut(addr)?;
        while let Some(stream) = idle.pop() {
            if stream.cluster_id == *cluster_id {
                return Some(stream);
            }
        }
        None
    }

    fn put(&mut self, addr: &str, stream: AppendStream) {
        let idle = self.idle.entry(addr.to_string()).or_default();
        if idle.len() < MAX_IDLE_STREAMS {
            idle.push(stream);
        }
    }
}

impl Network {
    pub fn new(
        tls: Option<ClientTlsConfig>,
        cluster_id: ClusterId,
        dial_via: std::collections::BTreeMap<String, String>,
    ) -> Self {
        Self {
            channels: Default::default(),
            tls,
            cluster_id,
            dial_via: Arc::new(dial_via),
            streams: Default::default(),
        }
    }

    /// This node's cluster id, once known.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.get()
    }

    /// A request for `payload`, stamped with this node's cluster id.
    fn request(
        &self,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> tonic::Request<RaftMessage> {
        stamped(&self.cluster_id, payload, timeout)
    }

    fn channel(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Some(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let dial = self.dial_via.get(addr).map_or(addr, String::as_str);
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{dial}")).ok()?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).ok()?;
        }
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(1))
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Some(channel)
    }
}

impl Network {
    /// Send a [`Control`] notice to a node and wait for its acknowledgement.
    pub async fn control(
        &self,
        node: &NodeAddr,
        notice: &Control,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        let channel = self
            .channel(&node.raft)
            .ok_or_else(|| format!("bad raft address {}", node.raft))?;
        let payload = bincode::serialize(notice).map_err(|e| e.to_string())?;
        RaftClient::new(channel)
            .control(self.request(payload, timeout))
            .await
            .map(|_| ())
            .map_err(|s| format!("{}: {}", node.raft, s.message()))
    }

    /// Have the node at `node` (the leader) propose `command`, an admin check, and answer.
    pub async fn forward(
        &self,
        node: &NodeAddr,
        command: &Command,
        timeout: std::time::Duration,
    ) -> Result<Forwarded, tonic::Status> {
        let channel = self
            .channel(&node.raft)
            .ok_or_else(|| tonic::Status::internal(format!("bad raft address {}", node.raft)))?;
        let payload = bincode::serialize(command)
            .map_err(|e| tonic::Status::internal(format!("cannot encode: {e}")))?;
        let reply = RaftClient::new(channel)
            .forward(self.request(payload, timeout))
            .await?;
        bincode::deserialize(&reply.into_inner().payload)
            .map_err(|e| tonic::Status::internal(format!("undecodable forwarded answer: {e}")))
    }

    /// Ask who answers at `raft_addr`: its node id, cluster id and view of the membership. The
    /// call itself carries our cluster id, so a node of another cluster refuses it
    /// (FAILED_PRECONDITION). `ask` says who asks (a joining node must, to learn it is founding).
    pub async fn identify(
        &self,
        raft_addr: &str,
        ask: Option<&IdentifyAsk>,
        timeout: std::time::Duration,
    ) -> Result<Identity, tonic::Status> {
        let channel = self.channel(raft_addr).ok_or_else(|| {
            tonic::Status::invalid_argument(format!("bad raft address {raft_addr}"))
        })?;
        let payload = match ask {
            Some(ask) => bincode::serialize(ask)
                .map_err(|e| tonic::Status::internal(format!("cannot encode: {e}")))?,
            None => Vec::new(),
        };
        let reply = RaftClient::new(channel)
            .identify(self.request(payload, timeout))
            .await?;
        bincode::deserialize(&reply.into_inner().payload)
            .map_err(|e| tonic::Status::internal(format!("undecodable identity: {e}")))
    }
}

fn stamped(
    cluster_id: &ClusterId,
    payload: Vec<u8>,
    timeout: std::time::Duration,
) -> tonic::Request<RaftMessage> {
    let mut request = tonic::Request::new(RaftMessage { payload });
    request.set_timeout(timeout);
    stamp_cluster_id(&mut request, cluster_id.get().as_deref());
    request
}

/// Put this node's cluster id, once it has one, in a request's metadata.
fn stamp_cluster_id<T>(request: &mut tonic::Request<T>, cluster_id: Option<&str>) {
    if let Some(id) = cluster_id.and_then(|id| id.parse().ok()) {
        request.metadata_mut().insert(CLUSTER_ID_METADATA, id);
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            target,
            client: self.channel(&node.raft).map(RaftClient::new),
            addr: node.raft.clone(),
            cluster_id: self.cluster_id.clone(),
            streams: self.streams.clone(),
            stream: None,
        }
    }
}

/// A connection to one peer's Raft service.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    cluster_id: ClusterId,
    /// The network's idle append streams.
    streams: Arc<Mutex<Streams>>,
    /// The append stream this client used last, kept while it lives.
    stream: Option<AppendStream>,
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            lock(&self.streams).put(&self.addr, stream);
        }
    }
}

fn lock(streams: &Mutex<Streams>) -> std::sync::MutexGuard<'_, Streams> {
    streams.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a failed call is reported to openraft.
fn rpc_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, NodeAddr, E> {
    match status.code() {
        // A peer of another cluster refuses us: as good as unreachable (openraft backs off).
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::FailedPrecondition => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad peer address {}", self.addr),
            );
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let payload =
            bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = stamped(&self.cluster_id, payload, option.hard_ttl());
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(rpc_error)?;
        self.decode_reply(&reply.into_inner())
    }

    // The error type is openraft's (`RaftNetwork`'s signature).
    #[allow(clippy::result_large_err)]
    fn decode_reply<Resp, E>(&self, reply: &RaftMessage) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// AppendEntries on an append stream, within the call's time limit; unary for a peer without
    /// append streams.
    async fn append(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        if self.client.is_none() || lock(&self.streams).unary.contains(&self.addr) {
            return self.call(Rpc::Append, rpc, option).await;
        }
        let payload =
            bincode::serialize(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let exchanged = tokio::time::timeout(option.hard_ttl(), self.exchange(payload)).await;
        match exchanged {
            Ok(Ok(reply)) => self.decode_reply(&reply),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(peer = %self.addr, "peer serves no append streams: unary AppendEntries");
                lock(&self.streams).unary.insert(self.addr.clone());
                self.call(Rpc::Append, rpc, option).await
            }
            Ok(Err(status)) => Err(rpc_error(status)),
            Err(_) => {
                // The idle streams share the connection that did not answer.
                self.forget_idle();
                // A network error, as a unary call's deadline gave: openraft retries at once
                // (`Unreachable` would pause heartbeats to the peer for its back-off).
                let late = tonic::Status::deadline_exceeded(format!(
                    "no AppendEntries reply from {} within {:?}",
                    self.addr,
                    option.hard_ttl()
                ));
                Err(RPCError::Network(NetworkError::new(&late)))
            }
        }
    }

    /// Send one request on this client's append stream (an idle one of the network's, or a new
    /// one) and read its reply. The stream is held by this future until the reply is in: a call
    /// abandoned midway (its time limit) or failed drops it, and a failure drops every idle stream
    /// to the peer (they share its connection). A request that could not even be sent on a stream
    /// kept from before (closed since: the peer restarted or stopped it) goes on a new one.
    async fn exchange(&mut self, payload: Vec<u8>) -> Result<RaftMessage, tonic::Status> {
        let cluster_id = self.cluster_id.get();
        let kept = self.stream.take().filter(|s| s.cluster_id == cluster_id);
        let idle = || lock(&self.streams).take(&self.addr, &cluster_id);
        let mut message = RaftMessage { payload };
        if let Some(stream) = kept.or_else(idle) {
            match self.send_on(stream, message).await {
                Err(Unsent(m)) => {
                    self.forget_idle();
                    message = m;
                }
                Ok(done) => return done,
            }
        }
        let stream = self.open(cluster_id).await?;
        match self.send_on(stream, message).await {
            Ok(done) => done,
            Err(Unsent(_)) => Err(tonic::Status::unavailable("append stream closed")),
        }
    }

    /// One exchange on `stream`, kept by this client if it succeeds; the message back if the
    /// stream was closed before it could be sent.
    async fn send_on(
        &mut self,
        mut stream: AppendStream,
        message: RaftMessage,
    ) -> Result<Result<RaftMessage, tonic::Status>, Unsent> {
        if let Err(mpsc::error::SendError(message)) = stream.requests.send(message).await {
            return Err(Unsent(message));
        }
        Ok(match stream.replies.message().await {
            Ok(Some(reply)) => {
                self.stream = Some(stream);
                Ok(reply)
            }
            Ok(None) => {
                self.forget_idle();
                Err(tonic::Status::unavailable("append stream ended"))
            }
            Err(status) => {
                self.forget_idle();
                Err(status)
            }
        })
    }

    /// Close the idle streams to this peer: they share the connection a call just failed on.
    fn forget_idle(&self) {
        lock(&self.streams).idle.remove(&self.addr);
    }

    async fn open(&self, cluster_id: Option<String>) -> Result<AppendStream, tonic::Status> {
        let mut client = self
            .client
            .clone()
            .ok_or_else(|| tonic::Status::invalid_argument("bad peer address"))?;
        // One request in flight per stream.
        let (requests, outgoing) = mpsc::channel(1);
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        stamp_cluster_id(&mut request, cluster_id.as_deref());
        let replies = client.append_stream(request).await?.into_inner();
        Ok(AppendStream {
            requests,
            replies,
            cluster_id,
        })
    }
}

/// A request whose append stream was closed before it could be sent.
struct Unsent(RaftMessage);

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.append(&rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
