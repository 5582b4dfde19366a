//! The run's ledger: one item per delivery invocation with the keys it settled, and
//! sync-start's rejections, read back whole by the finalizer.

use aws_sdk_dynamodb::types::ReturnValue;

use super::{became_settled, expires_at, ledger_pk, run_sk, sync_pk, RunStore};
use crate::{
    aws::{
        item::{get_s, n, s},
        AwsError,
    },
    domain::{
        ids::{RunId, SyncId},
        ledger::{BatchLedger, RecordedRejection},
    },
};

impl RunStore {
    /// Writes one delivery invocation's ledger item and bumps the run's settled hint.
    /// Returns whether this write made the run look settled (see [`RunProgress::became_settled`]).
    pub async fn record_batch(
        &self,
        sync: &SyncId,
        run: &RunId,
        batch_id: &str,
        ledger: &BatchLedger,
    ) -> Result<bool, AwsError> {
        let body = serde_json::to_string(ledger).expect("ledger serialises");
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(ledger_pk(run)))
            .item("sk", s(format!("batch#{batch_id}")))
            .item("ledger", s(body))
            .item("expires_at", expires_at())
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.PutItem", e))?;
        if ledger.settled() == 0 {
            return Ok(false);
        }
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .update_expression("ADD settled_hint :n")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":n", n(ledger.settled()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.UpdateItem", e))?;
        Ok(became_settled(&output, ledger.settled() as u64))
    }

    /// Writes sync-start's rejections, in chunks that fit an item.
    pub async fn record_rejections(
        &self,
        run: &RunId,
        rejections: &[RecordedRejection],
    ) -> Result<(), AwsError> {
        let mut chunk: Vec<&RecordedRejection> = Vec::new();
        let mut size = 0usize;
        let mut seq = 0u32;
        for rejection in rejections {
            let approx = rejection.rejection.reason.len()
                + rejection.rejection.object.len()
                + rejection
                    .rejection
                    .key
                    .as_ref()
                    .map_or(0, |k| k.as_str().len())
                + rejection.payload.as_ref().map_or(0, |p| p.as_str().len())
                + 128;
            if size + approx > 300_000 && !chunk.is_empty() {
                self.put_rejection_chunk(run, seq, &chunk).await?;
                seq += 1;
                chunk.clear();
                size = 0;
            }
            size += approx;
            chunk.push(rejection);
        }
        if !chunk.is_empty() {
            self.put_rejection_chunk(run, seq, &chunk).await?;
        }
        Ok(())
    }

    async fn put_rejection_chunk(
        &self,
        run: &RunId,
        seq: u32,
        chunk: &[&RecordedRejection],
    ) -> Result<(), AwsError> {
        let body = serde_json::to_string(chunk).expect("rejections serialise");
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(ledger_pk(run)))
            .item("sk", s(format!("reject#{seq:06}")))
            .item("rejections", s(body))
            .item("expires_at", expires_at())
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.PutItem", e))?;
        Ok(())
    }

    /// Reads every ledger item and rejection of a run (paged, strongly consistent).
    pub async fn ledger(
        &self,
        run: &RunId,
    ) -> Result<(Vec<BatchLedger>, Vec<RecordedRejection>), AwsError> {
        let mut batches = Vec::new();
        let mut rejections = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(ledger_pk(run)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            if let Some(body) = get_s(&item, "ledger") {
                batches.push(serde_json::from_str(&body).map_err(|e| {
                    AwsError::response("DynamoDB.Query", format!("unreadable ledger item: {e}"))
                })?);
            } else if let Some(body) = get_s(&item, "rejections") {
                let mut chunk: Vec<RecordedRejection> =
                    serde_json::from_str(&body).map_err(|e| {
                        AwsError::response("DynamoDB.Query", format!("unreadable rejections: {e}"))
                    })?;
                rejections.append(&mut chunk);
            }
        }
        Ok((batches, rejections))
    }
}
