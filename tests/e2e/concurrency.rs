//! `concurrency` as the destination sees it: the requests it answers at once.

use resync::local::LocalOptions;

use crate::helpers::{remote, scaled, EnvSettings, TestEnv};

/// Issue 13, item 18: a destination with `concurrency: 2` had 4 requests in flight at
/// the server and more, because each delivery invocation kept up to 4 of its requests in
/// flight on top of the invocations the mapping ran at once. Each invocation now sends
/// its requests one after another, so `concurrency` is what the destination sees:
/// measured at a slow local destination while the local runtime delivers (two pollers,
/// as the mapping's `MaximumConcurrency: 2`, each invocation holding two requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_the_destinations_requests_in_flight() {
    let rows = scaled(400, 200);
    let env = TestEnv::with(EnvSettings {
        batch_size: 10,
        concurrency: 2,
        options: LocalOptions {
            batching_window: std::time::Duration::from_secs(if remote() { 10 } else { 1 }),
            receives_in_flight: if remote() { 1 } else { 2 },
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.destination
        .answer_after(std::time::Duration::from_millis(100));
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.delivered, rows as u64);
    let stats = env.destination.stats();
    assert!(
        stats.max_in_flight <= 2,
        "the destination saw {} requests at once with concurrency 2",
        stats.max_in_flight
    );
    assert_eq!(
        stats.max_in_flight, 2,
        "both invocations were sending at once"
    );
}
