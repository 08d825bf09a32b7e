//! The client API (`warrant.v1.Warrant`): validate input into model types, propose, map the answer.
//!
//! Calls that need the leader answer UNAVAILABLE with the leader's address on any other node.
//! Get, CheckFence and List confirm leadership with a quorum first, so they are linearizable.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth;
use super::convert::{self, op_error};
use super::requests::{self, existing_resource, lease_id};
use super::Shared;
use crate::model::{
    AcquireCmd, AcquireOutcome, Command, FenceStatus, FencingToken, LeaseId, RequestId,
};
use crate::proto::{self, warrant_server};

/// Busy / already-done audit notes waiting to commit at once; more are dropped (and logged).
const MAX_NOTES_IN_FLIGHT: usize = 4096;
/// Keepalives of one stream being answered at once.
const KEEPALIVES_IN_FLIGHT_PER_STREAM: usize = 256;
/// Cap on the leases of one List page.
const MAX_LIST: usize = 10_000;
/// Leases a List page looks at, for a caller whose reads the policy decides one by one.
const MAX_GOVERNED_LIST_LOOKS: usize = 4_096;
/// A List page ends before its leases reach this many bytes.
const MAX_LIST_BYTES: usize = 1024 * 1024;
/// Largest answer message this node sends: gRPC clients refuse bigger ones by default, so an answer
/// that would be bigger is an error here rather than a buffer built for nothing.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

pub fn service(shared: Arc<Shared>) -> warrant_server::WarrantServer<Api> {
    let max = shared.config.limits.max_request_bytes;
    warrant_server::WarrantServer::new(Api { shared })
        .max_decoding_message_size(max)
        .max_encoding_message_size(MAX_RESPONSE_BYTES)
}

pub struct Api {
    pub(super) shared: Arc<Shared>,
}

/// Whose checkpoint data a caller may read: a holder's checkpoint is what it did and where it
/// stopped, for its own replacement and for admins, not for every other agent (issue 25 item 6).
enum CheckpointReader {
    /// Insecure mode, or an admin (the config's, or one Cedar permits `admin`).
    Anyone,
    /// Only leases held by this principal.
    Own(crate::model::Principal),
    /// None (a node's certificate).
    Nobody,
}

impl CheckpointReader {
    fn of(caller: &auth::Caller, shared: &Shared, state: &crate::model::State) -> Self {
        match &caller.identity {
            None => Self::Anyone,
            Some(crate::security::Identity::Node(_)) => Self::Nobody,
            // Admin powers come with a certificate only.
            Some(crate::security::Identity::Principal(p))
                if matches!(caller.via, auth::Via::Token(_)) =>
            {
                Self::Own(p.clone())
            }
            Some(crate::security::Identity::Principal(p)) => {
                if state.admin_allowed(p, shared.admins.contains(p)).is_ok() {
                    Self::Anyone
                } else {
                    Self::Own(p.clone())
                }
            }
        }
    }

    /// May this caller read what `principal` checkpointed?
    fn may_read(&self, principal: &str) -> bool {
        match self {
            Self::Anyone => true,
            Self::Own(p) => principal == p.as_str(),
            Self::Nobody => false,
        }
    }

    /// Leave out the checkpoint data of a lease this caller may not read.
    fn strip(&self, lease: &mut proto::Lease) {
        if !self.may_read(&lease.principal) {
            lease.checkpoint = None;
        }
    }
}

/// Whose reads a caller makes (issue 25 item 6), settled once per request.
pub(super) enum ReadAs {
    /// Insecure mode, or a member node: everything.
    All,
    /// A principal: its own, and what the policy's `read` permits
    /// ([`crate::model::State::read_allowed`]); admin powers come with a certificate only.
    Principal {
        principal: crate::model::Principal,
        by_admin: bool,
    },
    /// A node certificate of a node that is not a member: nothing.
    Nobody(u64),
}

impl ReadAs {
    pub(super) fn of(caller: &auth::Caller, shared: &Shared) -> Self {
        match &caller.identity {
            None => Self::All,
            Some(crate::security::Identity::Node(id)) => {
                let member = shared
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(id)
                    .is_some();
                if member {
                    Self::All
                } else {
                    Self::Nobody(*id)
                }
            }
            Some(crate::security::Identity::Principal(p)) => Self::Principal {
                by_admin: !matches!(caller.via, auth::Via::Token(_)) && shared.admins.contains(p),
                principal: p.clone(),
            },
        }
    }

    /// Does the policy decide this caller's reads one by one (so a listing costs an evaluation per
    /// entry)?
    fn governed(&self, state: &crate::model::State) -> bool {
        match self {
            Self::Principal { by_admin, .. } => {
                !by_admin && state.policy().is_some_and(|p| p.governs_reads())
            }
            Self::All | Self::Nobody(_) => false,
        }
    }

