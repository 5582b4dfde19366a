//! The runs table: each sync's state (the lock that prevents overlapping runs and the
//! source cursor), run records with their counts, and the batch ledger items.
//!
//! Key layout (one table, `pk`/`sk` strings):
//! - `sync#{sync}` / `state` — `open_run`, `open_since`, `watermark` (the source
//!   cursor, see [`crate::domain::cursor`]; `cursor`, a name, before watermarks),
//!   `last_run`
//! - `sync#{sync}` / `object#{hash}` — the record of one source object (read,
//!   pending or skipped)
//! - `run#{run}` / `source#{attempt}#{n}` — the objects a planning attempt tried
//! - `sync#{sync}` / `run#{run}` — the run record, with its planning attempt
//!   (`generation`)
//! - `run#{run}` / `batch#{id}` — one delivery invocation's [`BatchLedger`] (which
//!   names its attempt; `batch#{id}#{part}` when it takes several items)
//! - `run#{run}` / `reject#{n}` — keyed rejections written by sync-start's first
//!   planning attempt as it plans, chunk by chunk; `reject#{attempt}#{n}` by a later
//!   one (each with `generation`), in items of at most 400 KB
//! - `run#{run}` / `sends#{key}` — how often a key that failed at least once went to
//!   the destination in the run, whichever message sent it (see [`sends`])
//! - `run#{run}` / `sample#{attempt}#{n}` — the sample of the attempt's rejections
//!   (the first 100 of each code; the exact counts are the run record's
//!   `rejected_by_code`)
//! - `sync#{sync}` / `report#{run}` — a closed run's report not sent yet
//!
//! - [`lock`]: the sync's lock, opening and planning a run, abandoning it.
//! - [`ledger`]: delivery's ledger items and sync-start's rejections.
//! - [`objects`]: the source cursor's object records, a run's object outcomes, skips.
//! - [`close`]: the close claim and the closing transaction.
//! - [`reports`]: closed runs' reports waiting to be sent.
//! - [`sends`]: the run's count of sends per key (I4 across a row's messages).
//! - `replan`: the earlier planning attempts' ledger items, for a run planned again.
//!
//! [`BatchLedger`]: crate::domain::ledger::BatchLedger

use aws_sdk_dynamodb::{
    error::SdkError,
    operation::{transact_write_items::TransactWriteItemsError, update_item::UpdateItemOutput},
    types::{CancellationReason, TransactWriteItem, Update},
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
        run::{CloseProgress, RunProgress, RunRecord, RunStatus},
        timestamp,
    },
    resources::LEDGER_TTL_SECS,
};

mod close;
mod ledger;
mod lock;
mod objects;
mod replan;
pub mod reports;
pub mod sends;

pub use reports::{PendingReport, ReportPart};
pub use sends::SendCount;

pub use ledger::RejectionChunks;
pub use lock::PlanNotRecorded;
pub use objects::{SkipRefused, StoredObject};

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

/// The condition that a run record is at planning attempt `generation`, with the
/// attribute as `#generation` and the value as `:generation`. A record written before
/// attempts were numbered has no attribute: it is at attempt 0.
fn generation_is(generation: u32) -> &'static str {
    if generation == 0 {
        "(attribute_not_exists(#generation) OR #generation = :generation)"
    } else {
        "#generation = :generation"
    }
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

/// What a cancelled `TransactWriteItems` means, from its cancellation reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancelled {
    /// A condition failed: another invocation got there first.
    ByCondition,
    /// A conflict with another write, or throttling: the same transaction may succeed.
    Retry,
    /// Anything else (a validation error, no reasons given): an error.
    Failed,
}

/// Reads a cancellation: a failed condition on any item means another invocation got
/// there first; otherwise conflicts and throttling may pass on a retry, and anything
/// else (or no reason at all) is an error — never a silent "someone else did it".
fn cancelled(reasons: &[CancellationReason]) -> Cancelled {
    let mut verdict = Cancelled::Failed;
    for code in reasons.iter().filter_map(CancellationReason::code) {
        match code {
            "None" => {}
            "ConditionalCheckFailed" => return Cancelled::ByCondition,
            "TransactionConflict"
            | "ThrottlingError"
            | "ProvisionedThroughputExceeded"
            | "RequestLimitExceeded" => {
                if verdict == Cancelled::Failed {
                    verdict = Cancelled::Retry;
                }
            }
            _ => return Cancelled::Failed,
        }
    }
    verdict
}

/// Tries of a transaction cancelled by a conflict or throttling, with backoff from
/// 50 ms (≈ 0.75 s in all), before the error is returned.
const TRANSACTION_ATTEMPTS: u32 = 5;

/// A claim on one item of a sync's partition: whose it is and since when, taken when the
/// item satisfies `precondition` and is unclaimed, already this claimant's, or claimed
/// longer ago than the staleness bound (its claimant died).
struct Claim<'a> {
    /// The item's sort key.
    sk: String,
    /// What must hold besides the claim rule, e.g. the run still delivering.
    precondition: &'a str,
    /// The attribute naming the claimant.
    claim_attribute: &'a str,
    /// The attribute holding when it was claimed (Unix seconds).
    claimed_at_attribute: &'a str,
    /// Names the precondition uses.
    names: &'a [(&'a str, &'a str)],
    /// Values the precondition uses.
    values: Vec<(&'a str, aws_sdk_dynamodb::types::AttributeValue)>,
}

