//! Running syncs locally: provisioning, the SQS event-source-mapping poller, the
//! finalizer loop and the scheduler, all around the functions' own handlers.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aws_config::SdkConfig;
use aws_lambda_events::{
    eventbridge::EventBridgeEvent,
    sqs::{SqsEvent, SqsMessage},
};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use lambda_runtime::{Context, LambdaEvent};
use resync_delivery::Delivery;
use resync_finalizer::{Finalizer, FinalizerDetail, SyncReport};
use resync_shared::{
    aws::{
        index::FailedRowIndex,
        queue::WorkQueue,
        report::{run_settled_pattern, MetricsSink, Reporter, SettledNotice},
        runs::{RunRecord, RunStore},
        AwsError,
    },
    config::Config,
    destination,
    resources::{QueueSettings, Resources},
    secrets::SecretResolver,
    DestinationId, RunId, SyncId,
};
use resync_sync_start::{SyncStart, SyncStartDetail, SyncStartOutcome};

/// Knobs of the local runner that differ from a deployment only in timing.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Visibility timeout of the delivery queues (a deployment uses 6 × the function
    /// timeout; locally a crashed invocation's rows should come back sooner).
    pub visibility_timeout_secs: u32,
    /// How often the finalizer runs while a run is open.
    pub finalize_every: Duration,
    /// Simulated crashes: this many delivery invocations die before their handler
    /// runs (their messages come back after the visibility timeout).
    pub crash_before_handler: usize,
    /// Simulated crashes: this many delivery invocations do their work but their
    /// response is lost, as when Lambda times out after the handler wrote its ledger.
    pub crash_after_handler: usize,
    /// Batching window of the poller.
    pub batching_window: Duration,
    /// Receives a poller keeps in flight while the queue has a backlog.
    pub receives_in_flight: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            visibility_timeout_secs: 30,
            finalize_every: Duration::from_millis(250),
            crash_before_handler: 0,
            crash_after_handler: 0,
            batching_window: Duration::from_millis(200),
            receives_in_flight: 4,
        }
    }
}

/// Creates every resource of a stack for a configuration (idempotent) and returns the
/// resource names with the alert topic's ARN.
pub async fn provision(
    sdk: &SdkConfig,
    config: &Config,
    stack: &str,
    options: &LocalOptions,
) -> anyhow::Result<Resources> {
    let mut resources = Resources::for_stack(stack);
    let dynamo = aws_sdk_dynamodb::Client::new(sdk);
    create_table(&dynamo, &resources.runs_table, "pk", "sk").await?;
    create_table(&dynamo, &resources.failed_rows_table, "sync_id", "key").await?;

    let sqs = aws_sdk_sqs::Client::new(sdk);
    for destination in &config.destinations {
        let settings = QueueSettings::for_destination(destination);
        let dlq_url = sqs
            .create_queue()
            .queue_name(resources.dead_letter_queue(&destination.id))
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                settings.dlq_retention_secs.to_string(),
            )
            .send()
            .await
            .context("creating a dead-letter queue")?
            .queue_url
            .context("CreateQueue answered no URL")?;
        let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": settings.max_receive_count,
        });
        sqs.create_queue()
            .queue_name(resources.delivery_queue(&destination.id))
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                options.visibility_timeout_secs.to_string(),
            )
            .attributes(
                QueueAttributeName::MaximumMessageSize,
                settings.max_message_bytes.to_string(),
            )
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                settings.retention_secs.to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await
            .context("creating a delivery queue")?;
    }

    let s3 = crate::aws::s3_client(sdk);
    let mut buckets: HashSet<String> = HashSet::from([resources.source_bucket.clone()]);
    buckets.extend(config.syncs.iter().filter_map(|s| s.source.bucket.clone()));
    for bucket in buckets {
        if let Err(err) = s3.create_bucket().bucket(&bucket).send().await {
            let service = err.as_service_error();
            let exists = service.is_some_and(|e| {
                e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
            });
            if !exists {
                return Err(anyhow::Error::new(err).context(format!("creating bucket {bucket}")));
            }
        }
    }

    let events = aws_sdk_eventbridge::Client::new(sdk);
    if let Err(err) = events
        .create_event_bus()
        .name(&resources.event_bus)
        .send()
        .await
    {
        if !err
            .as_service_error()
            .is_some_and(|e| e.is_resource_already_exists_exception())
        {
            return Err(anyhow::Error::new(err).context("creating the event bus"));
        }
    }
    // Run-settled notices: a deployment's rule invokes the finalizer; here it feeds a
    // queue the runner's finalizer loop waits on.
    let notices_url = sqs
        .create_queue()
        .queue_name(resources.finalizer_notices_queue())
        .attributes(QueueAttributeName::VisibilityTimeout, "5")
        .send()
        .await
        .context("creating the finalizer's notice queue")?
        .queue_url
        .context("CreateQueue answered no URL")?;
    events
        .put_rule()
        .name(resources.run_settled_rule())
        .event_bus_name(&resources.event_bus)
        .event_pattern(run_settled_pattern())
        .send()
        .await
        .context("creating the run-settled rule")?;
    events
        .put_targets()
        .rule(resources.run_settled_rule())
        .event_bus_name(&resources.event_bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("finalizer")
                .arn(queue_arn(&sqs, &notices_url).await?)
                .build()
                .context("the run-settled rule's target")?,
        )
        .send()
        .await
        .context("targeting the run-settled rule")?;
    let sns = aws_sdk_sns::Client::new(sdk);
    let topic = sns
        .create_topic()
        .name(&resources.alert_topic)
        .send()
        .await
        .context("creating the alert topic")?;
    resources.alert_topic_arn = topic.topic_arn;
    Ok(resources)
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .with_context(|| format!("reading the ARN of queue {url}"))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("no QueueArn")
}

