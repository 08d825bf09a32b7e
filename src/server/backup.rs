//! `SaveSnapshot`: a consistent backup streamed to the caller (file format in
//! [`crate::storage::backup`]).
//!
//! Consistent: the state's bytes, its applied index and its audit chain length are read under one
//! read lock of the state machine; the audit records 1..=that length never change afterwards (they
//! are derived from committed entries), so they are read from RocksDB while the node goes on.

use std::io::{Seek, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::api::{Api, SnapshotStream};
use super::auth::Caller;
use crate::proto;
use crate::storage::backup::{BackupHeader, BackupWriter};
use crate::storage::{DATA_FORMAT_VERSION, OLDEST_DATA_FORMAT};

/// Bytes per streamed chunk.
const CHUNK: usize = 1 << 20;

/// Sends what is written to it as chunks of [`CHUNK`] bytes.
struct Chunks {
    tx: mpsc::Sender<Result<proto::SnapshotChunk, Status>>,
    buf: Vec<u8>,
}

impl Chunks {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(proto::SnapshotChunk { data }))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the caller went away")
            })
    }
}

impl Write for Chunks {
    /// Takes at most what fills the current chunk (`write_all` loops), so no message exceeds
    /// [`CHUNK`] bytes, well under gRPC's default 4 MiB limit.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The backup's header and its state, encoded into an unnamed temporary file in the data directory
/// (rewound, ready to read), both taken under one read lock of the state machine.
fn encode_state(shared: &super::Shared) -> Result<(BackupHeader, std::fs::File), Status> {
    let mut state = tempfile::tempfile_in(&shared.config.data_dir).map_err(|e| {
        Status::internal(format!(
            "cannot create a temporary file in {}: {e}",
            shared.config.data_dir.display()
        ))
    })?;
    let encode_err =
        |e: std::io::Error| Status::internal(format!("encoding the state for the backup: {e}"));
    let sm = shared.sm.read();
    let mut out = std::io::BufWriter::with_capacity(CHUNK, &mut state);
    sm.state
        .write_snapshot(&mut out)
        .and_then(|()| out.flush())
        .map_err(encode_err)?;
    drop(out);
    let state_len = state.stream_position().map_err(encode_err)?;
    let header = BackupHeader {
        cluster: shared.config.cluster_name.clone(),
        node: shared.node_id,
        taken_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        log_index: sm.last_applied.map_or(0, |l| l.index),
        data_format: DATA_FORMAT_VERSION,
        state_len,
        audit_records: sm.state.audit_chain().len(),
    };
    drop(sm);
    state.rewind().map_err(encode_err)?;
    Ok((header, state))
}

impl Api {
    pub(super) async fn save_snapshot_rpc(
        &self,
        caller: Caller,
        r: proto::SaveSnapshotRequest,
    ) -> Result<Response<SnapshotStream>, Status> {
        let shared = &self.shared;
        let by = caller.principal(&r.principal)?;
        if let Some(gap) = shared
            .audit
            .gap()
            .map_err(|e| Status::internal(format!("reading the audit log: {e}")))?
        {
            return Err(Status::unavailable(format!(
                "this node is still fetching audit records {}..={} after a snapshot; ask another node",
                gap.from, gap.to
            )));
        }
        shared
            .admin_check(&caller, by, "snapshot_save", "save a backup".into())
            .await?;
        // The state is encoded under the read lock (applies wait meanwhile, as for a snapshot) into
        // an unnamed temporary file beside the data, straight from the model, on a blocking thread:
        // a backup of a large state (650 MB at a million leases) is never held in memory, and the
        // file vanishes with its last handle, even if the node crashes.
        let encoder = shared.clone();
        let (header, state) = tokio::task::spawn_blocking(move || encode_state(&encoder))
            .await
            .map_err(|e| Status::internal(format!("encoding the state for the backup: {e}")))??;
        tracing::info!(
            log_index = header.log_index,
            audit_records = header.audit_records,
            state_bytes = header.state_len,
            "saving a backup"
        );
        let (tx, rx) = mpsc::channel(4);
        let audit = shared.audit.clone();
        tokio::task::spawn_blocking(move || {
            let failed = tx.clone();
            let result = (|| -> Result<(), String> {
                let out = Chunks {
                    tx,
                    buf: Vec::with_capacity(CHUNK),
                };
                let state = std::io::BufReader::with_capacity(CHUNK, state);
                let mut w = BackupWriter::start(out, &header, state).map_err(|e| e.to_string())?;
                let mut next = 1;
                for r in audit.iter_range(1, header.audit_records) {
                    let r = r.map_err(|e| format!("reading the audit log: {e}"))?;
                    if r.seq != next {
                        return Err(format!("audit record {next} is missing on this node"));
                    }
                    w.record(&r).map_err(|e| e.to_string())?;
                    next += 1;
                }
                if next != header.audit_records + 1 {
                    return Err(format!("audit record {next} is missing on this node"));
                }
                w.finish().map_err(|e| e.to_string())?;
                Ok(())
            })();
            if let Err(e) = result {
                tracing::warn!(error = %e, "backup not completed");
                let _ = failed.blocking_send(Err(Status::internal(format!("backup failed: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub header: BackupHeader,
    /// The restored cluster's id: the same on every node restored from this file onto these peers.
    pub cluster_id: String,
    /// The token the backup's state would have issued next, and the one the new cluster will.
    pub next_token_in_backup: u64,
    pub next_token: u64,
    pub leases: usize,
    /// Access tokens the backup's registry held, none of which the restored cluster honours.
    pub tokens_dropped: usize,
}

/// Seed `config`'s (empty) data directory from the backup `file`: its state with the token counter
/// moved `skip_tokens` ahead, its audit records, and the config's peers as the voters. Run it for
/// every node of the new cluster, then start them.
pub fn restore(
    file: &std::path::Path,
    config: &super::config::Config,
    skip_tokens: u64,
) -> Result<Restored, String> {
    use crate::storage::backup::{restored_cluster_id, seed, BackupReader, Seed};
    let mut reader = BackupReader::open(file).map_err(|e| e.to_string())?;
    let state = reader.read_state().map_err(|e| e.to_string())?;
    let header = reader.header.clone();
    if !(OLDEST_DATA_FORMAT..=DATA_FORMAT_VERSION).contains(&header.data_format) {
        return Err(format!(
            "{} was written by data format version {}, this build writes version {}: restore it \
             with the Warrant version that saved it",
            file.display(),
            header.data_format,
            DATA_FORMAT_VERSION
        ));
    }
    let mut state = crate::model::State::from_snapshot(&state)
        .map_err(|e| format!("{}: the state does not decode: {e}", file.display()))?;
    if state.audit_chain().len() != header.audit_records {
        return Err(format!(
            "{}: the state's audit chain has {} records but the backup holds {}",
            file.display(),
            state.audit_chain().len(),
            header.audit_records
        ));
    }
    let next_token_in_backup = state.next_token_value();
    state.skip_tokens(skip_tokens);
    // A token revoked after the backup was taken would be live again in the restored registry,
    // and one minted after it would be unknown; the restored cluster honours neither (a token
    // must be in the registry, see `Shared::token_known`), so it starts with none.
    let tokens_dropped = state.forget_tokens();
    state.restart_terms();
    let leases = state.list("").len();
    let members: std::collections::BTreeMap<_, _> = config
        .peers
        .iter()
        .map(|(id, p)| {
            (
                *id,
                crate::raft::NodeAddr {
                    raft: p.raft.clone(),
                    client: p.client.clone(),
                },
            )
        })
        .collect();
    let cluster_id = restored_cluster_id(&reader.sha256, &members);
    seed(
        &config.data_dir,
        Seed {
            cluster: config.cluster_name.clone(),
            cluster_id: cluster_id.clone(),
            node: config.node_id,
            members,
            state: state.to_snapshot(),
            log_index: header.log_index,
        },
        || reader.next_record(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Restored {
        cluster_id,
        next_token: state.next_token_value(),
        header,
        next_token_in_backup,
        leases,
        tokens_dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_write_is_cut_into_chunks_no_bigger_than_the_limit() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut out = Chunks {
            tx,
            buf: Vec::new(),
        };
        let data = vec![7u8; CHUNK * 3 + 5];
        out.write_all(&data).unwrap();
        out.flush().unwrap();
        drop(out);
        let mut sizes = Vec::new();
        while let Ok(Ok(chunk)) = rx.try_recv() {
            sizes.push(chunk.data.len());
        }
        assert_eq!(sizes, vec![CHUNK, CHUNK, CHUNK, 5]);
    }
}
