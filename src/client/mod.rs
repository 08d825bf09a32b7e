//! The Rust client library: connect to a Warrant cluster, acquire leases, keep them alive, and fence
//! the resources they protect.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warrant::client::ClientError> {
//! use std::time::Duration;
//! use warrant::client::{AcquireOptions, Client, ClientConfig, Acquired};
//!
//! let client = Client::new(ClientConfig::new(["127.0.0.1:7001"], "agent/deployer")?)?;
//! match client.acquire(AcquireOptions::new("k8s/prod/web/deploy", Duration::from_secs(30))).await? {
//!     Acquired::Granted(lease) => {
//!         // Act only while the lease is valid by our own clock, and pass lease.token() to the resource.
//!         if lease.is_valid() { /* ... */ }
//!         lease.release(None).await?;
//!     }
//!     other => println!("not granted: {other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Calls go to any endpoint; a follower answers with the leader's address and the client retries
//! there. Every retry of an acquire reuses its request id, so a retry never yields a second grant.
//!
//! Beyond leases: the governance plane ([`Client::put_policy`], [`Client::test_policy`],
//! [`Client::approve`], …) and the audit trail ([`Client::query_audit`], [`Client::export_audit`],
//! [`Client::verify_audit`]). An acquire that policy sends to human approval answers
//! [`Acquired::PendingApproval`]; ask again with its request id, or set
//! [`AcquireOptions::approval_wait`] to wait for the humans.

mod audit;
mod backup;
mod fence;
mod governance;
mod lease;
mod membership;
mod session;
mod tokens;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use audit::audit_record_from_proto;
pub use backup::SavedBackup;
pub use fence::{
    CertificateRefused, FenceGuard, GrantCertError, GrantClaims, GrantVerifier, StaleToken,
};
pub use governance::PolicyTest;
pub use lease::{Lease, LeaseInfo, LostReason};

use crate::model::{InstanceId, Principal, ValidationError};
use crate::proto;
use crate::proto::warrant_client::WarrantClient;
use crate::proto::LEADER_METADATA;
pub use crate::security::tls::{TlsFiles, TlsMaterial};

/// Longest a single attempt at one node may take before the next node is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request was invalid (INVALID_ARGUMENT from the server, or rejected locally).
    #[error("{0}")]
    Invalid(String),
    /// The server refused the call (any other gRPC status), with its message.
    #[error("{message}")]
    Server { code: Code, message: String },
    /// No endpoint could serve the call in time.
    #[error("no Warrant node could serve the request ({last}); check --endpoints and that the cluster is up")]
    Unavailable { last: String },
    /// The acquire was granted, but its lease has ended since (a retry with the same request id
    /// answers the first grant): it must not be used.
    #[error("lease {lease_id} granted to this request has ended ({reason}); acquire again with a new request id")]
    LeaseEnded { lease_id: String, reason: String },
}

impl ClientError {
    /// The gRPC status code behind this error.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Invalid(_) => Code::InvalidArgument,
            ClientError::Server { code, .. } => *code,
            ClientError::Unavailable { .. } => Code::Unavailable,
            ClientError::LeaseEnded { .. } => Code::FailedPrecondition,
        }
    }
}

impl From<ValidationError> for ClientError {
    fn from(e: ValidationError) -> Self {
        ClientError::Invalid(e.to_string())
    }
}

/// Whether a stream that failed this way may be reopened (elsewhere): the same transient failures
/// the unary calls move past.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

fn from_status(s: Status) -> ClientError {
    match s.code() {
        Code::InvalidArgument => ClientError::Invalid(s.message().to_string()),
        // A status without a message (e.g. a Warrant call sent to a node's Raft port): say what
        // the code means rather than nothing.
        Code::Unimplemented if s.message().is_empty() => ClientError::Server {
            code: Code::Unimplemented,
            message: "the server does not offer this call: is this a node's client address \
                      (not its Raft address), and of a build at least as new as this client?"
                .into(),
        },
        code if s.message().is_empty() => ClientError::Server {
            code,
            message: format!("{} (the server gave no message)", code.description()),
        },
        code => ClientError::Server {
            code,
            message: s.message().to_string(),
        },
    }
}

