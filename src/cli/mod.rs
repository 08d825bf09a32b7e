//! The `warrant` command line: parse, call the client library, print text or json, choose the exit
//! code. Scripts and agents rely on the shapes below; keep them.
//!
//! Exit codes (every client command): 0 success (granted / current), 2 invalid input or usage,
//! 3 busy / stale fence / lease lost, 4 denied (also: not approved), 5 pending approval, queued or
//! wait deadline passed, 6 already done, 1 anything else (unreachable, internal; `audit verify`:
//! the chain is broken).

/// `println!` that does not panic when stdout is closed early (`warrant audit query | head`).
/// Print a line on stdout, with untrusted text made visible (see [`escape_untrusted`]).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        let _ = writeln!(std::io::stdout(), "{}", $crate::cli::escape_untrusted(&line));
    }};
}

/// Text from the cluster (intents, labels, comments, reasons, resource names stored under earlier
/// rules) may hold control or invisible formatting characters: a bidi override can make a line read
/// other than it is. Each such character is printed as `\uXXXX` (valid inside a JSON string too,
/// where serde already escapes control characters); new lines and tabs stay.
pub(crate) fn escape_untrusted(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = crate::model::types::is_hidden_char;
    if !s.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            // UTF-16 units, as JSON writes them: a character beyond the BMP (the Cf tag
            // characters) is a surrogate pair, so a JSON line stays valid and decodes unchanged.
            for unit in c.encode_utf16(&mut [0u16; 2]) {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

mod answer;
mod approvals;
mod audit;
mod cluster;
mod dev;
mod policy;
mod run;
mod security;
mod snapshot;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use audit::AuditCommand;
use cluster::ClusterCommand;
use policy::PolicyCommand;

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

/// Where the cluster is and how to print: every client command takes these.
#[derive(Args, Clone)]
struct Common {
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
    /// The cluster CA certificate (PEM): speak TLS and trust only servers it signed. Without it the
    /// CLI speaks plaintext, which only an insecure (development) cluster accepts.
    #[arg(long, env = "WARRANT_CA", global = true)]
    ca: Option<PathBuf>,
    /// Your client certificate (PEM); its URI SAN names your principal.
    #[arg(long, env = "WARRANT_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "WARRANT_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// An access token (`warrant token create`) instead of a certificate. Prefer the environment
    /// variable: a command-line argument is visible to other local users.
    #[arg(
        long,
        env = "WARRANT_ACCESS_TOKEN",
        global = true,
        hide_env_values = true
    )]
    access_token: Option<String>,
}

/// [`Common`] plus who the caller is: every client command whose `--principal` is not about
/// What the human deciding on a pending request was shown (`approvals list` prints both): the
/// decision counts only for exactly that request under that policy version. Without them the CLI
/// reads the request now, prints what it decides on, and sends that.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct Seen {
    /// The request's digest as `approvals list` showed it.
    #[arg(long, requires = "policy_version")]
    pub(crate) digest: Option<String>,
    /// The policy version `approvals list` showed with it.
    #[arg(long, requires = "digest")]
    pub(crate) policy_version: Option<u64>,
}

