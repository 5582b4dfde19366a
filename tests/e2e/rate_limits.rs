//! Rate limits (HubSpot's portal): rate-limited rows wait instead of failing, and a row
//! whose delayed copy SQS refuses is kept, not lost.

use resync_shared::{domain::message::RowMessage, PrimaryKey, RunId};

use crate::helpers::{key, row, scaled, EnvSettings, TestEnv, Vendor};

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
            generation: 0,
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
