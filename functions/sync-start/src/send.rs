//! Sending planned rows to the delivery queue: batches of ten, a bounded number of
//! requests in flight, and the rows SQS cannot take turned into rejections.

use std::collections::HashMap;

use futures::{stream::FuturesUnordered, StreamExt};
use resync_shared::{
    aws::{queue::WorkQueue, AwsError},
    crash_points::{CrashPoint, CrashPoints},
    domain::{
        ledger::RecordedRejection,
        merge::{CarriedEntry, PlannedRow, RowOrigin},
        message::{PackedRow, RowMessage, SegmentBody},
        rejections::{RejectionLog, FROM_INDEX},
        row::RowFields,
        source::Rejection,
    },
    PrimaryKey, RunId, SyncId,
};

use crate::{replan::Replan, SyncStartError};

/// How many `SendMessageBatch` calls are in flight at once.
pub const SEND_CONCURRENCY: usize = 16;

impl Drop for Sender<'_> {
    /// Planning that stops early (an error) cancels the sends still in flight, as it
    /// would by dropping their futures.
    fn drop(&mut self) {
        for task in self.in_flight.iter() {
            task.abort();
        }
    }
}

/// A send task's result; a panic in it is the caller's panic.
fn joined(done: Result<BatchResult, tokio::task::JoinError>) -> BatchResult {
    match done {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// One queued row, kept until SQS has accepted the message that carries it.
struct PendingRow {
    key: PrimaryKey,
    carried: Option<CarriedEntry>,
    origin: Option<RowOrigin>,
    /// The row's fields, when its message is a segment's (a single row's message
    /// holds them).
    fields: Option<RowFields>,
}

/// One message to queue: a single row, or a segment of rows.
enum Body {
    /// Serialised in the send task.
    Row(Box<RowMessage>),
    /// Serialised as it was packed.
    Segment(String),
}

/// One message to queue and the rows it carries.
struct Pending {
    body: Body,
    rows: Vec<PendingRow>,
}

impl Pending {
    /// The fields of the message's `i`-th row.
    fn fields(&self, i: usize) -> &RowFields {
        match (&self.body, &self.rows[i].fields) {
            (_, Some(fields)) => fields,
            (Body::Row(message), None) => &message.row,
            (Body::Segment(_), None) => unreachable!("a segment's rows keep their fields"),
        }
    }
}

/// The segment being packed (the destination's `packing`).
struct Packing<'a> {
    run_id: &'a RunId,
    generation: u32,
    sync_id: &'a SyncId,
    /// Rows per segment at most (the destination's batch size).
    rows: usize,
    /// The queue's largest message.
    max_bytes: usize,
    /// The next segment's place in the planning attempt.
    next: u64,
    /// The size of segment `next` without rows: a row that does not fit beside it
    /// travels alone.
    envelope: usize,
    /// The segment being filled and its rows.
    open: Option<(SegmentBody, Vec<PendingRow>)>,
}

/// Why a row of a batch did not reach the queue.
enum NotSent {
    /// Its message is larger than the queue accepts.
    TooLarge { bytes: usize },
    /// SQS refused the entry.
    Refused(resync_shared::aws::queue::Unsent),
}

type BatchResult = Result<(Vec<Pending>, Vec<(usize, NotSent)>), AwsError>;

/// Sends rows in batches of 10 messages with bounded concurrency; refused rows become
/// rejections. With packing, a message is a segment of up to the destination's batch
/// size rows.
pub(crate) struct Sender<'a> {
    queue: &'a WorkQueue,
    run_id: &'a RunId,
    generation: u32,
    sync_id: &'a SyncId,
    crash_points: &'a CrashPoints,
    /// What earlier planning attempts of the run settled: such rows are not sent.
    pub(crate) replan: Option<&'a mut Replan>,
    packing: Option<Packing<'a>>,
    batch: Vec<Pending>,
    in_flight: FuturesUnordered<tokio::task::JoinHandle<BatchResult>>,
    enqueued: u64,
    carried_over: u64,
}

impl<'a> Sender<'a> {
    /// `packing`: the destination's batch size when its rows travel packed.
    pub(crate) fn new(
        queue: &'a WorkQueue,
        run_id: &'a RunId,
        generation: u32,
        sync_id: &'a SyncId,
        crash_points: &'a CrashPoints,
        packing: Option<usize>,
    ) -> Self {
        Self {
            queue,
            run_id,
            generation,
            sync_id,
            crash_points,
            replan: None,
            packing: packing.map(|rows| {
                let mut packing = Packing {
                    run_id,
                    generation,
                    sync_id,
                    rows: rows.max(1),
                    max_bytes: queue.max_message_bytes(),
                    next: 0,
                    envelope: 0,
                    open: None,
                };
                packing.envelope = packing.empty().bytes_with(0);
                packing
            }),
            batch: Vec::with_capacity(10),
            in_flight: FuturesUnordered::new(),
            enqueued: 0,
            carried_over: 0,
        }
    }

