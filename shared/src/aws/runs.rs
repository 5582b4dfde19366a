//! The runs table: each sync's state (the lock that prevents overlapping runs and the
//! source cursor), run records with their counts, and the batch ledger items.
//!
//! Key layout (one table, `pk`/`sk` strings):
//! - `sync#{sync}` / `state` — `open_run`, `open_since`, `cursor`
//! - `sync#{sync}` / `run#{run}` — the run record
//! - `run#{run}` / `batch#{id}` — one delivery invocation's [`BatchLedger`]
//! - `run#{run}` / `reject#{n}` — rejections recorded by sync-start

use std::collections::HashMap;

use aws_sdk_dynamodb::{
    error::SdkError,
    types::{AttributeValue, ReturnValue, TransactWriteItem, Update},
    Client,
};

use super::AwsError;
use crate::{
    ids::{RunId, SyncId},
    ledger::{BatchLedger, RecordedRejection, RunCounts},
    resources::LEDGER_TTL_SECS,
    time_util,
};

type Item = HashMap<String, AttributeValue>;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// sync-start is reading the source and enqueueing.
    Planning,
    /// Rows are on the queue; the finalizer closes it when all are settled.
    Delivering,
    /// Closed with exact counts.
    Closed,
    /// Planning failed; the sync was released and the run's source will be read again.
    Abandoned,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Planning => "planning",
            Self::Delivering => "delivering",
            Self::Closed => "closed",
            Self::Abandoned => "abandoned",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "planning" => Some(Self::Planning),
            "delivering" => Some(Self::Delivering),
            "closed" => Some(Self::Closed),
            "abandoned" => Some(Self::Abandoned),
            _ => None,
        }
    }
}

/// A run record.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// Its sync.
    pub sync_id: SyncId,
    /// Where it is.
    pub status: RunStatus,
    /// When sync-start opened it.
    pub started_at: String,
    /// Rows enqueued.
    pub enqueued: u64,
    /// Rows rejected before the queue.
    pub rejected: u64,
    /// Rows carried over from the index.
    pub carried_over: u64,
    /// Index keys that wait for the source (no payload to retry with).
    pub waiting: u64,
    /// The source cursor to store when the run closes.
    pub cursor_after: Option<String>,
    /// Source objects read.
    pub source_objects: u64,
    /// Keys settled according to delivery invocations (an upper bound under duplicate
    /// deliveries; the finalizer's tally is exact).
    pub settled_hint: u64,
    /// Final counts, once closed.
    pub counts: Option<RunCounts>,
    /// Failed-row index size after close.
    pub failed_index_size: Option<u64>,
    /// When it closed.
    pub closed_at: Option<String>,
}

/// A sync's state item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The open run, if any.
    pub open_run: Option<RunId>,
    /// The last source object consumed by a closed run.
    pub cursor: Option<String>,
}

/// What [`RunStore::acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The sync is ours for this run; `cursor` is where its source starts.
    Acquired {
        /// The stored cursor.
        cursor: Option<String>,
    },
    /// Another run is still open.
    Busy {
        /// That run.
        open_run: RunId,
    },
}

