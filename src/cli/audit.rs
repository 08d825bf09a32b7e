//! `warrant audit query|export|verify`: reading and checking the hash-chained audit trail.
//!
//! `export` writes exactly the format `verify --file` reads ([`AuditRecord::to_json_line`], one
//! record per line) as it streams, so a trail of any length is exported with bounded memory.
//! `verify` exits 0 when the chain is intact, 1 when it is broken (naming the first broken record),
//! 2 when the file cannot be read.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use futures::StreamExt;
use serde_json::json;

use super::answer::rfc3339_ms;
use super::{exit, fail, table, Common, Conn, Output};
use crate::audit::{verify, AuditDecision, AuditError, AuditFilter, AuditRecord};
use crate::client::Client;

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Audit records matching every filter given, oldest first: a table, or json lines.
    ///
    /// `--principal` here filters by the principal recorded (WARRANT_PRINCIPAL does not fill it).
    /// Times T are RFC 3339 (`2026-11-23T10:00:00Z`, `2026-11-23 10:00:00` is UTC, `2026-11-23`
    /// is its midnight UTC) or a duration ago (`10m`, `2h 30m`).
    Query {
        /// Resource subtree (segment-wise: k8s/prod matches k8s/prod/x, not k8s/production).
        #[arg(long)]
        resource: Option<String>,
        /// Only records of this principal (agent/NAME or human/NAME).
        #[arg(long)]
        principal: Option<String>,
        /// Only this decision: granted, busy, queued, denied, pending_approval, approved, rejected,
        /// expired, released, done, failed, revoked, taken_over, policy_put, …
        #[arg(long, value_parser = parse_decision)]
        decision: Option<AuditDecision>,
        /// Records at or after T.
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// Records at or before T.
        #[arg(long, value_parser = parse_time)]
        until: Option<u64>,
        /// Only records caused by requests made with this access token (the id `warrant token
        /// create` printed): what a token did, e.g. after it leaked.
        #[arg(long, value_name = "TOKEN_ID")]
        via_token: Option<String>,
        /// At most N records (the cluster's default is 1000, its cap 100000).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// Every audit record as json lines on stdout, streamed (`warrant audit export > trail.jsonl`).
    Export {
        /// First sequence number to export.
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Recompute the hash chain, on a cluster node or (offline) on an exported file, and name the
    /// first broken record. Exit 0 intact, 1 broken, 2 unreadable file.
    Verify {
        /// An exported json-lines file (`-` for stdin) instead of the cluster.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
}

fn parse_decision(s: &str) -> Result<AuditDecision, String> {
    s.parse::<AuditDecision>().map_err(|e| e.to_string())
}

fn parse_time(s: &str) -> Result<u64, String> {
    parse_time_at(s, SystemTime::now())
}

/// A time as Unix milliseconds: RFC 3339 (weak: a space for `T` and a missing zone, meaning UTC, are
/// accepted), a bare date (its midnight UTC), or a duration meaning that long before `now`.
fn parse_time_at(s: &str, now: SystemTime) -> Result<u64, String> {
    let t = s.trim();
    let at = if let Ok(ago) = humantime::parse_duration(t) {
        now.checked_sub(ago)
            .ok_or_else(|| format!("{s:?}: that is before 1970"))?
    } else if t.len() == 10 && t.as_bytes().get(4) == Some(&b'-') {
        humantime::parse_rfc3339_weak(&format!("{t}T00:00:00Z"))
            .map_err(|e| format!("{s:?} is not a date ({e}); write e.g. 2026-11-23"))?
    } else {
        humantime::parse_rfc3339_weak(t).map_err(|e| {
            format!(
                "{s:?} is neither an RFC 3339 time nor a duration ago ({e}); write e.g. \
                 2026-11-23T10:00:00Z or 10m"
            )
        })?
    };
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?}: that is before 1970"))?
        .as_millis();
    u64::try_from(ms).map_err(|_| format!("{s:?}: too far in the future"))
}

/// The filter `audit query` sends, checked before any call: an inverted range is exit 2.
fn query_filter(
    resource: Option<String>,
    principal: Option<String>,
    decision: Option<AuditDecision>,
    since: Option<u64>,
    until: Option<u64>,
    via_token: Option<String>,
) -> Result<AuditFilter, AuditError> {
    let filter = AuditFilter {
        resource_prefix: resource,
        principal,
        decision,
        since_ms: since,
        until_ms: until,
        via_token,
    };
    filter.validate()?;
    Ok(filter)
}

/// Offline `audit verify --file`, run before any connection.
pub(super) fn verify_file(path: &Path, output: Output) -> u8 {
    let input: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        match std::fs::File::open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return exit::INVALID;
            }
        }
    };
    let mut read_error = None;
    // Lines as bytes: a line that is not UTF-8 is a broken record, not an unreadable file.
    let lines = BufReader::with_capacity(1 << 16, input)
        .split(b'\n')
        .map_while(|line| match line {
            Ok(l) => Some(l),
            Err(e) => {
                read_error = Some(e);
                None
            }
        });
    let report = verify(lines.map(|bytes| {
        let line = String::from_utf8(bytes)
            .map_err(|e| AuditError::Json(format!("the line is not UTF-8: {e}")))?;
        AuditRecord::from_json_line(&line)
    }));
    if let Some(e) = read_error {
        eprintln!("error: cannot read {}: {e}", path.display());
        return exit::INVALID;
    }
    let head = hex::encode(report.head);
    let first_seq = report.first_seq.unwrap_or(0);
    match (&report.broken, output) {
        (None, Output::Text) => {
            if report.verified == 0 {
                say!("ok: 0 records");
            } else {
                say!(
                    "ok: {} records (seq {first_seq}..={}), head {head}",
                    report.verified,
                    report.last_seq
                );
            }
            if first_seq > 1 {
                say!(
                    "note: the file starts at seq {first_seq}: check that its first prev_hash {} is the \
                     hash of record {} on the cluster",
                    hex::encode(report.first_prev_hash),
                    first_seq - 1
                );
            }
        }
        (Some(b), Output::Text) => {
            let at = match b.seq {
                Some(seq) => format!("seq {seq} (line {})", b.position),
                None => format!("line {}", b.position),
            };
            say!(
                "broken at {at}: {}; {} records verified before it",
                b.reason,
                report.verified
            );
        }
        (broken, Output::Json) => say!(
            "{}",
            json!({"ok": broken.is_none(), "records": report.verified,
                "first_seq": report.first_seq, "last_seq": report.last_seq, "head": head,
                "first_prev_hash": hex::encode(report.first_prev_hash),
                "broken": broken.as_ref().map(|b| json!({"line": b.position, "seq": b.seq, "reason": b.reason.to_string()}))})
        ),
    }
    if report.is_ok() {
        exit::OK
    } else {
        exit::OTHER
    }
}

