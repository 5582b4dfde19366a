//! `resync bench`: throughput against the emulator's own ceiling, AWS requests and
//! cost per row, retry efficiency and sync-start's peak memory — all measured in one
//! process on the embedded emulator, with a local destination that accepts everything.
//!
//! Requests are counted at the SDK's HTTP layer ([`crate::aws::RequestCounter`]), not
//! estimated; DynamoDB capacity is derived from the sizes of the items written and read
//! (the emulator returns no `ConsumedCapacity`).

use std::{
    collections::BTreeMap,
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt;
use resync_shared::{
    aws::queue::WorkQueue, config::Config, ledger::FailedRow, outcome::RowError, PrimaryKey, RunId,
    SyncId,
};
use serde::Serialize;

use crate::{
    aws::{RequestCounter, RequestCounts},
    destination_server::{DestinationServer, RowBehaviour},
    local::{LocalOptions, LocalRuntime},
};

/// AWS list prices used for the cost figures (us-east-1, on-demand, as published in
/// the providers' 2025 price lists; check the current pages before relying on them).
pub mod prices {
    /// SQS standard queue, per request (64 KB chunk).
    pub const SQS_REQUEST: f64 = 0.40 / 1e6;
    /// DynamoDB on-demand write request unit.
    pub const DYNAMODB_WRITE_UNIT: f64 = 0.625 / 1e6;
    /// DynamoDB on-demand read request unit.
    pub const DYNAMODB_READ_UNIT: f64 = 0.125 / 1e6;
    /// S3 GET/HEAD.
    pub const S3_GET: f64 = 0.0004 / 1e3;
    /// S3 PUT/LIST.
    pub const S3_LIST: f64 = 0.005 / 1e3;
    /// Lambda request.
    pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
    /// Lambda arm64 GB-second.
    pub const LAMBDA_GB_SECOND: f64 = 0.000_013_333_4;
    /// EventBridge custom event / SNS publish (per event).
    pub const EVENT: f64 = 1.00 / 1e6;
    /// Step Functions Standard state transition.
    pub const SFN_TRANSITION: f64 = 0.025 / 1e3;
    /// The date these prices were taken from the published price lists.
    pub const AS_OF: &str = "2025 public price lists (us-east-1)";
}

/// Memory of each function, GB (what a deployment configures).
const SYNC_START_GB: f64 = 0.128;
const DELIVERY_GB: f64 = 0.128;
const FINALIZER_GB: f64 = 0.128;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rows of the clean pipeline run.
    pub rows: usize,
    /// Share of rows that fail in the retry case.
    pub fail_share: f64,
    /// Attempts each failing row fails before it succeeds.
    pub fail_times: u32,
    /// Rows of the memory case (0 skips it).
    pub memory_rows: usize,
    /// Failed-row index keys of the memory case.
    pub memory_failed_keys: usize,
    /// Rows per destination request.
    pub batch_size: usize,
    /// Delivery concurrency (pollers).
    pub concurrency: u32,
}

