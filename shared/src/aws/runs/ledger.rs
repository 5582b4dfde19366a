//! The run's ledger: one item per delivery invocation with the keys it settled (several
//! when they do not fit one item), and sync-start's rejections in as many items as they
//! need, each naming the planning attempt it belongs to; the finalizer reads back the
//! current attempt's. Every item is measured before it is sent: none is larger than
//! DynamoDB's 400 KB.

use aws_sdk_dynamodb::{error::SdkError, types::ReturnValue};

use super::{became_settled, expires_at, generation_is, ledger_pk, run_sk, sync_pk, RunStore};
use crate::{
    aws::{
        item::{check_item_size, get_n, get_s, item_size, n, s, Item, MAX_ITEM_BYTES},
        AwsError,
    },
    domain::{
        ids::{RunId, SyncId},
        ledger::{split_json_array, BatchLedger, RecordedRejection},
        rejections::SampledRejection,
    },
};

/// The attribute holding a ledger part's JSON.
pub(super) const LEDGER: &str = "ledger";
/// The attribute holding a chunk of rejections' JSON.
const REJECTIONS: &str = "rejections";
/// The sort key prefix of keyed rejection chunks.
const REJECT_PREFIX: &str = "reject#";
/// The attribute holding a part of a run's rejection sample.
const SAMPLE: &str = "sample";
/// The sort key prefix of a run's rejection sample.
const SAMPLE_PREFIX: &str = "sample#";

/// A ledger part's sort key: `batch#{id}`, or `batch#{id}#{part}` when the ledger
/// takes several items.
fn part_sk(batch_id: &str, part: Option<usize>) -> String {
    match part {
        None => format!("batch#{batch_id}"),
        Some(part) => format!("batch#{batch_id}#{part:04}"),
    }
}

/// Bytes left for the text attribute of `item` (which holds it empty).
pub(super) fn text_budget(item: &Item) -> usize {
    MAX_ITEM_BYTES.saturating_sub(item_size(item))
}

impl RunStore {
    /// Writes one delivery invocation's ledger and bumps the run's settled hint once,
    /// by everything the invocation settled — only while the run is still at the
    /// ledger's planning attempt: a ledger of an attempt the run has replaced counts for
    /// nothing, not even in the hint. The ledger is one item, or several when it is
    /// larger than an item holds (`batch#{id}#{part}`; the finalizer reads their union).
    /// Returns whether this write made the run look settled (see
    /// [`RunProgress::became_settled`]).
    ///
    /// [`RunProgress::became_settled`]: crate::domain::run::RunProgress::became_settled
    pub async fn record_batch(
        &self,
        sync: &SyncId,
        run: &RunId,
        batch_id: &str,
        ledger: &BatchLedger,
    ) -> Result<bool, AwsError> {
        const OPERATION: &str = "DynamoDB.PutItem";
        let settled = ledger.settled();
        let item = |sk: String, body: String| {
            Item::from([
                ("pk".to_owned(), s(ledger_pk(run))),
                ("sk".to_owned(), s(sk)),
                (LEDGER.to_owned(), s(body)),
                ("expires_at".to_owned(), expires_at()),
            ])
        };
        // Room for the ledger's text: an item less its other attributes, measured with
        // the longest sort key a part gets.
        let budget = text_budget(&item(part_sk(batch_id, Some(9999)), String::new()));
        let parts = ledger
            .clone()
            .split(budget)
            .map_err(|e| AwsError::response(OPERATION, e.to_string()))?;
        let several = parts.len() > 1;
        for (i, part) in parts.iter().enumerate() {
            let body = serde_json::to_string(part).map_err(|e| {
                AwsError::response(OPERATION, format!("the ledger does not serialise: {e}"))
            })?;
            let item = item(part_sk(batch_id, several.then_some(i)), body);
            self.put(OPERATION, item).await?;
        }
        if settled == 0 {
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
            .expression_attribute_values(":n", n(settled))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(became_settled(&output, settled as u64)),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                match self.run(sync, run).await? {
                    // Planned again since: this attempt's items are kept but not counted.
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

    /// Writes the rejections of a run's planning attempt `generation`, in as many items
    /// as their JSON needs; each attempt's chunks have keys of their own, so a later
    /// attempt never overwrites an earlier one's nor is overwritten by one still running.
    pub async fn record_rejections(
        &self,
        run: &RunId,
        generation: u32,
        rejections: &[RecordedRejection],
    ) -> Result<(), AwsError> {
        self.record_rejection_chunk(run, generation, 0, rejections)
            .await
            .map(|_| ())
    }

    /// Writes one chunk of keyed rejections of planning attempt `generation` as items
    /// numbered from `first_seq` (as many as its JSON needs), and returns how many
    /// items it wrote: the caller's next chunk starts after them. sync-start writes its
    /// keyed rejections chunk by chunk as planning goes (see
    /// [`crate::domain::rejections`]).
    pub async fn record_rejection_chunk(
        &self,
        run: &RunId,
        generation: u32,
        first_seq: usize,
        rejections: &[RecordedRejection],
    ) -> Result<usize, AwsError> {
        const OPERATION: &str = "DynamoDB.PutItem";
        let item = |seq: usize, body: String| {
            // The first attempt's keys are those written before attempts were numbered.
            let sk = if generation == 0 {
                format!("{REJECT_PREFIX}{seq:06}")
            } else {
                format!("{REJECT_PREFIX}{generation:06}#{seq:06}")
            };
            Item::from([
                ("pk".to_owned(), s(ledger_pk(run))),
                ("sk".to_owned(), s(sk)),
                ("generation".to_owned(), n(generation)),
                (REJECTIONS.to_owned(), s(body)),
                ("expires_at".to_owned(), expires_at()),
            ])
        };
        let budget = text_budget(&item(99_999_999, String::new()));
        let chunks = split_json_array(rejections, budget, |r| {
            format!(
                "the rejection of {} line {}",
                r.rejection.object, r.rejection.line
            )
        })
        .map_err(|e| AwsError::response(OPERATION, e.to_string()))?;
        let written = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let body = serde_json::to_string(chunk).map_err(|e| {
                AwsError::response(OPERATION, format!("rejections do not serialise: {e}"))
            })?;
            self.put(OPERATION, item(first_seq.saturating_add(i), body))
                .await?;
        }
        Ok(written)
    }

    /// Writes the sample of a run's rejections (planning attempt `generation`), in as
    /// many items as it needs (`sample#{attempt}#{n}`); `resync rejections` reads it.
    pub async fn record_rejection_sample(
        &self,
        run: &RunId,
        generation: u32,
        sample: &[SampledRejection],
    ) -> Result<(), AwsError> {
        const OPERATION: &str = "DynamoDB.PutItem";
        let item = |seq: usize, body: String| {
            Item::from([
                ("pk".to_owned(), s(ledger_pk(run))),
                (
                    "sk".to_owned(),
                    s(format!("{SAMPLE_PREFIX}{generation:06}#{seq:06}")),
                ),
                ("generation".to_owned(), n(generation)),
                (SAMPLE.to_owned(), s(body)),
                ("expires_at".to_owned(), expires_at()),
            ])
        };
        let budget = text_budget(&item(999_999, String::new()));
        let chunks = split_json_array(sample, budget, |r| {
            format!(
                "the sampled rejection of {} line {}",
                r.rejection.object, r.rejection.line
            )
        })
        .map_err(|e| AwsError::response(OPERATION, e.to_string()))?;
        for (seq, chunk) in chunks.into_iter().enumerate() {
            let body = serde_json::to_string(chunk).map_err(|e| {
                AwsError::response(OPERATION, format!("the sample does not serialise: {e}"))
            })?;
            self.put(OPERATION, item(seq, body)).await?;
        }
        Ok(())
    }

    /// The sample of a run's rejections recorded by planning attempt `generation`.
    pub async fn rejection_sample(
        &self,
        run: &RunId,
        generation: u32,
    ) -> Result<Vec<SampledRejection>, AwsError> {
        let mut sample = Vec::new();
        let mut pages = self
            .run_items(run, &format!("{SAMPLE_PREFIX}{generation:06}#"))
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            if let Some(body) = get_s(&item, SAMPLE) {
                let mut chunk: Vec<SampledRejection> =
                    serde_json::from_str(&body).map_err(|e| {
                        AwsError::response("DynamoDB.Query", format!("unreadable sample: {e}"))
                    })?;
                sample.append(&mut chunk);
            }
        }
        Ok(sample)
    }

    /// Puts an item, refusing one larger than DynamoDB takes before sending it.
    pub(super) async fn put(&self, operation: &'static str, item: Item) -> Result<(), AwsError> {
        check_item_size(operation, &item)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| AwsError::sdk(operation, e))?;
        Ok(())
    }

