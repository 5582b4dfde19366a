//! Closed runs' reports waiting to be sent (`sync#{sync}` / `report#{run}`).
//!
//! The closing transaction writes the run's report beside its counts, so a run never
//! closes without one and reporting never holds a close back. The finalizer then sends
//! each part (the `Run Closed` event, the `Sync Alert` event, the SNS alert) and deletes
//! the item once every part is out; a part that could not be sent stays, and a later
//! finalizer sends it: late, never lost. A claim (like the close's) keeps two
//! finalizers from sending one report at once.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use serde::{Deserialize, Serialize};

use super::{sync_pk, Claim, RunStore};
use crate::{
    aws::{
        item::{check_item_size, get_s, n, s, Item},
        report::RunSummary,
        AwsError,
    },
    domain::ids::{RunId, SyncId},
};

/// One part of a closed run's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportPart {
    /// The `Run Closed` event on the run-events bus.
    RunClosed,
    /// The `Sync Alert` event (the sync's alert rule was met).
    AlertEvent,
    /// The alert on the SNS topic.
    AlertNotification,
}

/// A closed run's report, with the parts still to send.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingReport {
    /// The run's summary, as it was when the run closed.
    pub summary: RunSummary,
    /// The parts not sent yet.
    pub parts: Vec<ReportPart>,
}

fn report_sk(run: &RunId) -> String {
    format!("report#{run}")
}

const REPORT_PREFIX: &str = "report#";

impl RunStore {
    /// The put of a closed run's report, claimed by `claimant` (the closing finalizer
    /// sends it right after the close), for the closing transaction.
    pub(super) fn report_put(
        &self,
        report: &PendingReport,
        claimant: &str,
        now: time::OffsetDateTime,
    ) -> Result<TransactWriteItem, AwsError> {
        const OPERATION: &str = "DynamoDB.TransactWriteItems";
        let summary = serde_json::to_string(&report.summary)
            .map_err(|e| AwsError::response(OPERATION, format!("summary: {e}")))?;
        let parts = serde_json::to_string(&report.parts)
            .map_err(|e| AwsError::response(OPERATION, format!("report parts: {e}")))?;
        let item = Item::from([
            ("pk".to_owned(), s(sync_pk(&report.summary.sync_id))),
            ("sk".to_owned(), s(report_sk(&report.summary.run_id))),
            ("summary".to_owned(), s(summary)),
            ("parts".to_owned(), s(parts)),
            ("claim".to_owned(), s(claimant)),
            ("claimed_at".to_owned(), n(now.unix_timestamp())),
        ]);
        check_item_size(OPERATION, &item)?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map_err(|e| AwsError::response(OPERATION, e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// The sync's reports not fully sent yet (strongly consistent), oldest run first.
    /// An unreadable one is logged and left alone.
    pub async fn pending_reports(&self, sync: &SyncId) -> Result<Vec<PendingReport>, AwsError> {
        let mut reports = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(sync_pk(sync)))
            .expression_attribute_values(":prefix", s(REPORT_PREFIX))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let summary = get_s(&item, "summary").and_then(|t| serde_json::from_str(&t).ok());
            let parts = get_s(&item, "parts").and_then(|t| serde_json::from_str(&t).ok());
            match (summary, parts) {
                (Some(summary), Some(parts)) => reports.push(PendingReport { summary, parts }),
                _ => tracing::error!(
                    sync = %sync,
                    item = get_s(&item, "sk").unwrap_or_default(),
                    "unreadable pending report left alone"
                ),
            }
        }
        Ok(reports)
    }

    /// Claims a pending report for one finalizer invocation (see
    /// [`RunStore::claim_close`]): the claimant may claim again, a claim older than
    /// `stale_after` is taken over, a released one is free. Returns whether the report
    /// is this claimant's to send (`false` too when it is gone: sent already).
    pub async fn claim_report(
        &self,
        sync: &SyncId,
        run: &RunId,
        claimant: &str,
        now: time::OffsetDateTime,
        stale_after: std::time::Duration,
    ) -> Result<bool, AwsError> {
        self.claim(
            sync,
            Claim {
                sk: report_sk(run),
                precondition: "attribute_exists(pk)",
                claim_attribute: "claim",
                claimed_at_attribute: "claimed_at",
                names: &[],
                values: Vec::new(),
            },
            claimant,
            now,
            stale_after,
        )
        .await
    }

    /// Records what is left of a report after a sending attempt: nothing (the report
    /// is deleted), or the parts still to send, with the claim released so that the
    /// next finalizer tries again at once.
    pub async fn report_sent(
        &self,
        sync: &SyncId,
        run: &RunId,
        remaining: &[ReportPart],
    ) -> Result<(), AwsError> {
        if remaining.is_empty() {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(sync_pk(sync)))
                .key("sk", s(report_sk(run)))
                .send()
                .await
                .map_err(|e| AwsError::sdk("DynamoDB.DeleteItem", e))?;
            return Ok(());
        }
        let parts = serde_json::to_string(remaining)
            .map_err(|e| AwsError::response("DynamoDB.UpdateItem", format!("report parts: {e}")))?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(report_sk(run)))
            .update_expression("SET parts = :parts REMOVE #claim, #claimed_at")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#claim", "claim")
            .expression_attribute_names("#claimed_at", "claimed_at")
            .expression_attribute_values(":parts", s(parts))
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.UpdateItem", e))?;
        Ok(())
    }
}
