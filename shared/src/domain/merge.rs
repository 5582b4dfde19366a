//! Planning a run: the run's source rows merged with the sync's failed-row index.
//!
//! Rules (DESIGN.md):
//! - each key at most once per run;
//! - a key that appears more than once in the run's source is rejected, every copy,
//!   with `non_unique_primary_key` (the source is ambiguous about its values);
//! - a failed key present in the source is retried with the source's current values;
//! - a failed key absent from the source is retried with its stored payload;
//! - a failed key with no stored payload (it was rejected) waits for the source to send
//!   it again.
//!
//! Finding duplicates needs the whole source before the first row can be sent, so the
//! source is read twice: a first pass counts 64-bit key hashes ([`DuplicateFinder`]), the
//! second plans. Memory is 9 bytes a distinct key instead of the whole source; a hash
//! collision (≈ 3·10⁻⁸ for a million keys) would wrongly reject two rows as duplicates,
//! never deliver a duplicate.
//!
//! The index is held as keys, not payloads ([`CarriedEntry`]: the key, when it first
//! failed, its attempts — about 100 bytes a failed key whatever its row's width). The
//! stored payloads of the keys the source did not mention ([`Leftovers`]) are read back
//! from the index after the source, one page at a time, and sent as they come.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::Arc,
};

use crate::domain::{ids::PrimaryKey, row::RowFields, source::Rejection, source::SourceRow};

/// A failed-row index entry as planning holds it: no payload (see [`Leftovers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CarriedEntry {
    /// When the key first failed.
    pub first_failed_at: String,
    /// Attempts spent by earlier runs.
    pub attempts: u32,
}

/// A row to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRow {
    /// Its key.
    pub key: PrimaryKey,
    /// Its fields.
    pub fields: RowFields,
    /// The index entry it carries over, if any.
    pub carried: Option<CarriedEntry>,
    /// Where this run read it (`None`: retried from its stored payload), so a row that
    /// cannot be queued is rejected with its object and line.
    pub origin: Option<RowOrigin>,
}

/// The source object and line a planned row was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOrigin {
    /// The S3 object (shared by its rows).
    pub object: Arc<str>,
    /// The row's 1-based line.
    pub line: u64,
}

