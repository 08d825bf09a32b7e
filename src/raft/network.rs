//! The outgoing side of the node-to-node transport: openraft's RPCs as bincode over tonic gRPC.
//!
//! One lazily connected channel per peer; a peer that cannot be reached is reported to openraft as
//! `Unreachable`, which backs off and retries on its own.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{Control, Forwarded, Identity, NodeAddr, NodeId, TypeConfig, CLUSTER_ID_METADATA};
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

    /// Ask who answers at `raft_addr`: its node id and cluster id. The call itself carries our
    /// cluster id, so a node of another cluster refuses it (FAILED_PRECONDITION) and a node with
    /// none adopts ours.
    pub async fn identify(
        &self,
        raft_addr: &str,
        timeout: std::time::Duration,
    ) -> Result<Identity, tonic::Status> {
        let channel = self.channel(raft_addr).ok_or_else(|| {
            tonic::Status::invalid_argument(format!("bad raft address {raft_addr}"))
        })?;
        let reply = RaftClient::new(channel)
            .identify(self.request(Vec::new(), timeout))
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
    if let Some(id) = cluster_id.get().and_then(|id| id.parse().ok()) {
        request.metadata_mut().insert(CLUSTER_ID_METADATA, id);
    }
    request
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            target,
            client: self.channel(&node.raft).map(RaftClient::new),
            addr: node.raft.clone(),
            cluster_id: self.cluster_id.clone(),
        }
    }
}

/// A connection to one peer's Raft service.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    cluster_id: ClusterId,
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
        let reply = reply.map_err(|status| match status.code() {
            // A peer of another cluster refuses us: as good as unreachable (openraft backs off).
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::FailedPrecondition => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

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
        self.call(Rpc::Append, &rpc, &option).await
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
