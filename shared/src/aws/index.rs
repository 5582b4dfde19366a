//! The failed-row index: one item per failing key of a sync, with its latest payload
//! and last error, kept until the key is delivered.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use aws_sdk_dynamodb::{
    types::{DeleteRequest, PutRequest, WriteRequest},
    Client,
};
use futures::StreamExt;
use serde_json::{Map, Value};

use super::{
    item::{check_item_size, get_n, get_s, n, s, Item},
    AwsError,
};
use crate::domain::{
    ids::{PrimaryKey, RunId, SyncId},
    ledger::{FailedRow, RecordedRejection},
    merge::CarriedEntry,
    outcome::ErrorClass,
    timestamp,
};

/// One failing key as operators see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IndexEntry {
    /// The key.
    pub key: PrimaryKey,
    /// Error class (`retryable`, `permanent`, `rejected`, ...).
    pub error_class: String,
    /// Error code.
    pub error_code: String,
    /// Error message.
    pub error_message: String,
    /// Attempts across runs, the last run's included (`attempts_total` in `resync
    /// failed`).
    #[serde(rename = "attempts_total")]
    pub attempts: u32,
    /// Attempts in the run that last failed the key (0 for a rejection, which is never
    /// sent; for entries written before it was kept, the total stands in).
    pub attempts_last_run: u32,
    /// First failure.
    pub first_failed_at: String,
    /// Latest failure.
    pub last_failed_at: String,
    /// The run that last failed it.
    pub last_run_id: String,
    /// Whether a payload is stored (rejected rows have none).
    #[serde(skip)]
    pub payload: Option<Map<String, Value>>,
}

/// Size and age of a sync's index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSummary {
    /// Keys in the index.
    pub size: u64,
    /// The oldest `first_failed_at`.
    pub oldest_failure_at: Option<String>,
}

/// DynamoDB adapter for the failed-row index.
#[derive(Debug, Clone)]
pub struct FailedRowIndex {
    client: Client,
    table: String,
}

impl FailedRowIndex {
    /// A query of all of one sync's entries (callers add a projection and page it).
    fn query_sync(
        &self,
        sync: &SyncId,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("sync_id = :sync")
            .expression_attribute_values(":sync", s(sync.as_str()))
    }

    /// A consistent query of the sync's index reading only `projection`, where `#key`
    /// names the key.
    fn projected(
        &self,
        sync: &SyncId,
        projection: &str,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.query_sync(sync)
            .projection_expression(projection)
            .expression_attribute_names("#key", "key")
            .consistent_read(true)
    }

