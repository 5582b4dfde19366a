//! A run's life: overlapping starts refused, the close on the last row's settled
//! notice, the one update that reports a run settled, close claims and two finalizers
//! at once, the local scheduler, a run that cannot run, a lock left by a run that is
//! not open, a run planned again, and a planning resumed by a retried invocation.

use resync::local::LocalOptions;
use resync_finalizer::SyncReport;
use resync_shared::{
    domain::{
        ledger::{BatchLedger, RecordedRejection},
        run::PlanSummary,
        source::Rejection,
    },
    PrimaryKey, RunId,
};
use resync_sync_start::SyncStartOutcome;

use crate::helpers::{
    finalize_with, key, row, EnvSettings, ScheduleEvent, TestEnv, LONGER_THAN_AN_INVOCATION,
};

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

/// The local scheduler fires each sync on its schedule and runs it to a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_scheduler_runs_a_due_sync() {
    let env = TestEnv::start().await;
    env.export_rows("batch.jsonl.gz", 0..25).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runs = std::sync::Mutex::new(Vec::new());
    let stopper = stop.clone();
    resync::local::schedule(
        &env.runtime,
        std::slice::from_ref(&env.sync),
        stop,
        &|sync, result| {
            runs.lock()
                .unwrap()
                .push((sync.clone(), result.map(|r| r.record.counts)));
            stopper.store(true, std::sync::atomic::Ordering::SeqCst);
        },
    )
    .await;
    let runs = runs.into_inner().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0, env.sync);
    let counts = runs[0].1.as_ref().unwrap().unwrap();
    assert_eq!(counts.delivered, 25);
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

/// A `Sync Alert` event of critical severity about `run`.
fn critical_alert_about(run: &RunId) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |event| {
        event["detail-type"] == "Sync Alert"
            && event["detail"]["severity"] == "critical"
            && event["detail"]["detail"]["run_id"] == run.as_str()
    }
}

/// Issue 12, defect 1 (the finalizer's side): a lock naming a run that is not open
/// locked the sync forever — every finalizer pass said "in flight", with no error and
/// no alert. Such a lock comes from a start that took it for a run already closed (as
/// a late schedule event did), or from a sync-start that died between taking the lock
/// and recording its run. The finalizer releases a lock naming a closed run at once,
/// and one naming an abandoned or unrecorded run once it is older than a sync-start
/// invocation can live (a younger one belongs to a sync-start still at work), logs an
/// error and raises a critical alert; the sync then runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_releases_a_lock_whose_run_is_not_open() {
    let env = TestEnv::start().await;
    let sinks = env.sinks().await;
    let runs = env.runtime.runs();
    env.export_rows("1.jsonl.gz", 0..5).await;
    let closed = env.run().await.record.run_id;

    // The lock taken again for the closed run, as a late start of it did.
    runs.acquire(&env.sync, &closed).await.unwrap();
    env.runtime.finalize(&env.sync).await.unwrap();
    assert_eq!(
        runs.state(&env.sync).await.unwrap().open_run,
        None,
        "the lock of a closed run was kept"
    );
    assert!(
        sinks
            .wait_for(&sinks.events_url, critical_alert_about(&closed))
            .await
            .is_some(),
        "no critical alert about the released lock"
    );

    // A lock whose run was never recorded: fresh, it belongs to a sync-start at work.
    let unrecorded = RunId::parse("run-never-recorded").unwrap();
    runs.acquire(&env.sync, &unrecorded).await.unwrap();
    env.runtime.finalize(&env.sync).await.unwrap();
    assert_eq!(
        runs.state(&env.sync).await.unwrap().open_run,
        Some(unrecorded.clone()),
        "a lock just taken was released under its sync-start"
    );
    // Older than any sync-start invocation: nobody will record that run.
    env.backdate_lock(LONGER_THAN_AN_INVOCATION).await;
    env.runtime.finalize(&env.sync).await.unwrap();
    assert_eq!(
        runs.state(&env.sync).await.unwrap().open_run,
        None,
        "the lock of a run never recorded was kept"
    );
    assert!(
        sinks
            .wait_for(&sinks.events_url, critical_alert_about(&unrecorded))
            .await
            .is_some(),
        "no critical alert about the released lock"
    );

    env.export_rows("2.jsonl.gz", 5..8).await;
    assert_eq!(env.run().await.record.counts.unwrap().delivered, 3);
}

