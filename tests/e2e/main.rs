//! End-to-end suite: whole runs through the real handlers, the real SDK and a real
//! emulator (embedded by default; `RESYNC_TEST_ENDPOINT` points it elsewhere, e.g. at
//! moto's server, with smaller row counts).

mod helpers;

use std::collections::HashSet;

use helpers::{key, remote, row, scaled, EnvSettings, TestEnv, Vendor};
use resync::{destination_server::RowBehaviour, local::LocalOptions};
use resync_shared::{
    domain::{ledger::BatchLedger, message::RowMessage, outcome::ErrorClass, run::PlanSummary},
    PrimaryKey, RunId,
};
use resync_sync_start::SyncStartOutcome;
use resync_tests::Behaviour;

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
    assert_eq!(
        index
            .iter()
            .map(|e| e.key.to_string())
            .collect::<HashSet<_>>(),
        expected
    );
    for entry in &index {
        assert_eq!(entry.error_code, "UNABLE_TO_LOCK_ROW");
        assert_eq!(entry.error_class, ErrorClass::Retryable.as_str());
        assert_eq!(entry.attempts, 5, "threshold reached, not exceeded (I4)");
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

/// Duplicate SQS deliveries change no count: the same rows arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_do_not_change_any_count() {
    let rows = scaled(500, 100);
    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let started = env.runtime.start(&env.sync).await.unwrap();
    let SyncStartOutcome::Started {
        run_id, enqueued, ..
    } = started
    else {
        panic!("expected a started run, got {started:?}")
    };
    assert_eq!(enqueued, rows as u64);
    let delivery = env.runtime.deliveries.values().next().unwrap().clone();
    // The same messages delivered to two invocations, as SQS may do.
    let mut messages = Vec::new();
    while messages.len() < 10 {
        let want = 10 - messages.len() as i32;
        messages.extend(
            delivery
                .queue
                .receive(want, std::time::Duration::from_secs(1))
                .await
                .unwrap(),
        );
    }
    for _ in 0..2 {
        let event =
            resync::local::sqs_event(messages.clone(), "arn:aws:sqs:us-east-1:000000000000:q");
        let response = resync_delivery::handler(&delivery, resync::local::lambda_invocation(event))
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    let receipts: Vec<String> = messages
        .iter()
        .filter_map(|m| m.receipt_handle.clone())
        .collect();
    assert_eq!(delivery.queue.delete(&receipts).await.unwrap(), 0);
    // And copies of 20 rows' messages on the queue (at-least-once delivery).
    let copies: Vec<String> = (0..20).map(|i| duplicate_body(&run_id, i)).collect();
    for chunk in copies.chunks(10) {
        assert!(delivery.queue.send_batch(chunk).await.unwrap().is_empty());
    }
    let (record, _) = env
        .runtime
        .drive(&env.sync, &run_id, &|_| {})
        .await
        .unwrap();
    let counts = record.counts.unwrap();
    assert_eq!(counts.planned, rows as u64);
    assert_eq!(counts.delivered, rows as u64);
    assert_eq!(counts.failed, 0);
    assert_eq!(counts.retried_in_run, 0);
    let stats = env.destination.stats();
    assert!(
        stats.rows_received[0] >= rows as u64 + 10,
        "the twice-delivered batch reached the destination twice"
    );
    assert_eq!(stats.keys_received[0].len(), rows);
    assert!(env.index().await.is_empty());
}

fn duplicate_body(run_id: &RunId, i: usize) -> String {
    RowMessage {
        run_id: run_id.clone(),
        sync_id: resync_shared::SyncId::parse("customers").unwrap(),
        key: PrimaryKey::parse(key(i)).unwrap(),
        row: row(i, "v1").as_object().unwrap().clone().into(),
        carried_over: false,
        first_failed_at: None,
        prior_attempts: 0,
        attempts_before: 0,
        rate_limit_deferrals: 0,
    }
    .to_body()
}

/// Invocations that crash — before their handler ran, or after it did its work but
/// before the messages were deleted — leave every row recoverable and the counts exact;
/// copies that come back after the run closed are dropped, not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_invocations_leave_counts_exact() {
    let rows = scaled(400, 100);
    let env = TestEnv::with(EnvSettings {
        max_attempts: 5,
        options: LocalOptions {
            visibility_timeout_secs: 2,
            crash_before_handler: 1,
            crash_after_handler: 1,
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (rows as u64, rows as u64, 0)
    );
    let stats = env.destination.stats();
    assert_eq!(
        stats.delivered_keys.len(),
        rows,
        "every row reached the destination"
    );
    assert!(env.index().await.is_empty());

    // The lost batch's messages were never deleted: either run 1's pollers got them
    // back before it closed, or they wait on the queue until their visibility ends and
    // the next run's pollers drop them as settled.
    let queue = env
        .runtime
        .deliveries
        .values()
        .next()
        .unwrap()
        .queue
        .clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, in_flight) = queue.depth().await.unwrap();
        if in_flight == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lost batch never became visible"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    env.destination.next_run();
    let run2 = env.run().await.record.counts.unwrap();
    assert_eq!(run2.planned, 0);
    let stats = env.destination.stats();
    assert_eq!(
        stats.rows_received[1], 0,
        "late copies of a closed run are not re-sent"
    );
    assert_eq!(stats.received_after_delivered, 0);
}

/// A copy of a row that arrives after its run closed is dropped, not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_copies_of_a_closed_run_are_dropped() {
    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..10).await;
    let run = env.run().await;
    assert_eq!(run.record.counts.unwrap().delivered, 10);
    let delivery = env.runtime.deliveries.values().next().unwrap().clone();
    let copies: Vec<String> = (0..3)
        .map(|i| duplicate_body(&run.record.run_id, i))
        .collect();
    assert!(delivery.queue.send_batch(&copies).await.unwrap().is_empty());
    let sent_before = env.destination.stats().rows_received[0];
    let mut messages = Vec::new();
    while messages.len() < 3 {
        messages.extend(
            delivery
                .queue
                .receive(10, std::time::Duration::from_secs(1))
                .await
                .unwrap(),
        );
    }
    let event = resync::local::sqs_event(messages.clone(), "arn:aws:sqs:us-east-1:000000000000:q");
    let response = resync_delivery::handler(&delivery, resync::local::lambda_invocation(event))
        .await
        .unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "the copies are settled: delete them"
    );
    let stats = env.destination.stats();
    assert_eq!(
        stats.rows_received[0], sent_before,
        "nothing was sent again"
    );
}

