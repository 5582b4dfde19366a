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
//! attempt. Every wait ends by the run's deadline (the run record's, read once per run
//! per invocation), and a row not delivered at the deadline fails — `rate_limited` when
//! it was waiting on a limit — so every run ends (I7).
//!
//! # A destination that is down
//!
//! The destination's circuit breaker (`resync_shared::aws::breaker`) is read once per
//! invocation: while it is open nothing is sent and every row waits as a rate-limited
//! `DESTINATION_PAUSED` deferral (no attempt spent); the invocation that takes the
//! probe sends one request; requests that fail as a whole are counted, and any other
//! answer resets the breaker.
//!
//! The whole decision (deliver, retry, defer, fail)
//! is `resync_shared::domain::outcome::decide`, with the numbers of
//! `resync_shared::domain::retry`; this crate carries it out.
//!
//! # Order before chunking
//!
//! Rows are ordered by [`Destination::order_key`] (stable; rows without a key keep
//! their order, last) before they are cut into requests, so e.g. Salesforce contacts of
//! one account share a call instead of contending for the account's lock.
//!
//! Outcomes are written as one ledger item per run touched (several when they do not
//! fit one DynamoDB item), *before* the function returns — so before Lambda deletes
//! any message (see `resync_shared::domain::ledger`).
//! Row-level errors never fail the batch; only a failure to record outcomes does, and
//! then every message comes back and is tried again.

use std::{sync::Arc, time::Duration};

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{Diagnostic, LambdaEvent};
use resync_shared::{
    aws::{
        breaker::{Breakers, Gate, RequestsOutcome},
        budget::SharedBudget,
        queue::WorkQueue,
        report::SettledNotice,
        runs::RunStore,
        AwsError,
    },
    config::DestinationConfig,
    crash_points::{CrashPoint, CrashPoints, InjectedCrash},
    destination::{Destination, DestinationError},
    domain::{
        ledger::FailedRow,
        message::{QueueMessage, RowMessage},
        outcome::{Decision, RowError},
        run::RunStatus,
        timestamp,
    },
    resources::Resources,
    secrets::SecretResolver,
    RunId, SyncId,
};

pub use resync_shared::domain::retry::MAX_RATE_LIMIT_DEFERRALS;

/// Destination requests in flight at once within one invocation: one, so the
/// destination's `concurrency` (invocations at once) is its requests in flight.
pub const REQUESTS_IN_FLIGHT: usize = 1;

/// Why an invocation failed as a whole (its messages all come back).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Outcomes could not be recorded.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The invocation died at a crash point (a test harness's; never in a deployment).
    #[error(transparent)]
    Crashed(#[from] InjectedCrash),
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
        let error_type = match &err {
            DeliveryError::Aws(_) => "LedgerWriteFailed",
            DeliveryError::Crashed(_) => "InjectedCrash",
        };
        Diagnostic {
            error_type: error_type.into(),
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
    /// The destination's circuit breaker (an item of the runs table).
    pub breakers: Breakers,
    /// Tells the finalizer when this invocation's rows made their run look settled.
    pub notice: SettledNotice,
    /// Where a test harness makes the invocation die ([`CrashPoints::none`] here).
    pub crash_points: CrashPoints,
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
            // The API budget is counted in the runs table: every invocation of the
            // destination, in whatever execution environment, reserves from one count.
            destination: destination_config
                .build(
                    secrets,
                    Some(Arc::new(SharedBudget::new(
                        aws_sdk_dynamodb::Client::new(sdk),
                        &resources.runs_table,
                        destination_config.id.as_str(),
                    ))),
                )
                .await?,
            queue: WorkQueue::resolve(
                aws_sdk_sqs::Client::new(sdk),
                &resources.delivery_queue(&destination_config.id),
            )
            .await?,
            runs: RunStore::new(aws_sdk_dynamodb::Client::new(sdk), &resources.runs_table),
            breakers: Breakers::new(aws_sdk_dynamodb::Client::new(sdk), &resources.runs_table),
            notice: SettledNotice::new(aws_sdk_eventbridge::Client::new(sdk), &resources.event_bus),
            crash_points: CrashPoints::none(),
            destination_config,
        })
    }
}

mod defer;
mod settle;

use defer::defer_rows;
use settle::{deliver_run, Retry, Sending, Settlement};

/// One received row: the message it came in, which attempt it is, and the row.
struct Received {
    message_id: String,
    receipt_handle: String,
    attempt: u32,
    /// Whether SQS delivered this message before (`ApproximateReceiveCount` > 1).
    received_before: bool,
    /// The segment the row came in (`None`: a message of its own). A segment is
    /// shared with other rows: it is never hidden for a backoff or listed in
    /// `batchItemFailures` (it is deleted once its rows are settled), so a row of it
    /// that cannot leave as a copy fails instead.
    segment: Option<u64>,
    message: RowMessage,
}

