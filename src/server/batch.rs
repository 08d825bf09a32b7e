//! A small batcher: callers submit items; one task takes everything queued, handles it in one go and
//! answers each caller. Keepalives use it so that many share one quorum confirmation (or one `Renew`
//! entry), and every item in a batch arrived before the batch's work started.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Most items handled in one batch.
const MAX_BATCH: usize = 8192;

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
        Self::spawn_weighted(max_in_flight, usize::MAX, |_| 0, handle)
    }

    /// Like [`spawn`](Self::spawn), and a batch's items weigh at most `max_weight` together (by
    /// `weight`), except that a single item heavier than that forms a batch alone. An item that
    /// would overflow a batch starts the next one.
    pub fn spawn_weighted<W, F, Fut>(
        max_in_flight: usize,
        max_weight: usize,
        weight: W,
        handle: F,
    ) -> Self
    where
        W: Fn(&I) -> usize + Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(I, oneshot::Sender<O>)>();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            // An item taken from the queue that did not fit the previous batch.
            let mut carried: Option<(I, oneshot::Sender<O>)> = None;
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let first = match carried.take() {
                    Some(item) => item,
                    None => match rx.recv().await {
                        Some(item) => item,
                        None => return,
                    },
                };
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

    /// Submit one item and wait for its answer; None if the batching task is gone (shutdown).
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
        let b = Batcher::spawn(4, move |items: Vec<u32>| {
            log.lock().unwrap().extend(items.iter().copied());
            async move {
                let pause = 5 - u64::from(items[0] % 5);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                items
            }
        });
        let answers: Vec<_> = (0..200u32).map(|i| b.enqueue(i).unwrap()).collect();
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap(), i as u32);
        }
        assert_eq!(*started.lock().unwrap(), (0..200).collect::<Vec<u32>>());
    }

    #[tokio::test]
    async fn a_weighted_batch_stays_under_its_weight_and_loses_no_item() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        // Each item weighs its value; at most 10 per batch, and the 25 goes alone.
        let b = Arc::new(Batcher::spawn_weighted(
            1,
            10,
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