/// Issue 12, defect 2: a run planned again (a retried event after its first attempt
/// was abandoned) was tallied over every attempt's ledger items and rejections. The
/// first attempt's keys made the second look complete before its own rows were
/// delivered; those rows, arriving after the close, were dropped as late and never
/// delivered, and the first attempt's rejection entered the counts and the index.
/// Here the cursor moved between the attempts (the next run delivered the first
/// export), so the second plan holds other rows than the first. The run closes when
/// its own rows are settled, with the counts of its own plan, and copies the first
/// attempt sent are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replanned_run_counts_only_its_own_attempt() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    let event = ScheduleEvent::new();
    let run = event.run_id.clone();
    env.export_rows("1.jsonl.gz", 0..20).await;

    // The event's first sync-start took the lock, opened the run, recorded a rejection
    // and died before it recorded its plan; the finalizer abandons it once stale.
    runs.acquire(&env.sync, &run).await.unwrap();
    runs.open_run(&env.sync, &run).await.unwrap();
    let rejection = RecordedRejection {
        rejection: Rejection {
            key: Some(PrimaryKey::parse(key(900)).unwrap()),
            object: String::new(),
            line: 0,
            code: "row_too_large".into(),
            reason: "the row is larger than the queue's maximum message size".into(),
        },
        first_failed_at: None,
        in_index: false,
        payload: None,
    };
    put_first_rejection_chunk(&env, &run, &[rejection]).await;
    env.backdate_planning(&run, LONGER_THAN_AN_INVOCATION).await;
    let report = env.runtime.finalize(&env.sync).await.unwrap();
    assert!(matches!(report, SyncReport::Abandoned { .. }), "{report:?}");

    // The next scheduled run delivers the first export and moves the cursor past it.
    assert_eq!(env.run().await.record.counts.unwrap().delivered, 20);

    // A new export; then Lambda retries the first event: the same run is planned again.
    env.export_rows("2.jsonl.gz", 20..40).await;
    env.destination.next_run();
    let replanned = env.fire(&event).await.unwrap();
    assert!(
        matches!(
            replanned,
            SyncStartOutcome::Started {
                enqueued: 20,
                rejected: 0,
                ..
            }
        ),
        "{replanned:?}"
    );
    // A delivery invocation of the first attempt, still in flight, records what it
    // delivered then: the first export's rows; and copies the first attempt sent of
    // them come back to the queue (at-least-once).
    runs.record_batch(&env.sync, &run, "first-attempt", &delivered(0..20))
        .await
        .unwrap();
    let first_attempt_copies: Vec<String> = (0..20)
        .map(|i| {
            serde_json::json!({
                "run_id": run.as_str(),
                "sync_id": env.sync.as_str(),
                "key": key(i),
                "row": row(i, "v1"),
            })
            .to_string()
        })
        .collect();
    let queue = &env.runtime.deliveries.values().next().unwrap()[0].queue;
    for chunk in first_attempt_copies.chunks(10) {
        assert!(queue.send_batch(chunk).await.unwrap().is_empty());
    }

    let (record, _) = env.runtime.drive(&env.sync, &run, &|_| {}).await.unwrap();
    let received = &env.destination.stats().keys_received[1];
    let expected: std::collections::HashSet<String> = (20..40).map(key).collect();
    assert_eq!(
        *received, expected,
        "the run closed before its own rows were delivered, or delivered the first attempt's"
    );
    let counts = record.counts.unwrap();
    assert_eq!(
        (
            counts.planned,
            counts.delivered,
            counts.failed,
            counts.rejected
        ),
        (20, 20, 0, 0)
    );
    assert!(
        env.index().await.is_empty(),
        "the first attempt's rejection entered the index"
    );
}

