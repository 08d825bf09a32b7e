//! Sessions: acquires and releases as messages on one long-lived stream per endpoint (the `Session`
//! RPC), instead of a unary call each. A message costs the server and the client a fraction of a
//! unary call (no HTTP/2 stream to open, no headers to encode). Answers come back by call id.
//!
//! A session is opened lazily on the first call to an endpoint and dropped when its stream ends; the
//! calls in progress then fail as a lost connection does (`Unknown`), which [`Client::call_at`]
//! retries on the next endpoint with the same request. A server without sessions (UNIMPLEMENTED)
//! is remembered and gets unary calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use super::{Client, Inner};
use crate::proto;
pub(super) use crate::proto::session_request::Call;
pub(super) use crate::proto::session_response::Result as Answer;
use crate::proto::LEADER_METADATA;

type Reply = oneshot::Sender<Result<Answer, Status>>;

/// One endpoint's open session.
///
/// Only the client's map (and calls in progress) hold it, so dropping the client closes the
/// outbound stream, the server then ends the session and the reading task stops.
pub(super) struct Session {
    id: u64,
    out: mpsc::UnboundedSender<proto::SessionRequest>,
    /// Shared with the task reading the answers.
    calls: Arc<Mutex<Calls>>,
    next_call: AtomicU64,
}

#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, Reply>,
    /// Set (under this lock) when the stream has ended: no call may wait any more.
    ended: bool,
}

/// The sessions of one client, by endpoint.
#[derive(Default)]
pub(super) struct Sessions {
    open: HashMap<String, Arc<Session>>,
    /// Endpoints that refused a session (no `Session` call, or the principal's session limit),
    /// and until when they get unary calls instead.
    unary_until: HashMap<String, Instant>,
    next_id: u64,
}

/// How long an endpoint without sessions (an older server) gets unary calls before the next try.
const UNIMPLEMENTED_BACKOFF: Duration = Duration::from_secs(60);
/// How long an endpoint that refused a session for the principal's limit gets unary calls.
const REFUSED_BACKOFF: Duration = Duration::from_secs(5);
/// Larger calls go unary: a message over the server's request limit ends the whole session.
pub(super) const MAX_SESSION_MESSAGE: usize = 64 * 1024;