    /// May this caller read what `owner` holds or asked for under `resource`, or ("", no owner)
    /// the policy?
    pub(super) fn may_read(
        &self,
        state: &crate::model::State,
        resource: &str,
        owner: Option<&str>,
    ) -> Result<(), Status> {
        match self {
            Self::All => Ok(()),
            Self::Nobody(id) => Err(Status::permission_denied(format!(
                "node/{id} is not a member of this cluster: a node certificate reads nothing here"
            ))),
            Self::Principal { principal, .. } if owner == Some(principal.as_str()) => Ok(()),
            Self::Principal {
                principal,
                by_admin,
            } => state
                .read_allowed(principal, *by_admin, resource)
                .map(|_| ())
                .map_err(|denial| Status::permission_denied(denial.to_string())),
        }
    }
}

impl Api {
    /// Withdraw one's own waiting request; answers its final outcome (the grant if it happened
    /// meanwhile, so no lease is ever orphaned). Not re-checked: withdrawing one's own request
    /// must work even after the caller's token was revoked, or a pending request would outlive it.
    async fn cancel_wait(
        &self,
        caller: &auth::Caller,
        request_id: &RequestId,
        principal: crate::model::Principal,
    ) -> Result<AcquireOutcome, Status> {
        let cancel = caller.wrap_unchecked(Command::CancelWait {
            request_id: request_id.clone(),
            principal,
        });
        self.shared
            .propose_for(cancel, crate::model::Response::into_cancel_wait)
            .await
    }
}

/// Withdraws a waiting acquire when its handler is dropped before answering (the caller's
/// connection went away): proposes the `CancelWait` it holds, unless disarmed (`cancel = None`).
/// A second cancel of a request that already ended answers its final outcome and changes nothing.
struct WithdrawOnDrop {
    shared: Arc<Shared>,
    request_id: RequestId,
    cancel: Option<Command>,
}

impl WithdrawOnDrop {
    fn arm(shared: Arc<Shared>, request_id: RequestId, cancel: Command) -> Self {
        shared.waiters.hold(&request_id);
        Self {
            shared,
            request_id,
            cancel: Some(cancel),
        }
    }

    /// The handler answered: nothing to withdraw.
    fn disarm(&mut self) {
        if self.cancel.take().is_some() {
            self.shared.waiters.let_go(&self.request_id);
        }
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        let Some(cancel) = self.cancel.take() else {
            return;
        };
        let shared = self.shared.clone();
        let request_id = self.request_id.clone();
        if !shared.waiters.let_go(&request_id) {
            return; // another handler (a retry) still waits on this request here
        }
        shared.waiters.unregister(&request_id);
        metrics::counter!("warrant_waiters_withdrawn_total").increment(1);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = shared.propose(cancel).await {
                    tracing::warn!(request = %request_id, error = %e, "could not withdraw the waiter of a caller that went away");
                }
            });
        }
    }
}

/// What the state says about an acquire: its answer without a write (if any), whether its request id
/// is known, and how many acquires wait for its resource.
struct Look {
    answer: Option<AcquireOutcome>,
    retry: bool,
    queue: usize,
}

/// An acquire answered from the state, or put in the proposal queue.
// Returned once per call and matched at once, never stored: boxing the outcome would only add an
// allocation to every answer.
#[allow(clippy::large_enum_variant)]
enum Answered<'a> {
    Now(AcquireOutcome),
    Proposed(super::Proposal<'a>),
}

/// tonic answers a request larger than `max_decoding_message_size` with OUT_OF_RANGE; gRPC's own
/// implementations, and Warrant's other limits, say RESOURCE_EXHAUSTED. This rewrites that one
/// answer (a unary call's, whose status is in the headers) and names the setting.
pub fn request_too_large_is_resource_exhausted<B>(
    mut response: http::Response<B>,
) -> http::Response<B> {
    let headers = response.headers_mut();
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    if is_too_large(&status) {
        if let Err(e) = too_large(&status).add_header(headers) {
            tracing::warn!(error = %e, "could not rewrite a too-large answer");
        }
    }
    response
}

/// tonic's refusal of a message over `max_decoding_message_size`.
fn is_too_large(status: &Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status
            .message()
            .contains("decoded message length too large")
}

fn too_large(status: &Status) -> Status {
    Status::resource_exhausted(format!(
        "request too large for this cluster (limits.max_request_bytes): {}",
        status.message()
    ))
}

impl Api {
    /// A grant certificate for `lease` valid until `not_after_ms`; empty on insecure clusters.
    pub(super) fn certificate(&self, lease: &crate::model::Lease, not_after_ms: u64) -> String {
        let Some(key) = &self.shared.auth.signing else {
            return String::new();
        };
        crate::security::GrantClaims {
            cluster: self.shared.config.cluster_name.clone(),
            resource: lease.resource.to_string(),
            token: lease.token.0,
            lease_id: lease.lease_id.to_string(),
            principal: lease.principal.to_string(),
            instance: lease.instance.to_string(),
            not_after_ms,
        }
        .sign(key)
    }

    fn remaining(&self, id: LeaseId) -> Option<Duration> {
        self.shared.clock.remaining(id)
    }

