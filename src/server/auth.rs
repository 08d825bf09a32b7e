//! Who is calling, and how much they may ask: authentication of every client request and Raft
//! message, and per-principal limits.
//!
//! - Client API: a client certificate signed by the cluster CA names its principal (a URI SAN, see
//!   [`crate::security::identity`]); a caller without one may present an access token
//!   (`authorization: Bearer v4.public.…`). Everything else is UNAUTHENTICATED. A request field can
//!   never change the principal: naming another one is PERMISSION_DENIED.
//! - Raft port: the peer's certificate must name a node (`…/node/ID`); an agent's or human's
//!   certificate from the same CA is refused.
//! - Limits per principal: a request rate with a burst, open keepalive streams, waiting acquires.
//!   Over a limit is RESOURCE_EXHAUSTED with the limit in the message; other principals are not
//!   affected.
//!
//! In insecure mode (development only) callers name their principal in the request, as before.
//!
//! Refusals here are not audited: the audit log records decisions about authenticated principals,
//! and an unauthenticated caller must not be able to grow the replicated log. They are counted
//! (`warrant_auth_refused_total{reason}`, `warrant_limit_refused_total{limit}`) and logged as
//! warnings, at most one per reason every [`WARN_EVERY`], naming the peer address and a token's id
//! (never its text) and how many similar refusals were not logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Request, Status};

use super::config::LimitsConfig;
use crate::model::Principal;
use crate::security::{AccessClaims, Identity, KeyRing, SigningKey};
use crate::storage::SmReader;

/// Metadata key of an access token (`Bearer v4.public.…`).
pub use crate::proto::AUTHORIZATION;

/// At most one warning per refusal reason this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a request was refused before the API saw it: the `reason` label of
/// `warrant_auth_refused_total` (or, for a limit, the `limit` label of `warrant_limit_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Refusal {
    /// Neither a client certificate nor an access token.
    NoCredential,
    /// A client certificate that names no principal, or ran out.
    Certificate,
    /// An access token that is malformed, forged, altered, expired or another cluster's.
    Token,
    /// A revoked access token.
    TokenRevoked,
    /// A Raft message without a node certificate.
    Peer,
    /// Over the principal's request rate.
    Rate,
    /// Over the principal's open keepalive streams.
    KeepaliveStreams,
    /// Over the principal's open sessions.
    Sessions,
    /// Over the principal's waiting acquires.
    Waiters,
    /// From an address that failed to authenticate too often just now.
    Failures,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoCredential => "no_credential",
            Self::Certificate => "certificate",
            Self::Token => "token",
            Self::TokenRevoked => "token_revoked",
            Self::Peer => "peer",
            Self::Rate => "rate",
            Self::KeepaliveStreams => "keepalive_streams",
            Self::Sessions => "sessions",
            Self::Waiters => "waiters",
            Self::Failures => "auth_failures",
        }
    }

    fn is_limit(self) -> bool {
        matches!(
            self,
            Self::Rate | Self::KeepaliveStreams | Self::Sessions | Self::Waiters | Self::Failures
        )
    }
}

/// Failed authentications an address may have per second (with a burst of [`FAILURE_BURST`])
/// before its requests are refused unread for [`FAILURE_PENALTY`]: a client that failed that often
/// is not going to succeed, and checking each bogus token's signature costs the node.
const FAILURES_PER_SECOND: u32 = 10;
const FAILURE_BURST: u32 = 50;
const FAILURE_PENALTY: Duration = Duration::from_secs(10);
/// Most addresses held in the penalty box at once (memory bound; expired ones are dropped first).
const MAX_PENALIZED: usize = 10_000;

/// Addresses that failed to authenticate too often, refused before any check.
struct Failures {
    rate: DefaultKeyedRateLimiter<IpAddr>,
    penalized: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for Failures {
    fn default() -> Self {
        let quota = Quota::per_second(NonZeroU32::new(FAILURES_PER_SECOND).expect("non-zero"))
            .allow_burst(NonZeroU32::new(FAILURE_BURST).expect("non-zero"));
        Self {
            rate: RateLimiter::keyed(quota),
            penalized: Default::default(),
        }
    }
}

impl Failures {
    /// Until when `ip` is refused unread, if it is.
    fn penalized(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let ip = super::admission::source(ip);
        let penalized = self.penalized.lock().unwrap_or_else(|p| p.into_inner());
        penalized.get(&ip).copied().filter(|until| *until > now)
    }

