//! Acquires waiting in a queue, by request id: woken when the state machine grants or drops them.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::model::{AcquireOutcome, RequestId};

/// Waiting acquire calls on this node.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<RequestId, Vec<oneshot::Sender<AcquireOutcome>>>>,
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

    /// The request was granted or dropped: wake everyone waiting on it.
    pub fn notify(&self, id: &RequestId, outcome: AcquireOutcome) {
        if let Some(senders) = self.lock().remove(id) {
            for tx in senders {
                let _ = tx.send(outcome.clone());
            }
        }
    }
}