/// A bad line and a duplicate key are rejected and reported; the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_and_duplicate_keys_are_rejected_while_the_rest_is_delivered() {
    let env = TestEnv::start().await;
    let mut jsonl = String::new();
    for i in 0..10 {
        jsonl.push_str(&format!("{}\n", row(i, "v1")));
    }
    jsonl.push_str("{\"id\": \"cust-000100\", \"email\": \n"); // line 11: malformed
    jsonl.push_str("{\"email\": \"nokey@example.com\"}\n"); // line 12: no key
    jsonl.push_str(&format!("{}\n", row(3, "v2"))); // line 13: duplicate of line 4
    env.export("a.jsonl", jsonl.into_bytes()).await;
    env.export(
        "b.csv",
        b"id,email,version\ncust-000200,x@example.com,v1\ncust-000201\n".to_vec(),
    )
    .await;

    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    // Delivered: rows 0..10 without key 3, plus one CSV row.
    assert_eq!(counts.delivered, 9 + 1);
    // Rejected: malformed, missing key, both copies of key 3, short CSV record.
    assert_eq!(counts.rejected, 5);
    assert_eq!(counts.planned, 15);
    assert_eq!(counts.failed, 0);
    let index = env.index().await;
    assert_eq!(index.len(), 1, "only the keyed rejection is indexed");
    assert_eq!(index[0].key.as_str(), key(3));
    assert_eq!(index[0].error_code, "non_unique_primary_key");
    assert!(
        index[0].error_message.contains("a.jsonl line"),
        "{}",
        index[0].error_message
    );
    assert!(index[0].payload.is_none());
    let delivered = env.destination.stats().delivered_keys;
    assert!(!delivered.contains(&key(3)));
    assert!(delivered.contains("cust-000200"));

    // The rejected key waits for the source: nothing to send next run.
    env.destination.next_run();
    let run2 = env.run().await.record.counts.unwrap();
    assert_eq!(run2.planned, 0);
    assert_eq!(env.index().await.len(), 1);
}

/// A row too large for one queue message is rejected with its size; its neighbours
/// (in the same batch of ten) are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_larger_than_a_message_is_rejected_and_its_batch_still_delivered() {
    let env = TestEnv::start().await;
    let mut jsonl = String::new();
    for i in 0..12 {
        if i == 4 {
            let huge = "x".repeat(300_000);
            jsonl.push_str(&format!(
                "{{\"id\": \"{}\", \"notes\": \"{huge}\"}}\n",
                key(i)
            ));
        } else {
            jsonl.push_str(&format!("{}\n", row(i, "v1")));
        }
    }
    env.export("big.jsonl", jsonl.into_bytes()).await;

    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(counts.delivered, 11);
    assert_eq!(counts.rejected, 1);
    let index = env.index().await;
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].key.as_str(), key(4));
    assert_eq!(index[0].error_code, "row_too_large");
    assert!(
        index[0].error_message.contains("bytes as a message"),
        "{}",
        index[0].error_message
    );
    let delivered = env.destination.stats().delivered_keys;
    assert!(!delivered.contains(&key(4)));
    assert!(delivered.contains(&key(5)) && delivered.contains(&key(11)));
}

