//! [`LocalRuntime`]: the three functions' dependencies, built once, and a run driven
//! from sync-start to its close — the pollers running, the finalizer passing until the
//! run closes; a run of the sync left open (an interrupted runner, a failed run) is
//! driven to its end first.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{bail, Context as _};
use aws_config::SdkConfig;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use resync_delivery::Delivery;
use resync_finalizer::{Finalizer, FinalizerDetail, SyncReport};
use resync_shared::{
    aws::{
        index::FailedRowIndex,
        queue::WorkQueue,
        report::{MetricsSink, Reporter},
        runs::RunStore,
    },
    config::Config,
    domain::run::{RunRecord, RunStatus},
    resources::Resources,
    secrets::SecretResolver,
    DestinationId, RunId, SyncId,
};
use resync_sync_start::{SyncStart, SyncStartDetail, SyncStartOutcome};

use crate::aws::calls::{CallLog, CallRecorder, Caller, StackNaming, CALL_LOG_ENV};

use super::{
    crashes::Crashes, event_source::Pollers, lambda_invocation, notices::Notices, provision,
    HandlerClock, LocalOptions,
};

/// How far an open run is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Settled rows (a hint while the run is open).
    pub settled: u64,
    /// Enqueued rows.
    pub enqueued: u64,
}

/// A run as the local runner saw it end.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// What sync-start said.
    pub started: SyncStartOutcome,
    /// The closed run record.
    pub record: RunRecord,
    /// Delivery invocations made.
    pub invocations: usize,
    /// When the finalizer saw the run closed.
    pub closed_at: Instant,
    /// A run of the sync that was still open when this one was asked for (its runner
    /// was interrupted, or its run failed), driven to its end first: closed, or
    /// abandoned if it never finished planning.
    pub resumed: Option<RunRecord>,
}

/// Everything a local run needs: the three functions' dependencies, built once.
pub struct LocalRuntime {
    /// The SDK configuration (emulator or endpoint) of the runner itself and of test
    /// setup; never recorded for a function.
    pub sdk: SdkConfig,
    /// The sync configuration.
    pub config: Arc<Config>,
    /// Resource names.
    pub resources: Resources,
    /// sync-start.
    pub sync_start: SyncStart,
    /// The finalizer.
    pub finalizer: Finalizer,
    /// One delivery function per destination.
    pub deliveries: HashMap<DestinationId, Arc<Delivery>>,
    /// EMF metric lines the finalizer emitted.
    pub metrics: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Options.
    pub options: LocalOptions,
    /// Time spent in the handlers.
    pub clock: Arc<HandlerClock>,
    crashes: Arc<Crashes>,
    /// Where run-settled notices arrive (see [`provision`](super::provision)).
    notices: WorkQueue,
}

impl LocalRuntime {
    /// Provisions the stack and builds the functions' dependencies.
    pub async fn new(
        sdk: SdkConfig,
        config: Config,
        stack: &str,
        options: LocalOptions,
    ) -> anyhow::Result<Self> {
        let resources = provision(&sdk, &config, stack, &options).await?;
        let config = Arc::new(config);
        let metrics = Arc::new(Mutex::new(Vec::new()));
        // Each function's own SDK configuration: the plain one, or with RESYNC_CALL_LOG
        // one that records the calls its role must allow (issue 12, defect 9).
        let recording = CallLog::from_env()
            .with_context(|| format!("{CALL_LOG_ENV}: cannot create the call log"))?
            .map(|log| (log, Arc::new(StackNaming::new(&resources, &config))));
        let sdk_of = |caller: Caller| match &recording {
            Some((log, naming)) => {
                CallRecorder::new(log.clone(), naming.clone(), caller).instrument(&sdk)
            }
            None => sdk.clone(),
        };
        let reporter = |sdk: &SdkConfig| {
            Reporter::new(
                Some((
                    aws_sdk_eventbridge::Client::new(sdk),
                    resources.event_bus.clone(),
                )),
                resources
                    .alert_topic_arn
                    .clone()
                    .map(|arn| (aws_sdk_sns::Client::new(sdk), arn)),
                MetricsSink::Memory(metrics.clone()),
            )
        };
        let mut deliveries = HashMap::new();
        for destination_config in &config.destinations {
            let delivery_sdk = sdk_of(Caller::Delivery(destination_config.id.clone()));
            let secrets = SecretResolver::new(aws_sdk_secretsmanager::Client::new(&delivery_sdk));
            let delivery = Delivery::new(
                &delivery_sdk,
                &resources,
                destination_config.clone(),
                &secrets,
            )
            .await?;
            deliveries.insert(destination_config.id.clone(), Arc::new(delivery));
        }
        let notices = WorkQueue::resolve(
            aws_sdk_sqs::Client::new(&sdk),
            &resources.finalizer_notices_queue(),
        )
        .await?;
        let sync_start_sdk = sdk_of(Caller::SyncStart);
        let finalizer_sdk = sdk_of(Caller::Finalizer);
        Ok(Self {
            notices,
            sync_start: SyncStart::new(
                &sync_start_sdk,
                config.clone(),
                resources.clone(),
                reporter(&sync_start_sdk),
            ),
            finalizer: Finalizer::new(
                &finalizer_sdk,
                config.clone(),
                resources.clone(),
                reporter(&finalizer_sdk),
            ),
            clock: Arc::new(HandlerClock::default()),
            crashes: Arc::new(Crashes::new(&options)),
            sdk,
            config,
            resources,
            deliveries,
            metrics,
            options,
        })
    }

