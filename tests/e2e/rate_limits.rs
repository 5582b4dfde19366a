//! Rate limits (HubSpot's portal): rate-limited rows wait instead of failing, a row
//! whose delayed copy SQS refuses is kept, not lost, and a deferred row lives on as one
//! message; a copy past the threshold is not sent again (I4).

use aws_sdk_sqs::types::QueueAttributeName;
use resync_shared::{domain::message::RowMessage, PrimaryKey, RunId};
use resync_sync_start::SyncStartOutcome;

use resync::local::LocalOptions;

use crate::helpers::{key, receive_rows, remote, row, scaled, EnvSettings, TestEnv, Vendor};

/// Issue 4 — rate limits do not burn attempts: with a threshold of ONE attempt and a
/// portal that takes 3 calls per 2 seconds, every row is still delivered, each exactly
/// once: rate-limited rows wait (re-enqueued with a delay) instead of failing.
///
/// The portal's window is already spent when the run begins: every call is answered
/// 429 until one has been, then the portal takes 3 calls per 2 seconds. So rows are
/// rate-limited whatever the emulator's speed — a fast one (LocalStack) hands the
/// delivery function full batches and sends 200 rows in 3 calls, which alone never
/// exceed the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_rate_limits_delay_rows_without_failing_them() {
    let rows = scaled(1_000, 200);
    let env = TestEnv::with(EnvSettings {
        max_attempts: 1,
        vendor: Vendor::Hubspot,
        // moto's ReceiveMessage is not atomic: concurrent receives can both return one
        // message, and with a threshold of one a duplicate receive is an attempt past it
        // (not sent, I4), which is not what this test is about; on moto one receive is
        // in flight at a time.
        concurrency: if remote() { 1 } else { 2 },
        options: LocalOptions {
            receives_in_flight: if remote() { 1 } else { 4 },
            ..LocalOptions::default()
        },
        ..EnvSettings::default()
    })
    .await;
    let portal = env.hubspot.as_ref().unwrap();
    let window = std::time::Duration::from_secs(2);
    portal.limit_calls(0, window);
    env.export_rows("batch.jsonl.gz", 0..rows).await;
    let open_window = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while portal.stats().rate_limited_calls == 0 {
            assert!(std::time::Instant::now() < deadline, "no call was limited");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        portal.limit_calls(3, window);
    };
    let (run, ()) = tokio::join!(env.run(), open_window);
    let counts = run.record.counts.unwrap();
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
    assert!(stats.rate_limited_calls > 0);
    assert!(
        counts.retried_in_run > 0,
        "{} calls answered 429: their rows had to wait",
        stats.rate_limited_calls
    );
}

/// Issue 4's open path: a rate-limited row is re-enqueued as a delayed copy, but SQS
/// refuses the copy (it carries one more field and no longer fits a message). The
/// original is then kept and settled the ordinary way — never deleted with no copy
/// behind it — and the row is delivered once the limit lifts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_row_whose_copy_sqs_refuses_is_kept_not_lost() {
    a_row_whose_copy_sqs_refuses(false).await;
}

/// The test above with packed rows: rows 0-4 travel in a segment, row 5 alone (it does
/// not fit a segment). The segment's copy and row 5's went back in one call of two
/// requests; SQS refused row 5's request, and the whole call read as refused, so rows
/// 0-4 failed as "copy refused" while their copy was on the queue (1 delivered, 5
/// failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_rate_limited_row_whose_copy_sqs_refuses_is_kept_not_lost() {
    a_row_whose_copy_sqs_refuses(true).await;
}

async fn a_row_whose_copy_sqs_refuses(packing: bool) {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 5,
        vendor: Vendor::Hubspot,
        concurrency: 1,
        packing,
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
            generation: 0,
            sync_id: env.sync.clone(),
            key: PrimaryKey::parse(key(5)).unwrap(),
            row: resync_shared::RowFields::from_text(wide_row(notes)).unwrap(),
            carried_over: false,
            first_failed_at: None,
            prior_attempts: 0,
            attempts_before: 0,
            rate_limit_deferrals: deferrals,
            backoff_until: None,
            copied: false,
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
    assert_eq!(
        (counts.delivered, counts.failed),
        (6, 0),
        "packing: {packing}"
    );
    assert!(env.index().await.is_empty());
    let stats = portal.stats();
    assert!(stats.ids[0].contains(&key(5)));
    assert_eq!(
        stats.records[0], 6,
        "each row was written once (no row lived on as its copy and its original)"
    );
}

/// Row 5 of the test above with its `notes`.
fn wide_row(notes: &str) -> String {
    serde_json::json!({"id": key(5), "email": "c5@example.com", "notes": notes}).to_string()
}

