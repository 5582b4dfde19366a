//! `resync`: run syncs locally on the embedded emulator (or any endpoint), the demo,
//! and operator commands.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use resync::{
    demo::{self, DemoOptions},
    local::{LocalOptions, LocalRuntime},
};
use resync_shared::{
    config::Config,
    domain::run::{RunRecord, RunStatus},
    SyncId,
};

// The local runtime hosts the emulator, the destination server and all three functions
// in one process, with many small allocations freed on other threads than allocated
// them: glibc's malloc took a third of the pipeline's CPU (`perf`, see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "resync",
    version,
    about = "Reverse-ETL row sync for AWS that never gives up on a row"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole sync twice on the embedded emulator with a local destination that keeps rows locked.
    Demo {
        /// Rows exported to the source.
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// Rows the destination keeps locked.
        #[arg(long, default_value_t = 5)]
        locked: usize,
        /// Locked rows released during the first run (the others stay locked until the second).
        #[arg(long, default_value_t = 2)]
        unlock_during_run: usize,
        /// Seed choosing the locked rows.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Run one configured sync through the local runner (the embedded emulator, or the endpoint in AWS_ENDPOINT_URL); a run of it left open is driven to its close first. Exits non-zero when a run fails.
    Run {
        /// The sync configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The sync to run.
        #[arg(long)]
        sync: String,
        /// Name prefix of the stack's resources.
        #[arg(long, default_value = "resync")]
        stack: String,
        /// Local files to upload under the sync's source prefix first.
        #[arg(long)]
        upload: Vec<PathBuf>,
        /// Keep running the sync on its schedule until interrupted (Ctrl-C stops once the
        /// current run has closed).
        #[arg(long)]
        watch: bool,
        /// Print one JSON object per run.
        #[arg(long)]
        json: bool,
    },
    /// Several runs of a sync through injected AWS faults, crashed invocations and a
    /// misbehaving destination; checks I1–I5 from the destination's log and the index,
    /// and exits non-zero on any violation.
    Chaos {
        /// Rows of the first run (later runs add a tenth as many).
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// Runs, the last one without faults (it drains the index).
        #[arg(long, default_value_t = 4)]
        runs: usize,
        /// Seeds every fault.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Rows travel packed (the destination's `packing`).
        #[arg(long)]
        packing: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput against the emulator's ceiling, AWS requests and cost per row, retry efficiency and sync-start's memory.
    Bench {
        /// Rows of the clean pipeline run.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Share of rows failing in the retry case.
        #[arg(long, default_value_t = 0.05)]
        fail_share: f64,
        /// Attempts each failing row fails before it succeeds.
        #[arg(long, default_value_t = 2)]
        fail_times: u32,
        /// Rows of the sync-start memory case (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        memory_rows: usize,
        /// Failed-row index keys of the memory case.
        #[arg(long, default_value_t = 100_000)]
        memory_failed_keys: usize,
        /// Rows per destination request.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Delivery concurrency.
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        /// Rows travel packed (the destination's `packing`, with a 5 s request timeout so
        /// an invocation takes 10 segments).
        #[arg(long)]
        packing: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// (Used by `bench`.) Run one function of the memory case against an endpoint, in
    /// this process, and print its figures (peak memory, invocations).
    #[command(hide = true)]
    BenchFunction {
        #[arg(value_enum)]
        function: resync::bench::BenchedFunction,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        stack: String,
        #[arg(long)]
        sync: String,
    },
    /// Start the embedded AWS emulator on a port, provision a stack in it and wait for
    /// Ctrl-C: an endpoint (`AWS_ENDPOINT_URL`) for the Lambda binaries run by
    /// `cargo lambda watch`, `resync run`, or any SDK.
    Emulator {
        /// Loopback port to listen on.
        #[arg(long, default_value_t = 4566)]
        port: u16,
        /// Provision the stack of this sync configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Name prefix of the stack's resources.
        #[arg(long, default_value = "resync")]
        stack: String,
    },
    /// Provision a stack's resources at the endpoint in AWS_ENDPOINT_URL (LocalStack,
    /// moto); deploy to AWS with template.yaml or infra/ instead.
    Provision {
        /// The sync configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Name prefix of the stack's resources.
        #[arg(long, default_value = "resync")]
        stack: String,
    },
    /// List a run's rejections: exact counts by reason code and the stored sample (the
    /// first 100 of each code, with object, line, code, reason and key).
    Rejections {
        /// The sync configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The sync.
        #[arg(long)]
        sync: String,
        /// The run (default: the open run, else the last closed one).
        #[arg(long)]
        run: Option<String>,
        /// Name prefix of the stack's resources.
        #[arg(long, default_value = "resync")]
        stack: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Skip a pending source object (one the sync could not read whole) so that runs
    /// stop reading it and alerting on it; records who skipped it, when and why. A new
    /// upload of the object under the same name is read again.
    SkipObject {
        /// The sync configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The sync.
        #[arg(long)]
        sync: String,
        /// The object's S3 key (as `resync objects` and the alert name it).
        #[arg(long)]
        object: String,
        /// Why it is skipped (kept with the skip).
        #[arg(long)]
        reason: String,
        /// Who skips it (default: the caller's AWS identity, or the OS user locally).
        #[arg(long)]
        by: Option<String>,
        /// Name prefix of the stack's resources.
        #[arg(long, default_value = "resync")]
        stack: String,
    },
    /// List a sync's pending and skipped source objects (one JSON object a line).
    Objects {
        /// The sync configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The sync.
        #[arg(long)]
        sync: String,
        /// Also the objects read within the lookback window.
        #[arg(long)]
        all: bool,
        /// Name prefix of the stack's resources.
        #[arg(long, default_value = "resync")]
        stack: String,
    },
    /// List a sync's failed rows with their last error (keys and errors only), when each
    /// first and last failed, and its attempts in the last run and in all runs.
    Failed {
        /// The sync configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The sync.
        #[arg(long)]
        sync: String,
        /// Name prefix of the stack's resources.
        #[arg(long, default_value = "resync")]
        stack: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RESYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo {
            rows,
            locked,
            unlock_during_run,
            seed,
            json,
        } => {
            let report = demo::run(&DemoOptions {
                rows,
                locked,
                unlock_during_run,
                seed,
                progress: !json,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", demo::table(&report));
            }
        }
        Command::Chaos {
            rows,
            runs,
            seed,
            packing,
            json,
        } => {
            let report = resync::chaos::run(&resync::chaos::ChaosOptions {
                rows,
                runs,
                seed,
                packing,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", resync::chaos::table(&report));
            }
            if !report.violations.is_empty() {
                anyhow::bail!("{} invariant violations", report.violations.len());
            }
        }
        Command::Bench {
            rows,
            fail_share,
            fail_times,
            memory_rows,
            memory_failed_keys,
            batch_size,
            concurrency,
            packing,
            json,
        } => {
            let report = resync::bench::run(&resync::bench::BenchOptions {
                rows,
                fail_share,
                fail_times,
                memory_rows,
                memory_failed_keys,
                batch_size,
                concurrency,
                packing,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", resync::bench::table(&report));
            }
        }
        Command::BenchFunction {
            function,
            endpoint,
            config,
            stack,
            sync,
        } => {
            let result =
                resync::bench::function_once(function, &endpoint, &config, &stack, &sync).await?;
            println!("{result}");
        }
        Command::Run {
            config,
            sync,
            stack,
            upload,
            watch,
            json,
        } => run(config, sync, stack, upload, watch, json).await?,
        Command::Emulator {
            port,
            config,
            stack,
        } => emulator(port, config, stack).await?,
        Command::Provision { config, stack } => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL").context(
                "AWS_ENDPOINT_URL is not set: `resync provision` is for LocalStack or moto; deploy to AWS with template.yaml (SAM) or infra/ (CDK)",
            )?;
            let config = Config::load(&config)?;
            let sdk = resync::aws::from_env().await;
            let resources =
                resync::local::provision(&sdk, &config, &stack, &LocalOptions::default()).await?;
            print_stack(&endpoint, &resources);
        }
        Command::Rejections {
            config,
            sync,
            run,
            stack,
            json,
        } => {
            let sync = configured_sync(&config, sync)?;
            let run = run.map(resync_shared::RunId::parse).transpose()?;
            let sdk = resync::aws::from_env().await;
            let report = resync::operator::rejections(&sdk, &stack, &sync, run).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", resync::operator::rejections_table(&report));
            }
        }
        Command::SkipObject {
            config,
            sync,
            object,
            reason,
            by,
            stack,
        } => {
            let sync = configured_sync(&config, sync)?;
            let sdk = resync::aws::from_env().await;
            let by = resync::operator::caller(&sdk, by).await;
            resync::operator::skip_object(&sdk, &stack, &sync, &object, &by, &reason).await?;
            println!("skipped {object} for sync {sync} (by {by})");
        }
        Command::Objects {
            config,
            sync,
            all,
            stack,
        } => {
            let sync = configured_sync(&config, sync)?;
            let sdk = resync::aws::from_env().await;
            for object in resync::operator::objects(&sdk, &stack, &sync, all).await? {
                println!("{}", serde_json::to_string(&object)?);
            }
        }
        Command::Failed {
            config,
            sync,
            stack,
        } => {
            let config = Config::load(&config)?;
            let sync = SyncId::parse(sync)?;
            anyhow::ensure!(
                config.sync(&sync).is_some(),
                "no sync '{sync}' in the configuration"
            );
            let sdk = resync::aws::from_env().await;
            let resources = resync_shared::resources::Resources::for_stack(&stack);
            let index = resync_shared::aws::index::FailedRowIndex::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                resources.failed_rows_table,
            );
            for entry in index.entries(&sync).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
        }
    }
    Ok(())
}

/// The sync named on the command line, which the configuration must hold.
fn configured_sync(config: &std::path::Path, sync: String) -> anyhow::Result<SyncId> {
    let config = Config::load(config)?;
    let sync = SyncId::parse(sync)?;
    anyhow::ensure!(
        config.sync(&sync).is_some(),
        "no sync '{sync}' in the configuration"
    );
    Ok(sync)
}

/// `resync emulator`: the embedded emulator on a fixed port with a provisioned stack.
async fn emulator(port: u16, config: PathBuf, stack: String) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let emulator =
        resync_emulator::Emulator::start_on(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .with_context(|| format!("starting the emulator on 127.0.0.1:{port}"))?;
    let sdk = resync::aws::for_endpoint(emulator.endpoint_url()).await;
    let resources =
        resync::local::provision(&sdk, &config, &stack, &LocalOptions::default()).await?;
    print_stack(emulator.endpoint_url(), &resources);
    println!("# ready; Ctrl-C stops the emulator");
    tokio::signal::ctrl_c().await?;
    emulator.shutdown().await;
    Ok(())
}

/// The environment a function (or the CLI) needs to use a provisioned stack, as
/// shell lines.
fn print_stack(endpoint: &str, resources: &resync_shared::resources::Resources) {
    println!("export AWS_ENDPOINT_URL={endpoint}");
    println!("export RESYNC_STACK={}", resources.stack);
    if let Some(arn) = &resources.alert_topic_arn {
        println!("export RESYNC_ALERT_TOPIC_ARN={arn}");
    }
}

async fn run(
    config: PathBuf,
    sync: String,
    stack: String,
    upload: Vec<PathBuf>,
    watch: bool,
    json: bool,
) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let sync = SyncId::parse(sync)?;
    let sync_config = config
        .sync(&sync)
        .with_context(|| format!("no sync '{sync}' in the configuration"))?
        .clone();
    let (_emulator, sdk) = if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
        (None, resync::aws::from_env().await)
    } else {
        let emulator = resync_emulator::Emulator::start().await?;
        let sdk = resync::aws::for_endpoint(emulator.endpoint_url()).await;
        eprintln!("embedded AWS emulator at {}", emulator.endpoint_url());
        (Some(emulator), sdk)
    };
    let runtime = LocalRuntime::new(sdk.clone(), config, &stack, LocalOptions::default()).await?;
    let s3 = resync::aws::s3_client(&sdk);
    let bucket = sync_config
        .source
        .bucket
        .clone()
        .unwrap_or_else(|| runtime.resources.source_bucket.clone());
    for path in upload {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", path.display()))?;
        let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        s3.put_object()
            .bucket(&bucket)
            .key(format!("{}{}", sync_config.source.prefix, name))
            .body(body.into())
            .send()
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
    }
    if let Some(open_run) = runtime.open_run(&sync).await? {
        eprintln!(
            "run {open_run} of sync {sync} was left open (an interrupted or failed run); driving it to its close first — rows an interrupted runner held come back after the queue's visibility timeout ({} s)",
            runtime.options.queue_visibility_secs()
        );
    }
    if watch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping once the current run has closed (Ctrl-C again stops at once)");
            stopper.store(true, Ordering::SeqCst);
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        });
        let runs = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        resync::local::schedule(
            &runtime,
            std::slice::from_ref(&sync),
            stop,
            &|sync, result| {
                runs.fetch_add(1, Ordering::SeqCst);
                match result {
                    Ok(run) => print_run(sync, &run, json),
                    Err(err) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!(
                            "run of sync {sync} failed: {err:#}; trying again in {} s",
                            resync::local::AGAIN_AFTER_FAILURE.as_secs()
                        );
                    }
                }
            },
        )
        .await;
        let (runs, failed) = (runs.into_inner(), failed.into_inner());
        anyhow::ensure!(failed == 0, "{failed} of {runs} runs of sync {sync} failed");
    } else {
        let run = runtime
            .run_sync(&sync, &|_| {})
            .await
            .with_context(|| format!("the run of sync {sync} failed"))?;
        print_run(&sync, &run, json);
    }
    Ok(())
}

