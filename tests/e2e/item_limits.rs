//! DynamoDB's limits as AWS enforces them: no item over 400 KB (ledger items, sync-start's
//! rejections, the dead-letter drain), no key twice in one `BatchWriteItem`.

use std::io::Write;

use resync::{destination_server::RowBehaviour, local::LocalOptions};
use resync_finalizer::SyncReport;
use resync_shared::{
    domain::{
        ledger::{BatchLedger, FailedRow, RecordedRejection},
        outcome::RowError,
        run::PlanSummary,
        source::Rejection,
    },
    PrimaryKey, RowFields, RunId,
};

use crate::helpers::{key, row, EnvSettings, TestEnv};

/// A key of the longest length a key may have (1,024 bytes), distinct per `i`.
fn wide_key(i: usize) -> String {
    format!("{}{i:06}", "k".repeat(1018))
}

/// Exports `rows` as one JSON Lines object.
async fn export_lines(
    env: &TestEnv,
    name: &str,
    rows: impl IntoIterator<Item = serde_json::Value>,
) {
    let mut body = Vec::new();
    for row in rows {
        writeln!(body, "{row}").unwrap();
    }
    env.export(name, body).await;
}

/// Issue 12, defect 4: a ledger written as several items still bumps the run's settled
/// hint once, by everything it settled, so the write that settles the run reports it
/// exactly once; the finalizer reads the parts' union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_in_several_items_reports_the_run_settled_once() {
    let rows = 450;
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    let run = RunId::parse("run-wide").unwrap();
    runs.acquire(&env.sync, &run).await.unwrap();
    runs.open_run(&env.sync, &run).await.unwrap();
    runs.mark_planned(
        &env.sync,
        &run,
        &PlanSummary {
            enqueued: rows as u64,
            source_objects: 1,
            ..PlanSummary::default()
        },
    )
    .await
    .unwrap();
    let ledger = BatchLedger {
        delivered: (0..rows)
            .map(|i| PrimaryKey::parse(wide_key(i)).unwrap())
            .collect(),
        ..BatchLedger::default()
    };

    let first = runs
        .record_batch(&env.sync, &run, "b0", &ledger)
        .await
        .unwrap();
    let retried = runs
        .record_batch(&env.sync, &run, "b0", &ledger)
        .await
        .unwrap();

    assert_eq!((first, retried), (true, false), "reported settled once");
    let items = runs.ledger(&run, 0).await.unwrap();
    assert!(items.len() > 1, "{} ledger items", items.len());
    let keys: std::collections::HashSet<_> = items.iter().flat_map(|i| &i.delivered).collect();
    assert_eq!(keys.len(), rows);
}

/// Issue 12, defect 4: one delivery invocation that settles 450 rows with 1,024-byte
/// keys (the longest allowed) at `batch_size: 500` records more keys than one DynamoDB
/// item holds. The ledger write used to be refused *after* the destination got the
/// rows, so every row was sent again and again, then dead-lettered. Now the rows are
/// sent once, the run closes with all of them delivered, and the next run sends none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_settling_rows_with_the_longest_keys_records_them() {
    let rows = 450;
    let env = TestEnv::with(EnvSettings {
        batch_size: 500,
        ..EnvSettings::default()
    })
    .await;
    export_lines(
        &env,
        "wide-keys.jsonl",
        (0..rows)
            .map(|i| serde_json::json!({"id": wide_key(i), "email": format!("c{i}@example.com")})),
    )
    .await;
    let run_id = env.start_run().await;
    env.deliver_in_one_invocation(rows).await;

    let (record, _) = env
        .runtime
        .drive(&env.sync, &run_id, &|_| {})
        .await
        .unwrap();
    let counts = record.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (rows as u64, 0));
    let stats = env.destination.stats();
    assert_eq!(
        stats.rows_received[0], rows as u64,
        "each row was sent once"
    );
    assert_eq!(stats.keys_received[0].len(), rows);
    assert!(env.index().await.is_empty());

    env.destination.next_run();
    let next = env.run().await.record.counts.unwrap();
    assert_eq!(next.planned, 0, "no delivered row is sent again (I3)");
    assert_eq!(env.destination.stats().received_after_delivered, 0);
}

