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

use super::{Control, NodeAddr, NodeId, TypeConfig};
use crate::proto::raft::raft_client::RaftClient;
use crate::proto::raft::RaftMessage;

/// Creates a [`PeerClient`] per peer for openraft. One HTTP/2 channel per peer address is shared by
/// every client openraft asks for: openraft makes a fresh client for each leadership check
/// (`ensure_linearizable`), and a new TCP connection per check would cost more than the check.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// mTLS to peers (this node's certificate, the cluster CA); `None` in insecure mode.
    tls: Option<ClientTlsConfig>,
}

impl Network {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            channels: Default::default(),
            tls,
        }
    }

    fn channel(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Some(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).ok()?;
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
        let mut request = tonic::Request::new(RaftMessage { payload });
        request.set_timeout(timeout);
        RaftClient::new(channel)
            .control(request)
            .await
            .map(|_| ())
            .map_err(|s| format!("{}: {}", node.raft, s.message()))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            target,
            client: self.channel(&node.raft).map(RaftClient::new),
            addr: node.raft.clone(),
        }
    }
}

/// A connection to one peer's Raft service.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
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
        let mut request = tonic::Request::new(RaftMessage { payload });
        request.set_timeout(option.hard_ttl());
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
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
