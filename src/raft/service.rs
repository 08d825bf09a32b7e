//! The incoming side of the node-to-node transport: decodes openraft RPCs and hands them to the
//! local Raft instance.

use tonic::{Request, Response, Status};

use super::{Control, Raft};
use crate::proto::raft::raft_server;
use crate::proto::raft::RaftMessage;

/// Serves `warrant.raft.v1.Raft` for one node.
pub struct RaftService {
    raft: Raft,
    /// Where [`Control`] notices go (the node acts on them).
    control: tokio::sync::mpsc::UnboundedSender<Control>,
}

impl RaftService {
    pub fn new(
        raft: Raft,
        control: tokio::sync::mpsc::UnboundedSender<Control>,
    ) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(Self { raft, control })
            .max_decoding_message_size(64 * 1024 * 1024)
    }
}

fn decode<T: serde::de::DeserializeOwned>(msg: Request<RaftMessage>) -> Result<T, Status> {
    bincode::deserialize(&msg.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = bincode::serialize(value)
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req = decode(request)?;
        reply(&self.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req = decode(request)?;
        reply(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req = decode(request)?;
        reply(&self.raft.install_snapshot(req).await)
    }

    async fn control(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let notice: Control = decode(request)?;
        self.control
            .send(notice)
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        reply(&())
    }
}