    pub(crate) async fn push(
        &mut self,
        planned: PlannedRow,
        rejections: &mut RejectionLog,
    ) -> Result<(), SyncStartError> {
        let (planned, attempts_before) = match self.replan.as_mut() {
            Some(replan) => match replan.route(planned) {
                Some(sent) => sent,
                None => return Ok(()),
            },
            None => (planned, 0),
        };
        let packed = PackedRow {
            key: planned.key,
            row: planned.fields,
            carried_over: planned.carried.is_some(),
            first_failed_at: planned.carried.as_ref().map(|c| c.first_failed_at.clone()),
            prior_attempts: planned.carried.as_ref().map_or(0, |c| c.attempts),
            attempts_before,
            rate_limit_deferrals: 0,
            backoff_until: None,
            copied: false,
        };
        let (sealed, alone) = match self.packing.as_mut() {
            Some(packing) => packing.pack(packed, planned.carried, planned.origin),
            None => (None, Some((packed, planned.carried, planned.origin))),
        };
        // In plan order: a segment the row closed goes before the row's own message.
        let single = alone.map(|(packed, carried, origin)| self.single(packed, carried, origin));
        for pending in sealed.into_iter().chain(single) {
            self.batch.push(pending);
            if self.batch.len() == 10 {
                self.flush(rejections).await?;
            }
        }
        Ok(())
    }

    /// A row's own message.
    fn single(
        &self,
        packed: PackedRow,
        carried: Option<CarriedEntry>,
        origin: Option<RowOrigin>,
    ) -> Pending {
        let key = packed.key.clone();
        let message = RowMessage {
            run_id: self.run_id.clone(),
            generation: self.generation,
            sync_id: self.sync_id.clone(),
            key: packed.key,
            row: packed.row,
            carried_over: packed.carried_over,
            first_failed_at: packed.first_failed_at,
            prior_attempts: packed.prior_attempts,
            attempts_before: packed.attempts_before,
            rate_limit_deferrals: 0,
            backoff_until: None,
            copied: false,
        };
        Pending {
            body: Body::Row(Box::new(message)),
            rows: vec![PendingRow {
                key,
                carried,
                origin,
                fields: None,
            }],
        }
    }

