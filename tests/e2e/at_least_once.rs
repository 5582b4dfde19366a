//! At-least-once delivery: duplicate SQS deliveries, invocations that crash before or
//! after their handler, late copies of a closed run's rows, copies of an abandoned
//! run's rows, and schedule events delivered twice (at once, or after the run closed).

use resync::local::{AtLeastOnce, LocalOptions};
use resync_finalizer::SyncReport;
use resync_shared::{domain::message::RowMessage, PrimaryKey, RunId};
use resync_sync_start::SyncStartOutcome;

use crate::helpers::{
    key, receive_rows, row, scaled, EnvSettings, ScheduleEvent, TestEnv, LONGER_THAN_AN_INVOCATION,
};

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
    let delivery = env.runtime.deliveries.values().next().unwrap()[0].clone();
    // The same messages (at least 10 rows) delivered to two invocations, as SQS may do.
    let messages = receive_rows(&delivery.queue, 10).await;
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
        generation: 0,
        sync_id: resync_shared::SyncId::parse("customers").unwrap(),
        key: PrimaryKey::parse(key(i)).unwrap(),
        row: row(i, "v1")
            .as_object()
            .unwrap()
            .clone()
            .try_into()
            .unwrap(),
        carried_over: false,
        first_failed_at: None,
        prior_attempts: 0,
        attempts_before: 0,
        rate_limit_deferrals: 0,
        backoff_until: None,
        copied: false,
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
    let queue = env.runtime.deliveries.values().next().unwrap()[0]
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

/// Issue 12, defect 11: a healthy destination slower than the local queues' visibility
/// timeout (30 s, while a request may take `timeout_secs`) was sent rows again while
/// their first request was still waiting: 400 planned rows received 600 times, with
/// `retried_in_run` 0. Scaled down: the destination answers in 2.5 s and a crashed
/// invocation's rows come back after 1 s; a row of an invocation that is still working
/// stays hidden (the queues keep the deployment's visibility, 6 × the function timeout
/// + the batching window), so each row is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_destination_is_sent_each_row_once() {
    let rows = 40;
    let env = TestEnv::with(EnvSettings {
        batch_size: 10,
        // One receive at a time: moto's are not atomic (see `full_batches`).
        concurrency: 1,
        options: LocalOptions {
            visibility_timeout_secs: 1,
            receives_in_flight: 1,
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.destination
        .answer_after(std::time::Duration::from_millis(2500));
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.retried_in_run),
        (rows as u64, rows as u64, 0)
    );
    let stats = env.destination.stats();
    assert_eq!(
        stats.rows_received[0], rows as u64,
        "each row was sent once"
    );
    assert_eq!(stats.delivered_more_than_once, 0);
}

/// A copy of a row that arrives after its run closed is dropped, not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_copies_of_a_closed_run_are_dropped() {
    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..10).await;
    let run = env.run().await;
    assert_eq!(run.record.counts.unwrap().delivered, 10);
    let delivery = env.runtime.deliveries.values().next().unwrap()[0].clone();
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

/// Receives `want` messages from a delivery queue and hands them to one delivery
/// invocation, as the event source mapping would.
async fn deliver_once(
    delivery: &resync_delivery::Delivery,
    want: usize,
) -> aws_lambda_events::sqs::SqsBatchResponse {
    let mut messages = Vec::new();
    while messages.len() < want {
        messages.extend(
            delivery
                .queue
                .receive(10, std::time::Duration::from_secs(1))
                .await
                .unwrap(),
        );
    }
    let event = resync::local::sqs_event(messages, "arn:aws:sqs:us-east-1:000000000000:q");
    resync_delivery::handler(delivery, resync::local::lambda_invocation(event))
        .await
        .unwrap()
}

/// Issue 12, defect 1: a copy of a schedule event that arrives after its run closed
/// (EventBridge and Lambda's async invocations are at-least-once; a small run closes
/// within seconds) took the sync's lock again and kept it, so every later start was
/// refused as overlapping and nothing said so. The copy changes nothing and leaves the
/// sync free: the next run starts and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_a_closed_runs_schedule_event_leaves_the_sync_free() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    env.export_rows("1.jsonl.gz", 0..10).await;
    let event = ScheduleEvent::new();
    let started = env.fire(&event).await.unwrap();
    assert!(
        matches!(started, SyncStartOutcome::Started { enqueued: 10, .. }),
        "{started:?}"
    );
    let (record, _) = env
        .runtime
        .drive(&env.sync, &event.run_id, &|_| {})
        .await
        .unwrap();
    assert_eq!(record.counts.unwrap().delivered, 10);

    let again = env.fire(&event).await.unwrap();
    assert_eq!(
        again,
        SyncStartOutcome::AlreadyPlanned {
            sync_id: env.sync.clone(),
            run_id: event.run_id.clone()
        }
    );
    assert_eq!(
        runs.state(&env.sync).await.unwrap().open_run,
        None,
        "the late event left the sync locked by its closed run"
    );
    env.export_rows("2.jsonl.gz", 10..15).await;
    let next = env.run().await;
    assert_eq!(next.record.counts.unwrap().delivered, 5);
    let closed = runs.run(&env.sync, &event.run_id).await.unwrap().unwrap();
    assert_eq!(closed.counts, record.counts, "the closed run is unchanged");
}

