//! What the source exports hold: bad lines, duplicate keys, rows too large for a
//! message, wide rows, and new rows merged with the failed keys of the last run.

use std::io::Write;

use resync::destination_server::RowBehaviour;

use crate::helpers::{key, row, EnvSettings, TestEnv};

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

/// Rows that are valid JSON text but whose values no parsed JSON value can hold: a lone
/// surrogate escape, a number beyond `f64`, nesting 200 levels deep, each in a field the
/// vendor destinations map (`email`), plus one such value in a field they do not map,
/// among ordinary rows. Returns the export and the keys a mapping destination must fail.
pub fn poison_export(ordinary: usize) -> (Vec<u8>, Vec<String>) {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let poison_values = [r#""\ud800""#.to_owned(), "1e400".to_owned(), deep];
    let mut jsonl = String::new();
    let mut poisoned = Vec::new();
    for i in 0..ordinary {
        jsonl.push_str(&format!("{}\n", row(i, "v1")));
        if i % 7 == 3 && poisoned.len() < poison_values.len() {
            let poison_key = key(1_000 + i);
            jsonl.push_str(&format!(
                "{{\"id\": \"{poison_key}\", \"email\": {}, \"version\": \"v1\"}}\n",
                poison_values[poisoned.len()]
            ));
            poisoned.push(poison_key);
        }
    }
    // Poison in a column no destination maps: the row is mappable and delivered.
    jsonl.push_str(&format!(
        "{{\"id\": \"{}\", \"email\": \"ok@example.com\", \"version\": \"v1\", \"notes\": 1e400}}\n",
        key(2_000)
    ));
    (jsonl.into_bytes(), poisoned)
}

/// Asserts the outcome of a run of [`poison_export`]: the poison rows failed alone as
/// `unmappable_row` with a reason and no value, every other row delivered, the run closed.
pub async fn assert_poison_rows_failed_alone(
    env: &TestEnv,
    run: resync::local::LocalRun,
    ordinary: usize,
    poisoned: &[String],
) {
    let counts = run.record.counts.unwrap();
    assert_eq!(counts.planned, (ordinary + poisoned.len() + 1) as u64);
    assert_eq!(
        (counts.delivered, counts.failed, counts.rejected),
        (ordinary as u64 + 1, poisoned.len() as u64, 0)
    );
    let index = env.index().await;
    let failed: std::collections::HashSet<String> =
        index.iter().map(|e| e.key.to_string()).collect();
    assert_eq!(failed, poisoned.iter().cloned().collect());
    for entry in &index {
        assert_eq!(
            (entry.error_class.as_str(), entry.error_code.as_str()),
            ("permanent", "unmappable_row"),
            "{entry:?}"
        );
        assert!(
            entry.error_message.contains("field 'email'"),
            "{}",
            entry.error_message
        );
        assert_eq!(entry.attempts, 1, "a permanent failure is not retried");
    }
}

/// Issue 13, items 4, 5, 6 and 9, end to end: keys reach the destination as the source
/// wrote them (integers beyond 64 bits, number spellings, whitespace kept), a byte order
/// mark costs no row, and a CSV quote never closed is one rejection instead of a row
/// that swallowed the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reach_the_destination_as_the_source_wrote_them() {
    let env = TestEnv::start().await;
    let jsonl = concat!(
        "\u{feff}{\"id\": 12345678901234567890123, \"v\": 1}\n",
        "{\"id\": 12345678901234567890124, \"v\": 1}\n",
        "{\"id\": 98765432109876543210987, \"v\": 1}\n",
        "{\"id\": 7.50}\n",
        "{\"id\": 1e2}\n",
        "{\"id\": \"x\"}\n",
        "{\"id\": \" x\"}\n",
        "{\"id\": \"x \"}\n",
        "{\"id\": \"x\\u00a0\"}\n",
        "{\"id\": \"cr\\r\"}\n",
    );
    env.export("a.jsonl", jsonl.as_bytes().to_vec()).await;
    env.export(
        "b.csv",
        b"id,email\nc-1,a@example.com\nc-2,\"open\nc-3,b@example.com\nc-4,c@example.com\n".to_vec(),
    )
    .await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!((counts.planned, counts.delivered), (12, 11));
    assert_eq!((counts.rejected, counts.failed), (1, 0));
    let expected: std::collections::HashSet<String> = [
        "12345678901234567890123",
        "12345678901234567890124",
        "98765432109876543210987",
        "7.50",
        "1e2",
        "x",
        " x",
        "x ",
        "x\u{a0}",
        "cr\r",
        "c-1",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(env.destination.stats().delivered_keys, expected);
}

/// Issue 13, item 2: every rejected row was held in memory by sync-start (and again by
/// the finalizer) and stored in the run's ledger: an export whose every row is rejected
/// (its key column renamed) grew both functions' memory with the export until they
/// were killed. Now the run keeps exact counts by reason and the first 100 rejections
/// of each reason, and stores nothing per keyless rejected row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_every_row_is_rejected_keeps_counts_and_a_bounded_sample() {
    let rows = crate::helpers::scaled(20_000, 2_000);
    let env = TestEnv::start().await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..rows {
        // The warehouse renamed `id` to `customer_id`.
        writeln!(
            encoder,
            "{}",
            serde_json::json!({"customer_id": key(i), "email": format!("c{i}@example.com")})
        )
        .unwrap();
    }
    env.export("renamed.jsonl.gz", encoder.finish().unwrap())
        .await;

    let run = env.run().await;

    let counts = run.record.counts.unwrap();
    assert_eq!(
        (counts.rejected, counts.planned),
        (rows as u64, rows as u64)
    );
    let stored = env.stored_rejections(&run.record.run_id).await;
    assert!(
        stored.chunk_entries.is_empty(),
        "{} keyless rejections stored for the index",
        stored.chunk_entries.len()
    );
    assert_eq!(
        stored.sample_entries.len(),
        100,
        "the first 100 are sampled"
    );
    let lines: Vec<u64> = stored
        .sample_entries
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, (1..=100).collect::<Vec<u64>>());
    assert!(stored
        .sample_entries
        .iter()
        .all(|e| e["code"] == "missing_primary_key"
            && e["object"] == "exports/customers/renamed.jsonl.gz"));
    assert_eq!(
        run.record.rejected_by_code,
        [("missing_primary_key".to_owned(), rows as u64)].into()
    );
    assert!(env.index().await.is_empty());
}

