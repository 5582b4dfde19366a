//! The dead-letter queue: rows whose invocations keep crashing reach it after
//! `max_attempts + 2` receives, and the finalizer fails them there.

use resync::local::LocalOptions;
use resync_shared::domain::outcome::ErrorClass;

use crate::helpers::{key, EnvSettings, TestEnv};

/// A row whose delivery invocations crash every time is moved by SQS to the
/// dead-letter queue; the finalizer records it as a `dead_lettered` failure, deletes it
/// from that queue and closes the run with exact counts (I1, I7).
///
/// Issue 12, defect 9: the finalizer's dead-letter calls (its ledger write, the
/// dead-letter `DeleteMessage`) are observed by `RESYNC_CALL_LOG` only here, so the
/// template check keeps those grants because this path runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_keep_crashing_their_invocation_are_dead_lettered_and_failed() {
    let env = TestEnv::with(EnvSettings {
        // maxReceiveCount = 1 + 2: three receives, then the dead-letter queue.
        max_attempts: 1,
        concurrency: 1,
        options: LocalOptions {
            visibility_timeout_secs: 1,
            crash_before_handler: 3,
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..1).await;

    let run = env.run().await;

    let counts = run.record.counts.expect("a closed run has counts");
    assert_eq!((counts.planned, counts.delivered, counts.failed), (1, 0, 1));
    assert!(env.destination.stats().delivered_keys.is_empty());
    let index = env.index().await;
    assert_eq!(index.len(), 1, "the dead-lettered row is in the index");
    assert_eq!(index[0].key.to_string(), key(0));
    assert_eq!(index[0].error_class, ErrorClass::DeadLettered.as_str());
    let dead_letters = resync_shared::aws::queue::WorkQueue::resolve(
        aws_sdk_sqs::Client::new(&env.runtime.sdk),
        &env.runtime
            .resources
            .dead_letter_queue(&env.runtime.config.destinations[0].id),
    )
    .await
    .expect("the dead-letter queue");
    assert_eq!(
        dead_letters.depth().await.expect("its depth"),
        (0, 0),
        "the finalizer deleted what it failed"
    );
}
