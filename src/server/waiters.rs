//! Acquires waiting in a queue, by request id: woken when the state machine grants or drops them.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::model::{AcquireOutcome, RequestId};

/// Waiting acquire calls on this node.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<RequestId, Vec<oneshot::Sender<AcquireOutcome>>>>,
    /// Acquire handlers on this node that may wait for each request id (a retry with the same id
    /// can arrive while the first handler still runs): a handler whose caller went away withdraws
    /// the request only when it was the last.
    handlers: Mutex<HashMap<RequestId, usize>>,
}

impl Waiters {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RequestId, Vec<oneshot::Sender<AcquireOutcome>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register interest before proposing, so a grant applied before the caller waits is not missed.
    pub fn register(&self, id: &RequestId) -> oneshot::Receiver<AcquireOutcome> {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(id.clone()).or_default().push(tx);
        rx
    }

    /// Requests waiting on this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Forget a request (answered, or given up).
    pub fn unregister(&self, id: &RequestId) {
        self.lock().remove(id);
    }

    /// A handler for `id` starts (see `handlers`).
    pub fn hold(&self, id: &RequestId) {
        *self
            .handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default() += 1;
    }

    /// A handler for `id` ends; true if it was the last one on this node.
    pub fn let_go(&self, id: &RequestId) -> bool {
        let mut handlers = self.handlers.lock().unwrap_or_else(|p| p.into_inner());
        match handlers.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                handlers.remove(id);
                true
            }
        }
    }

    /// The request was granted or dropped: wake everyone waiting on it.
    pub fn notify(&self, id: &RequestId, outcome: AcquireOutcome) {
        if let Some(senders) = self.lock().remove(id) {
            for tx in senders {
                let _ = tx.send(outcome.clone());
            }
        }
    }
}
