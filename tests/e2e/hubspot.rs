//! HubSpot as the destination: the FAQ scenario with 207 multi-status validation errors.

use resync_tests::Behaviour;

use crate::{
    helpers::{full_batches, key, scaled, EnvSettings, TestEnv, Vendor},
    source_rows::{assert_poison_rows_failed_alone, poison_export},
};

/// Issue 4 — the FAQ scenario with HubSpot: 1,000 rows, 400 refused with validation
/// errors in a 207 multi-status answer → the next run sends only those 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_only_failed_rows_are_retried_next_run() {
    let rows = scaled(1_000, 200);
    let failing = rows * 2 / 5;
    let env = TestEnv::with(EnvSettings {
        max_attempts: 2,
        vendor: Vendor::Hubspot,
        concurrency: 1,
        options: full_batches(),
        ..EnvSettings::default()
    })
    .await;
    let portal = env.hubspot.as_ref().unwrap();
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    for i in 0..failing {
        portal.set(
            key(i * 5 / 2),
            Behaviour::RejectThisRun {
                code: "VALIDATION_ERROR".into(),
            },
        );
    }
    let run1 = env.run().await.record.counts.unwrap();
    assert_eq!(
        (run1.delivered, run1.failed, run1.retried_in_run),
        ((rows - failing) as u64, failing as u64, 0)
    );
    let index = env.index().await;
    assert_eq!(index.len(), failing);
    assert!(index
        .iter()
        .all(|e| e.error_class == "permanent" && e.error_code == "VALIDATION_ERROR"));
    let stats = portal.stats();
    assert_eq!(
        stats.calls[0],
        rows.div_ceil(100) as u64,
        "full 100-input calls"
    );
    assert_eq!(stats.records[0], rows as u64);

    portal.next_run();
    let run2 = env.run().await.record.counts.unwrap();
    assert_eq!(
        (run2.planned, run2.delivered),
        (failing as u64, failing as u64)
    );
    let stats = portal.stats();
    assert_eq!(stats.ids[1].len(), failing, "only the failed rows are sent");
    assert_eq!(stats.calls[1], failing.div_ceil(100) as u64);
    assert_eq!(stats.received_after_written, 0);
    assert_eq!(stats.malformed_calls + stats.unauthorized_calls, 0);
    assert!(env.index().await.is_empty());
}

/// Issue 13, item 1: a row accepted at planning whose mapped value has no parsed form
/// (`"\ud800"`, `1e400`, 200-deep nesting) panicked the HubSpot mapping in
/// `RowFields::to_map`, so its batch was never delivered and the run never closed. Each
/// such row now fails alone as `unmappable_row`; its neighbours are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_rows_it_cannot_map_fail_alone_and_the_run_closes() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 2,
        vendor: Vendor::Hubspot,
        concurrency: 1,
        options: full_batches(),
        ..EnvSettings::default()
    })
    .await;
    let ordinary = 20;
    let (export, poisoned) = poison_export(ordinary);
    env.export("poison.jsonl", export).await;
    let run = env.run().await;
    assert_poison_rows_failed_alone(&env, run, ordinary, &poisoned).await;
    let stats = env.hubspot.as_ref().unwrap().stats();
    assert_eq!(stats.written.len(), ordinary + 1);
    assert!(
        poisoned.iter().all(|k| !stats.ids[0].contains(k)),
        "never sent"
    );
    assert_eq!(stats.malformed_calls, 0);
}
