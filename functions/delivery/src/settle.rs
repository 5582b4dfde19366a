//! Settling one run's rows in one invocation: each key sent once per
//! destination-sized request (ordered by the destination's key), and every row decided
//! by `resync_shared::domain::outcome::decide`.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use resync_shared::{
    aws::{breaker::RequestsOutcome, runs::SendCount},
    destination::{Destination, OutboundRow},
    domain::{
        ledger::BatchLedger,
        outcome::{decide, Attempt, Decision, ErrorClass, RowError, RowResult},
        retry::SQS_MAX_DELAY,
        timestamp,
    },
    PrimaryKey, RunId,
};

use super::{failed_row, Delivery, Received, REQUESTS_IN_FLIGHT};

/// Sends one destination request; a wrong result count retries the request's rows.
async fn send_chunk(destination: &dyn Destination, chunk: &[&Received]) -> Vec<RowResult> {
    let outbound: Vec<OutboundRow<'_>> = chunk
        .iter()
        .map(|r| OutboundRow {
            key: &r.message.key,
            idempotency_key: r.message.idempotency_key(),
            fields: &r.message.row,
        })
        .collect();
    let results = destination.send(&outbound).await;
    if results.len() != chunk.len() {
        tracing::error!(
            expected = chunk.len(),
            got = results.len(),
            "the destination answered a wrong number of results; retrying the request's rows"
        );
        return vec![
            Err(RowError::retryable(
                "RESULT_COUNT_MISMATCH",
                "the destination's answer did not match the request",
            ));
            chunk.len()
        ];
    }
    results
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
                // Counted after its answer, like a planning attempt's message: a row
                // waiting out a long limit is deferred many times, and counting each
                // try before it goes (and giving it back) would cost two writes a
                // deferral.
                copy.copied = false;
            }
            Waiting::Backoff { until } => {
                copy.attempts_before = row.attempt;
                copy.backoff_until = until;
                copy.copied = true;
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

/// Updates of the run's count of sends (see [`resync_shared::aws::runs::sends`]) in
/// flight at once.
const COUNTS_IN_FLIGHT: usize = 10;

/// A change of the run's count of a row's sends once its answer is known.
#[derive(Debug, Clone, Copy)]
enum Adjustment {
    /// A send not counted before it went, to be retried: counted now (raised to the
    /// row's attempt).
    Sent(u32),
    /// A counted send a rate limit refused: given back.
    GiveBack,
}

/// Sends one run's rows and decides each by the destination's answer.
/// `until_deadline` is the time left until the run's deadline (`None`: it has none).
/// A row's attempt is raised to the run's count of its sends when that is higher (the
/// row has another message, which spent attempts too).
pub(super) async fn deliver_run(
    deps: &Delivery,
    run: &RunId,
    rows: &mut [Received],
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
    // `unique`: the row of each key's first copy; `answer_of`: each row's key's slot.
    let mut unique: Vec<usize> = Vec::with_capacity(rows.len());
    let mut answer_of: Vec<Option<usize>> = Vec::with_capacity(rows.len());
    {
        let mut first_copy: HashMap<&PrimaryKey, usize> = HashMap::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            if policy.past_threshold(row.attempt) || backing_off(row).is_some() {
                answer_of.push(None);
                continue;
            }
            let slot = *first_copy.entry(&row.message.key).or_insert_with(|| {
                unique.push(index);
                unique.len() - 1
            });
            answer_of.push(Some(slot));
        }
    }
    // Slots in sending order: by the destination's key (stable).
    let order = {
        let unique_rows: Vec<&Received> = unique.iter().map(|&i| &rows[i]).collect();
        send_order(deps.destination.as_ref(), &unique_rows)
    };
    let batch_size = deps.destination.batch_size().max(1);
    let (sendable, held) = match sending {
        Sending::All => (order.len(), None),
        Sending::Limited { requests, held } => (
            requests.saturating_mul(batch_size).min(order.len()),
            Some(held),
        ),
    };

    // I4 across a row's messages: a message that may have a twin (received before, or
    // a retry's copy) is counted before it goes, and does not go once the run's
    // count of its row's sends has reached the threshold (another of its messages
    // spent them). A planning attempt's message on its first receive is counted only
    // after its answer, when it is to be retried: a clean run, or a run planned again,
    // writes nothing here for its rows' first sends.
    let counts: Vec<(usize, Result<SendCount, _>)> = {
        let runs = &deps.runs;
        let rows = &*rows;
        let unique = &unique;
        futures::stream::iter(
            order[..sendable]
                .iter()
                .copied()
                .filter(|&slot| rows[unique[slot]].may_have_a_twin()),
        )
        .map(|slot| async move {
            let row = &rows[unique[slot]];
            let count = runs
                .count_send(run, &row.message.key, row.attempt, policy.max_attempts)
                .await;
            (slot, count)
        })
        .buffer_unordered(COUNTS_IN_FLIGHT)
        .collect()
        .await
    };
    if !counts.is_empty() {
        tracing::debug!(
            rows = counts.len(),
            of = unique.len(),
            "counted the sends of rows sent before in this run"
        );
    }
    let mut counted = vec![false; unique.len()];
    let mut spent = vec![false; unique.len()];
    let mut raised: Vec<u32> = vec![0; unique.len()];
    for (slot, count) in counts {
        match count {
            Ok(SendCount::Counted(sends)) => {
                counted[slot] = true;
                raised[slot] = sends;
            }
            Ok(SendCount::Spent) => {
                spent[slot] = true;
                raised[slot] = policy.max_attempts;
            }
            Err(err) => {
                // The row's own count still bounds this message's sends.
                tracing::warn!(key = %rows[unique[slot]].message.key, error = %err, "cannot count the row's send; sending on its own attempt count");
            }
        }
    }
    for (row, slot) in rows.iter_mut().zip(&answer_of) {
        if let Some(slot) = slot {
            row.attempt = row.attempt.max(raised[*slot]);
        }
    }
    let rows: &[Received] = rows;

    let to_send: Vec<usize> = order[..sendable]
        .iter()
        .copied()
        .filter(|&slot| !spent[slot])
        .collect();
    let chunks: Vec<&[usize]> = to_send.chunks(batch_size).collect();
    let destination = deps.destination.as_ref();
    let requests: Vec<_> = chunks
        .iter()
        .enumerate()
        .map(|(i, slots)| {
            let chunk: Vec<&Received> = slots.iter().map(|&slot| &rows[unique[slot]]).collect();
            async move { (i, send_chunk(destination, &chunk).await) }
        })
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

    // A `Send` generator (the invocation's future crosses threads); seeded once.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let mut settlement = Settlement {
        ledger: BatchLedger::default(),
        retries: Vec::new(),
        deferrals: Vec::new(),
        requests: outcome,
    };
    let mut unique_results: Vec<Option<RowResult>> = vec![None; unique.len()];
    for (chunk, results) in answers {
        for (&slot, result) in chunks[chunk].iter().zip(results) {
            unique_results[slot] = Some(result);
        }
    }
    if let Some(held) = held {
        for &slot in &order[sendable..] {
            unique_results[slot] = Some(Err(held.clone()));
        }
    }
    // Changes to the run's count of sends once the answers are known: a first send
    // to be retried is counted (+1), a counted send a rate limit refused is given back
    // (-1); once per key.
    let mut adjustments: Vec<(usize, Adjustment)> = Vec::new();
    let mut adjusted = vec![false; unique.len()];
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
            if row.packed() {
                // A segment is never hidden for a row: the row fails here (a delivery
                // of another of its copies wins over this failure).
                ledger.failed.push(failed_row(
                    row,
                    RowError::attempts_spent(policy.max_attempts),
                ));
                continue;
            }
            let ceiling = policy.backoff_ceiling(row.attempt);
            settlement.retries.push(Retry {
                row: index,
                visibility: until_deadline.map_or(ceiling, |left| ceiling.min(left)),
            });
            continue;
        };
        let decision = if spent[slot] {
            // Settled here: the message whose send reached the threshold settles the
            // row too (a delivery wins over this failure), but it may have died after
            // its send.
            Decision::TerminalFailure(RowError::attempts_spent(policy.max_attempts))
        } else {
            let result = unique_results[slot]
                .clone()
                .expect("every unique row was sent or held");
            let attempt = Attempt {
                number: row.attempt,
                rate_limit_deferrals: row.message.rate_limit_deferrals,
                until_deadline,
            };
            decide(result, attempt, policy, &mut rng)
        };
        let adjustment = match &decision {
            Decision::RetryLater { .. } if !counted[slot] => Some(Adjustment::Sent(row.attempt)),
            Decision::Defer { .. } if counted[slot] => Some(Adjustment::GiveBack),
            _ => None,
        };
        if let Some(adjustment) = adjustment {
            if !std::mem::replace(&mut adjusted[slot], true) {
                adjustments.push((slot, adjustment));
            }
        }
        match decision {
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
    // Written before the copies go back to the queue, so a copy never runs ahead of
    // its count. A count that cannot be written leaves each message its own count.
    let runs = &deps.runs;
    let unique = &unique;
    let failed: Vec<_> = futures::stream::iter(adjustments)
        .map(|(slot, adjustment)| async move {
            let key = &rows[unique[slot]].message.key;
            let result = match adjustment {
                Adjustment::Sent(attempt) => runs.count_sent(run, key, attempt).await,
                Adjustment::GiveBack => runs.give_back_send(run, key).await,
            };
            result.err().map(|err| (key, err))
        })
        .buffer_unordered(COUNTS_IN_FLIGHT)
        .filter_map(|failed| async move { failed })
        .collect()
        .await;
    for (key, err) in failed {
        tracing::warn!(key = %key, error = %err, "cannot update the row's count of sends");
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
            received_before: false,
            segment: None,
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
                copied: false,
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