async fn create_table(
    dynamo: &aws_sdk_dynamodb::Client,
    name: &str,
    partition: &str,
    sort: &str,
) -> anyhow::Result<()> {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("complete")
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("complete")
    };
    let result = dynamo
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(partition))
        .attribute_definitions(attribute(sort))
        .key_schema(key(partition, KeyType::Hash))
        .key_schema(key(sort, KeyType::Range))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!("creating table {name}"))),
    }
}

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

/// Invocations and time spent in each function's handler (what Lambda would bill).
#[derive(Debug, Default)]
pub struct HandlerClock {
    inner: Mutex<std::collections::BTreeMap<&'static str, (u64, Duration)>>,
}

impl HandlerClock {
    fn record(&self, function: &'static str, elapsed: Duration) {
        let mut inner = self.inner.lock().expect("clock");
        let entry = inner.entry(function).or_default();
        entry.0 += 1;
        entry.1 += elapsed;
    }

    /// Invocations and handler seconds per function.
    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, (u64, f64)> {
        self.inner
            .lock()
            .expect("clock")
            .iter()
            .map(|(k, (n, d))| (*k, (*n, d.as_secs_f64())))
            .collect()
    }

    /// Starts again from zero.
    pub fn reset(&self) {
        self.inner.lock().expect("clock").clear();
    }
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
    /// Where run-settled notices arrive (see [`provision`]).
    notices: WorkQueue,
}

/// Simulated crashes still to happen.
#[derive(Debug, Default)]
struct Crashes {
    before_handler: AtomicUsize,
    after_handler: AtomicUsize,
}