/// Issue 12, defect 4: 400 rows of about 1 KB that the destination refuses, settled by
/// one invocation, are more failure payload than one DynamoDB item holds. They are
/// recorded, land in the failed-row index with their payloads, and the next run
/// retries exactly them (not the 50 delivered rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_failing_400_wide_rows_records_them_all() {
    let (failing, rows) = (400, 450);
    let env = TestEnv::with(EnvSettings {
        batch_size: 500,
        ..EnvSettings::default()
    })
    .await;
    let note = "n".repeat(1000);
    export_lines(
        &env,
        "wide-rows.jsonl",
        (0..rows).map(|i| serde_json::json!({"id": key(i), "note": note, "version": "v1"})),
    )
    .await;
    for i in 0..failing {
        env.destination.set(
            key(i),
            RowBehaviour::RejectThisRun {
                code: "INVALID_NOTE".into(),
            },
        );
    }
    let run_id = env.start_run().await;
    env.deliver_in_one_invocation(rows).await;

    let (record, _) = env
        .runtime
        .drive(&env.sync, &run_id, &|_| {})
        .await
        .unwrap();
    let counts = record.counts.unwrap();
    assert_eq!(
        (counts.delivered, counts.failed),
        ((rows - failing) as u64, failing as u64)
    );
    let index = env.index().await;
    assert_eq!(index.len(), failing);
    for entry in &index {
        assert_eq!(entry.error_code, "INVALID_NOTE");
        let payload = entry.payload.as_ref().expect("a payload to retry with");
        assert_eq!(payload["note"], note.as_str());
    }

    env.destination.next_run();
    let next = env.run().await.record.counts.unwrap();
    assert_eq!(
        (next.planned, next.delivered),
        (failing as u64, failing as u64)
    );
    let received = &env.destination.stats().keys_received[1];
    assert_eq!(
        *received,
        (0..failing).map(key).collect(),
        "only the failed rows are retried (I3)"
    );
    assert!(env.index().await.is_empty());
}

/// Issue 12, defect 4: ten dead-lettered rows of ~100 KB drained at once by the
/// finalizer are more than one DynamoDB item holds. The drain used to write them as
/// one ledger item, refused on every tick, so the finalizer was wedged and the run
/// never closed. Now they are recorded as failures, with their payloads in the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_drain_records_wide_rows() {
    let rows = 10;
    let env = TestEnv::with(EnvSettings {
        // Dead-lettered after max_attempts + 2 = 3 receives.
        max_attempts: 1,
        options: LocalOptions {
            visibility_timeout_secs: 1,
            // Every delivery invocation dies before its handler: the rows only ever
            // leave through the dead-letter queue.
            crash_before_handler: usize::MAX,
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    let blob = "b".repeat(100_000);
    export_lines(
        &env,
        "dead.jsonl",
        (0..rows).map(|i| serde_json::json!({"id": key(i), "blob": blob})),
    )
    .await;
    let run = tokio::time::timeout(std::time::Duration::from_secs(120), env.run())
        .await
        .expect("the run closes within 120 s");
    let counts = run.record.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (0, rows as u64));
    let index = env.index().await;
    assert_eq!(index.len(), rows);
    for entry in &index {
        assert_eq!(entry.error_code, "DEAD_LETTERED");
        let payload = entry.payload.as_ref().expect("a payload to retry with");
        assert_eq!(payload["blob"], blob.as_str());
    }
}

/// Issue 12, defect 4: sync-start's rejections were chunked by a loose estimate of
/// their size; keys that JSON escapes (here 1,024-byte keys of quotes, every one twice
/// in the source, so every copy is rejected) made a chunk larger than a DynamoDB item,
/// and sync-start failed. Now the run plans, closes with every copy rejected, and the
/// index holds each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_of_keys_that_json_escapes_are_recorded() {
    let keys = 125;
    let env = TestEnv::start().await;
    let quoted = |i: usize| format!("{}{i:06}", "\"".repeat(1018));
    export_lines(
        &env,
        "duplicates.jsonl",
        (0..keys)
            .chain(0..keys)
            .map(|i| serde_json::json!({"id": quoted(i), "version": "v1"})),
    )
    .await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.rejected, 2 * keys as u64);
    assert_eq!(counts.planned, 2 * keys as u64);
    let index = env.index().await;
    assert_eq!(index.len(), keys);
    assert!(index
        .iter()
        .all(|entry| entry.error_code == "non_unique_primary_key"));
}