impl RunStore {
    /// Takes `claim` for `claimant`; returns whether it is this claimant's.
    async fn claim(
        &self,
        sync: &SyncId,
        claim: Claim<'_>,
        claimant: &str,
        now: time::OffsetDateTime,
        stale_after: std::time::Duration,
    ) -> Result<bool, AwsError> {
        let stale_before = now
            .unix_timestamp()
            .saturating_sub(i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX));
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(claim.sk))
            .update_expression("SET #claim = :me, #claimed_at = :now")
            .condition_expression(format!(
                "{} AND (attribute_not_exists(#claim) OR #claim = :me OR #claimed_at < :stale)",
                claim.precondition
            ))
            .expression_attribute_names("#claim", claim.claim_attribute)
            .expression_attribute_names("#claimed_at", claim.claimed_at_attribute)
            .expression_attribute_values(":me", s(claimant))
            .expression_attribute_values(":now", n(now.unix_timestamp()))
            .expression_attribute_values(":stale", n(stale_before));
        for (name, attribute) in claim.names {
            update = update.expression_attribute_names(*name, *attribute);
        }
        for (name, value) in claim.values {
            update = update.expression_attribute_values(name, value);
        }
        match update.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(false)
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Applies an update of a run record and one of its sync's state in one
    /// transaction. Returns `false` when a condition cancelled it (another invocation
    /// got there first). A transaction cancelled for a conflict with another write or
    /// for throttling is tried again, up to [`TRANSACTION_TRIES`] times, then is an
    /// error: it says nothing of the conditions.
    async fn update_run_and_state(&self, run: Update, state: Update) -> Result<bool, AwsError> {
        self.transact(vec![
            TransactWriteItem::builder().update(run).build(),
            TransactWriteItem::builder().update(state).build(),
        ])
        .await
    }

    /// Writes `items` in one transaction. Returns `false` when a condition cancelled it
    /// (another invocation got there first); a transaction cancelled by a conflict with
    /// another write or by throttling is tried again ([`TRANSACTION_ATTEMPTS`]), then
    /// returned as an error, so the caller runs again rather than believing it lost.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, AwsError> {
        const OPERATION: &str = "DynamoDB.TransactWriteItems";
        let mut delay = std::time::Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(true),
                Err(err) => err,
            };
            let verdict = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancel)) => {
                    Some(cancelled(cancel.cancellation_reasons()))
                }
                _ => None,
            };
            match verdict {
                Some(Cancelled::ByCondition) => return Ok(false),
                Some(Cancelled::Retry) if attempt < TRANSACTION_ATTEMPTS => {
                    tracing::info!(attempt, "transaction conflicted or throttled; trying again");
                }
                _ => return Err(AwsError::sdk(OPERATION, err)),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
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
        planning_since: get_s(item, "planning_since").and_then(|t| timestamp::parse_rfc3339(&t)),
        generation: get_n(item, "generation"),
        sending_attempt: item
            .contains_key("sending_attempt")
            .then(|| get_n(item, "sending_attempt")),
        deadline: get_s(item, "deadline").and_then(|t| timestamp::parse_rfc3339(&t)),
        enqueued: get_n(item, "enqueued"),
        rejected: get_n(item, "rejected"),
        rejected_by_code: item
            .get("rejected_by_code")
            .and_then(|v| v.as_m().ok())
            .map(|codes| {
                codes
                    .iter()
                    .filter_map(|(code, count)| {
                        Some((code.clone(), count.as_n().ok()?.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        carried_over: get_n(item, "carried_over"),
        waiting: get_n(item, "waiting"),
        cursor_after: get_s(item, "cursor_after"),
        watermark_after: item
            .contains_key("watermark_after")
            .then(|| get_n(item, "watermark_after")),
        pending_objects: get_n(item, "pending_objects"),
        source_objects: get_n(item, "source_objects"),
        settled_hint: get_n(item, "settled_hint"),
        counts,
        failed_index_size: item
            .contains_key("failed_index_size")
            .then(|| get_n(item, "failed_index_size")),
        closed_at: get_s(item, "closed_at").and_then(|t| timestamp::parse_rfc3339(&t)),
        close_progress: CloseProgress {
            index_through: get_s(item, "close_index_through"),
            rejection_chunks: get_n(item, "close_rejection_chunks"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(codes: &[&str]) -> Vec<CancellationReason> {
        codes
            .iter()
            .map(|code| CancellationReason::builder().code(*code).build())
            .collect()
    }

    /// Issue 12, defect 6: a transaction cancelled by a conflict with another write or
    /// by throttling was read as "another finalizer closed the run", so the run stayed
    /// open until a stale claim was taken over (and was reported twice). Only a failed
    /// condition means someone got there first; conflicts and throttling are retried.
    #[test]
    fn only_a_failed_condition_means_another_invocation_got_there_first() {
        assert_eq!(
            cancelled(&reasons(&["ConditionalCheckFailed", "None"])),
            Cancelled::ByCondition
        );
        assert_eq!(
            cancelled(&reasons(&["None", "ConditionalCheckFailed"])),
            Cancelled::ByCondition
        );
        assert_eq!(
            cancelled(&reasons(&["TransactionConflict", "None"])),
            Cancelled::Retry
        );
        assert_eq!(
            cancelled(&reasons(&["None", "ThrottlingError"])),
            Cancelled::Retry
        );
        assert_eq!(
            cancelled(&reasons(&["ProvisionedThroughputExceeded", "None"])),
            Cancelled::Retry
        );
        assert_eq!(
            cancelled(&reasons(&["ValidationError", "None"])),
            Cancelled::Failed
        );
        assert_eq!(cancelled(&[]), Cancelled::Failed);
    }
}