    /// A paged query of the items of a run's partition whose sort key begins with
    /// `prefix` (strongly consistent).
    pub(super) fn run_items(
        &self,
        run: &RunId,
        prefix: &str,
    ) -> aws_sdk_dynamodb::operation::query::paginator::QueryPaginatorItems {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(ledger_pk(run)))
            .expression_attribute_values(":prefix", s(prefix))
            .consistent_read(true)
            .into_paginator()
            .items()
    }

    /// Reads the ledger items of a run's planning attempt `generation` (paged, strongly
    /// consistent); those of earlier attempts are skipped. Rejections are not read
    /// here: [`RunStore::rejection_chunks`] streams them.
    pub async fn ledger(&self, run: &RunId, generation: u32) -> Result<Vec<BatchLedger>, AwsError> {
        let mut batches = Vec::new();
        let mut pages = self.run_items(run, "batch#").send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            if let Some(body) = get_s(&item, LEDGER) {
                let batch: BatchLedger = serde_json::from_str(&body).map_err(|e| {
                    AwsError::response("DynamoDB.Query", format!("unreadable ledger item: {e}"))
                })?;
                if batch.generation == generation {
                    batches.push(batch);
                }
            }
        }
        Ok(batches)
    }

    /// The keyed rejections of a run's planning attempt `generation`, one stored chunk
    /// at a time (the finalizer writes each into the index before it reads the next,
    /// so it holds one chunk, never the run's rejections).
    pub fn rejection_chunks(&self, run: &RunId, generation: u32) -> RejectionChunks {
        RejectionChunks {
            pages: self.run_items(run, REJECT_PREFIX).send(),
            generation,
        }
    }
}

/// The keyed rejection chunks of one planning attempt, read one by one (see
/// [`RunStore::rejection_chunks`]).
pub struct RejectionChunks {
    pages: aws_smithy_async::future::pagination_stream::PaginationStream<
        Result<
            Item,
            SdkError<
                aws_sdk_dynamodb::operation::query::QueryError,
                aws_smithy_runtime_api::client::orchestrator::HttpResponse,
            >,
        >,
    >,
    generation: u32,
}

impl RejectionChunks {
    /// The next chunk, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<RecordedRejection>>, AwsError> {
        while let Some(item) = self.pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let Some(body) = get_s(&item, REJECTIONS) else {
                continue;
            };
            if get_n::<u32>(&item, "generation") != self.generation {
                continue;
            }
            let chunk = serde_json::from_str(&body).map_err(|e| {
                AwsError::response("DynamoDB.Query", format!("unreadable rejections: {e}"))
            })?;
            return Ok(Some(chunk));
        }
        Ok(None)
    }
}
