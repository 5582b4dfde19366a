//! The failed-row index: one item per failing key of a sync, with its latest payload
//! and last error, kept until the key is delivered.

use std::{collections::HashMap, time::Duration};

use aws_sdk_dynamodb::{
    types::{DeleteRequest, PutRequest, WriteRequest},
    Client,
};
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
    /// Attempts across runs.
    pub attempts: u32,
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
                first_failed_at: get_s(&item, "first_failed_at").unwrap_or_default(),
                last_failed_at: get_s(&item, "last_failed_at").unwrap_or_default(),
                last_run_id: get_s(&item, "last_run_id").unwrap_or_default(),
                payload,
            });
        }
        Ok(entries)
    }

    /// The sync's index as planning needs it: only key, payload text, first failure
    /// and attempts are read (a projection), and payloads stay unparsed.
    pub async fn load_for_planning(
        &self,
        sync: &SyncId,
    ) -> Result<HashMap<PrimaryKey, CarriedEntry>, AwsError> {
        let mut index = HashMap::new();
        let mut pages = self
            .query_sync(sync)
            .projection_expression("#key, payload, first_failed_at, attempts")
            .expression_attribute_names("#key", "key")
            .consistent_read(true)
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
                    payload: get_s(&item, "payload").map(String::into_boxed_str),
                    first_failed_at: get_s(&item, "first_failed_at").unwrap_or_default(),
                    attempts: get_n::<u32>(&item, "attempts"),
                },
            );
        }
        Ok(index)
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
    /// deletes its recovered keys. Idempotent, so a finalizer that crashes midway can
    /// simply run again.
    pub async fn apply_run(
        &self,
        sync: &SyncId,
        run: &RunId,
        failures: &[&FailedRow],
        rejections: &[&RecordedRejection],
        recovered: &[&PrimaryKey],
    ) -> Result<(), AwsError> {
        let now = timestamp::rfc3339(timestamp::now());
        let mut requests = Vec::with_capacity(failures.len() + rejections.len() + recovered.len());
        for row in failures {
            let mut item = base_item(sync, &row.key, run, &now);
            item.insert("error_class".into(), s(row.error.class.as_str()));
            item.insert("error_code".into(), s(&row.error.code));
            item.insert("error_message".into(), s(&row.error.message));
            item.insert("attempts".into(), n(row.prior_attempts + row.attempts));
            item.insert(
                "first_failed_at".into(),
                s(row.first_failed_at.clone().unwrap_or_else(|| now.clone())),
            );
            item.insert("payload".into(), s(row.payload.as_str()));
            requests.push(put(item)?);
        }
        let mut rejected_keys = std::collections::HashSet::new();
        for rejection in rejections {
            let Some(key) = &rejection.rejection.key else {
                continue;
            };
            // Every copy of a non-unique key is rejected; the index keeps one entry.
            if !rejected_keys.insert(key) {
                continue;
            }
            let mut item = base_item(sync, key, run, &now);
            item.insert("error_class".into(), s(ErrorClass::Rejected.as_str()));
            item.insert("error_code".into(), s(&rejection.rejection.code));
            item.insert(
                "error_message".into(),
                s(format!(
                    "{} ({} line {})",
                    rejection.rejection.reason,
                    rejection.rejection.object,
                    rejection.rejection.line
                )),
            );
            item.insert("attempts".into(), n(0));
            item.insert(
                "first_failed_at".into(),
                s(rejection
                    .first_failed_at
                    .clone()
                    .unwrap_or_else(|| now.clone())),
            );
            requests.push(put(item)?);
        }
        for key in recovered {
            requests.push(
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .key("sync_id", s(sync.as_str()))
                            .key("key", s(key.as_str()))
                            .build()
                            .expect("key is set"),
                    )
                    .build(),
            );
        }
        // One request per key: BatchWriteItem refuses two operations on the same item.
        for chunk in requests.chunks(25) {
            self.batch_write(chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn batch_write(&self, mut pending: Vec<WriteRequest>) -> Result<(), AwsError> {
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

fn base_item(sync: &SyncId, key: &PrimaryKey, run: &RunId, now: &str) -> Item {
    let mut item = Item::new();
    item.insert("sync_id".into(), s(sync.as_str()));
    item.insert("key".into(), s(key.as_str()));
    item.insert("last_failed_at".into(), s(now));
    item.insert("last_run_id".into(), s(run.as_str()));
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
