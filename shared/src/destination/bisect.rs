//! Split retries: what every kind's [`Destination::send`] does with a request refused
//! as a whole without naming a row ([`Answer::Refused`]).
//!
//! One bad contact makes HubSpot refuse a batch of 100 with a 400 that names nobody; a
//! webhook answers a bare 400; Salesforce refuses a request for one record's malformed
//! value. Failing every row permanently loses 99 good rows to one bad one; retrying
//! them all burns every row's attempts on the same refusal. Instead the request is cut
//! in halves, sent one after the other (first half first, so results stay in order),
//! and a half refused again is cut again, until each refusal is down to one row: that
//! row fails, permanently, with the destination's code and the message
//! `isolated by splitting the request: <the destination's message>`; every other row
//! gets its own answer.
//!
//! Cost: each refused part of two rows or more costs two more requests, and a part is
//! refused only when it holds a bad row, so at every level of halving at most `k`
//! parts (for `k` bad rows) are split: at most `2·k·⌈log₂ n⌉` extra requests for a
//! request of `n` rows.
//!
//! Only permanent refusals are split. Retryable whole-request errors (5xx, 429,
//! timeouts) and errors that every row would get alike (401/403, a redirect, a refused
//! URL) are answered per row by the kinds and are never split: splitting cannot help
//! them and would multiply calls against a destination that is down or misconfigured.

use super::{Answer, Destination, OutboundRow};
use crate::domain::outcome::{ErrorClass, RowError, RowResult};

/// Sends `rows` through `destination`, splitting whole-request refusals (see the module).
pub async fn send<D: Destination + ?Sized>(
    destination: &D,
    rows: &[OutboundRow<'_>],
) -> Vec<RowResult> {
    let mut results: Vec<RowResult> = Vec::with_capacity(rows.len());
    // Parts still to send, the next on top: (start, end) into `rows`.
    let mut pending = vec![(0, rows.len())];
    let mut split = false;
    while let Some((start, end)) = pending.pop() {
        let part = &rows[start..end];
        if part.is_empty() {
            continue;
        }
        match destination.request(part).await {
            Answer::PerRow(answer) if answer.len() == part.len() => results.extend(answer),
            Answer::PerRow(answer) => {
                tracing::error!(
                    expected = part.len(),
                    got = answer.len(),
                    "the destination answered a wrong number of results; retrying the request's rows"
                );
                results.extend(vec![
                    Err(RowError::retryable(
                        "RESULT_COUNT_MISMATCH",
                        "the destination's answer did not match the request",
                    ));
                    part.len()
                ]);
            }
            Answer::Refused(error) if error.class != ErrorClass::Permanent => {
                // Not the row's fault as far as anyone can tell: every row alike.
                results.extend(vec![Err(error); part.len()]);
            }
            Answer::Refused(error) if part.len() > 1 => {
                tracing::info!(
                    rows = part.len(),
                    code = %error.code,
                    "the destination refused the request as a whole without naming a row; sending it in halves"
                );
                split = true;
                let middle = start + part.len() / 2;
                pending.push((middle, end));
                pending.push((start, middle));
            }
            Answer::Refused(error) => {
                let error = if split {
                    tracing::info!(key = %part[0].key, code = %error.code, "a row isolated by splitting a refused request");
                    RowError::permanent(
                        error.code,
                        format!("isolated by splitting the request: {}", error.message),
                    )
                } else {
                    error
                };
                results.push(Err(error));
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    use futures::future::BoxFuture;

    use super::*;
    use crate::{PrimaryKey, RowFields};

    /// Refuses any request holding a poisoned key; answers the others per row.
    struct Poisoned {
        poisoned: Vec<String>,
        calls: AtomicUsize,
        sizes: Mutex<Vec<usize>>,
        refusal: RowError,
    }

    impl Destination for Poisoned {
        fn batch_size(&self) -> usize {
            100
        }

        fn request<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Answer> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.sizes.lock().unwrap().push(rows.len());
            let refused = rows
                .iter()
                .any(|row| self.poisoned.iter().any(|p| p == row.key.as_str()));
            Box::pin(async move {
                if refused {
                    Answer::Refused(self.refusal.clone())
                } else {
                    Answer::PerRow(vec![Ok(()); rows.len()])
                }
            })
        }
    }

    fn run(n: usize, poisoned: &[usize], refusal: RowError) -> (Vec<RowResult>, usize) {
        let keys: Vec<PrimaryKey> = (0..n)
            .map(|i| PrimaryKey::parse(format!("k{i}")).unwrap())
            .collect();
        let fields = RowFields::from_text("{}").unwrap();
        let rows: Vec<OutboundRow<'_>> = keys
            .iter()
            .map(|key| OutboundRow {
                key,
                idempotency_key: String::new(),
                fields: &fields,
            })
            .collect();
        let destination = Poisoned {
            poisoned: poisoned.iter().map(|i| format!("k{i}")).collect(),
            calls: AtomicUsize::new(0),
            sizes: Mutex::new(Vec::new()),
            refusal,
        };
        let results = futures::executor::block_on(destination.send(&rows));
        (results, destination.calls.load(Ordering::SeqCst))
    }

    #[test]
    fn poisoned_rows_are_isolated_within_the_bound_and_the_rest_delivered() {
        let refusal = RowError::permanent("VALIDATION_ERROR", "Property values were not valid");
        for (n, poisoned) in [
            (100, vec![37]),
            (100, vec![0, 99]),
            (100, vec![3, 4, 5]),
            (7, vec![6]),
        ] {
            let (results, calls) = run(n, &poisoned, refusal.clone());
            let log2 = (n as f64).log2().ceil() as usize;
            assert!(
                calls - 1 <= 2 * log2 * poisoned.len(),
                "{n} rows, {poisoned:?}: {calls} calls"
            );
            for (i, result) in results.iter().enumerate() {
                if poisoned.contains(&i) {
                    let error = result.clone().unwrap_err();
                    assert_eq!(error.code, "VALIDATION_ERROR");
                    assert_eq!(
                        error.message,
                        "isolated by splitting the request: Property values were not valid"
                    );
                } else {
                    assert_eq!(*result, Ok(()), "row {i}");
                }
            }
        }
    }

    #[test]
    fn a_lone_row_refused_keeps_the_destinations_error_and_retryable_refusals_are_not_split() {
        let refusal = RowError::permanent("HTTP_400", "the webhook refused the request");
        let (results, calls) = run(1, &[0], refusal.clone());
        assert_eq!((results, calls), (vec![Err(refusal)], 1));
        let busy = RowError::retryable("HTTP_503", "down");
        let (results, calls) = run(50, &[3], busy.clone());
        assert_eq!((results, calls), (vec![Err(busy); 50], 1));
    }
}