/// Issue 12, defect 3: delivery treated every run but a closed one as open, so the rows
/// of an abandoned run (its sync-start died after sending them) were still sent — and
/// sent again by the next run, which plans the same source (I3); a lingering copy could
/// overwrite a newer value. Copies of an abandoned run are dropped like those of a
/// closed one, and the next run delivers the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_an_abandoned_run_are_dropped() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    env.export_rows("1.jsonl.gz", 0..10).await;
    // A sync-start took the lock, opened its run and sent the rows, then died before it
    // recorded its plan; the finalizer abandons the run once its planning is stale.
    let run = ScheduleEvent::new().run_id;
    runs.acquire(&env.sync, &run).await.unwrap();
    runs.open_run(&env.sync, &run).await.unwrap();
    let delivery = env.runtime.deliveries.values().next().unwrap()[0].clone();
    let copies: Vec<String> = (0..10).map(|i| duplicate_body(&run, i)).collect();
    assert!(delivery.queue.send_batch(&copies).await.unwrap().is_empty());
    env.backdate_planning(&run, LONGER_THAN_AN_INVOCATION).await;
    let report = env.runtime.finalize(&env.sync).await.unwrap();
    assert!(matches!(report, SyncReport::Abandoned { .. }), "{report:?}");

    let response = deliver_once(&delivery, copies.len()).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "the copies are settled: delete them"
    );
    assert_eq!(
        env.destination.stats().rows_received[0],
        0,
        "rows of an abandoned run were sent"
    );
    // The next run plans the same rows and delivers them.
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!((counts.planned, counts.delivered), (10, 10));
    assert_eq!(env.destination.stats().delivered_keys.len(), 10);
}

/// Issue 12, defect 3: EventBridge may deliver a schedule event twice at once. Both
/// sync-starts planned the run; the one whose plan was recorded second failed its
/// conditional update, and its error path abandoned the run — already fully queued —
/// releasing the sync while its rows were delivering, with a critical alert. Now one
/// invocation plans the run and the other reports it already planned; the run closes
/// with exact counts and each row delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_invocations_of_one_schedule_event_plan_the_run_once() {
    let env = TestEnv::start().await;
    env.export_rows("1.jsonl.gz", 0..20).await;
    let event = ScheduleEvent::new();
    let (a, b) = tokio::join!(env.fire(&event), env.fire(&event));
    let outcomes = [a, b].map(|outcome| outcome.map_err(|e| e.to_string()));
    assert!(
        outcomes.iter().all(Result::is_ok),
        "an invocation of the duplicated event failed: {outcomes:?}"
    );
    let started = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(SyncStartOutcome::Started { .. })))
        .count();
    assert_eq!(started, 1, "{outcomes:?}");
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
    assert_eq!(env.destination.stats().delivered_keys.len(), 20);
    assert_eq!(
        env.runtime.runs().state(&env.sync).await.unwrap().open_run,
        None
    );
    assert!(env.index().await.is_empty());
}

