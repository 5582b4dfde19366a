//! Closing a run: one finalizer claims the close, then the run gets its counts, the
//! sync its source watermark and release, and the run's report its place in the outbox, in one
//! transaction.

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

use super::{reports::PendingReport, run_sk, state_key, sync_pk, Claim, RunStore};
use crate::{
    aws::{
        item::{n, s},
        AwsError,
    },
    domain::{
        ids::{RunId, SyncId},
        ledger::RunCounts,
        run::{CloseProgress, RunRecord, RunStatus},
        timestamp,
    },
};

impl RunStore {
    /// Claims a settled run's close for one finalizer invocation, so that two
    /// finalizers running at once (the schedule's and a run-settled notice's) do not
    /// both report the run. The same claimant (a retried invocation keeps its request
    /// id) may claim again; a claim older than `stale_after` (its finalizer died) can be
    /// taken over, and the run is then reported twice, as after any crash between
    /// reporting and closing. Returns whether the claim is this claimant's.
    pub async fn claim_close(
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
                sk: run_sk(run),
                precondition: "#status = :delivering",
                claim_attribute: "close_claim",
                claimed_at_attribute: "close_claimed_at",
                names: &[("#status", "status")],
                values: vec![(":delivering", s(RunStatus::Delivering.as_str()))],
            },
            claimant,
            now,
            stale_after,
        )
        .await
    }

    /// Records how far `claimant`'s close of a run got and gives its claim up, so the
    /// next finalizer invocation claims the close at once and resumes there. Returns
    /// `false` when the claim was no longer the claimant's (another finalizer took a
    /// stale claim over): that one's progress stands.
    pub async fn record_close_progress(
        &self,
        sync: &SyncId,
        run: &RunId,
        claimant: &str,
        progress: &CloseProgress,
    ) -> Result<bool, AwsError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .condition_expression("#status = :delivering AND close_claim = :me")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":delivering", s(RunStatus::Delivering.as_str()))
            .expression_attribute_values(":me", s(claimant))
            .expression_attribute_values(":chunks", n(progress.rejection_chunks));
        let set = match &progress.index_through {
            Some(key) => {
                update = update.expression_attribute_values(":through", s(key));
                "SET close_index_through = :through, close_rejection_chunks = :chunks"
            }
            None => "SET close_rejection_chunks = :chunks",
        };
        match update
            .update_expression(format!("{set} REMOVE close_claim, close_claimed_at"))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(aws_sdk_dynamodb::error::SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(false)
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Closes a run and releases the sync in one transaction: the run gets its counts,
    /// the sync its new cursor and no open run, and the run's report is kept to be sent
    /// (claimed by `claimant`, see [`RunStore::pending_reports`]). Returns `false` when
    /// another finalizer closed it first. A transaction that conflicted with another
    /// write or was throttled is tried again, then returned as an error.
    pub async fn close(
        &self,
        record: &RunRecord,
        counts: &RunCounts,
        failed_index_size: u64,
        oldest_failure_at: Option<&str>,
        report: &PendingReport,
        claimant: &str,
    ) -> Result<bool, AwsError> {
        let closed_at = timestamp::now();
        let now = timestamp::rfc3339(closed_at);
        let mut run_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(sync_pk(&record.sync_id)))
            .key("sk", s(run_sk(&record.run_id)))
            .condition_expression("#status = :delivering")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":delivering", s(RunStatus::Delivering.as_str()))
            .expression_attribute_values(":closed", s(RunStatus::Closed.as_str()))
            .expression_attribute_values(":now", s(&now))
            .expression_attribute_values(":planned", n(counts.planned))
            .expression_attribute_values(":delivered", n(counts.delivered))
            .expression_attribute_values(":failed", n(counts.failed))
            .expression_attribute_values(":retried", n(counts.retried_in_run))
            .expression_attribute_values(":recovered", n(counts.recovered))
            .expression_attribute_values(":index", n(failed_index_size));
        let mut run_expression = "SET #status = :closed, closed_at = :now, planned = :planned, delivered = :delivered, failed = :failed, retried_in_run = :retried, recovered = :recovered, failed_index_size = :index".to_owned();
        if let Some(oldest) = oldest_failure_at {
            run_expression.push_str(", oldest_failure_at = :oldest");
            run_update = run_update.expression_attribute_values(":oldest", s(oldest));
        }
        let run_update = run_update
            .update_expression(run_expression)
            .build()
            .map_err(|e| AwsError::response("DynamoDB.TransactWriteItems", e.to_string()))?;

        let mut state_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(sync_pk(&record.sync_id)))
            .key("sk", s(state_key()))
            .condition_expression("open_run = :run")
            .expression_attribute_values(":run", s(record.run_id.as_str()));
        let mut sets = vec!["last_run = :run"];
        if let Some(cursor) = &record.cursor_after {
            // CURSOR is a DynamoDB reserved word.
            state_update = state_update
                .expression_attribute_values(":cursor", s(cursor))
                .expression_attribute_names("#cursor", "cursor");
            sets.push("#cursor = :cursor");
        }
        if let Some(watermark) = record.watermark_after {
            state_update = state_update
                .expression_attribute_values(":watermark", n(watermark))
                .expression_attribute_names("#watermark", "watermark");
            sets.push("#watermark = :watermark");
        }
        let state_expression = format!("SET {} REMOVE open_run, open_since", sets.join(", "));
        let state_update = state_update
            .update_expression(state_expression)
            .build()
            .map_err(|e| AwsError::response("DynamoDB.TransactWriteItems", e.to_string()))?;

        self.transact(vec![
            TransactWriteItem::builder().update(run_update).build(),
            TransactWriteItem::builder().update(state_update).build(),
            self.report_put(report, claimant, closed_at)?,
        ])
        .await
    }
}
