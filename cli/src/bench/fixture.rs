//! What every phase of the bench runs on: the embedded emulator behind a counted SDK,
//! a local destination that accepts everything, the runtime of the bench's
//! configuration, and the source exports each case reads.

use std::{io::Write, time::Duration};

use resync_shared::config::Config;

use super::BenchOptions;
use crate::{
    aws::RequestCounter,
    destination_server::DestinationServer,
    local::{LocalOptions, LocalRuntime},
};

/// The bench's emulator, destination and runtime (declared in the reverse of the order
/// they start, so that they stop in it).
pub(super) struct Bench {
    /// The source bucket's client.
    pub(super) s3: aws_sdk_s3::Client,
    /// The stack's source bucket.
    pub(super) bucket: String,
    pub(super) runtime: LocalRuntime,
    /// The configuration the runtime runs ([`bench_yaml`]).
    pub(super) yaml: String,
    pub(super) destination: DestinationServer,
    /// Counted by `counter`.
    pub(super) sdk: aws_config::SdkConfig,
    /// Every request `sdk` makes.
    pub(super) counter: RequestCounter,
    pub(super) emulator: resync_emulator::Emulator,
}

impl Bench {
    /// Starts the emulator and the destination, and provisions the bench's stack.
    pub(super) async fn start(options: &BenchOptions) -> anyhow::Result<Self> {
        let emulator = resync_emulator::Emulator::start().await?;
        let counter = RequestCounter::default();
        let sdk = counter.instrument(&crate::aws::for_endpoint(emulator.endpoint_url()).await);
        let destination = DestinationServer::start(None).await?;
        let yaml = bench_yaml(
            &destination.url(),
            options.batch_size,
            options.concurrency,
            options.packing,
        );
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
        Ok(Self {
            s3,
            bucket,
            runtime,
            yaml,
            destination,
            sdk,
            counter,
            emulator,
        })
    }

    /// Writes `rows` rows of a case's source export (gzipped JSON lines, 100,000 rows a
    /// part) under `exports/<case>/`.
    pub(super) async fn export(&self, case: &str, rows: usize) -> anyhow::Result<()> {
        let prefix = format!("exports/{case}/");
        for (part, start) in (0..rows).step_by(100_000).enumerate() {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            for i in start..(start + 100_000).min(rows) {
                writeln!(
                    encoder,
                    r#"{{"id":"{}","email":"user{i}@example.com","plan":"pro","mrr":{}}}"#,
                    key(case, i),
                    i % 1000
                )?;
            }
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(format!("{prefix}part-{part:05}.jsonl.gz"))
                .body(encoder.finish()?.into())
                .send()
                .await?;
        }
        Ok(())
    }
}

/// The bench's configuration: one destination and a sync per case.
fn bench_yaml(url: &str, batch_size: usize, concurrency: u32, packing: bool) -> String {
    // Packed, an invocation takes as many segments as requests fit its timeout: 10 at
    // 5 s (the local destination answers in milliseconds).
    let packing = if packing {
        "\n    packing: true\n    timeout_secs: 5"
    } else {
        ""
    };
    format!(
        r#"
destinations:
  - id: bench
    kind: webhook
    batch_size: {batch_size}
    concurrency: {concurrency}{packing}
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

/// The primary key of a case's row `i`.
pub(super) fn key(case: &str, i: usize) -> String {
    format!("{case}-{i:08}")
}