/// Milliseconds of an optional duration; 0 (the wire's "none") when absent.
fn millis(d: Option<Duration>) -> u64 {
    d.map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The wire's empty string as `None`.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// host:port of any members' client APIs.
    pub endpoints: Vec<String>,
    /// Who the caller is (until authentication lands, a claim).
    pub principal: Principal,
    /// This process's incarnation; a fresh random one by default.
    pub instance: InstanceId,
    /// How long one call may keep retrying across endpoints and elections.
    pub call_timeout: Duration,
    /// Safety margin for clock drift in the holder's own validity check (DESIGN rule 1).
    pub drift: f64,
    /// TLS to the cluster (its CA, and this caller's certificate if it has one). `None` speaks
    /// plaintext, which only an insecure (development) cluster accepts.
    pub tls: Option<TlsMaterial>,
    /// An access token (`v4.public.…`) for callers without a certificate; sent on every request.
    pub access_token: Option<AccessToken>,
}

/// An access token's text; never shown by `Debug`.
#[derive(Clone)]
pub struct AccessToken(pub String);

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(…)")
    }
}

/// Puts the access token, if any, on every request.
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.bearer {
            request
                .metadata_mut()
                .insert(crate::proto::AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

/// A client stub for one endpoint, with credentials attached.
pub(crate) type Rpc =
    WarrantClient<tonic::service::interceptor::InterceptedService<Channel, Credentials>>;

impl ClientConfig {
    /// A config with a fresh instance id and default timeouts.
    pub fn new<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
        principal: &str,
    ) -> Result<Self, ClientError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(Into::into)
            .filter(|e: &String| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::Invalid(
                "no endpoints given (host:port,...)".into(),
            ));
        }
        Ok(Self {
            endpoints,
            principal: Principal::parse(principal)?,
            instance: InstanceId::parse(&uuid::Uuid::new_v4().to_string())?,
            call_timeout: Duration::from_secs(15),
            drift: 0.05,
            tls: None,
            access_token: None,
        })
    }
}

/// What to acquire and how.
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    pub resource: String,
    pub ttl: Duration,
    pub intent: String,
    pub labels: Vec<(String, String)>,
    pub task_key: Option<String>,
    /// Queue (FIFO) up to this long if busy.
    pub wait: Option<Duration>,
    /// When policy sends the request to human approval, wait up to this long for the decision
    /// (the grant, or [`Acquired::NotApproved`]) instead of answering [`Acquired::PendingApproval`]
    /// at once. The cluster refuses a wait longer than its `approval_timeout`.
    pub approval_wait: Option<Duration>,
    /// End this principal's own predecessor's lease and take over.
    pub takeover: bool,
    /// Idempotency key; a fresh one if None. Retries inside one `acquire` call always reuse it.
    pub request_id: Option<String>,
}

impl AcquireOptions {
    pub fn new(resource: &str, ttl: Duration) -> Self {
        Self {
            resource: resource.to_string(),
            ttl,
            intent: String::new(),
            labels: Vec::new(),
            task_key: None,
            wait: None,
            approval_wait: None,
            takeover: false,
            request_id: None,
        }
    }
}