    /// The runs table.
    pub fn runs(&self) -> RunStore {
        RunStore::new(
            aws_sdk_dynamodb::Client::new(&self.sdk),
            &self.resources.runs_table,
        )
    }

    /// The failed-row index.
    pub fn index(&self) -> FailedRowIndex {
        FailedRowIndex::new(
            aws_sdk_dynamodb::Client::new(&self.sdk),
            &self.resources.failed_rows_table,
        )
    }

    /// Fires sync-start as the EventBridge schedule would.
    pub async fn start(&self, sync: &SyncId) -> anyhow::Result<SyncStartOutcome> {
        let mut event: EventBridgeEvent<SyncStartDetail> = EventBridgeEvent::default();
        event.id = Some(uuid::Uuid::new_v4().to_string());
        event.detail_type = "Scheduled Event".into();
        event.source = "aws.events".into();
        event.time = Some(chrono::Utc::now());
        event.detail = SyncStartDetail {
            sync_id: sync.to_string(),
        };
        let started = Instant::now();
        let outcome = resync_sync_start::handler(&self.sync_start, lambda_invocation(event)).await;
        self.clock.record("sync-start", started.elapsed());
        Ok(outcome?)
    }

    /// Runs the finalizer for one sync.
    pub async fn finalize(&self, sync: &SyncId) -> anyhow::Result<SyncReport> {
        let mut event: EventBridgeEvent<FinalizerDetail> = EventBridgeEvent::default();
        event.id = Some(uuid::Uuid::new_v4().to_string());
        event.detail_type = "Scheduled Event".into();
        event.source = "aws.events".into();
        event.detail = FinalizerDetail {
            sync_id: Some(sync.to_string()),
        };
        // One finalizer at a time locally, under one name: a close it claimed and did
        // not finish (an error) is its own to retry at the next pass.
        let mut event = lambda_invocation(event);
        event.context.request_id = "resync-local-finalizer".into();
        let started = Instant::now();
        let output = resync_finalizer::handler(&self.finalizer, event).await;
        self.clock.record("finalizer", started.elapsed());
        let mut output = output?;
        output
            .syncs
            .pop()
            .context("the finalizer reported nothing for the sync")
    }

    /// The run of `sync` that is still open, if any.
    pub async fn open_run(&self, sync: &SyncId) -> anyhow::Result<Option<RunId>> {
        Ok(self.runs().state(sync).await?.open_run)
    }