/// Wide rows: ten of them together exceed what one `SendMessageBatch` may carry, though
/// each fits a message. They go in several requests and every row is delivered (moto
/// refuses an oversized batch request whole, as SQS does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_are_sent_in_requests_within_the_batch_byte_limit() {
    let env = TestEnv::start().await;
    let notes = "n".repeat(120_000);
    let mut jsonl = String::new();
    for i in 0..12 {
        jsonl.push_str(&format!(
            "{{\"id\": \"{}\", \"notes\": \"{notes}\"}}\n",
            key(i)
        ));
    }
    env.export("wide.jsonl", jsonl.into_bytes()).await;

    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.delivered, counts.rejected, counts.failed),
        (12, 0, 0)
    );
    assert!(env.index().await.is_empty());
    assert_eq!(env.destination.stats().delivered_keys.len(), 12);
}

/// New rows and failed keys merge: each key once, the source's values win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_run_merges_new_rows_with_failed_keys_once_each() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 1,
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("0001.jsonl.gz", 0..20).await;
    env.destination.set(
        key(5),
        RowBehaviour::Locked {
            until_attempt: None,
        },
    );
    env.destination.set(
        key(6),
        RowBehaviour::Locked {
            until_attempt: None,
        },
    );
    let run1 = env.run().await.record.counts.unwrap();
    assert_eq!(run1.failed, 2);

    env.destination.next_run();
    // The next export has new rows and a new version of key 5.
    let mut jsonl = String::new();
    for i in 20..25 {
        jsonl.push_str(&format!("{}\n", row(i, "v1")));
    }
    jsonl.push_str(&format!("{}\n", row(5, "v2")));
    env.export("0002.jsonl", jsonl.into_bytes()).await;
    let run2 = env.run().await.record.counts.unwrap();
    assert_eq!(run2.planned, 5 + 2, "5 new rows + 2 failed keys, each once");
    assert_eq!(run2.carried_over, 2);
    assert_eq!(run2.recovered, 2);
    let sent = &env.destination.stats().keys_received[1];
    let expected: std::collections::HashSet<String> = [20, 21, 22, 23, 24, 5, 6].map(key).into();
    assert_eq!(sent, &expected);
    assert!(env.index().await.is_empty());
}

/// Two runs of a sync never overlap (I5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_while_a_run_is_open_is_refused() {
    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..30).await;
    let first = env.runtime.start(&env.sync).await.unwrap();
    let SyncStartOutcome::Started { run_id, .. } = first else {
        panic!("expected a start")
    };
    let second = env.runtime.start(&env.sync).await.unwrap();
    assert_eq!(
        second,
        SyncStartOutcome::Skipped {
            sync_id: env.sync.clone(),
            open_run: run_id.clone()
        }
    );
    let (record, _) = env
        .runtime
        .drive(&env.sync, &run_id, &|_| {})
        .await
        .unwrap();
    assert_eq!(record.counts.unwrap().delivered, 30);
    // Released: the next start opens a run (with nothing new to send).
    let third = env.runtime.start(&env.sync).await.unwrap();
    assert!(
        matches!(third, SyncStartOutcome::Started { enqueued: 0, .. }),
        "{third:?}"
    );
}

/// A closed run emits its metrics; failed rows are reported with counts, not values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_run_emits_metrics_without_row_values() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 1,
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..10).await;
    env.destination.set(
        key(2),
        RowBehaviour::Locked {
            until_attempt: None,
        },
    );
    env.run().await;
    let metrics = env.runtime.metrics.lock().unwrap().clone();
    assert_eq!(metrics.len(), 1);
    let line = &metrics[0];
    assert_eq!(line["RowsDelivered"], 9);
    assert_eq!(line["RowsFailed"], 1);
    assert_eq!(line["FailedIndexSize"], 1);
    assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Namespace"], "resync");
    let text = line.to_string();
    assert!(
        !text.contains("@example.com"),
        "no row values in metrics (I6)"
    );
}

