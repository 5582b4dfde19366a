//! A destination that is down: its circuit breaker pauses delivery without spending
//! the rows' attempts, probes one request at a time, and resumes when it answers; one
//! that stays down ends the run by its deadline, rows kept, with a critical alert.

use std::time::{Duration, Instant};

use resync::destination_server::RowBehaviour;

use crate::helpers::{full_batches, key, remote, scaled, EnvSettings, TestEnv};

/// The breaker opens after 3 requests in a row fail as a whole; a probe every second.
const BREAKER: &str = ", pause_after_failed_requests: 3, pause_secs: 1";

/// Issue 13, item 16: a destination that was down for a while failed every row: each
/// backoff round spent an attempt of every row, so two rounds of 503s (the threshold
/// here) sent them all to the index although the destination came back moments later.
/// Now, after 3 whole failures, delivery pauses: rows wait without spending attempts,
/// one probe at a time tries again, and when the destination answers, delivery resumes
/// and every row is delivered in the same run. The destination is brought back once it
/// refused 22 requests — more than the 50 rows' 4 attempts (20 requests of 10), so
/// without the breaker every row would have failed by then. A row's k-th attempt starts
/// after its earlier invocations recorded k − 1 whole failures, so with 4 attempts and
/// a breaker at 3 no row spends its last one while the destination is down (with 2
/// attempts, as this test first had, a row whose retry raced another invocation's record
/// could: 8 or 10 of 50 failed now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_comes_back_gets_every_row_in_the_same_run() {
    let rows = 50;
    let env = TestEnv::with(EnvSettings {
        max_attempts: 4,
        batch_size: 10,
        concurrency: 2,
        retry_extra: BREAKER,
        options: full_batches(),
        ..EnvSettings::default()
    })
    .await;
    env.destination.set_down(true);
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let bring_back = async {
        // LocalStack and moto batch with a 30 s window (`full_batches`), so the
        // refusals come slower there.
        let bound = Instant::now() + Duration::from_secs(if remote() { 300 } else { 60 });
        while env.destination.stats().refused_while_down < 22 && Instant::now() < bound {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        env.destination.set_down(false);
    };
    let (run, ()) = tokio::join!(env.run(), bring_back);
    let counts = run.record.counts.unwrap();
    let stats = env.destination.stats();
    assert!(stats.refused_while_down >= 22, "{stats:?}");
    assert_eq!(
        (counts.delivered, counts.failed),
        (rows as u64, 0),
        "{} requests refused while down",
        stats.refused_while_down
    );
    assert!(env.index().await.is_empty());
    assert_eq!(stats.delivered_keys.len(), rows);
}

/// Issue 13, item 16: a destination that stays down no longer keeps the run open nor
/// burns the rows' attempts in a few rounds: the breaker pauses delivery and the run
/// ends by its deadline with every row kept in the index (payload, for the next run)
/// and a critical alert naming the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_stays_down_ends_the_run_by_its_deadline_with_an_alert() {
    let rows = scaled(40, 20);
    let deadline_secs = 12;
    let env = TestEnv::with(EnvSettings {
        max_attempts: 5,
        batch_size: 10,
        concurrency: 2,
        retry_extra: BREAKER,
        run_deadline_secs: Some(deadline_secs),
        ..EnvSettings::default()
    })
    .await;
    let sinks = env.sinks().await;
    env.destination.set_down(true);
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let run = env.run().await.record;
    let counts = run.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (0, rows as u64));
    let deadline = run.deadline.unwrap();
    assert!(run.closed_at.unwrap() - deadline < time::Duration::seconds(30));
    let index = env.index().await;
    assert_eq!(index.len(), rows);
    for entry in &index {
        assert!(entry.payload.is_some(), "{entry:?}");
        assert!(
            entry.attempts < 5,
            "attempts burned while paused: {entry:?}"
        );
    }
    assert!(index.iter().any(|e| e.key.as_str() == key(0)));
    // Probes, not every row's every attempt: 40 rows × 5 attempts would be 20+ requests
    // of 10 in a few seconds; paused, about one request per second of the deadline.
    let refused = env.destination.stats().refused_while_down;
    assert!(
        refused <= 3 + 2 * 2 + deadline_secs + 2,
        "{refused} requests while down"
    );
    let alerts = sinks.receive(&sinks.alerts_url, 2).await;
    let critical = alerts
        .iter()
        .find(|body| body.contains("\"severity\": \"critical\""))
        .unwrap_or_else(|| panic!("no critical alert: {alerts:?}"));
    assert!(critical.contains("destination hook"), "{critical}");
    assert!(critical.contains("HTTP_503"), "{critical}");
}

/// The breaker took a request whose every row the destination answered "retry" (rows
/// locked by another writer, answered one by one in the results document) for a
/// destination that is down: the same retryable code for every row read as a whole
/// failure. A row locked for good, retried alone, opened the breaker after 3 attempts,
/// and from then on every probe — that row again — "failed", so the row waited without
/// spending attempts until the run's deadline instead of failing at its threshold
/// (the seed scenario hung on this under load, its run deadline 45 minutes away). Only a
/// request that got no answer about its rows (a transport error, a non-2xx status) is a
/// whole failure now: the row fails at the threshold, by its own answer, long before
/// the deadline, and the breaker stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_answered_retry_one_by_one_are_an_answer_not_a_destination_down() {
    let deadline_secs = 120;
    let env = TestEnv::with(EnvSettings {
        max_attempts: 7,
        batch_size: 10,
        retry_extra: BREAKER,
        run_deadline_secs: Some(deadline_secs),
        ..EnvSettings::default()
    })
    .await;
    let locked = key(3);
    env.destination.set(
        locked.clone(),
        RowBehaviour::Locked {
            until_attempt: None,
        },
    );
    env.export_rows("batch.jsonl.gz", 0..5).await;
    let run = env.run().await.record;
    let counts = run.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (4, 1));
    assert!(
        run.closed_at.unwrap() < run.deadline.unwrap(),
        "the row waited for the deadline: closed {:?}, deadline {:?}",
        run.closed_at,
        run.deadline
    );
    let index = env.index().await;
    assert_eq!(index.len(), 1);
    let entry = &index[0];
    assert_eq!(entry.key.as_str(), locked);
    assert_eq!(entry.error_code, "UNABLE_TO_LOCK_ROW", "{entry:?}");
    assert_eq!(entry.attempts, 7, "failed at its threshold: {entry:?}");
}