/// DynamoDB adapter for the runs table.
#[derive(Debug, Clone)]
pub struct RunStore {
    client: Client,
    table: String,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &Item, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a run item, as an update left it, shows the run settled for the first time:
/// delivering, with the settled hint at or above the enqueued count, where the update
/// that added `added` to the hint (0: the update that set the count and the status) is
/// what crossed. Updates of one item are serialised, so exactly one update crosses: its
/// caller tells the finalizer, which closes the run now instead of at its next tick.
/// The hint can over-count (a retried invocation adds its batch twice), so the crossing
/// can come early; the finalizer then finds the ledger incomplete and its schedule
/// closes the run as before.
pub fn became_settled(run: &Item, added: u64) -> bool {
    let delivering = run
        .get("status")
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        == Some(RunStatus::Delivering.as_str());
    let hint = get_n(run, "settled_hint");
    let enqueued = get_n(run, "enqueued");
    delivering && hint >= enqueued && (added == 0 || hint - added < enqueued)
}

fn sync_pk(sync: &SyncId) -> String {
    format!("sync#{sync}")
}

fn run_sk(run: &RunId) -> String {
    format!("run#{run}")
}

fn ledger_pk(run: &RunId) -> String {
    format!("run#{run}")
}

fn expires_at() -> AttributeValue {
    n(time_util::now().unix_timestamp() + LEDGER_TTL_SECS)
}

impl RunStore {
    /// Wraps a client and the table name.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Takes the sync's lock for `run`, unless another run holds it. A retried
    /// invocation of the same run gets it again (resuming), so a crashed sync-start
    /// never leaves a sync locked.
    pub async fn acquire(&self, sync: &SyncId, run: &RunId) -> Result<Acquired, AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s("state"))
            .update_expression("SET open_run = :run, open_since = :now")
            .condition_expression("attribute_not_exists(open_run) OR open_run = :run")
            .expression_attribute_values(":run", s(run.as_str()))
            .expression_attribute_values(":now", s(time_util::rfc3339(time_util::now())))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Acquired::Acquired {
                cursor: output.attributes.as_ref().and_then(|a| get_s(a, "cursor")),
            }),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                let state = self.state(sync).await?;
                match state.open_run {
                    Some(open_run) => Ok(Acquired::Busy { open_run }),
                    None => Err(AwsError::response(
                        "DynamoDB.UpdateItem",
                        "lock condition failed but no run is open; retry",
                    )),
                }
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Reads a sync's state (strongly consistent).
    pub async fn state(&self, sync: &SyncId) -> Result<SyncState, AwsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s("state"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.GetItem", e))?;
        let Some(item) = output.item else {
            return Ok(SyncState::default());
        };
        Ok(SyncState {
            open_run: get_s(&item, "open_run").and_then(|r| RunId::parse(r).ok()),
            cursor: get_s(&item, "cursor"),
        })
    }

    /// Writes the run record in `planning` state, unless it already exists (a resumed
    /// run keeps its record; an abandoned one is planned again).
    pub async fn open_run(&self, sync: &SyncId, run: &RunId) -> Result<RunRecord, AwsError> {
        let now = time_util::rfc3339(time_util::now());
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(sync_pk(sync)))
            .item("sk", s(run_sk(run)))
            .item("run_id", s(run.as_str()))
            .item("sync_id", s(sync.as_str()))
            .item("status", s(RunStatus::Planning.as_str()))
            .item("started_at", s(&now))
            .condition_expression("attribute_not_exists(pk) OR #status = :abandoned")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":abandoned", s(RunStatus::Abandoned.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() => {}
            Err(err) => return Err(AwsError::sdk("DynamoDB.PutItem", err)),
        }
        self.run(sync, run)
            .await?
            .ok_or_else(|| AwsError::response("DynamoDB.GetItem", "run record vanished"))
    }

    /// Marks a run whose planning failed as abandoned and releases the sync. Its cursor
    /// is not advanced and the index is untouched, so the next run reads the same
    /// source and carries the same failed keys: nothing is lost. A retried invocation of
    /// the same event plans the run again.
    pub async fn abandon(&self, sync: &SyncId, run: &RunId, reason: &str) -> Result<(), AwsError> {
        let run_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .update_expression(
                "SET #status = :abandoned, abandon_reason = :reason, closed_at = :now",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":abandoned", s(RunStatus::Abandoned.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", s(time_util::rfc3339(time_util::now())))
            .build()
            .map_err(|e| AwsError::response("DynamoDB.TransactWriteItems", e.to_string()))?;
        let state_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s("state"))
            .update_expression("REMOVE open_run, open_since")
            .condition_expression("open_run = :run")
            .expression_attribute_values(":run", s(run.as_str()))
            .build()
            .map_err(|e| AwsError::response("DynamoDB.TransactWriteItems", e.to_string()))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(run_update).build())
            .transact_items(TransactWriteItem::builder().update(state_update).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(err)) if err.err().is_transaction_canceled_exception() => {
                Ok(())
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.TransactWriteItems", err)),
        }
    }

    /// Reads a run record (strongly consistent).
    pub async fn run(&self, sync: &SyncId, run: &RunId) -> Result<Option<RunRecord>, AwsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.GetItem", e))?;
        Ok(output.item.map(|item| parse_run(&item, sync, run)))
    }

    /// Records the plan and moves the run to `delivering`. Returns whether every row
    /// already looks settled (see [`became_settled`]), as when delivery finished the
    /// rows while they were still being planned, or nothing was enqueued.
    #[allow(clippy::too_many_arguments)]
    pub async fn mark_planned(
        &self,
        sync: &SyncId,
        run: &RunId,
        enqueued: u64,
        rejected: u64,
        carried_over: u64,
        waiting: u64,
        source_objects: u64,
        cursor_after: Option<&str>,
    ) -> Result<bool, AwsError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .condition_expression("#status = :planning")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":planning", s(RunStatus::Planning.as_str()))
            .expression_attribute_values(":delivering", s(RunStatus::Delivering.as_str()))
            .expression_attribute_values(":enqueued", n(enqueued))
            .expression_attribute_values(":rejected", n(rejected))
            .expression_attribute_values(":carried", n(carried_over))
            .expression_attribute_values(":waiting", n(waiting))
            .expression_attribute_values(":objects", n(source_objects));
        let mut expression = "SET #status = :delivering, enqueued = :enqueued, rejected = :rejected, carried_over = :carried, waiting = :waiting, source_objects = :objects".to_owned();
        if let Some(cursor) = cursor_after {
            expression.push_str(", cursor_after = :cursor");
            update = update.expression_attribute_values(":cursor", s(cursor));
        }
        let output = update
            .update_expression(expression)
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.UpdateItem", e))?;
        Ok(output
            .attributes
            .as_ref()
            .is_some_and(|run| became_settled(run, 0)))
    }

    /// Writes one delivery invocation's ledger item and bumps the run's settled hint.
    /// Returns whether this write made the run look settled (see [`became_settled`]).
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
        Ok(output
            .attributes
            .as_ref()
            .is_some_and(|run| became_settled(run, ledger.settled() as u64)))
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
        let stale_before = now.unix_timestamp() - stale_after.as_secs() as i64;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .update_expression("SET #claim = :me, #claimed_at = :now")
            .condition_expression(
                "#status = :delivering AND (attribute_not_exists(#claim) OR #claim = :me OR #claimed_at < :stale)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#claim", "close_claim")
            .expression_attribute_names("#claimed_at", "close_claimed_at")
            .expression_attribute_values(":delivering", s(RunStatus::Delivering.as_str()))
            .expression_attribute_values(":me", s(claimant))
            .expression_attribute_values(":now", n(now.unix_timestamp()))
            .expression_attribute_values(":stale", n(stale_before))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(false)
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Closes a run and releases the sync in one transaction: the run gets its counts,
    /// the sync its new cursor and no open run. Returns `false` when another finalizer
    /// closed it first.
    pub async fn close(
        &self,
        record: &RunRecord,
        counts: &RunCounts,
        failed_index_size: u64,
        oldest_failure_at: Option<&str>,
    ) -> Result<bool, AwsError> {
        let now = time_util::rfc3339(time_util::now());
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
            .key("sk", s("state"))
            .condition_expression("open_run = :run")
            .expression_attribute_values(":run", s(record.run_id.as_str()));
        let state_expression = if let Some(cursor) = &record.cursor_after {
            // CURSOR is a DynamoDB reserved word.
            state_update = state_update
                .expression_attribute_values(":cursor", s(cursor))
                .expression_attribute_names("#cursor", "cursor");
            "SET #cursor = :cursor, last_run = :run REMOVE open_run, open_since"
        } else {
            "SET last_run = :run REMOVE open_run, open_since"
        };
        let state_update = state_update
            .update_expression(state_expression)
            .build()
            .map_err(|e| AwsError::response("DynamoDB.TransactWriteItems", e.to_string()))?;

        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(run_update).build())
            .transact_items(TransactWriteItem::builder().update(state_update).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(err)) if err.err().is_transaction_canceled_exception() => {
                Ok(false)
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.TransactWriteItems", err)),
        }
    }

    /// The most recent runs of a sync, newest first.
    pub async fn recent_runs(&self, sync: &SyncId, limit: i32) -> Result<Vec<RunRecord>, AwsError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :run)")
            .expression_attribute_values(":pk", s(sync_pk(sync)))
            .expression_attribute_values(":run", s("run#"))
            .scan_index_forward(false)
            .limit(limit)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
        Ok(output
            .items()
            .iter()
            .filter_map(|item| {
                let run = RunId::parse(get_s(item, "run_id")?).ok()?;
                Some(parse_run(item, sync, &run))
            })
            .collect())
    }
}

