//! A run planned again (issue 12): what its earlier planning attempts settled is
//! carried into the latest attempt's plan and outcome — delivered rows are not sent
//! again, spent attempts count against the threshold, and a row a late copy of an
//! earlier attempt delivered leaves the index.

use std::collections::HashSet;

use resync::{
    destination_server::RowBehaviour,
    local::{CrashRules, LocalOptions},
};
use resync_finalizer::SyncReport;
use resync_shared::{
    crash_points::CrashPoint,
    domain::{
        ledger::{BatchLedger, FailedRow},
        message::QueueMessage,
        outcome::RowError,
    },
    PrimaryKey, RowFields,
};
use resync_sync_start::SyncStartOutcome;

use crate::helpers::{key, row, EnvSettings, ScheduleEvent, TestEnv, LONGER_THAN_AN_INVOCATION};

fn keys(range: std::ops::Range<usize>) -> Vec<PrimaryKey> {
    range.map(|i| PrimaryKey::parse(key(i)).unwrap()).collect()
}

/// The event's first sync-start opened run `event.run_id` (attempt 0), and its rows
/// were settled as `first_attempt` says; then it died before recording its plan and
/// the finalizer abandoned it. The same event comes again: attempt 1 plans the run.
async fn plan_again_after(env: &TestEnv, event: &ScheduleEvent, first_attempt: BatchLedger) {
    let runs = env.runtime.runs();
    let run = &event.run_id;
    runs.acquire(&env.sync, run).await.unwrap();
    let record = runs.open_run(&env.sync, run).await.unwrap();
    assert_eq!(record.generation, 0);
    runs.record_batch(&env.sync, run, "first-attempt", &first_attempt)
        .await
        .unwrap();
    env.backdate_planning(run, LONGER_THAN_AN_INVOCATION).await;
    let report = env.runtime.finalize(&env.sync).await.unwrap();
    assert!(matches!(report, SyncReport::Abandoned { .. }), "{report:?}");
    let outcome = env.fire(event).await.unwrap();
    assert!(
        matches!(outcome, SyncStartOutcome::Started { enqueued: 20, .. }),
        "{outcome:?}"
    );
}

/// Issue 12: a re-planned run sent again every row an earlier planning attempt had
/// already delivered (the new attempt restarted everything). Attempt 0 delivered rows
/// 0–9; attempt 1 sends only rows 10–19, counts all 20 delivered, and the index stays
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_delivered_by_an_earlier_attempt_of_a_replanned_run_is_not_sent_again() {
    let env = TestEnv::start().await;
    env.export_rows("1.jsonl.gz", 0..20).await;
    let event = ScheduleEvent::new();
    let first_attempt = BatchLedger {
        delivered: keys(0..10),
        ..BatchLedger::default()
    };
    plan_again_after(&env, &event, first_attempt).await;

    let (record, _) = env
        .runtime
        .drive(&env.sync, &event.run_id, &|_| {})
        .await
        .unwrap();

    assert_eq!(record.generation, 1);
    let expected: HashSet<String> = (10..20).map(key).collect();
    assert_eq!(
        env.destination.stats().keys_received[0],
        expected,
        "rows the first attempt delivered were sent again"
    );
    assert_eq!(env.destination.stats().rows_received[0], 10);
    let counts = record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (20, 20, 0)
    );
    assert!(env.index().await.is_empty());
}

