//! sync-start: opens a run of one sync when its EventBridge schedule fires.
//!
//! It refuses to overlap a run that is still open, reads the objects its source
//! cursor says are new (or pending, or re-uploaded: see
//! `resync_shared::domain::cursor`), merges their rows with the sync's failed-row index (each
//! key once, source values win, failed keys absent from the source come from their
//! stored payload), enqueues one row per SQS message and records the plan.
//!
//! The run id is derived from the scheduling event, so when Lambda retries a crashed
//! invocation the same run is planned again, as its next planning attempt: the rows an
//! earlier attempt put on the queue are dropped by delivery and its ledger items and
//! rejections are not counted, so the run is tallied from this attempt's plan alone.
//! What an earlier attempt already settled is not done again: its delivered keys are
//! settled without a send and its tried keys carry their spent attempts (`replan`).

use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Diagnostic, LambdaEvent};
use resync_shared::{
    aws::{
        index::FailedRowIndex,
        queue::{QueueDirectory, WorkQueue},
        report::{Reporter, SettledNotice, Severity},
        runs::RunStore,
        s3_source::{ObjectReadError, S3Source},
        AwsError,
    },
    config::{Config, SyncConfig},
    crash_points::{CrashPoint, CrashPoints, InjectedCrash},
    domain::{
        ids::{IdError, RunId, SyncId},
        run::{Acquired, RunStatus},
        source::SourceReadError,
        timestamp,
    },
    resources::Resources,
    DestinationId,
};
use serde::{Deserialize, Serialize};

mod plan;
mod record;
mod replan;
mod send;

pub use send::SEND_CONCURRENCY;

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
        /// Source objects not read whole: they stay pending, read again every run (a
        /// critical alert says so) until read whole or skipped by an operator.
        pending_objects: u64,
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
        Acquired::Acquired {
            cursor,
            watermark_ms,
        } => plan::Start {
            legacy_after: cursor,
            watermark_ms,
        },
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
    let earlier_deliveries_end = replan::earlier_deliveries_end(&record);
    match plan::plan(
        deps,
        sync,
        run_id,
        generation,
        cursor,
        earlier_deliveries_end,
    )
    .await
    {
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