/// A run with failures publishes its summary to the run-events bus and an alert to the
/// SNS topic (seen here through an EventBridge rule and an SNS subscription to queues).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_summaries_and_alerts_reach_eventbridge_and_sns() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 1,
        ..EnvSettings::default()
    })
    .await;
    let sinks = env.sinks().await;

    env.export_rows("batch.jsonl.gz", 0..10).await;
    env.destination.set(
        key(4),
        RowBehaviour::Locked {
            until_attempt: None,
        },
    );
    let run = env.run().await;

    // The run-settled notice, the run summary and the alert.
    let event_bodies = sinks.receive(&sinks.events_url, 3).await;
    let events: Vec<serde_json::Value> = event_bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let settled: Vec<_> = events
        .iter()
        .filter(|e| e["detail-type"] == "Run settled")
        .collect();
    assert_eq!(settled.len(), 1, "one run-settled notice: {events:?}");
    assert_eq!(settled[0]["detail"]["run_id"], run.record.run_id.as_str());
    assert_eq!(settled[0]["detail"]["sync_id"], env.sync.as_str());
    let closed = events
        .iter()
        .find(|e| e["detail-type"] == "Run Closed")
        .expect("a Run Closed event");
    assert_eq!(closed["detail"]["run_id"], run.record.run_id.as_str());
    assert_eq!(closed["detail"]["delivered"], 9);
    assert_eq!(closed["detail"]["failed"], 1);
    assert_eq!(closed["detail"]["failed_index_size"], 1);
    assert_eq!(closed["detail"]["top_errors"][0][0], "UNABLE_TO_LOCK_ROW");
    let alert = events
        .iter()
        .find(|e| e["detail-type"] == "Sync Alert")
        .expect("a Sync Alert event");
    assert_eq!(alert["detail"]["severity"], "warn");

    let alert_bodies = sinks.receive(&sinks.alerts_url, 1).await;
    assert_eq!(alert_bodies.len(), 1, "one SNS alert");
    assert!(
        alert_bodies[0].contains("\"severity\": \"warn\""),
        "{}",
        alert_bodies[0]
    );
    for body in event_bodies.iter().chain(&alert_bodies) {
        assert!(
            !body.contains("@example.com"),
            "no row values in events or alerts (I6)"
        );
    }
}

