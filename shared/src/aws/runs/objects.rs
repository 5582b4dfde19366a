//! The source cursor's object records (see [`crate::domain::cursor`]): what sync-start
//! reads to decide which objects a run reads, what a run records of the objects it
//! tried, how the finalizer turns that into the records when the run closes, and an
//! operator's skip.
//!
//! - `sync#{sync}` / `object#{hash}` — one object's record (`object`, `etag`,
//!   `last_modified` in Unix ms, `status`, `planned_through`, the reason of a pending
//!   one, who skipped it, when and why). The sort key is a SHA-256 of the object's key
//!   (an S3 key may be as long as a sort key may be).
//! - `run#{run}` / `source#{attempt}#{n}` — the objects a planning attempt tried and
//!   what it made of them, applied by the finalizer when the run closes: only a closed
//!   run's reads count as read.

use aws_sdk_dynamodb::error::SdkError;
use sha2::{Digest, Sha256};

use super::{sync_pk, RunStore};
use crate::{
    aws::{
        item::{get_n, get_s, n, s, Item},
        AwsError,
    },
    domain::{
        cursor::{ObjectOutcome, ObjectRecord, ObjectStatus},
        ids::{RunId, SyncId},
        timestamp,
    },
};

/// The attribute holding a chunk of object outcomes' JSON.
const OBJECTS: &str = "objects";

/// An object record's sort key.
fn object_sk(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    format!("object#{}", hex::encode(&digest[..16]))
}

/// An object record as stored, with what operators see of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredObject {
    /// The object's key.
    pub object: String,
    /// The version the record is about.
    pub etag: String,
    /// Its `LastModified` (Unix ms).
    pub last_modified_ms: i64,
    /// `read`, `pending` or `skipped`.
    pub status: String,
    /// Pending: the last line planned of this version.
    pub planned_through: u64,
    /// Pending: the reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Pending: why it could not be read whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The run that last recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Skipped: who skipped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_by: Option<String>,
    /// Skipped: when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_at: Option<String>,
    /// Skipped: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
}

impl StoredObject {
    /// The record the cursor decides by (`None` for an unreadable status).
    pub fn record(&self) -> Option<ObjectRecord> {
        Some(ObjectRecord {
            name: self.object.clone(),
            etag: self.etag.clone(),
            last_modified_ms: self.last_modified_ms,
            status: ObjectStatus::parse(&self.status)?,
            planned_through: self.planned_through,
        })
    }
}

