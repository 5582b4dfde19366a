//! [`Notices`]: the local finalizer's wait on the run-settled notice queue, which lets
//! a run close as soon as its last row settles instead of at the next tick.

use std::time::Duration;

use resync_shared::aws::{queue::WorkQueue, AwsError};

type NoticeReceive = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<aws_sdk_sqs::types::Message>, AwsError>> + Send,
    >,
>;

/// The local finalizer's wait on the run-settled notice queue (see
/// [`provision`](super::provision)).
pub(super) struct Notices {
    queue: WorkQueue,
    /// A long poll still in flight when a wait ended: it carries over to the next wait
    /// (dropping it could hide a notice for the queue's visibility timeout).
    pending: Option<NoticeReceive>,
}

impl Notices {
    /// Waits on `queue`, with no receive in flight yet.
    pub(super) fn new(queue: WorkQueue) -> Self {
        Self {
            queue,
            pending: None,
        }
    }

    /// Until `until`, or sooner when a notice arrives (it is consumed); returns the
    /// notices that arrived (0 at `until`). A notice only hurries the finalizer: when
    /// the queue cannot be read, the wait runs to `until`.
    pub(super) async fn wait(&mut self, until: tokio::time::Instant) -> usize {
        loop {
            let receive = self.pending.get_or_insert_with(|| {
                let queue = self.queue.clone();
                Box::pin(async move { queue.receive(10, Duration::from_secs(1)).await })
            });
            let received = tokio::select! {
                received = receive => received,
                () = tokio::time::sleep_until(until) => return 0,
            };
            self.pending = None;
            let messages = match received {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "reading run-settled notices failed; waiting for the tick");
                    tokio::time::sleep_until(until).await;
                    return 0;
                }
            };
            let receipts: Vec<String> = messages
                .into_iter()
                .filter_map(|m| m.receipt_handle)
                .collect();
            if !receipts.is_empty() {
                if let Err(err) = self.queue.delete(&receipts).await {
                    tracing::warn!(error = %err, "deleting run-settled notices failed; they come back as extra finalizer passes");
                }
                return receipts.len();
            }
        }
    }
}