/// The update that makes a run look settled tells the finalizer (a "Run settled" event
/// that a rule routes to it), so the run closes within seconds of its last row, not at
/// the finalizer's next scheduled tick — a minute in a deployment, and here longer than
/// the test waits, so only the notice can close the run in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_closes_when_its_last_row_settles_not_at_the_next_tick() {
    let env = TestEnv::with(EnvSettings {
        options: LocalOptions {
            finalize_every: std::time::Duration::from_secs(3600),
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..50).await;
    let run = tokio::time::timeout(std::time::Duration::from_secs(60), env.run())
        .await
        .expect("the run did not close within 60 s: no run-settled notice reached the finalizer");
    assert_eq!(run.record.counts.unwrap().delivered, 50);
}

/// A delivery invocation's ledger item that delivered the rows `keys`.
fn delivered(keys: std::ops::Range<usize>) -> BatchLedger {
    BatchLedger {
        delivered: keys.map(|i| PrimaryKey::parse(key(i)).unwrap()).collect(),
        ..BatchLedger::default()
    }
}

/// Exactly one update of a run reports it settled, whichever comes last: the ledger
/// write that takes the settled hint to the enqueued count, or sync-start's plan when
/// every row was settled while it was still planning. That update's caller tells the
/// finalizer; no other may, or several finalizers would close the run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_update_of_a_run_reports_it_settled() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();

    // Rows settle while the run delivers: only the write that reaches 30 of 30 reports
    // it, not the retried copy of that write that comes after.
    let delivering = RunId::parse("run-delivering").unwrap();
    runs.open_run(&env.sync, &delivering).await.unwrap();
    let planned = runs
        .mark_planned(
            &env.sync,
            &delivering,
            &PlanSummary {
                enqueued: 30,
                source_objects: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!planned, "nothing settled yet");
    let mut reported = Vec::new();
    for (i, keys) in [0..10, 10..25, 25..30, 25..30].into_iter().enumerate() {
        let id = format!("b{i}");
        reported.push(
            runs.record_batch(&env.sync, &delivering, &id, &delivered(keys))
                .await
                .unwrap(),
        );
    }
    assert_eq!(reported, [false, false, true, false]);

    // Every row settled while sync-start was planning: no ledger write can tell (the
    // enqueued count is not known yet); the plan's update does.
    let planning = RunId::parse("run-planning").unwrap();
    runs.open_run(&env.sync, &planning).await.unwrap();
    let written = runs
        .record_batch(&env.sync, &planning, "b0", &delivered(0..30))
        .await
        .unwrap();
    assert!(
        !written,
        "a planning run is never reported by a ledger write"
    );
    let planned = runs
        .mark_planned(
            &env.sync,
            &planning,
            &PlanSummary {
                enqueued: 30,
                source_objects: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(planned, "the plan's update finds every row settled");
}

/// Two finalizers at once (the schedule's and a run-settled notice's) report a run
/// once: only the invocation that claims the close reports it. The claimant may claim
/// again (Lambda retries an invocation under its request id); a claim left by a dead
/// finalizer can be taken over once it is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_finalizer_claims_a_runs_close() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    let run = RunId::parse("run-claimed").unwrap();
    let stale = std::time::Duration::from_secs(150);
    let now = time::OffsetDateTime::now_utc();
    runs.open_run(&env.sync, &run).await.unwrap();
    let claim = |who: &'static str, at: time::OffsetDateTime| {
        let runs = runs.clone();
        let sync = env.sync.clone();
        let run = run.clone();
        async move { runs.claim_close(&sync, &run, who, at, stale).await.unwrap() }
    };
    assert!(!claim("a", now).await, "a planning run is not closed");
    runs.mark_planned(
        &env.sync,
        &run,
        &PlanSummary {
            enqueued: 1,
            source_objects: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(claim("a", now).await);
    assert!(!claim("b", now).await, "a second finalizer backs off");
    assert!(claim("a", now).await, "a retried invocation claims again");
    let later = now + stale + time::Duration::seconds(1);
    assert!(claim("b", later).await, "a stale claim is taken over");
    assert!(!claim("a", later).await);
}

/// The same through the finalizer itself: two invocations at once on a settled run
/// (each would report it: a finalizer reports before its conditional close) — one
/// closes and reports, the other backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_finalizers_at_once_close_and_report_a_run_once() {
    use aws_lambda_events::eventbridge::EventBridgeEvent;
    use resync_finalizer::{FinalizerDetail, SyncReport};

    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..5).await;
    let run_id = match env.runtime.start(&env.sync).await.unwrap() {
        SyncStartOutcome::Started { run_id, .. } => run_id,
        other => panic!("{other:?}"),
    };
    // Every row settled, as delivery records it; the run not closed yet (no pollers).
    env.runtime
        .runs()
        .record_batch(&env.sync, &run_id, "all", &delivered(0..5))
        .await
        .unwrap();
    let finalize = |invocation: &str| {
        let mut event: EventBridgeEvent<FinalizerDetail> = EventBridgeEvent::default();
        event.detail = FinalizerDetail {
            sync_id: Some(env.sync.to_string()),
        };
        let mut context = lambda_runtime::Context::default();
        context.request_id = invocation.into();
        resync_finalizer::handler(
            &env.runtime.finalizer,
            lambda_runtime::LambdaEvent::new(event, context),
        )
    };
    let (a, b) = tokio::join!(finalize("invocation-a"), finalize("invocation-b"));
    let closed = [a.unwrap(), b.unwrap()]
        .iter()
        .filter(|output| matches!(output.syncs[0], SyncReport::Closed { .. }))
        .count();
    assert_eq!(
        closed, 1,
        "exactly one finalizer closes and reports the run"
    );
    let metrics = env.runtime.metrics.lock().unwrap().len();
    assert_eq!(metrics, 1, "one metrics line for the run");
    let record = env
        .runtime
        .runs()
        .run(&env.sync, &run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.counts.unwrap().delivered, 5);
}

/// A clean run pays ledger writes per batch, not per row: ≤ 0.05 write units per
/// delivered row, counted from the ledger items it wrote (1 unit per started KB, plus
/// the settled-counter update of each item).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_costs_at_most_a_twentieth_of_a_write_unit_per_row() {
    let rows = scaled(3_000, 300);
    let env = TestEnv::with(EnvSettings {
        options: LocalOptions {
            // moto's ReceiveMessage costs ~1 ms per queued message: on it, filling an
            // invocation takes seconds, so the window is longer there.
            batching_window: std::time::Duration::from_secs(if remote() { 15 } else { 1 }),
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(counts.delivered, rows as u64);
    let (batches, _) = env.runtime.runs().ledger(&run.record.run_id).await.unwrap();
    let write_units: usize = batches
        .iter()
        .map(|b| {
            // Item size: the ledger JSON plus keys and attribute names (~100 bytes).
            let bytes = serde_json::to_string(b).unwrap().len() + 100;
            bytes.div_ceil(1024) + 1
        })
        .sum();
    let per_row = write_units as f64 / counts.delivered as f64;
    assert!(
        per_row <= 0.05,
        "{write_units} write units for {} rows = {per_row:.3} per row ({} ledger items)",
        counts.delivered,
        batches.len()
    );
}

/// The local scheduler fires each sync on its schedule and runs it to a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_scheduler_runs_a_due_sync() {
    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..25).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runs = std::sync::Mutex::new(Vec::new());
    let stopper = stop.clone();
    resync::local::schedule(&env.runtime, stop, &|sync, result| {
        runs.lock()
            .unwrap()
            .push((sync.clone(), result.map(|r| r.record.counts)));
        stopper.store(true, std::sync::atomic::Ordering::SeqCst);
    })
    .await;
    let runs = runs.into_inner().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0, env.sync);
    let counts = runs[0].1.as_ref().unwrap().unwrap();
    assert_eq!(counts.delivered, 25);
}

