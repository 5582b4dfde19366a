//! Settling one run's rows in one invocation: each key sent once per
//! destination-sized request (ordered by the destination's key), and every row decided
//! by `resync_shared::domain::outcome::decide`.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use resync_shared::{
    aws::breaker::RequestsOutcome,
    destination::{Destination, OutboundRow},
    domain::{
        ledger::BatchLedger,
        outcome::{decide, Attempt, Decision, ErrorClass, RowError, RowResult},
        retry::SQS_MAX_DELAY,
        timestamp,
    },
    PrimaryKey,
};

use super::{failed_row, Delivery, Received, REQUESTS_IN_FLIGHT};

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
pub(super) struct Retry {
    /// Index into the run's rows.
    pub(super) row: usize,
    /// Its new visibility timeout.
    pub(super) visibility: Duration,
}

/// A row to re-enqueue as a delayed copy: the row then waits in the queue as a delayed
/// message, which does not count toward the queue's in-flight limit (120,000 on a
/// standard queue), rather than as a received message hidden for the wait, which does.
pub(super) struct Deferral {
    /// Index into the run's rows.
    pub(super) row: usize,
    /// The copy's delay (at most SQS's 15 minutes).
    pub(super) delay: Duration,
    /// What to do if SQS refuses the copy (`RetryLater`: hide the original instead, or
    /// `TerminalFailure`).
    pub(super) if_refused: Decision,
    /// Why the row waits, which says what the copy carries.
    pub(super) why: Waiting,
}

/// Why a row goes back to the queue as a delayed copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// A rate limit: the receive spent no attempt, one more deferral is counted.
    RateLimit,
    /// A retry's backoff: the receive spent its attempt. A backoff longer than SQS's
    /// longest delay is carried to its end (unix seconds) by the copies.
    Backoff {
        /// When the backoff ends, if after the copy's delay.
        until: Option<i64>,
    },
    /// A copy received before its backoff's end: not sent, no attempt spent, it goes
    /// back until then.
    BackingOff {
        /// When the backoff ends.
        until: i64,
    },
}

impl Waiting {
    /// The copy of `row` that waits for this reason.
    pub(super) fn copy(self, row: &Received) -> resync_shared::domain::message::RowMessage {
        let mut copy = row.message.clone();
        match self {
            Waiting::RateLimit => {
                copy.attempts_before = row.attempt.saturating_sub(1);
                copy.rate_limit_deferrals += 1;
            }
            Waiting::Backoff { until } => {
                copy.attempts_before = row.attempt;
                copy.backoff_until = until;
            }
            Waiting::BackingOff { until } => {
                copy.attempts_before = row.attempt.saturating_sub(1);
                copy.backoff_until = Some(until);
            }
        }
        copy
    }
}

/// How a retry waits out `visibility`: as a delayed copy of at most SQS's 15 minutes,
/// whose copies carry a longer backoff's end; if SQS refuses the copy, the received
/// message is hidden for the backoff instead.
fn backoff(row: usize, visibility: Duration, error: RowError, now: i64) -> Deferral {
    let until = (visibility > SQS_MAX_DELAY)
        .then(|| now.saturating_add(i64::try_from(visibility.as_secs()).unwrap_or(i64::MAX)));
    Deferral {
        row,
        delay: visibility.min(SQS_MAX_DELAY),
        if_refused: Decision::RetryLater { visibility, error },
        why: Waiting::Backoff { until },
    }
}

/// How many of a run's requests this invocation may send (the destination's breaker).
pub(super) enum Sending {
    /// All of them.
    All,
    /// At most `requests`; the rows of the others are answered `held` without a call.
    Limited {
        /// Requests that may go.
        requests: usize,
        /// The answer of the rows held back (a pause: rate-limited, with its wait).
        held: RowError,
    },
}

/// Whether a request failed as a whole (a transport error, a 5xx: every row the same
/// retryable error of a request that got no answer about its rows), as the breaker
/// counts failures; any other answer shows the destination is up — including one that
/// answers every row `retry` on its own (a lock), which spends the rows' attempts.
fn failed_as_a_whole(results: &[RowResult]) -> Option<&RowError> {
    let first = results.first()?.as_ref().err()?;
    let whole = first.class == ErrorClass::Retryable
        && results.iter().all(|r| {
            r.as_ref()
                .err()
                .is_some_and(|e| e.without_answer && e.code == first.code)
        });
    whole.then_some(first)
}

/// What one run's rows came to in this invocation.
pub(super) struct Settlement {
    /// The ledger item to write.
    pub(super) ledger: BatchLedger,
    /// Rows to retry with a visibility backoff.
    pub(super) retries: Vec<Retry>,
    /// Rate-limited rows to re-enqueue with a delay.
    pub(super) deferrals: Vec<Deferral>,
    /// What the requests sent came to, for the breaker.
    pub(super) requests: RequestsOutcome,
}

