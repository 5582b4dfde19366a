//! finalizer: closes runs whose every row is settled, keeps the failed-row index
//! exact, and reports.
//!
//! Runs on a schedule (every minute in a deployment; the local runner calls it as rows
//! settle). For each sync with an open run it:
//! 1. moves what the destination's dead-letter queue holds into the run's ledger as
//!    terminal failures (messages that crashed the delivery function);
//! 2. skips the run while the settled hint is below the enqueued count (cheap);
//! 3. otherwise tallies the run's ledger items; when every enqueued key is settled it
//!    writes the failures and keyed rejections into the index, deletes the recovered
//!    keys, and closes the run, releases the sync and keeps the run's report in one
//!    transaction (a conflict or throttling is retried, never read as "closed by
//!    another"), then emits the EMF metrics;
//! 4. sends the sync's pending reports (the `Run Closed` event, and the `Sync Alert`
//!    event and SNS alert when the sync's rule is met; see the `reports` module): a
//!    report that cannot be sent never keeps a run open, and a later finalizer sends it.
//!
//! One sync's error does not stop the others: every sync is finalized, then the
//! invocation fails with the errors of those that failed ([`SyncFailures`]).
//! Every step is idempotent, so a finalizer that crashes midway is simply run again.
//! A run stuck in planning (sync-start killed) past [`STALE_PLANNING`], counted from
//! the start of its current planning attempt, is abandoned, which releases the sync
//! without losing a row.
//!
//! A lock that names a run which is not open never ends by itself, so the finalizer
//! releases it (conditionally: only while it still names that run), logs an error and
//! raises a critical alert: at once when the run is closed (a late or duplicate start
//! took the lock again), and when the run is abandoned or has no record once the lock
//! is older than [`STALE_PLANNING`] (until then a sync-start may be between taking the
//! lock and opening its run).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Diagnostic, LambdaEvent};
use resync_shared::{
    aws::{
        breaker::Breakers,
        index::FailedRowIndex,
        queue::{QueueDirectory, WorkQueue},
        report::{warn_due, Reporter, RunSummary, Severity},
        runs::{PendingReport, ReportPart, RunStore},
        AwsError,
    },
    config::{Config, SyncConfig},
    crash_points::{CrashPoint, CrashPoints, InjectedCrash},
    domain::{
        ledger::{BatchLedger, FailedRow, RunCounts, RunTally},
        message::QueueMessage,
        outcome::{ErrorClass, RowError},
        run::{CloseProgress, RunRecord, RunStatus},
        timestamp,
    },
    resources::Resources,
    DestinationId, RunId, SyncId,
};
use serde::{Deserialize, Serialize};

mod destination_down;
mod replan;
mod reports;

/// A run still planning after this long lost its sync-start invocation (Lambda's
/// longest timeout is 15 minutes).
pub const STALE_PLANNING: Duration = Duration::from_secs(16 * 60);

/// A close claimed longer ago than this lost its finalizer (whose timeout is two
/// minutes); another may take it over.
pub const CLOSE_CLAIM_STALE: Duration = Duration::from_secs(150);

/// The time an invocation keeps for what follows a close's index writes (the close
/// itself, the report) and for its other syncs: a close whose writes reach into it stops,
/// records how far it got, and the next invocation resumes it (the schedule's, a minute
/// later), so a run with any number of failed or recovered rows closes.
pub const CLOSE_MARGIN: Duration = Duration::from_secs(30);

/// Index writes between two looks at the deadline (32 `BatchWriteItem` calls of 25).
const CLOSE_STEP: usize = 800;

/// When the invocation must have returned (Lambda's deadline; none locally).
#[derive(Debug, Clone, Copy)]
struct Deadline(Option<std::time::Instant>);

impl Deadline {
    /// From the invocation's context (`deadline` in Unix milliseconds; 0: none).
    fn of(context: &lambda_runtime::Context) -> Self {
        if context.deadline == 0 {
            return Self(None);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let left = Duration::from_millis(context.deadline.saturating_sub(now_ms));
        Self(Some(std::time::Instant::now() + left))
    }

    /// Whether less than [`CLOSE_MARGIN`] is left.
    fn near(self) -> bool {
        self.0.is_some_and(|deadline| {
            deadline.saturating_duration_since(std::time::Instant::now()) < CLOSE_MARGIN
        })
    }
}

/// The `detail` of the finalizer's event: one sync, or all when absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalizerDetail {
    /// Only this sync.
    #[serde(default)]
    pub sync_id: Option<String>,
}