/// The webhook's signing secret comes from Secrets Manager: every request is signed
/// with it (the destination refuses bad signatures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_secrets_come_from_secrets_manager() {
    let env = TestEnv::with(EnvSettings {
        secret_in_secrets_manager: true,
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..20).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.delivered, 20);
    let stats = env.destination.stats();
    assert_eq!(
        stats.bad_requests, 0,
        "every request carried a valid signature"
    );
}

/// A run that cannot run (its source bucket is gone) raises a critical alert, releases
/// the sync and loses nothing: once the source is back, the next run delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_run_alerts_critical_and_releases_the_sync() {
    let env = TestEnv::start().await;
    let sinks = env.sinks().await;
    let bucket = env.runtime.resources.source_bucket.clone();
    env.s3.delete_bucket().bucket(&bucket).send().await.unwrap();

    let err = env.runtime.start(&env.sync).await.unwrap_err();
    assert!(format!("{err:#}").contains("S3.ListObjectsV2"), "{err:#}");
    let events = sinks.receive(&sinks.events_url, 1).await;
    let alert: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(alert["detail-type"], "Sync Alert");
    assert_eq!(alert["detail"]["severity"], "critical");
    let state = env.runtime.runs().state(&env.sync).await.unwrap();
    assert_eq!(state.open_run, None, "the sync is released");

    env.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    env.export_rows("batch.jsonl.gz", 0..15).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.delivered, 15);
}

/// Options for the vendor scenarios (with `concurrency: 1`): a batching window long
/// enough to fill an invocation, so every destination call is as full as it can be.
/// moto's ReceiveMessage costs ~1 ms per queued message, so there it takes seconds to
/// gather a few hundred messages; the exact-count scenarios use ≤ 200 rows there.
fn full_batches() -> LocalOptions {
    LocalOptions {
        batching_window: std::time::Duration::from_secs(if remote() { 30 } else { 3 }),
        // moto's ReceiveMessage is not atomic: two receives in flight at once can both
        // return the same message (seen: a batch of 200 holding one row twice, so 199
        // distinct rows and a third call). SQS is at-least-once too, but these tests
        // count calls exactly, so on moto a poller keeps one receive in flight.
        receives_in_flight: if remote() { 1 } else { 4 },
        ..LocalOptions::default()
    }
}