    /// Wraps a client and the table name.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Every entry of a sync (paged).
    pub async fn entries(&self, sync: &SyncId) -> Result<Vec<IndexEntry>, AwsError> {
        let mut entries = Vec::new();
        let mut pages = self
            .query_sync(sync)
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let Some(key) = get_s(&item, "key").and_then(|k| PrimaryKey::parse(k).ok()) else {
                continue;
            };
            let payload = get_s(&item, "payload")
                .and_then(|p| serde_json::from_str::<Map<String, Value>>(&p).ok());
            entries.push(IndexEntry {
                key,
                error_class: get_s(&item, "error_class").unwrap_or_default(),
                error_code: get_s(&item, "error_code").unwrap_or_default(),
                error_message: get_s(&item, "error_message").unwrap_or_default(),
                attempts: get_n::<u32>(&item, "attempts"),
                attempts_last_run: if item.contains_key("attempts_last_run") {
                    get_n::<u32>(&item, "attempts_last_run")
                } else {
                    get_n::<u32>(&item, "attempts")
                },
                first_failed_at: get_s(&item, "first_failed_at").unwrap_or_default(),
                last_failed_at: get_s(&item, "last_failed_at").unwrap_or_default(),
                last_run_id: get_s(&item, "last_run_id").unwrap_or_default(),
                payload,
            });
        }
        Ok(entries)
    }

    /// The sync's index as planning holds it: key, first failure and attempts (a
    /// projection), no payloads — those of the keys the source does not mention are
    /// read back afterwards by [`FailedRowIndex::read_payloads`].
    pub async fn load_for_planning(
        &self,
        sync: &SyncId,
    ) -> Result<HashMap<PrimaryKey, CarriedEntry>, AwsError> {
        let mut index = HashMap::new();
        let mut pages = self
            .projected(sync, "#key, first_failed_at, attempts")
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let Some(key) = get_s(&item, "key").and_then(|k| PrimaryKey::parse(k).ok()) else {
                continue;
            };
            index.insert(
                key,
                CarriedEntry {
                    first_failed_at: get_s(&item, "first_failed_at").unwrap_or_default(),
                    attempts: get_n::<u32>(&item, "attempts"),
                },
            );
        }
        Ok(index)
    }

    /// Reads the sync's index again, key and stored payload only, one page (1 MB) at a
    /// time in key order, handing each entry to `each` as it comes: planning holds one
    /// page of payloads, never the index's. A query reads (and DynamoDB bills) whole
    /// items whatever the projection, so this second read is made only when the source
    /// left keys to retry from their payloads.
    pub async fn read_payloads<E: From<AwsError>>(
        &self,
        sync: &SyncId,
        mut each: impl AsyncFnMut(PrimaryKey, Option<String>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut pages = self
            .projected(sync, "#key, payload")
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let mut item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let Some(key) = get_s(&item, "key").and_then(|k| PrimaryKey::parse(k).ok()) else {
                continue;
            };
            let payload = match item.remove("payload") {
                Some(aws_sdk_dynamodb::types::AttributeValue::S(text)) => Some(text),
                _ => None,
            };
            each(key, payload).await?;
        }
        Ok(())
    }

    /// Size and oldest failure of a sync's index.
    pub async fn summary(&self, sync: &SyncId) -> Result<IndexSummary, AwsError> {
        let mut summary = IndexSummary::default();
        let mut pages = self
            .query_sync(sync)
            .projection_expression("first_failed_at")
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            summary.size += 1;
            if let Some(at) = get_s(&item, "first_failed_at") {
                if summary.oldest_failure_at.as_ref().is_none_or(|o| &at < o) {
                    summary.oldest_failure_at = Some(at);
                }
            }
        }
        Ok(summary)
    }

    /// Applies a closed run to the index: writes its failures and keyed rejections,
    /// deletes its recovered keys ([`FailedRowIndex::run_update`], all of it).
    /// Idempotent, so a finalizer that crashes midway can simply run again.
    pub async fn apply_run(
        &self,
        sync: &SyncId,
        run: &RunId,
        failures: &[&FailedRow],
        rejections: &[&RecordedRejection],
        recovered: &[&PrimaryKey],
    ) -> Result<(), AwsError> {
        let update = Self::run_update(sync, run, failures, rejections, recovered);
        self.write(&update, update.writes()).await
    }

    /// The writes that apply a closed run to the index, in key order (a close that
    /// stops midway resumes after the last key it wrote): puts of its failures and keyed
    /// rejections, deletes of its recovered keys.
    ///
    /// Each key is written once (DynamoDB refuses a `BatchWriteItem` naming a key twice,
    /// and across requests the last would win by accident). When a key is in several
    /// lists: a failure wins over a rejection (it holds the payload the next run
    /// retries with, and the error of the row's latest attempt), and either wins over a
    /// delete (I2: the index is the old one less the delivered keys, plus the run's
    /// failed and rejected keys). Rejections written after these
    /// ([`FailedRowIndex::apply_rejections`], chunk by chunk) win over the deletes too.
    pub fn run_update<'a>(
        sync: &'a SyncId,
        run: &'a RunId,
        failures: &[&'a FailedRow],
        rejections: &[&'a RecordedRejection],
        recovered: &[&'a PrimaryKey],
    ) -> RunUpdate<'a> {
        let mut written: HashSet<&PrimaryKey> =
            HashSet::with_capacity(failures.len() + rejections.len() + recovered.len());
        let mut writes: Vec<IndexWrite<'a>> =
            Vec::with_capacity(failures.len() + rejections.len() + recovered.len());
        for row in failures {
            if written.insert(&row.key) {
                writes.push(IndexWrite {
                    key: &row.key,
                    what: What::Failure(row),
                });
            }
        }
        for rejection in rejections {
            let Some(key) = &rejection.rejection.key else {
                continue;
            };
            // Every copy of a non-unique key is rejected; the index keeps one entry.
            if written.insert(key) {
                writes.push(IndexWrite {
                    key,
                    what: What::Rejection(rejection),
                });
            }
        }
        for key in recovered {
            if written.insert(key) {
                writes.push(IndexWrite {
                    key,
                    what: What::Delete,
                });
            }
        }
        drop(written);
        writes.sort_by(|a, b| a.key.cmp(b.key));
        RunUpdate {
            sync,
            run,
            now: timestamp::rfc3339(timestamp::now()),
            writes,
        }
    }

    /// Writes `writes`, a part of `update` (each key at most once),
    /// [`INDEX_WRITES_IN_FLIGHT`] calls at once; each request is built as its call is.
    pub async fn write(
        &self,
        update: &RunUpdate<'_>,
        writes: &[IndexWrite<'_>],
    ) -> Result<(), AwsError> {
        self.write_all(writes, |w| update.request(w)).await
    }

    /// Writes one chunk of a closed run's keyed rejections into the index, after
    /// [`FailedRowIndex::apply_run`] wrote its failures and deletes: a key that
    /// `failed` says failed in the run is left to its failure (which wins), and a key
    /// twice in the chunk (every copy of a non-unique key is rejected) is written once.
    /// A key in two chunks is written twice, the later winning, with the same entry.
    /// Idempotent, like `apply_run`.
    pub async fn apply_rejections(
        &self,
        sync: &SyncId,
        run: &RunId,
        rejections: &[RecordedRejection],
        failed: &dyn Fn(&PrimaryKey) -> bool,
    ) -> Result<(), AwsError> {
        let now = timestamp::rfc3339(timestamp::now());
        let mut written: HashSet<&PrimaryKey> = HashSet::with_capacity(rejections.len());
        let mut requests = Vec::with_capacity(rejections.len());
        for rejection in rejections {
            let Some(key) = &rejection.rejection.key else {
                continue;
            };
            if failed(key) || !written.insert(key) {
                continue;
            }
            requests.push(put(rejection_item(sync, key, run, &now, rejection))?);
        }
        self.write_all(&requests, |r| Ok(r.clone())).await
    }

    /// Writes `writes` (each key at most once) in `BatchWriteItem` calls of 25,
    /// [`INDEX_WRITES_IN_FLIGHT`] at once: a run's failures and recovered keys are
    /// written at that many calls' pace, not one call's (the order of the calls does not
    /// matter, as no key is in two of them). Each call's requests are made by `request`
    /// as the call is.
    async fn write_all<T>(
        &self,
        writes: &[T],
        request: impl Fn(&T) -> Result<WriteRequest, AwsError> + Copy,
    ) -> Result<(), AwsError> {
        let mut calls = futures::stream::iter(writes.chunks(MAX_BATCH_WRITE_ITEMS).map(
            |chunk| async move {
                let requests = chunk.iter().map(request).collect::<Result<Vec<_>, _>>()?;
                self.batch_write(requests).await
            },
        ))
        .buffer_unordered(INDEX_WRITES_IN_FLIGHT);
        while let Some(written) = calls.next().await {
            written?;
        }
        Ok(())
    }

    /// Sends one `BatchWriteItem`, retrying unprocessed items. Refuses a request that
    /// DynamoDB would refuse (over 25 items, a key twice) before sending it, so no
    /// emulator's leniency hides it.
    async fn batch_write(&self, mut pending: Vec<WriteRequest>) -> Result<(), AwsError> {
        check_batch_write(&pending)?;
        let mut delay = Duration::from_millis(50);
        for _ in 0..10 {
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, pending)
                .send()
                .await
                .map_err(|e| AwsError::sdk("DynamoDB.BatchWriteItem", e))?;
            pending = output
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Err(AwsError::response(
            "DynamoDB.BatchWriteItem",
            format!("{} items still unprocessed after 10 tries", pending.len()),
        ))
    }
}

/// A closed run's index update: one write per key, in key order, each request built
/// only when its call is sent (a run with many failed or recovered keys holds a
/// reference per key, not a request).
#[derive(Debug)]
pub struct RunUpdate<'a> {
    sync: &'a SyncId,
    run: &'a RunId,
    /// When the update was made: the failure time of a row that has none.
    now: String,
    writes: Vec<IndexWrite<'a>>,
}

