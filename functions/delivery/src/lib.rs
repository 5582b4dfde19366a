//! delivery: sends a destination's rows in destination-sized batches and settles each
//! row by what the destination said about it.
//!
//! Triggered by the destination's queue (SQS event source, `ReportBatchItemFailures`).
//! Per row: delivered → recorded; retryable below the destination's threshold → the
//! message is hidden for a full-jitter exponential backoff (`ChangeMessageVisibility`)
//! and reported in `batchItemFailures`; threshold reached or permanent → recorded as a
//! terminal failure with its last error. Attempts come from `ApproximateReceiveCount`.
//!
//! # Rate limits do not spend attempts
//!
//! A row refused by a rate limit (`ErrorClass::RateLimited`: a 429, Salesforce's
//! `REQUEST_LIMIT_EXCEEDED` or its daily API budget, HubSpot's ten-second window) did
//! nothing wrong, and the limit may take longer to reset than the whole backoff
//! schedule. Hiding the message with `ChangeMessageVisibility` would still count every
//! receive in `ApproximateReceiveCount`, so a long limit would push healthy rows over
//! the threshold. Instead such a row is **re-enqueued as a fresh copy** with
//! `DelaySeconds` (the limit's wait, or a backoff that grows with the number of
//! deferrals; at most SQS's 15 minutes) carrying `attempts_before` = the attempts that
//! counted so far, and the original is deleted (not listed in `batchItemFailures`).
//! The copy's receive count restarts, so the row's attempt stays
//! `attempts_before + ApproximateReceiveCount` and only non-rate-limited tries count (I4).
//! Safety: the copy is sent before the original is deleted, so a crash in between only
//! duplicates the row (the ledger settles by key, I1); copies are sent before the
//! invocation's ledger item is written, so a row whose copy SQS refused is settled the
//! ordinary way in that same item (this receive counts; at the threshold it fails).
//! Deferrals are bounded by [`MAX_RATE_LIMIT_DEFERRALS`]: each waits at least the
//! limit's own wait (Retry-After, the HubSpot window, the Salesforce budget recheck)
//! and otherwise a full-jitter backoff that grows with the deferral count up to the
//! policy's maximum; past the bound a rate limit counts as an ordinary retryable
//! attempt, so a run always ends. The whole decision (deliver, retry, defer, fail)
//! is `resync_shared::domain::outcome::decide`, with the numbers of
//! `resync_shared::domain::retry`; this crate carries it out.
//!
//! # Order before chunking
//!
//! Rows are ordered by [`Destination::order_key`] (stable; rows without a key keep
//! their order, last) before they are cut into requests, so e.g. Salesforce contacts of
//! one account share a call instead of contending for the account's lock.
//!
//! Outcomes are written as one ledger item per run touched, *before* the function
//! returns — so before Lambda deletes any message (see `resync_shared::domain::ledger`).
//! Row-level errors never fail the batch; only a failure to record outcomes does, and
//! then every message comes back and is tried again.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures::StreamExt;
use lambda_runtime::{Diagnostic, LambdaEvent};
use resync_shared::{
    aws::{queue::WorkQueue, report::SettledNotice, runs::RunStore, AwsError},
    config::DestinationConfig,
    destination::{Destination, DestinationError, OutboundRow},
    domain::{
        ledger::{BatchLedger, FailedRow},
        message::RowMessage,
        outcome::{decide, Attempt, Decision, RowError, RowResult},
        run::RunStatus,
    },
    resources::Resources,
    secrets::SecretResolver,
    PrimaryKey, RunId, SyncId,
};

pub use resync_shared::domain::retry::MAX_RATE_LIMIT_DEFERRALS;

/// Destination requests in flight at once within one invocation.
pub const REQUESTS_IN_FLIGHT: usize = 4;

/// Why an invocation failed as a whole (its messages all come back).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Outcomes could not be recorded.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// Why delivery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliverySetupError {
    /// The destination could not be built (a secret, a client).
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// The destination's queue could not be found.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl From<DeliveryError> for Diagnostic {
    fn from(err: DeliveryError) -> Diagnostic {
        Diagnostic {
            error_type: "LedgerWriteFailed".into(),
            error_message: err.to_string(),
        }
    }
}