/// Removes a call that is given up (timed out, dropped) from its session.
struct Waiting<'a> {
    session: &'a Session,
    call_id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.session.calls).waiting.remove(&self.call_id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An acquire's answer, if `answer` is one.
pub(super) fn acquire_answer(answer: Answer) -> Option<proto::AcquireResponse> {
    match answer {
        Answer::Acquire(a) => Some(a),
        _ => None,
    }
}

/// A release's answer, if `answer` is one.
pub(super) fn release_answer(answer: Answer) -> Option<proto::ReleaseResponse> {
    match answer {
        Answer::Release(r) => Some(r),
        _ => None,
    }
}

/// A call whose session ended before it could be sent: a lost connection, retried elsewhere.
fn not_sent() -> Status {
    Status::unknown("transport error: the session ended before the call was sent")
}

/// The status a session's error answer stands for, with the leader hint as unary calls carry it.
fn status_of(e: proto::CallError) -> Status {
    let mut status = Status::new(Code::from(e.code), e.message);
    if let Ok(v) = MetadataValue::try_from(e.leader.as_str()) {
        if !e.leader.is_empty() {
            status.metadata_mut().insert(LEADER_METADATA, v);
        }
    }
    status
}

impl Client {
    /// Make `call` in `endpoint`'s session and take its answer with `pick`; without a call, or
    /// when the endpoint gives no session, make the `unary` call instead (it is not started
    /// otherwise).
    pub(super) async fn in_session_or<T>(
        &self,
        endpoint: &str,
        call: Option<Call>,
        pick: fn(Answer) -> Option<T>,
        unary: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<tonic::Response<T>, Status> {
        let Some(call) = call else {
            return unary.await;
        };
        match self.in_session(endpoint, call).await {
            Some(Ok(answer)) => pick(answer).map(tonic::Response::new).ok_or_else(|| {
                Status::internal("the server answered a session call with another call's answer")
            }),
            Some(Err(status)) => Err(status),
            None => unary.await,
        }
    }

    /// Make `call` on `endpoint` in its session, opening one if needed; `None` when the endpoint's
    /// server has no sessions (the caller then makes the unary call).
    async fn in_session(&self, endpoint: &str, call: Call) -> Option<Result<Answer, Status>> {
        let session = match self.session(endpoint).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(status) => return Some(Err(status)),
        };
        let call_id = session.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut calls = lock(&session.calls);
            if calls.ended {
                return Some(Err(not_sent()));
            }
            calls.waiting.insert(call_id, tx);
        }
        let _waiting = Waiting {
            session: &session,
            call_id,
        };
        let message = proto::SessionRequest {
            call_id,
            call: Some(call),
        };
        if session.out.send(message).is_err() {
            return Some(Err(not_sent()));
        }
        Some(match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(Status::unknown(
                "transport error: the session ended before the call was answered",
            )),
        })
    }

    /// The open session to `endpoint`, opened now if there is none.
    async fn session(&self, endpoint: &str) -> Result<Option<Arc<Session>>, Status> {
        {
            let sessions = lock(&self.inner.sessions);
            if sessions
                .unary_until
                .get(endpoint)
                .is_some_and(|until| Instant::now() < *until)
            {
                return Ok(None);
            }
            if let Some(s) = sessions.open.get(endpoint) {
                return Ok(Some(s.clone()));
            }
        }
        let mut rpc = self
            .rpc(endpoint)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (out, queue) = mpsc::unbounded_channel();
        let inbound = match rpc.session(UnboundedReceiverStream::new(queue)).await {
            Ok(response) => response.into_inner(),
            Err(s) if matches!(s.code(), Code::Unimplemented | Code::ResourceExhausted) => {
                // An older server, or the principal's session limit: unary calls for a while.
                let backoff = if s.code() == Code::Unimplemented {
                    UNIMPLEMENTED_BACKOFF
                } else {
                    REFUSED_BACKOFF
                };
                lock(&self.inner.sessions)
                    .unary_until
                    .insert(endpoint.to_string(), Instant::now() + backoff);
                return Ok(None);
            }
            Err(s) => return Err(s),
        };
        let session = {
            let mut sessions = lock(&self.inner.sessions);
            if let Some(s) = sessions.open.get(endpoint) {
                // Another call opened one meanwhile: use it; ours closes when dropped.
                return Ok(Some(s.clone()));
            }
            sessions.next_id += 1;
            let session = Arc::new(Session {
                id: sessions.next_id,
                out,
                calls: Default::default(),
                next_call: AtomicU64::new(1),
            });
            sessions.open.insert(endpoint.to_string(), session.clone());
            session
        };
        tokio::spawn(read_answers(
            Arc::downgrade(&self.inner),
            endpoint.to_string(),
            session.id,
            session.calls.clone(),
            inbound,
        ));
        Ok(Some(session))
    }
}

/// Hand each answer to its call; when the stream ends, forget the session and fail the calls still
/// waiting as a lost connection.
async fn read_answers(
    client: Weak<Inner>,
    endpoint: String,
    session_id: u64,
    calls: Arc<Mutex<Calls>>,
    mut inbound: tonic::Streaming<proto::SessionResponse>,
) {
    let end = loop {
        match inbound.message().await {
            Ok(Some(answer)) => {
                let reply = lock(&calls).waiting.remove(&answer.call_id);
                if let Some(reply) = reply {
                    let _ = reply.send(match answer.result {
                        Some(Answer::Error(e)) => Err(status_of(e)),
                        Some(result) => Ok(result),
                        None => Err(Status::internal("the server sent an empty session answer")),
                    });
                }
            }
            Ok(None) => break Status::unknown("transport error: the session stream ended"),
            Err(status) => break status,
        }
    };
    if let Some(inner) = client.upgrade() {
        let mut sessions = lock(&inner.sessions);
        if sessions.open.get(&endpoint).map(|s| s.id) == Some(session_id) {
            sessions.open.remove(&endpoint);
        }
    }
    let waiting = {
        let mut calls = lock(&calls);
        calls.ended = true;
        std::mem::take(&mut calls.waiting)
    };
    // A stream that ended with a definitive status (e.g. the credential ran out) says so; anything
    // else is a lost connection, retried elsewhere.
    let code = match end.code() {
        Code::Ok => Code::Unknown,
        c => c,
    };
    for (_, reply) in waiting {
        let _ = reply.send(Err(Status::new(code, end.message().to_string())));
    }
}