/// The measured figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Where it ran.
    pub machine: String,
    /// Build profile.
    pub profile: &'static str,
    /// Rows of the clean run.
    pub rows: usize,
    /// Raw SQS send + receive + delete throughput, messages per second.
    pub ceiling_msgs_per_s: f64,
    /// The two ceiling samples (before and after the pipeline run) averaged above.
    pub ceiling_samples_msgs_per_s: [f64; 2],
    /// Clean run, S3 to destination to closed run, rows per second.
    pub pipeline_rows_per_s: f64,
    /// pipeline / ceiling.
    pub ratio: f64,
    /// CPU time of this process (all threads: emulator, destination, functions) per
    /// ceiling message, microseconds.
    pub ceiling_cpu_us_per_msg: f64,
    /// CPU time of this process per pipeline row, microseconds.
    pub pipeline_cpu_us_per_row: f64,
    /// Cores busy on average during the pipeline run (CPU time / wall time).
    pub pipeline_cores_busy: f64,
    /// Where the pipeline's wall time went, seconds: sync-start's handler, then until
    /// the destination's last request, then until the run closed.
    pub pipeline_phases_s: BTreeMap<&'static str, f64>,
    /// SQS requests per row on the clean run.
    pub sqs_requests_per_row: f64,
    /// DynamoDB requests per delivered row.
    pub dynamodb_requests_per_delivered_row: f64,
    /// DynamoDB write units per delivered row.
    pub dynamodb_write_units_per_delivered_row: f64,
    /// DynamoDB read units per delivered row.
    pub dynamodb_read_units_per_delivered_row: f64,
    /// S3 requests of the clean run.
    pub s3_requests: u64,
    /// Every request of the clean run by operation.
    pub requests: RequestCounts,
    /// Destination calls of the clean run.
    pub destination_calls: u64,
    /// ⌈rows / batch⌉.
    pub destination_calls_ideal: u64,
    /// Retry case: rows, failing rows, attempts each fails.
    pub retry_rows: usize,
    /// Failing rows of the retry case.
    pub retry_failing_rows: usize,
    /// Rows the destination received in the retry run.
    pub retry_destination_rows_sent: u64,
    /// rows + failing × fail_times.
    pub retry_destination_rows_ideal: u64,
    /// Rows the destination received in the next run (only failed rows may be sent).
    pub next_run_rows_sent: u64,
    /// Delivered rows sent again by the next run (must be 0).
    pub next_run_resent_delivered_rows: u64,
    /// Memory case: peak resident memory of sync-start, MB.
    pub sync_start_peak_rss_mb: Option<f64>,
    /// Memory case: rows and failed keys.
    pub memory_case: Option<(usize, usize)>,
    /// Handler time per function on the clean run: (invocations, seconds).
    pub handler_seconds: BTreeMap<&'static str, (u64, f64)>,
    /// resync's cost per million rows.
    pub usd_per_million_rows: f64,
    /// Cost breakdown per million rows.
    pub usd_per_million_rows_breakdown: BTreeMap<&'static str, f64>,
    /// One Step Functions Standard execution per row (4 transitions) + its Lambda task.
    pub step_functions_per_row_usd_per_million_rows: f64,
    /// One Lambda invocation per row (same handler time per row as measured).
    pub lambda_per_row_usd_per_million_rows: f64,
    /// Where the prices come from.
    pub prices_as_of: &'static str,
}

fn bench_yaml(url: &str, batch_size: usize, concurrency: u32) -> String {
    format!(
        r#"
destinations:
  - id: bench
    kind: webhook
    batch_size: {batch_size}
    concurrency: {concurrency}
    retry: {{ max_attempts: 5, base_delay_secs: 1, max_delay_secs: 2 }}
    webhook: {{ url: "{url}" }}
syncs:
  - id: clean
    source: {{ prefix: exports/clean/ }}
    primary_key: id
    destination: bench
    schedule: rate(1 hour)
  - id: retry
    source: {{ prefix: exports/retry/ }}
    primary_key: id
    destination: bench
    schedule: rate(1 hour)
  - id: memory
    source: {{ prefix: exports/memory/ }}
    primary_key: id
    destination: bench
    schedule: rate(1 hour)
"#
    )
}

fn key(case: &str, i: usize) -> String {
    format!("{case}-{i:08}")
}

async fn export(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    case: &str,
    rows: usize,
) -> anyhow::Result<()> {
    let prefix = format!("exports/{case}/");
    for (part, start) in (0..rows).step_by(100_000).enumerate() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in start..(start + 100_000).min(rows) {
            writeln!(
                encoder,
                r#"{{"id":"{}","email":"user{i}@example.com","plan":"pro","mrr":{}}}"#,
                key(case, i),
                i % 1000
            )?;
        }
        s3.put_object()
            .bucket(bucket)
            .key(format!("{prefix}part-{part:05}.jsonl.gz"))
            .body(encoder.finish()?.into())
            .send()
            .await?;
    }
    Ok(())
}

/// One ceiling sample: messages per second and CPU microseconds per message.
async fn measure_ceiling(
    sdk: &aws_config::SdkConfig,
    messages: usize,
) -> anyhow::Result<(f64, f64)> {
    perf_control("ceiling", "enable");
    let cpu_before = process_cpu_seconds();
    let msgs_per_s = ceiling(sdk, messages, 16).await?;
    perf_control("ceiling", "disable");
    let cpu_us_per_msg = (process_cpu_seconds() - cpu_before) * 1e6 / messages as f64;
    Ok((msgs_per_s, cpu_us_per_msg))
}