    /// Runs the sync and drives the run to its close. A run of the sync that is still
    /// open — left by a runner that was interrupted (Ctrl-C, a crash) or whose run
    /// failed — is driven to its end first, as the finalizer's schedule does on AWS, and
    /// reported in [`LocalRun::resumed`]. The destination's pollers run from before
    /// sync-start, as an event source mapping does: rows are delivered while the run is
    /// still being planned.
    pub async fn run_sync(
        &self,
        sync: &SyncId,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<LocalRun> {
        let ((resumed, started, closed), invocations) = self
            .polling(sync, async |pollers| {
                let resumed = match self.open_run(sync).await? {
                    Some(open_run) => Some(
                        self.finalize_until_closed(sync, &open_run, pollers, progress)
                            .await?
                            .record,
                    ),
                    None => None,
                };
                let started = self.start(sync).await?;
                let run_id = match &started {
                    SyncStartOutcome::Started { run_id, .. } => run_id.clone(),
                    SyncStartOutcome::AlreadyPlanned { run_id, .. } => run_id.clone(),
                    SyncStartOutcome::Skipped { open_run, .. } => bail!(
                        "run {open_run} of sync {sync} was opened by another runner meanwhile; not overlapping it"
                    ),
                };
                let closed = self
                    .finalize_until_closed(sync, &run_id, pollers, progress)
                    .await?;
                if closed.record.status != RunStatus::Closed {
                    bail!("run {run_id} was abandoned");
                }
                anyhow::Ok((resumed, started, closed))
            })
            .await?;
        Ok(LocalRun {
            started,
            record: closed.record,
            invocations,
            closed_at: closed.closed_at,
            resumed,
        })
    }

    /// Polls the sync's delivery queue and runs the finalizer until the run closes.
    pub async fn drive(
        &self,
        sync: &SyncId,
        run_id: &RunId,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<(RunRecord, usize)> {
        let (closed, invocations) = self
            .polling(sync, async |pollers| {
                self.finalize_until_closed(sync, run_id, pollers, progress)
                    .await
            })
            .await?;
        if closed.record.status != RunStatus::Closed {
            bail!("run {run_id} was abandoned");
        }
        Ok((closed.record, invocations))
    }

    /// With the destination's pollers running, does `work`; stops the pollers and
    /// returns what `work` gave and the delivery invocations made.
    async fn polling<T>(
        &self,
        sync: &SyncId,
        work: impl AsyncFnOnce(&Pollers) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, usize)> {
        let pollers = self.pollers(sync)?;
        let result = work(&pollers).await;
        let invocations = pollers.stop().await?;
        Ok((result?, invocations))
    }

    /// Starts the pollers of the sync's destination queue.
    fn pollers(&self, sync: &SyncId) -> anyhow::Result<Pollers> {
        let sync_config = self
            .config
            .sync(sync)
            .with_context(|| format!("no sync '{sync}' in the configuration"))?;
        let delivery = self.deliveries[&sync_config.destination].clone();
        Ok(Pollers::start(
            delivery,
            self.crashes.clone(),
            self.clock.clone(),
            &self.options,
        ))
    }

    /// Runs the finalizer every `finalize_every`, and at once on a run-settled notice,
    /// until the run ends: closed, or abandoned (a planning run whose sync-start died).
    async fn finalize_until_closed(
        &self,
        sync: &SyncId,
        run_id: &RunId,
        pollers: &Pollers,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<ClosedRun> {
        let mut notices = Notices::new(self.notices.clone());
        loop {
            match self.finalize(sync).await? {
                SyncReport::Closed { run_id: closed, .. } if &closed == run_id => break,
                SyncReport::Abandoned {
                    run_id: abandoned, ..
                } if &abandoned == run_id => break,
                SyncReport::InFlight {
                    settled, enqueued, ..
                } => progress(Progress { settled, enqueued }),
                // No lock, or a stray one released: the run's record says how it ended.
                SyncReport::Idle { .. } | SyncReport::Released { .. } => break,
                SyncReport::Closed { .. } | SyncReport::Abandoned { .. } => {}
            }
            if pollers.any_finished() {
                bail!("a delivery poller stopped unexpectedly");
            }
            // Until the next tick, or sooner when a run-settled notice arrives.
            notices
                .wait(tokio::time::Instant::now() + self.options.finalize_every)
                .await;
        }
        let closed_at = Instant::now();
        let record = self
            .runs()
            .run(sync, run_id)
            .await?
            .context("the closed run has no record")?;
        progress(Progress {
            settled: record.enqueued,
            enqueued: record.enqueued,
        });
        Ok(ClosedRun { record, closed_at })
    }
}

/// A run the finalizer saw end.
struct ClosedRun {
    record: RunRecord,
    /// When the finalizer saw it closed.
    closed_at: Instant,
}
