//! sync-start: opens a run of one sync when its EventBridge schedule fires.
//!
//! It refuses to overlap a run that is still open, reads the objects that arrived
//! after the sync's cursor, merges their rows with the sync's failed-row index (each
//! key once, source values win, failed keys absent from the source come from their
//! stored payload), enqueues one row per SQS message and records the plan.
//!
//! The run id is derived from the scheduling event, so when Lambda retries a crashed
//! invocation the same run is planned again, as its next planning attempt: the rows an
//! earlier attempt put on the queue are dropped by delivery and its ledger items and
//! rejections are not counted, so the run is tallied from this attempt's plan alone.

use std::{collections::HashMap, sync::Arc};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use futures::{stream::FuturesUnordered, StreamExt};
use lambda_runtime::{Diagnostic, LambdaEvent};
use resync_shared::{
    aws::{
        index::FailedRowIndex,
        queue::{QueueDirectory, WorkQueue},
        report::{Reporter, SettledNotice, Severity},
        runs::{PlanNotRecorded, RunStore},
        s3_source::{ObjectReadError, S3Source},
        AwsError,
    },
    config::{Config, SyncConfig},
    crash_points::{CrashPoint, CrashPoints, InjectedCrash},
    domain::{
        ids::{IdError, RunId, SyncId},
        ledger::RecordedRejection,
        merge::{CarriedEntry, DuplicateFinder, Planned, PlannedRow, RunPlanner},
        message::RowMessage,
        run::{Acquired, PlanSummary, RunStatus},
        source::{encoding_for, Rejection, SourceReadError},
        timestamp,
    },
    resources::Resources,
    DestinationId, PrimaryKey,
};
use serde::{Deserialize, Serialize};

/// How many `SendMessageBatch` calls are in flight at once.
pub const SEND_CONCURRENCY: usize = 16;

/// The `detail` of the scheduling event: the rule's input names the sync.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStartDetail {
    /// The sync to run.
    pub sync_id: String,
}

/// What sync-start did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SyncStartOutcome {
    /// A run was planned.
    Started {
        /// The sync.
        sync_id: SyncId,
        /// The run.
        run_id: RunId,
        /// Rows put on the queue.
        enqueued: u64,
        /// Rows rejected before the queue.
        rejected: u64,
        /// Enqueued rows that came from the failed-row index.
        carried_over: u64,
        /// Source objects read.
        source_objects: u64,
    },
    /// This run was already planned (a retried or duplicate invocation, or a late one
    /// after the run closed), or another invocation of the same event recorded its
    /// plan first; nothing of this invocation counts, and a closed run's lock was
    /// released again.
    AlreadyPlanned {
        /// The sync.
        sync_id: SyncId,
        /// The run.
        run_id: RunId,
    },
    /// Another run of the sync is still open: no overlap (I5).
    Skipped {
        /// The sync.
        sync_id: SyncId,
        /// The open run.
        open_run: RunId,
    },
}

/// Why a run could not start. The sync is released and nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum SyncStartError {
    /// The event does not name a valid sync.
    #[error("the event's detail.sync_id is invalid: {0}")]
    InvalidSyncId(#[from] IdError),
    /// The sync is not in the configuration.
    #[error("no sync '{0}' in the configuration")]
    UnknownSync(SyncId),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// A source object could not be read.
    #[error(transparent)]
    Source(#[from] SourceReadError),
    /// The invocation died at a crash point (a test harness's; never in a deployment).
    #[error(transparent)]
    Crashed(#[from] InjectedCrash),
}

impl From<ObjectReadError> for SyncStartError {
    fn from(err: ObjectReadError) -> Self {
        match err {
            ObjectReadError::Aws(err) => Self::Aws(err),
            ObjectReadError::Read(err) => Self::Source(err),
        }
    }
}

impl From<SyncStartError> for Diagnostic {
    fn from(err: SyncStartError) -> Diagnostic {
        let error_type = match &err {
            SyncStartError::InvalidSyncId(_) => "InvalidSyncId",
            SyncStartError::UnknownSync(_) => "UnknownSync",
            SyncStartError::Aws(_) => "AwsError",
            SyncStartError::Source(_) => "SourceReadError",
            SyncStartError::Crashed(_) => "InjectedCrash",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: err.to_string(),
        }
    }
}

/// sync-start's dependencies, built once per container.
pub struct SyncStart {
    /// The sync configuration.
    pub config: Arc<Config>,
    /// Resource names.
    pub resources: Resources,
    /// Runs table.
    pub runs: RunStore,
    /// Failed-row index.
    pub index: FailedRowIndex,
    /// Source objects.
    pub source: S3Source,
    /// Reports alerts.
    pub reporter: Reporter,
    /// Tells the finalizer when a run's rows were all settled before planning ended.
    pub notice: SettledNotice,
    /// Where a test harness makes the invocation die ([`CrashPoints::none`] here).
    pub crash_points: CrashPoints,
    queues: QueueDirectory,
}

impl SyncStart {
    /// Builds the dependencies from an SDK configuration.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        config: Arc<Config>,
        resources: Resources,
        reporter: Reporter,
    ) -> Self {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .force_path_style(
                    std::env::var("AWS_S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true")
                        || sdk.endpoint_url().is_some(),
                )
                .build(),
        );
        Self {
            runs: RunStore::new(dynamo.clone(), &resources.runs_table),
            index: FailedRowIndex::new(dynamo, &resources.failed_rows_table),
            source: S3Source::new(s3),
            queues: QueueDirectory::new(aws_sdk_sqs::Client::new(sdk)),
            notice: SettledNotice::new(aws_sdk_eventbridge::Client::new(sdk), &resources.event_bus),
            crash_points: CrashPoints::none(),
            config,
            resources,
            reporter,
        }
    }

    async fn queue(&self, destination: &DestinationId) -> Result<WorkQueue, AwsError> {
        self.queues
            .get(&self.resources.delivery_queue(destination))
            .await
    }
}

