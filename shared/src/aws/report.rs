//! Reporting a closed run: a run-summary event on EventBridge, CloudWatch metrics in
//! Embedded Metric Format, and an SNS alert when the sync's alert rule is met.
//! Everything here carries keys, counts and error codes only — never row values (I6).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::AwsError;
use crate::{
    config::AlertRule,
    domain::{
        ids::{DestinationId, RunId, SyncId},
        ledger::RunCounts,
    },
};

/// The summary of a closed run, as published (and kept until it is, see
/// [`PendingReport`](crate::aws::runs::PendingReport)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The sync.
    pub sync_id: SyncId,
    /// The run.
    pub run_id: RunId,
    /// Its destination.
    pub destination: DestinationId,
    /// Exact counts.
    #[serde(flatten)]
    pub counts: RunCounts,
    /// Keys in the failed-row index after the run.
    pub failed_index_size: u64,
    /// Age of the oldest failing row, in seconds.
    pub oldest_failure_age_secs: Option<i64>,
    /// When the run started.
    pub started_at: String,
    /// When it closed.
    pub closed_at: String,
    /// The most frequent error codes of the run's failures, with counts.
    pub top_errors: Vec<(String, u64)>,
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Rows failed; the next run retries them.
    Warn,
    /// A run could not run.
    Critical,
}

/// Whether a closed run meets the sync's warn rule.
pub fn warn_due(rule: &AlertRule, counts: &RunCounts) -> bool {
    rule.warn_failed_rows > 0 && counts.failed + counts.rejected >= rule.warn_failed_rows
}

/// Where EMF metric lines go.
#[derive(Debug, Clone)]
pub enum MetricsSink {
    /// Standard output: in Lambda, CloudWatch Logs extracts the metrics.
    Stdout,
    /// Kept in memory (local runs and tests read them).
    Memory(Arc<Mutex<Vec<serde_json::Value>>>),
}

/// Publishes run summaries, metrics and alerts.
#[derive(Debug, Clone)]
pub struct Reporter {
    events: Option<(aws_sdk_eventbridge::Client, String)>,
    alerts: Option<(aws_sdk_sns::Client, String)>,
    metrics: MetricsSink,
}

impl Reporter {
    /// A reporter; `events` is (client, bus name), `alerts` is (client, topic ARN).
    pub fn new(
        events: Option<(aws_sdk_eventbridge::Client, String)>,
        alerts: Option<(aws_sdk_sns::Client, String)>,
        metrics: MetricsSink,
    ) -> Self {
        Self {
            events,
            alerts,
            metrics,
        }
    }

    /// The deployed reporter: events to the stack's bus, alerts to its topic when
    /// `RESYNC_ALERT_TOPIC_ARN` is set, metrics as EMF lines on standard output.
    pub fn for_lambda(
        sdk: &aws_config::SdkConfig,
        resources: &crate::resources::Resources,
    ) -> Self {
        Self::new(
            Some((
                aws_sdk_eventbridge::Client::new(sdk),
                resources.event_bus.clone(),
            )),
            resources
                .alert_topic_arn
                .clone()
                .map(|arn| (aws_sdk_sns::Client::new(sdk), arn)),
            MetricsSink::Stdout,
        )
    }

    /// Emits the metrics line of a closed run.
    pub fn metrics(&self, summary: &RunSummary) {
        let mut line = serde_json::json!({
            "_aws": {
                "Timestamp": crate::domain::timestamp::now().unix_timestamp() * 1000,
                "CloudWatchMetrics": [{
                    "Namespace": "resync",
                    "Dimensions": [["SyncId"]],
                    "Metrics": [
                        {"Name": "RowsDelivered", "Unit": "Count"},
                        {"Name": "RowsFailed", "Unit": "Count"},
                        {"Name": "RowsRejected", "Unit": "Count"},
                        {"Name": "RowsRetriedInRun", "Unit": "Count"},
                        {"Name": "FailedIndexSize", "Unit": "Count"},
                        {"Name": "OldestFailingRowAge", "Unit": "Seconds"}
                    ]
                }]
            },
            "SyncId": summary.sync_id.as_str(),
            "RunId": summary.run_id.as_str(),
            "RowsDelivered": summary.counts.delivered,
            "RowsFailed": summary.counts.failed,
            "RowsRejected": summary.counts.rejected,
            "RowsRetriedInRun": summary.counts.retried_in_run,
            "FailedIndexSize": summary.failed_index_size,
        });
        line["OldestFailingRowAge"] =
            serde_json::json!(summary.oldest_failure_age_secs.unwrap_or(0));
        match &self.metrics {
            MetricsSink::Stdout => println!("{line}"),
            MetricsSink::Memory(lines) => lines.lock().expect("metrics lock").push(line),
        }
    }

    /// Puts the `Run Closed` event on the run-events bus.
    pub async fn run_closed(&self, summary: &RunSummary) -> Result<(), AwsError> {
        self.put_event(
            "Run Closed",
            &serde_json::to_string(summary).expect("summary serialises"),
        )
        .await
    }

