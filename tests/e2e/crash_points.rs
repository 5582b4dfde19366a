//! Crash points: an invocation killed between two of its handler's side effects, and
//! retried as Lambda retries it — sync-start and the finalizer (asynchronous
//! invocations) up to twice more with the same event and request id, delivery's batch
//! back on the queue — leaves every count exact, the index exact and the sync free.

use resync::{
    destination_server::RowBehaviour,
    local::{CrashRules, LocalOptions},
};
use resync_shared::crash_points::CrashPoint;

use crate::helpers::{key, EnvSettings, TestEnv};

fn crashing(rules: CrashRules) -> EnvSettings {
    EnvSettings {
        options: LocalOptions {
            visibility_timeout_secs: 1,
            crash_points: rules,
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    }
}

/// Issue 12, crash points: sync-start dies after taking the lock, between its
/// `SendMessageBatch` calls, or after recording its plan — once, or twice in a row —
/// and Lambda's retries of the same event plan the same run; it closes with every row
/// delivered once counted, from the plan of the attempt that finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_start_killed_at_any_point_is_retried_and_its_run_closes_exact() {
    // 25 SendMessageBatch calls of single rows (3 of packed ones): more than are in
    // flight at once, so some return before the last is sent.
    let rows = 250;
    let cases = [
        (CrashPoint::SyncStartAfterAcquire, 1, 0),
        (CrashPoint::SyncStartAfterAcquire, 2, 0),
        (CrashPoint::SyncStartMidSend, 1, 1),
        (CrashPoint::SyncStartAfterMarkPlanned, 1, 0),
    ];
    for (point, crashes, generation) in cases {
        // Batches of 10: with packed rows too, 25 segments take three
        // SendMessageBatch calls, so the planning can die between them.
        let env = TestEnv::with(EnvSettings {
            batch_size: 10,
            ..crashing(CrashRules::none().first(point, crashes))
        })
        .await;
        env.export_rows("1.jsonl.gz", 0..rows).await;
        let run = env.run().await;
        let counts = run.record.counts.unwrap();
        assert_eq!(
            (counts.planned, counts.delivered, counts.failed),
            (rows as u64, rows as u64, 0),
            "{point}"
        );
        assert_eq!(
            run.record.generation, generation,
            "{point}: planning attempts"
        );
        assert_eq!(
            env.runtime.injected()[&format!("crash:{point}")],
            crashes,
            "{point}"
        );
        assert_eq!(
            env.runtime.clock.snapshot()["sync-start"].0,
            crashes + 1,
            "{point}: Lambda retried the same event"
        );
        assert_eq!(
            env.destination.stats().delivered_keys.len(),
            rows,
            "{point}"
        );
        assert_eq!(
            env.runtime.runs().state(&env.sync).await.unwrap().open_run,
            None,
            "{point}: the sync is released"
        );
        assert!(env.index().await.is_empty(), "{point}");
    }
}

/// Issue 12, crash points: delivery dies after the destination answered, before its
/// ledger write, or after it; the batch comes back to the queue and is tried again.
/// The counts stay exact, a rejected row is in the index once with its error, and no
/// row is tried more often than the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_killed_at_any_point_returns_its_batch_and_counts_stay_exact() {
    let rows = 60;
    for point in [
        CrashPoint::DeliveryAfterDestinationCall,
        CrashPoint::DeliveryAfterCopies,
        CrashPoint::DeliveryBeforeLedgerWrite,
        CrashPoint::DeliveryAfterLedgerWrite,
    ] {
        let env = TestEnv::with(crashing(CrashRules::none().first(point, 1))).await;
        env.destination.set(
            key(3),
            RowBehaviour::Locked {
                until_attempt: Some(1),
            },
        );
        env.destination.set(
            key(5),
            RowBehaviour::RejectThisRun {
                code: "REQUIRED_FIELD_MISSING".into(),
            },
        );
        env.export_rows("1.jsonl.gz", 0..rows).await;
        let run = env.run().await;
        let counts = run.record.counts.unwrap();
        assert_eq!(
            (counts.planned, counts.delivered, counts.failed),
            (rows as u64, rows as u64 - 1, 1),
            "{point}"
        );
        assert_eq!(
            env.runtime.injected()[&format!("crash:{point}")],
            1,
            "{point}"
        );
        assert!(run.invocations >= 2, "{point}: the batch was tried again");
        let index = env.index().await;
        assert_eq!(index.len(), 1, "{point}");
        assert_eq!(index[0].key.as_str(), key(5), "{point}");
        assert_eq!(index[0].error_code, "REQUIRED_FIELD_MISSING", "{point}");
        assert!(
            index[0].attempts <= 4,
            "{point}: {} attempts",
            index[0].attempts
        );
        assert_eq!(
            env.destination.stats().delivered_keys.len(),
            rows - 1,
            "{point}"
        );
    }
}