/// Issue 4 — the seed scenario with Salesforce as the destination: 5 records locked
/// (`UNABLE_TO_LOCK_ROW`), 2 released during run 1, 3 only for run 2; JWT bearer auth
/// with the key in Secrets Manager and tokens that expire every 20 calls (3 on moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_seed_scenario_recovers_locked_records() {
    let rows = scaled(10_000, 400);
    let env = TestEnv::with(EnvSettings {
        max_attempts: 5,
        vendor: Vendor::Salesforce {
            jwt: true,
            parent_field: false,
        },
        concurrency: 1,
        options: LocalOptions {
            batching_window: std::time::Duration::from_secs(3),
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    let org = env.salesforce.as_ref().unwrap();
    let token_lifetime = scaled(20, 3) as u64;
    org.expire_tokens_after(token_lifetime as u32);
    env.export_rows("part-0000.jsonl.gz", 0..rows / 2).await;
    env.export_rows("part-0001.jsonl.gz", rows / 2..rows).await;
    let released_in_run = [7, rows / 2 + 3];
    let locked_until_next = [1, rows / 3, rows - 1];
    for i in released_in_run {
        org.set(
            key(i),
            Behaviour::Locked {
                until_attempt: Some(2),
            },
        );
    }
    for i in locked_until_next {
        org.set(
            key(i),
            Behaviour::Locked {
                until_attempt: None,
            },
        );
    }

    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.planned, rows as u64);
    assert_eq!((counts.delivered, counts.failed), (rows as u64 - 3, 3));
    assert_eq!(counts.retried_in_run, 5);
    let index = env.index().await;
    let expected: HashSet<String> = locked_until_next.iter().map(|&i| key(i)).collect();
    assert_eq!(
        index
            .iter()
            .map(|e| e.key.to_string())
            .collect::<HashSet<_>>(),
        expected
    );
    for entry in &index {
        assert_eq!(entry.error_code, "UNABLE_TO_LOCK_ROW");
        assert_eq!(entry.error_class, ErrorClass::Retryable.as_str());
        assert_eq!(entry.attempts, 5, "threshold reached, not exceeded (I4)");
    }
    let stats = org.stats();
    // Retries send only the failing records: every record once, the 2 released ones
    // 3 times, the 3 locked ones 5 times.
    let first_pass_calls = rows.div_ceil(200) as u64;
    assert_eq!(stats.records[0], rows as u64 + 2 * 2 + 3 * 4);
    assert_eq!(stats.ids[0].len(), rows);
    assert!(stats.largest_call <= 200);
    if !remote() {
        // Full calls (moto is too slow to fill 400-message invocations in the window).
        assert!(
            (first_pass_calls..=first_pass_calls + 2 * 2 + 3 * 4).contains(&stats.calls[0]),
            "{} calls for {rows} records",
            stats.calls[0]
        );
        assert_eq!(stats.largest_call, 200);
    }

    org.next_run();
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!((counts.planned, counts.carried_over), (3, 3));
    assert_eq!(
        (counts.delivered, counts.recovered, counts.failed),
        (3, 3, 0)
    );
    assert!(
        env.index().await.is_empty(),
        "the index is empty after run 2"
    );
    let stats = org.stats();
    assert_eq!(stats.ids[1], expected, "run 2 sends only those 3");
    assert_eq!(stats.calls[1], 1, "in one call");
    assert_eq!(
        stats.received_after_written, 0,
        "successes are never re-sent (I3)"
    );
    assert_eq!(stats.written.len(), rows);
    assert_eq!(
        stats.malformed_calls, 0,
        "every call had the documented shape"
    );
    // Tokens expire every 20 calls (3 on moto); each expiry cost exactly one refresh.
    let accepted: u64 = stats.calls.iter().sum();
    assert!(
        stats.unauthorized_calls >= 1,
        "tokens expired during the run"
    );
    assert_eq!(stats.tokens_issued, accepted.div_ceil(token_lifetime));
    eprintln!(
        "salesforce seed scenario: calls per run {:?}, records per run {:?}, tokens {}, refused for expiry {}",
        stats.calls, stats.records, stats.tokens_issued, stats.unauthorized_calls
    );
}

/// Issue 4 — a clean Salesforce run of N rows makes exactly ⌈N/200⌉ calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_salesforce_run_makes_one_call_per_200_rows() {
    let rows = scaled(1_000, 200);
    let env = TestEnv::with(EnvSettings {
        vendor: Vendor::Salesforce {
            jwt: false,
            parent_field: false,
        },
        concurrency: 1,
        options: full_batches(),
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.delivered, rows as u64);
    let stats = env.salesforce.as_ref().unwrap().stats();
    assert_eq!(stats.calls[0], rows.div_ceil(200) as u64, "{rows} rows");
    assert_eq!(stats.records[0], rows as u64);
    assert_eq!(
        stats.tokens_issued, 1,
        "the token is cached across invocations"
    );
}

/// Issue 4 — lock-aware batching: rows are ordered by their parent (`AccountId`) before
/// they are cut into calls, so each account's rows share one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_rows_of_one_account_share_a_call() {
    let env = TestEnv::with(EnvSettings {
        vendor: Vendor::Salesforce {
            jwt: false,
            parent_field: true,
        },
        concurrency: 1,
        options: full_batches(),
        ..EnvSettings::default()
    })
    .await;
    let org = env.salesforce.as_ref().unwrap();
    org.group_calls_by("AccountId");
    // 400 rows of 20 accounts (200 of 10 on moto), interleaved in the export.
    let rows = scaled(400, 200);
    let accounts = rows / 20;
    let mut jsonl = String::new();
    for i in 0..rows {
        let mut value = row(i, "v1");
        value["account"] = serde_json::json!(format!("001-acc-{:02}", i % accounts));
        jsonl.push_str(&format!("{value}\n"));
    }
    env.export("accounts.jsonl", jsonl.into_bytes()).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.delivered, rows as u64);
    let stats = org.stats();
    assert_eq!(stats.calls[0], rows as u64 / 200);
    let mut calls_per_account = std::collections::HashMap::new();
    for groups in &stats.groups_per_call {
        for account in groups {
            *calls_per_account.entry(account.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(calls_per_account.len(), accounts);
    assert!(
        calls_per_account.values().all(|&n| n == 1),
        "every account in exactly one call: {calls_per_account:?}"
    );
}

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

/// Issue 4 — rate limits do not burn attempts: with a threshold of ONE attempt and a
/// portal that takes 3 calls per 2 seconds, every row is still delivered, each exactly
/// once: rate-limited rows wait (re-enqueued with a delay) instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_rate_limits_delay_rows_without_failing_them() {
    let rows = scaled(1_000, 200);
    let env = TestEnv::with(EnvSettings {
        max_attempts: 1,
        vendor: Vendor::Hubspot,
        concurrency: 2,
        ..EnvSettings::default()
    })
    .await;
    let portal = env.hubspot.as_ref().unwrap();
    portal.limit_calls(3, std::time::Duration::from_secs(2));
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (rows as u64, 0));
    assert!(env.index().await.is_empty());
    let stats = portal.stats();
    // Every row written; SQS is at-least-once, so an emulator may deliver a copy twice
    // (seen once on moto: 201 writes for 200 rows) — upserts make that harmless.
    assert!(stats.records[0] >= rows as u64, "every row written");
    assert_eq!(stats.ids[0].len(), rows);
    eprintln!(
        "hubspot rate limit: {} accepted calls, {} answered 429, {} rows waited",
        stats.calls[0], stats.rate_limited_calls, counts.retried_in_run
    );
    assert!(
        counts.retried_in_run > 0,
        "{} calls in a 3-per-2s window: some rows had to wait",
        stats.calls[0]
    );
}

