//! `resync bench`: throughput against the emulator's own ceiling, AWS requests and
//! cost per row, retry efficiency and sync-start's peak memory — all measured in one
//! process on the embedded emulator, with a local destination that accepts everything.
//!
//! Requests are counted at the SDK's HTTP layer ([`crate::aws::RequestCounter`]), not
//! estimated; DynamoDB capacity is derived from the sizes of the items written and read
//! (the emulator returns no `ConsumedCapacity`).
//!
//! # Layout
//!
//! - `fixture`: the emulator, destination and runtime the phases run on, the bench's
//!   configuration and its source exports.
//! - `phases`: the measured phases: the SQS ceiling, the clean pipeline run, the retry
//!   run.
//! - `memory`: the memory case end to end, each function in a child process
//!   ([`function_once`]).
//! - `cost`: [`prices`] and the cost per million rows.
//! - `process`: this process's CPU time and peak memory, the machine, `perf` control.
//! - `table`: [`table`], the report as text.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::aws::RequestCounts;

mod cost;
mod fixture;
mod memory;
mod phases;
mod process;
mod table;

pub use cost::prices;
pub use memory::{function_once, BenchedFunction};
pub use process::{peak_rss_mb, process_cpu_seconds};
pub use table::table;

use cost::Cost;
use fixture::Bench;
use memory::MemoryCase;
use phases::{Ceiling, PipelineRun, RetryRun};

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
    /// Rows travel packed (the destination's `packing`).
    pub packing: bool,
}

/// One function's figures in [`BenchReport::functions`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FunctionFigures {
    /// Peak resident memory of the function's own process, MB (`None`: not measured).
    pub peak_rss_mb: Option<f64>,
    /// The longest single invocation, seconds of handler work.
    pub longest_invocation_s: f64,
    /// Invocations.
    pub invocations: u64,
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
    /// Whether rows travelled packed.
    pub packing: bool,
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
    /// SQS requests per row as AWS bills them (each started 64 KiB of a payload is one;
    /// packed segments are larger than one row's message).
    pub sqs_billed_requests_per_row: f64,
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
    /// Memory case: peak resident memory of sync-start, MB (as in `functions`).
    pub sync_start_peak_rss_mb: Option<f64>,
    /// Memory case: rows and failed keys.
    pub memory_case: Option<(usize, usize)>,
    /// Memory case: its failed keys written into the index by one index update, as a
    /// run's close writes its failures, in items per second (a timing).
    pub index_items_per_s: Option<f64>,
    /// Handler time per function on the clean run: (invocations, seconds).
    pub handler_seconds: BTreeMap<&'static str, (u64, f64)>,
    /// Per function (`sync-start`, `delivery`, `finalizer`): peak resident memory,
    /// invocations and the longest single invocation (seconds of handler work) of the
    /// memory case's run, each function in a process of its own; without a memory case,
    /// the clean run's invocations and longest invocation, and no memory (`null`: the
    /// functions share the benchmark's process).
    pub functions: BTreeMap<&'static str, FunctionFigures>,
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

/// Runs every case.
pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let bench = Bench::start(options).await?;

    // 1. Ceiling, measured once before and once after the pipeline run: the machine's
    // speed drifts between seconds, and one sample on one side would tilt the ratio.
    let ceiling_messages = options.rows.min(50_000);
    let ceiling_before = phases::measure_ceiling(&bench.sdk, ceiling_messages).await?;

    // 2–3. Clean pipeline run, counted.
    let pipeline = phases::pipeline_run(&bench, options).await?;
    let ceiling_after = phases::measure_ceiling(&bench.sdk, ceiling_messages).await?;
    let ceiling = Ceiling::around(ceiling_before, ceiling_after);

    // 4. Retry efficiency.
    let retry = phases::retry_run(&bench, options).await?;

    // 5. Memory of sync-start in its own process.
    let memory = memory::memory_case(&bench, options).await?;

    // 6. Cost per million rows.
    let rows = options.rows.max(1) as f64;
    let cost = cost::per_million_rows(&pipeline.requests, &pipeline.handler_seconds, rows);

    Ok(report(options, ceiling, pipeline, retry, memory, cost))
}

