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
        message::RowMessage,
        rejections::{RejectionLog, FROM_INDEX},
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

/// One queued row, kept until SQS has accepted it.
struct Pending {
    key: PrimaryKey,
    carried: Option<CarriedEntry>,
    origin: Option<RowOrigin>,
    message: RowMessage,
}

/// Why a row of a batch did not reach the queue.
enum NotSent {
    /// Its message is larger than the queue accepts.
    TooLarge { bytes: usize },
    /// SQS refused the entry.
    Refused(resync_shared::aws::queue::Unsent),
}

type BatchResult = Result<(Vec<Pending>, Vec<(usize, NotSent)>), AwsError>;

/// Sends rows in batches of 10 with bounded concurrency; refused rows become rejections.
pub(crate) struct Sender<'a> {
    queue: &'a WorkQueue,
    run_id: &'a RunId,
    generation: u32,
    sync_id: &'a SyncId,
    crash_points: &'a CrashPoints,
    /// What earlier planning attempts of the run settled: such rows are not sent.
    pub(crate) replan: Option<&'a mut Replan>,
    batch: Vec<Pending>,
    in_flight: FuturesUnordered<tokio::task::JoinHandle<BatchResult>>,
    enqueued: u64,
    carried_over: u64,
}

impl<'a> Sender<'a> {
    pub(crate) fn new(
        queue: &'a WorkQueue,
        run_id: &'a RunId,
        generation: u32,
        sync_id: &'a SyncId,
        crash_points: &'a CrashPoints,
    ) -> Self {
        Self {
            queue,
            run_id,
            generation,
            sync_id,
            crash_points,
            replan: None,
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
        let message = RowMessage {
            run_id: self.run_id.clone(),
            generation: self.generation,
            sync_id: self.sync_id.clone(),
            key: planned.key.clone(),
            row: planned.fields,
            carried_over: planned.carried.is_some(),
            first_failed_at: planned.carried.as_ref().map(|c| c.first_failed_at.clone()),
            prior_attempts: planned.carried.as_ref().map_or(0, |c| c.attempts),
            attempts_before,
            rate_limit_deferrals: 0,
            backoff_until: None,
            copied: false,
        };
        self.batch.push(Pending {
            key: planned.key,
            carried: planned.carried,
            origin: planned.origin,
            message,
        });
        if self.batch.len() == 10 {
            self.flush(rejections).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, rejections: &mut RejectionLog) -> Result<(), SyncStartError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let queue = self.queue.clone();
        // Each request is its own task: the SDK's per-request work (serialising,
        // signing, parsing the answer) runs beside the parsing of the next rows where
        // the machine has more than one core.
        self.in_flight.push(tokio::spawn(async move {
            let max = queue.max_message_bytes();
            let mut bodies = Vec::with_capacity(batch.len());
            let mut positions = Vec::with_capacity(batch.len());
            let mut not_sent = Vec::new();
            for (i, pending) in batch.iter().enumerate() {
                let body = pending.message.to_body();
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
            let (code, reason, payload) = match not_sent_at.remove(&i) {
                None => {
                    self.enqueued += 1;
                    self.carried_over += u64::from(pending.carried.is_some());
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
                // SQS blames the message itself (e.g. characters it does not take): the
                // row is rejected with the reason, and its payload is kept in the index
                // so a carried key is not left waiting for a re-export.
                Some(NotSent::Refused(unsent)) => (
                    "enqueue_refused",
                    format!("SQS refused the row: {} {}", unsent.code, unsent.message),
                    Some(pending.message.row.clone()),
                ),
            };
            let (object, line) = match &pending.origin {
                Some(origin) => (origin.object.to_string(), origin.line),
                None => (FROM_INDEX.to_owned(), 0),
            };
            rejections.push(RecordedRejection {
                rejection: Rejection {
                    key: Some(pending.key),
                    object,
                    line,
                    code: code.into(),
                    reason,
                },
                first_failed_at: pending.carried.as_ref().map(|c| c.first_failed_at.clone()),
                in_index: pending.carried.is_some(),
                payload,
            });
        }
        Ok(())
    }

    pub(crate) async fn finish(
        mut self,
        rejections: &mut RejectionLog,
    ) -> Result<(u64, u64), SyncStartError> {
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