/// Writes the rejections of a run's first planning attempt as sync-start stores them
/// (`run#{run}` / `reject#000000`; see `resync_shared::aws::runs`).
async fn put_first_rejection_chunk(env: &TestEnv, run: &RunId, rejections: &[RecordedRejection]) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    aws_sdk_dynamodb::Client::new(&env.runtime.sdk)
        .put_item()
        .table_name(&env.runtime.resources.runs_table)
        .item("pk", AttributeValue::S(format!("run#{run}")))
        .item("sk", AttributeValue::S("reject#000000".into()))
        .item(
            "rejections",
            AttributeValue::S(serde_json::to_string(rejections).unwrap()),
        )
        .item("expires_at", AttributeValue::N(expires.to_string()))
        .send()
        .await
        .unwrap();
}

/// Issue 12, defect 3: the finalizer abandons a planning older than a sync-start
/// invocation can live, but it counted from the run's first start, never from the
/// attempt at work: a retried invocation that resumed the planning of a run opened
/// long ago was abandoned while it ran (and the next run could overlap it). Every
/// planning attempt restarts the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_planning_is_not_abandoned_while_it_runs() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    env.export_rows("1.jsonl.gz", 0..10).await;
    let event = ScheduleEvent::new();
    let run = event.run_id.clone();
    // The event's first sync-start opened the run long ago and timed out.
    runs.acquire(&env.sync, &run).await.unwrap();
    runs.open_run(&env.sync, &run).await.unwrap();
    env.backdate_planning(&run, LONGER_THAN_AN_INVOCATION).await;
    // Lambda's retry resumes it (sync-start's first steps: the lock, the run record)
    // and is still planning when the finalizer passes.
    runs.acquire(&env.sync, &run).await.unwrap();
    runs.open_run(&env.sync, &run).await.unwrap();
    let report = env.runtime.finalize(&env.sync).await.unwrap();
    assert!(
        matches!(report, SyncReport::InFlight { .. }),
        "the resumed planning was abandoned while it ran: {report:?}"
    );
    assert_eq!(
        runs.state(&env.sync).await.unwrap().open_run,
        Some(run.clone())
    );

    // A retry that runs whole plans the run, which closes.
    let started = env.fire(&event).await.unwrap();
    assert!(
        matches!(started, SyncStartOutcome::Started { enqueued: 10, .. }),
        "{started:?}"
    );
    let (record, _) = env.runtime.drive(&env.sync, &run, &|_| {}).await.unwrap();
    assert_eq!(record.counts.unwrap().delivered, 10);
}