/// Issue 12, the local runtime's at-least-once events: with the plan's rate at 1, the
/// schedule event reaches sync-start twice at once — two invocations of one event id,
/// so of one run — and the run is planned once: it closes with exact counts, each row
/// delivered, and the sync released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_event_delivered_twice_reaches_sync_start_twice_and_plans_one_run() {
    let env = TestEnv::with(EnvSettings {
        options: LocalOptions {
            at_least_once: AtLeastOnce {
                seed: 1,
                duplicate_schedule_event: 1.0,
                ..AtLeastOnce::default()
            },
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("1.jsonl.gz", 0..30).await;
    let event = ScheduleEvent::new();
    let started = env
        .runtime
        .deliver_schedule_event(&event.event)
        .await
        .unwrap();
    assert!(
        matches!(&started, SyncStartOutcome::Started { run_id, enqueued: 30, .. } if *run_id == event.run_id),
        "{started:?}"
    );
    assert_eq!(env.runtime.clock.snapshot()["sync-start"].0, 2);
    assert_eq!(env.runtime.injected()["duplicate:schedule_event"], 1);
    let (record, _) = env
        .runtime
        .drive(&env.sync, &event.run_id, &|_| {})
        .await
        .unwrap();
    let counts = record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (30, 30, 0)
    );
    assert_eq!(env.destination.stats().delivered_keys.len(), 30);
    assert_eq!(
        env.runtime.runs().state(&env.sync).await.unwrap().open_run,
        None,
        "the sync is released"
    );
    assert!(env.index().await.is_empty());
}

/// Issue 12, the local runtime's at-least-once events: a copy of the schedule event
/// reaches sync-start after its run closed (rate 1); it changes nothing and leaves the
/// sync free, so the next run starts and sends only its new rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_each_schedule_event_leaves_every_run_and_the_sync_as_they_were() {
    let env = TestEnv::with(EnvSettings {
        options: LocalOptions {
            at_least_once: AtLeastOnce {
                seed: 2,
                late_schedule_event: 1.0,
                ..AtLeastOnce::default()
            },
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("1.jsonl.gz", 0..10).await;
    let first = env.run().await;
    assert_eq!(env.runtime.clock.snapshot()["sync-start"].0, 2);
    assert_eq!(env.runtime.injected()["late:schedule_event"], 1);
    assert_eq!(
        env.runtime.runs().state(&env.sync).await.unwrap().open_run,
        None,
        "the late copy left the sync locked"
    );
    env.destination.next_run();
    env.export_rows("2.jsonl.gz", 10..15).await;
    let second = env.run().await;
    assert!(second.resumed.is_none(), "no run was left open");
    assert_eq!(second.record.counts.unwrap().delivered, 5);
    assert_eq!(env.destination.stats().rows_received[1], 5);
    let closed = env
        .runtime
        .runs()
        .run(&env.sync, &first.record.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        closed.counts, first.record.counts,
        "the closed run is unchanged"
    );
}

/// Issue 12, the local runtime's at-least-once events: the run-settled notice invokes
/// the finalizer twice at once and once more after the close (rates 1). The two
/// finalizers close the run once — one report, exact counts — and the late one finds
/// nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_settled_notices_delivered_twice_and_late_close_and_report_the_run_once() {
    let env = TestEnv::with(EnvSettings {
        options: LocalOptions {
            // The notice, not the tick, closes the run.
            finalize_every: std::time::Duration::from_secs(60),
            at_least_once: AtLeastOnce {
                seed: 3,
                duplicate_notice: 1.0,
                late_notice: 1.0,
                ..AtLeastOnce::default()
            },
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    // Rows settle after the finalizer's first pass, so a notice closes the run.
    env.destination
        .answer_after(std::time::Duration::from_millis(1500));
    env.export_rows("1.jsonl.gz", 0..20).await;
    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!((counts.planned, counts.delivered), (20, 20));
    let injected = env.runtime.injected();
    assert!(
        injected["duplicate:run_settled_notice"] >= 1,
        "{injected:?}"
    );
    assert!(injected["late:run_settled_notice"] >= 1, "{injected:?}");
    assert_eq!(
        env.runtime.metrics.lock().unwrap().len(),
        1,
        "the run was reported once"
    );
    assert_eq!(
        env.runtime.runs().state(&env.sync).await.unwrap().open_run,
        None
    );
}

/// Issue 12, the local runtime's at-least-once events: every batch the event source
/// mapping receives goes to two delivery invocations at once (rate 1), as SQS may
/// deliver a message twice; the counts stay exact and nothing is left in the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_delivered_to_two_invocations_changes_no_count() {
    let rows = scaled(300, 60);
    let env = TestEnv::with(EnvSettings {
        options: LocalOptions {
            at_least_once: AtLeastOnce {
                seed: 4,
                duplicate_batch: 1.0,
                ..AtLeastOnce::default()
            },
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("1.jsonl.gz", 0..rows).await;
    let run = env.run().await;
    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.planned, counts.delivered, counts.failed),
        (rows as u64, rows as u64, 0)
    );
    let duplicated = env.runtime.injected()["duplicate:delivery_batch"];
    assert!(duplicated >= 1);
    assert_eq!(
        run.invocations as u64,
        2 * duplicated,
        "each batch went to two invocations"
    );
    assert_eq!(env.destination.stats().delivered_keys.len(), rows);
    assert!(env.index().await.is_empty());
}

/// Issue 12, a row living as two messages: SQS delivered a batch to two invocations, so
/// each copy of a failing row went on retrying on its own receive count, each forking
/// again when its batch was delivered twice, and the destination saw the row far more
/// often than the threshold in one run (I4; `resync chaos --rows 100000` saw 5 sends
/// against 4). With every batch delivered twice (rate 1), the run's count of sends per
/// key bounds them: a row that keeps failing reaches the destination at most
/// `max_attempts` times, fails once, and is kept in the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_received_twice_spends_its_attempts_once() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 3,
        options: LocalOptions {
            at_least_once: AtLeastOnce {
                seed: 9,
                duplicate_batch: 1.0,
                ..AtLeastOnce::default()
            },
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("1.jsonl.gz", 0..20).await;
    for i in [3, 4] {
        env.destination.set(
            key(i),
            resync::destination_server::RowBehaviour::Locked {
                until_attempt: None,
            },
        );
    }
    let run = env.run().await;

    let sends = env.destination.stats().sends[0].clone();
    assert_eq!(sends.len(), 20, "every row reaches the destination");
    assert!(
        sends[&key(3)] <= 3 && sends[&key(4)] <= 3,
        "a failing row was sent more often than the threshold of 3: {} and {} sends",
        sends[&key(3)],
        sends[&key(4)]
    );
    assert!(env.runtime.injected()["duplicate:delivery_batch"] >= 2);
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