/// The answer to an acquire.
// Returned once per call and matched at once; boxing the lease would only cost callers a deref.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Acquired {
    /// Granted: the lease keeps itself alive until released or dropped.
    Granted(Lease),
    /// Someone else holds it.
    Busy {
        holder: String,
        holder_instance: String,
        expires_in: Duration,
    },
    /// The task was already completed.
    AlreadyDone(proto::Completion),
    /// The wait deadline passed before a grant.
    WaitEnded,
    /// Policy (or, with no policy loaded, the cluster's default decision) refused the request.
    Denied {
        /// The action evaluated (`acquire`, `takeover`, …).
        action: String,
        /// The policy set's version; 0 when none is loaded.
        policy_version: u64,
        /// Ids of the determining policies (empty when nothing permitted it).
        policies: Vec<String>,
        /// The `@reason("…")` text of the determining forbid, if it has one.
        reason: Option<String>,
        /// A full sentence for humans and logs.
        message: String,
    },
    /// Policy requires human approval. To learn the outcome, ask again with the same options and
    /// request id ([`AcquireOptions::request_id`] = `pending.request_id`) as the same instance
    /// ([`ClientConfig::instance`] = `pending.instance`: an approval is bound to the exact request),
    /// or set [`AcquireOptions::approval_wait`] to block until it is decided.
    PendingApproval(proto::PendingApproval),
    /// The request needed approval and did not get it.
    NotApproved {
        /// `rejected`, `expired` or `cancelled` (by a policy change that now denies it).
        kind: String,
        /// The human who rejected it (kind `rejected`).
        by: Option<String>,
        /// Why, in words.
        reason: String,
    },
    /// Approved, and queued because the resource is held: ask again with this request id, as the
    /// same instance, with a [`AcquireOptions::wait`] to wait for the grant.
    Queued {
        /// Place in the resource's FIFO queue (1 = next).
        position: u32,
        /// The request's id (the one given, or the one this call generated).
        request_id: String,
    },
}

/// A connection to a Warrant cluster; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.config.endpoints)
            .field("principal", &self.inner.config.principal)
            .field("instance", &self.inner.config.instance)
            .finish()
    }
}

struct Inner {
    config: ClientConfig,
    /// The endpoint that last answered as leader (tried first).
    preferred: Mutex<Option<String>>,
    /// The endpoint that gave the last definitive answer (a result or a refusal).
    answered_by: Mutex<Option<String>>,
    channels: Mutex<std::collections::HashMap<String, Channel>>,
    /// Acquires and releases travel in one session per endpoint.
    sessions: Mutex<session::Sessions>,
    credentials: Credentials,
}