impl<'a> RunUpdate<'a> {
    /// The writes, in key order.
    pub fn writes(&self) -> &[IndexWrite<'a>] {
        &self.writes
    }

    /// The request of one write.
    fn request(&self, write: &IndexWrite<'_>) -> Result<WriteRequest, AwsError> {
        let (sync, run) = (self.sync, self.run);
        match write.what {
            What::Failure(row) => {
                // When the row failed (recorded by delivery), not when its run closed.
                let failed_at = row.failed_at.as_deref().unwrap_or(&self.now);
                let mut item = base_item(sync, &row.key, run, failed_at);
                item.insert("error_class".into(), s(row.error.class.as_str()));
                item.insert("error_code".into(), s(&row.error.code));
                item.insert("error_message".into(), s(&row.error.message));
                item.insert(
                    "attempts".into(),
                    n(row.prior_attempts.saturating_add(row.attempts)),
                );
                item.insert("attempts_last_run".into(), n(row.attempts));
                item.insert(
                    "first_failed_at".into(),
                    s(row.first_failed_at.as_deref().unwrap_or(failed_at)),
                );
                item.insert("payload".into(), s(row.payload.as_str()));
                put(item)
            }
            What::Rejection(rejection) => {
                put(rejection_item(sync, write.key, run, &self.now, rejection))
            }
            What::Delete => {
                let delete = DeleteRequest::builder()
                    .key("sync_id", s(sync.as_str()))
                    .key("key", s(write.key.as_str()))
                    .build()
                    .map_err(|e| AwsError::response("DynamoDB.BatchWriteItem", e.to_string()))?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            }
        }
    }
}