/// The report of the measured phases.
fn report(
    options: &BenchOptions,
    ceiling: Ceiling,
    pipeline: PipelineRun,
    retry: RetryRun,
    memory: Option<MemoryCase>,
    cost: Cost,
) -> BenchReport {
    let rows = options.rows.max(1) as f64;
    let delivered = pipeline.delivered.max(1) as f64;
    let requests = pipeline.requests;
    let pipeline_rows_per_s = options.rows as f64 / pipeline.elapsed_s;
    BenchReport {
        machine: process::machine(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rows: options.rows,
        packing: options.packing,
        ceiling_msgs_per_s: ceiling.msgs_per_s,
        ceiling_samples_msgs_per_s: ceiling.samples_msgs_per_s,
        pipeline_rows_per_s,
        ratio: pipeline_rows_per_s / ceiling.msgs_per_s,
        ceiling_cpu_us_per_msg: ceiling.cpu_us_per_msg,
        pipeline_cpu_us_per_row: pipeline.cpu_seconds * 1e6 / rows,
        pipeline_cores_busy: pipeline.cpu_seconds / pipeline.elapsed_s,
        pipeline_phases_s: pipeline.phases_s,
        sqs_requests_per_row: requests.service("sqs") as f64 / rows,
        sqs_billed_requests_per_row: requests.sqs_billed_requests as f64 / rows,
        dynamodb_requests_per_delivered_row: requests.service("dynamodb") as f64 / delivered,
        dynamodb_write_units_per_delivered_row: requests.dynamodb_write_units as f64 / delivered,
        dynamodb_read_units_per_delivered_row: requests.dynamodb_read_units as f64 / delivered,
        s3_requests: requests.service("s3"),
        destination_calls: pipeline.destination_calls,
        destination_calls_ideal: options.rows.div_ceil(options.batch_size) as u64,
        retry_rows: retry.rows,
        retry_failing_rows: retry.failing,
        retry_destination_rows_sent: retry.rows_sent,
        retry_destination_rows_ideal: (retry.rows + retry.failing * options.fail_times as usize)
            as u64,
        next_run_rows_sent: retry.next_run_rows_sent,
        next_run_resent_delivered_rows: retry.next_run_resent_delivered_rows,
        sync_start_peak_rss_mb: memory
            .as_ref()
            .and_then(|m| m.functions.get("sync-start"))
            .and_then(|f| f.peak_rss_mb),
        memory_case: memory.as_ref().map(|m| (m.rows, m.failed_keys)),
        index_items_per_s: memory.as_ref().map(|m| m.index_items_per_s),
        // The memory case's, each function in its own process; without it, the clean
        // run's (no memory measured: they share the benchmark's process).
        functions: match memory {
            Some(memory) => memory.functions,
            None => ["sync-start", "delivery", "finalizer"]
                .into_iter()
                .map(|name| {
                    let figures = FunctionFigures {
                        peak_rss_mb: None,
                        longest_invocation_s: pipeline
                            .longest_invocation_s
                            .get(name)
                            .copied()
                            .unwrap_or(0.0),
                        invocations: pipeline.handler_seconds.get(name).map_or(0, |(n, _)| *n),
                    };
                    (name, figures)
                })
                .collect(),
        },
        handler_seconds: pipeline.handler_seconds,
        requests,
        usd_per_million_rows: cost.usd_per_million_rows,
        usd_per_million_rows_breakdown: cost.breakdown,
        step_functions_per_row_usd_per_million_rows: cost
            .step_functions_per_row_usd_per_million_rows,
        lambda_per_row_usd_per_million_rows: cost.lambda_per_row_usd_per_million_rows,
        prices_as_of: prices::AS_OF,
    }
}
