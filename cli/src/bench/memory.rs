//! The memory case: a run of many rows and failed keys end to end, each function in a
//! child process of its own (`resync bench-function`: sync-start once, then delivery's
//! pollers until the queue drains, then the finalizer until the run closes) so that
//! nothing else this process holds counts in its peak resident memory; and how fast the
//! failed keys were written into the index.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use resync_shared::{
    config::Config,
    domain::{ledger::FailedRow, outcome::RowError},
    PrimaryKey, RowFields, RunId, SyncId,
};

use super::{
    fixture::{key, Bench},
    process::peak_rss_mb,
    BenchOptions, FunctionFigures,
};

/// The memory case as measured.
#[derive(Debug, Clone)]
pub(super) struct MemoryCase {
    /// Each function's figures, measured in its own process.
    pub(super) functions: BTreeMap<&'static str, FunctionFigures>,
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
    let expected = options.memory_rows
        + (0..options.memory_failed_keys)
            .filter(|&i| failed_key_index(i, options.memory_rows) >= options.memory_rows)
            .count();
    let mut functions = BTreeMap::new();
    for function in BenchedFunction::ALL {
        let result = in_child_process(bench, function).await?;
        let check = |field: &str, want: usize| {
            anyhow::ensure!(
                result[field] == want,
                "the memory case's {} counted {} {field} rows, expected {want}",
                function.name(),
                result[field]
            );
            Ok(())
        };
        match function {
            BenchedFunction::SyncStart => check("enqueued", expected)?,
            BenchedFunction::Delivery => {}
            BenchedFunction::Finalizer => {
                check("delivered", expected)?;
                check("failed", 0)?;
            }
        }
        functions.insert(
            function.name(),
            FunctionFigures {
                peak_rss_mb: result["peak_rss_mb"].as_f64(),
                longest_invocation_s: result["longest_invocation_s"].as_f64().unwrap_or(0.0),
                invocations: result["invocations"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(Some(MemoryCase {
        functions,
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

/// A function the memory case runs in a child process of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchedFunction {
    /// Plans the run once.
    SyncStart,
    /// Delivers until the queue drains.
    Delivery,
    /// Closes the run.
    Finalizer,
}

impl BenchedFunction {
    /// In the order a run uses them.
    const ALL: [Self; 3] = [Self::SyncStart, Self::Delivery, Self::Finalizer];

    /// As the report names it.
    fn name(self) -> &'static str {
        match self {
            Self::SyncStart => "sync-start",
            Self::Delivery => "delivery",
            Self::Finalizer => "finalizer",
        }
    }
}

/// Runs `function` in a child process against this emulator; returns what it printed.
async fn in_child_process(
    bench: &Bench,
    function: BenchedFunction,
) -> anyhow::Result<serde_json::Value> {
    let config_file = tempfile_path("resync-bench-config.yaml");
    std::fs::write(&config_file, &bench.yaml)?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .arg("bench-function")
        .arg(function.name())
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
        "the {} process failed: {}",
        function.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// A path in the temporary folder, named for this process.
fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}

/// The child side of the memory case: runs `function` against an endpoint (sync-start
/// once; delivery's pollers until the queue drains; the finalizer until the run
/// closes) and reports its invocations, its longest invocation, its peak resident
/// memory and what it counted.
pub async fn function_once(
    function: BenchedFunction,
    endpoint: &str,
    config: &std::path::Path,
    stack: &str,
    sync: &str,
) -> anyhow::Result<serde_json::Value> {
    let config = Config::load(config)?;
    let sdk = crate::aws::for_endpoint(endpoint).await;
    let sync = SyncId::parse(sync)?;
    if function == BenchedFunction::SyncStart {
        return sync_start_once(sdk, config, stack, &sync).await;
    }
    let runtime =
        crate::local::LocalRuntime::new(sdk, config, stack, crate::local::LocalOptions::default())
            .await?;
    let mut figures = match function {
        BenchedFunction::Delivery => {
            runtime.deliver_until_drained(&sync).await?;
            serde_json::json!({})
        }
        _ => {
            let counts = runtime.finalize_until_closed_alone(&sync).await?;
            serde_json::json!({"delivered": counts.delivered, "failed": counts.failed})
        }
    };
    let name = function.name();
    let (invocations, _) = runtime
        .clock
        .snapshot()
        .get(name)
        .copied()
        .unwrap_or_default();
    figures["invocations"] = invocations.into();
    figures["longest_invocation_s"] = runtime
        .clock
        .longest()
        .get(name)
        .copied()
        .unwrap_or(0.0)
        .into();
    figures["peak_rss_mb"] = peak_rss_mb().into();
    Ok(figures)
}

/// Runs sync-start once, as its schedule would.
async fn sync_start_once(
    sdk: aws_config::SdkConfig,
    config: Config,
    stack: &str,
    sync: &SyncId,
) -> anyhow::Result<serde_json::Value> {
    let resources = resync_shared::resources::Resources::for_stack(stack);
    let reporter = resync_shared::aws::report::Reporter::new(
        None,
        None,
        resync_shared::aws::report::MetricsSink::Memory(Default::default()),
    );
    let deps = resync_sync_start::SyncStart::new(&sdk, Arc::new(config), resources, reporter);
    let mut event: aws_lambda_events::eventbridge::EventBridgeEvent<
        resync_sync_start::SyncStartDetail,
    > = Default::default();
    event.id = Some("bench-memory".into());
    event.detail.sync_id = sync.to_string();
    let started = Instant::now();
    let outcome = resync_sync_start::handler(&deps, crate::local::lambda_invocation(event)).await?;
    let enqueued = match outcome {
        resync_sync_start::SyncStartOutcome::Started { enqueued, .. } => enqueued,
        other => anyhow::bail!("sync-start did not start: {other:?}"),
    };
    Ok(serde_json::json!({
        "enqueued": enqueued,
        "invocations": 1,
        "longest_invocation_s": started.elapsed().as_secs_f64(),
        "peak_rss_mb": peak_rss_mb(),
    }))
}