/// `audit query`, `audit export` and cluster `audit verify`; prints as it goes and returns the exit
/// code.
pub(super) async fn run(client: &Client, command: AuditCommand, output: Output) -> u8 {
    match command {
        AuditCommand::Query {
            resource,
            principal,
            decision,
            since,
            until,
            via_token,
            limit,
            ..
        } => {
            let filter = match query_filter(resource, principal, decision, since, until, via_token)
            {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::INVALID;
                }
            };
            match client.query_audit(&filter, limit).await {
                Ok(records) => {
                    print_query(&records, output);
                    exit::OK
                }
                Err(e) => fail(&e),
            }
        }
        AuditCommand::Export { from_seq, .. } => export(client, from_seq).await,
        AuditCommand::Verify { .. } => match client.verify_audit().await {
            Ok(r) => {
                match output {
                    Output::Text if r.ok => say!(
                        "ok: {} records, head {} (matches the replicated chain head)",
                        r.checked,
                        if r.head.is_empty() { "none" } else { &r.head }
                    ),
                    Output::Text => say!(
                        "broken at seq {}: {}; {} records verified before it",
                        r.broken_seq,
                        r.broken_reason,
                        r.checked
                    ),
                    Output::Json => say!(
                        "{}",
                        json!({"ok": r.ok, "records": r.checked, "head": r.head,
                            "broken": if r.ok { None } else { Some(json!({"seq": r.broken_seq, "reason": r.broken_reason})) },
                            "expected_len": r.expected_len, "expected_head": r.expected_head})
                    ),
                }
                if r.ok {
                    exit::OK
                } else {
                    exit::OTHER
                }
            }
            Err(e) => fail(&e),
        },
    }
}

