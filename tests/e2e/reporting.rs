//! What a run reports and costs: its metrics, summaries and alerts on EventBridge and
//! SNS (without row values), and the ledger's write units per row.

use resync::{destination_server::RowBehaviour, local::LocalOptions};
use resync_finalizer::{Finalizer, SyncReport};
use resync_shared::{
    aws::{
        report::{MetricsSink, Reporter},
        runs::ReportPart,
    },
    domain::run::RunStatus,
};

use crate::helpers::{finalize_with, key, remote, scaled, EnvSettings, TestEnv};

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
    let batches = env
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

/// A finalizer of the test's stack whose reporting fails for real: EventBridge at an
/// address where nothing listens, SNS to a topic that does not exist.
async fn finalizer_that_cannot_report(env: &TestEnv) -> Finalizer {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = resync::aws::for_endpoint(&format!("http://127.0.0.1:{closed_port}")).await;
    let sdk = &env.runtime.sdk;
    let missing_topic = format!(
        "{}-missing",
        env.runtime.resources.alert_topic_arn.clone().unwrap()
    );
    let reporter = Reporter::new(
        Some((
            aws_sdk_eventbridge::Client::new(&unreachable),
            env.runtime.resources.event_bus.clone(),
        )),
        Some((aws_sdk_sns::Client::new(sdk), missing_topic)),
        MetricsSink::Memory(Default::default()),
    );
    Finalizer::new(
        sdk,
        env.runtime.config.clone(),
        env.runtime.resources.clone(),
        reporter,
    )
}

/// Issue 12, defect 6: a PutEvents or SNS failure used to return before the close, so
/// the run stayed open (and was reported twice once another finalizer took the stale
/// claim over). Now the run closes with exact counts and releases the sync although
/// reporting fails; the failure is surfaced (the invocation fails, naming it), and the
/// summary and alert are kept and sent by the next finalizer that can: late, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_closes_when_reporting_fails_and_its_report_is_sent_later() {
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
    let run_id = env.start_run().await;
    env.deliver_in_one_invocation(10).await;

    let broken = finalizer_that_cannot_report(&env).await;
    let err = finalize_with(&broken, Some(&env.sync))
        .await
        .expect_err("a report that could not be sent is surfaced");

    let runs = env.runtime.runs();
    let record = runs.run(&env.sync, &run_id).await.unwrap().unwrap();
    assert_eq!(
        record.status,
        RunStatus::Closed,
        "the run closes although its report failed ({err})"
    );
    let counts = record.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (9, 1));
    assert_eq!(runs.state(&env.sync).await.unwrap().open_run, None);
    let message = err.to_string();
    assert!(message.contains("EventBridge.PutEvents"), "{message}");
    assert!(message.contains(run_id.as_str()), "{message}");
    let pending = runs.pending_reports(&env.sync).await.unwrap();
    assert_eq!(pending.len(), 1, "the report is kept");
    assert_eq!(
        pending[0].parts,
        [
            ReportPart::RunClosed,
            ReportPart::AlertEvent,
            ReportPart::AlertNotification
        ]
    );

    // The next finalizer that can report sends the summary and the alert.
    let report = env.runtime.finalize(&env.sync).await.unwrap();
    assert!(matches!(report, SyncReport::Idle { .. }), "{report:?}");
    let events: Vec<serde_json::Value> = sinks
        .receive(&sinks.events_url, 3)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let of_type = |t: &str| events.iter().filter(|e| e["detail-type"] == t).count();
    assert_eq!(
        (
            of_type("Run settled"),
            of_type("Run Closed"),
            of_type("Sync Alert")
        ),
        (1, 1, 1),
        "{events:?}"
    );
    let closed = events
        .iter()
        .find(|e| e["detail-type"] == "Run Closed")
        .unwrap();
    assert_eq!(closed["detail"]["run_id"], run_id.as_str());
    assert_eq!(closed["detail"]["delivered"], 9);
    assert_eq!(closed["detail"]["failed"], 1);
    assert_eq!(
        sinks.receive(&sinks.alerts_url, 1).await.len(),
        1,
        "one SNS alert"
    );
    assert!(
        runs.pending_reports(&env.sync).await.unwrap().is_empty(),
        "sent, so not sent again"
    );
}