/// The Lambda handler.
pub async fn handler(
    deps: &SyncStart,
    event: LambdaEvent<EventBridgeEvent<SyncStartDetail>>,
) -> Result<SyncStartOutcome, SyncStartError> {
    let sync_id = SyncId::parse(event.payload.detail.sync_id.clone())?;
    let sync = deps
        .config
        .sync(&sync_id)
        .ok_or_else(|| SyncStartError::UnknownSync(sync_id.clone()))?
        .clone();
    let fired_at = event
        .payload
        .time
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.timestamp()).ok())
        .unwrap_or_else(timestamp::now);
    let event_id = event
        .payload
        .id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| event.context.request_id.clone());
    let run_id = RunId::from_event(fired_at, &event_id);

    match start(deps, &sync, &run_id).await {
        Ok(outcome) => Ok(outcome),
        // A dead invocation logs and alerts nothing; Lambda retries it.
        Err(err @ SyncStartError::Crashed(_)) => Err(err),
        Err(err) => {
            tracing::error!(sync = %sync_id, run = %run_id, error = %err, "the run could not start");
            if sync.alert.critical_on_run_error {
                let detail =
                    serde_json::json!({"run_id": run_id.as_str(), "error": err.to_string()});
                if let Err(alert) = deps
                    .reporter
                    .alert(
                        Severity::Critical,
                        &sync_id,
                        &format!("sync {sync_id} could not run"),
                        detail,
                    )
                    .await
                {
                    tracing::error!(sync = %sync_id, error = %alert, "could not send the alert");
                }
            }
            Err(err)
        }
    }
}

async fn start(
    deps: &SyncStart,
    sync: &SyncConfig,
    run_id: &RunId,
) -> Result<SyncStartOutcome, SyncStartError> {
    let cursor = match deps.runs.acquire(&sync.id, run_id).await? {
        Acquired::Busy { open_run } => {
            tracing::warn!(sync = %sync.id, open_run = %open_run, "a run of this sync is still open; not overlapping it");
            return Ok(SyncStartOutcome::Skipped {
                sync_id: sync.id.clone(),
                open_run,
            });
        }
        Acquired::Acquired { cursor } => cursor,
    };
    deps.crash_points
        .reached(CrashPoint::SyncStartAfterAcquire)?;
    let record = deps
        .runs
        .open_run_within(&sync.id, run_id, Some(sync.run_deadline()))
        .await?;
    if record.status == RunStatus::Closed {
        // A late or duplicate event of a run that already closed (schedule events and
        // async invocations are at-least-once): the lock it just took again must not
        // outlive this invocation, or the sync stays locked by a run nobody will close.
        match deps.runs.release(&sync.id, run_id).await {
            Ok(released) => {
                tracing::warn!(sync = %sync.id, run = %run_id, released, "a late start of a closed run; nothing to do, the sync's lock is released")
            }
            Err(err) => {
                tracing::error!(sync = %sync.id, run = %run_id, error = %err, "a late start of a closed run could not release the sync's lock; the finalizer will")
            }
        }
        return Ok(SyncStartOutcome::AlreadyPlanned {
            sync_id: sync.id.clone(),
            run_id: run_id.clone(),
        });
    }
    if record.status != RunStatus::Planning {
        // Delivering: the lock is the run's until the finalizer closes it.
        return Ok(SyncStartOutcome::AlreadyPlanned {
            sync_id: sync.id.clone(),
            run_id: run_id.clone(),
        });
    }
    // This invocation's planning attempt: a later one (a duplicate or retried
    // invocation of the same event) replaces it, and then nothing of this one counts.
    let generation = record.generation;
    match plan(deps, sync, run_id, generation, cursor).await {
        Ok(outcome) => Ok(outcome),
        // A dead invocation abandons nothing: its retry resumes the planning.
        Err(err @ SyncStartError::Crashed(_)) => Err(err),
        Err(err) => {
            // Abandoned (and the sync released) only while this attempt is the run's
            // planning: never a run another invocation planned or took over meanwhile.
            match deps
                .runs
                .abandon(&sync.id, run_id, generation, &err.to_string())
                .await
            {
                Ok(abandoned) => {
                    tracing::warn!(sync = %sync.id, run = %run_id, generation, abandoned, "planning failed; the run is abandoned unless another invocation planned it")
                }
                Err(release) => {
                    tracing::error!(sync = %sync.id, run = %run_id, error = %release, "could not release the sync")
                }
            }
            Err(err)
        }
    }
}

