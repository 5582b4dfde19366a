//! Run accounting: what delivery invocations record, and the pure tally that closes a
//! run with exact counts.
//!
//! # Why batch ledger items
//!
//! A DynamoDB write per delivered row would cost more than the whole rest of the
//! pipeline. Instead each delivery invocation writes **one** ledger item per run it
//! touched (several when it is larger than an item, see below), listing the keys it
//! settled (delivered or terminally failed) and the keys it scheduled for a retry —
//! written *before* it returns, so before Lambda deletes a single message. A clean run of 100-row batches costs ≈ 2 write units per 100 rows.
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
//! earlier plan settled say nothing about the rows of this one, except through the
//! carry of [`crate::domain::replan`] (the new plan settles them in an item of its own,
//! and a delivery by an earlier attempt wins over the latest attempt's failure).
//!
//! # Items that fit
//!
//! One invocation can settle more than a DynamoDB item holds (400 KB): 500 keys of
//! 1,024 bytes, or 400 failed rows of 1 KB with their payloads. [`BatchLedger::split`]
//! and [`split_json_array`] cut what is recorded into parts by their serialised
//! length, exactly, so the adapter writes several items instead of one it would be
//! refused. Every entry fits an item alone: keys are at most 1,024 bytes, a failed
//! row's payload is smaller than a queue message (256 KiB) and its error text is
//! bounded where it is made ([`RowError`]).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::domain::{ids::PrimaryKey, outcome::RowError, row::RowFields, source::Rejection};

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
    /// When this run's last attempt failed (RFC 3339): recorded where the row is
    /// settled, so the index says when the row failed, not when its run closed (`None`
    /// in items written before it was kept: the close time stands in).
    #[serde(default, rename = "at", skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
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

/// One entry of a ledger or list is too large for an item even alone (it cannot be
/// recorded; the caller must not write it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry} is {bytes} bytes as JSON, more than the {max} bytes an item holds")]
pub struct EntryTooLarge {
    /// What the entry is (a key, or a rejection's place), for the log.
    pub entry: String,
    /// Its serialised length.
    pub bytes: usize,
    /// The budget it was measured against.
    pub max: usize,
}

