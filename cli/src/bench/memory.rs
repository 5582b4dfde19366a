//! The memory case: sync-start's peak resident memory on many rows and failed keys,
//! measured in a child process (`resync bench-sync-start`) so that nothing else this
//! process holds counts; and how fast its failed keys were written into the index.

use std::{sync::Arc, time::Instant};

use anyhow::Context as _;
use resync_shared::{
    config::Config,
    domain::{ledger::FailedRow, outcome::RowError},
    PrimaryKey, RowFields, RunId, SyncId,
};

use super::{
    fixture::{key, Bench},
    process::peak_rss_mb,
    BenchOptions,
};

/// The memory case as measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemoryCase {
    /// Peak resident memory of sync-start, MB.
    pub(super) peak_rss_mb: f64,
    /// Failed-row index items written per second by one index update (as a run's close
    /// writes its failures).
    pub(super) index_items_per_s: f64,
    /// Source rows.
    pub(super) rows: usize,
    /// Keys in the failed-row index.
    pub(super) failed_keys: usize,
}

/// The memory case, unless `memory_rows` is 0.
pub(super) async fn memory_case(
    bench: &Bench,
    options: &BenchOptions,
) -> anyhow::Result<Option<MemoryCase>> {
    if options.memory_rows == 0 {
        return Ok(None);
    }
    let index_items_per_s = prepare(bench, options).await?;
    let peak_rss_mb = sync_start_peak_rss_mb(bench, options).await?;
    Ok(Some(MemoryCase {
        peak_rss_mb,
        index_items_per_s,
        rows: options.memory_rows,
        failed_keys: options.memory_failed_keys,
    }))
}

/// The row number of failed key `i`: the even ones are among the source's `rows` while
/// there are enough, the others are not in the source.
fn failed_key_index(i: usize, rows: usize) -> usize {
    if i.is_multiple_of(2) && i / 2 < rows {
        i / 2
    } else {
        rows + i
    }
}

/// Prepares the memory case: its source rows and its keys in the failed-row index.
/// Returns the index items written per second.
async fn prepare(bench: &Bench, options: &BenchOptions) -> anyhow::Result<f64> {
    bench.export("memory", options.memory_rows).await?;
    let sync = SyncId::parse("memory")?;
    let run = RunId::parse("seed-run")?;
    // Up to half the failed keys are in the source (source values win), the rest are not (retried
    // from their stored payload). Stored rows of about 1 KB, as wide as a warehouse row
    // with a few text columns: the index's payloads outweigh its keys tenfold.
    let notes = "n".repeat(900);
    let failures: Vec<FailedRow> = (0..options.memory_failed_keys)
        .map(|i| {
            let index = failed_key_index(i, options.memory_rows);
            FailedRow {
                key: PrimaryKey::parse(key("memory", index)).expect("valid key"),
                error: RowError::retryable("UNABLE_TO_LOCK_ROW", "locked"),
                attempts: 5,
                prior_attempts: 0,
                carried_over: false,
                first_failed_at: None,
                failed_at: None,
                payload: RowFields::from_text(
                    serde_json::json!({"id": key("memory", index), "email": "x@example.com", "plan": "pro", "mrr": 1, "notes": notes})
                        .to_string(),
                )
                .expect("an object"),
            }
        })
        .collect();
    // Written as a run's close writes its failures (one index update), and timed.
    let refs: Vec<&FailedRow> = failures.iter().collect();
    let started = Instant::now();
    bench
        .runtime
        .index()
        .apply_run(&sync, &run, &refs, &[], &[])
        .await?;
    Ok(refs.len() as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Runs sync-start in a child process against this emulator; returns the child's peak
/// RSS in MB.
async fn sync_start_peak_rss_mb(bench: &Bench, options: &BenchOptions) -> anyhow::Result<f64> {
    let config_file = tempfile_path("resync-bench-config.yaml");
    std::fs::write(&config_file, &bench.yaml)?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .arg("bench-sync-start")
        .arg("--endpoint")
        .arg(bench.emulator.endpoint_url())
        .arg("--config")
        .arg(&config_file)
        .arg("--stack")
        .arg(&bench.runtime.resources.stack)
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
    let expected = options.memory_rows
        + (0..options.memory_failed_keys)
            .filter(|&i| failed_key_index(i, options.memory_rows) >= options.memory_rows)
            .count();
    anyhow::ensure!(
        result["enqueued"] == expected,
        "the memory case enqueued {} rows, expected {expected}",
        result["enqueued"]
    );
    result["peak_rss_mb"].as_f64().context("no peak_rss_mb")
}

/// A path in the temporary folder, named for this process.
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