/// Why an operator's skip was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum SkipRefused {
    /// The sync has no pending record of that object.
    #[error(
        "object {object} is not pending for sync {sync} (only a pending object can be skipped)"
    )]
    NotPending {
        /// The sync.
        sync: SyncId,
        /// The object.
        object: String,
    },
    /// The update failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl RunStore {
    /// Every object record of a sync (paged, strongly consistent).
    pub async fn objects(&self, sync: &SyncId) -> Result<Vec<StoredObject>, AwsError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(sync_pk(sync)))
            .expression_attribute_values(":prefix", s("object#"))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let Some(object) = get_s(&item, "object") else {
                continue;
            };
            objects.push(StoredObject {
                object,
                etag: get_s(&item, "etag").unwrap_or_default(),
                last_modified_ms: get_n(&item, "last_modified"),
                status: get_s(&item, "status").unwrap_or_default(),
                planned_through: get_n(&item, "planned_through"),
                code: get_s(&item, "code"),
                reason: get_s(&item, "reason"),
                run_id: get_s(&item, "run_id"),
                skipped_by: get_s(&item, "skipped_by"),
                skipped_at: get_s(&item, "skipped_at"),
                skip_reason: get_s(&item, "skip_reason"),
            });
        }
        Ok(objects)
    }

    /// Deletes the records of objects read whole whose `LastModified` is before
    /// `window_start` (Unix ms): they left the lookback window, and their objects are
    /// taken as read by their age alone. Pending and skipped records stay. Harmless to
    /// repeat or to lose (sync-start ignores such records anyway).
    pub async fn forget_objects_before(
        &self,
        sync: &SyncId,
        window_start: i64,
    ) -> Result<usize, AwsError> {
        let mut forgotten = 0;
        for object in self.objects(sync).await? {
            if object.status != ObjectStatus::Read.as_str()
                || object.last_modified_ms >= window_start
            {
                continue;
            }
            let result = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(sync_pk(sync)))
                .key("sk", s(object_sk(&object.object)))
                .condition_expression("#status = :read AND #etag = :etag")
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#etag", "etag")
                .expression_attribute_values(":read", s(ObjectStatus::Read.as_str()))
                .expression_attribute_values(":etag", s(&object.etag))
                .send()
                .await;
            match result {
                Ok(_) => {}
                // Changed since it was read (a newer version recorded): left alone.
                Err(SdkError::ServiceError(err))
                    if err.err().is_conditional_check_failed_exception() =>
                {
                    continue
                }
                Err(err) => return Err(AwsError::sdk("DynamoDB.DeleteItem", err)),
            }
            forgotten += 1;
        }
        Ok(forgotten)
    }

    /// Records what planning attempt `generation` made of the objects it tried, in as
    /// many items as their JSON needs; applied when the run closes.
    pub async fn record_object_outcomes(
        &self,
        run: &RunId,
        generation: u32,
        outcomes: &[ObjectOutcome],
    ) -> Result<(), AwsError> {
        let chunks = super::ledger::JsonChunks {
            run,
            generation,
            attribute: OBJECTS,
            what: "outcomes",
            widest_seq: 999_999,
        };
        let sk = |seq: usize| format!("source#{generation:06}#{seq:06}");
        self.put_json_chunks(&chunks, sk, 0, outcomes, |o| {
            format!("the outcome of {}", o.name)
        })
        .await?;
        Ok(())
    }

    /// The object outcomes of a run's planning attempt `generation`.
    pub async fn object_outcomes(
        &self,
        run: &RunId,
        generation: u32,
    ) -> Result<Vec<ObjectOutcome>, AwsError> {
        self.json_chunks(
            run,
            &format!("source#{generation:06}#"),
            OBJECTS,
            "outcomes",
        )
        .await
    }

    /// Turns a closing run's object outcomes into the sync's records: an object read
    /// whole is recorded read (whatever it was before); one that was not becomes (or
    /// stays) pending, unless an operator skipped that same version meanwhile.
    /// Idempotent: a finalizer that dies before the close writes the same again.
    pub async fn apply_object_outcomes(
        &self,
        sync: &SyncId,
        run: &RunId,
        outcomes: &[ObjectOutcome],
    ) -> Result<(), AwsError> {
        let now = timestamp::rfc3339(timestamp::now());
        for outcome in outcomes {
            if outcome.whole {
                let item = Item::from([
                    ("pk".to_owned(), s(sync_pk(sync))),
                    ("sk".to_owned(), s(object_sk(&outcome.name))),
                    ("object".to_owned(), s(&outcome.name)),
                    ("etag".to_owned(), s(&outcome.etag)),
                    ("last_modified".to_owned(), n(outcome.last_modified_ms)),
                    ("status".to_owned(), s(ObjectStatus::Read.as_str())),
                    ("run_id".to_owned(), s(run.as_str())),
                    ("updated_at".to_owned(), s(&now)),
                ]);
                self.put("DynamoDB.PutItem", item).await?;
                continue;
            }
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(sync_pk(sync)))
                .key("sk", s(object_sk(&outcome.name)))
                .update_expression(
                    "SET #object = :object, #etag = :etag, last_modified = :modified, #status = :pending, \
                     planned_through = :through, #code = :code, #reason = :reason, run_id = :run, updated_at = :now \
                     REMOVE skipped_by, skipped_at, skip_reason",
                )
                .condition_expression(
                    "attribute_not_exists(sk) OR #status <> :skipped OR #etag <> :etag",
                )
                .expression_attribute_names("#object", "object")
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#code", "code")
                .expression_attribute_names("#etag", "etag")
                .expression_attribute_names("#reason", "reason")
                .expression_attribute_values(":object", s(&outcome.name))
                .expression_attribute_values(":etag", s(&outcome.etag))
                .expression_attribute_values(":modified", n(outcome.last_modified_ms))
                .expression_attribute_values(":pending", s(ObjectStatus::Pending.as_str()))
                .expression_attribute_values(":skipped", s(ObjectStatus::Skipped.as_str()))
                .expression_attribute_values(":through", n(outcome.planned_through))
                .expression_attribute_values(
                    ":code",
                    s(outcome.code.as_deref().unwrap_or("unreadable_object")),
                )
                .expression_attribute_values(
                    ":reason",
                    s(outcome.reason.as_deref().unwrap_or("not read whole")),
                )
                .expression_attribute_values(":run", s(run.as_str()))
                .expression_attribute_values(":now", s(&now))
                .send()
                .await;
            match result {
                Ok(_) => {}
                // Skipped by an operator while the run was open: the skip stands.
                Err(SdkError::ServiceError(err))
                    if err.err().is_conditional_check_failed_exception() => {}
                Err(err) => return Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
            }
        }
        Ok(())
    }

    /// An operator's skip of a pending object: recorded with who, when and why, and
    /// from then on the object is not read (until another version of it is uploaded).
    pub async fn skip_object(
        &self,
        sync: &SyncId,
        object: &str,
        by: &str,
        reason: &str,
    ) -> Result<(), SkipRefused> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(object_sk(object)))
            .update_expression(
                "SET #status = :skipped, skipped_by = :by, skipped_at = :now, skip_reason = :reason",
            )
            .condition_expression("#status = :pending AND #object = :object")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#object", "object")
            .expression_attribute_values(":skipped", s(ObjectStatus::Skipped.as_str()))
            .expression_attribute_values(":pending", s(ObjectStatus::Pending.as_str()))
            .expression_attribute_values(":object", s(object))
            .expression_attribute_values(":by", s(by))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", s(timestamp::rfc3339(timestamp::now())))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Err(SkipRefused::NotPending {
                    sync: sync.clone(),
                    object: object.to_owned(),
                })
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err).into()),
        }
    }
}