/// Prints a run that ended (after the run it drove to its end first, if any): one
/// line, or one JSON object, each.
fn print_run(sync: &SyncId, run: &resync::local::LocalRun, json: bool) {
    if let Some(resumed) = &run.resumed {
        print_record(sync, resumed, true, json);
    }
    print_record(sync, &run.record, false, json);
}

fn print_record(sync: &SyncId, record: &RunRecord, resumed: bool, json: bool) {
    let counts = record.counts.unwrap_or_default();
    let failed_index_size = record.failed_index_size.unwrap_or(0);
    if json {
        let mut line = serde_json::json!({
            "sync_id": sync.as_str(),
            "run_id": record.run_id.as_str(),
            "status": record.status.as_str(),
        });
        if resumed {
            line["resumed"] = true.into();
        }
        if let (Some(line), Ok(serde_json::Value::Object(counts))) =
            (line.as_object_mut(), serde_json::to_value(counts))
        {
            line.extend(counts);
        }
        line["failed_index_size"] = failed_index_size.into();
        line["pending_objects"] = record.pending_objects.into();
        println!("{line}");
    } else if record.status == RunStatus::Closed {
        println!(
            "run {}{}: planned {} delivered {} failed {} rejected {} retried {} carried over {} recovered {}; failed-row index {}",
            record.run_id,
            if resumed { " (left open, closed now)" } else { "" },
            counts.planned,
            counts.delivered,
            counts.failed,
            counts.rejected,
            counts.retried_in_run,
            counts.carried_over,
            counts.recovered,
            failed_index_size
        );
        if record.pending_objects > 0 {
            println!(
                "  {} source objects not read whole stay pending (resync objects --sync {sync}; resync skip-object)",
                record.pending_objects
            );
        }
    } else {
        println!(
            "run {}{}: {} (it never finished planning; its rows are planned again by the next run)",
            record.run_id,
            if resumed { " (left open)" } else { "" },
            record.status.as_str()
        );
    }
}
