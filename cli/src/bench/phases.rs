//! The measured phases: the emulator's own SQS ceiling, the clean pipeline run, and
//! the retry run with the next run after it (the memory case is in `memory`).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt;
use resync_shared::{aws::queue::WorkQueue, SyncId};

use super::{
    fixture::{key, Bench},
    process::{perf_control, process_cpu_seconds},
    BenchOptions,
};
use crate::{aws::RequestCounts, destination_server::RowBehaviour};

/// One ceiling sample.
#[derive(Debug, Clone, Copy)]
pub(super) struct CeilingSample {
    /// Messages per second.
    pub(super) msgs_per_s: f64,
    /// CPU microseconds (this process, all threads) per message.
    pub(super) cpu_us_per_msg: f64,
}

/// The ceiling, from a sample before and one after the pipeline run.
pub(super) struct Ceiling {
    /// The samples' messages per second, before and after.
    pub(super) samples_msgs_per_s: [f64; 2],
    /// Their mean.
    pub(super) msgs_per_s: f64,
    /// The mean of their CPU microseconds per message.
    pub(super) cpu_us_per_msg: f64,
}

impl Ceiling {
    /// The two samples taken around the pipeline run.
    pub(super) fn around(before: CeilingSample, after: CeilingSample) -> Self {
        Self {
            samples_msgs_per_s: [before.msgs_per_s, after.msgs_per_s],
            msgs_per_s: (before.msgs_per_s + after.msgs_per_s) / 2.0,
            cpu_us_per_msg: (before.cpu_us_per_msg + after.cpu_us_per_msg) / 2.0,
        }
    }
}

/// One ceiling sample of `messages` messages.
pub(super) async fn measure_ceiling(
    sdk: &aws_config::SdkConfig,
    messages: usize,
) -> anyhow::Result<CeilingSample> {
    perf_control("ceiling", "enable");
    let cpu_before = process_cpu_seconds();
    let msgs_per_s = ceiling(sdk, messages, 16).await?;
    perf_control("ceiling", "disable");
    let cpu_us_per_msg = (process_cpu_seconds() - cpu_before) * 1e6 / messages as f64;
    Ok(CeilingSample {
        msgs_per_s,
        cpu_us_per_msg,
    })
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

/// The clean pipeline run as measured.
pub(super) struct PipelineRun {
    /// Wall time from sync-start to the closed run, seconds.
    pub(super) elapsed_s: f64,
    /// CPU time of this process over it, seconds.
    pub(super) cpu_seconds: f64,
    /// Where the wall time went (see [`super::BenchReport::pipeline_phases_s`]).
    pub(super) phases_s: BTreeMap<&'static str, f64>,
    /// Every request of the run.
    pub(super) requests: RequestCounts,
    /// Handler time per function: (invocations, seconds).
    pub(super) handler_seconds: BTreeMap<&'static str, (u64, f64)>,
    /// The longest single invocation per function, in seconds.
    pub(super) longest_invocation_s: BTreeMap<&'static str, f64>,
    /// Rows the run delivered (all of them).
    pub(super) delivered: u64,
    /// Destination calls of the run.
    pub(super) destination_calls: u64,
}

/// The clean run, S3 to destination to closed run, with its requests and handler time
/// counted from zero.
pub(super) async fn pipeline_run(
    bench: &Bench,
    options: &BenchOptions,
) -> anyhow::Result<PipelineRun> {
    let runtime = &bench.runtime;
    bench.export("clean", options.rows).await?;
    bench.counter.reset();
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
    let requests = bench.counter.snapshot();
    let handler_seconds = runtime.clock.snapshot();
    let longest_invocation_s = runtime.clock.longest();
    let counts = run.record.counts.context("the clean run has no counts")?;
    anyhow::ensure!(
        counts.delivered == options.rows as u64,
        "clean run delivered {} of {}",
        counts.delivered,
        options.rows
    );
    let stats = bench.destination.stats();
    let planning_s = handler_seconds.get("sync-start").map_or(0.0, |(_, s)| *s);
    let last_request_s = stats
        .last_request_at
        .map_or(elapsed, |at| at.duration_since(started).as_secs_f64());
    let pipeline_phases_s = BTreeMap::from([
        ("1 planning", planning_s),
        ("2 delivering", last_request_s - planning_s),
        ("3 closing", elapsed - last_request_s),
    ]);
    Ok(PipelineRun {
        elapsed_s: elapsed,
        cpu_seconds: pipeline_cpu_seconds,
        phases_s: pipeline_phases_s,
        requests,
        handler_seconds,
        longest_invocation_s,
        delivered: counts.delivered,
        destination_calls: stats.requests[0],
    })
}

/// The retry run and the run after it, as the destination saw them.
pub(super) struct RetryRun {
    /// Rows of the retry case.
    pub(super) rows: usize,
    /// Rows that fail `fail_times` attempts before they succeed.
    pub(super) failing: usize,
    /// Rows the destination received in the retry run.
    pub(super) rows_sent: u64,
    /// Rows the destination received in the next run.
    pub(super) next_run_rows_sent: u64,
    /// Delivered rows the next run sent again.
    pub(super) next_run_resent_delivered_rows: u64,
}

/// Retry efficiency: a run in which a share of rows fails a few attempts, then the next
/// run (which may send only failed rows).
pub(super) async fn retry_run(bench: &Bench, options: &BenchOptions) -> anyhow::Result<RetryRun> {
    let destination = &bench.destination;
    destination.next_run();
    let retry_rows = options.rows.min(20_000);
    let failing = ((retry_rows as f64) * options.fail_share).round() as usize;
    bench.export("retry", retry_rows).await?;
    for i in 0..failing {
        destination.set(
            key("retry", i * retry_rows / failing.max(1)),
            RowBehaviour::Locked {
                until_attempt: Some(options.fail_times),
            },
        );
    }
    bench
        .runtime
        .run_sync(&SyncId::parse("retry")?, &|_| {})
        .await?;
    let retry_sent = destination.stats().rows_received[1];
    destination.next_run();
    bench
        .runtime
        .run_sync(&SyncId::parse("retry")?, &|_| {})
        .await?;
    let after = destination.stats();
    Ok(RetryRun {
        rows: retry_rows,
        failing,
        rows_sent: retry_sent,
        next_run_rows_sent: after.rows_received[2],
        next_run_resent_delivered_rows: after.received_after_delivered,
    })
}
