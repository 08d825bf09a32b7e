//! openraft's type configuration, at the bottom of the house: the transport ([`crate::raft`]) and the
//! storage ([`crate::storage`]) both build on it, and neither on the other.
//!
//! Log entries carry a [`model::Request`] (a command stamped with the leader's wall clock); applying
//! one yields a [`CommandResponse`]; a snapshot travels as a [`SnapshotFile`].

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};

use crate::model;

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
        SnapshotData = SnapshotFile,
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

/// A snapshot file as openraft reads it (to send it) or writes it (to receive one): the file and
/// where it is.
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotFile {
    pub fn new(file: std::fs::File, path: PathBuf) -> Self {
        Self {
            file: tokio::fs::File::from_std(file),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (storage reads the snapshot's meta through it).
    pub fn file_mut(&mut self) -> &mut tokio::fs::File {
        &mut self.file
    }

    /// Wait for every write to reach the file and return it.
    pub async fn finish(self) -> std::io::Result<std::fs::File> {
        use tokio::io::AsyncWriteExt;
        let mut file = self.file;
        file.flush().await?;
        Ok(file.into_std().await)
    }
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotFile({})", self.path.display())
    }
}

impl tokio::io::AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}