/// A 64-bit hash of a key, the same for both passes (`DefaultHasher::new` uses fixed keys).
pub fn key_hash(key: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// First pass: collects every key's hash; duplicates are equal neighbours once sorted.
/// 8 bytes a *distinct* key (a hash map of counts would take 2–3 times that): whenever
/// the list doubles, it is sorted, the hashes seen more than once move to the
/// duplicates, and each hash is kept once — so a source that repeats keys (one line
/// exported a million times) holds one hash, not one per row.
#[derive(Debug, Default)]
pub struct DuplicateFinder {
    hashes: Vec<u64>,
    repeated: HashSet<u64>,
    compact_at: usize,
}

/// Hashes collected before the first compaction.
const FIRST_COMPACTION: usize = 1 << 20;

impl DuplicateFinder {
    /// Notes one occurrence.
    pub fn observe(&mut self, key: &str) {
        self.hashes.push(key_hash(key));
        if self.hashes.len() >= self.compact_at.max(FIRST_COMPACTION) {
            self.compact();
            self.compact_at = self.hashes.len().saturating_mul(2);
        }
    }

    /// Sorts, moves repeated hashes to `repeated`, keeps each hash once.
    fn compact(&mut self) {
        self.hashes.sort_unstable();
        for pair in self.hashes.windows(2) {
            if pair[0] == pair[1] {
                self.repeated.insert(pair[0]);
            }
        }
        self.hashes.dedup();
    }

    /// Hashes held right now (at most one per distinct key after a compaction, plus
    /// those observed since).
    pub fn held(&self) -> usize {
        self.hashes.len() + self.repeated.len()
    }

    /// The hashes of keys seen more than once.
    pub fn duplicates(mut self) -> HashSet<u64> {
        self.compact();
        self.repeated
    }
}

/// Second pass: decides each source row and, at the end, what the index carries over.
#[derive(Debug)]
pub struct RunPlanner {
    index: HashMap<PrimaryKey, CarriedEntry>,
    duplicates: HashSet<u64>,
}

/// What planning made of one source row.
#[derive(Debug, PartialEq)]
pub enum Planned {
    /// Enqueue it.
    Enqueue(PlannedRow),
    /// Reject it; the key's index entry comes along when it had one.
    Reject(Rejection, Option<CarriedEntry>),
}

impl RunPlanner {
    /// Starts planning with the sync's failed-row index and the duplicate key hashes.
    pub fn new(index: HashMap<PrimaryKey, CarriedEntry>, duplicates: HashSet<u64>) -> Self {
        Self { index, duplicates }
    }

    /// Plans one source row read from `object` at `line`.
    pub fn plan(&mut self, row: SourceRow, object: &Arc<str>) -> Planned {
        let line = row.line;
        if self.duplicates.contains(&key_hash(row.key.as_str())) {
            // The rejection replaces the key's index entry, so it must not be carried too.
            let carried = self.index.remove(&row.key);
            return Planned::Reject(
                Rejection {
                    key: Some(row.key),
                    object: object.to_string(),
                    line,
                    code: "non_unique_primary_key".into(),
                    reason:
                        "non-unique primary key: the key occurs more than once in this run's source"
                            .into(),
                },
                carried,
            );
        }
        let carried = self.index.remove(&row.key);
        Planned::Enqueue(PlannedRow {
            key: row.key,
            fields: row.fields,
            carried,
            origin: Some(RowOrigin {
                object: object.clone(),
                line,
            }),
        })
    }

    /// After the source: the failed keys it did not mention, to be retried from their
    /// stored payloads.
    pub fn leftovers(self) -> Leftovers {
        Leftovers {
            index: self.index,
            waiting: 0,
        }
    }
}

/// The failed keys the source did not mention. Their stored payloads are read back from
/// the index (every entry, in the index's key order) and each is planned as it comes
/// ([`Leftovers::plan`]); what is left at the end waits for the source.
#[derive(Debug)]
pub struct Leftovers {
    index: HashMap<PrimaryKey, CarriedEntry>,
    waiting: usize,
}

impl Leftovers {
    /// Whether no key is left (the index need not be read again).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// One index entry read back with its stored payload (`None`: it has none, as a
    /// rejected row): the row to retry if the key is a leftover whose payload reads.
    pub fn plan(&mut self, key: &PrimaryKey, payload: Option<String>) -> Option<PlannedRow> {
        let (key, entry) = self.index.remove_entry(key)?;
        match payload.map(RowFields::from_text) {
            Some(Ok(fields)) => Some(PlannedRow {
                key,
                fields,
                carried: Some(entry),
                origin: None,
            }),
            Some(Err(err)) => {
                tracing::error!(key = %key, error = %err, "unreadable stored payload; the key waits for the source");
                self.waiting += 1;
                None
            }
            None => {
                self.waiting += 1;
                None
            }
        }
    }

    /// After the index was read back: the keys that wait for the source (no payload, an
    /// unreadable one, or an entry gone from the index since it was loaded).
    pub fn waiting(self) -> usize {
        self.waiting + self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> PrimaryKey {
        PrimaryKey::parse(k).unwrap()
    }

    fn row(k: &str, v: i64) -> SourceRow {
        SourceRow {
            key: key(k),
            fields: json!({"id": k, "v": v})
                .as_object()
                .unwrap()
                .clone()
                .try_into()
                .unwrap(),
            line: 0,
        }
    }

    fn carried(attempts: u32) -> CarriedEntry {
        CarriedEntry {
            first_failed_at: "2026-11-01T00:00:00Z".into(),
            attempts,
        }
    }

    fn payload(v: i64) -> Option<String> {
        Some(json!({"v": v}).to_string())
    }

    fn planner(index: Vec<(&str, CarriedEntry)>, source: &[SourceRow]) -> RunPlanner {
        let mut finder = DuplicateFinder::default();
        source.iter().for_each(|r| finder.observe(r.key.as_str()));
        RunPlanner::new(
            index.into_iter().map(|(k, e)| (key(k), e)).collect(),
            finder.duplicates(),
        )
    }

    #[test]
    fn the_source_values_win_over_a_stored_payload() {
        let source = vec![row("a", 2)];
        let mut planner = planner(vec![("a", carried(1))], &source);
        let Planned::Enqueue(planned) = planner.plan(source[0].clone(), &"o".into()) else {
            panic!("expected enqueue")
        };
        assert_eq!(planned.fields.to_map().unwrap()["v"], json!(2));
        assert_eq!(
            planned.carried.unwrap().first_failed_at,
            "2026-11-01T00:00:00Z"
        );
        let mut leftovers = planner.leftovers();
        assert!(leftovers.is_empty(), "a key is planned once");
        assert_eq!(leftovers.plan(&key("a"), payload(1)), None);
        assert_eq!(leftovers.waiting(), 0);
    }

    #[test]
    fn failed_keys_absent_from_the_source_are_retried_from_their_payload() {
        let source = vec![row("a", 1)];
        let mut planner = planner(vec![("b", carried(7))], &source);
        assert!(matches!(
            planner.plan(source[0].clone(), &"o".into()),
            Planned::Enqueue(PlannedRow { carried: None, .. })
        ));
        let mut leftovers = planner.leftovers();
        assert_eq!(
            leftovers.plan(&key("a"), payload(1)),
            None,
            "not a leftover"
        );
        let planned = leftovers.plan(&key("b"), payload(7)).unwrap();
        assert_eq!(planned.key.as_str(), "b");
        assert_eq!(planned.fields.to_map().unwrap()["v"], json!(7));
        assert_eq!(planned.carried.unwrap().attempts, 7);
        assert_eq!(leftovers.waiting(), 0);
    }

    #[test]
    fn every_copy_of_a_duplicate_key_is_rejected() {
        let source = vec![row("a", 1), row("b", 1), row("a", 2)];
        let mut planner = planner(vec![], &source);
        let outcomes: Vec<_> = source
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                r.line = i as u64 + 1;
                planner.plan(r, &"o".into())
            })
            .collect();
        let rejected: Vec<u64> = outcomes
            .iter()
            .filter_map(|p| match p {
                Planned::Reject(r, _) => {
                    assert_eq!(r.code, "non_unique_primary_key");
                    Some(r.line)
                }
                Planned::Enqueue(_) => None,
            })
            .collect();
        assert_eq!(rejected, vec![1, 3]);
    }

    #[test]
    fn a_duplicate_key_in_the_index_is_not_also_carried_over() {
        let source = vec![row("a", 1), row("a", 2)];
        let mut planner = planner(vec![("a", carried(0))], &source);
        let Planned::Reject(_, Some(entry)) = planner.plan(source[0].clone(), &"o".into()) else {
            panic!("expected a rejection carrying the index entry")
        };
        assert_eq!(entry.first_failed_at, "2026-11-01T00:00:00Z");
        assert!(matches!(
            planner.plan(source[1].clone(), &"o".into()),
            Planned::Reject(_, None)
        ));
        let leftovers = planner.leftovers();
        assert!(leftovers.is_empty());
        assert_eq!(leftovers.waiting(), 0);
    }

    #[test]
    fn rejected_index_entries_wait_for_the_source() {
        let planner = planner(
            vec![("y", carried(0)), ("z", carried(0)), ("gone", carried(0))],
            &[],
        );
        let mut leftovers = planner.leftovers();
        assert_eq!(leftovers.plan(&key("y"), None), None, "no payload");
        assert_eq!(
            leftovers.plan(&key("z"), Some("not json".into())),
            None,
            "an unreadable payload"
        );
        // "gone" is not read back (deleted since it was loaded): it waits too.
        assert_eq!(leftovers.waiting(), 3);
    }

    /// Issue 13, item 2: a source repeating one line (7 MB of gzip expanding to 2 GB)
    /// held 8 bytes per row in the first pass. It holds one hash per distinct key.
    #[test]
    fn a_repeated_key_is_held_once_however_often_it_occurs() {
        let mut finder = DuplicateFinder::default();
        for _ in 0..3_000_000 {
            finder.observe("same");
        }
        for i in 0..10 {
            finder.observe(&format!("k{i}"));
        }
        finder.observe("k3");
        assert!(finder.held() < FIRST_COMPACTION + 20, "{}", finder.held());
        let duplicates = finder.duplicates();
        assert_eq!(
            duplicates,
            [key_hash("same"), key_hash("k3")].into_iter().collect()
        );
    }

    #[test]
    fn key_hashes_are_the_same_in_both_passes() {
        assert_eq!(key_hash("acct-1"), key_hash("acct-1"));
        assert_ne!(key_hash("acct-1"), key_hash("acct-2"));
    }
}
