//! Sending closed runs' reports: the `Run Closed` event, and when the sync's alert rule
//! was met the `Sync Alert` event and the SNS alert.
//!
//! The closing transaction keeps the report (`RunStore::pending_reports`); every
//! finalizer pass sends what its syncs have pending, part by part, and records what is
//! left. So a run closes with exact counts whatever EventBridge or SNS do, and its
//! report is sent once they answer again: late, not lost. A finalizer that dies after a
//! part went out but before it recorded that sends the part again (consumers may see a
//! run's event twice; its `run_id` tells them apart).

use resync_shared::{
    aws::{
        report::{alert_body, RunSummary, Severity},
        runs::ReportPart,
        AwsError,
    },
    config::SyncConfig,
    domain::timestamp,
};

use crate::{Finalizer, FinalizerError, CLOSE_CLAIM_STALE};

/// Sends the sync's pending reports. Returns the first report that could not be sent
/// entirely (it is kept, and the next pass sends what is left of it).
pub(crate) async fn send_pending(
    deps: &Finalizer,
    sync: &SyncConfig,
    invocation: &str,
) -> Result<(), FinalizerError> {
    let mut not_sent = None;
    for report in deps.runs.pending_reports(&sync.id).await? {
        let run_id = &report.summary.run_id;
        // The closing finalizer holds the claim; another may take over a stale one.
        let claimed = deps
            .runs
            .claim_report(
                &sync.id,
                run_id,
                invocation,
                timestamp::now(),
                CLOSE_CLAIM_STALE,
            )
            .await?;
        if !claimed {
            continue;
        }
        let mut remaining = Vec::new();
        let mut first_error = None;
        for &part in &report.parts {
            if let Err(err) = send(deps, sync, &report.summary, part).await {
                tracing::error!(
                    sync = %sync.id,
                    run = %run_id,
                    part = ?part,
                    error = %err,
                    "run closed, but a part of its report could not be sent; kept for the next finalizer"
                );
                remaining.push(part);
                first_error.get_or_insert(err);
            }
        }
        deps.runs.report_sent(&sync.id, run_id, &remaining).await?;
        if let Some(source) = first_error {
            not_sent.get_or_insert(FinalizerError::ReportNotSent {
                run_id: run_id.clone(),
                source,
            });
        }
    }
    not_sent.map_or(Ok(()), Err)
}

async fn send(
    deps: &Finalizer,
    sync: &SyncConfig,
    summary: &RunSummary,
    part: ReportPart,
) -> Result<(), AwsError> {
    match part {
        ReportPart::RunClosed => deps.reporter.run_closed(summary).await,
        ReportPart::AlertEvent => deps.reporter.alert_event(&alert(sync, summary)?).await,
        ReportPart::AlertNotification => {
            deps.reporter
                .alert_notification(
                    Severity::Warn,
                    &subject(sync, summary),
                    &alert(sync, summary)?,
                )
                .await
        }
    }
}

/// The warn alert's subject: counts only, never row values (I6).
fn subject(sync: &SyncConfig, summary: &RunSummary) -> String {
    format!(
        "sync {}: {} rows failed, {} rejected",
        sync.id, summary.counts.failed, summary.counts.rejected
    )
}

fn alert(sync: &SyncConfig, summary: &RunSummary) -> Result<serde_json::Value, AwsError> {
    let detail = serde_json::to_value(summary)
        .map_err(|e| AwsError::response("EventBridge.PutEvents", format!("summary: {e}")))?;
    Ok(alert_body(
        Severity::Warn,
        &sync.id,
        &subject(sync, summary),
        detail,
    ))
}