    async fn flush(&mut self, rejections: &mut RejectionLog) -> Result<(), SyncStartError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let queue = self.queue.clone();
        // Each request is its own task: the SDK's per-request work (serialising,
        // signing, parsing the answer) runs beside the parsing of the next rows where
        // the machine has more than one core.
        self.in_flight.push(tokio::spawn(async move {
            let max = queue.max_message_bytes();
            let mut bodies = Vec::with_capacity(batch.len());
            let mut positions = Vec::with_capacity(batch.len());
            let mut not_sent = Vec::new();
            for (i, pending) in batch.iter_mut().enumerate() {
                let body = match &mut pending.body {
                    Body::Row(message) => message.to_body(),
                    Body::Segment(body) => std::mem::take(body),
                };
                if body.len() > max {
                    not_sent.push((i, NotSent::TooLarge { bytes: body.len() }));
                } else {
                    positions.push(i);
                    bodies.push(body);
                }
            }
            if !bodies.is_empty() {
                for unsent in queue.send_batch(&bodies).await? {
                    not_sent.push((positions[unsent.index], NotSent::Refused(unsent)));
                }
            }
            Ok((batch, not_sent))
        }));
        while self.in_flight.len() >= SEND_CONCURRENCY {
            let done = self.in_flight.next().await.expect("in flight");
            self.settle(joined(done)?, rejections)?;
            self.crash_points.reached(CrashPoint::SyncStartMidSend)?;
        }
        Ok(())
    }

    /// Counts a finished batch's rows and turns those that could not be queued into
    /// rejections. An entry SQS refused on its own side (still failing after the
    /// retries) ends the planning attempt instead: the run is abandoned and planned
    /// again, so no row is rejected for SQS's sake and no stored payload is lost.
    fn settle(
        &mut self,
        (batch, not_sent): (Vec<Pending>, Vec<(usize, NotSent)>),
        rejections: &mut RejectionLog,
    ) -> Result<(), AwsError> {
        if let Some((_, NotSent::Refused(unsent))) = not_sent
            .iter()
            .find(|(_, n)| matches!(n, NotSent::Refused(u) if !u.sender_fault))
        {
            return Err(AwsError::response(
                "SQS.SendMessageBatch",
                format!(
                    "SQS did not take a row after retries ({} {}); the run is planned again",
                    unsent.code, unsent.message
                ),
            ));
        }
        let mut not_sent_at: HashMap<usize, NotSent> = not_sent.into_iter().collect();
        for (i, pending) in batch.into_iter().enumerate() {
            let not_sent = not_sent_at.remove(&i);
            for (r, row) in pending.rows.iter().enumerate() {
                let (code, reason, payload) = match &not_sent {
                    None => {
                        self.enqueued += 1;
                        self.carried_over += u64::from(row.carried.is_some());
                        continue;
                    }
                    Some(NotSent::TooLarge { bytes }) => (
                        "row_too_large",
                        format!(
                            "the row is {bytes} bytes as a message, larger than the queue's maximum message size of {} bytes",
                            self.queue.max_message_bytes()
                        ),
                        None,
                    ),
                    // SQS blames the message itself (e.g. characters it does not take):
                    // the row is rejected with the reason, and its payload is kept in
                    // the index so a carried key is not left waiting for a re-export.
                    // (A row SQS would refuse for its characters never shares a
                    // segment: `PackedRow::fits_a_message`.)
                    Some(NotSent::Refused(unsent)) => (
                        "enqueue_refused",
                        format!("SQS refused the row: {} {}", unsent.code, unsent.message),
                        Some(pending.fields(r).clone()),
                    ),
                };
                let (object, line) = match &row.origin {
                    Some(origin) => (origin.object.to_string(), origin.line),
                    None => (FROM_INDEX.to_owned(), 0),
                };
                rejections.push(RecordedRejection {
                    rejection: Rejection {
                        key: Some(row.key.clone()),
                        object,
                        line,
                        code: code.into(),
                        reason,
                    },
                    first_failed_at: row.carried.as_ref().map(|c| c.first_failed_at.clone()),
                    in_index: row.carried.is_some(),
                    payload,
                });
            }
        }
        Ok(())
    }

    pub(crate) async fn finish(
        mut self,
        rejections: &mut RejectionLog,
    ) -> Result<(u64, u64), SyncStartError> {
        if let Some(segment) = self.packing.as_mut().and_then(Packing::seal) {
            self.batch.push(segment);
        }
        self.flush(rejections).await?;
        while let Some(done) = self.in_flight.next().await {
            self.settle(joined(done)?, rejections)?;
            if !self.in_flight.is_empty() {
                self.crash_points.reached(CrashPoint::SyncStartMidSend)?;
            }
        }
        Ok((self.enqueued, self.carried_over))
    }
}

/// A row that travels in a message of its own, with what its rejection would need.
type Alone = (PackedRow, Option<CarriedEntry>, Option<RowOrigin>);

impl Packing<'_> {
    /// Segment `next` without rows.
    fn empty(&self) -> SegmentBody {
        SegmentBody::new(self.next, self.run_id, self.generation, self.sync_id)
    }

    /// Adds a row to the open segment, closing it first when the row would take it
    /// past the destination's batch size or the queue's largest message. Returns the
    /// segment it closed, if any, and the row itself when it cannot share a segment
    /// (too large beside a segment's envelope, or text SQS refuses): the open segment
    /// is then closed first, so messages keep the plan's order.
    fn pack(
        &mut self,
        packed: PackedRow,
        carried: Option<CarriedEntry>,
        origin: Option<RowOrigin>,
    ) -> (Option<Pending>, Option<Alone>) {
        let json = packed.to_json();
        if self.envelope + json.len() > self.max_bytes || !PackedRow::fits_a_message(&json) {
            return (self.seal(), Some((packed, carried, origin)));
        }
        let full = self.open.as_ref().is_some_and(|(body, _)| {
            body.rows() >= self.rows || body.bytes_with(json.len()) > self.max_bytes
        });
        let sealed = if full { self.seal() } else { None };
        if self.open.is_none() {
            self.open = Some((self.empty(), Vec::new()));
        }
        let (body, rows) = self.open.as_mut().expect("a segment is open");
        body.push(&json);
        rows.push(PendingRow {
            key: packed.key,
            carried,
            origin,
            fields: Some(packed.row),
        });
        (sealed, None)
    }

    /// Closes the open segment, if any, as a message to queue.
    fn seal(&mut self) -> Option<Pending> {
        let (body, rows) = self.open.take()?;
        self.next += 1;
        self.envelope = self.empty().bytes_with(0);
        Some(Pending {
            body: Body::Segment(body.finish()),
            rows,
        })
    }
}