fn parse_run(item: &Item, sync: &SyncId, run: &RunId) -> RunRecord {
    let status = get_s(item, "status")
        .and_then(|s| RunStatus::parse(&s))
        .unwrap_or(RunStatus::Planning);
    let counts = (status == RunStatus::Closed).then(|| RunCounts {
        planned: get_n(item, "planned"),
        delivered: get_n(item, "delivered"),
        failed: get_n(item, "failed"),
        rejected: get_n(item, "rejected"),
        retried_in_run: get_n(item, "retried_in_run"),
        carried_over: get_n(item, "carried_over"),
        recovered: get_n(item, "recovered"),
    });
    RunRecord {
        run_id: run.clone(),
        sync_id: sync.clone(),
        status,
        started_at: get_s(item, "started_at").unwrap_or_default(),
        enqueued: get_n(item, "enqueued"),
        rejected: get_n(item, "rejected"),
        carried_over: get_n(item, "carried_over"),
        waiting: get_n(item, "waiting"),
        cursor_after: get_s(item, "cursor_after"),
        source_objects: get_n(item, "source_objects"),
        settled_hint: get_n(item, "settled_hint"),
        counts,
        failed_index_size: item
            .contains_key("failed_index_size")
            .then(|| get_n(item, "failed_index_size")),
        closed_at: get_s(item, "closed_at"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: RunStatus, enqueued: Option<u64>, hint: u64) -> Item {
        let mut item = Item::from([
            ("status".to_owned(), s(status.as_str())),
            ("settled_hint".to_owned(), n(hint)),
        ]);
        if let Some(enqueued) = enqueued {
            item.insert("enqueued".to_owned(), n(enqueued));
        }
        item
    }

    #[test]
    fn only_the_update_that_crosses_the_enqueued_count_reports_settled() {
        // Delivery's ADD: crosses from 90 to 100 of 100, and from 95 to 105.
        assert!(became_settled(
            &run(RunStatus::Delivering, Some(100), 100),
            10
        ));
        assert!(became_settled(
            &run(RunStatus::Delivering, Some(100), 105),
            10
        ));
        // Below the count, or already at it before this update.
        assert!(!became_settled(
            &run(RunStatus::Delivering, Some(100), 99),
            10
        ));
        assert!(!became_settled(
            &run(RunStatus::Delivering, Some(100), 120),
            10
        ));
        // While planning the count is not known yet: sync-start's update decides.
        assert!(!became_settled(&run(RunStatus::Planning, None, 100), 100));
        // sync-start's update (nothing added): settled when the hint is already there,
        // including a run that enqueued nothing.
        assert!(became_settled(
            &run(RunStatus::Delivering, Some(100), 100),
            0
        ));
        assert!(became_settled(&run(RunStatus::Delivering, Some(0), 0), 0));
        assert!(!became_settled(
            &run(RunStatus::Delivering, Some(100), 40),
            0
        ));
        // A closed run is never reported again.
        assert!(!became_settled(&run(RunStatus::Closed, Some(100), 110), 10));
    }
}