/// delivery's dependencies: one destination and its queue.
pub struct Delivery {
    /// The destination's settings.
    pub destination_config: DestinationConfig,
    /// The destination's API.
    pub destination: Arc<dyn Destination>,
    /// Its delivery queue (for visibility changes).
    pub queue: WorkQueue,
    /// The runs table (ledger items).
    pub runs: RunStore,
    /// Tells the finalizer when this invocation's rows made their run look settled.
    pub notice: SettledNotice,
}

impl Delivery {
    /// Wires delivery for one destination of a stack: builds the destination (its
    /// secrets from Secrets Manager), finds its queue, and uses the stack's runs table
    /// and bus.
    pub async fn new(
        sdk: &SdkConfig,
        resources: &Resources,
        destination_config: DestinationConfig,
        secrets: &SecretResolver,
    ) -> Result<Self, DeliverySetupError> {
        Ok(Self {
            destination: destination_config.build(secrets).await?,
            queue: WorkQueue::resolve(
                aws_sdk_sqs::Client::new(sdk),
                &resources.delivery_queue(&destination_config.id),
            )
            .await?,
            runs: RunStore::new(aws_sdk_dynamodb::Client::new(sdk), &resources.runs_table),
            notice: SettledNotice::new(aws_sdk_eventbridge::Client::new(sdk), &resources.event_bus),
            destination_config,
        })
    }
}

struct Received {
    message_id: String,
    receipt_handle: String,
    attempt: u32,
    message: RowMessage,
}