/// One write of a run's index update (a put or a delete) and its key.
#[derive(Debug, Clone, Copy)]
pub struct IndexWrite<'a> {
    /// The key written.
    pub key: &'a PrimaryKey,
    what: What<'a>,
}

/// What one write of a run's index update writes.
#[derive(Debug, Clone, Copy)]
enum What<'a> {
    /// The row's failure.
    Failure(&'a FailedRow),
    /// The row's rejection.
    Rejection(&'a RecordedRejection),
    /// A delete: the row was delivered.
    Delete,
}

/// Items in one `BatchWriteItem`, at most.
const MAX_BATCH_WRITE_ITEMS: usize = 25;

/// `BatchWriteItem` calls of one index update in flight at once.
pub const INDEX_WRITES_IN_FLIGHT: usize = 8;

/// DynamoDB's rules for one `BatchWriteItem` of this table: at most 25 requests, each
/// key at most once (a put and a delete of the same key count as twice).
fn check_batch_write(requests: &[WriteRequest]) -> Result<(), AwsError> {
    const OPERATION: &str = "DynamoDB.BatchWriteItem";
    if requests.len() > MAX_BATCH_WRITE_ITEMS {
        return Err(AwsError::response(
            OPERATION,
            format!(
                "not sent: {} requests, more than the {MAX_BATCH_WRITE_ITEMS} DynamoDB takes in one call",
                requests.len()
            ),
        ));
    }
    let mut keys = HashSet::with_capacity(requests.len());
    for request in requests {
        let item = request
            .put_request()
            .map(|put| put.item())
            .or_else(|| request.delete_request().map(|delete| delete.key()));
        let key = item
            .and_then(|item| item.get("key"))
            .and_then(|key| key.as_s().ok());
        if let Some(key) = key {
            if !keys.insert(key) {
                return Err(AwsError::response(
                    OPERATION,
                    format!("not sent: key {key} is twice in one request, which DynamoDB refuses"),
                ));
            }
        }
    }
    Ok(())
}

fn base_item(sync: &SyncId, key: &PrimaryKey, run: &RunId, now: &str) -> Item {
    let mut item = Item::new();
    item.insert("sync_id".into(), s(sync.as_str()));
    item.insert("key".into(), s(key.as_str()));
    item.insert("last_failed_at".into(), s(now));
    item.insert("last_run_id".into(), s(run.as_str()));
    item
}

/// The index entry of a keyed rejection: class `rejected`, the reason with the
/// object and line it came from, and a payload only for a row SQS refused.
fn rejection_item(
    sync: &SyncId,
    key: &PrimaryKey,
    run: &RunId,
    now: &str,
    rejection: &RecordedRejection,
) -> Item {
    let mut item = base_item(sync, key, run, now);
    item.insert("error_class".into(), s(ErrorClass::Rejected.as_str()));
    item.insert("error_code".into(), s(&rejection.rejection.code));
    item.insert(
        "error_message".into(),
        s(format!(
            "{} ({} line {})",
            rejection.rejection.reason, rejection.rejection.object, rejection.rejection.line
        )),
    );
    item.insert("attempts".into(), n(0));
    item.insert("attempts_last_run".into(), n(0));
    item.insert(
        "first_failed_at".into(),
        s(rejection
            .first_failed_at
            .clone()
            .unwrap_or_else(|| now.to_owned())),
    );
    if let Some(payload) = &rejection.payload {
        item.insert("payload".into(), s(payload.as_str()));
    }
    item
}

/// A put of an index entry, refused before it is sent when DynamoDB would refuse it.
fn put(item: Item) -> Result<WriteRequest, AwsError> {
    check_item_size("DynamoDB.BatchWriteItem", &item)?;
    let request = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| AwsError::response("DynamoDB.BatchWriteItem", e.to_string()))?;
    Ok(WriteRequest::builder().put_request(request).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> WriteRequest {
        let mut item = Item::new();
        item.insert("sync_id".into(), s("customers"));
        item.insert("key".into(), s(key));
        put(item).unwrap()
    }

    fn delete(key: &str) -> WriteRequest {
        let delete = DeleteRequest::builder()
            .key("sync_id", s("customers"))
            .key("key", s(key))
            .build()
            .unwrap();
        WriteRequest::builder().delete_request(delete).build()
    }

    /// Issue 12, defect 7: a request DynamoDB would refuse is refused before it is sent
    /// (moto lets a put and a delete of one key through, and applies the delete).
    #[test]
    fn a_batch_write_naming_a_key_twice_or_over_25_items_is_not_sent() {
        assert!(check_batch_write(&[entry("a"), delete("b")]).is_ok());
        let twice = check_batch_write(&[entry("a"), delete("a")]).unwrap_err();
        assert!(
            twice.message.contains("key a is twice"),
            "{}",
            twice.message
        );
        assert!(check_batch_write(&[entry("a"), entry("a")]).is_err());
        let many: Vec<_> = (0..26).map(|i| entry(&i.to_string())).collect();
        assert!(check_batch_write(&many[..25]).is_ok());
        assert!(check_batch_write(&many).is_err());
    }
}
