//! Run accounting: what delivery invocations record, and the pure tally that closes a
//! run with exact counts.
//!
//! # Why batch ledger items
//!
//! A DynamoDB write per delivered row would cost more than the whole rest of the
//! pipeline. Instead each delivery invocation writes **one** ledger item per run it
//! touched, listing the keys it settled (delivered or terminally failed) and the keys it
//! scheduled for a retry — written *before* it returns, so before Lambda deletes a single
//! message. A clean run of 100-row batches costs ≈ 2 write units per 100 rows.
//!
//! The finalizer closes a run from the **union** of its ledger items, by key:
//! - a key delivered in any item is delivered (duplicate SQS deliveries and crashed
//!   invocations that wrote an item but had their messages redelivered only repeat keys);
//! - otherwise a key terminally failed in any item is failed, with the error of its latest
//!   attempt;
//! - keys only ever "retrying" are still in flight.
//!
//! The run is complete when the distinct settled keys equal the enqueued count, so counts
//! are exact under at-least-once delivery (I1, I2) without per-row writes.
//!
//! A run planned again (a retried or duplicate sync-start, or one after an abandon)
//! gets a new planning attempt number, its *generation*; items and rejections carry
//! the attempt that wrote them, and only the current attempt's are tallied: keys an
//! earlier plan settled say nothing about the rows of this one.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::domain::{
    ids::PrimaryKey,
    outcome::{RowError, ATTEMPTS_SPENT},
    row::RowFields,
    source::Rejection,
};

/// A row that reached a terminal failure in this run, with all the finalizer needs to
/// write its failed-row index entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRow {
    /// The key.
    pub key: PrimaryKey,
    /// The last error.
    pub error: RowError,
    /// Attempts in this run.
    pub attempts: u32,
    /// Attempts in earlier runs.
    #[serde(default)]
    pub prior_attempts: u32,
    /// Whether the key was already in the index.
    #[serde(default)]
    pub carried_over: bool,
    /// When it first failed, if it failed before.
    #[serde(default)]
    pub first_failed_at: Option<String>,
    /// The payload to retry it with next run.
    pub payload: RowFields,
}

/// What one delivery invocation settled for one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchLedger {
    /// The run's planning attempt whose rows these are (see `RunRecord::generation`):
    /// the finalizer tallies only the current attempt's items. Absent (0) for a run's
    /// first attempt, as in items written before attempts were numbered.
    #[serde(default, rename = "g", skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// Delivered keys that were not in the index.
    #[serde(default, rename = "d", skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<PrimaryKey>,
    /// Delivered keys that were carried over from the index (they leave it).
    #[serde(default, rename = "c", skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<PrimaryKey>,
    /// Keys hidden for a backoff retry.
    #[serde(default, rename = "r", skip_serializing_if = "Vec::is_empty")]
    pub retrying: Vec<PrimaryKey>,
    /// Terminal failures.
    #[serde(default, rename = "f", skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedRow>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl BatchLedger {
    /// Keys this item settles.
    pub fn settled(&self) -> usize {
        self.delivered.len() + self.recovered.len() + self.failed.len()
    }

    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.settled() == 0 && self.retrying.is_empty()
    }
}

/// A rejection as the run records it, with what the index needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRejection {
    /// The rejection.
    #[serde(flatten)]
    pub rejection: Rejection,
    /// The key's earlier first failure, when it was in the index.
    #[serde(default)]
    pub first_failed_at: Option<String>,
    /// Whether the key was in the index before the run.
    #[serde(default)]
    pub in_index: bool,
    /// The row's payload, for a row that was read whole but could not be queued
    /// (SQS refused its message): the index keeps it to retry the row from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<RowFields>,
}

/// The union of a run's ledger items.
#[derive(Debug, Default)]
pub struct RunTally {
    delivered: HashSet<PrimaryKey>,
    recovered: HashSet<PrimaryKey>,
    retried: HashSet<PrimaryKey>,
    failed: HashMap<PrimaryKey, FailedRow>,
}

/// Exact counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    /// Rows the run took in: enqueued + rejected.
    pub planned: u64,
    /// Delivered.
    pub delivered: u64,
    /// Terminally failed at the destination (or dead-lettered).
    pub failed: u64,
    /// Rejected before they were queued.
    pub rejected: u64,
    /// Rows that needed at least one in-run retry.
    pub retried_in_run: u64,
    /// Rows that came from the failed-row index.
    pub carried_over: u64,
    /// Carried-over rows delivered in this run.
    pub recovered: u64,
}