    /// Count a failed authentication from `ip`; past its budget, penalize it.
    fn failed(&self, ip: IpAddr, now: Instant) {
        let ip = super::admission::source(ip);
        if self.rate.check_key(&ip).is_ok() {
            return;
        }
        let mut penalized = self.penalized.lock().unwrap_or_else(|p| p.into_inner());
        if penalized.len() >= MAX_PENALIZED {
            penalized.retain(|_, until| *until > now);
        }
        if penalized.len() < MAX_PENALIZED {
            penalized.insert(ip, now + FAILURE_PENALTY);
        }
    }
}

/// Lets one warning per key through every [`WARN_EVERY`] and counts the rest.
#[derive(Default)]
struct Throttle {
    last: Mutex<HashMap<Refusal, (Instant, u64)>>,
}

impl Throttle {
    /// `Some(n)`: log now; `n` similar refusals were not logged since the last warning.
    fn admit(&self, key: Refusal, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(&key) {
            Some((at, skipped)) if now.saturating_duration_since(*at) < WARN_EVERY => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                *at = now;
                Some(std::mem::take(skipped))
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Insecure mode: nothing was proven.
    Claim,
    Certificate,
    /// An access token, by id.
    Token(String),
}

/// The authenticated caller of one request (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Option<Identity>,
    pub via: Via,
    /// When the credential stops being valid (a certificate's not_after, a token's expiry), in Unix
    /// ms; rechecked on every message of a long-lived stream.
    pub valid_until_ms: u64,
}

impl Caller {
    /// `cmd` as this caller's log entry: a caller that came with an access token has it re-checked
    /// in apply ([`Command::ViaToken`]), so a revocation ordered before the entry refuses it, and
    /// the audit records it causes name the token.
    pub fn wrap(&self, cmd: crate::model::Command) -> crate::model::Command {
        self.via_token(cmd, true)
    }

    /// Like [`wrap`](Self::wrap) but applied even after the token's revocation: for withdrawing
    /// one's own wait, and the audit note of an answer already given.
    pub fn wrap_unchecked(&self, cmd: crate::model::Command) -> crate::model::Command {
        self.via_token(cmd, false)
    }

    fn via_token(&self, cmd: crate::model::Command, recheck: bool) -> crate::model::Command {
        match &self.via {
            Via::Token(id) => crate::model::Command::ViaToken {
                token_id: id.clone(),
                recheck,
                cmd: Box::new(cmd),
            },
            Via::Claim | Via::Certificate => cmd,
        }
    }

    /// Admin actions (minting or revoking tokens, changing policy, revoking leases, membership,
    /// backups, audit reads and watches) need a client certificate: an access token is a bearer
    /// secret handed to an agent runtime, and whoever steals one must not get more than that
    /// agent's lease calls, whatever the policy permits the agent.
    pub fn require_certificate(&self, action: &str) -> Result<(), Status> {
        match &self.via {
            Via::Token(id) => Err(Status::permission_denied(format!(
                "{action} is an admin action and needs a client certificate; access token {id} \
                 carries only an agent's lease calls"
            ))),
            Via::Claim | Via::Certificate => Ok(()),
        }
    }

    /// The principal a request acts as. Secure: the authenticated one; a request naming another is
    /// refused. Insecure: whatever the request names.
    pub fn principal(&self, claimed: &str) -> Result<Principal, Status> {
        match &self.identity {
            None => {
                if claimed.is_empty() {
                    return Err(Status::invalid_argument(
                        "principal is required (agent/NAME or human/NAME; the CLI takes --principal or WARRANT_PRINCIPAL)",
                    ));
                }
                Principal::parse(claimed).map_err(super::convert::invalid)
            }
            Some(Identity::Principal(p)) => {
                if !claimed.is_empty() && claimed != p.as_str() {
                    return Err(Status::permission_denied(format!(
                        "you are authenticated as {p}; a request cannot act as {claimed}"
                    )));
                }
                Ok(p.clone())
            }
            Some(Identity::Node(id)) => Err(Status::permission_denied(format!(
                "node/{id} is a cluster member's certificate; it cannot act as an agent or a human"
            ))),
        }
    }

