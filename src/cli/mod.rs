//! The `warrant` command line: parse, call the client library, print text or json, choose the exit
//! code. Scripts and agents rely on the shapes below; keep them.
//!
//! Exit codes (every client command): 0 success (granted / current), 2 invalid input or usage,
//! 3 busy / stale fence / lease lost, 4 denied, 5 pending approval or wait deadline passed,
//! 6 already done, 1 anything else (unreachable, internal).

mod dev;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::{AcquireOptions, Acquired, Client, ClientConfig, ClientError};
use crate::model::{InstanceId, ReleaseOutcome};
use crate::proto;

/// Exit codes, in one place.
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const BUSY_OR_STALE: u8 = 3;
    pub const DENIED: u8 = 4;
    pub const PENDING_OR_WAIT_ENDED: u8 = 5;
    pub const ALREADY_DONE: u8 = 6;
}

/// The exit code for a client error.
pub fn error_exit_code(e: &ClientError) -> u8 {
    use tonic::Code;
    match e.code() {
        Code::InvalidArgument | Code::NotFound => exit::INVALID,
        Code::FailedPrecondition | Code::ResourceExhausted | Code::AlreadyExists => {
            exit::BUSY_OR_STALE
        }
        Code::PermissionDenied | Code::Unauthenticated => exit::DENIED,
        _ => exit::OTHER,
    }
}

#[derive(Parser)]
#[command(
    name = "warrant",
    version,
    about = "Fenced, time-bound execution leases for AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Options every client command takes.