/// Plans attempt `generation` of the run: reads the source after `cursor`, merges it
/// with the failed-row index, enqueues the rows and records the rejections and the plan.
async fn plan(
    deps: &SyncStart,
    sync: &SyncConfig,
    run_id: &RunId,
    generation: u32,
    cursor: Option<String>,
) -> Result<SyncStartOutcome, SyncStartError> {
    let queue = deps.queue(&sync.destination).await?;
    let bucket = sync
        .source
        .bucket
        .clone()
        .unwrap_or_else(|| deps.resources.source_bucket.clone());

    let objects = deps
        .source
        .new_objects(&bucket, &sync.source.prefix, cursor.as_deref())
        .await?;
    let mut rejections: Vec<RecordedRejection> = Vec::new();
    let mut readable = Vec::new();
    for object in &objects {
        match encoding_for(object, sync.source.format) {
            Some(encoding) => readable.push((object.clone(), encoding)),
            None => rejections.push(RecordedRejection {
                rejection: Rejection {
                    key: None,
                    object: object.clone(),
                    line: 0,
                    code: "unknown_format".into(),
                    reason: "the object's name does not say its format (.jsonl, .ndjson, .json, .csv, optionally .gz); set the sync's source.format".into(),
                },
                first_failed_at: None,
                in_index: false,
                payload: None,
            }),
        }
    }

    // Pass 1: find keys that occur more than once in this run's source.
    let mut finder = DuplicateFinder::default();
    for (object, encoding) in &readable {
        finder = deps
            .source
            .observe_keys(&bucket, object, *encoding, &sync.primary_key, finder)
            .await?;
    }

    // Pass 2: plan and enqueue.
    let index = deps.index.load_for_planning(&sync.id).await?;
    let mut planner = RunPlanner::new(index, finder.duplicates());
    let mut sender = Sender::new(&queue, run_id, generation, &sync.id, &deps.crash_points);
    for (object, encoding) in &readable {
        let (mut rows, reader) = deps
            .source
            .stream(&bucket, object, *encoding, &sync.primary_key)
            .await?;
        while let Some(chunk) = rows.recv().await {
            for event in chunk {
                match event {
                    Ok(row) => match planner.plan(row, object) {
                        Planned::Enqueue(planned) => sender.push(planned, &mut rejections).await?,
                        Planned::Reject(rejection, carried) => rejections.push(RecordedRejection {
                            rejection,
                            first_failed_at: carried.as_ref().map(|c| c.first_failed_at.clone()),
                            in_index: carried.is_some(),
                            payload: None,
                        }),
                    },
                    Err(rejection) => rejections.push(RecordedRejection {
                        rejection,
                        first_failed_at: None,
                        in_index: false,
                        payload: None,
                    }),
                }
            }
        }
        join(reader).await?;
    }
    let (leftovers, waiting) = planner.leftovers();
    for planned in leftovers {
        sender.push(planned, &mut rejections).await?;
    }
    let (enqueued, carried_over) = sender.finish(&mut rejections).await?;

    deps.runs
        .record_rejections(run_id, generation, &rejections)
        .await?;
    let cursor_after = objects.last().cloned().or(cursor);
    let plan = PlanSummary {
        generation,
        enqueued,
        rejected: rejections.len() as u64,
        carried_over,
        waiting: waiting as u64,
        source_objects: objects.len() as u64,
        cursor_after: cursor_after.as_deref(),
    };
    let settled = match deps.runs.mark_planned(&sync.id, run_id, &plan).await {
        Ok(settled) => settled,
        Err(PlanNotRecorded::NotPlanning) => {
            // Another invocation of the same event (a duplicate, or Lambda's retry)
            // recorded its plan first or planned the run again, or the run was
            // abandoned: this one's plan does not count (delivery drops its rows), and
            // abandoning now would abandon the other's run.
            tracing::warn!(sync = %sync.id, run = %run_id, generation, enqueued, "the run was planned by another invocation of its event; this plan is not recorded and its rows are dropped");
            return Ok(SyncStartOutcome::AlreadyPlanned {
                sync_id: sync.id.clone(),
                run_id: run_id.clone(),
            });
        }
        Err(PlanNotRecorded::Aws(err)) => return Err(err.into()),
    };
    deps.crash_points
        .reached(CrashPoint::SyncStartAfterMarkPlanned)?;
    if settled {
        deps.notice.send(&sync.id, run_id).await;
    }
    tracing::info!(
        sync = %sync.id,
        run = %run_id,
        enqueued,
        rejected = rejections.len(),
        carried_over,
        waiting,
        objects = objects.len(),
        "run planned"
    );
    Ok(SyncStartOutcome::Started {
        sync_id: sync.id.clone(),
        run_id: run_id.clone(),
        enqueued,
        rejected: rejections.len() as u64,
        carried_over,
        source_objects: objects.len() as u64,
    })
}

