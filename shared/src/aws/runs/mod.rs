//! The runs table: each sync's state (the lock that prevents overlapping runs and the
//! source cursor), run records with their counts, and the batch ledger items.
//!
//! Key layout (one table, `pk`/`sk` strings):
//! - `sync#{sync}` / `state` — `open_run`, `open_since`, `cursor`
//! - `sync#{sync}` / `run#{run}` — the run record
//! - `run#{run}` / `batch#{id}` — one delivery invocation's [`BatchLedger`]
//!   (`batch#{id}#{part}` when it takes several items)
//! - `run#{run}` / `reject#{n}` — rejections recorded by sync-start, in items of at
//!   most 400 KB
//!
//! - [`lock`]: the sync's lock, opening and planning a run, abandoning it.
//! - [`ledger`]: delivery's ledger items and sync-start's rejections.
//! - [`close`]: the close claim and the closing transaction.
//!
//! [`BatchLedger`]: crate::domain::ledger::BatchLedger

use aws_sdk_dynamodb::{
    error::SdkError,
    operation::update_item::UpdateItemOutput,
    types::{TransactWriteItem, Update},
    Client,
};

use super::{
    item::{get_n, get_s, n, s, Item},
    AwsError,
};
use crate::{
    domain::{
        ids::{RunId, SyncId},
        ledger::RunCounts,
        run::{RunProgress, RunRecord, RunStatus},
        timestamp,
    },
    resources::LEDGER_TTL_SECS,
};

mod close;
mod ledger;
mod lock;

/// DynamoDB adapter for the runs table.
#[derive(Debug, Clone)]
pub struct RunStore {
    client: Client,
    table: String,
}

fn sync_pk(sync: &SyncId) -> String {
    format!("sync#{sync}")
}

fn state_key() -> &'static str {
    "state"
}

fn run_sk(run: &RunId) -> String {
    format!("run#{run}")
}

fn ledger_pk(run: &RunId) -> String {
    format!("run#{run}")
}

fn expires_at() -> aws_sdk_dynamodb::types::AttributeValue {
    n(timestamp::now().unix_timestamp() + LEDGER_TTL_SECS)
}

/// Whether the update of a run item that returned `output` (`ReturnValues=ALL_NEW`)
/// and added `added` to its settled hint made the run look settled.
fn became_settled(output: &UpdateItemOutput, added: u64) -> bool {
    output.attributes.as_ref().is_some_and(|run| {
        RunProgress {
            status: get_s(run, "status").and_then(|s| RunStatus::parse(&s)),
            enqueued: get_n(run, "enqueued"),
            settled_hint: get_n(run, "settled_hint"),
        }
        .became_settled(added)
    })
}

impl RunStore {
    /// Applies an update of a run record and one of its sync's state in one
    /// transaction. Returns `false` when a condition cancelled it (another invocation
    /// got there first).
    async fn update_run_and_state(&self, run: Update, state: Update) -> Result<bool, AwsError> {
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(run).build())
            .transact_items(TransactWriteItem::builder().update(state).build())
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

    /// Wraps a client and the table name.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
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
        started_at: get_s(item, "started_at").and_then(|t| timestamp::parse_rfc3339(&t)),
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
        closed_at: get_s(item, "closed_at").and_then(|t| timestamp::parse_rfc3339(&t)),
    }
}