/// The Lambda handler.
pub async fn handler(
    deps: &Delivery,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, DeliveryError> {
    let mut failures: Vec<String> = Vec::new();
    // Groups by run in order of appearance (a batch nearly always holds one run: the
    // identifiers are cloned once per group, not per row).
    let mut by_run: Vec<((SyncId, RunId), Vec<Received>)> = Vec::new();
    for record in event.payload.records {
        let message_id = record.message_id.unwrap_or_default();
        let parsed = record
            .body
            .as_deref()
            .map(RowMessage::from_body)
            .transpose();
        match (parsed, record.receipt_handle) {
            (Ok(Some(message)), Some(receipt_handle)) => {
                let attempt = record
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(1)
                    .saturating_add(message.attempts_before);
                let received = Received {
                    message_id,
                    receipt_handle,
                    attempt,
                    message,
                };
                let group = by_run.iter().position(|((sync_id, run_id), _)| {
                    *run_id == received.message.run_id && *sync_id == received.message.sync_id
                });
                match group {
                    Some(group) => by_run[group].1.push(received),
                    None => by_run.push((
                        (
                            received.message.sync_id.clone(),
                            received.message.run_id.clone(),
                        ),
                        vec![received],
                    )),
                }
            }
            _ => {
                // Not a resync row: leave it to the redrive policy (dead-letter queue).
                tracing::error!(message_id = %message_id, "unreadable message; leaving it for the dead-letter queue");
                failures.push(message_id);
            }
        }
    }

    let batch_id = if event.context.request_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        event.context.request_id.clone()
    };
    let mut visibility: Vec<(String, Duration)> = Vec::new();
    for ((sync_id, run_id), rows) in by_run {
        // A copy that comes back after its run closed (a duplicate, or a crashed
        // invocation's message) is already settled: drop it rather than send it again.
        let open = deps
            .runs
            .run(&sync_id, &run_id)
            .await?
            .is_none_or(|record| record.status != RunStatus::Closed);
        if !open {
            tracing::info!(sync = %sync_id, run = %run_id, rows = rows.len(), "late copies of a closed run's rows dropped");
            continue;
        }
        let Settlement {
            mut ledger,
            mut retries,
            deferrals,
        } = deliver_run(deps, &rows).await;
        // Re-enqueue rate-limited rows *before* the ledger is written, so a row whose
        // copy SQS refused is settled the ordinary way (this receive counts) in the
        // same ledger item — at the threshold that is a terminal failure (I4).
        for position in defer_rows(&deps.queue, &rows, &deferrals).await {
            let deferral = &deferrals[position];
            let row = &rows[deferral.row];
            match &deferral.if_refused {
                Decision::RetryLater { visibility, .. } => retries.push(Retry {
                    row: deferral.row,
                    visibility: *visibility,
                }),
                Decision::TerminalFailure(error) => {
                    ledger.retrying.retain(|key| key != &row.message.key);
                    ledger.failed.push(failed_row(row, error.clone()));
                }
                Decision::Delivered | Decision::Defer { .. } => {}
            }
        }
        if !ledger.is_empty()
            && deps
                .runs
                .record_batch(&sync_id, &run_id, &batch_id, &ledger)
                .await?
        {
            deps.notice.send(&sync_id, &run_id).await;
        }
        tracing::info!(
            sync = %sync_id,
            run = %run_id,
            delivered = ledger.delivered.len() + ledger.recovered.len(),
            retrying = ledger.retrying.len(),
            failed = ledger.failed.len(),
            "batch settled"
        );
        for retry in retries {
            failures.push(rows[retry.row].message_id.clone());
            visibility.push((rows[retry.row].receipt_handle.clone(), retry.visibility));
        }
    }
    if !visibility.is_empty() {
        // A refused change only means the row comes back at the queue's own timeout.
        deps.queue.change_visibility(&visibility).await?;
    }
    let mut response = SqsBatchResponse::default();
    for id in failures {
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    Ok(response)
}

/// Re-enqueues rate-limited rows as delayed copies (one per key) that carry the attempts
/// spent so far; their originals are then deleted by the caller's partial batch
/// response. Returns the positions in `deferrals` whose rows must be kept instead
/// because SQS refused their copy.
async fn defer_rows(queue: &WorkQueue, rows: &[Received], deferrals: &[Deferral]) -> Vec<usize> {
    struct DelayedCopy {
        position: usize,
        body: String,
        delay: Duration,
    }
    let mut copies: Vec<DelayedCopy> = Vec::new();
    let mut copied: HashSet<&PrimaryKey> = HashSet::new();
    for (position, deferral) in deferrals.iter().enumerate() {
        let row = &rows[deferral.row];
        if !copied.insert(&row.message.key) {
            // A copy of the key is already going back to the queue; if SQS refuses it,
            // that message is kept, so this duplicate can go.
            continue;
        }
        let mut copy = row.message.clone();
        copy.attempts_before = row.attempt.saturating_sub(1);
        copy.rate_limit_deferrals += 1;
        copies.push(DelayedCopy {
            position,
            body: copy.to_body(),
            delay: deferral.delay,
        });
    }
    let mut kept = Vec::new();
    for chunk in copies.chunks(10) {
        let bodies: Vec<String> = chunk.iter().map(|c| c.body.clone()).collect();
        let delays: Vec<Duration> = chunk.iter().map(|c| c.delay).collect();
        match queue.send_batch_delayed(&bodies, &delays).await {
            Ok(unsent) => kept.extend(unsent.into_iter().map(|u| chunk[u.index].position)),
            Err(err) => {
                tracing::warn!(error = %err, "cannot re-enqueue rate-limited rows; keeping the originals");
                kept.extend(chunk.iter().map(|c| c.position));
            }
        }
    }
    kept
}

fn failed_row(row: &Received, error: RowError) -> FailedRow {
    FailedRow {
        key: row.message.key.clone(),
        error,
        attempts: row.attempt,
        prior_attempts: row.message.prior_attempts,
        carried_over: row.message.carried_over,
        first_failed_at: row.message.first_failed_at.clone(),
        payload: row.message.row.clone(),
    }
}

/// Sends one destination request; a wrong result count retries the request's rows.
async fn send_chunk(
    destination: &dyn Destination,
    offset: usize,
    chunk: &[&Received],
) -> (usize, Vec<RowResult>) {
    let outbound: Vec<OutboundRow<'_>> = chunk
        .iter()
        .map(|r| OutboundRow {
            key: &r.message.key,
            idempotency_key: r.message.idempotency_key(),
            fields: &r.message.row,
        })
        .collect();
    let mut results = destination.send(&outbound).await;
    if results.len() != chunk.len() {
        tracing::error!(
            expected = chunk.len(),
            got = results.len(),
            "the destination answered a wrong number of results; retrying the request's rows"
        );
        results = vec![
            Err(RowError::retryable(
                "RESULT_COUNT_MISMATCH",
                "the destination's answer did not match the request",
            ));
            chunk.len()
        ];
    }
    (offset, results)
}

/// A row to hide for a backoff and report in `batchItemFailures`.
struct Retry {
    /// Index into the run's rows.
    row: usize,
    /// Its new visibility timeout.
    visibility: Duration,
}

/// A rate-limited row to re-enqueue as a delayed copy.
struct Deferral {
    /// Index into the run's rows.
    row: usize,
    /// The copy's delay.
    delay: Duration,
    /// What to do if SQS refuses the copy (`RetryLater` or `TerminalFailure`).
    if_refused: Decision,
}

/// What one run's rows came to in this invocation.
struct Settlement {
    /// The ledger item to write.
    ledger: BatchLedger,
    /// Rows to retry with a visibility backoff.
    retries: Vec<Retry>,
    /// Rate-limited rows to re-enqueue with a delay.
    deferrals: Vec<Deferral>,
}

/// Sends one run's rows and decides each by the destination's answer.
async fn deliver_run(deps: &Delivery, rows: &[Received]) -> Settlement {
    // Copies of one key (at-least-once delivery) are sent once and share the answer:
    // a destination request never upserts the same record twice.
    let mut first_copy: HashMap<&PrimaryKey, usize> = HashMap::with_capacity(rows.len());
    let mut unique: Vec<&Received> = Vec::with_capacity(rows.len());
    let mut answer_of: Vec<usize> = Vec::with_capacity(rows.len());
    for row in rows {
        let slot = *first_copy.entry(&row.message.key).or_insert_with(|| {
            unique.push(row);
            unique.len() - 1
        });
        answer_of.push(slot);
    }
    // Order by the destination's key (stable), remembering where each row came from.
    let order = send_order(deps.destination.as_ref(), &unique);
    let sorted: Vec<&Received> = order.iter().map(|&i| unique[i]).collect();
    let batch_size = deps.destination.batch_size().max(1);
    let chunks: Vec<(usize, &[&Received])> = sorted
        .chunks(batch_size)
        .enumerate()
        .map(|(i, chunk)| (i * batch_size, chunk))
        .collect();
    let requests: Vec<_> = chunks
        .into_iter()
        .map(|(offset, chunk)| send_chunk(deps.destination.as_ref(), offset, chunk))
        .collect();
    let answers: Vec<(usize, Vec<RowResult>)> = futures::stream::iter(requests)
        .buffer_unordered(REQUESTS_IN_FLIGHT)
        .collect()
        .await;

    let policy = &deps.destination_config.retry;
    let mut rng = rand::thread_rng();
    let mut settlement = Settlement {
        ledger: BatchLedger::default(),
        retries: Vec::new(),
        deferrals: Vec::new(),
    };
    let mut unique_results: Vec<Option<RowResult>> = vec![None; unique.len()];
    for (offset, results) in answers {
        for (i, result) in results.into_iter().enumerate() {
            unique_results[order[offset + i]] = Some(result);
        }
    }
    let ledger = &mut settlement.ledger;
    for (index, row) in rows.iter().enumerate() {
        let result = unique_results[answer_of[index]]
            .clone()
            .expect("every unique row was sent");
        let attempt = Attempt {
            number: row.attempt,
            rate_limit_deferrals: row.message.rate_limit_deferrals,
        };
        match decide(result, attempt, policy, &mut rng) {
            Decision::Delivered if row.message.carried_over => {
                ledger.recovered.push(row.message.key.clone())
            }
            Decision::Delivered => ledger.delivered.push(row.message.key.clone()),
            Decision::RetryLater { visibility, error } => {
                tracing::debug!(key = %row.message.key, code = %error.code, attempt = row.attempt, "retrying later");
                ledger.retrying.push(row.message.key.clone());
                settlement.retries.push(Retry {
                    row: index,
                    visibility,
                });
            }
            Decision::Defer {
                delay,
                error,
                if_refused,
            } => {
                tracing::debug!(key = %row.message.key, code = %error.code, deferrals = row.message.rate_limit_deferrals, "rate limited; deferring without spending an attempt");
                ledger.retrying.push(row.message.key.clone());
                settlement.deferrals.push(Deferral {
                    row: index,
                    delay,
                    if_refused: *if_refused,
                });
            }
            Decision::TerminalFailure(error) => {
                tracing::warn!(key = %row.message.key, class = error.class.as_str(), code = %error.code, attempt = row.attempt, "row failed");
                ledger.failed.push(failed_row(row, error));
            }
        }
    }
    settlement
}

/// Indexes of `unique` in sending order: by the destination's order key (stable), rows
/// without a key last in their original order.
fn send_order(destination: &dyn Destination, unique: &[&Received]) -> Vec<usize> {
    let keys: Vec<Option<String>> = unique
        .iter()
        .map(|r| {
            destination.order_key(&OutboundRow {
                key: &r.message.key,
                idempotency_key: String::new(),
                fields: &r.message.row,
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..unique.len()).collect();
    if keys.iter().any(Option::is_some) {
        order.sort_by(|&a, &b| match (&keys[a], &keys[b]) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = include_str!("../../../tests/fixtures/sqs-delivery-batch.json");

    #[test]
    fn the_sqs_event_fixture_carries_rows_and_receive_counts() {
        let event: SqsEvent = serde_json::from_str(BATCH).unwrap();
        assert_eq!(event.records.len(), 2);
        let first = &event.records[0];
        assert_eq!(first.attributes["ApproximateReceiveCount"], "3");
        let message = RowMessage::from_body(first.body.as_deref().unwrap()).unwrap();
        assert_eq!(message.key.as_str(), "cust-000001");
        assert!(!message.carried_over);
        let second = RowMessage::from_body(event.records[1].body.as_deref().unwrap()).unwrap();
        assert!(second.carried_over);
        assert_eq!(second.prior_attempts, 5);
    }

    struct ByParent;

    impl Destination for ByParent {
        fn batch_size(&self) -> usize {
            2
        }

        fn send<'a>(
            &'a self,
            rows: &'a [OutboundRow<'a>],
        ) -> futures::future::BoxFuture<'a, Vec<RowResult>> {
            Box::pin(async move { vec![Ok(()); rows.len()] })
        }

        fn order_key(&self, row: &OutboundRow<'_>) -> Option<String> {
            row.fields.field("parent")?.as_str().map(str::to_owned)
        }
    }

    fn received(key: &str, parent: Option<&str>) -> Received {
        let mut row = serde_json::Map::new();
        if let Some(parent) = parent {
            row.insert("parent".into(), parent.into());
        }
        Received {
            message_id: key.into(),
            receipt_handle: key.into(),
            attempt: 1,
            message: RowMessage {
                run_id: RunId::parse("r").unwrap(),
                sync_id: SyncId::parse("s").unwrap(),
                key: PrimaryKey::parse(key).unwrap(),
                row: row.into(),
                carried_over: false,
                first_failed_at: None,
                prior_attempts: 0,
                attempts_before: 0,
                rate_limit_deferrals: 0,
            },
        }
    }

    #[test]
    fn rows_are_ordered_by_parent_stably_with_unkeyed_rows_last() {
        let rows = [
            received("a", Some("p2")),
            received("b", None),
            received("c", Some("p1")),
            received("d", Some("p2")),
            received("e", None),
            received("f", Some("p1")),
        ];
        let unique: Vec<&Received> = rows.iter().collect();
        let order = send_order(&ByParent, &unique);
        let keys: Vec<&str> = order
            .iter()
            .map(|&i| unique[i].message.key.as_str())
            .collect();
        assert_eq!(keys, ["c", "f", "a", "d", "b", "e"]);
    }

    #[test]
    fn partial_batch_responses_use_lambdas_field_names() {
        let mut response = SqsBatchResponse::default();
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = "059f36b4-87a3-44ab-83d2-661975830a7d".into();
        response.batch_item_failures.push(failure);
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "059f36b4-87a3-44ab-83d2-661975830a7d"}]})
        );
    }
}