/// Issue 13, item 2: keyed rejections still reach the failed-row index (I2), though
/// neither sync-start nor the finalizer holds them all: sync-start writes them out in
/// chunks as it plans, the finalizer writes each chunk into the index in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_rejections_reach_the_index_chunk_by_chunk() {
    let keys = crate::helpers::scaled(1_500, 300);
    let env = TestEnv::start().await;
    let long = |i: usize| format!("{}-{i:06}", "k".repeat(200));
    let mut jsonl = String::new();
    for i in (0..keys).chain(0..keys) {
        jsonl.push_str(&format!("{}\n", serde_json::json!({"id": long(i), "v": 1})));
    }
    env.export("twice.jsonl", jsonl.into_bytes()).await;

    let run = env.run().await;

    let counts = run.record.counts.unwrap();
    assert_eq!(counts.rejected, 2 * keys as u64);
    let stored = env.stored_rejections(&run.record.run_id).await;
    // Each copy is stored, or one entry for both when they share a chunk.
    let entries = stored.chunk_entries.len();
    assert!(entries >= keys && entries <= 2 * keys, "{entries}");
    assert_eq!(stored.sample_entries.len(), 100);
    let index = env.index().await;
    assert_eq!(index.len(), keys, "each rejected key once in the index");
    assert!(index
        .iter()
        .all(|e| e.error_code == "non_unique_primary_key" && e.error_class == "rejected"));
}

/// Issue 13, item 8: a row too large for a queue message was rejected with object ""
/// and line 0 (in the index and the run's rejections). It keeps the object and line it
/// was read from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_for_a_message_keeps_its_object_and_line() {
    let env = TestEnv::start().await;
    let mut jsonl = String::new();
    for i in 0..6 {
        if i == 4 {
            jsonl.push_str(&format!(
                "{}\n",
                serde_json::json!({"id": key(i), "notes": "x".repeat(300_000)})
            ));
        } else {
            jsonl.push_str(&format!("{}\n", row(i, "v1")));
        }
    }
    env.export("big.jsonl", jsonl.into_bytes()).await;

    let run = env.run().await;

    let index = env.index().await;
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].error_code, "row_too_large");
    assert!(
        index[0]
            .error_message
            .ends_with("(exports/customers/big.jsonl line 5)"),
        "{}",
        index[0].error_message
    );
    let stored = env.stored_rejections(&run.record.run_id).await;
    for entry in stored.chunk_entries.iter().chain(&stored.sample_entries) {
        assert_eq!(entry["object"], "exports/customers/big.jsonl");
        assert_eq!(entry["line"], 5);
    }
    assert!(!stored.chunk_entries.is_empty());
}
