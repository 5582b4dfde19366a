//! [`LocalRuntime`]: the three functions' dependencies, built once, and a run driven
//! from sync-start to its close — the pollers running, the finalizer passing until the
//! run closes; a run of the sync left open (an interrupted runner, a failed run) is
//! driven to its end first.
//!
//! sync-start and the finalizer are invoked as EventBridge invokes them, asynchronously:
//! an invocation that fails (an error, an injected crash) is tried twice more with the
//! same event and request id ([`ASYNC_RETRIES`]). With [`AtLeastOnce`](super::AtLeastOnce) rates, a
//! schedule event reaches sync-start twice at once or again after its run closed, and
//! a run-settled notice invokes the finalizer twice or after the close.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aws_config::SdkConfig;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
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
    crash_points::CrashPoints,
    domain::{
        ledger::RunCounts,
        run::{RunRecord, RunStatus},
    },
    resources::Resources,
    secrets::SecretResolver,
    DestinationId, RunId, SyncId,
};
use resync_sync_start::{SyncStart, SyncStartDetail, SyncStartOutcome};

use crate::aws::calls::{CallLog, CallRecorder, Caller, StackNaming, CALL_LOG_ENV};

use super::{
    at_least_once::{EventCopies, EventCopy},
    crashes::{Crashes, SeededCrashPlan},
    event_source::Pollers,
    lambda_invocation,
    notices::Notices,
    provision, HandlerClock, LocalOptions,
};