    /// The caller's key for limits: its identity, or its claimed principal in insecure mode.
    fn limit_key(&self, claimed: &str) -> String {
        match &self.identity {
            Some(id) => id.to_string(),
            None if claimed.is_empty() => "anonymous (insecure mode)".to_string(),
            None => claimed.to_string(),
        }
    }
}

/// The caller of a request that went through [`Auth::intercept`].
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request was not authenticated"))
}

enum Mode {
    Insecure,
    Secure {
        verifying: KeyRing,
        cluster: String,
        sm: SmReader,
    },
}

/// A count per principal with a cap; a taken slot is returned when its guard drops.
#[derive(Default)]
pub struct Slots {
    taken: Mutex<HashMap<String, u32>>,
}

pub struct SlotGuard {
    slots: Arc<Slots>,
    key: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = taken.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                taken.remove(&self.key);
            }
        }
    }
}

impl Slots {
    /// Take a slot for `key` unless it already holds `max` (0 = unlimited).
    fn take(self: &Arc<Self>, key: String, max: u32) -> Option<SlotGuard> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let n = taken.entry(key.clone()).or_insert(0);
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(SlotGuard {
            slots: self.clone(),
            key,
        })
    }
}

/// A node's authenticator and limiter, shared by every request.
pub struct Auth {
    mode: Mode,
    /// Signs tokens and grant certificates (secure mode only).
    pub signing: Option<SigningKey>,
    limits: LimitsConfig,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    streams: Arc<Slots>,
    waiters: Arc<Slots>,
    warnings: Throttle,
    failures: Failures,
}

impl Auth {
    pub fn insecure(limits: LimitsConfig) -> Self {
        Self::new(Mode::Insecure, None, limits)
    }

    /// Access tokens verified with `ring` (which holds `signing`'s public half), for `cluster`.
    pub fn secure(
        signing: SigningKey,
        ring: KeyRing,
        cluster: String,
        sm: SmReader,
        limits: LimitsConfig,
    ) -> Self {
        let verifying = ring;
        Self::new(
            Mode::Secure {
                verifying,
                cluster,
                sm,
            },
            Some(signing),
            limits,
        )
    }

    fn new(mode: Mode, signing: Option<SigningKey>, limits: LimitsConfig) -> Self {
        let rate = NonZeroU32::new(limits.requests_per_second).map(|per_s| {
            let burst =
                NonZeroU32::new(limits.burst.max(limits.requests_per_second)).unwrap_or(per_s);
            RateLimiter::keyed(Quota::per_second(per_s).allow_burst(burst))
        });
        Self {
            mode,
            signing,
            limits,
            rate,
            streams: Default::default(),
            waiters: Default::default(),
            warnings: Throttle::default(),
            failures: Failures::default(),
        }
    }

    /// Count a refusal, log it if the throttle lets it through, and hand back its status.
    fn refuse(
        &self,
        why: Refusal,
        status: Status,
        peer: Option<std::net::SocketAddr>,
        token_id: Option<&str>,
    ) -> Status {
        if why.is_limit() {
            metrics::counter!("warrant_limit_refused_total", "limit" => why.as_str()).increment(1);
        } else {
            metrics::counter!("warrant_auth_refused_total", "reason" => why.as_str()).increment(1);
        }
        if let Some(skipped) = self.warnings.admit(why, Instant::now()) {
            let peer = peer.map_or_else(|| "unknown".to_string(), |a| a.to_string());
            tracing::warn!(
                reason = why.as_str(),
                %peer,
                token_id = token_id.unwrap_or(""),
                not_logged_since_last = skipped,
                "refused: {}",
                status.message()
            );
        }
        status
    }

    pub fn is_secure(&self) -> bool {
        matches!(self.mode, Mode::Secure { .. })
    }