/// someone else (`policy test` and `audit query` use `--principal` for the principal they are
/// about, and take only [`Common`]).
#[derive(Args, Clone)]
struct Conn {
    #[command(flatten)]
    common: Common,
    /// Who you are: agent/NAME or human/NAME. On a secure cluster it defaults to the principal
    /// your certificate or token names (naming another is refused); on an insecure one to agent/cli.
    #[arg(long, env = "WARRANT_PRINCIPAL", global = true)]
    principal: Option<String>,
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
        /// Plaintext and unauthenticated (callers name their principal): development only.
        #[arg(long)]
        insecure: bool,
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
        /// Include each lease's last checkpoint data (left out by default).
        #[arg(long)]
        checkpoints: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stream lease events (granted, released, done, failed, expired, revoked, taken_over,
    /// checkpoint) under PREFIX, one line each (`--output json`: one object each), until Ctrl-C.
    /// Resumes on another node if one goes away; exit 1 with "compacted" when FROM is older than
    /// the nodes keep.
    Watch {
        /// Resource prefix (segment-wise); all resources if omitted.
        prefix: Option<String>,
        /// First revision to show (a revision is an audit record's seq; `list` prints the current
        /// one). Default: only events after now.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Backups: save (admin), restore into a new node's data directory, status of a file.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
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
        /// Read the first answering node's own state without confirming leadership (etcd's
        /// `--consistency=s`): possibly stale, shows how far that node has applied.
        #[arg(long)]
        serializable: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cluster commands.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The cluster's Cedar policy: put, get, validate (offline), test.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Acquisitions waiting for human approval.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Approve a pending acquisition (as --principal); the grant happens when the quorum is reached.
    Approve {
        request_id: String,
        /// Why you approve, kept in the audit trail.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        seen: Seen,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject a pending acquisition (as --principal): it ends at once.
    Reject {
        request_id: String,
        /// Why, shown to the requester and kept in the audit trail.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        seen: Seen,
        #[command(flatten)]
        conn: Conn,
    },
    /// The hash-chained audit trail: query, export, verify.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Certificates for a cluster: a CA, node and client certificates, the signing key.
    Certs {
        #[command(subcommand)]
        command: security::CertsCommand,
    },
    /// The cluster signing key (offline, in a certs directory): rotate it, list the key ring,
    /// retire an old key.
    Keys {
        #[command(subcommand)]
        command: security::KeysCommand,
    },
    /// Access tokens (admin): create, revoke.
    Token {
        #[command(subcommand)]
        command: security::TokenCommand,
    },
    /// Offline: is a grant certificate (FILE, or - for stdin) genuine, for RESOURCE, not run out,
    /// and not below the highest token seen? Exit 0 valid, 3 superseded, 4 refused.
    VerifyGrant {
        file: PathBuf,
        #[arg(long)]
        resource: String,
        /// The cluster's public keys (cluster-signing.pub from `warrant certs init`; after a
        /// rotation, the ring `warrant keys rotate` wrote).
        #[arg(long, env = "WARRANT_CLUSTER_KEY")]
        cluster_key: PathBuf,
        /// The cluster's name (its nodes' cluster_name): a certificate another cluster signed,
        /// even with the same key, is refused.
        #[arg(long, env = "WARRANT_CLUSTER_NAME")]
        cluster: String,
        /// Refuse a certificate unless now + SKEW ≤ its not_after.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        skew: Duration,
        /// The highest token the resource has seen; a lower one is superseded.
        #[arg(long, default_value_t = 0)]
        highest: u64,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
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
enum ApprovalsCommand {
    /// Pending requests: id, resource, requester, intent, approvals so far, expiry.
    List {
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
    /// Wait up to this long: in line if busy, and for the humans' decision if policy requires
    /// approval (the cluster caps each wait: lease.max_wait, approval_timeout).
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    /// End your own predecessor's lease (another instance of you) and take over.
    #[arg(long)]
    takeover: bool,
    /// Idempotency key; retrying with the same id returns the first answer (or, for a request
    /// pending approval, its outcome so far).
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
    let code = runtime.block_on(dispatch(cli.command));
    // Dropping the runtime drops every task and store; the last reference to a node's database
    // may then go on its log fsync thread, which closes it there. Exit only once it has closed.
    drop(runtime);
    if !crate::storage::wait_until_all_closed(DATABASE_CLOSE_WAIT) {
        eprintln!(
            "warning: a database was still closing {} after the stop; exiting anyway",
            humantime::format_duration(DATABASE_CLOSE_WAIT)
        );
    }
    ExitCode::from(code)
}

/// How long the process waits at exit for its databases to close (RocksDB finishes its background
/// flushes and compactions there; this is seconds at most on a healthy disk).
const DATABASE_CLOSE_WAIT: Duration = Duration::from_secs(60);

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
        Command::Dev {
            data_dir,
            port,
            insecure,
        } => {
            init_logging(LogFormat::Text);
            dev::run(data_dir, port, insecure).await
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
        // Offline: no cluster, no connection.
        Command::Certs { command } => security::certs(command),
        Command::Keys { command } => security::keys(command),
        Command::Snapshot {
            command:
                command @ (snapshot::SnapshotCommand::Restore { .. }
                | snapshot::SnapshotCommand::Status { .. }),
        } => snapshot::offline(command),
        Command::VerifyGrant {
            file,
            resource,
            cluster_key,
            cluster,
            skew,
            highest,
            output,
        } => security::verify_grant(
            &file,
            &resource,
            (&cluster_key, &cluster),
            skew,
            highest,
            output,
        ),
        Command::Policy {
            command:
                PolicyCommand::Validate {
                    file,
                    entities,
                    common,
                },
        } => policy::validate(&file, entities.as_deref(), common.output),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file: Some(file),
                    conn,
                },
        } => audit::verify_file(&file, conn.common.output),
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
    if config.insecure {
        tracing::warn!(
            "INSECURE MODE: plaintext gRPC, clients and peers are not authenticated, and any caller can \
             claim any principal; for development only (see README \"Security\")"
        );
    }
    if let Some(broken) = config.chaos() {
        tracing::error!(
            ?broken,
            "DELIBERATELY BROKEN NODE (chaos_break): this node has a known bug switched on so the \
             chaos suite can show its checkers catch it; never run it for anything else"
        );
    }
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
    connect_as(&conn.common, conn.principal.as_deref(), instance)
}

/// The principal of an insecure caller that names none.
const DEFAULT_PRINCIPAL: &str = "agent/cli";

fn connect_as(
    common: &Common,
    principal: Option<&str>,
    instance: Option<&str>,
) -> Result<Client, ClientError> {
    let tls = match &common.ca {
        None => None,
        Some(ca) => Some(
            crate::client::TlsFiles {
                ca: ca.clone(),
                cert_and_key: common.cert.clone().zip(common.key.clone()),
            }
            .load()
            .map_err(ClientError::Invalid)?,
        ),
    };
    if tls.is_none() && common.cert.is_some() {
        return Err(ClientError::Invalid(
            "--cert needs --ca (or WARRANT_CA): the cluster CA to verify the servers with".into(),
        ));
    }
    let authenticated = tls
        .as_ref()
        .and_then(|t| t.identity.as_ref())
        .and_then(|i| i.principal().map(|p| p.to_string()))
        .or_else(|| {
            common
                .access_token
                .as_deref()
                .and_then(crate::security::token::peek_principal)
                .map(|p| p.to_string())
        });
    let principal = principal
        .map(str::to_string)
        .or(authenticated)
        .unwrap_or_else(|| DEFAULT_PRINCIPAL.to_string());
    let mut config = ClientConfig::new(common.endpoints.clone(), &principal)?;
    if let Some(i) = instance {
        config.instance = InstanceId::parse(i)?;
    }
    config.tls = tls;
    config.access_token = common.access_token.clone().map(crate::client::AccessToken);
    Client::new(config)
}

fn fail(e: &ClientError) -> u8 {
    eprintln!("error: {}", escape_untrusted(&e.to_string()));
    error_exit_code(e)
}

/// [`fail`], with a hint when a plaintext client met a TLS server (the transport only says "h2
/// protocol error").
fn fail_on(e: &ClientError, common: &Common) -> u8 {
    let code = fail(e);
    if common.ca.is_none() && e.to_string().contains("h2 protocol error") {
        eprintln!(
            "hint: the cluster speaks TLS; give its CA with --ca (or WARRANT_CA) and your certificate \
             (--cert/--key) or an access token (WARRANT_ACCESS_TOKEN)"
        );
    }
    code
}

fn acquire_options(resource: &str, a: &AcquireArgs) -> AcquireOptions {
    AcquireOptions {
        resource: resource.to_string(),
        ttl: a.ttl,
        intent: a.intent.clone(),
        labels: a.labels.clone(),
        task_key: a.task_key.clone(),
        wait: a.wait,
        // One --wait covers both: a caller willing to wait for the resource is willing to wait for
        // the humans who must approve it.
        approval_wait: a.wait,
        takeover: a.takeover,
        request_id: a.request_id.clone(),
    }
}

/// Rows under a header, columns padded to their widest cell (by characters).
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c}{}", " ".repeat(widths[i] - c.chars().count()))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    std::iter::once(line(headers.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect::<Vec<_>>()
        .join("\n")
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
    // (where and how to print, who is calling, which instance)
    let (common, principal, instance) = match &command {
        Command::Acquire { conn, opts, .. } => (
            conn.common.clone(),
            conn.principal.clone(),
            opts.instance.clone(),
        ),
        Command::Keepalive { conn, .. }
        | Command::Checkpoint { conn, .. }
        | Command::Release { conn, .. }
        | Command::Revoke { conn, .. }
        | Command::List { conn, .. }
        | Command::Watch { conn, .. }
        | Command::Snapshot {
            command: snapshot::SnapshotCommand::Save { conn, .. },
        }
        | Command::CheckFence { conn, .. }
        | Command::Get { conn, .. }
        | Command::Policy {
            command: PolicyCommand::Put { conn, .. } | PolicyCommand::Get { conn },
        }
        | Command::Approvals {
            command: ApprovalsCommand::List { conn },
        }
        | Command::Approve { conn, .. }
        | Command::Reject { conn, .. }
        | Command::Cluster {
            command:
                ClusterCommand::Status { conn }
                | ClusterCommand::AddNode { conn, .. }
                | ClusterCommand::RemoveNode { conn, .. },
        }
        | Command::Token {
            command: security::TokenCommand::Revoke { conn, .. },
        }
        | Command::Audit {
            command: AuditCommand::Export { conn, .. } | AuditCommand::Verify { conn, .. },
        } => (conn.common.clone(), conn.principal.clone(), None),
        // `--principal` names who the command is about; the calls carry no caller.
        Command::Policy {
            command: PolicyCommand::Test { common, .. } | PolicyCommand::Validate { common, .. },
        }
        | Command::Audit {
            command: AuditCommand::Query { common, .. },
        }
        | Command::Token {
            command: security::TokenCommand::Create { common, .. },
        } => (common.clone(), None, None),
        Command::Server { .. }
        | Command::Dev { .. }
        | Command::Run { .. }
        | Command::Certs { .. }
        | Command::Keys { .. }
        | Command::Snapshot { .. }
        | Command::VerifyGrant { .. } => return exit::OTHER,
    };
    let client = match connect_as(&common, principal.as_deref(), instance.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail_on(&e, &common),
    };
    if let Command::Audit { command } = command {
        // Prints as it streams.
        return audit::run(&client, command, common.output).await;
    }
    if let Command::Watch {
        prefix,
        from,
        count,
        ..
    } = command
    {
        let prefix = prefix.unwrap_or_default();
        return watch::run(&client, &prefix, from, count, common.output).await;
    }
    let result = execute(&client, command).await;
    match result {
        Ok(out) => {
            match common.output {
                Output::Text => say!("{}", out.text),
                Output::Json => say!("{}", out.json),
            }
            out.code
        }
        Err(e) => fail_on(&e, &common),
    }
}

async fn execute(client: &Client, command: Command) -> Result<Outcome, ClientError> {
    Ok(match command {
        Command::Acquire { resource, opts, .. } => {
            let answer = client.acquire(acquire_options(&resource, &opts)).await?;
            let out = answer::acquired(&answer, client.config().instance.as_ref());
            if let Acquired::Granted(lease) = answer {
                // The CLI exits now: the lease lives on until its ttl unless kept alive.
                std::mem::forget(lease);
            }
            out
        }
        Command::Policy { command } => policy::execute(client, command).await?,
        Command::Approvals {
            command: ApprovalsCommand::List { .. },
        } => approvals::list(client).await?,
        Command::Approve {
            request_id,
            comment,
            seen,
            ..
        } => approvals::approve(client, &request_id, &comment, seen).await?,
        Command::Reject {
            request_id,
            reason,
            seen,
            ..
        } => approvals::reject(client, &request_id, &reason, seen).await?,
        Command::Token { command } => security::token(client, command).await?,
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
        Command::List {
            prefix,
            checkpoints,
            ..
        } => {
            let resp = client
                .list_all(prefix.as_deref().unwrap_or(""), checkpoints)
                .await?;
            let text = if resp.leases.is_empty() {
                format!("no live leases (revision {})", resp.revision)
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
                    + &format!("\n(revision {})", resp.revision)
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
        Command::Get {
            resource,
            serializable,
            ..
        } => {
            let resp = if serializable {
                client.get_serializable(&resource).await?
            } else {
                client.get(&resource).await?
            };
            let h = resp.holder.as_ref();
            // Only the leader counts a lease down: a follower answering a serializable read
            // reports 0, which means "not known here" (at most the ttl), not "expiring now".
            let unknown = |l: &crate::proto::Lease| serializable && l.expires_in_ms == 0;
            let json = json!({
                "resource": resp.resource, "held": h.is_some(),
                "holder": h.map(|l| l.principal.clone()), "instance": h.map(|l| l.instance.clone()),
                "lease_id": h.map(|l| l.lease_id.clone()), "token": h.map(|l| l.token),
                "expires_in_ms": h.and_then(|l| (!unknown(l)).then_some(l.expires_in_ms)),
                "ttl_ms": h.map(|l| l.ttl_ms),
                "intent": h.and_then(|l| l.intent.as_ref().map(|i| i.text.clone())),
                "fence": resp.fence, "waiters": resp.waiters, "applied_index": resp.applied_index,
            });
            let text = match h {
                Some(l) => format!(
                    "{} held by {} ({}) lease {} token {}, {}, fence {}",
                    resp.resource,
                    l.principal,
                    l.instance,
                    l.lease_id,
                    l.token,
                    if unknown(l) {
                        format!(
                            "expires in at most {}ms (its ttl: a serializable read, and only the \
                             leader counts the time left)",
                            l.ttl_ms
                        )
                    } else {
                        format!("expires in {}ms", l.expires_in_ms)
                    },
                    resp.fence
                ),
                None => format!("{} is free, fence {}", resp.resource, resp.fence),
            };
            Outcome::ok(text, json)
        }
        Command::Cluster { command } => cluster::execute(client, command).await?,
        Command::Snapshot {
            command: snapshot::SnapshotCommand::Save { file, .. },
        } => snapshot::save(client, &file).await?,
        Command::Server { .. }
        | Command::Dev { .. }
        | Command::Certs { .. }
        | Command::Keys { .. }
        | Command::VerifyGrant { .. }
        | Command::Run { .. }
        | Command::Watch { .. }
        | Command::Snapshot { .. }
        | Command::Audit { .. } => {
            return Err(ClientError::Invalid(
                "not a command answered in one piece".into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn principal_means_the_subject_in_policy_test_and_audit_query() {
        let cli = Cli::try_parse_from([
            "warrant",
            "policy",
            "test",
            "--principal",
            "agent/x",
            "--action",
            "acquire",
            "--resource",
            "k8s/prod",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Policy {
                command: PolicyCommand::Test { principal, .. }
            } if principal.to_string() == "agent/x"
        ));
        // Required there: the environment's caller identity does not fill it.
        assert!(Cli::try_parse_from(["warrant", "policy", "test", "--action", "admin"]).is_err());
        let cli = Cli::try_parse_from([
            "warrant",
            "audit",
            "query",
            "--principal",
            "agent/y",
            "--since",
            "10m",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit {
                command: AuditCommand::Query { principal: Some(p), since: Some(_), .. }
            } if p == "agent/y"
        ));
    }

    #[test]
    fn acquire_wait_also_waits_for_approval() {
        let cli = Cli::try_parse_from([
            "warrant",
            "acquire",
            "k8s/prod/payments",
            "--ttl",
            "5m",
            "--wait",
            "10m",
        ])
        .unwrap();
        let Command::Acquire { resource, opts, .. } = cli.command else {
            panic!("not an acquire");
        };
        let o = acquire_options(&resource, &opts);
        assert_eq!(o.wait, Some(Duration::from_secs(600)));
        assert_eq!(o.approval_wait, Some(Duration::from_secs(600)));
    }

    #[test]
    fn tables_pad_columns_to_their_widest_cell() {
        let t = table(
            &["SEQ", "PRINCIPAL", "REASON"],
            vec![
                vec!["1".into(), "agent/a".into(), "".into()],
                vec!["10".into(), "human/é".into(), "why".into()],
            ],
        );
        assert_eq!(
            t,
            "SEQ  PRINCIPAL  REASON\n1    agent/a\n10   human/é    why"
        );
    }
}

#[cfg(test)]
mod escape_tests {
    use super::escape_untrusted;

    #[test]
    fn hidden_characters_are_printed_visibly_and_json_stays_valid() {
        assert_eq!(escape_untrusted("deploy web v2\nok"), "deploy web v2\nok");
        assert_eq!(
            escape_untrusted("pay\u{202e}lortnoc\u{7}"),
            "pay\\u202Elortnoc\\u0007"
        );
        for hidden in ["pay\u{202e}x", "tag\u{e0041}x"] {
            let json = serde_json::json!({ "intent": hidden }).to_string();
            let shown = escape_untrusted(&json);
            assert!(shown.is_ascii(), "{shown}");
            let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(back["intent"], hidden);
        }
        assert_eq!(escape_untrusted("\u{e0041}"), "\\uDB40\\uDC41");
    }
}