/// Sends one run's rows and decides each by the destination's answer.
/// `until_deadline` is the time left until the run's deadline (`None`: it has none).
pub(super) async fn deliver_run(
    deps: &Delivery,
    rows: &[Received],
    until_deadline: Option<Duration>,
    sending: Sending,
) -> Settlement {
    let policy = &deps.destination_config.retry;
    // Copies of one key (at-least-once delivery) are sent once and share the answer:
    // a destination request never upserts the same record twice. A copy past the
    // threshold is not sent at all (I4): it gets no answer slot (see below).
    // A copy received before its backoff's end is not sent either: it goes back.
    let now = timestamp::now().unix_timestamp();
    let backing_off = |row: &Received| row.message.backoff_until.filter(|&until| until > now);
    let mut first_copy: HashMap<&PrimaryKey, usize> = HashMap::with_capacity(rows.len());
    let mut unique: Vec<&Received> = Vec::with_capacity(rows.len());
    let mut answer_of: Vec<Option<usize>> = Vec::with_capacity(rows.len());
    for row in rows {
        if policy.past_threshold(row.attempt) || backing_off(row).is_some() {
            answer_of.push(None);
            continue;
        }
        let slot = *first_copy.entry(&row.message.key).or_insert_with(|| {
            unique.push(row);
            unique.len() - 1
        });
        answer_of.push(Some(slot));
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
    let (allowed, held) = match sending {
        Sending::All => (chunks.len(), None),
        Sending::Limited { requests, held } => (requests.min(chunks.len()), Some(held)),
    };
    let (send, hold) = chunks.split_at(allowed);
    let requests: Vec<_> = send
        .iter()
        .map(|&(offset, chunk)| send_chunk(deps.destination.as_ref(), offset, chunk))
        .collect();
    let mut answers: Vec<(usize, Vec<RowResult>)> = futures::stream::iter(requests)
        .buffer_unordered(REQUESTS_IN_FLIGHT)
        .collect()
        .await;
    let mut outcome = RequestsOutcome::default();
    for (_, results) in &mut answers {
        match failed_as_a_whole(results) {
            Some(error) => {
                outcome.whole_failures += 1;
                outcome.last_error = Some(error.code.clone());
                // A failed probe is the breaker's evidence, not the rows' fault: they
                // wait with the others, without spending an attempt.
                if let Some(held) = &held {
                    let count = results.len();
                    *results = vec![Err(held.clone()); count];
                }
            }
            None => outcome.answered |= !results.is_empty(),
        }
    }
    if let Some(held) = held {
        for &(offset, chunk) in hold {
            answers.push((offset, vec![Err(held.clone()); chunk.len()]));
        }
    }

    let mut rng = rand::thread_rng();
    let mut settlement = Settlement {
        ledger: BatchLedger::default(),
        retries: Vec::new(),
        deferrals: Vec::new(),
        requests: outcome,
    };
    let mut unique_results: Vec<Option<RowResult>> = vec![None; unique.len()];
    for (offset, results) in answers {
        for (i, result) in results.into_iter().enumerate() {
            unique_results[order[offset + i]] = Some(result);
        }
    }
    let ledger = &mut settlement.ledger;
    for (index, row) in rows.iter().enumerate() {
        if let (None, Some(until)) = (answer_of[index], backing_off(row)) {
            let left = Duration::from_secs(u64::try_from(until - now).unwrap_or(0));
            settlement.deferrals.push(Deferral {
                row: index,
                delay: left.min(SQS_MAX_DELAY),
                if_refused: Decision::RetryLater {
                    visibility: left,
                    error: RowError::retryable("BACKING_OFF", "the row waits out its backoff"),
                },
                why: Waiting::BackingOff { until },
            });
            continue;
        }
        let Some(slot) = answer_of[index] else {
            // A copy past the threshold (a duplicate receive, a lost delete, an
            // invocation that died at the threshold): not sent (I4) and not settled
            // here, since another copy of the row may still be alive (a deferred one).
            // It is hidden for a backoff; when it keeps coming back, SQS moves it to
            // the dead-letter queue (its receive count passes the redrive's) and the
            // finalizer settles it as a failure, unless another copy settled it first.
            tracing::warn!(key = %row.message.key, attempt = row.attempt, "a copy came back after its last attempt; not sent again");
            let ceiling = policy.backoff_ceiling(row.attempt);
            settlement.retries.push(Retry {
                row: index,
                visibility: until_deadline.map_or(ceiling, |left| ceiling.min(left)),
            });
            continue;
        };
        let result = unique_results[slot]
            .clone()
            .expect("every unique row was sent");
        let attempt = Attempt {
            number: row.attempt,
            rate_limit_deferrals: row.message.rate_limit_deferrals,
            until_deadline,
        };
        match decide(result, attempt, policy, &mut rng) {
            Decision::Delivered if row.message.carried_over => {
                ledger.recovered.push(row.message.key.clone())
            }
            Decision::Delivered => ledger.delivered.push(row.message.key.clone()),
            Decision::RetryLater { visibility, error } => {
                tracing::debug!(key = %row.message.key, code = %error.code, attempt = row.attempt, "retrying later");
                ledger.retrying.push(row.message.key.clone());
                settlement
                    .deferrals
                    .push(backoff(index, visibility, error, now));
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
                    why: Waiting::RateLimit,
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
    use resync_shared::{domain::message::RowMessage, RunId, SyncId};

    struct ByParent;

    impl Destination for ByParent {
        fn batch_size(&self) -> usize {
            2
        }

        fn request<'a>(
            &'a self,
            rows: &'a [OutboundRow<'a>],
        ) -> futures::future::BoxFuture<'a, resync_shared::destination::Answer> {
            Box::pin(
                async move { resync_shared::destination::Answer::PerRow(vec![Ok(()); rows.len()]) },
            )
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
                generation: 0,
                sync_id: SyncId::parse("s").unwrap(),
                key: PrimaryKey::parse(key).unwrap(),
                row: row.try_into().unwrap(),
                carried_over: false,
                first_failed_at: None,
                prior_attempts: 0,
                attempts_before: 0,
                rate_limit_deferrals: 0,
                backoff_until: None,
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
}