/// Issue 12, crash points: delivery dies after queueing the delayed copies of its
/// retried rows and before deleting their originals (a point the harness could not
/// inject before). The originals come back beside their copies, so each row lives as
/// two messages; they share the run's count of sends, so a row that keeps failing
/// reaches the destination at most the threshold of 3 times, fails once and is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_killed_between_the_copies_and_the_originals_delete_keeps_the_threshold() {
    let mut settings = crashing(CrashRules::none().first(CrashPoint::DeliveryAfterCopies, 2));
    settings.max_attempts = 3;
    let env = TestEnv::with(settings).await;
    for i in [3, 4] {
        env.destination.set(
            key(i),
            RowBehaviour::Locked {
                until_attempt: None,
            },
        );
    }
    env.export_rows("1.jsonl.gz", 0..20).await;
    let run = env.run().await;

    assert_eq!(
        env.runtime.injected()["crash:delivery.after_copies"],
        2,
        "the invocations died with copies and originals both queued"
    );
    let sends = env.destination.stats().sends[0].clone();
    assert_eq!(sends.len(), 20, "every row reaches the destination");
    assert!(
        sends[&key(3)] <= 3 && sends[&key(4)] <= 3,
        "a failing row was sent more often than the threshold of 3: {} and {} sends",
        sends[&key(3)],
        sends[&key(4)]
    );
    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (20, 18, 2)
    );
    let kept: Vec<String> = env
        .index()
        .await
        .into_iter()
        .map(|entry| entry.key.as_str().to_owned())
        .collect();
    assert_eq!(kept, [key(3), key(4)]);
}

/// Issue 12, crash points: the finalizer dies after writing the index and, on Lambda's
/// retry, again before the close (after reporting); its second retry closes the run.
/// The index holds exactly the failed row, the sync is free, and the next run retries
/// only that row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalizer_killed_before_its_close_is_retried_and_the_index_stays_exact() {
    let env = TestEnv::with(crashing(
        CrashRules::none()
            .first(CrashPoint::FinalizerAfterIndexWrites, 1)
            .first(CrashPoint::FinalizerBeforeClose, 1),
    ))
    .await;
    env.destination.set(
        key(2),
        RowBehaviour::RejectThisRun {
            code: "REQUIRED_FIELD_MISSING".into(),
        },
    );
    env.export_rows("1.jsonl.gz", 0..30).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (30, 29, 1)
    );
    let injected = env.runtime.injected();
    assert_eq!(injected["crash:finalizer.after_index_writes"], 1);
    assert_eq!(injected["crash:finalizer.before_close"], 1);
    let index = env.index().await;
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].key.as_str(), key(2));
    assert_eq!(
        env.runtime.runs().state(&env.sync).await.unwrap().open_run,
        None
    );

    env.destination.next_run();
    let next = env.run().await.record.counts.unwrap();
    assert_eq!((next.planned, next.delivered, next.recovered), (1, 1, 1));
    assert_eq!(env.destination.stats().rows_received[1], 1);
    assert!(env.index().await.is_empty());
}