impl Received {
    /// Whether the row came in a segment.
    fn packed(&self) -> bool {
        self.segment.is_some()
    }

    /// Whether the row may live as another message too (this one was received before,
    /// or is a retry's copy, whose original may have survived): its sends are
    /// then counted before they go.
    fn may_have_a_twin(&self) -> bool {
        self.received_before || self.message.copied
    }
}

/// The Lambda handler.
pub async fn handler(
    deps: &Delivery,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, DeliveryError> {
    let mut failures: Vec<String> = Vec::new();
    // Groups by run and planning attempt in order of appearance (a batch nearly always
    // holds one: the identifiers are cloned once per group, not per row).
    let mut by_run: Vec<((SyncId, RunId, u32), Vec<Received>)> = Vec::new();
    for record in event.payload.records {
        let message_id = record.message_id.unwrap_or_default();
        let parsed = record
            .body
            .as_deref()
            .map(QueueMessage::from_body)
            .transpose();
        match (parsed, record.receipt_handle) {
            (Ok(Some(message)), Some(receipt_handle)) => {
                let receive_count = record
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(1);
                let segment = match &message {
                    QueueMessage::Segment(segment) => Some(segment.segment),
                    QueueMessage::Row(_) => None,
                };
                for message in message.into_rows() {
                    let received = Received {
                        message_id: message_id.clone(),
                        receipt_handle: receipt_handle.clone(),
                        attempt: receive_count.saturating_add(message.attempts_before),
                        received_before: receive_count > 1,
                        segment,
                        message,
                    };
                    let group = by_run
                        .iter()
                        .position(|((sync_id, run_id, generation), _)| {
                            *run_id == received.message.run_id
                                && *sync_id == received.message.sync_id
                                && *generation == received.message.generation
                        });
                    match group {
                        Some(group) => by_run[group].1.push(received),
                        None => by_run.push((
                            (
                                received.message.sync_id.clone(),
                                received.message.run_id.clone(),
                                received.message.generation,
                            ),
                            vec![received],
                        )),
                    }
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
    // The destination's breaker: read once per invocation. One that cannot be read
    // does not stop delivery (the destination's own answers still decide each row).
    let destination_id = &deps.destination_config.id;
    let gate = match deps.breakers.gate(destination_id, timestamp::now()).await {
        Ok(gate) => gate,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the destination's breaker; delivering as if closed");
            Gate::Closed { failures: 0 }
        }
    };
    let mut probe_left = matches!(gate, Gate::Probe { .. });
    let mut requests = RequestsOutcome::default();
    for ((sync_id, run_id, generation), mut rows) in by_run {
        // A copy that comes back after its run closed (a duplicate, or a crashed
        // invocation's message) is already settled: drop it rather than send it again.
        // So is a copy of an abandoned run: the next run plans the same rows again,
        // with their newest values, so sending this one would send them twice (I3)
        // and might overwrite a newer value. And so is a copy sent by a planning
        // attempt the run has since replaced: the current attempt sent its own copy of
        // every row of its plan, and only its rows count.
        let record = deps.runs.run(&sync_id, &run_id).await?;
        let dropped = match &record {
            Some(record) if matches!(record.status, RunStatus::Closed | RunStatus::Abandoned) => {
                Some(record.status.as_str())
            }
            Some(record) if record.generation != generation => Some("planned again"),
            _ => None,
        };
        if let Some(why) = dropped {
            tracing::info!(sync = %sync_id, run = %run_id, generation, run_state = why, rows = rows.len(), "copies of an ended or replanned run's rows dropped");
            continue;
        }
        // Every wait ends by the run's deadline, and what is not delivered at the
        // deadline fails (I7): read once per run per invocation.
        let until_deadline = record
            .as_ref()
            .and_then(|record| record.until_deadline(timestamp::now()));
        let sending = sending(deps, &gate, &mut probe_left);
        let Settlement {
            mut ledger,
            mut retries,
            deferrals,
            requests: sent,
        } = deliver_run(deps, &run_id, &mut rows, until_deadline, sending).await;
        requests.whole_failures += sent.whole_failures;
        requests.answered |= sent.answered;
        requests.last_error = sent.last_error.or(requests.last_error.take());
        deps.crash_points
            .reached(CrashPoint::DeliveryAfterDestinationCall)?;
        ledger.generation = generation;
        // Re-enqueue waiting rows (rate-limited, backing off) *before* the ledger is
        // written, so a row whose copy SQS refused is settled the ordinary way (this
        // receive counts, the original is hidden for the wait) in the same ledger
        // item — at the threshold that is a terminal failure (I4).
        let kept = defer_rows(&deps.queue, &rows, &deferrals).await;
        // The originals of the rows whose copies SQS took are deleted now rather than
        // left for Lambda to delete when the invocation returns: a lost response (a
        // timeout, a crash) would otherwise bring them back beside their copies, and
        // the row would live on as two messages counting attempts apart (I4).
        // A segment is deleted only after the ledger write (below): its other rows'
        // outcomes are in that item.
        let (copied_segments, copied): (Vec<&Received>, Vec<&Received>) = deferrals
            .iter()
            .enumerate()
            .filter(|(position, _)| !kept.contains(position))
            .map(|(_, deferral)| &rows[deferral.row])
            .partition(|row| row.packed());
        let copied: Vec<String> = copied
            .into_iter()
            .map(|row| row.receipt_handle.clone())
            .collect();
        let mut copied_segments: Vec<String> = copied_segments
            .into_iter()
            .map(|row| row.receipt_handle.clone())
            .collect();
        copied_segments.sort_unstable();
        copied_segments.dedup();
        if !copied.is_empty() || !copied_segments.is_empty() {
            deps.crash_points.reached(CrashPoint::DeliveryAfterCopies)?;
        }
        if !copied.is_empty() {
            match deps.queue.delete(&copied).await {
                Ok(0) => {}
                Ok(refused) => {
                    tracing::warn!(refused, "SQS kept the originals of some deferred rows; they are deleted when the invocation returns")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot delete the originals of deferred rows; they are deleted when the invocation returns")
                }
            }
        }
        for position in kept {
            let deferral = &deferrals[position];
            let row = &rows[deferral.row];
            match &deferral.if_refused {
                // A row of a segment cannot be hidden on its own: it fails, kept in the
                // failed-row index with its last error for the next run.
                Decision::RetryLater { error, .. } if row.packed() => {
                    tracing::warn!(key = %row.message.key, code = %error.code, "SQS refused the copy of a packed row to retry; it fails with its last error");
                    ledger.retrying.retain(|key| key != &row.message.key);
                    ledger.failed.push(failed_row(row, error.clone()));
                }
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
        deps.crash_points
            .reached(CrashPoint::DeliveryBeforeLedgerWrite)?;
        let crossed_settled = !ledger.is_empty()
            && deps
                .runs
                .record_batch(&sync_id, &run_id, &batch_id, &ledger)
                .await?;
        deps.crash_points
            .reached(CrashPoint::DeliveryAfterLedgerWrite)?;
        // A segment some of whose rows left as copies is deleted now rather than when
        // the invocation returns, for the same reason as the originals above; its
        // outcomes are recorded, so it is not needed again.
        if !copied_segments.is_empty() {
            if let Err(err) = deps.queue.delete(&copied_segments).await {
                tracing::warn!(error = %err, "cannot delete segments whose rows left as copies; they are deleted when the invocation returns");
            }
        }
        if crossed_settled {
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
    if let Err(err) = deps
        .breakers
        .record(
            destination_id,
            &gate,
            &requests,
            &deps.destination_config.retry,
            timestamp::now(),
        )
        .await
    {
        tracing::warn!(error = %err, "cannot record the requests' outcome in the destination's breaker");
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

/// What the breaker lets this run's rows send: everything while it is closed; nothing
/// while it is open (every row waits, rate-limited, until the pause ends — no attempt
/// spent); one request while this invocation holds the probe (its other rows wait for
/// the probe's answer).
fn sending(deps: &Delivery, gate: &Gate, probe_left: &mut bool) -> Sending {
    let destination = &deps.destination_config.id;
    let policy = &deps.destination_config.retry;
    let last = |state: &resync_shared::aws::breaker::BreakerState| {
        state
            .last_error
            .clone()
            .unwrap_or_else(|| "REQUEST_FAILED".into())
    };
    match gate {
        Gate::Closed { .. } => Sending::All,
        Gate::Paused { until, state } => {
            let wait = (*until - timestamp::now())
                .try_into()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1));
            Sending::Limited {
                requests: 0,
                held: RowError::rate_limited(
                    "DESTINATION_PAUSED",
                    format!(
                        "destination {destination} is paused: {} requests in a row failed as a whole (last: {}); the next probe is due at {}",
                        state.failures,
                        last(state),
                        timestamp::rfc3339(*until)
                    ),
                    Some(wait),
                ),
            }
        }
        Gate::Probe { state } => {
            let requests = usize::from(std::mem::take(probe_left));
            Sending::Limited {
                requests,
                held: RowError::rate_limited(
                    "DESTINATION_PAUSED",
                    format!(
                        "destination {destination} is paused: {} requests in a row failed as a whole (last: {}); a probe is under way",
                        state.failures,
                        last(state)
                    ),
                    Some(Duration::from_secs(policy.pause_secs)),
                ),
            }
        }
    }
}

fn failed_row(row: &Received, error: RowError) -> FailedRow {
    FailedRow {
        key: row.message.key.clone(),
        error,
        attempts: row.attempt,
        prior_attempts: row.message.prior_attempts,
        carried_over: row.message.carried_over,
        first_failed_at: row.message.first_failed_at.clone(),
        failed_at: Some(timestamp::rfc3339(timestamp::now())),
        payload: row.message.row.clone(),
    }
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