/// The number of messages of the delivery queue, visible, in flight and delayed.
async fn live_messages(env: &TestEnv, url: &str) -> u64 {
    let sqs = aws_sdk_sqs::Client::new(&env.runtime.sdk);
    let output = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .expect("queue attributes");
    output
        .attributes()
        .into_iter()
        .flatten()
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum()
}

/// Issue 12, defect 12: a rate-limited row is re-enqueued as a delayed copy and its
/// original was left for Lambda to delete once the invocation returned. When the
/// response was lost (a timeout, a crash after the handler), the original came back
/// too, and the row lived on as two messages whose attempts were counted apart: up to
/// twice the threshold at the destination (I4). The handler now deletes the originals
/// of the rows it re-enqueued, so one message per row remains whatever becomes of the
/// invocation's response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_row_lives_on_as_one_message_when_the_response_is_lost() {
    let env = TestEnv::with(EnvSettings {
        vendor: Vendor::Hubspot,
        concurrency: 1,
        ..EnvSettings::default()
    })
    .await;
    let portal = env.hubspot.as_ref().unwrap();
    // Every call is answered 429.
    portal.limit_calls(0, std::time::Duration::from_secs(60));
    env.export_rows("batch.jsonl.gz", 0..3).await;
    let started = env.runtime.start(&env.sync).await.unwrap();
    assert!(matches!(
        started,
        SyncStartOutcome::Started { enqueued: 3, .. }
    ));
    let delivery = env.runtime.deliveries.values().next().unwrap()[0].clone();
    let messages = receive_rows(&delivery.queue, 3).await;
    let received = messages.len() as u64;
    let event = resync::local::sqs_event(messages, "arn:aws:sqs:us-east-1:000000000000:q");
    let response = resync_delivery::handler(&delivery, resync::local::lambda_invocation(event))
        .await
        .unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "rate-limited rows are deferred, not retried"
    );
    assert!(portal.stats().rate_limited_calls >= 1);
    // The response is lost: nothing deletes what the handler left.
    assert_eq!(
        live_messages(&env, delivery.queue.url()).await,
        received,
        "one message per message received (a row's, or a packed segment's): its delayed copy, not the copy and the original"
    );
}

/// Issue 12, defect 12: a copy of a row that comes back after its last attempt (a
/// duplicate receive, a lost delete, an invocation that died at the threshold) was sent
/// to the destination once more than the threshold allows (I4). It is no longer sent:
/// it is hidden for a backoff, and one that keeps coming back is moved to the
/// dead-letter queue, which the finalizer settles as a failure unless another copy of
/// the row settled it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_comes_back_after_the_last_attempt_is_not_sent_again() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 3,
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..2).await;
    let started = env.runtime.start(&env.sync).await.unwrap();
    let SyncStartOutcome::Started { run_id, .. } = started else {
        panic!("expected a started run, got {started:?}")
    };
    let delivery = env.runtime.deliveries.values().next().unwrap()[0].clone();
    // A copy of row 1 whose earlier copies already spent the three attempts.
    let spent = RowMessage {
        run_id: run_id.clone(),
        sync_id: env.sync.clone(),
        key: PrimaryKey::parse(key(1)).unwrap(),
        row: row(1, "v1")
            .as_object()
            .unwrap()
            .clone()
            .try_into()
            .unwrap(),
        carried_over: false,
        first_failed_at: None,
        prior_attempts: 0,
        attempts_before: 3,
        rate_limit_deferrals: 0,
        backoff_until: None,
        copied: false,
        generation: 0,
    };
    assert!(delivery
        .queue
        .send_batch(&[spent.to_body()])
        .await
        .unwrap()
        .is_empty());
    let messages = receive_rows(&delivery.queue, 3).await;
    let spent_copy: Vec<_> = messages
        .into_iter()
        .filter(|m| {
            m.body
                .as_deref()
                .and_then(|b| RowMessage::from_body(b).ok())
                .is_some_and(|m| m.attempts_before == 3)
        })
        .collect();
    assert_eq!(spent_copy.len(), 1);
    let event = resync::local::sqs_event(spent_copy, "arn:aws:sqs:us-east-1:000000000000:q");
    let response = resync_delivery::handler(&delivery, resync::local::lambda_invocation(event))
        .await
        .unwrap();
    // Hidden for a backoff rather than deleted: another copy may still settle the row,
    // and one that keeps coming back ends in the dead-letter queue.
    assert_eq!(response.batch_item_failures.len(), 1);
    let received = env.destination.stats().keys_received;
    assert!(
        !received[0].contains(&key(1)),
        "a copy past the threshold reached the destination"
    );
}
