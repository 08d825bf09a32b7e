//! Watching lease events under a prefix (`Watch`), resumed across node failures.
//!
//! Revisions are the same on every node, so when the serving node goes away the watch reopens on
//! another from the revision after the last event delivered: no event is skipped or repeated.

use futures::Stream;
use tonic::{Code, Status};

use super::{from_status, transient, Client, ClientError, ATTEMPT_TIMEOUT};
use crate::audit::watch::{WatchEvent, WatchKind};
use crate::proto;

/// Reopens since the last event delivered before the watch gives up.
const REOPENS: u32 = 5;

fn event_from_proto(p: proto::WatchEvent) -> Result<WatchEvent, ClientError> {
    let kind = p
        .kind
        .parse::<WatchKind>()
        .map_err(|e| ClientError::Server {
            code: Code::DataLoss,
            message: format!(
                "the server sent a malformed watch event (revision {}): {e}",
                p.revision
            ),
        })?;
    Ok(WatchEvent {
        revision: p.revision,
        log_index: p.log_index,
        at_ms: p.at_ms,
        kind,
        resource: p.resource,
        lease_id: p.lease_id,
        token: p.token,
        principal: p.principal,
        instance: p.instance,
        reason: p.reason,
    })
}

struct Watch {
    client: Client,
    prefix: String,
    /// The revision to ask for when (re)opening; 0 (only new events) until one is delivered.
    next: u64,
    stream: Option<tonic::Streaming<proto::WatchEvent>>,
    reopens: u32,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        if self.done {
            return None;
        }
        loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => match self.client.open_watch(&self.prefix, self.next).await {
                    Ok(s) => self.stream.insert(s),
                    Err(e) => return self.fail(e),
                },
            };
            let failure = match stream.message().await {
                Ok(Some(p)) => {
                    return match event_from_proto(p) {
                        Ok(e) => {
                            self.next = e.revision + 1;
                            self.reopens = 0;
                            Some(Ok(e))
                        }
                        Err(e) => self.fail(e),
                    };
                }
                Ok(None) => Status::unavailable("the node ended the watch"),
                Err(s) if transient(s.code()) => s,
                Err(s) => return self.fail(from_status(s)),
            };
            self.stream = None;
            self.reopens += 1;
            if self.reopens > REOPENS {
                return self.fail(ClientError::Unavailable {
                    last: format!("the watch broke off ({})", failure.message()),
                });
            }
        }
    }

    fn fail(&mut self, e: ClientError) -> Option<Result<WatchEvent, ClientError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl Client {
    /// Lease events under `prefix` (empty: everything) from revision `from` on (0: only events
    /// after now), then live, in revision order, until dropped. If the serving node goes away the
    /// watch resumes on another node after the last event delivered. A start (or a lag) older than
    /// the nodes keep ends the stream with OUT_OF_RANGE "compacted": read the state with
    /// [`Client::list`] and watch from its `revision` + 1.
    pub fn watch(
        &self,
        prefix: &str,
        from: u64,
    ) -> impl Stream<Item = Result<WatchEvent, ClientError>> + Send + 'static {
        let state = Watch {
            client: self.clone(),
            prefix: prefix.to_string(),
            next: from,
            stream: None,
            reopens: 0,
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            state.next().await.map(|item| (item, state))
        })
    }

    async fn open_watch(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<tonic::Streaming<proto::WatchEvent>, ClientError> {
        let req = proto::WatchRequest {
            prefix: prefix.to_string(),
            from_revision,
        };
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.watch(req).await }
        })
        .await
    }
}