    /// The answer to an acquire, for its asker: the task's next holder, so its predecessor's
    /// checkpoint (or, for a done task, its result) is handed to it, whoever held it before; that
    /// is what checkpoints are for. Who may take up a task is the policy's to decide, per resource.
    pub(super) fn outcome(
        &self,
        outcome: AcquireOutcome,
    ) -> Result<proto::AcquireResponse, Status> {
        use proto::acquire_response::Outcome;
        metrics::counter!("warrant_acquire_answers_total", "outcome" => outcome.kind())
            .increment(1);
        let out = match outcome {
            AcquireOutcome::Granted(g) => {
                // A retry answers the first grant, whose lease may have ended since: say so, and
                // never report a ttl for it (issue 24 item 3). A live lease the clock has not
                // heard of yet was granted a moment ago: its whole ttl is left.
                // (The chaos suite's `lose-grants` break answers lost grants as applied: it must
                // not be caught here, or its checkers could not show it.)
                let lose_grants =
                    self.shared.config.chaos() == Some(super::config::ChaosBreak::LoseGrants);
                let ended = if lose_grants {
                    None
                } else {
                    let sm = self.shared.sm.read();
                    match sm.state.lease(&g.lease.lease_id) {
                        Some(_) => None,
                        None => Some(
                            sm.state
                                .ended(&g.lease.lease_id)
                                .map_or_else(|| "ended".to_string(), |r| r.to_string()),
                        ),
                    }
                };
                let remaining = match ended {
                    Some(_) => Some(Duration::ZERO),
                    None => self
                        .remaining(g.lease.lease_id)
                        .or(Some(Duration::from_millis(g.lease.ttl_ms))),
                };
                let lease_ended = ended.is_some();
                Outcome::Granted(proto::Granted {
                    ended: ended.unwrap_or_default(),
                    lease: Some(convert::lease(&g.lease, remaining)),
                    previous: g.previous.as_ref().map(convert::previous),
                    // Grant time + the shorter of ttl and the certificate lifetime, from the
                    // replicated grant: any member (of one config) signs the same bytes. Never
                    // from a grant time ahead of this node's clock (a leader whose clock once ran
                    // ahead leaves the replicated clock ahead), and none for a lease already ended.
                    certificate: if lease_ended {
                        String::new()
                    } else {
                        self.certificate(
                            &g.lease,
                            g.lease
                                .granted_at_ms
                                .min(super::wall_now_ms())
                                .saturating_add(
                                    self.shared.config.lease.certificate_ms(g.lease.ttl_ms),
                                ),
                        )
                    },
                })
            }
            AcquireOutcome::Busy { holder } => Outcome::Busy(proto::Busy {
                holder: holder.principal.to_string(),
                holder_instance: holder.instance.to_string(),
                expires_in_ms: self
                    .remaining(holder.lease_id)
                    .unwrap_or(Duration::from_millis(holder.ttl_ms))
                    .as_millis() as u64,
            }),
            AcquireOutcome::AlreadyDone(c) => Outcome::AlreadyDone(proto::AlreadyDone {
                record: Some(convert::completion(&c)),
            }),
            AcquireOutcome::WaitEnded => Outcome::WaitEnded(proto::WaitEnded {}),
            // Only an approved request that found the resource held answers this (it waits in the
            // queue for the rest of its approval's time); a plain queued acquire is waited on.
            AcquireOutcome::Queued { position } => Outcome::Queued(proto::Queued { position }),
            AcquireOutcome::Rejected(e) => return Err(op_error(&e)),
            AcquireOutcome::Denied(d) => Outcome::Denied(convert::denied(&d)),
            AcquireOutcome::PendingApproval(p) => {
                let now = self.shared.sm.read().state.policy_version();
                Outcome::PendingApproval(convert::pending(&p, now))
            }
            AcquireOutcome::NotApproved(n) => Outcome::NotApproved(convert::not_approved(&n)),
        };
        Ok(proto::AcquireResponse { outcome: Some(out) })
    }

