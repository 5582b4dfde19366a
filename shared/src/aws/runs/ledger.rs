//! The run's ledger: one item per delivery invocation with the keys it settled, and
//! sync-start's rejections, each naming the planning attempt it belongs to; the
//! finalizer reads back the current attempt's.

use aws_sdk_dynamodb::{error::SdkError, types::ReturnValue};

use super::{became_settled, expires_at, generation_is, ledger_pk, run_sk, sync_pk, RunStore};
use crate::{
    aws::{
        item::{get_n, get_s, n, s},
        AwsError,
    },
    domain::{
        ids::{RunId, SyncId},
        ledger::{BatchLedger, RecordedRejection},
    },
};

impl RunStore {
    /// Writes one delivery invocation's ledger item and bumps the run's settled hint —
    /// only while the run is still at the item's planning attempt: an item of an attempt
    /// the run has replaced counts for nothing, not even in the hint. Returns whether
    /// this write made the run look settled (see [`RunProgress::became_settled`]).
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
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .update_expression("ADD settled_hint :n")
            .condition_expression(format!(
                "attribute_exists(pk) AND {}",
                generation_is(ledger.generation)
            ))
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_values(":generation", n(ledger.generation))
            .expression_attribute_values(":n", n(ledger.settled()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(became_settled(&output, ledger.settled() as u64)),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                match self.run(sync, run).await? {
                    // Planned again since: this attempt's item is kept but not counted.
                    Some(_) => Ok(false),
                    None => Err(AwsError::response(
                        "DynamoDB.UpdateItem",
                        format!("run {run} of sync {sync} has no record"),
                    )),
                }
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Writes the rejections of a run's planning attempt `generation`, in chunks that
    /// fit an item; each attempt's chunks have keys of their own, so a later attempt
    /// never overwrites an earlier one's nor is overwritten by one still running.
    pub async fn record_rejections(
        &self,
        run: &RunId,
        generation: u32,
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
                self.put_rejection_chunk(run, generation, seq, &chunk)
                    .await?;
                seq += 1;
                chunk.clear();
                size = 0;
            }
            size += approx;
            chunk.push(rejection);
        }
        if !chunk.is_empty() {
            self.put_rejection_chunk(run, generation, seq, &chunk)
                .await?;
        }
        Ok(())
    }

    async fn put_rejection_chunk(
        &self,
        run: &RunId,
        generation: u32,
        seq: u32,
        chunk: &[&RecordedRejection],
    ) -> Result<(), AwsError> {
        let body = serde_json::to_string(chunk).expect("rejections serialise");
        // The first attempt's keys are those written before attempts were numbered.
        let sk = if generation == 0 {
            format!("reject#{seq:06}")
        } else {
            format!("reject#{generation:06}#{seq:06}")
        };
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(ledger_pk(run)))
            .item("sk", s(sk))
            .item("generation", n(generation))
            .item("rejections", s(body))
            .item("expires_at", expires_at())
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.PutItem", e))?;
        Ok(())
    }

    /// Reads the ledger items and rejections of a run's planning attempt `generation`
    /// (paged, strongly consistent); those of earlier attempts are skipped.
    pub async fn ledger(
        &self,
        run: &RunId,
        generation: u32,
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
                let batch: BatchLedger = serde_json::from_str(&body).map_err(|e| {
                    AwsError::response("DynamoDB.Query", format!("unreadable ledger item: {e}"))
                })?;
                if batch.generation == generation {
                    batches.push(batch);
                }
            } else if let Some(body) = get_s(&item, "rejections") {
                if get_n::<u32>(&item, "generation") != generation {
                    continue;
                }
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
