//! Logging: the emulator's requests log nothing at INFO in the embedder's subscriber.

use anyhow::Result;
use resync_emulator::Emulator;

use crate::helpers::{explain, s3_client, sdk_config};

/// Records the target and level of every event.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(String, tracing::Level)>>>);

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        if let Ok(mut events) = self.0.lock() {
            events.push((meta.target().to_owned(), *meta.level()));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// rustack logs each routed S3 request (and each created bucket/queue) at INFO; the
/// emulator keeps those out of the embedder's subscriber but forwards the rest.
#[tokio::test(flavor = "current_thread")]
async fn requests_log_nothing_at_info() -> Result<()> {
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let _guard = tracing::subscriber::set_default(Recorder(events.clone()));
    let emu = Emulator::start().await?;
    let config = sdk_config(&emu).await;
    let s3 = s3_client(&config);
    s3.create_bucket()
        .bucket("quiet")
        .send()
        .await
        .map_err(explain)?;
    s3.list_objects_v2()
        .bucket("quiet")
        .send()
        .await
        .map_err(explain)?;
    aws_sdk_sqs::Client::new(&config)
        .create_queue()
        .queue_name("quiet")
        .send()
        .await
        .map_err(explain)?;
    emu.shutdown().await;

    let events = events.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let rustack: Vec<&(String, tracing::Level)> = events
        .iter()
        .filter(|(target, _)| target.starts_with("rustack_"))
        .collect();
    assert!(
        rustack
            .iter()
            .any(|(t, l)| t.starts_with("rustack_s3_http") && *l == tracing::Level::DEBUG),
        "rustack DEBUG events should still reach the subscriber: {rustack:?}"
    );
    let info: Vec<_> = rustack
        .iter()
        .filter(|(_, level)| *level == tracing::Level::INFO)
        .collect();
    assert!(info.is_empty(), "INFO events per request: {info:?}");
    Ok(())
}