/// Issue 12: each planning attempt restarted its rows' attempts, so a row could reach
/// the destination more often than the threshold in one run (I4; `resync chaos` saw 5
/// against 4). A locked row that attempt 0 failed after 2 of its 4 attempts, and one
/// it retried 3 times, get the rest of their attempts from attempt 1, not 4 more: they
/// end in the index at the threshold, having been sent once more each (attempt 0 also
/// counts one send per key that no ledger shows: an invocation may have died between
/// the destination's answer and its ledger write, so key 3 is carried with 3 spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_an_earlier_attempt_tried_gets_only_the_rest_of_its_attempts() {
    let env = TestEnv::start().await;
    env.export_rows("1.jsonl.gz", 0..20).await;
    for i in [3, 4] {
        env.destination.set(
            key(i),
            RowBehaviour::Locked {
                until_attempt: None,
            },
        );
    }
    let event = ScheduleEvent::new();
    let first_attempt = BatchLedger {
        retrying: [keys(3..4), keys(4..5), keys(4..5), keys(4..5)].concat(),
        failed: vec![FailedRow {
            key: PrimaryKey::parse(key(3)).unwrap(),
            error: RowError::permanent("INVALID_EMAIL", "the email is invalid"),
            attempts: 2,
            prior_attempts: 0,
            carried_over: false,
            first_failed_at: None,
            failed_at: None,
            payload: RowFields::from_text(row(3, "v1").to_string()).unwrap(),
        }],
        ..BatchLedger::default()
    };
    plan_again_after(&env, &event, first_attempt).await;

    let (record, _) = env
        .runtime
        .drive(&env.sync, &event.run_id, &|_| {})
        .await
        .unwrap();

    // From the destination's side: the locked rows had one attempt left and went out
    // once; the others may come again only as SQS's duplicate copies, never beyond the
    // threshold (I4).
    let sends = &env.destination.stats().sends[0];
    assert_eq!(sends.len(), 20, "every row reaches the destination");
    assert_eq!(
        (sends[&key(3)], sends[&key(4)]),
        (1, 1),
        "a row was sent more often than the threshold allows in one run"
    );
    assert!(
        sends.values().all(|&n| n <= 4),
        "a row was sent more often than the threshold: {sends:?}"
    );
    let counts = record.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (18, 2));
    let index = env.index().await;
    let mut locked: Vec<(String, u32)> = index
        .iter()
        .map(|e| (e.key.to_string(), e.attempts))
        .collect();
    locked.sort();
    assert_eq!(locked, vec![(key(3), 4), (key(4), 4)]);
}

/// Issue 12: a copy of an earlier planning attempt that was already at the
/// destination when the run was planned again delivered a row the latest attempt then
/// failed; the row stayed in the failed-row index although the destination had it,
/// and the next run sent it again (I2, I3; `resync chaos` counted `kept_after_replan`).
/// One outcome per key: the delivery wins, the row leaves the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_an_earlier_attempt_delivered_after_the_replan_leaves_the_index() {
    let env = TestEnv::start().await;
    env.export_rows("1.jsonl.gz", 0..20).await;
    env.destination.set(
        key(5),
        RowBehaviour::RejectThisRun {
            code: "DUPLICATE_VALUE".into(),
        },
    );
    let event = ScheduleEvent::new();
    plan_again_after(&env, &event, BatchLedger::default()).await;
    // Attempt 0's delivery invocation, in flight across the re-plan, records what it
    // delivered: row 5 (attempt 1 sent its own copy, which the destination refuses as
    // a replay).
    env.runtime
        .runs()
        .record_batch(
            &env.sync,
            &event.run_id,
            "late-first-attempt",
            &BatchLedger {
                delivered: keys(5..6),
                ..BatchLedger::default()
            },
        )
        .await
        .unwrap();

    let (record, _) = env
        .runtime
        .drive(&env.sync, &event.run_id, &|_| {})
        .await
        .unwrap();

    let counts = record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (20, 20, 0)
    );
    assert!(
        env.index().await.is_empty(),
        "a row an earlier attempt delivered stayed in the index"
    );
}

/// Issue 12: a run whose every row an earlier attempt delivered sends nothing when it is
/// planned again, and still closes with all its rows delivered (its plan finds them all
/// settled and tells the finalizer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replanned_run_whose_rows_were_all_delivered_sends_nothing_and_closes() {
    let env = TestEnv::start().await;
    env.export_rows("1.jsonl.gz", 0..20).await;
    let event = ScheduleEvent::new();
    let first_attempt = BatchLedger {
        delivered: keys(0..20),
        ..BatchLedger::default()
    };
    plan_again_after(&env, &event, first_attempt).await;

    let (record, _) = env
        .runtime
        .drive(&env.sync, &event.run_id, &|_| {})
        .await
        .unwrap();

    let stats = env.destination.stats();
    assert_eq!(stats.rows_received.iter().sum::<u64>(), 0);
    let counts = record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (20, 20, 0)
    );
    assert!(env.index().await.is_empty());
}