    /// Authenticate a client request; the caller goes into the request's extensions. Its rate is
    /// charged by [`Auth::charge_request`] once every check at the door has passed.
    pub fn intercept(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request.remote_addr();
        let now = Instant::now();
        // Only requests without a client certificate (the handshake checked one already) cost a
        // signature check here, so only they are held to the address's failures.
        let tokenish = peer.filter(|_| request.peer_certs().is_none_or(|c| c.is_empty()));
        if let Some(until) = tokenish.and_then(|p| self.failures.penalized(p.ip(), now)) {
            return Err(self.refuse(
                Refusal::Failures,
                Status::resource_exhausted(format!(
                    "too many failed authentications from this address; retry in {} s",
                    until.saturating_duration_since(now).as_secs() + 1
                )),
                peer,
                None,
            ));
        }
        let caller = self
            .authenticate(&request)
            .map_err(|(why, status, token)| {
                if let Some(p) = tokenish {
                    self.failures.failed(p.ip(), now);
                }
                self.refuse(why, status, peer, token.as_deref())
            })?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }

    /// Charge an authenticated request to its principal's rate. Insecure callers are anonymous
    /// until their request body is read: no rate per principal.
    pub fn charge_request<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match request
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.identity.as_ref())
        {
            Some(id) => self.charge(&id.to_string(), request.remote_addr()),
            None => Ok(()),
        }
    }

    /// A request that failed a check at the door after authentication (an access token this
    /// cluster does not know): counted against its address like a failed authentication.
    pub fn refused_at_door<T>(&self, request: &Request<T>) {
        if let Some(peer) = request.remote_addr() {
            self.failures.failed(peer.ip(), Instant::now());
        }
    }

    /// Charge one request to `key`'s rate.
    fn charge(&self, key: &str, peer: Option<std::net::SocketAddr>) -> Result<(), Status> {
        match &self.rate {
            Some(rate) if rate.check_key(&key.to_string()).is_err() => Err(self.refuse(
                Refusal::Rate,
                Status::resource_exhausted(format!(
                    "{key} is over its request rate ({} per second, burst {}); slow down and retry",
                    self.limits.requests_per_second, self.limits.burst
                )),
                peer,
                None,
            )),
            _ => Ok(()),
        }
    }

    /// Who is calling; a refusal comes with its reason and, for a token, the token's id.
    #[allow(clippy::result_large_err)]
    fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Caller, (Refusal, Status, Option<String>)> {
        let cert = |m: String| (Refusal::Certificate, Status::unauthenticated(m), None);
        let Mode::Secure {
            verifying,
            cluster,
            sm,
        } = &self.mode
        else {
            return Ok(Caller {
                identity: None,
                via: Via::Claim,
                valid_until_ms: u64::MAX,
            });
        };
        if let Some(der) = request.peer_certs().and_then(|c| c.first().cloned()) {
            // The TLS layer already checked the chain to the cluster CA and the validity period.
            let identity = Identity::from_cert_der(&der)
                .map_err(|e| cert(format!("client certificate refused: {e}")))?;
            // The handshake checked the validity period once; an HTTP/2 connection lives on, so a
            // certificate that ran out since is refused here, per request.
            let valid_until_ms = Identity::cert_not_after_ms(&der)
                .map_err(|e| cert(format!("client certificate refused: {e}")))?;
            if crate::security::grant::unix_now_ms() >= valid_until_ms {
                return Err(cert(
                    "client certificate expired; get a new one (warrant certs issue)".into(),
                ));
            }
            return Ok(Caller {
                identity: Some(identity),
                via: Via::Certificate,
                valid_until_ms,
            });
        }
        let Some(value) = request.metadata().get(AUTHORIZATION) else {
            return Err((
                Refusal::NoCredential,
                Status::unauthenticated(
                    "no client certificate and no access token: present a certificate signed by the cluster CA \
                     (--cert/--key) or an access token (--access-token or WARRANT_ACCESS_TOKEN)",
                ),
                None,
            ));
        };
        let token = |m: String| (Refusal::Token, Status::unauthenticated(m), None);
        let text = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                token("authorization metadata must be `Bearer <access token>`".into())
            })?;
        let claims = AccessClaims::verify(
            verifying,
            cluster,
            text,
            crate::security::grant::unix_now_ms(),
        )
        .map_err(|e| token(e.to_string()))?;
        if sm.read().state.token_revoked(&claims.id) {
            return Err((
                Refusal::TokenRevoked,
                Status::unauthenticated(format!("access token {} was revoked", claims.id)),
                Some(claims.id),
            ));
        }
        // Tokens are minted for agents only; one naming a human (a key used outside the cluster)
        // would let its holder approve as that human.
        if claims.principal.kind() != crate::model::PrincipalKind::Agent {
            return Err((
                Refusal::Token,
                Status::unauthenticated(format!(
                    "access token {} names {}: tokens are for agents, humans authenticate with a certificate",
                    claims.id, claims.principal
                )),
                Some(claims.id),
            ));
        }
        Ok(Caller {
            identity: Some(Identity::Principal(claims.principal)),
            via: Via::Token(claims.id),
            valid_until_ms: claims.expires_at_ms,
        })
    }

    /// Check again, for one message of a long-lived stream: the credential has not run out, a
    /// token has not been revoked since the stream opened, and the caller is within its rate.
    pub fn recheck(&self, caller: &Caller) -> Result<(), Status> {
        self.still_valid(caller)?;
        if let Some(id) = &caller.identity {
            self.charge(&id.to_string(), None)?;
        }
        Ok(())
    }

    /// The caller's credential has not run out and its access token (if any) is not revoked in
    /// this node's applied state. After a leadership confirmation that state holds every
    /// revocation committed before the call arrived.
    pub fn still_valid(&self, caller: &Caller) -> Result<(), Status> {
        let token_id = match &caller.via {
            Via::Token(id) => Some(id.as_str()),
            _ => None,
        };
        if crate::security::grant::unix_now_ms() >= caller.valid_until_ms {
            let why = if token_id.is_some() {
                Refusal::Token
            } else {
                Refusal::Certificate
            };
            return Err(self.refuse(
                why,
                Status::unauthenticated("credential expired while the stream was open"),
                None,
                token_id,
            ));
        }
        if let (Some(id), Mode::Secure { sm, .. }) = (token_id, &self.mode) {
            if sm.read().state.token_revoked(id) {
                return Err(self.refuse(
                    Refusal::TokenRevoked,
                    Status::unauthenticated(format!("access token {id} was revoked")),
                    None,
                    token_id,
                ));
            }
        }
        Ok(())
    }

    /// Raft port: only cluster members (a node certificate from the cluster CA) may send messages.
    pub fn intercept_peer(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.is_secure() {
            return Ok(request);
        }
        let peer = request.remote_addr();
        let refuse = |status| self.refuse(Refusal::Peer, status, peer, None);
        let der = request
            .peer_certs()
            .and_then(|c| c.first().cloned())
            .ok_or_else(|| {
                refuse(Status::unauthenticated(
                    "raft: a node certificate is required",
                ))
            })?;
        match Identity::from_cert_der(&der) {
            Ok(Identity::Node(id)) => {
                // The Raft service checks that this node is a member and that every message
                // speaks for it (issue 25 item 1).
                let mut request = request;
                request.extensions_mut().insert(crate::raft::PeerNode(id));
                Ok(request)
            }
            Ok(other) => Err(refuse(Status::permission_denied(format!(
                "raft: {other} is not a cluster member; only node certificates may send Raft messages"
            )))),
            Err(e) => Err(refuse(Status::unauthenticated(format!("raft: {e}")))),
        }
    }

    /// Hold one of the caller's keepalive-stream slots while a stream is open.
    pub fn stream_slot(&self, caller: &Caller, claimed: &str) -> Result<SlotGuard, Status> {
        let key = caller.limit_key(claimed);
        let limit = self.limits.keepalive_streams;
        self.slot(&self.streams, key.clone(), limit, Refusal::KeepaliveStreams, || {
            format!("{key} already has {limit} keepalive streams open (limits.keepalive_streams); close some")
        })
    }

    /// Hold one of the caller's session slots while a session is open: counted apart from its
    /// keepalive streams, up to the same limit. A client refused one makes unary calls instead.
    pub fn session_slot(&self, caller: &Caller) -> Result<SlotGuard, Status> {
        let key = caller.limit_key("");
        let limit = self.limits.keepalive_streams;
        self.slot(&self.streams, format!("{key} (sessions)"), limit, Refusal::Sessions, || {
            format!("{key} already has {limit} sessions open (limits.keepalive_streams); close some")
        })
    }

    /// Hold one of the caller's waiter slots while an acquire waits (queue or approval).
    pub fn waiter_slot(&self, caller: &Caller, claimed: &str) -> Result<SlotGuard, Status> {
        let key = caller.limit_key(claimed);
        let limit = self.limits.waiters;
        self.slot(&self.waiters, key.clone(), limit, Refusal::Waiters, || {
            format!("{key} already has {limit} acquires waiting (limits.waiters); let some finish first")
        })
    }

    /// One of `pool`'s slots for `key`, or RESOURCE_EXHAUSTED (`why`, counted and logged).
    fn slot(
        &self,
        pool: &Arc<Slots>,
        key: String,
        limit: u32,
        why: Refusal,
        message: impl FnOnce() -> String,
    ) -> Result<SlotGuard, Status> {
        pool.take(key, limit)
            .ok_or_else(|| self.refuse(why, Status::resource_exhausted(message()), None, None))
    }

    /// Forget rate-limiter state of principals that have gone quiet (bounded memory).
    pub fn forget_idle(&self) {
        self.failures.rate.retain_recent();
        let now = Instant::now();
        self.failures
            .penalized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_cannot_name_another_principal() {
        let me = Caller {
            identity: Some(Identity::Principal(Principal::parse("agent/a").unwrap())),
            via: Via::Certificate,
            valid_until_ms: u64::MAX,
        };
        assert_eq!(me.principal("").unwrap().as_str(), "agent/a");
        assert_eq!(me.principal("agent/a").unwrap().as_str(), "agent/a");
        let e = me.principal("human/admin").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let node = Caller {
            identity: Some(Identity::Node(1)),
            via: Via::Certificate,
            valid_until_ms: u64::MAX,
        };
        assert_eq!(
            node.principal("").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn slots_are_capped_per_key_and_returned_on_drop() {
        let slots = Arc::new(Slots::default());
        let a1 = slots.take("a".into(), 2).unwrap();
        let _a2 = slots.take("a".into(), 2).unwrap();
        assert!(slots.take("a".into(), 2).is_none());
        assert!(
            slots.take("b".into(), 2).is_some(),
            "another key is unaffected"
        );
        drop(a1);
        assert!(slots.take("a".into(), 2).is_some());
    }

    #[test]
    fn the_rate_limit_refuses_one_principal_and_not_another() {
        let limits = LimitsConfig {
            requests_per_second: 5,
            burst: 5,
            ..LimitsConfig::default()
        };
        let auth = Auth::insecure(limits);
        let mut refused = 0;
        for _ in 0..20 {
            if let Err(e) = auth.charge("agent/flood", None) {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                refused += 1;
            }
        }
        assert!(auth.charge("agent/calm", None).is_ok());
        assert!(refused >= 10, "{refused}");
    }

    #[test]
    fn an_address_that_keeps_failing_is_refused_unread_for_a_while() {
        let f = Failures::default();
        let (ip, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..FAILURE_BURST {
            f.failed(ip, t0);
        }
        assert_eq!(f.penalized(ip, t0), None, "within the burst");
        f.failed(ip, t0);
        assert_eq!(f.penalized(ip, t0), Some(t0 + FAILURE_PENALTY));
        assert_eq!(f.penalized(other, t0), None, "another address");
        assert_eq!(
            f.penalized(ip, t0 + FAILURE_PENALTY),
            None,
            "for a while only"
        );
    }

    #[test]
    fn refusal_warnings_are_throttled_per_reason_and_count_what_they_skipped() {
        let t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.admit(Refusal::Token, t0), Some(0));
        assert_eq!(t.admit(Refusal::Token, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.admit(Refusal::Token, t0 + Duration::from_secs(9)), None);
        // Another reason has its own budget.
        assert_eq!(
            t.admit(Refusal::NoCredential, t0 + Duration::from_secs(2)),
            Some(0)
        );
        // After WARN_EVERY the next one is logged, saying two were not.
        assert_eq!(t.admit(Refusal::Token, t0 + WARN_EVERY), Some(2));
        assert_eq!(
            t.admit(Refusal::Token, t0 + WARN_EVERY + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn refusals_keep_their_status() {
        let auth = Auth::insecure(LimitsConfig::default());
        let s = auth.refuse(
            Refusal::TokenRevoked,
            Status::unauthenticated("access token t1 was revoked"),
            None,
            Some("t1"),
        );
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert_eq!(s.message(), "access token t1 was revoked");
        assert!(Refusal::Waiters.is_limit() && !Refusal::Peer.is_limit());
    }
}
