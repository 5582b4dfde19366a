//! Packed rows (a destination's `packing`, issue 14 item 1): a run's rows travel in
//! segments of the destination's batch size, one queue message each, and delivery
//! sends a segment as one request. A row that needs another try leaves its segment as
//! a message of its own, with the per-row backoff and threshold of unpacked rows; the
//! segment's other rows are not sent again. Checked from what the destination
//! received and what the index holds.

use std::collections::{HashMap, HashSet};

use resync::{
    destination_server::RowBehaviour,
    local::{AtLeastOnce, CrashRules, LocalOptions},
};
use resync_shared::crash_points::CrashPoint;

use crate::helpers::{key, scaled, EnvSettings, TestEnv};

fn packed(options: LocalOptions) -> EnvSettings {
    EnvSettings {
        packing: true,
        batch_size: 100,
        options,
        ..EnvSettings::default()
    }
}

/// How often the destination received each key in the first run.
fn sends(env: &TestEnv) -> HashMap<String, u32> {
    env.destination
        .stats()
        .sends
        .first()
        .cloned()
        .unwrap_or_default()
}

/// A clean packed run makes one destination request per segment (⌈N / batch⌉) and
/// delivers every row exactly once, with exact counts and an empty index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_packed_run_sends_each_segment_as_one_request() {
    let env = TestEnv::with(packed(LocalOptions::default())).await;
    let rows = scaled(1_000, 300);
    env.export_rows("1.jsonl.gz", 0..rows).await;
    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (rows as u64, rows as u64, 0)
    );
    let stats = env.destination.stats();
    assert_eq!(
        stats.requests,
        vec![rows.div_ceil(100) as u64],
        "one request per segment"
    );
    assert_eq!(stats.largest_request, 100);
    let sends = sends(&env);
    assert_eq!(sends.len(), rows);
    assert!(sends.values().all(|&n| n == 1), "every row sent once");
    // A segment of up to 100 rows in each message, up to 5 messages per invocation
    // ((60 s - 10 s) / the 10 s request timeout): far fewer invocations than rows.
    assert!(
        run.invocations <= rows.div_ceil(100),
        "{} invocations for {} segments",
        run.invocations,
        rows.div_ceil(100)
    );
    assert!(env.index().await.is_empty());
    // One message per segment: 10 segments of ~10 KB go in one SendMessageBatch (one
    // message per row would take one call per 10 rows).
    let sent = env.requests.snapshot().by_operation["sqs.SendMessageBatch"];
    assert_eq!(sent, rows.div_ceil(100).div_ceil(10) as u64);
}

/// A packed row the destination refuses leaves its segment: retried alone up to the
/// threshold (a lock released at its third attempt is delivered; one held all run
/// fails after 4 attempts), a permanent refusal fails at once — and no other row of
/// their segments is sent twice. The failures are kept in the index with their reason
/// and attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_row_to_retry_leaves_its_segment_and_the_others_are_sent_once() {
    let env = TestEnv::with(packed(LocalOptions::default())).await;
    let rows = 250;
    env.destination.set(
        key(3),
        RowBehaviour::Locked {
            until_attempt: Some(2),
        },
    );
    env.destination.set(
        key(120),
        RowBehaviour::Locked {
            until_attempt: None,
        },
    );
    env.destination.set(
        key(201),
        RowBehaviour::RejectThisRun {
            code: "INVALID_EMAIL".into(),
        },
    );
    env.export_rows("1.jsonl.gz", 0..rows).await;
    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (rows as u64, rows as u64 - 2, 2)
    );
    let sends = sends(&env);
    assert_eq!(sends.len(), rows);
    assert_eq!(sends[&key(3)], 3, "released at its third attempt");
    assert_eq!(sends[&key(120)], 4, "the threshold");
    assert_eq!(sends[&key(201)], 1, "a permanent refusal is not retried");
    let others: Vec<_> = sends
        .iter()
        .filter(|(k, &n)| ![key(3), key(120), key(201)].contains(k) && n != 1)
        .collect();
    assert!(others.is_empty(), "rows sent more than once: {others:?}");
    let index: HashMap<String, (String, u32)> = env
        .index()
        .await
        .into_iter()
        .map(|e| (e.key.to_string(), (e.error_code, e.attempts_last_run)))
        .collect();
    assert_eq!(
        index,
        HashMap::from([
            (key(120), ("UNABLE_TO_LOCK_ROW".to_owned(), 4)),
            (key(201), ("INVALID_EMAIL".to_owned(), 1)),
        ])
    );
}