fn primary(i: usize) -> PrimaryKey {
    PrimaryKey::parse(key(i)).unwrap()
}

fn failed_row(i: usize, code: &str) -> FailedRow {
    FailedRow {
        key: primary(i),
        error: RowError::retryable(code, "the row is locked"),
        attempts: 4,
        prior_attempts: 0,
        carried_over: false,
        first_failed_at: None,
        failed_at: None,
        payload: RowFields::from_text(row(i, "v1").to_string()).unwrap(),
    }
}

fn refused(i: usize) -> RecordedRejection {
    RecordedRejection {
        rejection: Rejection {
            key: Some(primary(i)),
            object: String::new(),
            line: 0,
            code: "enqueue_refused".into(),
            reason: "SQS refused the row".into(),
        },
        first_failed_at: None,
        in_index: true,
        payload: None,
    }
}

/// Issue 12, defect 7: the index writes of a run put its failures and rejections and
/// delete its recovered keys; a key in two of those lists (here: carried over and
/// delivered, and also rejected when a retried sync-start could not enqueue it again;
/// failed and also rejected) went twice into one `BatchWriteItem`, which DynamoDB
/// refuses — on every finalizer tick, so the run never closed. Each key is now written
/// once: a failure or rejection wins over a delete (I2: the index is the old index
/// less the delivered keys, *plus* the run's failed and rejected keys), and a failure
/// wins over a rejection (it keeps the payload the next run retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_two_outcomes_of_a_run_is_written_to_the_index_once() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    let index = env.runtime.index();
    // Thirty failing keys from an earlier run.
    let earlier = RunId::parse("run-earlier").unwrap();
    let carried: Vec<FailedRow> = (0..30)
        .map(|i| failed_row(i, "UNABLE_TO_LOCK_ROW"))
        .collect();
    index
        .apply_run(
            &env.sync,
            &earlier,
            &carried.iter().collect::<Vec<_>>(),
            &[],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(env.index().await.len(), 30);

    // This run delivers them all (they leave the index); key 7 was also rejected, and
    // key 40 failed and was rejected.
    let run = RunId::parse("run-overlap").unwrap();
    runs.acquire(&env.sync, &run).await.unwrap();
    runs.open_run(&env.sync, &run).await.unwrap();
    runs.record_rejections(&run, 0, &[refused(7), refused(40)])
        .await
        .unwrap();
    let ledger = BatchLedger {
        recovered: (0..30).map(primary).collect(),
        failed: vec![failed_row(40, "HTTP_503")],
        ..BatchLedger::default()
    };
    runs.record_batch(&env.sync, &run, "b0", &ledger)
        .await
        .unwrap();
    runs.mark_planned(
        &env.sync,
        &run,
        &PlanSummary {
            enqueued: 31,
            rejected: 2,
            carried_over: 30,
            source_objects: 1,
            ..PlanSummary::default()
        },
    )
    .await
    .unwrap();

    let report = env.runtime.finalize(&env.sync).await.unwrap();

    assert!(matches!(report, SyncReport::Closed { .. }), "{report:?}");
    let entries = env.index().await;
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [key(7), key(40)],
        "the delivered keys left, the others stayed"
    );
    assert_eq!(entries[0].error_code, "enqueue_refused");
    assert!(entries[0].payload.is_none());
    assert_eq!(entries[1].error_code, "HTTP_503");
    assert!(
        entries[1].payload.is_some(),
        "the failure keeps its payload"
    );
}
