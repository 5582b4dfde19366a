//! `resync demo`: a whole sync on a laptop. Starts the embedded emulator, provisions the
//! stack, exports sample rows to S3, starts a local webhook destination that keeps some
//! rows locked, and runs the sync twice.

use std::io::Write;

use anyhow::Context as _;
use rand::{rngs::StdRng, seq::index::sample, SeedableRng};
use resync_shared::{config::Config, domain::ledger::RunCounts, SyncId};
use serde::Serialize;

use crate::{
    destination_server::{DestinationServer, RowBehaviour},
    local::{LocalOptions, LocalRuntime},
};

/// The demo's knobs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Rows exported.
    pub rows: usize,
    /// Rows the destination keeps locked.
    pub locked: usize,
    /// Of those, rows released during the first run.
    pub unlock_during_run: usize,
    /// Picks which rows are locked.
    pub seed: u64,
    /// Show progress bars.
    pub progress: bool,
}

/// One run as the demo reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DemoRun {
    /// The run.
    pub run_id: String,
    /// Rows taken in.
    pub planned: u64,
    /// Delivered.
    pub delivered: u64,
    /// Failed, kept in the index.
    pub failed: u64,
    /// Rejected before the queue.
    pub rejected: u64,
    /// Rows that needed an in-run retry.
    pub retried_in_run: u64,
    /// Rows from the failed-row index.
    pub carried_over: u64,
    /// Carried-over rows delivered.
    pub recovered: u64,
    /// Rows the destination received, duplicates included.
    pub destination_rows_sent: u64,
}

/// The demo's result.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Each run.
    pub runs: Vec<DemoRun>,
    /// Keys in the failed-row index at the end.
    pub failed_index_size: u64,
}

/// The demo's sync configuration, pointing at the local destination.
pub fn demo_config(destination_url: &str) -> anyhow::Result<Config> {
    let yaml = format!(
        r#"
destinations:
  - id: demo-webhook
    kind: webhook
    batch_size: 100
    concurrency: 4
    timeout_secs: 10
    retry: {{ max_attempts: 5, base_delay_secs: 1, max_delay_secs: 4 }}
    webhook:
      url: {destination_url}
      signing_secret: {{ value: demo-signing-secret }}
syncs:
  - id: customers
    source: {{ prefix: exports/customers/ }}
    primary_key: id
    destination: demo-webhook
    schedule: rate(1 hour)
"#
    );
    Ok(Config::from_yaml(&yaml)?)
}

/// Sample rows as gzipped JSON Lines, in objects of at most 5,000 rows.
pub fn sample_objects(rows: usize) -> Vec<(String, Vec<u8>)> {
    let mut objects = Vec::new();
    for (part, start) in (0..rows).step_by(5000).enumerate() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in start..(start + 5000).min(rows) {
            let plan = ["free", "pro", "enterprise"][i % 3];
            let row = serde_json::json!({
                "id": demo_key(i),
                "email": format!("customer{i}@example.com"),
                "name": format!("Customer {i}"),
                "plan": plan,
                "mrr": (i % 97) * 10,
            });
            writeln!(encoder, "{row}").expect("writing to memory");
        }
        objects.push((
            format!("exports/customers/2026-11-28T00-00-00Z-part-{part:04}.jsonl.gz"),
            encoder.finish().expect("writing to memory"),
        ));
    }
    objects
}

/// The demo's key for row `i`.
pub fn demo_key(i: usize) -> String {
    format!("cust-{i:06}")
}

fn report_run(record: &resync_shared::domain::run::RunRecord, sent: u64) -> DemoRun {
    let counts: RunCounts = record.counts.unwrap_or_default();
    DemoRun {
        run_id: record.run_id.to_string(),
        planned: counts.planned,
        delivered: counts.delivered,
        failed: counts.failed,
        rejected: counts.rejected,
        retried_in_run: counts.retried_in_run,
        carried_over: counts.carried_over,
        recovered: counts.recovered,
        destination_rows_sent: sent,
    }
}

/// Runs the demo.
pub async fn run(options: &DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(
        options.locked <= options.rows,
        "--locked ({}) cannot exceed --rows ({})",
        options.locked,
        options.rows
    );
    anyhow::ensure!(
        options.unlock_during_run <= options.locked,
        "--unlock-during-run ({}) cannot exceed --locked ({})",
        options.unlock_during_run,
        options.locked
    );
    let emulator = resync_emulator::Emulator::start()
        .await
        .context("starting the embedded AWS emulator")?;
    let sdk = crate::aws::for_endpoint(emulator.endpoint_url()).await;
    let destination = DestinationServer::start(Some("demo-signing-secret".into())).await?;
    let config = demo_config(&destination.url())?;
    let runtime = LocalRuntime::new(sdk.clone(), config, "resync-demo", LocalOptions::default())
        .await
        .context("provisioning the demo stack")?;

    let s3 = crate::aws::s3_client(&sdk);
    for (key, body) in sample_objects(options.rows) {
        s3.put_object()
            .bucket(&runtime.resources.source_bucket)
            .key(&key)
            .body(body.into())
            .send()
            .await
            .context("exporting sample rows")?;
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let locked = sample(&mut rng, options.rows, options.locked);
    for (n, i) in locked.iter().enumerate() {
        let until_attempt = (n < options.unlock_during_run).then_some(2);
        destination.set(demo_key(i), RowBehaviour::Locked { until_attempt });
    }

    let sync = SyncId::parse("customers")?;
    let mut runs = Vec::new();
    for run in 0..2 {
        if run > 0 {
            destination.next_run();
        }
        let bar = if options.progress {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "run {msg} [{bar:40}] {pos}/{len} rows settled ({elapsed})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message((run + 1).to_string());
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let local = runtime
            .run_sync(&sync, &|p| {
                bar.set_length(p.enqueued);
                bar.set_position(p.settled.min(p.enqueued));
            })
            .await?;
        bar.finish();
        let sent = destination.stats().rows_received[run];
        runs.push(report_run(&local.record, sent));
    }
    let failed_index_size = runtime.index().summary(&sync).await?.size;
    Ok(DemoReport {
        runs,
        failed_index_size,
    })
}

/// The report as a table.
pub fn table(report: &DemoReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<28} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>9} {:>10}\n",
        "run",
        "planned",
        "delivered",
        "failed",
        "rejected",
        "retried",
        "carried",
        "recovered",
        "rows sent"
    ));
    for run in &report.runs {
        out.push_str(&format!(
            "{:<28} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>9} {:>10}\n",
            run.run_id,
            run.planned,
            run.delivered,
            run.failed,
            run.rejected,
            run.retried_in_run,
            run.carried_over,
            run.recovered,
            run.destination_rows_sent
        ));
    }
    out.push_str(&format!(
        "failed-row index: {} keys\n",
        report.failed_index_size
    ));
    out
}