async fn join(
    reader: tokio::task::JoinHandle<Result<(), SourceReadError>>,
) -> Result<(), SyncStartError> {
    match reader.await {
        Ok(result) => Ok(result?),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

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
struct Sender<'a> {
    queue: &'a WorkQueue,
    run_id: &'a RunId,
    generation: u32,
    sync_id: &'a SyncId,
    crash_points: &'a CrashPoints,
    batch: Vec<Pending>,
    in_flight: FuturesUnordered<tokio::task::JoinHandle<BatchResult>>,
    enqueued: u64,
    carried_over: u64,
}

impl<'a> Sender<'a> {
    fn new(
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
            batch: Vec::with_capacity(10),
            in_flight: FuturesUnordered::new(),
            enqueued: 0,
            carried_over: 0,
        }
    }

    async fn push(
        &mut self,
        planned: PlannedRow,
        rejections: &mut Vec<RecordedRejection>,
    ) -> Result<(), SyncStartError> {
        let message = RowMessage {
            run_id: self.run_id.clone(),
            generation: self.generation,
            sync_id: self.sync_id.clone(),
            key: planned.key.clone(),
            row: planned.fields,
            carried_over: planned.carried.is_some(),
            first_failed_at: planned.carried.as_ref().map(|c| c.first_failed_at.clone()),
            prior_attempts: planned.carried.as_ref().map_or(0, |c| c.attempts),
            attempts_before: 0,
            rate_limit_deferrals: 0,
        };
        self.batch.push(Pending {
            key: planned.key,
            carried: planned.carried,
            message,
        });
        if self.batch.len() == 10 {
            self.flush(rejections).await?;
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        rejections: &mut Vec<RecordedRejection>,
    ) -> Result<(), SyncStartError> {
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
        rejections: &mut Vec<RecordedRejection>,
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
            rejections.push(RecordedRejection {
                rejection: Rejection {
                    key: Some(pending.key),
                    object: String::new(),
                    line: 0,
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

    async fn finish(
        mut self,
        rejections: &mut Vec<RecordedRejection>,
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

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULED: &str =
        include_str!("../../../tests/fixtures/eventbridge-scheduled-sync-start.json");

    #[test]
    fn the_scheduled_event_fixture_names_the_sync_and_round_trips() {
        let event: EventBridgeEvent<SyncStartDetail> = serde_json::from_str(SCHEDULED).unwrap();
        assert_eq!(event.detail.sync_id, "customers");
        assert_eq!(event.detail_type, "Scheduled Event");
        let again: EventBridgeEvent<SyncStartDetail> =
            serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(again.id, event.id);
        assert_eq!(again.time, event.time);
    }

    #[test]
    fn outcomes_serialise_with_a_status_tag() {
        let outcome = SyncStartOutcome::Skipped {
            sync_id: SyncId::parse("customers").unwrap(),
            open_run: RunId::parse("r1").unwrap(),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["status"], "skipped");
        assert_eq!(json["open_run"], "r1");
    }
}