#[derive(Args, Clone)]
struct Conn {
    /// Cluster client endpoints, host:port,...
    #[arg(
        long,
        env = "WARRANT_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        global = true
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    /// Who you are: agent/NAME or human/NAME (until authentication lands, a claim).
    #[arg(
        long,
        env = "WARRANT_PRINCIPAL",
        default_value = "agent/cli",
        global = true
    )]
    principal: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node from a TOML config.
    Server {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Start a local 3-node cluster in this process, print a guide, run until Ctrl-C.
    Dev {
        #[arg(long, default_value = ".warrant-dev")]
        data_dir: PathBuf,
        /// First client port; nodes use PORT..PORT+2 for clients and PORT+100.. for Raft.
        #[arg(long, default_value_t = 7001)]
        port: u16,
    },
    /// Ask for a lease on RESOURCE.
    Acquire {
        resource: String,
        #[command(flatten)]
        opts: AcquireArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Send one keepalive for a lease.
    Keepalive {
        lease_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Record a checkpoint (≤ 4 KiB) for a lease, with its current token.
    Checkpoint {
        lease_id: String,
        #[arg(long)]
        token: u64,
        data: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Release a lease (done completes its task; failed leaves it open for a successor).
    Release {
        lease_id: String,
        #[arg(long, value_enum)]
        outcome: Option<OutcomeArg>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Admin: end whoever holds RESOURCE now.
    Revoke {
        resource: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Live leases under PREFIX (all if omitted).
    List {
        prefix: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Is TOKEN the current holder's token for RESOURCE? Exit 0 if current, 3 if not.
    CheckFence {
        resource: String,
        token: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// The holder and fence of RESOURCE.
    Get {
        resource: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cluster commands.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Acquire RESOURCE, run CMD while the lease is alive, release on exit.
    Run {
        resource: String,
        #[command(flatten)]
        opts: AcquireArgs,
        /// Time CMD gets between SIGTERM and SIGKILL; CMD is terminated this long before the lease
        /// would lapse by this holder's clock.
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        grace: Duration,
        #[command(flatten)]
        conn: Conn,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Leader, term, members and last applied index, as one node sees them.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutcomeArg {
    Done,
    Failed,
}

#[derive(Args, Clone)]
struct AcquireArgs {
    /// Lease time to live, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    ttl: Duration,
    /// What you are about to do, in a sentence.
    #[arg(long, default_value = "")]
    intent: String,
    /// Labels K:V (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Unit-of-work key: a done task is never granted again; a successor learns where you stopped.
    #[arg(long)]
    task_key: Option<String>,
    /// Wait in line up to this long if busy.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    /// End your own predecessor's lease (another instance of you) and take over.
    #[arg(long)]
    takeover: bool,
    /// Idempotency key; retrying with the same id returns the first answer.
    #[arg(long)]
    request_id: Option<String>,
    /// This process's incarnation (default: a fresh one).
    #[arg(long, env = "WARRANT_INSTANCE")]
    instance: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 30s or 500ms"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be greater than zero"));
    }
    Ok(d)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} must look like KEY:VALUE"))
}

/// What a command produced: a text line, a json value, and the exit code.
struct Outcome {
    text: String,
    json: Value,
    code: u8,
}

impl Outcome {
    fn ok(text: impl Into<String>, json: Value) -> Self {
        Self {
            text: text.into(),
            json,
            code: exit::OK,
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::INVALID
            } else {
                exit::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    ExitCode::from(runtime.block_on(dispatch(cli.command)))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn dispatch(command: Command) -> u8 {
    match command {
        Command::Server { config, log_format } => {
            init_logging(log_format);
            serve(config).await
        }
        Command::Dev { data_dir, port } => {
            init_logging(LogFormat::Text);
            dev::run(data_dir, port).await
        }
        Command::Run {
            resource,
            opts,
            grace,
            conn,
            cmd,
        } => match connect(&conn, opts.instance.as_deref()) {
            Ok(client) => run::run(client, acquire_options(&resource, &opts), grace, cmd).await,
            Err(e) => fail(&e),
        },
        other => client_command(other).await,
    }
}

async fn serve(path: PathBuf) -> u8 {
    let config = match crate::server::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    if !config.insecure {
        eprintln!(
            "error: config {}: key `insecure`: client authentication is not built yet, so the server can only run \
             in insecure mode; set insecure = true (development only)",
            path.display()
        );
        return exit::INVALID;
    }
    tracing::warn!(
        "INSECURE MODE: clients are not authenticated and any caller can claim any principal; for development only"
    );
    let node = match crate::server::start(config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::OTHER;
        }
    };
    wait_for_shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    exit::OK
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

fn connect(conn: &Conn, instance: Option<&str>) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(conn.endpoints.clone(), &conn.principal)?;
    if let Some(i) = instance {
        config.instance = InstanceId::parse(i)?;
    }
    Client::new(config)
}

fn fail(e: &ClientError) -> u8 {
    eprintln!("error: {e}");
    error_exit_code(e)
}

fn acquire_options(resource: &str, a: &AcquireArgs) -> AcquireOptions {
    AcquireOptions {
        resource: resource.to_string(),
        ttl: a.ttl,
        intent: a.intent.clone(),
        labels: a.labels.clone(),
        task_key: a.task_key.clone(),
        wait: a.wait,
        takeover: a.takeover,
        request_id: a.request_id.clone(),
    }
}

fn checkpoint_json(c: &Option<Vec<u8>>) -> Value {
    match c {
        Some(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        None => Value::Null,
    }
}

pub(crate) fn previous_json(p: &proto::Previous) -> Value {
    json!({
        "lease_id": p.lease_id, "principal": p.principal, "instance": p.instance, "token": p.token,
        "ended": p.ended, "ended_at_ms": p.ended_at_ms, "checkpoint": checkpoint_json(&p.checkpoint),
    })
}

fn completion_json(c: &proto::Completion) -> Value {
    json!({
        "lease_id": c.lease_id, "principal": c.principal, "instance": c.instance, "token": c.token,
        "completed_at_ms": c.completed_at_ms, "checkpoint": checkpoint_json(&c.checkpoint),
    })
}

fn lease_json(l: &proto::Lease) -> Value {
    json!({
        "lease_id": l.lease_id, "resource": l.resource, "principal": l.principal, "instance": l.instance,
        "token": l.token, "ttl_ms": l.ttl_ms, "expires_in_ms": l.expires_in_ms,
        "intent": l.intent.as_ref().map(|i| i.text.clone()).unwrap_or_default(),
        "task_key": if l.task_key.is_empty() { Value::Null } else { Value::String(l.task_key.clone()) },
    })
}

async fn client_command(command: Command) -> u8 {
    let (conn, instance) = match &command {
        Command::Acquire { conn, opts, .. } => (conn.clone(), opts.instance.clone()),
        Command::Keepalive { conn, .. }
        | Command::Checkpoint { conn, .. }
        | Command::Release { conn, .. }
        | Command::Revoke { conn, .. }
        | Command::List { conn, .. }
        | Command::CheckFence { conn, .. }
        | Command::Get { conn, .. }
        | Command::Cluster {
            command: ClusterCommand::Status { conn },
        } => (conn.clone(), None),
        Command::Server { .. } | Command::Dev { .. } | Command::Run { .. } => return exit::OTHER,
    };
    let client = match connect(&conn, instance.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let result = execute(&client, command).await;
    match result {
        Ok(out) => {
            match conn.output {
                Output::Text => println!("{}", out.text),
                Output::Json => println!("{}", out.json),
            }
            out.code
        }
        Err(e) => fail(&e),
    }
}

async fn execute(client: &Client, command: Command) -> Result<Outcome, ClientError> {
    Ok(match command {
        Command::Acquire { resource, opts, .. } => {
            match client.acquire(acquire_options(&resource, &opts)).await? {
                Acquired::Granted(lease) => {
                    let l = &lease.info().lease;
                    let previous = lease.previous().map(previous_json).unwrap_or(Value::Null);
                    let mut text = format!(
                        "granted {} lease {} token {} ttl {}ms",
                        l.resource, l.lease_id, l.token, l.ttl_ms
                    );
                    if let Some(p) = lease.previous() {
                        text.push_str(&format!(
                            "\nprevious: instance {} token {} ended {}{}",
                            p.instance,
                            p.token,
                            p.ended,
                            p.checkpoint
                                .as_ref()
                                .map(|c| format!(", checkpoint {:?}", String::from_utf8_lossy(c)))
                                .unwrap_or_default()
                        ));
                    }
                    let json = json!({"outcome": "granted", "lease_id": l.lease_id, "token": l.token, "ttl_ms": l.ttl_ms,
                        "resource": l.resource, "previous": previous});
                    // The CLI exits now: the lease lives on until its ttl unless kept alive.
                    std::mem::forget(lease);
                    Outcome::ok(text, json)
                }
                Acquired::Busy {
                    holder,
                    holder_instance,
                    expires_in,
                } => Outcome {
                    text: format!(
                        "busy: held by {holder} (instance {holder_instance}), expires in {}ms",
                        expires_in.as_millis()
                    ),
                    json: json!({"outcome": "busy", "holder": holder, "holder_instance": holder_instance,
                        "expires_in_ms": expires_in.as_millis() as u64}),
                    code: exit::BUSY_OR_STALE,
                },
                Acquired::AlreadyDone(record) => Outcome {
                    text: format!(
                        "already done: task completed by {} (token {})",
                        record.principal, record.token
                    ),
                    json: json!({"outcome": "already_done", "record": completion_json(&record)}),
                    code: exit::ALREADY_DONE,
                },
                Acquired::WaitEnded => Outcome {
                    text: "wait ended: the resource stayed busy until the wait deadline".into(),
                    json: json!({"outcome": "wait_ended"}),
                    code: exit::PENDING_OR_WAIT_ENDED,
                },
            }
        }
        Command::Keepalive { lease_id, .. } => {
            let resp = client.keepalive(&lease_id).await?;
            match resp.result {
                Some(proto::keep_alive_response::Result::TtlMs(ms)) => Outcome::ok(
                    format!("lease {lease_id} alive, ttl {ms}ms"),
                    json!({"lease_id": lease_id, "ttl_ms": ms}),
                ),
                Some(proto::keep_alive_response::Result::Lost(reason)) => Outcome {
                    text: format!("lease {lease_id} lost: {reason}"),
                    json: json!({"lease_id": lease_id, "lost": reason}),
                    code: exit::BUSY_OR_STALE,
                },
                None => {
                    return Err(ClientError::Server {
                        code: tonic::Code::Internal,
                        message: "empty keepalive answer".into(),
                    })
                }
            }
        }
        Command::Checkpoint {
            lease_id,
            token,
            data,
            ..
        } => {
            client
                .checkpoint(&lease_id, token, data.into_bytes())
                .await?;
            Outcome::ok(
                format!("checkpoint recorded for lease {lease_id}"),
                json!({"lease_id": lease_id, "recorded": true}),
            )
        }
        Command::Release {
            lease_id, outcome, ..
        } => {
            let outcome = outcome.map(|o| match o {
                OutcomeArg::Done => ReleaseOutcome::Done,
                OutcomeArg::Failed => ReleaseOutcome::Failed,
            });
            let resp = client.release(&lease_id, outcome).await?;
            Outcome::ok(
                format!(
                    "lease {lease_id} {}{}",
                    resp.ended,
                    if resp.already { " (already)" } else { "" }
                ),
                json!({"lease_id": lease_id, "ended": resp.ended, "already": resp.already}),
            )
        }
        Command::Revoke {
            resource, reason, ..
        } => {
            let resp = client.revoke(&resource, &reason).await?;
            let l = resp.revoked.unwrap_or_default();
            Outcome::ok(
                format!(
                    "revoked lease {} of {} on {} (token {})",
                    l.lease_id, l.principal, resource, l.token
                ),
                json!({"revoked": lease_json(&l)}),
            )
        }
        Command::List { prefix, .. } => {
            let resp = client.list(prefix.as_deref().unwrap_or("")).await?;
            let text = if resp.leases.is_empty() {
                "no live leases".to_string()
            } else {
                resp.leases
                    .iter()
                    .map(|l| {
                        format!(
                            "{}  {}  token {}  {} ({})  expires in {}ms",
                            l.resource,
                            l.lease_id,
                            l.token,
                            l.principal,
                            l.instance,
                            l.expires_in_ms
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Outcome::ok(
                text,
                Value::Array(resp.leases.iter().map(lease_json).collect()),
            )
        }
        Command::CheckFence {
            resource, token, ..
        } => {
            let resp = client.check_fence(&resource, token).await?;
            use proto::check_fence_response::Status as Fs;
            let (word, code) = match Fs::try_from(resp.status).unwrap_or(Fs::Unspecified) {
                Fs::Current => ("current", exit::OK),
                Fs::Stale => ("stale", exit::BUSY_OR_STALE),
                Fs::Unknown => ("unknown", exit::BUSY_OR_STALE),
                Fs::Unspecified => ("unspecified", exit::OTHER),
            };
            Outcome {
                text: format!(
                    "token {token} is {word} for {resource} (fence {})",
                    resp.fence
                ),
                json: json!({"resource": resource, "token": token, "status": word, "fence": resp.fence}),
                code,
            }
        }
        Command::Get { resource, .. } => {
            let resp = client.get(&resource).await?;
            let h = resp.holder.as_ref();
            let json = json!({
                "resource": resp.resource, "held": h.is_some(),
                "holder": h.map(|l| l.principal.clone()), "instance": h.map(|l| l.instance.clone()),
                "lease_id": h.map(|l| l.lease_id.clone()), "token": h.map(|l| l.token),
                "expires_in_ms": h.map(|l| l.expires_in_ms), "intent": h.and_then(|l| l.intent.as_ref().map(|i| i.text.clone())),
                "fence": resp.fence, "waiters": resp.waiters,
            });
            let text = match h {
                Some(l) => format!(
                    "{} held by {} ({}) lease {} token {}, expires in {}ms, fence {}",
                    resp.resource,
                    l.principal,
                    l.instance,
                    l.lease_id,
                    l.token,
                    l.expires_in_ms,
                    resp.fence
                ),
                None => format!("{} is free, fence {}", resp.resource, resp.fence),
            };
            Outcome::ok(text, json)
        }
        Command::Cluster {
            command: ClusterCommand::Status { .. },
        } => {
            let s = client.status().await?;
            let members: Vec<Value> = s
                .members
                .iter()
                .map(|m| json!({"id": m.id, "address": m.address, "raft_address": m.raft_address, "role": m.role}))
                .collect();
            let text = format!(
                "node {} sees leader {} (term {}), last applied {}\n{}",
                s.node_id,
                if s.leader == 0 {
                    "none".to_string()
                } else {
                    format!("{} at {}", s.leader, s.leader_address)
                },
                s.term,
                s.last_applied,
                s.members
                    .iter()
                    .map(|m| format!("  {} {} {}", m.id, m.address, m.role))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let json = json!({"node": s.node_id, "leader": if s.leader == 0 { Value::Null } else { json!(s.leader) },
                "term": s.term, "members": members, "last_applied": s.last_applied, "live_leases": s.live_leases});
            Outcome::ok(text, json)
        }
        Command::Server { .. } | Command::Dev { .. } | Command::Run { .. } => {
            return Err(ClientError::Invalid("not a client command".into()))
        }
    })
}