    /// Answer an acquire that changes nothing (busy, a known request id, a done task) from the
    /// leader's state, with no log write, or put it in the proposal queue. A local look first: only
    /// when the answer would need no write is leadership confirmed (shared with concurrent
    /// keepalives) and the state read again, so the answer is linearizable; anything else is
    /// proposed at once.
    ///
    /// A busy answer whose holder is releasing on this node becomes a proposal instead, queued right
    /// behind the release (checked on the local read already: a proposal needs no confirmation) (one such acquire per release, [`handoff`](super::handoff)), so the
    /// resource changes hands without a busy retry in between.
    ///
    /// A fresh busy or already-done answer is then proposed as a `NoteAnswer` in the background: the
    /// audit trail gets it in a later batch entry, off the caller's path.
    async fn answer_or_propose(
        &self,
        caller: &auth::Caller,
        cmd: AcquireCmd,
    ) -> Result<Answered<'_>, Status> {
        let now_ms = self.shared.entry_clock.now_ms();
        let look = || {
            let sm = self.shared.sm.read();
            Look {
                answer: sm.state.answer_without_write(&cmd, now_ms),
                retry: sm.state.request(&cmd.request_id).is_some(),
                queue: sm.state.resource(&cmd.resource).map_or(0, |r| r.waiters),
            }
        };
        let local = look();
        let Some(answer) = &local.answer else {
            return Ok(self.propose_acquire(caller, cmd));
        };
        // A proposal needs no confirmation (the log decides), so an acquire that can ride behind a
        // release is queued at once, the sooner to share the release's entry.
        if let Some(rides) = self.ride(caller, &cmd, &local) {
            return Ok(rides);
        }
        if self.shared.config.chaos() == Some(super::config::ChaosBreak::UnconfirmedAnswers) {
            // The deliberate bug: no quorum confirmation, whoever this node is.
            return Ok(Answered::Now(answer.clone()));
        }
        self.shared.confirm_for(caller).await?;
        let confirmed = look();
        let Some(answer) = &confirmed.answer else {
            return Ok(self.propose_acquire(caller, cmd));
        };
        if confirmed.retry {
            return Ok(Answered::Now(answer.clone()));
        }
        if let Some(rides) = self.ride(caller, &cmd, &confirmed) {
            return Ok(rides);
        }
        if matches!(
            answer,
            AcquireOutcome::Busy { .. } | AcquireOutcome::AlreadyDone(_)
        ) {
            self.note_answer(caller, &cmd, answer);
        }
        Ok(Answered::Now(answer.clone()))
    }

    /// Queue `cmd` behind its busy resource's holder's release, when one is on its way and the
    /// resource has no waiters (the release would hand it to them, and the rider would only be
    /// answered busy from the log).
    fn ride(&self, caller: &auth::Caller, cmd: &AcquireCmd, look: &Look) -> Option<Answered<'_>> {
        let Look {
            answer: Some(AcquireOutcome::Busy { holder }),
            retry: false,
            queue: 0,
        } = look
        else {
            return None;
        };
        let rides = self
            .shared
            .handoffs
            .ride(holder.lease_id, &cmd.request_id, || {
                self.propose_acquire(caller, cmd.clone())
            })?;
        metrics::counter!("warrant_acquires_behind_release_total").increment(1);
        Some(rides)
    }

    fn propose_acquire(&self, caller: &auth::Caller, cmd: AcquireCmd) -> Answered<'_> {
        let quotas = self.shared.config.limits.quotas();
        Answered::Proposed(
            self.shared
                .enqueue(caller.wrap(Command::AcquireWithin { cmd, quotas })),
        )
    }

    /// `chaos_break = "grant-over-holder"`, the deliberate bug: revoke whoever else holds the
    /// resource, unasked and unchecked, so the acquire that follows finds it free.
    async fn chaos_displace_holder(&self, cmd: &AcquireCmd) {
        let holder = {
            let sm = self.shared.sm.read();
            sm.state
                .resource(&cmd.resource)
                .and_then(|r| r.holder)
                .filter(|h| h.principal != cmd.principal)
                .map(|h| h.lease_id)
        };
        if let Some(lease_id) = holder {
            let revoke = Command::Revoke {
                target: crate::model::RevokeTarget::Lease(lease_id),
                by: cmd.principal.clone(),
                reason: "chaos_break grant-over-holder".to_string(),
                by_admin: true,
            };
            if let Err(e) = self.shared.propose(revoke).await {
                tracing::warn!(error = %e, "chaos_break: could not displace the holder");
            }
        }
    }

    /// Propose the audit note of an answer given without a write, in the background and bounded:
    /// past `MAX_NOTES_IN_FLIGHT` notes waiting to commit, further ones are dropped and counted in
    /// the log (a flood of busy retries must not grow memory without bound).
    fn note_answer(&self, caller: &auth::Caller, cmd: &AcquireCmd, outcome: &AcquireOutcome) {
        use std::sync::atomic::Ordering;
        let in_flight = &self.shared.notes_in_flight;
        if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_NOTES_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(resource = %cmd.resource, request = %cmd.request_id,
                "audit note dropped: too many answers waiting to be recorded");
            return;
        }
        // The holder's checkpoint (up to 4 KiB) is not part of the audit record: leave it out.
        let mut outcome = outcome.clone();
        if let AcquireOutcome::Busy { holder } = &mut outcome {
            holder.checkpoint = None;
        }
        // The answer was given: its note is recorded even if the token is revoked meanwhile.
        let note = caller.wrap_unchecked(Command::NoteAnswer {
            cmd: Box::new(cmd.clone()),
            outcome: Box::new(outcome),
        });
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.propose(note).await {
                tracing::warn!(error = %e, "could not audit an answer given without a write");
            }
            shared.notes_in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// One keepalive: confirm leadership (shared among concurrent keepalives), or log one `Renew` for
    /// a lease's first keepalive in this term, then move its deadline.
    async fn keepalive_one(
        &self,
        caller: &auth::Caller,
        req: proto::KeepAliveRequest,
    ) -> Result<proto::KeepAliveResponse, Status> {
        use proto::keep_alive_response::Result as KaResult;
        let id = lease_id(&req.lease_id)?;
        let who = caller.principal(&req.principal)?;
        let lost = |reason: String| {
            Ok(proto::KeepAliveResponse {
                lease_id: req.lease_id.clone(),
                result: Some(KaResult::Lost(reason)),
                certificate: String::new(),
                certificate_valid_ms: 0,
            })
        };
        match super::lease_time::acknowledge(&self.shared, caller, id, &who).await? {
            super::lease_time::Ack::Renewed { lease } => {
                let lifetime = self.shared.config.lease.certificate_ms(lease.ttl_ms);
                let certificate = if req.certificate {
                    self.certificate(&lease, super::wall_now_ms().saturating_add(lifetime))
                } else {
                    String::new()
                };
                Ok(proto::KeepAliveResponse {
                    lease_id: req.lease_id.clone(),
                    result: Some(KaResult::TtlMs(lease.ttl_ms)),
                    certificate_valid_ms: if certificate.is_empty() { 0 } else { lifetime },
                    certificate,
                })
            }
            super::lease_time::Ack::Lost(reason) => lost(reason),
            super::lease_time::Ack::ChaosAlive => Ok(proto::KeepAliveResponse {
                lease_id: req.lease_id.clone(),
                result: Some(KaResult::TtlMs(1_000)),
                certificate: String::new(),
                certificate_valid_ms: 0,
            }),
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<proto::KeepAliveResponse, Status>> + Send>>;
/// The answers of the streaming calls each group of calls makes.
pub(super) type AuditStream =
    Pin<Box<dyn Stream<Item = Result<proto::AuditRecord, Status>> + Send>>;
pub(super) type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<proto::SnapshotChunk, Status>> + Send>>;
pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;
type SessionStream = Pin<Box<dyn Stream<Item = Result<proto::SessionResponse, Status>> + Send>>;

/// Calls of one session in progress at once; further messages wait (backpressure on the stream).
const CALLS_IN_FLIGHT_PER_SESSION: usize = 256;

/// A session's answer carrying the status the unary call would have failed with.
fn session_error(call_id: u64, status: &Status) -> proto::SessionResponse {
    proto::SessionResponse {
        call_id,
        result: Some(proto::session_response::Result::Error(proto::CallError {
            code: status.code() as i32,
            message: status.message().to_string(),
            leader: status
                .metadata()
                .get(super::LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        })),
    }
}

impl Api {
    /// One call of a session, made exactly as its unary twin (same validation, authorization,
    /// audit and answer), with the session's caller.
    async fn session_call(
        &self,
        caller: &auth::Caller,
        call: Option<proto::session_request::Call>,
    ) -> Result<proto::session_response::Result, Status> {
        use proto::session_request::Call;
        use proto::session_response::Result as Answer;
        let mut extensions = tonic::Extensions::new();
        extensions.insert(caller.clone());
        let metadata = tonic::metadata::MetadataMap::new();
        match call {
            Some(Call::Acquire(r)) if r.wait_ms > 0 || r.approval_wait_ms > 0 => {
                Err(Status::invalid_argument(
                    "an acquire that waits (wait_ms, approval_wait_ms) is made with the unary Acquire call, not in a session",
                ))
            }
            Some(Call::Acquire(r)) => {
                let request = Request::from_parts(metadata, extensions, r);
                let answer = warrant_server::Warrant::acquire(self, request).await?;
                Ok(Answer::Acquire(answer.into_inner()))
            }
            Some(Call::Release(r)) => {
                let request = Request::from_parts(metadata, extensions, r);
                let answer = warrant_server::Warrant::release(self, request).await?;
                Ok(Answer::Release(answer.into_inner()))
            }
            None => Err(Status::invalid_argument(
                "a session message names no call (acquire or release)",
            )),
        }
    }
}

#[tonic::async_trait]
impl warrant_server::Warrant for Api {
    async fn acquire(
        &self,
        request: Request<proto::AcquireRequest>,
    ) -> Result<Response<proto::AcquireResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let principal = caller.principal(&r.principal)?;
        let requests::Acquire {
            cmd,
            wait_ms,
            approval_wait,
        } = requests::acquire(
            r,
            principal,
            &requests::AcquireBounds::of(&self.shared.config),
            self.shared.policy_defaults(),
        )?;
        let request_id = cmd.request_id.clone();
        let principal = cmd.principal.clone();
        // A caller that may wait holds one of its principal's waiter slots until it is answered.
        let _waiting = if wait_ms > 0 || !approval_wait.is_zero() {
            Some(self.shared.auth.waiter_slot(&caller, principal.as_str())?)
        } else {
            None
        };
        if self.shared.config.chaos() == Some(super::config::ChaosBreak::GrantOverHolder) {
            self.chaos_displace_holder(&cmd).await;
        }
        let woken = self.shared.waiters.register(&request_id);
        // From here the caller may wait: if it goes away (its connection drops and this future
        // with it), its waiter is withdrawn, so the resource is never granted to a caller that
        // is gone (etcd#11456) — unless another handler on this node waits on the same request id
        // (a retry). Armed before the first proposal: a caller gone while it commits is withdrawn
        // too (the cancel queues behind it). Not re-checked: withdrawing one's own request must
        // work even after the caller's token was revoked, or a pending request would outlive it.
        let mut withdraw = (wait_ms > 0 || !approval_wait.is_zero()).then(|| {
            WithdrawOnDrop::arm(
                self.shared.clone(),
                request_id.clone(),
                caller.wrap_unchecked(Command::CancelWait {
                    request_id: request_id.clone(),
                    principal: principal.clone(),
                }),
            )
        });
        let answered = async {
            let answer = match self.answer_or_propose(&caller, cmd).await {
                Ok(Answered::Now(answer)) => answer,
                Ok(Answered::Proposed(proposal)) => match proposal.answer().await.and_then(|r| {
                    r.into_acquire()
                        .map_err(|e| Status::internal(e.to_string()))
                }) {
                    Ok(a) => a,
                    Err(status) => {
                        self.shared.waiters.unregister(&request_id);
                        return Err(status);
                    }
                },
                Err(status) => {
                    self.shared.waiters.unregister(&request_id);
                    return Err(status);
                }
            };
            let outcome = match answer {
                AcquireOutcome::Queued { .. } if wait_ms > 0 => {
                    match tokio::time::timeout(Duration::from_millis(wait_ms), woken).await {
                        Ok(Ok(outcome)) => outcome,
                        // The wait is over (or we missed the wake-up): cancel, which answers with the final
                        // outcome — the grant if it happened meanwhile, so no lease is ever orphaned here.
                        _ => self.cancel_wait(&caller, &request_id, principal).await?,
                    }
                }
                // Waiting for humans: the quorum's grant, or a rejection / expiry / cancellation, wakes
                // us. Past the caller's wait the request is withdrawn (cancel answers its final outcome,
                // the grant if it happened meanwhile), so nothing is granted later to a caller that left.
                AcquireOutcome::PendingApproval(_) | AcquireOutcome::Queued { .. }
                    if !approval_wait.is_zero() =>
                {
                    match tokio::time::timeout(approval_wait, woken).await {
                        Ok(Ok(outcome)) => outcome,
                        _ => self.cancel_wait(&caller, &request_id, principal).await?,
                    }
                }
                other => {
                    self.shared.waiters.unregister(&request_id);
                    other
                }
            };
            Ok(Response::new(self.outcome(outcome)?))
        }
        .await;
        // Answered (a grant, an error, …): the caller is there to read it.
        if let Some(w) = withdraw.as_mut() {
            w.disarm();
        }
        answered
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<proto::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        if self.shared.clock.active_term().is_none() {
            return Err(self.shared.redirect());
        }
        let caller = auth::caller(&request)?;
        // The slot is held for as long as the stream is open.
        let slot = self.shared.auth.stream_slot(&caller, "")?;
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let api = Api {
            shared: self.shared.clone(),
        };
        tokio::spawn(async move {
            let _slot = slot;
            let api = Arc::new(api);
            let caller = Arc::new(caller);
            // At most this many keepalives of one stream are in progress; further messages wait.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(KEEPALIVES_IN_FLIGHT_PER_STREAM));
            let mut first = true;
            while let Some(msg) = incoming.next().await {
                let Ok(req) = msg else { break };
                // A token revoked or a credential run out since the stream opened ends it; every
                // message counts against the caller's rate, the first one as the stream's opening.
                let checked = if std::mem::take(&mut first) {
                    api.shared.auth.still_valid(&caller)
                } else {
                    api.shared.auth.recheck(&caller)
                };
                if let Err(status) = checked {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let (api, tx, caller) = (api.clone(), tx.clone(), caller.clone());
                tokio::spawn(async move {
                    let _ = tx.send(api.keepalive_one(&caller, req).await).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = auth::caller(&request)?;
        // The slot is held for as long as the session is open.
        let slot = self.shared.auth.session_slot(&caller)?;
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let api = Arc::new(Api {
            shared: self.shared.clone(),
        });
        tokio::spawn(async move {
            let _slot = slot;
            let caller = Arc::new(caller);
            // At most this many calls of one session are in progress; further messages wait.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT_PER_SESSION));
            while let Some(msg) = incoming.next().await {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(status) => {
                        // A message that does not decode (too large, garbled) ends the session
                        // with a status saying why.
                        let status = if is_too_large(&status) {
                            too_large(&status)
                        } else {
                            status
                        };
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let call_id = msg.call_id;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                // Checked when the call starts, after any wait for a slot.
                if let Err(status) = api.shared.session_gate(&caller) {
                    let _ = tx.send(Ok(session_error(call_id, &status))).await;
                    // A credential run out or a token revoked ends the session with that status
                    // (reopening it is refused at the door); a retired node or a rate answers only
                    // this call.
                    if status.code() == tonic::Code::Unauthenticated {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    continue;
                }
                metrics::counter!("warrant_session_calls_total").increment(1);
                let (api, tx, caller) = (api.clone(), tx.clone(), caller.clone());
                tokio::spawn(async move {
                    let answer = api.session_call(&caller, msg.call).await;
                    let _ = tx
                        .send(Ok(match answer {
                            Ok(result) => proto::SessionResponse {
                                call_id,
                                result: Some(result),
                            },
                            Err(status) => session_error(call_id, &status),
                        }))
                        .await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn checkpoint(
        &self,
        request: Request<proto::CheckpointRequest>,
    ) -> Result<Response<proto::CheckpointResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let principal = caller.principal(&r.principal)?;
        let cmd = requests::checkpoint(r, principal)?;
        self.shared
            .propose_for(caller.wrap(cmd), crate::model::Response::into_checkpoint)
            .await?
            .map_err(|e| op_error(&e))?;
        Ok(Response::new(proto::CheckpointResponse {}))
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseRequest>,
    ) -> Result<Response<proto::ReleaseResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let (lease_id, cmd) = requests::release(&r, caller.principal(&r.principal)?)?;
        let cmd = caller.wrap(cmd);
        // Marked as releasing until answered: one acquire that finds the lease's resource busy
        // meanwhile is queued right behind this release instead of being answered busy.
        let (_releasing, proposal) = self
            .shared
            .handoffs
            .release(lease_id, || self.shared.enqueue(cmd));
        let ok = proposal
            .answer()
            .await?
            .into_release()
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| op_error(&e))?;
        Ok(Response::new(proto::ReleaseResponse {
            ended: ok.ended.to_string(),
            already: ok.already,
        }))
    }

    async fn revoke(
        &self,
        request: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let by = caller.principal(&r.principal)?;
        caller.require_certificate("revoking a lease")?;
        // Policy decides in apply (audited, denials too); the config's admins are the path while no
        // policy is loaded.
        let by_admin = self.shared.admins.contains(&by);
        let cmd = requests::revoke(r, by, by_admin)?;
        let lease = self
            .shared
            .propose_for(caller.wrap(cmd), crate::model::Response::into_revoke)
            .await?
            .map_err(|e| op_error(&e))?;
        // A principal Cedar lets revoke is not thereby one that reads the checkpoint.
        let mut revoked = convert::lease(&lease, None);
        let sm = self.shared.sm.read();
        CheckpointReader::of(&caller, &self.shared, &sm.state).strip(&mut revoked);
        Ok(Response::new(proto::RevokeResponse {
            revoked: Some(revoked),
        }))
    }

    async fn check_fence(
        &self,
        request: Request<proto::CheckFenceRequest>,
    ) -> Result<Response<proto::CheckFenceResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let res = existing_resource(&r.resource)?;
        self.shared.confirm_for(&caller).await?;
        use proto::check_fence_response::Status as Fs;
        let (status, fence) = match self
            .shared
            .sm
            .read()
            .state
            .check_fence(&res, FencingToken(r.token))
        {
            FenceStatus::Current => (Fs::Current, r.token),
            FenceStatus::Stale { fence } => (Fs::Stale, fence.0),
            FenceStatus::Unknown { fence } => (Fs::Unknown, fence.0),
        };
        Ok(Response::new(proto::CheckFenceResponse {
            status: status as i32,
            fence,
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let res = existing_resource(&r.resource)?;
        if !r.serializable {
            self.shared.confirm_for(&caller).await?;
        }
        let sm = self.shared.sm.read();
        let view = sm.state.resource(&res);
        let holder = view.and_then(|v| v.holder).map(|l| l.principal.as_str());
        ReadAs::of(&caller, &self.shared).may_read(&sm.state, res.as_str(), holder)?;
        let applied_index = sm.last_applied.map_or(0, |id| id.index);
        let reads_checkpoints = CheckpointReader::of(&caller, &self.shared, &sm.state);
        let (holder, fence, waiters) = match view {
            Some(v) => (
                v.holder.map(|l| {
                    let mut lease = convert::lease(l, self.remaining(l.lease_id));
                    reads_checkpoints.strip(&mut lease);
                    lease
                }),
                v.fence.0,
                v.waiters as u32,
            ),
            None => (None, 0, 0),
        };
        Ok(Response::new(proto::GetResponse {
            resource: res.to_string(),
            holder,
            fence,
            waiters,
            applied_index,
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        if !r.prefix.is_empty() {
            existing_resource(&r.prefix)?;
        }
        self.shared.confirm_for(&caller).await?;
        let limit = if r.limit == 0 {
            MAX_LIST
        } else {
            (r.limit as usize).min(MAX_LIST)
        };
        if !r.after.is_empty() {
            existing_resource(&r.after)?;
        }
        let sm = self.shared.sm.read();
        let reads_checkpoints = CheckpointReader::of(&caller, &self.shared, &sm.state);
        let reader = ReadAs::of(&caller, &self.shared);
        if let ReadAs::Nobody(_) = reader {
            reader.may_read(&sm.state, "", None)?;
        }
        // A caller whose reads the policy decides costs an evaluation per lease looked at, those
        // it may not read included: a page looks at a bounded number.
        let looks = if reader.governed(&sm.state) {
            MAX_GOVERNED_LIST_LOOKS
        } else {
            usize::MAX
        };
        let mut found = sm.state.list_after(&r.prefix, &r.after).peekable();
        let (mut leases, mut bytes, mut looked) = (Vec::new(), 0usize, 0usize);
        let (mut last_returned, mut last_looked) = (None::<String>, None::<String>);
        while let Some(l) = found.peek() {
            if leases.len() == limit || looked == looks {
                break;
            }
            looked += 1;
            let owner = Some(l.principal.as_str());
            if reader
                .may_read(&sm.state, l.resource.as_str(), owner)
                .is_err()
            {
                last_looked = Some(l.resource.to_string());
                found.next();
                continue;
            }
            let mut lease = convert::lease(l, self.remaining(l.lease_id));
            if r.checkpoints {
                reads_checkpoints.strip(&mut lease);
            } else {
                lease.checkpoint = None;
            }
            let size = prost::Message::encoded_len(&lease) + 8;
            if !leases.is_empty() && bytes + size > MAX_LIST_BYTES {
                break;
            }
            bytes += size;
            last_returned = Some(lease.resource.clone());
            last_looked = last_returned.clone();
            leases.push(lease);
            found.next();
        }
        // The next page resumes after the last lease returned, so a page never names a resource
        // the caller may not read, unless it ended on its bound of looks (then after the last
        // looked at, or the next page would look at the same ones again).
        let next = match found.peek() {
            None => String::new(),
            Some(_) if looked == looks => last_looked.unwrap_or_default(),
            Some(_) => last_returned.unwrap_or_default(),
        };
        Ok(Response::new(proto::ListResponse {
            leases,
            revision: sm.state.revision(),
            next,
        }))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let m = self.shared.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let (members, _) = self.shared.members();
        let leader_address = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.client.clone()))
            .unwrap_or_default();
        Ok(Response::new(proto::StatusResponse {
            node_id: self.shared.node_id,
            leader: m.current_leader.unwrap_or(0),
            leader_address,
            term: m.current_term,
            members,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            live_leases: self.shared.sm.read().state.live_lease_count() as u64,
            cluster_name: self.shared.config.cluster_name.clone(),
            cluster_id: self.shared.network.cluster_id().unwrap_or_default(),
        }))
    }

    async fn put_policy(
        &self,
        request: Request<proto::PutPolicyRequest>,
    ) -> Result<Response<proto::PutPolicyResponse>, Status> {
        self.put_policy_rpc(auth::caller(&request)?, request.into_inner())
            .await
    }

    async fn get_policy(
        &self,
        request: Request<proto::GetPolicyRequest>,
    ) -> Result<Response<proto::GetPolicyResponse>, Status> {
        self.get_policy_rpc(&auth::caller(&request)?).await
    }

    async fn test_policy(
        &self,
        request: Request<proto::TestPolicyRequest>,
    ) -> Result<Response<proto::TestPolicyResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.test_policy_rpc(&caller, request.into_inner()).await
    }

    async fn list_approvals(
        &self,
        request: Request<proto::ListApprovalsRequest>,
    ) -> Result<Response<proto::ListApprovalsResponse>, Status> {
        self.list_approvals_rpc(&auth::caller(&request)?).await
    }

    async fn approve(
        &self,
        request: Request<proto::ApproveRequest>,
    ) -> Result<Response<proto::ApproveResponse>, Status> {
        self.approve_rpc(auth::caller(&request)?, request.into_inner())
            .await
    }

    async fn reject(
        &self,
        request: Request<proto::RejectRequest>,
    ) -> Result<Response<proto::RejectResponse>, Status> {
        self.reject_rpc(auth::caller(&request)?, request.into_inner())
            .await
    }

    type QueryAuditStream = AuditStream;

    async fn query_audit(
        &self,
        request: Request<proto::QueryAuditRequest>,
    ) -> Result<Response<Self::QueryAuditStream>, Status> {
        self.query_audit_rpc(auth::caller(&request)?, request.into_inner())
            .await
    }

    type ExportAuditStream = AuditStream;

    async fn export_audit(
        &self,
        request: Request<proto::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.export_audit_rpc(auth::caller(&request)?, request.into_inner())
            .await
    }

    async fn mint_token(
        &self,
        request: Request<proto::MintTokenRequest>,
    ) -> Result<Response<proto::MintTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.mint_token_rpc(caller, request.into_inner()).await
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.revoke_token_rpc(caller, request.into_inner()).await
    }

    async fn add_node(
        &self,
        request: Request<proto::AddNodeRequest>,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.add_node_rpc(caller, request.into_inner()).await
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        let caller = auth::caller(&request)?;
        self.remove_node_rpc(caller, request.into_inner()).await
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        request: Request<proto::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let caller = auth::caller(&request)?;
        self.save_snapshot_rpc(caller, request.into_inner()).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = auth::caller(&request)?;
        self.watch_rpc(caller, request.into_inner()).await
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        self.verify_audit_rpc(auth::caller(&request)?).await
    }
}
