//! The seed and FAQ scenarios on the webhook destination: locked rows recovered in the
//! run and by the next one, only failed rows retried, permanent errors left for the next
//! run.

use std::collections::HashSet;

use resync::destination_server::RowBehaviour;

use crate::helpers::{assert_locked_at_the_threshold, key, scaled, EnvSettings, TestEnv};

/// The seed scenario: 5 rows locked; 2 unlock during run 1, 3 only for run 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_recovers_locked_rows_in_run_and_next_run() {
    let rows = scaled(10_000, 300);
    let env = TestEnv::with(EnvSettings {
        max_attempts: 5,
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("part-0000.jsonl.gz", 0..rows / 2).await;
    env.export_rows("part-0001.jsonl.gz", rows / 2..rows).await;
    let released_in_run = [7, rows / 2 + 3];
    let locked_until_next = [1, rows / 3, rows - 1];
    for i in released_in_run {
        env.destination.set(
            key(i),
            RowBehaviour::Locked {
                until_attempt: Some(2),
            },
        );
    }
    for i in locked_until_next {
        env.destination.set(
            key(i),
            RowBehaviour::Locked {
                until_attempt: None,
            },
        );
    }

    let run1 = env.run().await;
    let counts = run1.record.counts.unwrap();
    assert_eq!(counts.planned, rows as u64);
    assert_eq!(counts.delivered, rows as u64 - 3);
    assert_eq!(counts.failed, 3);
    assert_eq!(counts.rejected, 0);
    assert_eq!(counts.retried_in_run, 5);
    assert_eq!(counts.carried_over, 0);
    let index = env.index().await;
    let expected: HashSet<String> = locked_until_next.iter().map(|&i| key(i)).collect();
    assert_locked_at_the_threshold(&index, &expected);
    for entry in &index {
        assert!(
            entry.payload.is_some(),
            "the payload is kept for the next run"
        );
    }
    let stats = env.destination.stats();
    // Every row once, the two released rows 3 times, the three locked rows 5 times;
    // SQS is at-least-once, so an emulator may add duplicate deliveries on top.
    assert!(stats.rows_received[0] >= rows as u64 + 2 * 2 + 3 * 4);
    assert_eq!(stats.keys_received[0].len(), rows);

    env.destination.next_run();
    let run2 = env.run().await;
    let counts = run2.record.counts.unwrap();
    assert_eq!(counts.planned, 3, "only the failed rows are planned");
    assert_eq!(counts.carried_over, 3);
    assert_eq!(counts.delivered, 3);
    assert_eq!(counts.recovered, 3);
    assert_eq!(counts.failed, 0);
    assert!(
        env.index().await.is_empty(),
        "the index is empty after run 2"
    );

    let stats = env.destination.stats();
    assert_eq!(stats.keys_received[1], expected, "run 2 sends only those 3");
    assert_eq!(
        stats.received_after_delivered, 0,
        "successes are never re-sent (I3)"
    );
    assert_eq!(
        stats.delivered_keys.len(),
        rows,
        "the destination saw every row"
    );
    assert_eq!(
        stats.bad_requests, 0,
        "every request was signed and well-formed"
    );
    assert!(stats.largest_request <= 100);
}

/// The FAQ: 1,000 rows where 400 fail → the next run retries the 400, never the 600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_rows_are_retried_next_run() {
    let rows = scaled(1_000, 200);
    let failing = rows * 2 / 5;
    let env = TestEnv::with(EnvSettings {
        max_attempts: 2,
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    for i in 0..failing {
        env.destination.set(
            key(i * 5 / 2),
            RowBehaviour::Locked {
                until_attempt: None,
            },
        );
    }
    let run1 = env.run().await.record.counts.unwrap();
    assert_eq!(
        (run1.delivered, run1.failed),
        ((rows - failing) as u64, failing as u64)
    );
    assert_eq!(env.index().await.len(), failing);

    env.destination.next_run();
    let run2 = env.run().await.record.counts.unwrap();
    assert_eq!(run2.planned, failing as u64);
    assert_eq!(run2.delivered, failing as u64);
    let stats = env.destination.stats();
    assert_eq!(
        stats.keys_received[1].len(),
        failing,
        "only the failed rows are sent"
    );
    assert_eq!(stats.received_after_delivered, 0);
    assert!(env.index().await.is_empty());
}

/// A permanent error is not retried within the run but is retried by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_wait_for_the_next_run() {
    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..50).await;
    for i in [3, 17, 42] {
        env.destination.set(
            key(i),
            RowBehaviour::RejectThisRun {
                code: "REQUIRED_FIELD_MISSING".into(),
            },
        );
    }
    let run1 = env.run().await.record.counts.unwrap();
    assert_eq!(
        (run1.delivered, run1.failed, run1.retried_in_run),
        (47, 3, 0)
    );
    // Each rejected key reached the destination in one attempt: no retry was scheduled
    // (retried_in_run above) and every key was seen.
    assert_eq!(env.destination.stats().keys_received[0].len(), 50);
    let index = env.index().await;
    assert!(index
        .iter()
        .all(|e| e.error_class == "permanent" && e.error_code == "REQUIRED_FIELD_MISSING"));

    env.destination.next_run();
    let run2 = env.run().await.record.counts.unwrap();
    assert_eq!((run2.planned, run2.delivered, run2.recovered), (3, 3, 3));
    assert!(env.index().await.is_empty());
}
