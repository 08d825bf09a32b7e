//! A small batcher: callers submit items; one task takes everything queued, handles it in one go and
//! answers each caller. Keepalives use it so that many share one quorum confirmation (or one `Renew`
//! entry), and every item in a batch arrived before the batch's work started.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// Most items handled in one batch.
const MAX_BATCH: usize = 8192;

/// A batch's first item that arrives within this of the previous batch's end (and the previous batch
/// held more than one) finds the queue busy: see [`Shape::linger`].
const BUSY_WITHIN: Duration = Duration::from_millis(1);

/// How a batcher cuts its batches.
pub struct Shape {
    /// Batches handled at once.
    pub max_in_flight: usize,
    /// Most weight of items in one batch (a heavier single item goes alone).
    pub max_weight: usize,
    /// How long a batch waits for more items after its first while the queue is busy: the previous
    /// batch held more than one item and this one's first arrived within a millisecond of its end
    /// (a group-commit delay; zero: cut at once). A caller after a quiet spell never waits for it.
    pub linger: Duration,
}

/// A handle to submit items to a batching task.
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<(I, oneshot::Sender<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Spawn the task; `handle` gets the items of one batch and returns one output per item, in
    /// order. At most `max_in_flight` batches are handled at once; items arriving meanwhile wait and
    /// form the next batch.
    pub fn spawn<F, Fut>(max_in_flight: usize, handle: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let shape = Shape {
            max_in_flight,
            max_weight: usize::MAX,
            linger: Duration::ZERO,
        };
        Self::spawn_shaped(shape, |_| 0, handle)
    }

    /// Like [`spawn`](Self::spawn), shaped by `shape`: a batch's items weigh at most
    /// `shape.max_weight` together (by `weight`), except that a single item heavier than that forms
    /// a batch alone (an item that would overflow a batch starts the next one); and while callers
    /// keep arriving together, each batch is cut `shape.linger` after its first item could go
    /// ([`Shape::linger`]).
    pub fn spawn_shaped<W, F, Fut>(shape: Shape, weight: W, handle: F) -> Self
    where
        W: Fn(&I) -> usize + Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let Shape {
            max_in_flight,
            max_weight,
            linger,
        } = shape;
        let (tx, mut rx) = mpsc::unbounded_channel::<(I, oneshot::Sender<O>)>();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            // An item taken from the queue that did not fit the previous batch.
            let mut carried: Option<(I, oneshot::Sender<O>)> = None;
            // Items in the previous batch: more than one means callers are arriving together.
            let mut previous = 0;
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let free = std::time::Instant::now();
                let (first, overweight) = match carried.take() {
                    Some(item) => (item, true),
                    None => match rx.recv().await {
                        Some(item) => (item, false),
                        None => return,
                    },
                };
                // Busy: the previous batch was shared and this one's first item came at once, not
                // after a quiet spell (a lone caller then goes without waiting). Not when the queue
                // already holds more than a batch can take.
                let busy = previous > 1 && free.elapsed() < BUSY_WITHIN;
                if busy && !overweight && !linger.is_zero() {
                    // Give the callers the previous batch just answered time to send their next
                    // request into this batch, rather than a whole commit round later. A thread
                    // sleep: tokio's timers tick in milliseconds.
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(linger)).await;
                }
                let mut total = weight(&first.0);
                let mut items = vec![first];
                while items.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => {
                            let w = weight(&item.0);
                            if total.saturating_add(w) > max_weight {
                                carried = Some(item);
                                break;
                            }
                            total += w;
                            items.push(item);
                        }
                        Err(_) => break,
                    }
                }
                previous = items.len();
                let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
                    items.into_iter().unzip();
                // Called here, in queue order: whatever `handle` does before its future's first
                // await happens batch after batch in order, however many batches are in flight.
                let work = handle(inputs);
                tokio::spawn(async move {
                    let outputs = work.await;
                    for (reply, output) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(output);
                    }
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    /// Submit one item and wait for its answer; None if the batching task is gone (shutdown, or a
    /// panic in `handle`, which ends the batcher).
    pub async fn submit(&self, item: I) -> Option<O> {
        self.enqueue(item)?.await.ok()
    }

    /// Put one item in the queue now (items enter batches in the order they were queued) and return
    /// where its answer will come; None if the batching task is gone (shutdown).
    pub fn enqueue(&self, item: I) -> Option<oneshot::Receiver<O>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((item, tx)).ok()?;
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn concurrent_items_share_batches_and_each_gets_its_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counter = batches.clone();
        let b = Arc::new(Batcher::spawn(1, move |items: Vec<u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 2).collect()
            }
        }));
        let tasks: Vec<_> = (0..50u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(out, Some(i * 2));
        }
        assert!(batches.load(Ordering::SeqCst) < 50, "items were batched");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_start_in_queue_order_however_many_are_in_flight() {
        // What `handle` does before its future's first await (a proposal's hand-over to Raft)
        // happens in queue order, though batches finish in any order.
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = started.clone();
        // One item per batch, four in flight, finishing out of order.
        let shape = Shape {
            max_in_flight: 4,
            max_weight: 1,
            linger: Duration::ZERO,
        };
        let b = Batcher::spawn_shaped(
            shape,
            |_| 1,
            move |items: Vec<u32>| {
                log.lock().unwrap().extend(items.iter().copied());
                async move {
                    let pause = 5 - u64::from(items[0] % 5);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    items
                }
            },
        );
        let answers: Vec<_> = (0..200u32).map(|i| b.enqueue(i).unwrap()).collect();
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap(), i as u32);
        }
        assert_eq!(*started.lock().unwrap(), (0..200).collect::<Vec<u32>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_load_a_batch_lingers_for_the_next_callers_and_a_lone_caller_does_not() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let gate = Arc::new(tokio::sync::Notify::new());
        let held = gate.clone();
        let shape = Shape {
            max_in_flight: 1,
            max_weight: usize::MAX,
            linger: Duration::from_millis(300),
        };
        let b = Batcher::spawn_shaped(
            shape,
            |_| 0,
            move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.len());
                let held = held.clone();
                async move {
                    if items[0] == 10 || items[0] == 2 {
                        held.notified().await;
                    }
                    items
                }
            },
        );
        // A lone caller: answered at once, no linger.
        let started = std::time::Instant::now();
        assert_eq!(b.submit(1).await, Some(1));
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "a lone caller waited"
        );
        // Callers queued behind a batch in flight form one batch: the queue is busy.
        let blocker = b.enqueue(10).unwrap();
        let started = |n: usize| {
            let sizes = sizes.clone();
            async move {
                for _ in 0..1000 {
                    if sizes.lock().unwrap().len() == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                panic!("batch {n} did not start");
            }
        };
        started(2).await;
        let (x, y) = (b.enqueue(2).unwrap(), b.enqueue(3).unwrap());
        gate.notify_one();
        blocker.await.unwrap();
        started(3).await;
        // A caller queued while that batch is in flight goes at once when it ends, so its batch
        // lingers and takes a caller arriving 20 ms later too.
        let first = b.enqueue(4).unwrap();
        gate.notify_one();
        x.await.unwrap();
        y.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = b.enqueue(5).unwrap();
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (4, 5));
        // After a quiet spell a lone caller goes at once again.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        assert_eq!(b.submit(6).await, Some(6));
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "a caller after a quiet spell waited"
        );
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(
            sizes,
            [1, 1, 2, 2, 1],
            "the late caller joined the lingering batch"
        );
    }

    #[tokio::test]
    async fn a_weighted_batch_stays_under_its_weight_and_loses_no_item() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        // Each item weighs its value; at most 10 per batch, and the 25 goes alone.
        let shape = Shape {
            max_in_flight: 1,
            max_weight: 10,
            linger: Duration::ZERO,
        };
        let b = Arc::new(Batcher::spawn_shaped(
            shape,
            |i: &u32| *i as usize,
            move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.clone());
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    items
                }
            },
        ));
        let values: Vec<u32> = (0..40)
            .map(|i| if i == 7 { 25 } else { i % 4 + 1 })
            .collect();
        let tasks: Vec<_> = values
            .iter()
            .map(|&v| {
                let b = b.clone();
                tokio::spawn(async move { (v, b.submit(v).await) })
            })
            .collect();
        for t in tasks {
            let (v, out) = t.await.unwrap();
            assert_eq!(out, Some(v), "every item answered with its own output");
        }
        let batches = sizes.lock().unwrap().clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 40);
        for batch in &batches {
            let total: u32 = batch.iter().sum();
            assert!(
                total <= 10 || batch.len() == 1,
                "batch {batch:?} weighs {total}"
            );
        }
        assert!(batches.len() < 40, "items were batched");
    }
}