/// Lambda's retries of an asynchronous invocation that failed (EventBridge's targets:
/// sync-start, the finalizer): two more, with the same event and request id.
pub const ASYNC_RETRIES: u32 = 2;

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
    /// Each destination's delivery function: one instance per unit of its concurrency,
    /// each with its own memory, as Lambda's execution environments have.
    pub deliveries: HashMap<DestinationId, Vec<Arc<Delivery>>>,
    /// EMF metric lines the finalizer emitted.
    pub metrics: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Options.
    pub options: LocalOptions,
    /// Time spent in the handlers.
    pub clock: Arc<HandlerClock>,
    crashes: Arc<Crashes>,
    /// The handlers' crash points, when any may fire.
    crash_plan: Option<Arc<SeededCrashPlan>>,
    /// Extra copies of events (at-least-once delivery).
    copies: Arc<EventCopies>,
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
        let crash_plan = (!options.crash_points.is_empty())
            .then(|| Arc::new(SeededCrashPlan::new(&options.crash_points)));
        let crash_points = match &crash_plan {
            Some(plan) => CrashPoints::with_plan(plan.clone()),
            None => CrashPoints::none(),
        };
        let mut deliveries = HashMap::new();
        for destination_config in &config.destinations {
            let delivery_sdk = sdk_of(Caller::Delivery(destination_config.id.clone()));
            let secrets = SecretResolver::new(aws_sdk_secretsmanager::Client::new(&delivery_sdk));
            let mut instances = Vec::new();
            for _ in 0..destination_config.concurrency.max(1) {
                let mut delivery = Delivery::new(
                    &delivery_sdk,
                    &resources,
                    destination_config.clone(),
                    &secrets,
                )
                .await?;
                delivery.crash_points = crash_points.clone();
                instances.push(Arc::new(delivery));
            }
            deliveries.insert(destination_config.id.clone(), instances);
        }
        let notices = WorkQueue::resolve(
            aws_sdk_sqs::Client::new(&sdk),
            &resources.finalizer_notices_queue(),
        )
        .await?;
        let sync_start_sdk = sdk_of(Caller::SyncStart);
        let finalizer_sdk = sdk_of(Caller::Finalizer);
        let mut sync_start = SyncStart::new(
            &sync_start_sdk,
            config.clone(),
            resources.clone(),
            reporter(&sync_start_sdk),
        );
        sync_start.crash_points = crash_points.clone();
        let mut finalizer = Finalizer::new(
            &finalizer_sdk,
            config.clone(),
            resources.clone(),
            reporter(&finalizer_sdk),
        );
        finalizer.crash_points = crash_points;
        Ok(Self {
            notices,
            sync_start,
            finalizer,
            clock: Arc::new(HandlerClock::default()),
            crashes: Arc::new(Crashes::new(&options)),
            crash_plan,
            copies: Arc::new(EventCopies::new(options.at_least_once)),
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

    /// The faults the runtime injected: crash points that fired, crashed delivery
    /// invocations, extra copies of events (`crash:<point>`, `duplicate:<event>`,
    /// `late:<event>`).
    pub fn injected(&self) -> BTreeMap<String, u64> {
        let mut injected = self.crashes.injected();
        if let Some(plan) = &self.crash_plan {
            injected.extend(plan.injected());
        }
        injected.extend(self.copies.injected());
        injected
    }

    /// Fires sync-start as the EventBridge schedule would: one scheduling event, a
    /// second copy of it at once when the at-least-once plan draws one.
    pub async fn start(&self, sync: &SyncId) -> anyhow::Result<SyncStartOutcome> {
        self.deliver_schedule_event(&schedule_event(sync)).await
    }

    /// Delivers a scheduling event to sync-start (twice at once, as EventBridge may,
    /// when the plan draws a duplicate: two invocations of the same event id, so of the
    /// same run). Of two outcomes, the one that planned the run is returned.
    pub async fn deliver_schedule_event(
        &self,
        event: &EventBridgeEvent<SyncStartDetail>,
    ) -> anyhow::Result<SyncStartOutcome> {
        if !self.copies.draw(EventCopy::DuplicateScheduleEvent) {
            return self.invoke_sync_start(event).await;
        }
        tracing::warn!("the schedule event is delivered twice");
        let (first, second) =
            tokio::join!(self.invoke_sync_start(event), self.invoke_sync_start(event));
        let rank = |outcome: &anyhow::Result<SyncStartOutcome>| match outcome {
            Ok(SyncStartOutcome::Started { .. }) => 0,
            Ok(SyncStartOutcome::AlreadyPlanned { .. }) => 1,
            Ok(SyncStartOutcome::Skipped { .. }) => 2,
            Err(_) => 3,
        };
        if rank(&second) < rank(&first) {
            second
        } else {
            first
        }
    }

    /// One asynchronous invocation of sync-start with `event`, retried as Lambda does.
    async fn invoke_sync_start(
        &self,
        event: &EventBridgeEvent<SyncStartDetail>,
    ) -> anyhow::Result<SyncStartOutcome> {
        let invocation = lambda_invocation(event.clone());
        Ok(self
            .invoke_async("sync-start", invocation, async |event| {
                resync_sync_start::handler(&self.sync_start, event).await
            })
            .await?)
    }

    /// Invokes `handler` as Lambda invokes a function asynchronously: an invocation that
    /// fails is tried [`ASYNC_RETRIES`] more times with the same event and request id,
    /// [`LocalOptions::async_retry_after`] apart; the last one's result is returned.
    async fn invoke_async<E: Clone, T, Error: std::fmt::Display>(
        &self,
        function: &'static str,
        event: LambdaEvent<E>,
        handler: impl AsyncFn(LambdaEvent<E>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut retries = 0;
        loop {
            let started = Instant::now();
            let result = handler(event.clone()).await;
            self.clock.record(function, started.elapsed());
            match result {
                Err(err) if retries < ASYNC_RETRIES => {
                    retries += 1;
                    tracing::warn!(function, error = %err, retry = retries, "the invocation failed; Lambda invokes it again with the same event");
                    tokio::time::sleep(self.options.async_retry_after).await;
                }
                result => return result,
            }
        }
    }

    /// Runs the finalizer for one sync, as its schedule would.
    pub async fn finalize(&self, sync: &SyncId) -> anyhow::Result<SyncReport> {
        // One scheduled finalizer at a time locally, under one name: a close it claimed
        // and did not finish (an error) is its own to retry at the next pass.
        self.finalize_as(sync, "resync-local-finalizer").await
    }

    /// Runs the finalizer for one sync as the invocation `request_id` (retried as
    /// Lambda retries an asynchronous invocation, under the same id).
    async fn finalize_as(&self, sync: &SyncId, request_id: &str) -> anyhow::Result<SyncReport> {
        let mut event: EventBridgeEvent<FinalizerDetail> = EventBridgeEvent::default();
        event.id = Some(uuid::Uuid::new_v4().to_string());
        event.detail_type = "Scheduled Event".into();
        event.source = "aws.events".into();
        event.detail = FinalizerDetail {
            sync_id: Some(sync.to_string()),
        };
        let mut event = lambda_invocation(event);
        event.context.request_id = request_id.into();
        let mut output = self
            .invoke_async("finalizer", event, async |event| {
                resync_finalizer::handler(&self.finalizer, event).await
            })
            .await?;
        output
            .syncs
            .pop()
            .context("the finalizer reported nothing for the sync")
    }

    /// The finalizer invoked by one copy of a run-settled notice (its own invocation).
    async fn finalize_for_notice(&self, sync: &SyncId) -> anyhow::Result<SyncReport> {
        self.finalize_as(sync, &format!("notice-{}", uuid::Uuid::new_v4()))
            .await
    }

    /// A copy of `event` that arrives after its run closed, when the plan draws one:
    /// sync-start must find the run closed and leave the sync free.
    async fn late_schedule_event(&self, event: &EventBridgeEvent<SyncStartDetail>) {
        if !self.copies.draw(EventCopy::LateScheduleEvent) {
            return;
        }
        match self.invoke_sync_start(event).await {
            Ok(outcome) => {
                tracing::warn!(?outcome, "a late copy of a closed run's schedule event")
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "a late copy of a closed run's schedule event failed")
            }
        }
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
                let event = schedule_event(sync);
                let started = self.deliver_schedule_event(&event).await?;
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
                self.late_schedule_event(&event).await;
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

    /// Runs the sync's delivery pollers alone, without the finalizer, until its
    /// destination's queue holds nothing visible or in flight at two readings a second
    /// apart; returns the delivery invocations made. The benchmark's memory case runs
    /// each function in a process of its own this way (delayed messages are not
    /// waited for: that case has no retries).
    pub async fn deliver_until_drained(&self, sync: &SyncId) -> anyhow::Result<usize> {
        let sync_config = self
            .config
            .sync(sync)
            .with_context(|| format!("no sync '{sync}' in the configuration"))?;
        let queue = self.deliveries[&sync_config.destination]
            .first()
            .context("the destination has no delivery instance")?
            .queue
            .clone();
        let ((), invocations) = self
            .polling(sync, async |_| {
                let mut empty_readings = 0;
                while empty_readings < 2 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let (visible, in_flight) = queue.depth().await?;
                    empty_readings = if visible + in_flight == 0 {
                        empty_readings + 1
                    } else {
                        0
                    };
                }
                Ok(())
            })
            .await?;
        Ok(invocations)
    }

    /// Runs the finalizer alone, as its schedule would (a second apart while the run
    /// is in flight), until the sync's open run closes; returns its counts.
    pub async fn finalize_until_closed_alone(&self, sync: &SyncId) -> anyhow::Result<RunCounts> {
        const PASSES: usize = 600;
        for _ in 0..PASSES {
            match self.finalize(sync).await? {
                SyncReport::Closed { counts, .. } => return Ok(counts),
                SyncReport::Closing { .. } => {}
                SyncReport::InFlight { .. } => tokio::time::sleep(Duration::from_secs(1)).await,
                other => bail!("the run did not close: {other:?}"),
            }
        }
        bail!("the run did not close in {PASSES} finalizer passes")
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
        Ok(Pollers::start(
            &self.deliveries[&sync_config.destination],
            self.crashes.clone(),
            self.copies.clone(),
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
        // A notice's copy drawn to invoke the finalizer again at once, and those to
        // invoke it after the run closed.
        let mut duplicate_notice = false;
        let mut late_notices = 0;
        loop {
            let reports = if std::mem::take(&mut duplicate_notice) {
                let (pass, duplicate) =
                    tokio::join!(self.finalize(sync), self.finalize_for_notice(sync));
                vec![pass?, duplicate?]
            } else {
                vec![self.finalize(sync).await?]
            };
            let mut ended = false;
            for report in reports {
                match report {
                    SyncReport::Closed { run_id: closed, .. } if &closed == run_id => ended = true,
                    SyncReport::Abandoned {
                        run_id: abandoned, ..
                    } if &abandoned == run_id => ended = true,
                    SyncReport::InFlight {
                        settled, enqueued, ..
                    } => progress(Progress { settled, enqueued }),
                    // No lock, or a stray one released: the run's record says how it
                    // ended.
                    SyncReport::Idle { .. } | SyncReport::Released { .. } => ended = true,
                    SyncReport::Closed { .. }
                    | SyncReport::Abandoned { .. }
                    | SyncReport::Closing { .. } => {}
                }
            }
            if ended {
                break;
            }
            if pollers.any_finished() {
                bail!("a delivery poller stopped unexpectedly");
            }
            // Until the next tick, or sooner when a run-settled notice arrives: the next
            // pass is the invocation the notice asks for (a copy of it, another one).
            let arrived = notices
                .wait(tokio::time::Instant::now() + self.options.finalize_every)
                .await;
            for _ in 0..arrived {
                duplicate_notice |= self.copies.draw(EventCopy::DuplicateNotice);
                late_notices += usize::from(self.copies.draw(EventCopy::LateNotice));
            }
        }
        for _ in 0..late_notices {
            match self.finalize_for_notice(sync).await {
                Ok(report) => {
                    tracing::warn!(
                        ?report,
                        "a late copy of a run-settled notice invoked the finalizer"
                    )
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "the finalizer invoked by a late run-settled notice failed")
                }
            }
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

/// A scheduling event of `sync`, as the EventBridge schedule sends it (its own id).
fn schedule_event(sync: &SyncId) -> EventBridgeEvent<SyncStartDetail> {
    let mut event: EventBridgeEvent<SyncStartDetail> = EventBridgeEvent::default();
    event.id = Some(uuid::Uuid::new_v4().to_string());
    event.detail_type = "Scheduled Event".into();
    event.source = "aws.events".into();
    event.time = Some(chrono::Utc::now());
    event.detail = SyncStartDetail {
        sync_id: sync.to_string(),
    };
    event
}

/// A run the finalizer saw end.
struct ClosedRun {
    record: RunRecord,
    /// When the finalizer saw it closed.
    closed_at: Instant,
}