/// Issue 12, I4 across planning attempts (`resync chaos --rows 10000 --seed 5`: 5 sends
/// against 4 in a run planned twice): a re-plan read the earlier attempt's ledgers
/// while that attempt's deliveries were still at the destination. SQS had handed one
/// batch of attempt 0 to two invocations; both sent its rows and recorded a retry after
/// the re-plan had read nothing, so attempt 1 sent every row of the batch again: 3
/// sends at a threshold of 2. The re-plan now waits out the delivery function's timeout
/// before it reads, and a key whose recorded sends reached the threshold is settled as
/// failed without another send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replan_counts_the_sends_of_deliveries_still_in_flight() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 2,
        // Packed too, 12 segments of 5 rows take two SendMessageBatch calls, so the
        // planning can die between them.
        batch_size: 5,
        options: LocalOptions {
            crash_points: CrashRules::none().first(CrashPoint::SyncStartMidSend, 1),
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    let rows = 60;
    env.export_rows("1.jsonl.gz", 0..rows).await;
    for i in 0..rows {
        env.destination.set(
            key(i),
            RowBehaviour::Locked {
                until_attempt: None,
            },
        );
    }
    let event = ScheduleEvent::new();
    // Attempt 0 enqueues its rows and dies before recording its plan.
    let died = env.fire(&event).await;
    assert!(died.is_err(), "{died:?}");

    // SQS hands one batch of attempt 0 to two invocations, and the destination takes
    // its time; the event comes again while both are at the destination.
    env.destination
        .answer_after(std::time::Duration::from_secs(3));
    let delivery = env.runtime.deliveries.values().next().unwrap()[0].clone();
    let messages = delivery
        .queue
        .receive(10, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!messages.is_empty());
    let batch_rows: usize = messages
        .iter()
        .map(|m| {
            QueueMessage::from_body(m.body().unwrap())
                .unwrap()
                .into_rows()
                .len()
        })
        .sum();
    let twin = || {
        let event =
            resync::local::sqs_event(messages.clone(), "arn:aws:sqs:us-east-1:000000000000:q");
        resync_delivery::handler(&delivery, resync::local::lambda_invocation(event))
    };
    let again = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while env.destination.stats().max_in_flight < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the two invocations never were at the destination together"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        env.fire(&event).await
    };
    let (first, second, replanned) = tokio::join!(twin(), twin(), again);
    first.unwrap();
    second.unwrap();
    assert!(
        matches!(replanned, Ok(SyncStartOutcome::Started { .. })),
        "{replanned:?}"
    );
    let twice: Vec<String> = env.destination.stats().sends[0]
        .iter()
        .filter(|(_, &n)| n == 2)
        .map(|(key, _)| key.clone())
        .collect();
    assert_eq!(
        twice.len(),
        batch_rows,
        "each invocation sent the batch once"
    );

    env.destination.answer_after(std::time::Duration::ZERO);
    let (record, _) = env
        .runtime
        .drive(&env.sync, &event.run_id, &|_| {})
        .await
        .unwrap();
    assert_eq!(record.generation, 1);
    // From the destination's side: the batch's rows had spent both attempts and were
    // not sent again; the others went out once in attempt 1 (I4).
    let sends = &env.destination.stats().sends[0];
    for key in &twice {
        assert_eq!(
            sends[key], 2,
            "{key} was sent more often than the threshold of 2 in one run"
        );
    }
    assert_eq!(sends.len(), rows, "every row reaches the destination");
    assert!(
        sends.values().all(|&n| n <= 2),
        "a row was sent more often than the threshold: {sends:?}"
    );
    let counts = record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (rows as u64, 0, rows as u64)
    );
    let index = env.index().await;
    assert_eq!(index.len(), rows);
    assert!(
        index.iter().all(|entry| entry.attempts == 2),
        "{:?}",
        index
            .iter()
            .map(|e| (e.key.as_str(), e.attempts))
            .collect::<Vec<_>>()
    );
}