    /// Sends an alert to the SNS topic and a `Sync Alert` event to the bus.
    pub async fn alert(
        &self,
        severity: Severity,
        sync: &SyncId,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<(), AwsError> {
        let body = alert_body(severity, sync, subject, detail);
        self.alert_event(&body).await?;
        self.alert_notification(severity, subject, &body).await
    }

    /// Puts a `Sync Alert` event (an [`alert_body`]) on the bus.
    pub async fn alert_event(&self, body: &serde_json::Value) -> Result<(), AwsError> {
        self.put_event("Sync Alert", &body.to_string()).await
    }

    /// Publishes an alert (an [`alert_body`]) to the SNS topic, when there is one.
    pub async fn alert_notification(
        &self,
        severity: Severity,
        subject: &str,
        body: &serde_json::Value,
    ) -> Result<(), AwsError> {
        let Some((client, topic)) = &self.alerts else {
            return Ok(());
        };
        // SNS subjects: ASCII, at most 100 characters.
        let subject: String = format!("[{severity:?}] {subject}")
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(100)
            .collect();
        let message = serde_json::to_string_pretty(body)
            .map_err(|e| AwsError::response("SNS.Publish", format!("alert: {e}")))?;
        client
            .publish()
            .topic_arn(topic)
            .subject(subject)
            .message(message)
            .send()
            .await
            .map_err(|e| AwsError::sdk("SNS.Publish", e))?;
        Ok(())
    }

    async fn put_event(&self, detail_type: &str, detail: &str) -> Result<(), AwsError> {
        match &self.events {
            Some((client, bus)) => put_event(client, bus, detail_type, detail).await,
            None => Ok(()),
        }
    }
}

/// The body of an alert, as the `Sync Alert` event's detail and the SNS message.
pub fn alert_body(
    severity: Severity,
    sync: &SyncId,
    subject: &str,
    detail: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "severity": severity,
        "sync_id": sync.as_str(),
        "subject": subject,
        "detail": detail,
    })
}

/// The detail-type of the event that tells the finalizer a run looks settled.
pub const RUN_SETTLED: &str = "Run settled";

/// The event pattern of the rule that routes [`RUN_SETTLED`] events to the finalizer.
pub fn run_settled_pattern() -> String {
    serde_json::json!({"source": ["resync"], "detail-type": [RUN_SETTLED]}).to_string()
}

/// The detail of a [`RUN_SETTLED`] event; the finalizer reads `sync_id` (its own
/// event's detail) and closes that sync's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSettled {
    /// The sync.
    pub sync_id: SyncId,
    /// The run that looks settled.
    pub run_id: RunId,
}

/// Tells the finalizer that a run looks settled: a [`RUN_SETTLED`] event on the stack's
/// bus, which a rule routes to the finalizer, so the run closes within seconds of its
/// last row instead of at the finalizer's next scheduled tick (a minute in a
/// deployment). The one update that makes a run look settled sends it (see
/// `RunStore::record_batch`). Best effort: a lost notice leaves the close to the
/// schedule, so a failure is logged, never returned.
#[derive(Debug, Clone)]
pub struct SettledNotice {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl SettledNotice {
    /// Notices to `bus`.
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }

    /// Sends the notice for a run; logs (keys only) when it cannot.
    pub async fn send(&self, sync_id: &SyncId, run_id: &RunId) {
        let detail = serde_json::to_string(&RunSettled {
            sync_id: sync_id.clone(),
            run_id: run_id.clone(),
        })
        .expect("the notice serialises");
        match put_event(&self.client, &self.bus, RUN_SETTLED, &detail).await {
            Ok(()) => {
                tracing::info!(sync = %sync_id, run = %run_id, "run looks settled; finalizer told")
            }
            Err(err) => tracing::warn!(
                sync = %sync_id,
                run = %run_id,
                error = %err,
                "could not tell the finalizer a run looks settled; it closes on schedule"
            ),
        }
    }
}

async fn put_event(
    client: &aws_sdk_eventbridge::Client,
    bus: &str,
    detail_type: &str,
    detail: &str,
) -> Result<(), AwsError> {
    let output = client
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name(bus)
                .source("resync")
                .detail_type(detail_type)
                .detail(detail)
                .build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::sdk("EventBridge.PutEvents", e))?;
    if output.failed_entry_count() > 0 {
        let reason = output
            .entries()
            .iter()
            .filter_map(|e| e.error_code())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(AwsError::response("EventBridge.PutEvents", reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rule_warns_on_any_failed_or_rejected_row() {
        let rule = AlertRule::default();
        let mut counts = RunCounts::default();
        assert!(!warn_due(&rule, &counts));
        counts.rejected = 1;
        assert!(warn_due(&rule, &counts));
        let off = AlertRule {
            warn_failed_rows: 0,
            ..AlertRule::default()
        };
        counts.failed = 10;
        assert!(!warn_due(&off, &counts));
    }
}