/// The length of `value`'s JSON text, without building it.
pub(crate) fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and these types always serialise (strings,
    // numbers and JSON text validated where it entered); a failure counts as too large.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Cuts `items` into consecutive runs whose JSON array text (`[a,b,...]`) is at most
/// `max_bytes` long each. An empty list gives no run.
pub fn split_json_array<T: Serialize>(
    items: &[T],
    max_bytes: usize,
    describe: impl Fn(&T) -> String,
) -> Result<Vec<&[T]>, EntryTooLarge> {
    let mut runs = Vec::new();
    let (mut start, mut size) = (0, 2usize);
    for (i, item) in items.iter().enumerate() {
        let len = json_len(item);
        if 2usize.saturating_add(len) > max_bytes {
            return Err(EntryTooLarge {
                entry: describe(item),
                bytes: len,
                max: max_bytes,
            });
        }
        // A comma before every element but the first.
        let added = len + usize::from(i > start);
        if size.saturating_add(added) > max_bytes {
            runs.push(&items[start..i]);
            (start, size) = (i, 2 + len);
        } else {
            size += added;
        }
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    Ok(runs)
}

impl BatchLedger {
    /// Splits the ledger into parts whose JSON text is at most `max_bytes` long each,
    /// keeping every list's order; together the parts hold exactly what the ledger
    /// holds (the tally takes their union). A ledger that fits is one part; an empty
    /// one is one empty part.
    pub fn split(self, max_bytes: usize) -> Result<Vec<BatchLedger>, EntryTooLarge> {
        let mut parts = PartBuilder::new(max_bytes, self.generation);
        for key in self.delivered {
            parts.push(Field::Delivered, |p| &mut p.delivered, key)?;
        }
        for key in self.recovered {
            parts.push(Field::Recovered, |p| &mut p.recovered, key)?;
        }
        for key in self.retrying {
            parts.push(Field::Retrying, |p| &mut p.retrying, key)?;
        }
        for row in self.failed {
            parts.push(Field::Failed, |p| &mut p.failed, row)?;
        }
        Ok(parts.finish())
    }
}

/// A ledger entry's key (named when an entry is too large).
trait Keyed {
    fn key(&self) -> &PrimaryKey;
}

impl Keyed for PrimaryKey {
    fn key(&self) -> &PrimaryKey {
        self
    }
}

impl Keyed for FailedRow {
    fn key(&self) -> &PrimaryKey {
        &self.key
    }
}

/// The four lists of a [`BatchLedger`], in their serialised order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Delivered,
    Recovered,
    Retrying,
    Failed,
}

/// Fills ledger parts up to a JSON length, tracking each part's exact length:
/// `{}` plus, per non-empty list, `"d":[` … `]` (6 bytes), its elements and the commas
/// between them, and the commas between lists.
struct PartBuilder {
    max_bytes: usize,
    /// The planning attempt every part names.
    generation: u32,
    /// The length of `"g":N` in every part (0 for the first attempt, which omits it).
    prefix: usize,
    done: Vec<BatchLedger>,
    part: BatchLedger,
    size: usize,
    fields: Vec<Field>,
}

impl PartBuilder {
    fn new(max_bytes: usize, generation: u32) -> Self {
        let prefix = if generation == 0 {
            0
        } else {
            format!(r#""g":{generation}"#).len()
        };
        Self {
            max_bytes,
            generation,
            prefix,
            done: Vec::new(),
            part: Self::empty(generation),
            size: 2 + prefix,
            fields: Vec::new(),
        }
    }

    fn empty(generation: u32) -> BatchLedger {
        BatchLedger {
            generation,
            ..BatchLedger::default()
        }
    }

    /// The length `len` of one more element of `field` adds to the current part.
    fn added(&self, field: Field, len: usize) -> usize {
        if self.fields.contains(&field) {
            len + 1
        } else {
            len + 6 + usize::from(!self.fields.is_empty() || self.prefix > 0)
        }
    }

    fn push<T: Serialize + Keyed>(
        &mut self,
        field: Field,
        list: impl Fn(&mut BatchLedger) -> &mut Vec<T>,
        entry: T,
    ) -> Result<(), EntryTooLarge> {
        let len = json_len(&entry);
        if (2 + 6usize).saturating_add(len) > self.max_bytes {
            return Err(EntryTooLarge {
                entry: format!("the ledger entry of key {}", entry.key()),
                bytes: len,
                max: self.max_bytes,
            });
        }
        if self.size.saturating_add(self.added(field, len)) > self.max_bytes {
            let next = Self::empty(self.generation);
            self.done.push(std::mem::replace(&mut self.part, next));
            self.size = 2 + self.prefix;
            self.fields.clear();
        }
        self.size += self.added(field, len);
        if !self.fields.contains(&field) {
            self.fields.push(field);
        }
        list(&mut self.part).push(entry);
        Ok(())
    }

    fn finish(mut self) -> Vec<BatchLedger> {
        if !self.part.is_empty() || self.done.is_empty() {
            self.done.push(self.part);
        }
        self.done
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
            match self.failed.get(&row.key) {
                Some(existing) if existing.attempts >= row.attempts => {}
                _ => {
                    self.failed.insert(row.key.clone(), row);
                }
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

    /// Whether `key` terminally failed in the run (and was never delivered): its
    /// failure, not a rejection of the same key, goes into the index.
    pub fn failed_in_run(&self, key: &PrimaryKey) -> bool {
        self.failed.contains_key(key) && !self.delivered.contains(key)
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
            failed_at: None,
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

    /// A key of the longest allowed length (1,024 bytes).
    fn wide(i: usize) -> PrimaryKey {
        key(&format!("{}{i:06}", "k".repeat(1018)))
    }

    fn json(value: &(impl Serialize + ?Sized)) -> usize {
        serde_json::to_string(value).unwrap().len()
    }

    /// The parts' lists laid end to end.
    fn joined(parts: &[BatchLedger]) -> BatchLedger {
        let mut all = BatchLedger::default();
        for part in parts {
            all.delivered.extend(part.delivered.iter().cloned());
            all.recovered.extend(part.recovered.iter().cloned());
            all.retrying.extend(part.retrying.iter().cloned());
            all.failed.extend(part.failed.iter().cloned());
        }
        all
    }

    /// Issue 12, defect 4: an invocation's ledger can outgrow a DynamoDB item (500 keys
    /// of 1,024 bytes; hundreds of failed 1 KB rows). It splits into parts within the
    /// budget that together hold exactly the ledger, in order.
    #[test]
    fn a_ledger_larger_than_an_item_splits_into_parts_that_fit() {
        let payload =
            RowFields::from_text(format!(r#"{{"note":"{}"}}"#, "n".repeat(1000))).unwrap();
        let ledger = BatchLedger {
            delivered: (0..300).map(wide).collect(),
            recovered: (300..350).map(wide).collect(),
            retrying: (350..400).map(wide).collect(),
            failed: (400..500)
                .map(|i| FailedRow {
                    key: wide(i),
                    failed_at: None,
                    payload: payload.clone(),
                    ..failed("x", 4, "INVALID")
                })
                .collect(),
            generation: 0,
        };
        let max = 100_000;
        assert!(json(&ledger) > 5 * max);

        let parts = ledger.clone().split(max).unwrap();

        assert!(parts.len() >= 6, "{} parts", parts.len());
        for part in &parts {
            assert!(json(part) <= max, "a part of {} bytes", json(part));
        }
        assert_eq!(joined(&parts), ledger);
        let settled: usize = parts.iter().map(BatchLedger::settled).sum();
        assert_eq!(settled, ledger.settled());
    }

    /// The split measures exactly: a ledger whose JSON is `max` bytes is one part, one
    /// byte less gives two.
    #[test]
    fn the_split_measures_the_json_exactly() {
        let ledger = BatchLedger {
            delivered: vec![key("a"), key("bb")],
            retrying: vec![key("c\"quoted\"")],
            failed: vec![failed("d", 2, "HTTP_503")],
            ..Default::default()
        };
        let exact = json(&ledger);
        assert_eq!(ledger.clone().split(exact).unwrap(), vec![ledger.clone()]);
        let parts = ledger.clone().split(exact - 1).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(joined(&parts), ledger);
        assert!(parts.iter().all(|part| json(part) < exact));
    }

    /// Every part of a later planning attempt's ledger names that attempt, and its
    /// `"g"` field is measured too.
    #[test]
    fn the_parts_of_a_later_attempt_name_it() {
        let ledger = BatchLedger {
            generation: 3,
            delivered: vec![key("a"), key("bb")],
            failed: vec![failed("d", 2, "HTTP_503")],
            ..Default::default()
        };
        let exact = json(&ledger);
        assert_eq!(ledger.clone().split(exact).unwrap(), vec![ledger.clone()]);
        let parts = ledger.clone().split(exact - 1).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.generation == 3));
        assert!(parts.iter().all(|part| json(part) < exact));
        let mut all = joined(&parts);
        all.generation = 3;
        assert_eq!(all, ledger);
    }

    #[test]
    fn a_ledger_that_fits_or_is_empty_is_one_part() {
        let small = BatchLedger {
            delivered: vec![key("a")],
            ..Default::default()
        };
        assert_eq!(small.clone().split(400_000).unwrap(), vec![small]);
        assert_eq!(
            BatchLedger::default().split(400_000).unwrap(),
            vec![BatchLedger::default()]
        );
    }

    #[test]
    fn an_entry_larger_than_an_item_alone_is_refused() {
        let ledger = BatchLedger {
            delivered: vec![wide(1)],
            ..Default::default()
        };
        let err = ledger.split(500).unwrap_err();
        assert_eq!((err.bytes, err.max), (1026, 500));
        assert!(err.entry.contains("kkk"), "{}", err.entry);
    }

    /// Issue 12, defect 4: sync-start's rejections were cut by a loose estimate; keys
    /// that JSON escapes (quotes: twice their length) overflowed the item. The split
    /// measures the escaped text.
    #[test]
    fn rejections_split_by_their_escaped_length() {
        let rejections: Vec<RecordedRejection> = (0..300)
            .map(|i| RecordedRejection {
                rejection: Rejection {
                    key: Some(key(&format!("{}{i:06}", "\"".repeat(1018)))),
                    object: "exports/customers/a.jsonl".into(),
                    line: i as u64 + 1,
                    code: "non_unique_primary_key".into(),
                    reason: "non-unique primary key".into(),
                },
                first_failed_at: None,
                in_index: false,
                payload: None,
            })
            .collect();
        let max = 100_000;
        let chunks = split_json_array(&rejections, max, |r| r.rejection.object.clone()).unwrap();
        assert!(chunks.len() >= 6, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(json(chunk) <= max, "a chunk of {} bytes", json(chunk));
        }
        assert_eq!(chunks.concat(), rejections);
        let exact = json(&rejections[..3]);
        assert_eq!(
            split_json_array(&rejections[..3], exact, |_| String::new())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            split_json_array(&rejections[..3], exact - 1, |_| String::new())
                .unwrap()
                .len(),
            2
        );
        assert!(split_json_array(&rejections[..1], 100, |_| "it".into()).is_err());
        assert!(split_json_array(&rejections[..0], 100, |_| String::new())
            .unwrap()
            .is_empty());
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