/// What the finalizer did for one sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SyncReport {
    /// No open run.
    Idle {
        /// The sync.
        sync_id: SyncId,
    },
    /// Still planning or delivering.
    InFlight {
        /// The sync.
        sync_id: SyncId,
        /// The run.
        run_id: RunId,
        /// Settled keys (exact when the ledger was read, else the hint).
        settled: u64,
        /// Enqueued keys.
        enqueued: u64,
    },
    /// Closed now.
    Closed {
        /// The sync.
        sync_id: SyncId,
        /// The run.
        run_id: RunId,
        /// Its counts.
        counts: RunCounts,
        /// Index size after.
        failed_index_size: u64,
    },
    /// Its close ran short of the invocation's time: how far it got is recorded, and
    /// the next invocation resumes it.
    Closing {
        /// The sync.
        sync_id: SyncId,
        /// The run.
        run_id: RunId,
        /// The last key of the index update written so far.
        index_through: Option<String>,
    },
    /// A stale planning run was abandoned.
    Abandoned {
        /// The sync.
        sync_id: SyncId,
        /// The run.
        run_id: RunId,
    },
    /// The sync's lock named a run that is not open; it was released (and alerted on).
    Released {
        /// The sync.
        sync_id: SyncId,
        /// The run the lock named.
        run_id: RunId,
        /// Why that run is not open.
        because: NotOpen,
    },
}

/// Why the run a lock names is not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotOpen {
    /// It closed (a late or duplicate start took the lock again).
    Closed,
    /// Its planning was abandoned.
    Abandoned,
    /// It has no run record.
    Unrecorded,
}

impl NotOpen {
    /// As logged and alerted.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Abandoned => "abandoned",
            Self::Unrecorded => "unrecorded",
        }
    }
}

/// The finalizer's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalizerOutput {
    /// One report per sync looked at.
    pub syncs: Vec<SyncReport>,
}

/// Why the finalizer failed (it is simply run again).
#[derive(Debug, thiserror::Error)]
pub enum FinalizerError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The event names an unknown sync.
    #[error("no sync '{0}' in the configuration")]
    UnknownSync(String),
    /// A closed run's report could not be sent; it is kept and a later finalizer
    /// sends it.
    #[error("run {run_id} is closed, but its report could not be sent (kept; a later finalizer sends it): {source}")]
    ReportNotSent {
        /// The run.
        run_id: RunId,
        /// The first failure.
        #[source]
        source: AwsError,
    },
    /// The invocation died at a crash point (a test harness's; never in a deployment).
    #[error(transparent)]
    Crashed(#[from] InjectedCrash),
    /// Some syncs failed; the others were finalized.
    #[error(transparent)]
    Syncs(SyncFailures),
}

impl FinalizerError {
    fn error_type(&self) -> &'static str {
        match self {
            FinalizerError::Aws(_) => "AwsError",
            FinalizerError::UnknownSync(_) => "UnknownSync",
            FinalizerError::ReportNotSent { .. } => "ReportNotSent",
            FinalizerError::Crashed(_) => "InjectedCrash",
            FinalizerError::Syncs(failures) => match failures.failures.as_slice() {
                [one] => one.error.error_type(),
                _ => "SyncsFailed",
            },
        }
    }
}

/// The syncs a finalizer invocation could not finalize (or whose reports it could not
/// send), and what it did for the others.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.failures))]
pub struct SyncFailures {
    /// What was done for the syncs that did not fail.
    pub output: FinalizerOutput,
    /// One entry per failure, in configuration order.
    pub failures: Vec<SyncFailure>,
}

/// One sync's failure.
#[derive(Debug)]
pub struct SyncFailure {
    /// The sync.
    pub sync_id: SyncId,
    /// What failed.
    pub error: FinalizerError,
}