/// Issue 12, defect 6: one sync's finalize error (here an unreadable ledger item in its
/// run) used to end the scheduled finalizer, so no sync listed after it was closed.
/// Now every other sync is finalized, and the invocation still fails, naming the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_syncs_error_does_not_stop_the_finalizer_for_the_others() {
    let env = TestEnv::start().await;
    let runs = env.runtime.runs();
    // A second sync, listed first, whose run holds an unreadable ledger item.
    let mut config = (*env.runtime.config).clone();
    let mut broken = config.syncs[0].clone();
    broken.id = resync_shared::SyncId::parse("broken").unwrap();
    config.syncs.insert(0, broken.clone());
    let finalizer = resync_finalizer::Finalizer::new(
        &env.runtime.sdk,
        std::sync::Arc::new(config),
        env.runtime.resources.clone(),
        env.runtime.finalizer.reporter.clone(),
    );
    let poisoned = RunId::parse("run-poisoned").unwrap();
    runs.acquire(&broken.id, &poisoned).await.unwrap();
    runs.open_run(&broken.id, &poisoned).await.unwrap();
    runs.record_batch(&broken.id, &poisoned, "b0", &delivered(0..1))
        .await
        .unwrap();
    runs.mark_planned(
        &broken.id,
        &poisoned,
        &PlanSummary {
            enqueued: 1,
            source_objects: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    aws_sdk_dynamodb::Client::new(&env.runtime.sdk)
        .put_item()
        .table_name(&env.runtime.resources.runs_table)
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("run#{poisoned}")),
        )
        .item(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("batch#garbled".into()),
        )
        .item(
            "ledger",
            aws_sdk_dynamodb::types::AttributeValue::S("{not json".into()),
        )
        .send()
        .await
        .unwrap();
    // The sync after it has a settled run.
    env.export_rows("batch.jsonl.gz", 0..5).await;
    let run_id = env.start_run().await;
    runs.record_batch(&env.sync, &run_id, "all", &delivered(0..5))
        .await
        .unwrap();

    let err = finalize_with(&finalizer, None)
        .await
        .expect_err("the broken sync's error is reported");

    let record = runs.run(&env.sync, &run_id).await.unwrap().unwrap();
    assert_eq!(
        record.counts.map(|c| c.delivered),
        Some(5),
        "the sync after the broken one is closed ({err})"
    );
    let message = err.to_string();
    assert!(message.contains("broken"), "{message}");
    assert!(message.contains("unreadable ledger item"), "{message}");
    assert!(!message.contains("customers"), "{message}");
}

/// Issue 14, item 4: a close wrote the whole index update in one finalizer invocation,
/// restarting from the first key on every try, so a run whose failed and recovered rows
/// take longer to write than one invocation lives (one outage on a large run) never
/// closed. A close now writes in key order, records how far it got when the invocation's
/// time runs short, and the next invocation resumes there: with a deadline that is
/// always near, 2,000 failed rows take several invocations, and the index ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_runs_short_of_time_resumes_where_it_stopped() {
    use resync_finalizer::CLOSE_MARGIN;

    let rows = 2_000;
    let env = TestEnv::with(EnvSettings {
        max_attempts: 1,
        ..EnvSettings::default()
    })
    .await;
    for i in 0..rows {
        env.destination.set(
            key(i),
            resync::destination_server::RowBehaviour::Locked {
                until_attempt: None,
            },
        );
    }
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let run_id = env.start_run().await;
    env.deliver_in_one_invocation(rows).await;

    let mut invocations = 0;
    let mut paused_at: Vec<String> = Vec::new();
    let counts = loop {
        invocations += 1;
        assert!(invocations <= 50, "the close does not get through");
        let mut event: aws_lambda_events::eventbridge::EventBridgeEvent<
            resync_finalizer::FinalizerDetail,
        > = Default::default();
        event.detail.sync_id = Some(env.sync.to_string());
        // Less than the margin left: every invocation stops after its first step.
        let deadline = std::time::SystemTime::now() + CLOSE_MARGIN / 2;
        let output = resync_finalizer::handler(
            &env.runtime.finalizer,
            resync::local::lambda_invocation_until(event, Some(deadline)),
        )
        .await
        .unwrap();
        match output.syncs.into_iter().next().unwrap() {
            SyncReport::Closing {
                run_id: closing,
                index_through,
                ..
            } => {
                assert_eq!(closing, run_id);
                paused_at.push(index_through.unwrap_or_default());
            }
            SyncReport::Closed { counts, .. } => break counts,
            other => panic!("expected the close to go on, got {other:?}"),
        }
    };

    assert!(
        paused_at.len() >= 2,
        "the close was written in one invocation: {paused_at:?}"
    );
    assert!(
        paused_at.windows(2).all(|w| w[0] <= w[1]),
        "each invocation resumes after the last: {paused_at:?}"
    );
    assert_eq!((counts.delivered, counts.failed), (0, rows as u64));
    let index = env.index().await;
    let keys: std::collections::HashSet<String> = index.iter().map(|e| e.key.to_string()).collect();
    assert_eq!(keys, (0..rows).map(key).collect());
}
