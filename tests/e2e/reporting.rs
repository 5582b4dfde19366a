//! What a run reports and costs: its metrics, summaries and alerts on EventBridge and
//! SNS (without row values), and the ledger's write units per row.

use resync::{destination_server::RowBehaviour, local::LocalOptions};

use crate::helpers::{key, remote, scaled, EnvSettings, TestEnv};

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
    let (batches, _) = env
        .runtime
        .runs()
        .ledger(&run.record.run_id, run.record.generation)
        .await
        .unwrap();
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