fn describe(failures: &[SyncFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("sync {}: {}", f.sync_id, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<FinalizerError> for Diagnostic {
    fn from(err: FinalizerError) -> Diagnostic {
        Diagnostic {
            error_type: err.error_type().into(),
            error_message: err.to_string(),
        }
    }
}

/// The finalizer's dependencies.
pub struct Finalizer {
    /// The sync configuration.
    pub config: Arc<Config>,
    /// Resource names.
    pub resources: Resources,
    /// Runs table.
    pub runs: RunStore,
    /// Failed-row index.
    pub index: FailedRowIndex,
    /// The destinations' circuit breakers (read to alert on a destination that is down).
    pub breakers: Breakers,
    /// Reporting.
    pub reporter: Reporter,
    /// Where a test harness makes the invocation die ([`CrashPoints::none`] here).
    pub crash_points: CrashPoints,
    dead_letter_queues: QueueDirectory,
}

impl Finalizer {
    /// Builds the dependencies from an SDK configuration.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        config: Arc<Config>,
        resources: Resources,
        reporter: Reporter,
    ) -> Self {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        Self {
            runs: RunStore::new(dynamo.clone(), &resources.runs_table),
            breakers: Breakers::new(dynamo.clone(), &resources.runs_table),
            index: FailedRowIndex::new(dynamo, &resources.failed_rows_table),
            dead_letter_queues: QueueDirectory::new(aws_sdk_sqs::Client::new(sdk)),
            crash_points: CrashPoints::none(),
            config,
            resources,
            reporter,
        }
    }

    async fn dead_letter_queue(&self, destination: &DestinationId) -> Result<WorkQueue, AwsError> {
        self.dead_letter_queues
            .get(&self.resources.dead_letter_queue(destination))
            .await
    }
}

/// The Lambda handler.
pub async fn handler(
    deps: &Finalizer,
    event: LambdaEvent<EventBridgeEvent<FinalizerDetail>>,
) -> Result<FinalizerOutput, FinalizerError> {
    let syncs: Vec<SyncConfig> = match &event.payload.detail.sync_id {
        Some(id) => {
            let sync_id =
                SyncId::parse(id.clone()).map_err(|_| FinalizerError::UnknownSync(id.clone()))?;
            vec![deps
                .config
                .sync(&sync_id)
                .ok_or_else(|| FinalizerError::UnknownSync(id.clone()))?
                .clone()]
        }
        None => deps.config.syncs.clone(),
    };
    // Names this invocation in close claims (Lambda keeps it when it retries one).
    let invocation = if event.context.request_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        event.context.request_id.clone()
    };
    let deadline = Deadline::of(&event.context);
    // One sync's error does not stop the others: each is finalized and its pending
    // reports sent; the errors are returned together at the end (the invocation fails,
    // so they show in the function's error metric and logs, and the next one retries).
    let mut output = FinalizerOutput::default();
    let mut failures = Vec::new();
    for sync in &syncs {
        match finalize_sync(deps, sync, &invocation, deadline).await {
            Ok(report) => output.syncs.push(report),
            Err(err) => {
                tracing::error!(sync = %sync.id, error = %err, "sync not finalized; retried at the next tick");
                failures.push(SyncFailure {
                    sync_id: sync.id.clone(),
                    error: err,
                });
            }
        }
        if let Err(err) = reports::send_pending(deps, sync, &invocation).await {
            failures.push(SyncFailure {
                sync_id: sync.id.clone(),
                error: err,
            });
        }
    }
    if failures.is_empty() {
        Ok(output)
    } else {
        Err(FinalizerError::Syncs(SyncFailures { output, failures }))
    }
}

async fn finalize_sync(
    deps: &Finalizer,
    sync: &SyncConfig,
    invocation: &str,
    deadline: Deadline,
) -> Result<SyncReport, FinalizerError> {
    let state = deps.runs.state(&sync.id).await?;
    let Some(run_id) = state.open_run else {
        return Ok(SyncReport::Idle {
            sync_id: sync.id.clone(),
        });
    };
    let record = deps.runs.run(&sync.id, &run_id).await?;
    let in_flight = |settled, enqueued| SyncReport::InFlight {
        sync_id: sync.id.clone(),
        run_id: run_id.clone(),
        settled,
        enqueued,
    };
    let record = match record {
        Some(record) if record.status == RunStatus::Delivering => record,
        Some(record) if record.status == RunStatus::Planning => {
            // From the current attempt's start: a retried invocation that resumed the
            // planning has a whole invocation's lifetime of its own.
            let since = record.planning_since.or(record.started_at);
            let stale = since.is_some_and(|t| (timestamp::now() - t) > STALE_PLANNING);
            if stale
                && deps
                    .runs
                    .abandon(
                        &sync.id,
                        &run_id,
                        record.generation,
                        "sync-start did not finish planning",
                    )
                    .await?
            {
                return Ok(SyncReport::Abandoned {
                    sync_id: sync.id.clone(),
                    run_id,
                });
            }
            return Ok(in_flight(0, 0));
        }
        Some(record) if record.status == RunStatus::Closed => {
            return release_stray_lock(deps, sync, &run_id, NotOpen::Closed).await;
        }
        other => {
            // Abandoned, or no record: a sync-start may be between taking the lock and
            // opening its run; once the lock is older than any invocation, none is.
            let stale = state
                .open_since
                .is_none_or(|since| (timestamp::now() - since) > STALE_PLANNING);
            if !stale {
                return Ok(in_flight(0, 0));
            }
            let because = match other {
                Some(_) => NotOpen::Abandoned,
                None => NotOpen::Unrecorded,
            };
            return release_stray_lock(deps, sync, &run_id, because).await;
        }
    };

    drain_dead_letters(deps, &sync.destination).await?;
    let record = deps.runs.run(&sync.id, &run_id).await?.unwrap_or(record);
    if record.settled_hint < record.enqueued {
        return Ok(in_flight(record.settled_hint, record.enqueued));
    }

    // The current planning attempt's items only: an earlier attempt's keys (a plan made
    // again from a moved cursor or a new export holds other rows) say nothing of these.
    let batches = deps.runs.ledger(&run_id, record.generation).await?;
    // Pre-sized for the run (bounded: the record is data, not a promise).
    let mut tally = RunTally::with_capacity(record.enqueued.min(1 << 22) as usize);
    for batch in batches {
        tally.add(batch);
    }
    if !tally.complete(record.enqueued) {
        return Ok(in_flight(tally.settled() as u64, record.enqueued));
    }
    // Another finalizer (the schedule's, or a notice's) is closing it: one report.
    let claimed = deps
        .runs
        .claim_close(
            &sync.id,
            &run_id,
            invocation,
            timestamp::now(),
            CLOSE_CLAIM_STALE,
        )
        .await?;
    if !claimed {
        return Ok(in_flight(tally.settled() as u64, record.enqueued));
    }
    replan::carry_earlier_deliveries(&deps.runs, &record, &mut tally).await?;
    close(deps, sync, &record, &tally, invocation, deadline).await
}

/// Releases a lock that names a run which is not open (if it still does), and says so
/// loudly: an error log and, when the sync's rule asks for it, a critical alert, as
/// sync-start raises for a run that cannot run. Nothing is lost: the run's cursor and
/// the index are where it left them, and the next run starts from there.
async fn release_stray_lock(
    deps: &Finalizer,
    sync: &SyncConfig,
    run_id: &RunId,
    because: NotOpen,
) -> Result<SyncReport, FinalizerError> {
    if !deps.runs.release(&sync.id, run_id).await? {
        // Released or taken by another run since it was read: nothing stray is left.
        return Ok(SyncReport::Idle {
            sync_id: sync.id.clone(),
        });
    }
    tracing::error!(
        sync = %sync.id,
        run = %run_id,
        run_state = because.as_str(),
        "the sync was locked by a run that is not open; the lock is released"
    );
    if sync.alert.critical_on_run_error {
        let detail = serde_json::json!({
            "run_id": run_id.as_str(),
            "error": format!("the sync's lock named run {run_id}, which is {}; the finalizer released it", because.as_str()),
        });
        if let Err(alert) = deps
            .reporter
            .alert(
                Severity::Critical,
                &sync.id,
                &format!("sync {} was locked by a run that is not open", sync.id),
                detail,
            )
            .await
        {
            tracing::error!(sync = %sync.id, error = %alert, "could not send the alert");
        }
    }
    Ok(SyncReport::Released {
        sync_id: sync.id.clone(),
        run_id: run_id.clone(),
        because,
    })
}

/// Stops a close that ran short of time: records how far it got (and gives up its
/// claim) for the next invocation to resume.
async fn pause_close(
    deps: &Finalizer,
    sync: &SyncConfig,
    record: &RunRecord,
    invocation: &str,
    progress: &CloseProgress,
) -> Result<SyncReport, FinalizerError> {
    if !deps
        .runs
        .record_close_progress(&sync.id, &record.run_id, invocation, progress)
        .await?
    {
        tracing::warn!(sync = %sync.id, run = %record.run_id, "another finalizer took this close over; its progress stands");
    }
    tracing::info!(sync = %sync.id, run = %record.run_id, rejection_chunks = progress.rejection_chunks, "the close ran short of the invocation's time; the next invocation resumes it");
    Ok(SyncReport::Closing {
        sync_id: sync.id.clone(),
        run_id: record.run_id.clone(),
        index_through: progress.index_through.clone(),
    })
}

async fn close(
    deps: &Finalizer,
    sync: &SyncConfig,
    record: &RunRecord,
    tally: &RunTally,
    invocation: &str,
    deadline: Deadline,
) -> Result<SyncReport, FinalizerError> {
    let failures = tally.failures();
    let recovered: Vec<_> = tally.recovered_keys().collect();
    // The index update in key order, from after the last key an earlier invocation
    // wrote, a step at a time until the invocation's time runs short.
    let update = FailedRowIndex::run_update(&sync.id, &record.run_id, &failures, &[], &recovered);
    let writes = update.writes();
    let mut progress = record.close_progress.clone();
    let start = progress.index_through.as_deref().map_or(0, |through| {
        writes.partition_point(|w| w.key.as_str() <= through)
    });
    for step in writes[start..].chunks(CLOSE_STEP) {
        deps.index.write(&update, step).await?;
        progress.index_through = step.last().map(|w| w.key.as_str().to_owned());
        if deadline.near() {
            return pause_close(deps, sync, record, invocation, &progress).await;
        }
    }
    // The keyed rejections, one stored chunk at a time (after the deletes, so they win
    // over them; a failure of the same key wins over its rejection), from the first
    // chunk no earlier invocation wrote.
    let mut chunks = deps
        .runs
        .rejection_chunks(&record.run_id, record.generation);
    let mut chunk_number = 0u64;
    while let Some(chunk) = chunks.next().await? {
        chunk_number += 1;
        if chunk_number <= progress.rejection_chunks {
            continue;
        }
        deps.index
            .apply_rejections(&sync.id, &record.run_id, &chunk, &|key| {
                tally.failed_in_run(key)
            })
            .await?;
        progress.rejection_chunks = chunk_number;
        if deadline.near() {
            return pause_close(deps, sync, record, invocation, &progress).await;
        }
    }
    // The objects the run tried become read (or stay pending) only now that it closes.
    let outcomes = deps
        .runs
        .object_outcomes(&record.run_id, record.generation)
        .await?;
    deps.runs
        .apply_object_outcomes(&sync.id, &record.run_id, &outcomes)
        .await?;
    if let Some(watermark) = record.watermark_after {
        // Records of read objects that leave the window with this close are not needed
        // any more: an object that old is taken as read (best effort; sync-start
        // ignores them anyway).
        let window_start = watermark.saturating_sub(sync.source.lookback_ms());
        if let Err(err) = deps
            .runs
            .forget_objects_before(&sync.id, window_start)
            .await
        {
            tracing::warn!(sync = %sync.id, error = %err, "could not delete the records of objects older than the lookback window; the next close tries again");
        }
    }
    deps.crash_points
        .reached(CrashPoint::FinalizerAfterIndexWrites)?;
    let index = deps.index.summary(&sync.id).await?;
    let counts = tally.counts(record.enqueued, record.rejected, record.carried_over);

    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for failure in &failures {
        *errors.entry(failure.error.code.clone()).or_default() += 1;
    }
    for (code, count) in &record.rejected_by_code {
        let entry = errors.entry(code.clone()).or_default();
        *entry = entry.saturating_add(*count);
    }
    let mut top_errors: Vec<(String, u64)> = errors.into_iter().collect();
    top_errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top_errors.truncate(5);
    let now = timestamp::now();
    let summary = RunSummary {
        sync_id: sync.id.clone(),
        run_id: record.run_id.clone(),
        destination: sync.destination.clone(),
        counts,
        failed_index_size: index.size,
        oldest_failure_age_secs: index
            .oldest_failure_at
            .as_deref()
            .and_then(timestamp::parse_rfc3339)
            .map(|t| (now - t).whole_seconds()),
        started_at: record
            .started_at
            .map(timestamp::rfc3339)
            .unwrap_or_default(),
        closed_at: timestamp::rfc3339(now),
        top_errors,
    };

    // The report goes into the closing transaction and is sent after it (see
    // `reports`): reporting never holds a close back, and is never lost.
    let mut parts = vec![ReportPart::RunClosed];
    if warn_due(&sync.alert, &counts) {
        parts.extend([ReportPart::AlertEvent, ReportPart::AlertNotification]);
    }
    deps.crash_points
        .reached(CrashPoint::FinalizerBeforeClose)?;
    let report = PendingReport { summary, parts };
    let closed = deps
        .runs
        .close(
            record,
            &counts,
            index.size,
            index.oldest_failure_at.as_deref(),
            &report,
            invocation,
        )
        .await?;
    if closed {
        destination_down::alert(deps, sync, &record.run_id, counts.failed).await;
        deps.reporter.metrics(&report.summary);
        tracing::info!(
            sync = %sync.id,
            run = %record.run_id,
            planned = counts.planned,
            delivered = counts.delivered,
            failed = counts.failed,
            rejected = counts.rejected,
            retried_in_run = counts.retried_in_run,
            carried_over = counts.carried_over,
            recovered = counts.recovered,
            failed_index_size = index.size,
            "run closed"
        );
    }
    Ok(SyncReport::Closed {
        sync_id: sync.id.clone(),
        run_id: record.run_id.clone(),
        counts,
        failed_index_size: index.size,
    })
}

/// Moves dead-lettered messages into their runs' ledgers as terminal failures, then
/// deletes them. Unreadable messages are logged (by message id) and kept.
async fn drain_dead_letters(deps: &Finalizer, destination: &DestinationId) -> Result<(), AwsError> {
    let queue = deps.dead_letter_queue(destination).await?;
    loop {
        let messages = queue.receive(10, Duration::ZERO).await?;
        if messages.is_empty() {
            return Ok(());
        }
        let mut by_run: BTreeMap<(SyncId, RunId, u32), BatchLedger> = BTreeMap::new();
        let mut receipts = Vec::new();
        for message in &messages {
            let Some(rows) = message
                .body()
                .and_then(|b| QueueMessage::from_body(b).ok())
                .map(QueueMessage::into_rows)
            else {
                tracing::error!(
                    message_id = message.message_id().unwrap_or_default(),
                    "unreadable dead-lettered message kept"
                );
                continue;
            };
            let receives = message
                .attributes()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                })
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0);
            // A segment's rows all fail with it.
            for row in rows {
                let attempts = receives + row.attempts_before;
                by_run
                    .entry((row.sync_id.clone(), row.run_id.clone(), row.generation))
                    .or_insert_with(|| BatchLedger {
                        generation: row.generation,
                        ..BatchLedger::default()
                    })
                    .failed
                    .push(FailedRow {
                        key: row.key.clone(),
                        error: RowError {
                            class: ErrorClass::DeadLettered,
                            code: "DEAD_LETTERED".into(),
                            message:
                                "the delivery function failed on this row until the queue gave up on it"
                                    .into(),
                            retry_after: None,
                            without_answer: false,
                        },
                        attempts,
                        prior_attempts: row.prior_attempts,
                        carried_over: row.carried_over,
                        first_failed_at: row.first_failed_at.clone(),
                        // It failed for good when the queue gave up on it: found now.
                        failed_at: Some(timestamp::rfc3339(timestamp::now())),
                        payload: row.row,
                    });
            }
            if let Some(receipt) = message.receipt_handle() {
                receipts.push(receipt.to_owned());
            }
        }
        for ((sync_id, run_id, _), ledger) in by_run {
            let batch_id = format!("dlq-{}", uuid::Uuid::new_v4());
            deps.runs
                .record_batch(&sync_id, &run_id, &batch_id, &ledger)
                .await?;
        }
        queue.delete(&receipts).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resync_shared::aws::report::{RunSettled, RUN_SETTLED};

    const RUN_SETTLED_EVENT: &str =
        include_str!("../../../tests/fixtures/eventbridge-run-settled.json");

    /// The event the run-settled rule delivers is the handler's own event type and
    /// names the sync to finalize; its detail is what `SettledNotice` sends.
    #[test]
    fn a_run_settled_event_names_the_sync_to_finalize() {
        let event: EventBridgeEvent<FinalizerDetail> =
            serde_json::from_str(RUN_SETTLED_EVENT).unwrap();
        assert_eq!(event.detail_type, RUN_SETTLED);
        assert_eq!(event.detail.sync_id.as_deref(), Some("customers"));

        let fixture: serde_json::Value = serde_json::from_str(RUN_SETTLED_EVENT).unwrap();
        let sent = serde_json::to_value(RunSettled {
            sync_id: SyncId::parse("customers").unwrap(),
            run_id: RunId::parse("20261129T101500Z-6f1c2a9e").unwrap(),
        })
        .unwrap();
        assert_eq!(sent, fixture["detail"]);
    }
}