impl Client {
    /// A client; connects lazily on the first call.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        for e in &config.endpoints {
            Endpoint::from_shared(format!("http://{e}"))
                .map_err(|_| ClientError::Invalid(format!("endpoint {e:?} is not host:port")))?;
        }
        let bearer = match &config.access_token {
            None => None,
            Some(t) => {
                let mut v: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
                    format!("Bearer {}", t.0).parse().map_err(|_| {
                        ClientError::Invalid(
                            "the access token has characters a header cannot carry".into(),
                        )
                    })?;
                // Never HPACK-indexed, never shown by Debug.
                v.set_sensitive(true);
                Some(v)
            }
        };
        if bearer.is_some() && config.tls.is_none() {
            return Err(ClientError::Invalid(
                "an access token is only sent over TLS: give the cluster CA too (--ca or WARRANT_CA)"
                    .into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                preferred: Mutex::new(None),
                answered_by: Mutex::new(None),
                channels: Mutex::new(Default::default()),
                sessions: Mutex::new(Default::default()),
                credentials: Credentials { bearer },
            }),
        })
    }

    /// The config this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, ClientError> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(endpoint) {
            return Ok(c.clone());
        }
        let scheme = if self.inner.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut e = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
            .map_err(|_| ClientError::Invalid(format!("endpoint {endpoint:?} is not host:port")))?;
        if let Some(tls) = &self.inner.config.tls {
            e = e
                .tls_config(tls.client())
                .map_err(|err| ClientError::Invalid(format!("TLS settings: {err}")))?;
        }
        let c = e
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            // Notice a paused or partitioned node within seconds instead of waiting on a dead stream.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    fn rpc(&self, endpoint: &str) -> Result<Rpc, ClientError> {
        Ok(WarrantClient::with_interceptor(
            self.channel(endpoint)?,
            self.inner.credentials.clone(),
        ))
    }

    fn candidates(&self) -> Vec<String> {
        let mut list = Vec::new();
        if let Some(p) = self
            .inner
            .preferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            list.push(p);
        }
        for e in &self.inner.config.endpoints {
            if !list.contains(e) {
                list.push(e.clone());
            }
        }
        list
    }

    /// The endpoint (as configured, or as a redirect named it) that gave this client's last
    /// definitive answer — a result or a refusal from a node; a timeout, an unreachable node or an
    /// error raised locally leaves it unchanged. It is shared by the client's clones and by the
    /// keepalive tasks of its leases, so with concurrent calls it names whichever answered last.
    /// For histories and diagnostics, not for routing.
    pub fn answered_by(&self) -> Option<String> {
        self.inner
            .answered_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn answered(&self, endpoint: &str) {
        *self
            .inner
            .answered_by
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(endpoint.to_string());
    }

    fn prefer(&self, endpoint: Option<String>) {
        *self
            .inner
            .preferred
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = endpoint;
    }

    /// Run a call against the leader: follow redirects, move past unreachable, dying (tonic reports a
    /// connection lost mid-call as `Unknown`) or silent nodes (each attempt gets at most `attempt`),
    /// back off while an election is under way, all within `timeout`. `f` must be safe to repeat
    /// (acquire reuses its request id).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        timeout: Duration,
        attempt: Duration,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_at(timeout, attempt, |endpoint| Ok(f(self.rpc(endpoint)?)))
            .await
    }

    /// [`call`](Self::call), with `f` given the endpoint to try rather than a stub for it.
    pub(crate) async fn call_at<T, F, Fut>(
        &self,
        timeout: Duration,
        attempt: Duration,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(&str) -> Result<Fut, ClientError>,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no attempt");
        let mut backoff = Duration::from_millis(25);
        let mut followed: Option<String> = None;
        'rounds: loop {
            for endpoint in self.candidates() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let answer = tokio::time::timeout(
                    attempt.min(left).max(Duration::from_millis(50)),
                    f(&endpoint)?,
                )
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")));
                match answer {
                    Ok(resp) => {
                        self.answered(&endpoint);
                        self.prefer(Some(endpoint));
                        return Ok(resp.into_inner());
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::DeadlineExceeded
                                | Code::Cancelled
                                | Code::Unknown
                        ) =>
                    {
                        last = format!("{endpoint}: {}", s.message());
                        let hint = s
                            .metadata()
                            .get(LEADER_METADATA)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match hint {
                            // Follow a redirect at once, but only once per round (no ping-pong).
                            Some(leader)
                                if leader != endpoint && followed.as_ref() != Some(&leader) =>
                            {
                                self.prefer(Some(leader.clone()));
                                followed = Some(leader);
                                continue 'rounds;
                            }
                            _ => {
                                if self.candidates().first() == Some(&endpoint) {
                                    self.prefer(None);
                                }
                            }
                        }
                    }
                    Err(s) => {
                        self.answered(&endpoint);
                        return Err(from_status(s));
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(ClientError::Unavailable { last });
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::Unavailable { last });
            }
            // No node could serve it: an election is probably under way.
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
            followed = None;
        }
    }

    /// Acquire a lease. Retries (across endpoints and elections) reuse one request id.
    pub async fn acquire(&self, opts: AcquireOptions) -> Result<Acquired, ClientError> {
        let cfg = &self.inner.config;
        let request_id = opts
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let req = proto::AcquireRequest {
            resource: opts.resource.clone(),
            ttl_ms: opts.ttl.as_millis() as u64,
            intent: Some(proto::Intent {
                text: opts.intent.clone(),
                labels: opts.labels.iter().cloned().collect(),
            }),
            task_key: opts.task_key.clone().unwrap_or_default(),
            wait_ms: millis(opts.wait),
            takeover: opts.takeover,
            request_id: request_id.clone(),
            principal: cfg.principal.to_string(),
            instance: cfg.instance.to_string(),
            approval_wait_ms: millis(opts.approval_wait),
        };
        // The server may hold the call for the approval wait and then the queue wait: one attempt
        // must be allowed both, or the wait would be cut at ATTEMPT_TIMEOUT and retried.
        let waits = opts.wait.unwrap_or_default() + opts.approval_wait.unwrap_or_default();
        let timeout = cfg.call_timeout + waits;
        // DESIGN rule 1: validity counts from when the *first* attempt was sent; a retry can only
        // return that same grant, so using the earliest send time is conservative.
        let t_send = tokio::time::Instant::now();
        let attempt = ATTEMPT_TIMEOUT + waits;
        // An acquire that waits stays a unary call (its deadline is the call's), and so does a
        // large one; the rest travel in the endpoint's session.
        let in_session =
            waits.is_zero() && prost::Message::encoded_len(&req) <= session::MAX_SESSION_MESSAGE;
        let resp = self
            .call_at(timeout, attempt, |endpoint| {
                let mut rpc = self.rpc(endpoint)?;
                let (req, endpoint) = (req.clone(), endpoint.to_string());
                Ok(async move {
                    let call = in_session.then(|| session::Call::Acquire(req.clone()));
                    self.in_session_or(&endpoint, call, session::acquire_answer, rpc.acquire(req))
                        .await
                })
            })
            .await?;
        use proto::acquire_response::Outcome;
        match resp.outcome {
            Some(Outcome::Granted(g)) => {
                let lease = g.lease.ok_or_else(|| {
                    ClientError::Invalid("server sent a grant without a lease".into())
                })?;
                let mut t_send = t_send;
                // A grant may be older than this call: a queued grant, or one made when an approval
                // quorum was reached, started its countdown when it was granted, and a caller-chosen
                // request id may return a grant made for an earlier call. Count validity as if sent
                // `ttl - expires_in` earlier, so it never outlasts the leader's own count.
                if lease.expires_in_ms > 0 && lease.expires_in_ms < lease.ttl_ms {
                    let behind = Duration::from_millis(lease.ttl_ms - lease.expires_in_ms);
                    t_send = t_send.checked_sub(behind).unwrap_or(t_send);
                }
                if !g.ended.is_empty() {
                    return Err(ClientError::LeaseEnded {
                        lease_id: lease.lease_id,
                        reason: g.ended,
                    });
                }
                if waits > Duration::ZERO || opts.request_id.is_some() {
                    // Take validity from a keepalive sent now instead, when one is acknowledged;
                    // a lease the cluster says is gone is never handed out (issue 24 item 3).
                    let t_ka = tokio::time::Instant::now();
                    if let Ok(resp) = self.keepalive(&lease.lease_id).await {
                        match resp.result {
                            Some(proto::keep_alive_response::Result::TtlMs(_)) => t_send = t_ka,
                            Some(proto::keep_alive_response::Result::Lost(reason)) => {
                                return Err(ClientError::LeaseEnded {
                                    lease_id: lease.lease_id,
                                    reason,
                                })
                            }
                            None => {}
                        }
                    }
                }
                Ok(Acquired::Granted(Lease::start(
                    self.clone(),
                    lease,
                    g.previous,
                    g.certificate,
                    t_send,
                )))
            }
            Some(Outcome::Busy(b)) => Ok(Acquired::Busy {
                holder: b.holder,
                holder_instance: b.holder_instance,
                expires_in: Duration::from_millis(b.expires_in_ms),
            }),
            Some(Outcome::AlreadyDone(d)) => {
                Ok(Acquired::AlreadyDone(d.record.unwrap_or_default()))
            }
            Some(Outcome::WaitEnded(_)) => Ok(Acquired::WaitEnded),
            Some(Outcome::Denied(d)) => Ok(Acquired::Denied {
                action: d.action,
                policy_version: d.policy_version,
                policies: d.policies,
                reason: non_empty(d.reason),
                message: d.message,
            }),
            Some(Outcome::PendingApproval(p)) => Ok(Acquired::PendingApproval(p)),
            Some(Outcome::NotApproved(n)) => Ok(Acquired::NotApproved {
                kind: n.kind,
                by: non_empty(n.by),
                reason: n.reason,
            }),
            Some(Outcome::Queued(q)) => Ok(Acquired::Queued {
                position: q.position,
                request_id,
            }),
            None => Err(ClientError::Invalid("server sent an empty answer".into())),
        }
    }

    /// One keepalive for a lease by id (the `Lease` handle does this itself).
    pub async fn keepalive(&self, lease_id: &str) -> Result<proto::KeepAliveResponse, ClientError> {
        self.keepalive_with(lease_id, false).await
    }

    /// A keepalive that also asks for a fresh grant certificate (`not_after` = now + ttl); on a
    /// secure cluster the answer's `certificate` carries it.
    pub async fn refresh_certificate(
        &self,
        lease_id: &str,
    ) -> Result<proto::KeepAliveResponse, ClientError> {
        self.keepalive_with(lease_id, true).await
    }

    pub(super) async fn keepalive_with(
        &self,
        lease_id: &str,
        certificate: bool,
    ) -> Result<proto::KeepAliveResponse, ClientError> {
        let principal = self.inner.config.principal.to_string();
        let timeout = self.inner.config.call_timeout;
        let lease_id = lease_id.to_string();
        self.call(timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = proto::KeepAliveRequest {
                lease_id: lease_id.clone(),
                principal: principal.clone(),
                certificate,
            };
            async move {
                let mut stream = c.keep_alive(tokio_stream::once(req)).await?.into_inner();
                match stream.message().await? {
                    Some(m) => Ok(tonic::Response::new(m)),
                    None => Err(Status::unavailable(
                        "keepalive stream closed without an answer",
                    )),
                }
            }
        })
        .await
    }

    /// Record a checkpoint (≤ 4 KiB) for a lease, with its current token.
    pub async fn checkpoint(
        &self,
        lease_id: &str,
        token: u64,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let req = proto::CheckpointRequest {
            lease_id: lease_id.to_string(),
            token,
            data,
            principal: self.inner.config.principal.to_string(),
        };
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.checkpoint(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Release a lease, optionally recording its task's outcome. Safe to retry.
    pub async fn release(
        &self,
        lease_id: &str,
        outcome: Option<crate::model::ReleaseOutcome>,
    ) -> Result<proto::ReleaseResponse, ClientError> {
        let outcome = match outcome {
            None => proto::ReleaseOutcome::Unspecified,
            Some(crate::model::ReleaseOutcome::Done) => proto::ReleaseOutcome::Done,
            Some(crate::model::ReleaseOutcome::Failed) => proto::ReleaseOutcome::Failed,
        };
        let req = proto::ReleaseRequest {
            lease_id: lease_id.to_string(),
            outcome: outcome as i32,
            principal: self.inner.config.principal.to_string(),
        };
        self.call_at(
            self.inner.config.call_timeout,
            ATTEMPT_TIMEOUT,
            |endpoint| {
                let mut rpc = self.rpc(endpoint)?;
                let (req, endpoint) = (req.clone(), endpoint.to_string());
                Ok(async move {
                    let call = Some(session::Call::Release(req.clone()));
                    self.in_session_or(&endpoint, call, session::release_answer, rpc.release(req))
                        .await
                })
            },
        )
        .await
    }

    /// Admin: revoke the lease that holds `resource` now. The resource is resolved to its current
    /// lease first (a linearizable read), then that lease is revoked by id, so a retry after a
    /// timeout ends the same lease or answers as the first attempt did; it never ends the lease of
    /// the waiter the first attempt let in. The answer names the lease ended.
    pub async fn revoke(
        &self,
        resource: &str,
        reason: &str,
    ) -> Result<proto::RevokeResponse, ClientError> {
        let holder = self
            .get(resource)
            .await?
            .holder
            .ok_or_else(|| ClientError::Server {
                code: Code::FailedPrecondition,
                message: format!("nobody holds {resource}: nothing to revoke"),
            })?;
        self.revoke_lease(&holder.lease_id, reason).await
    }

    /// Admin: revoke lease `lease_id`. Every attempt carries one request id, so a retry after a
    /// lost answer gets the first answer and ends nothing else.
    pub async fn revoke_lease(
        &self,
        lease_id: &str,
        reason: &str,
    ) -> Result<proto::RevokeResponse, ClientError> {
        let req = proto::RevokeRequest {
            resource: String::new(),
            lease_id: lease_id.to_string(),
            reason: reason.to_string(),
            principal: self.inner.config.principal.to_string(),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.revoke(req).await }
        })
        .await
    }

    /// Linearizable fence check.
    pub async fn check_fence(
        &self,
        resource: &str,
        token: u64,
    ) -> Result<proto::CheckFenceResponse, ClientError> {
        let req = proto::CheckFenceRequest {
            resource: resource.to_string(),
            token,
        };
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.check_fence(req).await }
        })
        .await
    }

    /// Linearizable read of a resource's holder and fence.
    pub async fn get(&self, resource: &str) -> Result<proto::GetResponse, ClientError> {
        self.get_with(resource, false).await
    }

    /// Like [`get`](Self::get), but answered by the first endpoint that answers from its own applied
    /// state, with no leadership confirmation: possibly stale (a partitioned or lagging member).
    /// `applied_index` in the answer says how far that state reaches. A caller with an access token
    /// is still answered only by the leader (requests made with tokens always are).
    pub async fn get_serializable(
        &self,
        resource: &str,
    ) -> Result<proto::GetResponse, ClientError> {
        self.get_with(resource, true).await
    }

    async fn get_with(
        &self,
        resource: &str,
        serializable: bool,
    ) -> Result<proto::GetResponse, ClientError> {
        let req = proto::GetRequest {
            resource: resource.to_string(),
            serializable,
        };
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.get(req).await }
        })
        .await
    }

    /// Live leases under a prefix.
    pub async fn list(&self, prefix: &str) -> Result<proto::ListResponse, ClientError> {
        self.list_all(prefix, false).await
    }

    /// Every live lease under `prefix`, page by page (with their checkpoint data if
    /// `checkpoints`). The answer's `revision` is the first page's: watch from it + 1 to miss
    /// nothing that changed while the later pages were read.
    pub async fn list_all(
        &self,
        prefix: &str,
        checkpoints: bool,
    ) -> Result<proto::ListResponse, ClientError> {
        let mut all = proto::ListResponse::default();
        let mut after = String::new();
        loop {
            let page = self
                .list_page(proto::ListRequest {
                    prefix: prefix.to_string(),
                    limit: 0,
                    after: after.clone(),
                    checkpoints,
                })
                .await?;
            if all.revision == 0 {
                all.revision = page.revision;
            }
            all.leases.extend(page.leases);
            if page.next.is_empty() || page.next <= after {
                return Ok(all);
            }
            after = page.next;
        }
    }

    /// One page of live leases (see [`proto::ListRequest`]).
    pub async fn list_page(
        &self,
        req: proto::ListRequest,
    ) -> Result<proto::ListResponse, ClientError> {
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.list(req).await }
        })
        .await
    }

    /// The status as one endpoint sees it (the first that answers).
    pub async fn status(&self) -> Result<proto::StatusResponse, ClientError> {
        let mut last = String::new();
        let mut endpoints = std::collections::VecDeque::from(self.candidates());
        let mut tried = std::collections::HashSet::new();
        while let Some(endpoint) = endpoints.pop_front() {
            if !tried.insert(endpoint.clone()) {
                continue;
            }
            let mut client = self.rpc(&endpoint)?;
            match tokio::time::timeout(
                Duration::from_secs(3),
                client.status(proto::StatusRequest {}),
            )
            .await
            {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                // Refused (not authenticated, over a limit): another node would say the same.
                Ok(Err(s))
                    if !matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Cancelled
                            | Code::Unknown
                    ) =>
                {
                    return Err(ClientError::Server {
                        code: s.code(),
                        message: s.message().to_string(),
                    })
                }
                Ok(Err(s)) => {
                    last = format!("{endpoint}: {}", s.message());
                    // Sent to the leader (access-token requests are served there): ask it next.
                    if let Some(leader) = s
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                    {
                        endpoints.push_front(leader.to_string());
                    }
                }
                Err(_) => last = format!("{endpoint}: timed out"),
            }
        }
        Err(ClientError::Unavailable { last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_without_a_message_still_says_something() {
        let e = from_status(Status::new(Code::Unimplemented, ""));
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.to_string().contains("Raft address"), "{e}");
        let e = from_status(Status::new(Code::PermissionDenied, ""));
        assert!(
            e.to_string().contains("(the server gave no message)"),
            "{e}"
        );
        let e = from_status(Status::new(Code::NotFound, "no lease 7"));
        assert_eq!(e.to_string(), "no lease 7");
    }
}
