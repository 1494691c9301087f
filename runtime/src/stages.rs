//! Two stages of a worker's loop overlapped: while one batch is finished (published, flushed,
//! acked), the next one is produced (fetched, applied, rendered), so neither waits for the
//! other's round trips.

use tokio::sync::mpsc;

/// Runs `produce`, which hands each batch to its sender, beside a loop that gives every batch
/// to `finish`, one at a time and in the order produced. At most one batch waits between them,
/// so the producer is never more than two batches ahead. When `produce` returns (dropping its
/// sender), the batches already handed over are finished before this returns.
pub async fn overlap<T, P, F>(
    produce: impl FnOnce(mpsc::Sender<T>) -> P,
    mut finish: impl FnMut(T) -> F,
) where
    P: Future<Output = ()>,
    F: Future<Output = ()>,
{
    let (sender, mut receiver) = mpsc::channel(1);
    let finisher = async {
        while let Some(batch) = receiver.recv().await {
            finish(batch).await;
        }
    };
    tokio::join!(produce(sender), finisher);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn every_batch_is_finished_in_order_also_after_the_producer_returns() {
        let finished = Mutex::new(Vec::new());
        overlap(
            |sender| async move {
                for n in 0..10 {
                    sender.send(n).await.expect("the finisher runs");
                }
            },
            |n| {
                let finished = &finished;
                async move {
                    // Slower than the producer, so batches are still waiting when it returns.
                    tokio::task::yield_now().await;
                    finished.lock().unwrap().push(n);
                }
            },
        )
        .await;
        assert_eq!(*finished.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }
}
