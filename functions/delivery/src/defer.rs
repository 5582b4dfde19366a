//! Rows that wait — for a rate limit, for a retry's backoff — go back to the queue as
//! delayed copies that carry the attempts spent so far (a rate limit spends none), so
//! no waiting row is held in flight.

use std::{collections::HashSet, time::Duration};

use resync_shared::{aws::queue::WorkQueue, PrimaryKey};

use super::{settle::Deferral, Received};

/// Re-enqueues waiting rows as delayed copies (one per key) that carry the attempts
/// spent so far; their originals are then deleted by the caller's partial batch
/// response. Returns the positions in `deferrals` whose rows must be kept instead
/// because SQS refused their copy.
pub(super) async fn defer_rows(
    queue: &WorkQueue,
    rows: &[Received],
    deferrals: &[Deferral],
) -> Vec<usize> {
    struct DelayedCopy {
        position: usize,
        body: String,
        delay: Duration,
    }
    let mut copies: Vec<DelayedCopy> = Vec::new();
    let mut copied: HashSet<&PrimaryKey> = HashSet::new();
    for (position, deferral) in deferrals.iter().enumerate() {
        let row = &rows[deferral.row];
        if !copied.insert(&row.message.key) {
            // A copy of the key is already going back to the queue; if SQS refuses it,
            // that message is kept, so this duplicate can go.
            continue;
        }
        let copy = deferral.why.copy(row);
        copies.push(DelayedCopy {
            position,
            body: copy.to_body(),
            delay: deferral.delay,
        });
    }
    let mut kept = Vec::new();
    for chunk in copies.chunks(10) {
        let bodies: Vec<String> = chunk.iter().map(|c| c.body.clone()).collect();
        let delays: Vec<Duration> = chunk.iter().map(|c| c.delay).collect();
        match queue.send_batch_delayed(&bodies, &delays).await {
            Ok(unsent) => kept.extend(unsent.into_iter().map(|u| chunk[u.index].position)),
            Err(err) => {
                tracing::warn!(error = %err, "cannot re-enqueue rate-limited rows; keeping the originals");
                kept.extend(chunk.iter().map(|c| c.position));
            }
        }
    }
    kept
}