fn print_query(records: &[AuditRecord], output: Output) {
    match output {
        Output::Json => {
            let mut out = std::io::stdout().lock();
            for r in records {
                let line = r.to_json_line();
                if writeln!(out, "{}", super::escape_untrusted(&line)).is_err() {
                    return;
                }
            }
        }
        Output::Text if records.is_empty() => say!("no matching audit records"),
        Output::Text => {
            let rows = records
                .iter()
                .map(|r| {
                    let e = &r.entry;
                    vec![
                        r.seq.to_string(),
                        rfc3339_ms(r.at_ms),
                        if e.via_token.is_empty() {
                            e.principal.clone()
                        } else {
                            format!("{} (token {})", e.principal, e.via_token)
                        },
                        e.action.clone(),
                        e.resource.clone(),
                        e.decision.to_string(),
                        if e.token == 0 {
                            "-".into()
                        } else {
                            e.token.to_string()
                        },
                        e.reason.replace(['\n', '\r'], " "),
                    ]
                })
                .collect();
            say!(
                "{}",
                table(
                    &[
                        "SEQ",
                        "TIME",
                        "PRINCIPAL",
                        "ACTION",
                        "RESOURCE",
                        "DECISION",
                        "TOKEN",
                        "REASON"
                    ],
                    rows
                )
            );
        }
    }
}

/// Stream the export to stdout: buffered, flushed every few hundred records and whenever the
/// stream pauses, so a reader sees progress and memory stays bounded.
async fn export(client: &Client, from_seq: u64) -> u8 {
    const FLUSH_EVERY: u64 = 512;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let stream = client.export_audit(from_seq);
    futures::pin_mut!(stream);
    let mut written = 0u64;
    let mut last_seq = None;
    loop {
        // Flush while waiting rather than holding lines back when records come slowly.
        let next = match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                if out.flush().is_err() {
                    return exit::OK; // stdout closed (`| head`): nothing more to do.
                }
                stream.next().await
            }
        };
        match next {
            Some(Ok(r)) => {
                // Escaped as JSON escapes: the line decodes, and verifies, unchanged.
                let line = r.to_json_line();
                if writeln!(out, "{}", super::escape_untrusted(&line)).is_err() {
                    return exit::OK;
                }
                written += 1;
                last_seq = Some(r.seq);
                if written % FLUSH_EVERY == 0 && out.flush().is_err() {
                    return exit::OK;
                }
            }
            Some(Err(e)) => {
                let _ = out.flush();
                let resume = last_seq.map_or(from_seq.max(1), |s| s + 1);
                eprintln!(
                    "error: the export stopped after {written} records: {e}\n\
                     resume with `warrant audit export --from-seq {resume} >> FILE`"
                );
                return super::error_exit_code(&e);
            }
            None => {
                let _ = out.flush();
                return exit::OK;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = at(1_700_000_000_000);
        assert_eq!(
            parse_time_at("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time_at("2023-11-14T22:13:20.5Z", now),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_time_at("2023-11-14 22:13:20", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_time_at("2023-11-14", now), Ok(1_699_920_000_000));
        assert_eq!(parse_time_at("10m", now), Ok(1_700_000_000_000 - 600_000));
        assert_eq!(
            parse_time_at("1h 30m", now),
            Ok(1_700_000_000_000 - 5_400_000)
        );
        let e = parse_time_at("yesterday", now).unwrap_err();
        assert!(
            e.contains("neither an RFC 3339 time nor a duration ago"),
            "{e}"
        );
        assert!(parse_time_at("60years", at(1000)).is_err());
    }

    #[test]
    fn an_inverted_time_range_is_refused_before_any_call() {
        let e = query_filter(None, None, None, Some(2_000), Some(1_000), None).unwrap_err();
        assert!(matches!(e, AuditError::InvertedTimeRange { .. }));
        assert!(e.to_string().contains("swap them"));
        assert!(query_filter(None, None, None, Some(1_000), Some(1_000), None).is_ok());
        assert!(query_filter(None, None, None, Some(1_000), None, None).is_ok());
    }

    #[test]
    fn decisions_parse_as_people_type_them() {
        assert_eq!(
            parse_decision("pending-approval"),
            Ok(AuditDecision::PendingApproval)
        );
        assert!(parse_decision("maybe").unwrap_err().contains("granted"));
    }
}