/// Issue 4's open path: a rate-limited row is re-enqueued as a delayed copy, but SQS
/// refuses the copy (it carries one more field and no longer fits a message). The
/// original is then kept and settled the ordinary way — never deleted with no copy
/// behind it — and the row is delivered once the limit lifts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_row_whose_copy_sqs_refuses_is_kept_not_lost() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 5,
        vendor: Vendor::Hubspot,
        concurrency: 1,
        ..EnvSettings::default()
    })
    .await;
    let portal = env.hubspot.as_ref().unwrap();
    // Every call is answered 429 until the test lifts the limit.
    portal.limit_calls(0, std::time::Duration::from_secs(1));

    // Row 5's message is 10 bytes under the queue's limit; its copy adds
    // `"rate_limit_deferrals":1` and does not fit.
    let max = resync_shared::resources::MAX_MESSAGE_BYTES as usize;
    let body_of = |notes: &str, deferrals: u32| {
        RowMessage {
            run_id: RunId::from_event(time::OffsetDateTime::now_utc(), "event"),
            sync_id: env.sync.clone(),
            key: PrimaryKey::parse(key(5)).unwrap(),
            row: resync_shared::RowFields::from_text(wide_row(notes)).unwrap(),
            carried_over: false,
            first_failed_at: None,
            prior_attempts: 0,
            attempts_before: 0,
            rate_limit_deferrals: deferrals,
        }
        .to_body()
        .len()
    };
    let overhead = body_of("", 0);
    let notes = "n".repeat(max - 10 - overhead);
    assert_eq!(body_of(&notes, 0), max - 10, "the original fits");
    assert!(body_of(&notes, 1) > max, "the copy does not");
    let mut jsonl = String::new();
    for i in 0..5 {
        jsonl.push_str(&format!("{}\n", row(i, "v1")));
    }
    jsonl.push_str(&wide_row(&notes));
    jsonl.push('\n');
    env.export("limited.jsonl", jsonl.into_bytes()).await;

    let lift = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while portal.stats().rate_limited_calls < 2 {
            assert!(std::time::Instant::now() < deadline, "no call was limited");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        portal.limit_calls(100, std::time::Duration::from_secs(1));
    };
    // A lost row would keep the run open for ever: bounded, with the reason.
    let (run, ()) = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        tokio::join!(env.run(), lift)
    })
    .await
    .expect("the run closes (a row whose copy was refused must not be lost)");
    let counts = run.record.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (6, 0));
    assert!(env.index().await.is_empty());
    assert!(portal.stats().ids[0].contains(&key(5)));
}

/// Row 5 of the test above with its `notes`.
fn wide_row(notes: &str) -> String {
    serde_json::json!({"id": key(5), "email": "c5@example.com", "notes": notes}).to_string()
}