impl RunTally {
    /// An empty tally with room for a run of `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            delivered: HashSet::with_capacity(rows),
            ..Self::default()
        }
    }

    /// Adds one ledger item.
    pub fn add(&mut self, item: BatchLedger) {
        self.delivered.extend(item.delivered);
        for key in item.recovered {
            self.delivered.insert(key.clone());
            self.recovered.insert(key);
        }
        self.retried.extend(item.retrying);
        for row in item.failed {
            let replace = match self.failed.get(&row.key) {
                None => true,
                // The latest attempt gives the last error; at the same attempt, the
                // destination's own error beats a copy settled unsent.
                Some(existing) => {
                    row.attempts > existing.attempts
                        || (row.attempts == existing.attempts
                            && existing.error.code == ATTEMPTS_SPENT
                            && row.error.code != ATTEMPTS_SPENT)
                }
            };
            if replace {
                self.failed.insert(row.key.clone(), row);
            }
        }
    }

    /// Distinct keys with a terminal outcome.
    pub fn settled(&self) -> usize {
        self.delivered.len()
            + self
                .failed
                .keys()
                .filter(|k| !self.delivered.contains(*k))
                .count()
    }

    /// Whether every enqueued row has a terminal outcome.
    pub fn complete(&self, enqueued: u64) -> bool {
        self.settled() as u64 >= enqueued
    }

    /// Terminal failures (keys never delivered), in key order.
    pub fn failures(&self) -> Vec<&FailedRow> {
        let mut rows: Vec<&FailedRow> = self
            .failed
            .values()
            .filter(|row| !self.delivered.contains(&row.key))
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Carried-over keys delivered in the run: they leave the index.
    pub fn recovered_keys(&self) -> impl Iterator<Item = &PrimaryKey> {
        self.recovered.iter()
    }

    /// The run's counts.
    pub fn counts(&self, enqueued: u64, rejected: u64, carried_over: u64) -> RunCounts {
        RunCounts {
            planned: enqueued + rejected,
            delivered: self.delivered.len() as u64,
            failed: self.failures().len() as u64,
            rejected,
            retried_in_run: self.retried.len() as u64,
            carried_over,
            recovered: self.recovered.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> PrimaryKey {
        PrimaryKey::parse(k).unwrap()
    }

    fn failed(k: &str, attempts: u32, code: &str) -> FailedRow {
        FailedRow {
            key: key(k),
            error: RowError::retryable(code, "m"),
            attempts,
            prior_attempts: 0,
            carried_over: false,
            first_failed_at: None,
            payload: RowFields::from_text("{}").unwrap(),
        }
    }

    #[test]
    fn duplicate_deliveries_do_not_change_any_count() {
        let item = BatchLedger {
            delivered: vec![key("a"), key("b")],
            ..Default::default()
        };
        let mut tally = RunTally::default();
        tally.add(item.clone());
        tally.add(item);
        assert_eq!(tally.settled(), 2);
        assert!(tally.complete(2));
        assert_eq!(tally.counts(2, 0, 0).delivered, 2);
    }

    #[test]
    fn a_delivery_wins_over_a_failure_of_the_same_key() {
        let mut tally = RunTally::default();
        tally.add(BatchLedger {
            failed: vec![failed("a", 5, "HTTP_503")],
            ..Default::default()
        });
        tally.add(BatchLedger {
            delivered: vec![key("a")],
            ..Default::default()
        });
        let counts = tally.counts(1, 0, 0);
        assert_eq!((counts.delivered, counts.failed), (1, 0));
        assert!(tally.failures().is_empty());
    }

    #[test]
    fn the_latest_attempt_gives_the_last_error() {
        let mut tally = RunTally::default();
        tally.add(BatchLedger {
            failed: vec![failed("a", 5, "LATEST")],
            ..Default::default()
        });
        tally.add(BatchLedger {
            failed: vec![failed("a", 3, "OLDER")],
            ..Default::default()
        });
        assert_eq!(tally.failures()[0].error.code, "LATEST");
    }

    #[test]
    fn a_copy_settled_unsent_does_not_hide_the_destinations_last_error() {
        for order in [[0, 1], [1, 0]] {
            let rows = [
                failed("a", 4, "UNABLE_TO_LOCK_ROW"),
                FailedRow {
                    error: RowError::attempts_spent(),
                    ..failed("a", 4, "")
                },
            ];
            let mut tally = RunTally::default();
            for i in order {
                tally.add(BatchLedger {
                    failed: vec![rows[i].clone()],
                    ..Default::default()
                });
            }
            assert_eq!(tally.failures()[0].error.code, "UNABLE_TO_LOCK_ROW");
        }
    }

    #[test]
    fn in_flight_rows_keep_a_run_open() {
        let mut tally = RunTally::default();
        tally.add(BatchLedger {
            delivered: vec![key("a")],
            retrying: vec![key("b")],
            ..Default::default()
        });
        assert!(!tally.complete(2));
        tally.add(BatchLedger {
            recovered: vec![key("b")],
            ..Default::default()
        });
        assert!(tally.complete(2));
        let counts = tally.counts(2, 1, 1);
        assert_eq!(
            counts,
            RunCounts {
                planned: 3,
                delivered: 2,
                failed: 0,
                rejected: 1,
                retried_in_run: 1,
                carried_over: 1,
                recovered: 1
            }
        );
    }

    #[test]
    fn a_first_attempts_item_reads_as_before_and_a_later_ones_names_it() {
        let first = BatchLedger {
            delivered: vec![key("a")],
            ..Default::default()
        };
        let json = serde_json::to_string(&first).unwrap();
        assert_eq!(json, r#"{"d":["a"]}"#);
        let later = BatchLedger {
            generation: 3,
            ..first
        };
        let json = serde_json::to_string(&later).unwrap();
        assert_eq!(json, r#"{"g":3,"d":["a"]}"#);
        assert_eq!(serde_json::from_str::<BatchLedger>(&json).unwrap(), later);
    }

    #[test]
    fn ledger_items_are_compact() {
        let item = BatchLedger {
            delivered: (0..100).map(|i| key(&format!("cust-{i:06}"))).collect(),
            ..Default::default()
        };
        let json = serde_json::to_string(&item).unwrap();
        assert!(json.len() < 1500, "{} bytes", json.len());
    }
}
