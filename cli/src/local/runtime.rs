//! [`LocalRuntime`]: the three functions' dependencies, built once, and a run driven
//! from sync-start to its close — the pollers running, the finalizer passing until the
//! run closes.

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
    domain::run::RunRecord,
    resources::Resources,
    secrets::SecretResolver,
    DestinationId, RunId, SyncId,
};
use resync_sync_start::{SyncStart, SyncStartDetail, SyncStartOutcome};

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
}

/// Everything a local run needs: the three functions' dependencies, built once.
pub struct LocalRuntime {
    /// The SDK configuration (emulator or endpoint).
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
        let reporter = Reporter::new(
            Some((
                aws_sdk_eventbridge::Client::new(&sdk),
                resources.event_bus.clone(),
            )),
            resources
                .alert_topic_arn
                .clone()
                .map(|arn| (aws_sdk_sns::Client::new(&sdk), arn)),
            MetricsSink::Memory(metrics.clone()),
        );
        let secrets = SecretResolver::new(aws_sdk_secretsmanager::Client::new(&sdk));
        let mut deliveries = HashMap::new();
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        for destination_config in &config.destinations {
            let delivery =
                Delivery::new(&sdk, &resources, destination_config.clone(), &secrets).await?;
            deliveries.insert(destination_config.id.clone(), Arc::new(delivery));
        }
        let notices = WorkQueue::resolve(sqs, &resources.finalizer_notices_queue()).await?;
        Ok(Self {
            notices,
            sync_start: SyncStart::new(&sdk, config.clone(), resources.clone(), reporter.clone()),
            finalizer: Finalizer::new(&sdk, config.clone(), resources.clone(), reporter),
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

    /// Starts a run and drives it to its close. The destination's pollers run from
    /// before sync-start, as an event source mapping does: rows are delivered while
    /// the run is still being planned.
    pub async fn run_sync(
        &self,
        sync: &SyncId,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<LocalRun> {
        let start = async {
            let started = self.start(sync).await?;
            let run_id = match &started {
                SyncStartOutcome::Started { run_id, .. } => run_id.clone(),
                SyncStartOutcome::AlreadyPlanned { run_id, .. } => run_id.clone(),
                SyncStartOutcome::Skipped { open_run, .. } => {
                    bail!("run {open_run} of sync {sync} is still open; not overlapping it")
                }
            };
            Ok((started, run_id))
        };
        let Polled {
            started,
            record,
            closed_at,
            invocations,
        } = self.polling(sync, start, progress).await?;
        Ok(LocalRun {
            started,
            record,
            invocations,
            closed_at,
        })
    }

    /// Polls the sync's delivery queue and runs the finalizer until the run closes.
    pub async fn drive(
        &self,
        sync: &SyncId,
        run_id: &RunId,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<(RunRecord, usize)> {
        let Polled {
            record,
            invocations,
            ..
        } = self
            .polling(sync, async { Ok(((), run_id.clone())) }, progress)
            .await?;
        Ok((record, invocations))
    }

    /// With the destination's pollers running: awaits `start` (which names the run),
    /// then runs the finalizer until that run closes; stops the pollers.
    async fn polling<T>(
        &self,
        sync: &SyncId,
        start: impl std::future::Future<Output = anyhow::Result<(T, RunId)>>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<Polled<T>> {
        let pollers = self.pollers(sync)?;
        let result = async {
            let (started, run_id) = start.await?;
            let closed = self
                .finalize_until_closed(sync, &run_id, &pollers, progress)
                .await?;
            anyhow::Ok((started, closed))
        }
        .await;
        let invocations = pollers.stop().await?;
        let (started, ClosedRun { record, closed_at }) = result?;
        progress(Progress {
            settled: record.enqueued,
            enqueued: record.enqueued,
        });
        Ok(Polled {
            started,
            record,
            closed_at,
            invocations,
        })
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
    /// until the run closes.
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
                SyncReport::InFlight {
                    settled, enqueued, ..
                } => progress(Progress { settled, enqueued }),
                // No lock, or a stray one released: the run's record says how it ended.
                SyncReport::Idle { .. } | SyncReport::Released { .. } => break,
                SyncReport::Abandoned { .. } => bail!("run {run_id} was abandoned"),
                SyncReport::Closed { .. } => {}
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
        Ok(ClosedRun { record, closed_at })
    }
}

/// What [`LocalRuntime::polling`] saw: what its `start` gave, the closed run and the
/// delivery invocations made.
struct Polled<T> {
    started: T,
    record: RunRecord,
    closed_at: Instant,
    invocations: usize,
}

/// A run the finalizer saw closed.
struct ClosedRun {
    record: RunRecord,
    /// When the finalizer saw it closed.
    closed_at: Instant,
}
