//! Rows that wait — for a rate limit, for a retry's backoff — go back to the queue as
//! delayed copies that carry the attempts spent so far (a rate limit spends none), so
//! no waiting row is held in flight. Rows of one segment that wait for the same reason
//! go back together, as one segment copy, so they are sent again in one request.

use std::{collections::HashSet, time::Duration};

use resync_shared::{
    aws::queue::WorkQueue,
    domain::message::{PackedRow, SegmentBody},
    PrimaryKey,
};

use super::{
    settle::{Deferral, Waiting},
    Received,
};

/// One message going back to the queue and the deferrals it carries.
struct DelayedCopy {
    positions: Vec<usize>,
    body: String,
    delay: Duration,
}

/// Rows of one segment share a copy when they wait for the same reason with the same
/// bounds: a rate limit (the copy waits the longest of their waits), a retry's backoff
/// after the same attempt (one full-jitter draw for the group, within the ceiling
/// they share), the rest of the same backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    RateLimit,
    Backoff { attempt: u32 },
    BackingOff { until: i64 },
}

/// A group of waiting rows: their segment's message (receipt handle), its place in
/// the plan, and why they wait.
type GroupKey<'a> = (&'a str, u64, Group);

/// Re-enqueues waiting rows as delayed copies (one per key) that carry the attempts
/// spent so far; their originals are then deleted by the caller. Returns the positions
/// in `deferrals` whose rows must be kept instead because SQS refused their copy.
pub(super) async fn defer_rows(
    queue: &WorkQueue,
    rows: &[Received],
    deferrals: &[Deferral],
) -> Vec<usize> {
    let mut copies: Vec<DelayedCopy> = Vec::new();
    let mut copied: HashSet<&PrimaryKey> = HashSet::new();
    // Groups of a segment's waiting rows, in order of appearance.
    let mut groups: Vec<(GroupKey<'_>, Vec<usize>)> = Vec::new();
    for (position, deferral) in deferrals.iter().enumerate() {
        let row = &rows[deferral.row];
        if !copied.insert(&row.message.key) {
            // A copy of the key is already going back to the queue; if SQS refuses it,
            // that message is kept, so this duplicate can go.
            continue;
        }
        let Some(segment) = row.segment else {
            copies.push(DelayedCopy {
                positions: vec![position],
                body: deferral.why.copy(row).to_body(),
                delay: deferral.delay,
            });
            continue;
        };
        let group = match deferral.why {
            Waiting::RateLimit => Group::RateLimit,
            Waiting::Backoff { .. } => Group::Backoff {
                attempt: row.attempt,
            },
            Waiting::BackingOff { until } => Group::BackingOff { until },
        };
        let key = (row.receipt_handle.as_str(), segment, group);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, positions)) => positions.push(position),
            None => groups.push((key, vec![position])),
        }
    }
    for ((_, segment, _), positions) in groups {
        segment_copies(
            queue.max_message_bytes(),
            segment,
            rows,
            deferrals,
            &positions,
            &mut copies,
        );
    }
    let mut kept = Vec::new();
    for chunk in copies.chunks(10) {
        let bodies: Vec<String> = chunk.iter().map(|c| c.body.clone()).collect();
        let delays: Vec<Duration> = chunk.iter().map(|c| c.delay).collect();
        match queue.send_batch_delayed(&bodies, &delays).await {
            Ok(unsent) => kept.extend(
                unsent
                    .into_iter()
                    .flat_map(|u| chunk[u.index].positions.iter().copied()),
            ),
            Err(err) => {
                tracing::warn!(error = %err, "cannot re-enqueue waiting rows; keeping the originals");
                kept.extend(chunk.iter().flat_map(|c| c.positions.iter().copied()));
            }
        }
    }
    kept
}

/// The copies of one group of a segment's waiting rows: one segment, or several when
/// the copies' rows (which carry a few more fields than the original's) pass the
/// queue's largest message.
fn segment_copies(
    max_bytes: usize,
    segment: u64,
    rows: &[Received],
    deferrals: &[Deferral],
    positions: &[usize],
    copies: &mut Vec<DelayedCopy>,
) {
    let first = &deferrals[positions[0]];
    // A backoff's draw and end are the group's first row's (its rows share the
    // ceiling); a rate limit waits the longest wait of its rows.
    let (delay, why) = match first.why {
        Waiting::RateLimit => (
            positions
                .iter()
                .map(|&p| deferrals[p].delay)
                .max()
                .unwrap_or(first.delay),
            None,
        ),
        Waiting::Backoff { .. } | Waiting::BackingOff { .. } => (first.delay, Some(first.why)),
    };
    let message = &rows[first.row].message;
    let empty = || {
        SegmentBody::new(
            segment,
            &message.run_id,
            message.generation,
            &message.sync_id,
        )
    };
    let mut body = empty();
    let mut carried: Vec<usize> = Vec::new();
    for &position in positions {
        let deferral = &deferrals[position];
        let row = &rows[deferral.row];
        let copy = why.unwrap_or(deferral.why).copy(row);
        let json = PackedRow::from(copy).to_json();
        if body.rows() > 0 && body.bytes_with(json.len()) > max_bytes {
            copies.push(DelayedCopy {
                positions: std::mem::take(&mut carried),
                body: std::mem::replace(&mut body, empty()).finish(),
                delay,
            });
        }
        body.push(&json);
        carried.push(position);
    }
    copies.push(DelayedCopy {
        positions: carried,
        body: body.finish(),
        delay,
    });
}