impl Crashes {
    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
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
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        for destination_config in &config.destinations {
            let delivery = Delivery {
                config: config.clone(),
                destination: destination::build(destination_config, &secrets).await?,
                queue: WorkQueue::resolve(
                    sqs.clone(),
                    &resources.delivery_queue(&destination_config.id),
                )
                .await?,
                runs: RunStore::new(dynamo.clone(), &resources.runs_table),
                notice: SettledNotice::new(
                    aws_sdk_eventbridge::Client::new(&sdk),
                    &resources.event_bus,
                ),
                destination_config: destination_config.clone(),
            };
            deliveries.insert(destination_config.id.clone(), Arc::new(delivery));
        }
        let notices = WorkQueue::resolve(sqs, &resources.finalizer_notices_queue()).await?;
        Ok(Self {
            notices,
            sync_start: SyncStart::new(&sdk, config.clone(), resources.clone(), reporter.clone()),
            finalizer: Finalizer::new(&sdk, config.clone(), resources.clone(), reporter),
            clock: Arc::new(HandlerClock::default()),
            crashes: Arc::new(Crashes {
                before_handler: AtomicUsize::new(options.crash_before_handler),
                after_handler: AtomicUsize::new(options.crash_after_handler),
            }),
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
        let outcome = resync_sync_start::handler(&self.sync_start, lambda_event(event)).await;
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
        let mut event = lambda_event(event);
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
        let (started, record, closed_at, invocations) = self.polling(sync, start, progress).await?;
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
        let (_, record, _, invocations) = self
            .polling(sync, async { Ok(((), run_id.clone())) }, progress)
            .await?;
        Ok((record, invocations))
    }

    /// With the destination's pollers running: awaits `start` (which names the run),
    /// then runs the finalizer until that run closes; stops the pollers. Returns what
    /// `start` gave, the closed run's record, when it closed and the invocations made.
    async fn polling<T>(
        &self,
        sync: &SyncId,
        start: impl std::future::Future<Output = anyhow::Result<(T, RunId)>>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<(T, RunRecord, Instant, usize)> {
        let pollers = self.pollers(sync)?;
        let result = async {
            let (started, run_id) = start.await?;
            let (record, closed_at) = self
                .finalize_until_closed(sync, &run_id, &pollers, progress)
                .await?;
            anyhow::Ok((started, record, closed_at))
        }
        .await;
        let invocations = pollers.stop().await?;
        let (started, record, closed_at) = result?;
        progress(Progress {
            settled: record.enqueued,
            enqueued: record.enqueued,
        });
        Ok((started, record, closed_at, invocations))
    }

    /// Starts the pollers of the sync's destination queue.
    fn pollers(&self, sync: &SyncId) -> anyhow::Result<Pollers> {
        let sync_config = self
            .config
            .sync(sync)
            .with_context(|| format!("no sync '{sync}' in the configuration"))?;
        let delivery = self.deliveries[&sync_config.destination].clone();
        let stop = Arc::new(AtomicBool::new(false));
        let invocations = Arc::new(AtomicUsize::new(0));
        let tasks = (0..delivery.destination_config.concurrency)
            .map(|_| {
                tokio::spawn(poll(
                    delivery.clone(),
                    stop.clone(),
                    invocations.clone(),
                    self.crashes.clone(),
                    self.clock.clone(),
                    self.options.batching_window,
                    self.options.receives_in_flight.max(1),
                ))
            })
            .collect();
        Ok(Pollers {
            stop,
            invocations,
            tasks,
        })
    }

    /// Runs the finalizer every `finalize_every`, and at once on a run-settled notice,
    /// until the run closes; returns its record and when the finalizer saw it closed.
    async fn finalize_until_closed(
        &self,
        sync: &SyncId,
        run_id: &RunId,
        pollers: &Pollers,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<(RunRecord, Instant)> {
        let mut notices = Notices {
            queue: self.notices.clone(),
            pending: None,
        };
        loop {
            match self.finalize(sync).await? {
                SyncReport::Closed { run_id: closed, .. } if &closed == run_id => break,
                SyncReport::InFlight {
                    settled, enqueued, ..
                } => progress(Progress { settled, enqueued }),
                SyncReport::Idle { .. } => break,
                SyncReport::Abandoned { .. } => bail!("run {run_id} was abandoned"),
                SyncReport::Closed { .. } => {}
            }
            if pollers.tasks.iter().any(|poller| poller.is_finished()) {
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
        Ok((record, closed_at))
    }
}

type NoticeReceive = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<aws_sdk_sqs::types::Message>, AwsError>> + Send,
    >,
>;

/// The local finalizer's wait on the run-settled notice queue (see [`provision`]).
struct Notices {
    queue: WorkQueue,
    /// A long poll still in flight when a wait ended: it carries over to the next wait
    /// (dropping it could hide a notice for the queue's visibility timeout).
    pending: Option<NoticeReceive>,
}

impl Notices {
    /// Until `until`, or sooner when a notice arrives (it is consumed). A notice only
    /// hurries the finalizer: when the queue cannot be read, the wait runs to `until`.
    async fn wait(&mut self, until: tokio::time::Instant) {
        loop {
            let receive = self.pending.get_or_insert_with(|| {
                let queue = self.queue.clone();
                Box::pin(async move { queue.receive(10, Duration::from_secs(1)).await })
            });
            let received = tokio::select! {
                received = receive => received,
                () = tokio::time::sleep_until(until) => return,
            };
            self.pending = None;
            let messages = match received {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "reading run-settled notices failed; waiting for the tick");
                    tokio::time::sleep_until(until).await;
                    return;
                }
            };
            let receipts: Vec<String> = messages
                .into_iter()
                .filter_map(|m| m.receipt_handle)
                .collect();
            if !receipts.is_empty() {
                if let Err(err) = self.queue.delete(&receipts).await {
                    tracing::warn!(error = %err, "deleting run-settled notices failed; they come back as extra finalizer passes");
                }
                return;
            }
        }
    }
}

/// The running pollers of one destination queue.
struct Pollers {
    stop: Arc<AtomicBool>,
    invocations: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Pollers {
    /// Stops the pollers (each finishes its current batch and long poll) and returns
    /// the delivery invocations they made.
    async fn stop(self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        for poller in self.tasks {
            poller.await.context("a delivery poller panicked")??;
        }
        Ok(self.invocations.load(Ordering::SeqCst))
    }
}

fn lambda_event<T>(payload: T) -> LambdaEvent<T> {
    let mut context = Context::default();
    context.request_id = uuid::Uuid::new_v4().to_string();
    context.invoked_function_arn =
        "arn:aws:lambda:us-east-1:000000000000:function:resync-local".into();
    LambdaEvent::new(payload, context)
}

/// One poller of an event source mapping: gathers a batch (up to the mapping's batch
/// size, within the batching window), invokes delivery with a real `SqsEvent`, and
/// deletes exactly what the partial batch response did not list. An empty or unknown
/// `itemIdentifier`, or a function error, fails the whole batch: nothing is deleted and
/// the messages return when their visibility timeout ends.
async fn poll(
    delivery: Arc<Delivery>,
    stop: Arc<AtomicBool>,
    invocations: Arc<AtomicUsize>,
    crashes: Arc<Crashes>,
    clock: Arc<HandlerClock>,
    window: Duration,
    receives_in_flight: usize,
) -> anyhow::Result<()> {
    let settings = QueueSettings::for_destination(&delivery.destination_config);
    let batch_size = settings.event_batch_size as usize;
    let queue = &delivery.queue;
    let queue_arn = format!(
        "arn:aws:sqs:us-east-1:000000000000:{}",
        queue.url().rsplit('/').next().unwrap_or_default()
    );
    let mut running: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    // Receives in flight. They outlive the batch that asked for them: when the window
    // ends first, what they bring starts the next batch (dropping one could lose the
    // messages it took for a whole visibility timeout).
    let mut receiving = futures::stream::FuturesUnordered::new();
    // Receives in flight at once: one while the queue looks empty (an idle poller costs
    // one long poll a second), more while receives come back full, as Lambda's pollers
    // scale with the backlog.
    let mut fan_out = 1;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && receiving.is_empty() {
            break;
        }
        let mut messages = Vec::new();
        let mut window_ends: Option<tokio::time::Instant> = None;
        while messages.len() < batch_size {
            if !stopping {
                // Long polls, as Lambda's pollers do; never more than the batch size.
                while receiving.len() < fan_out
                    && messages.len() + 10 * receiving.len() < batch_size
                {
                    let want = (batch_size - messages.len() - 10 * receiving.len()).min(10);
                    let queue = queue.clone();
                    receiving.push(async move {
                        queue.receive(want as i32, Duration::from_secs(1)).await
                    });
                }
            }
            // The batch goes when it is full or its window ends, as Lambda invokes when
            // the batching window expires — not when the long poll in flight returns.
            let received = match window_ends {
                Some(end) => tokio::select! {
                    received = futures::StreamExt::next(&mut receiving) => received,
                    () = tokio::time::sleep_until(end) => break,
                },
                None => futures::StreamExt::next(&mut receiving).await,
            };
            let Some(received) = received else { break };
            let received = received?;
            fan_out = if received.len() == 10 {
                receives_in_flight
            } else {
                1
            };
            messages.extend(received);
            if !messages.is_empty() && window_ends.is_none() {
                window_ends = Some(tokio::time::Instant::now() + window);
            }
            if stop.load(Ordering::SeqCst) && !stopping {
                break;
            }
        }
        if messages.is_empty() {
            continue;
        }
        // The next batch is gathered while this one's invocation runs, as Lambda's
        // pollers keep polling while functions run; at most one invocation per poller.
        if let Some(previous) = running.take() {
            previous.await.context("a delivery invocation panicked")??;
        }
        running = Some(tokio::spawn(invoke(
            delivery.clone(),
            messages,
            queue_arn.clone(),
            invocations.clone(),
            crashes.clone(),
            clock.clone(),
        )));
    }
    if let Some(previous) = running.take() {
        previous.await.context("a delivery invocation panicked")??;
    }
    Ok(())
}

/// One delivery invocation of a gathered batch, then the deletes the partial batch
/// response allows.
async fn invoke(
    delivery: Arc<Delivery>,
    messages: Vec<aws_sdk_sqs::types::Message>,
    queue_arn: String,
    invocations: Arc<AtomicUsize>,
    crashes: Arc<Crashes>,
    clock: Arc<HandlerClock>,
) -> anyhow::Result<()> {
    let event = sqs_event(messages, &queue_arn);
    let receipts: Vec<(String, String)> = event
        .records
        .iter()
        .filter_map(|m| Some((m.message_id.clone()?, m.receipt_handle.clone()?)))
        .collect();
    invocations.fetch_add(1, Ordering::SeqCst);
    if Crashes::take(&crashes.before_handler) {
        tracing::warn!("simulated crash before the handler ran");
        return Ok(());
    }
    let started = Instant::now();
    let response = resync_delivery::handler(&delivery, lambda_event(event)).await;
    clock.record("delivery", started.elapsed());
    if Crashes::take(&crashes.after_handler) {
        tracing::warn!("simulated crash: the invocation's response is lost");
        return Ok(());
    }
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(error = %err, "delivery invocation failed; the batch returns to the queue");
            return Ok(());
        }
    };
    let failed: HashSet<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let known = |id: &str| receipts.iter().any(|(known, _)| known == id);
    if failed.iter().any(|id| id.is_empty() || !known(id)) {
        tracing::error!(
            "partial batch response names an empty or unknown itemIdentifier; the whole batch fails"
        );
        return Ok(());
    }
    let to_delete: Vec<String> = receipts
        .into_iter()
        .filter(|(id, _)| !failed.contains(id.as_str()))
        .map(|(_, receipt)| receipt)
        .collect();
    delivery.queue.delete(&to_delete).await?;
    Ok(())
}

/// The `SqsEvent` Lambda would build for received messages.
pub fn sqs_event(
    messages: impl IntoIterator<Item = aws_sdk_sqs::types::Message>,
    queue_arn: &str,
) -> SqsEvent {
    let mut event = SqsEvent::default();
    for message in messages {
        let mut record = SqsMessage::default();
        record.message_id = message.message_id;
        record.receipt_handle = message.receipt_handle;
        record.body = message.body;
        record.md5_of_body = message.md5_of_body;
        record.event_source = Some("aws:sqs".into());
        record.event_source_arn = Some(queue_arn.to_owned());
        record.aws_region = Some("us-east-1".into());
        if let Some(attributes) = message.attributes {
            for (name, value) in attributes {
                let name = match name {
                    MessageSystemAttributeName::ApproximateReceiveCount => {
                        "ApproximateReceiveCount"
                    }
                    MessageSystemAttributeName::SentTimestamp => "SentTimestamp",
                    _ => continue,
                };
                record.attributes.insert(name.into(), value);
            }
        }
        event.records.push(record);
    }
    event
}

/// Invokes a handler with an event as Lambda would (fresh request id).
pub fn lambda_invocation<T>(payload: T) -> LambdaEvent<T> {
    lambda_event(payload)
}

/// Runs every sync on its `rate(...)` schedule until `stop` (the local stand-in for the
/// EventBridge rules). `cron(...)` schedules are run once at start.
pub async fn schedule(
    runtime: &LocalRuntime,
    stop: Arc<AtomicBool>,
    on_run: &(dyn Fn(&SyncId, anyhow::Result<LocalRun>) + Sync),
) {
    let mut next: HashMap<SyncId, Instant> = runtime
        .config
        .syncs
        .iter()
        .map(|s| (s.id.clone(), Instant::now()))
        .collect();
    while !stop.load(Ordering::SeqCst) {
        for sync in &runtime.config.syncs {
            let due = next.get(&sync.id).is_some_and(|at| Instant::now() >= *at);
            if !due {
                continue;
            }
            let result = runtime.run_sync(&sync.id, &|_| {}).await;
            on_run(&sync.id, result);
            match resync_shared::config::rate_period(&sync.schedule) {
                Some(period) => {
                    next.insert(sync.id.clone(), Instant::now() + period);
                }
                None => {
                    next.remove(&sync.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
