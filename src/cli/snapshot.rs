//! `warrant snapshot save|restore|status`: backups, and seeding a new cluster from one.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;

use super::{exit, Common, Conn, Outcome, Output};
use crate::client::{Client, ClientError};
use crate::storage::backup::{BackupHeader, BackupReader};

/// Tokens a restore skips by default: room for everything the old cluster may have issued after
/// the backup was taken (u64 holds 18 billion such skips).
pub const DEFAULT_SKIP_TOKENS: u64 = 1_000_000_000;

#[derive(Subcommand)]
pub(super) enum SnapshotCommand {
    /// Admin: save a consistent backup (state and the whole audit log, checksummed) into FILE.
    Save {
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Offline: seed the (empty) data directory of the node CONFIG describes from FILE, with the
    /// config's peers as the new cluster's voters. Run it for every node, then start them all.
    Restore {
        file: PathBuf,
        #[arg(long)]
        config: PathBuf,
        /// Tokens to skip: the new cluster's first token is this far above the backup's next one,
        /// so tokens the old cluster issued after the backup are never issued again. Set it above
        /// the highest token any resource may have seen since the backup.
        #[arg(long, default_value_t = DEFAULT_SKIP_TOKENS)]
        skip_tokens: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Offline: verify FILE's checksum and show what it holds.
    Status {
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

fn header_json(h: &BackupHeader) -> serde_json::Value {
    json!({"cluster": h.cluster, "node": h.node, "taken_at_ms": h.taken_at_ms,
        "log_index": h.log_index, "revision": h.audit_records, "audit_records": h.audit_records,
        "state_bytes": h.state_len, "data_format": h.data_format})
}

fn header_text(h: &BackupHeader) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(h.taken_at_ms);
    format!(
        "cluster {:?}, taken from node {} at {}: log index {}, {} audit records (revision {}), state {} bytes",
        h.cluster,
        h.node,
        humantime::format_rfc3339_seconds(at),
        h.log_index,
        h.audit_records,
        h.audit_records,
        h.state_len
    )
}

fn print(output: Output, text: String, json: serde_json::Value) {
    match output {
        Output::Text => println!("{text}"),
        Output::Json => println!("{json}"),
    }
}

pub(super) async fn save(client: &Client, file: &Path) -> Result<Outcome, ClientError> {
    let saved = client.save_snapshot(file).await?;
    Ok(Outcome::ok(
        format!(
            "saved {} ({} bytes, sha256 {}): {}",
            file.display(),
            saved.bytes,
            saved.sha256,
            header_text(&saved.header)
        ),
        json!({"file": file.display().to_string(), "bytes": saved.bytes, "sha256": saved.sha256,
            "backup": header_json(&saved.header)}),
    ))
}

/// Offline commands (no connection).
pub(super) fn offline(command: SnapshotCommand) -> u8 {
    match command {
        SnapshotCommand::Status { file, common } => match BackupReader::open(&file) {
            Ok(r) => {
                print(
                    common.output,
                    format!(
                        "{}: ok, sha256 {}\n{}",
                        file.display(),
                        hex::encode(r.sha256),
                        header_text(&r.header)
                    ),
                    json!({"file": file.display().to_string(), "ok": true,
                        "sha256": hex::encode(r.sha256), "backup": header_json(&r.header)}),
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::OTHER
            }
        },
        SnapshotCommand::Restore {
            file,
            config,
            skip_tokens,
            common,
        } => {
            let config = match crate::server::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::INVALID;
                }
            };
            match crate::server::backup::restore(&file, &config, skip_tokens) {
                Ok(r) => {
                    print(
                        common.output,
                        format!(
                            "restored node {} of cluster {:?} (new cluster id {}) into {} from {}: {} \
                             live leases, audit records 1..={}, log index {}; tokens continue at {} \
                             (the backup's next was {}); the backup's {} access tokens are not \
                             carried over (mint new ones). Restore every node of the new cluster the \
                             same way, then start them.",
                            config.node_id,
                            config.cluster_name,
                            r.cluster_id,
                            config.data_dir.display(),
                            header_text(&r.header),
                            r.leases,
                            r.header.audit_records,
                            r.header.log_index,
                            r.next_token,
                            r.next_token_in_backup,
                            r.tokens_dropped
                        ),
                        json!({"node": config.node_id, "cluster": config.cluster_name,
                            "cluster_id": r.cluster_id, "data_dir": config.data_dir.display().to_string(), "leases": r.leases,
                            "next_token": r.next_token, "next_token_in_backup": r.next_token_in_backup,
                            "tokens_dropped": r.tokens_dropped,
                            "backup": header_json(&r.header)}),
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::OTHER
                }
            }
        }
        SnapshotCommand::Save { .. } => exit::OTHER,
    }
}