/// A packed delivery killed after its requests (before its ledger write), or whose
/// batch SQS handed to two invocations at once, sends the segment's rows again: the
/// counts stay exact, no row goes past the threshold, and the index holds exactly the
/// row the destination refused for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_segment_received_again_keeps_counts_and_the_threshold() {
    let cases = [
        (
            "crash after the requests",
            LocalOptions {
                visibility_timeout_secs: 1,
                crash_points: CrashRules::none().first(CrashPoint::DeliveryAfterDestinationCall, 2),
                ..LocalOptions::default()
            },
        ),
        (
            "every batch to two invocations",
            LocalOptions {
                at_least_once: AtLeastOnce {
                    seed: 7,
                    duplicate_batch: 1.0,
                    ..AtLeastOnce::default()
                },
                ..LocalOptions::default()
            },
        ),
    ];
    for (case, options) in cases {
        let env = TestEnv::with(packed(options)).await;
        let rows = 300;
        env.destination.set(
            key(42),
            RowBehaviour::Locked {
                until_attempt: None,
            },
        );
        env.export_rows("1.jsonl.gz", 0..rows).await;
        let run = env.run().await;
        let counts = run.record.counts.unwrap();
        assert_eq!(
            (counts.planned, counts.delivered, counts.failed),
            (rows as u64, rows as u64 - 1, 1),
            "{case}"
        );
        let sends = sends(&env);
        assert_eq!(sends.len(), rows, "{case}");
        let over: Vec<_> = sends.iter().filter(|(_, &n)| n > 4).collect();
        assert!(over.is_empty(), "{case}: past the threshold: {over:?}");
        let index: HashSet<String> = env
            .index()
            .await
            .into_iter()
            .map(|e| e.key.to_string())
            .collect();
        assert_eq!(index, HashSet::from([key(42)]), "{case}");
    }
}

/// The rows of a segment that the destination asked to retry after the same attempt go
/// back as one segment copy and are sent again in one request: 100 rows refused once
/// cost one more request, not one per invocation of single rows (5 rows each here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segments_rows_to_retry_go_back_together_and_take_one_request() {
    let env = TestEnv::with(packed(LocalOptions::default())).await;
    let rows = 300;
    for i in 100..200 {
        env.destination.set(
            key(i),
            RowBehaviour::Busy {
                retry_after_secs: 1,
                until_attempt: 1,
            },
        );
    }
    env.export_rows("1.jsonl.gz", 0..rows).await;
    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.delivered, counts.failed, counts.retried_in_run),
        (rows as u64, 0, 100)
    );
    let stats = env.destination.stats();
    assert_eq!(stats.requests, vec![4], "3 segments and 1 retried segment");
    let sends = sends(&env);
    for i in 0..rows {
        let want = if (100..200).contains(&i) { 2 } else { 1 };
        assert_eq!(sends[&key(i)], want, "row {i}");
    }
}

/// A packed run through a destination that is down and comes back: the segments'
/// rows wait (retries after whole-request failures, then the breaker's pause) as
/// segment copies, so the destination, once back, receives full requests rather than
/// a request per few single rows; every row is delivered in the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_rows_wait_out_a_destination_that_is_down_as_segments() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 4,
        retry_extra: ", pause_after_failed_requests: 3, pause_secs: 1",
        ..packed(LocalOptions::default())
    })
    .await;
    let rows = 500;
    env.destination.set_down(true);
    env.export_rows("1.jsonl.gz", 0..rows).await;
    let bring_back = async {
        let bound = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while env.destination.stats().refused_while_down < 6 && std::time::Instant::now() < bound {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        env.destination.set_down(false);
    };
    let (run, ()) = tokio::join!(env.run(), bring_back);
    let counts = run.record.counts.unwrap();
    let stats = env.destination.stats();
    assert!(stats.refused_while_down >= 6, "{stats:?}");
    assert_eq!((counts.delivered, counts.failed), (rows as u64, 0));
    assert!(env.index().await.is_empty());
    // Once back, the 5 segments' rows arrive in full requests: 5 of them (more only if
    // an invocation took a segment whose copy had been split from it by a refusal).
    // (Refused requests are not counted in `requests`.)
    let answered = stats.requests[0];
    assert!(
        answered <= 7,
        "{answered} answered requests for 5 segments of 100 rows (largest {})",
        stats.largest_request
    );
}
