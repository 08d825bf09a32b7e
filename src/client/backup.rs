//! Saving a backup (`SaveSnapshot`) into a file.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tonic::Code;

use super::{from_status, transient, Client, ClientError, ATTEMPT_TIMEOUT};
use crate::proto;
use crate::storage::backup::{BackupHeader, BackupReader};

/// Longest wait for the next chunk before the node is presumed gone.
const CHUNK_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at a whole backup (a broken stream starts over, on another node if need be).
const ATTEMPTS: u32 = 3;

/// A backup written to a file.
#[derive(Debug, Clone)]
pub struct SavedBackup {
    pub header: BackupHeader,
    pub bytes: u64,
    /// The SHA-256 stored at the end of the file (lowercase hex).
    pub sha256: String,
}

impl Client {
    /// Save a consistent backup of the cluster's state and audit log into `path` (written beside it
    /// and renamed into place once its checksum verifies and it is on disk).
    pub async fn save_snapshot(&self, path: &Path) -> Result<SavedBackup, ClientError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let local = |e: std::io::Error| ClientError::Invalid(format!("{}: {e}", partial.display()));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = proto::SaveSnapshotRequest {
                principal: self.inner.config.principal.to_string(),
            };
            let mut stream = self
                .call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.save_snapshot(req).await }
                })
                .await?;
            let mut file = std::io::BufWriter::new(
                crate::storage::files::private_file(&partial).map_err(local)?,
            );
            let mut bytes = 0u64;
            let broke = loop {
                match tokio::time::timeout(CHUNK_IDLE_TIMEOUT, stream.message()).await {
                    Ok(Ok(Some(chunk))) => {
                        file.write_all(&chunk.data).map_err(local)?;
                        bytes += chunk.data.len() as u64;
                    }
                    Ok(Ok(None)) => break None,
                    Ok(Err(s)) if transient(s.code()) => break Some(s.message().to_string()),
                    Ok(Err(s)) => {
                        let _ = std::fs::remove_file(&partial);
                        return Err(from_status(s));
                    }
                    Err(_) => break Some("no data within 60s".to_string()),
                }
            };
            if let Some(why) = broke {
                if attempt >= ATTEMPTS {
                    let _ = std::fs::remove_file(&partial);
                    return Err(ClientError::Unavailable {
                        last: format!("the backup broke off ({why})"),
                    });
                }
                continue;
            }
            let file = file.into_inner().map_err(|e| local(e.into_error()))?;
            file.sync_all().map_err(local)?;
            drop(file);
            let reader = BackupReader::open(&partial).map_err(|e| ClientError::Server {
                code: Code::DataLoss,
                message: e.to_string(),
            })?;
            std::fs::rename(&partial, path).map_err(local)?;
            return Ok(SavedBackup {
                header: reader.header,
                bytes,
                sha256: hex::encode(reader.sha256),
            });
        }
    }
}