/// Raw SQS throughput of the same client against the same emulator: send in batches of
/// 10, receive 10 at a time and delete in batches, with `concurrency` workers.
async fn ceiling(
    sdk: &aws_config::SdkConfig,
    messages: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    sqs.create_queue()
        .queue_name("resync-bench-ceiling")
        .send()
        .await?;
    let queue = WorkQueue::resolve(sqs, "resync-bench-ceiling").await?;
    let body = r#"{"run_id":"r","sync_id":"s","key":"ceiling-00000000","row":{"id":"ceiling-00000000","email":"user@example.com","plan":"pro","mrr":1}}"#.to_owned();
    let batches = messages.div_ceil(10);
    let started = Instant::now();
    futures::stream::iter(0..batches)
        .map(|_| {
            let queue = queue.clone();
            let bodies = vec![body.clone(); 10];
            async move { queue.send_batch(&bodies).await }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let total = batches * 10;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..concurrency).map(|_| {
        let queue = queue.clone();
        let received = received.clone();
        async move {
            while received.load(std::sync::atomic::Ordering::SeqCst) < total {
                let messages = queue.receive(10, Duration::ZERO).await?;
                if messages.is_empty() {
                    continue;
                }
                received.fetch_add(messages.len(), std::sync::atomic::Ordering::SeqCst);
                let receipts: Vec<String> = messages
                    .into_iter()
                    .filter_map(|m| m.receipt_handle)
                    .collect();
                queue.delete(&receipts).await?;
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(workers).await?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores, {memory_gb:.0} GiB, {cpu}")
}

/// Runs every case.
pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let emulator = resync_emulator::Emulator::start().await?;
    let counter = RequestCounter::default();
    let sdk = counter.instrument(&crate::aws::for_endpoint(emulator.endpoint_url()).await);
    let destination = DestinationServer::start(None).await?;
    let yaml = bench_yaml(&destination.url(), options.batch_size, options.concurrency);
    let config = Config::from_yaml(&yaml)?;
    let runtime = LocalRuntime::new(
        sdk.clone(),
        config.clone(),
        "resync-bench",
        LocalOptions {
            batching_window: Duration::from_secs(1),
            ..LocalOptions::default()
        },
    )
    .await?;
    let s3 = crate::aws::s3_client(&sdk);
    let bucket = runtime.resources.source_bucket.clone();

    // 1. Ceiling, measured once before and once after the pipeline run: the machine's
    // speed drifts between seconds, and one sample on one side would tilt the ratio.
    let ceiling_messages = options.rows.min(50_000);
    let ceiling_before = measure_ceiling(&sdk, ceiling_messages).await?;

    // 2–3. Clean pipeline run, counted.
    export(&s3, &bucket, "clean", options.rows).await?;
    counter.reset();
    runtime.clock.reset();
    let clean = SyncId::parse("clean")?;
    perf_control("pipeline", "enable");
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let run = runtime.run_sync(&clean, &|_| {}).await?;
    // The pipeline ends when the run is closed (not when the pollers have stopped).
    let elapsed = run.closed_at.duration_since(started).as_secs_f64();
    let pipeline_cpu_seconds = process_cpu_seconds() - cpu_before;
    perf_control("pipeline", "disable");
    let requests = counter.snapshot();
    let handler_seconds = runtime.clock.snapshot();
    let counts = run.record.counts.context("the clean run has no counts")?;
    anyhow::ensure!(
        counts.delivered == options.rows as u64,
        "clean run delivered {} of {}",
        counts.delivered,
        options.rows
    );
    let stats = destination.stats();
    let planning_s = handler_seconds.get("sync-start").map_or(0.0, |(_, s)| *s);
    let last_request_s = stats
        .last_request_at
        .map_or(elapsed, |at| at.duration_since(started).as_secs_f64());
    let pipeline_phases_s = BTreeMap::from([
        ("1 planning", planning_s),
        ("2 delivering", last_request_s - planning_s),
        ("3 closing", elapsed - last_request_s),
    ]);
    let delivered = counts.delivered.max(1) as f64;
    let rows = options.rows.max(1) as f64;
    let pipeline_rows_per_s = options.rows as f64 / elapsed;
    let ceiling_after = measure_ceiling(&sdk, ceiling_messages).await?;
    let ceiling_samples_msgs_per_s = [ceiling_before.0, ceiling_after.0];
    let ceiling_msgs_per_s = (ceiling_before.0 + ceiling_after.0) / 2.0;
    let ceiling_cpu_us_per_msg = (ceiling_before.1 + ceiling_after.1) / 2.0;

    // 4. Retry efficiency.
    destination.next_run();
    let retry_rows = options.rows.min(20_000);
    let failing = ((retry_rows as f64) * options.fail_share).round() as usize;
    export(&s3, &bucket, "retry", retry_rows).await?;
    for i in 0..failing {
        destination.set(
            key("retry", i * retry_rows / failing.max(1)),
            RowBehaviour::Locked {
                until_attempt: Some(options.fail_times),
            },
        );
    }
    runtime.run_sync(&SyncId::parse("retry")?, &|_| {}).await?;
    let retry_sent = destination.stats().rows_received[1];
    destination.next_run();
    runtime.run_sync(&SyncId::parse("retry")?, &|_| {}).await?;
    let after = destination.stats();

    // 5. Memory of sync-start in its own process.
    let (sync_start_peak_rss_mb, memory_case) = if options.memory_rows > 0 {
        let peak = memory_case(
            &runtime,
            &s3,
            &bucket,
            emulator.endpoint_url(),
            &yaml,
            options,
        )
        .await?;
        (
            Some(peak),
            Some((options.memory_rows, options.memory_failed_keys)),
        )
    } else {
        (None, None)
    };

    // 6. Cost per million rows.
    let per_row = |n: u64| n as f64 / rows;
    let gb_seconds = |name: &str, gb: f64| handler_seconds.get(name).map_or(0.0, |(_, s)| s * gb);
    let invocations: u64 = handler_seconds.values().map(|(n, _)| n).sum();
    let s3_gets = requests.by_operation.get("s3.GET").copied().unwrap_or(0);
    let s3_requests = requests.service("s3");
    let mut breakdown = BTreeMap::new();
    breakdown.insert(
        "sqs",
        per_row(requests.service("sqs")) * prices::SQS_REQUEST * 1e6,
    );
    breakdown.insert(
        "dynamodb",
        (per_row(requests.dynamodb_write_units) * prices::DYNAMODB_WRITE_UNIT
            + per_row(requests.dynamodb_read_units) * prices::DYNAMODB_READ_UNIT)
            * 1e6,
    );
    breakdown.insert(
        "s3",
        (per_row(s3_gets) * prices::S3_GET + per_row(s3_requests - s3_gets) * prices::S3_LIST)
            * 1e6,
    );
    breakdown.insert(
        "lambda",
        (per_row(invocations) * prices::LAMBDA_REQUEST
            + (gb_seconds("sync-start", SYNC_START_GB)
                + gb_seconds("delivery", DELIVERY_GB)
                + gb_seconds("finalizer", FINALIZER_GB))
                / rows
                * prices::LAMBDA_GB_SECOND)
            * 1e6,
    );
    breakdown.insert(
        "events",
        per_row(requests.service("events") + requests.service("sns")) * prices::EVENT * 1e6,
    );
    let usd_per_million_rows = breakdown.values().sum();
    let delivery_seconds_per_row = handler_seconds
        .get("delivery")
        .map_or(0.0, |(_, s)| s / rows);
    // One invocation per row: the same per-row handler time, billed in 1 ms steps.
    let lambda_per_row = prices::LAMBDA_REQUEST
        + (delivery_seconds_per_row.max(0.001)) * DELIVERY_GB * prices::LAMBDA_GB_SECOND;
    let lambda_per_row_usd_per_million_rows = (lambda_per_row + 3.0 * prices::SQS_REQUEST) * 1e6;
    let step_functions_per_row_usd_per_million_rows =
        (4.0 * prices::SFN_TRANSITION + lambda_per_row) * 1e6;

    Ok(BenchReport {
        machine: machine(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rows: options.rows,
        ceiling_msgs_per_s,
        ceiling_samples_msgs_per_s,
        pipeline_rows_per_s,
        ratio: pipeline_rows_per_s / ceiling_msgs_per_s,
        ceiling_cpu_us_per_msg,
        pipeline_cpu_us_per_row: pipeline_cpu_seconds * 1e6 / rows,
        pipeline_cores_busy: pipeline_cpu_seconds / elapsed,
        pipeline_phases_s,
        sqs_requests_per_row: per_row(requests.service("sqs")),
        dynamodb_requests_per_delivered_row: requests.service("dynamodb") as f64 / delivered,
        dynamodb_write_units_per_delivered_row: requests.dynamodb_write_units as f64 / delivered,
        dynamodb_read_units_per_delivered_row: requests.dynamodb_read_units as f64 / delivered,
        s3_requests,
        destination_calls: stats.requests[0],
        destination_calls_ideal: options.rows.div_ceil(options.batch_size) as u64,
        retry_rows,
        retry_failing_rows: failing,
        retry_destination_rows_sent: retry_sent,
        retry_destination_rows_ideal: (retry_rows + failing * options.fail_times as usize) as u64,
        next_run_rows_sent: after.rows_received[2],
        next_run_resent_delivered_rows: after.received_after_delivered,
        sync_start_peak_rss_mb,
        memory_case,
        handler_seconds,
        requests,
        usd_per_million_rows,
        usd_per_million_rows_breakdown: breakdown,
        step_functions_per_row_usd_per_million_rows,
        lambda_per_row_usd_per_million_rows,
        prices_as_of: prices::AS_OF,
    })
}

/// Prepares the memory case (source rows and failed keys) and runs sync-start in a
/// child process against this emulator; returns the child's peak RSS in MB.
async fn memory_case(
    runtime: &LocalRuntime,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    endpoint: &str,
    yaml: &str,
    options: &BenchOptions,
) -> anyhow::Result<f64> {
    export(s3, bucket, "memory", options.memory_rows).await?;
    let sync = SyncId::parse("memory")?;
    let run = RunId::parse("seed-run")?;
    // Half the failed keys are in the source (source values win), half are not (retried
    // from their stored payload).
    let failures: Vec<FailedRow> = (0..options.memory_failed_keys)
        .map(|i| {
            let index = if i % 2 == 0 { i } else { options.memory_rows + i };
            FailedRow {
                key: PrimaryKey::parse(key("memory", index)).expect("valid key"),
                error: RowError::retryable("UNABLE_TO_LOCK_ROW", "locked"),
                attempts: 5,
                prior_attempts: 0,
                carried_over: false,
                first_failed_at: None,
                payload: serde_json::json!({"id": key("memory", index), "email": "x@example.com", "plan": "pro", "mrr": 1})
                    .as_object()
                    .expect("object")
                    .clone()
                    .into(),
            }
        })
        .collect();
    let refs: Vec<&FailedRow> = failures.iter().collect();
    for chunk in refs.chunks(5_000) {
        runtime
            .index()
            .apply_run(&sync, &run, chunk, &[], &[])
            .await?;
    }
    drop(failures);
    let config_file = tempfile_path("resync-bench-config.yaml");
    std::fs::write(&config_file, yaml)?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .arg("bench-sync-start")
        .arg("--endpoint")
        .arg(endpoint)
        .arg("--config")
        .arg(&config_file)
        .arg("--stack")
        .arg(&runtime.resources.stack)
        .arg("--sync")
        .arg("memory")
        .output()
        .await?;
    let _ = std::fs::remove_file(&config_file);
    anyhow::ensure!(
        output.status.success(),
        "the sync-start process failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let expected = options.memory_rows + options.memory_failed_keys / 2;
    anyhow::ensure!(
        result["enqueued"] == expected,
        "the memory case enqueued {} rows, expected {expected}",
        result["enqueued"]
    );
    result["peak_rss_mb"].as_f64().context("no peak_rss_mb")
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}

/// The child side of the memory case: runs sync-start once and prints its peak RSS.
pub async fn sync_start_once(
    endpoint: &str,
    config: &std::path::Path,
    stack: &str,
    sync: &str,
) -> anyhow::Result<serde_json::Value> {
    let config = Arc::new(Config::load(config)?);
    let sdk = crate::aws::for_endpoint(endpoint).await;
    let resources = resync_shared::resources::Resources::for_stack(stack);
    let reporter = resync_shared::aws::report::Reporter::new(
        None,
        None,
        resync_shared::aws::report::MetricsSink::Memory(Default::default()),
    );
    let deps = resync_sync_start::SyncStart::new(&sdk, config, resources, reporter);
    let mut event: aws_lambda_events::eventbridge::EventBridgeEvent<
        resync_sync_start::SyncStartDetail,
    > = Default::default();
    event.id = Some("bench-memory".into());
    event.detail.sync_id = sync.to_owned();
    let started = Instant::now();
    let outcome = resync_sync_start::handler(&deps, crate::local::lambda_invocation(event)).await?;
    let enqueued = match outcome {
        resync_sync_start::SyncStartOutcome::Started { enqueued, .. } => enqueued,
        other => anyhow::bail!("sync-start did not start: {other:?}"),
    };
    Ok(serde_json::json!({
        "enqueued": enqueued,
        "seconds": started.elapsed().as_secs_f64(),
        "peak_rss_mb": peak_rss_mb(),
    }))
}

/// With `RESYNC_PERF_CTL=<fifo>`, tells `perf record --control fifo:<fifo> -D -1` to
/// sample only the pipeline run, or with `RESYNC_PERF_PHASE=ceiling` only the ceiling's
/// samples (to compare where a row's and a message's CPU go).
fn perf_control(phase: &str, command: &str) {
    let sampled = std::env::var("RESYNC_PERF_PHASE").unwrap_or_else(|_| "pipeline".into());
    if sampled != phase {
        return;
    }
    if let Some(path) = std::env::var_os("RESYNC_PERF_CTL") {
        if let Err(err) = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut fifo| writeln!(fifo, "{command}"))
        {
            eprintln!("RESYNC_PERF_CTL: {err}");
        }
    }
}

/// CPU time (user + system, all threads) this process has used, in seconds.
pub fn process_cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, counted after the parenthesised command name
    // (which may contain spaces), in clock ticks of 1/100 s on Linux.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime = fields.get(11)?.parse::<f64>().ok()?;
            let stime = fields.get(12)?.parse::<f64>().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Peak resident memory of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The report as a table.
pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("{name:<48} {value}\n"));
    line(
        "machine",
        format!("{} ({} build)", report.machine, report.profile),
    );
    line("rows", report.rows.to_string());
    line(
        "ceiling: SQS send+receive+delete (msg/s)",
        format!(
            "{:.0} (mean of {:.0} before, {:.0} after the pipeline)",
            report.ceiling_msgs_per_s,
            report.ceiling_samples_msgs_per_s[0],
            report.ceiling_samples_msgs_per_s[1]
        ),
    );
    line(
        "pipeline: S3 → destination → closed run (rows/s)",
        format!("{:.0}", report.pipeline_rows_per_s),
    );
    line("ratio pipeline / ceiling", format!("{:.2}", report.ratio));
    line(
        "CPU per message / row, all threads (µs)",
        format!(
            "ceiling {:.0} / pipeline {:.0} ({:.1} cores busy)",
            report.ceiling_cpu_us_per_msg,
            report.pipeline_cpu_us_per_row,
            report.pipeline_cores_busy
        ),
    );
    line(
        "pipeline phases (s)",
        report
            .pipeline_phases_s
            .iter()
            .map(|(phase, s)| format!("{} {s:.2}", &phase[2..]))
            .collect::<Vec<_>>()
            .join(", "),
    );
    line(
        "SQS requests per row",
        format!("{:.3}", report.sqs_requests_per_row),
    );
    line(
        "DynamoDB requests per delivered row",
        format!("{:.4}", report.dynamodb_requests_per_delivered_row),
    );
    line(
        "DynamoDB write units per delivered row",
        format!("{:.4}", report.dynamodb_write_units_per_delivered_row),
    );
    line(
        "DynamoDB read units per delivered row",
        format!("{:.4}", report.dynamodb_read_units_per_delivered_row),
    );
    line("S3 requests", report.s3_requests.to_string());
    line(
        "destination calls (ideal)",
        format!(
            "{} ({})",
            report.destination_calls, report.destination_calls_ideal
        ),
    );
    line(
        "retry run: rows sent (ideal)",
        format!(
            "{} ({}) for {} rows, {} failing",
            report.retry_destination_rows_sent,
            report.retry_destination_rows_ideal,
            report.retry_rows,
            report.retry_failing_rows
        ),
    );
    line(
        "next run: rows sent / delivered rows re-sent",
        format!(
            "{} / {}",
            report.next_run_rows_sent, report.next_run_resent_delivered_rows
        ),
    );
    if let (Some(rss), Some((rows, keys))) = (report.sync_start_peak_rss_mb, report.memory_case) {
        line(
            &format!("sync-start peak RSS, {rows} rows + {keys} failed keys"),
            format!("{rss:.1} MB"),
        );
    }
    line(
        "resync: USD per million rows",
        format!("{:.3}", report.usd_per_million_rows),
    );
    line(
        "  one Lambda invocation per row",
        format!("{:.3}", report.lambda_per_row_usd_per_million_rows),
    );
    line(
        "  one Step Functions execution per row",
        format!("{:.3}", report.step_functions_per_row_usd_per_million_rows),
    );
    line("prices", report.prices_as_of.to_owned());
    out
}
