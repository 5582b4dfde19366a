//! A run's rejections in bounded memory: exact counts by reason code, a bounded sample
//! of detailed rejections, and the keyed rejections handed out in chunks as planning
//! goes, so that no state is held per rejected row.
//!
//! # The rules
//!
//! - **Counts** are exact, one counter per reason code (codes are a small fixed set
//!   that resync's own code defines).
//! - **The sample** keeps the first [`SAMPLE_PER_CODE`] rejections of each code (of at
//!   most [`MAX_SAMPLED_CODES`] codes), each with its object, line, code and reason
//!   (the reason cut to [`MAX_SAMPLE_REASON_BYTES`]); it is what `resync rejections`
//!   shows. Keyless rejections (malformed lines, missing keys, keys too long to be an
//!   index key, unreadable objects) exist only here and in the counts.
//! - **Keyed rejections** must reach the failed-row index (invariant I2), so each one
//!   goes into the current chunk; a chunk is sealed at [`CHUNK_BYTES`] of JSON and the
//!   caller writes it out (the runs table's `reject#` items) before reading on. At most
//!   one chunk is held, so memory does not grow with the rows rejected. A key already in
//!   the chunk replaces its entry (the index keeps one entry per key, the latest): an
//!   export repeating one keyed line a million times stores one entry, not a million.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::domain::{
    ids::PrimaryKey,
    ledger::{json_len, RecordedRejection},
    source::Rejection,
};

/// Detailed rejections kept per reason code.
pub const SAMPLE_PER_CODE: usize = 100;

/// Codes the sample keeps rejections of; rejections of further codes are counted only.
pub const MAX_SAMPLED_CODES: usize = 32;

/// A sampled rejection's reason is cut to this many bytes (on a character boundary).
pub const MAX_SAMPLE_REASON_BYTES: usize = 1024;

/// A chunk of keyed rejections is sealed once its JSON text reaches this length (a
/// DynamoDB item holds 400 KB; the store splits exactly if one does not fit).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Where the rejection of a row comes from when the row was not read from a source
/// object this run: a failed key retried from its stored payload.
pub const FROM_INDEX: &str = "(failed-row index)";

/// One rejection of a run's sample, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampledRejection {
    /// The rejection: object, line, code, reason and, when it has one, its key.
    #[serde(flatten)]
    pub rejection: Rejection,
    /// Whether the rejection is kept in the failed-row index (only keyed ones are).
    pub indexed: bool,
}

/// Exact rejection counts by reason code.
pub type RejectionCounts = BTreeMap<String, u64>;

/// A run's rejections while planning reads the source (see the module's rules).
#[derive(Debug, Default)]
pub struct RejectionLog {
    counts: RejectionCounts,
    sample: BTreeMap<String, Vec<SampledRejection>>,
    chunk: Vec<RecordedRejection>,
    /// Where each key of the chunk is in it, and its entry's JSON length.
    chunk_keys: HashMap<PrimaryKey, (usize, usize)>,
    chunk_bytes: usize,
    sealed: Vec<Vec<RecordedRejection>>,
    total: u64,
}

impl RejectionLog {
    /// Notes one rejection.
    pub fn push(&mut self, recorded: RecordedRejection) {
        let code = &recorded.rejection.code;
        self.total = self.total.saturating_add(1);
        match self.counts.get_mut(code) {
            Some(count) => *count = count.saturating_add(1),
            None => {
                self.counts.insert(code.clone(), 1);
            }
        }
        let room = match self.sample.get(code) {
            Some(sampled) => sampled.len() < SAMPLE_PER_CODE,
            None => self.sample.len() < MAX_SAMPLED_CODES,
        };
        if room {
            let mut rejection = recorded.rejection.clone();
            truncate(&mut rejection.reason, MAX_SAMPLE_REASON_BYTES);
            self.sample
                .entry(code.clone())
                .or_default()
                .push(SampledRejection {
                    indexed: rejection.key.is_some(),
                    rejection,
                });
        }
        let Some(key) = recorded.rejection.key.clone() else {
            return;
        };
        if let Some(&(at, earlier_len)) = self.chunk_keys.get(&key) {
            // The key is in the chunk already (every copy of a non-unique key is
            // rejected): the index keeps one entry per key, the latest, so the chunk
            // does too, with the key's earlier index entry if a copy carried it.
            let earlier = &self.chunk[at];
            let merged = RecordedRejection {
                first_failed_at: recorded
                    .first_failed_at
                    .clone()
                    .or_else(|| earlier.first_failed_at.clone()),
                in_index: recorded.in_index || earlier.in_index,
                ..recorded
            };
            let merged_len = json_len(&merged);
            self.chunk_bytes = self
                .chunk_bytes
                .saturating_sub(earlier_len)
                .saturating_add(merged_len);
            self.chunk[at] = merged;
            self.chunk_keys.insert(key, (at, merged_len));
            return;
        }
        let len = json_len(&recorded);
        if !self.chunk.is_empty()
            && self.chunk_bytes.saturating_add(len).saturating_add(1) > CHUNK_BYTES
        {
            self.seal();
        }
        // The chunk's JSON array text: brackets, elements, and commas between them.
        self.chunk_bytes = if self.chunk.is_empty() {
            len.saturating_add(2)
        } else {
            self.chunk_bytes.saturating_add(len).saturating_add(1)
        };
        self.chunk_keys.insert(key, (self.chunk.len(), len));
        self.chunk.push(recorded);
    }

    fn seal(&mut self) {
        if !self.chunk.is_empty() {
            self.sealed.push(std::mem::take(&mut self.chunk));
            self.chunk_keys.clear();
            self.chunk_bytes = 0;
        }
    }

    /// The sealed chunks of keyed rejections, to write out now (the log forgets them).
    pub fn take_sealed(&mut self) -> Vec<Vec<RecordedRejection>> {
        std::mem::take(&mut self.sealed)
    }

    /// Rejections noted so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The exact counts so far.
    pub fn counts(&self) -> &RejectionCounts {
        &self.counts
    }

    /// Keyed rejections held in memory right now (the unsealed chunk and sealed ones
    /// not taken yet).
    pub fn held(&self) -> usize {
        self.chunk.len() + self.sealed.iter().map(Vec::len).sum::<usize>()
    }

    /// Ends the log: the last chunks to write, the counts and the sample (by code, in
    /// arrival order within a code).
    pub fn finish(
        mut self,
    ) -> (
        Vec<Vec<RecordedRejection>>,
        RejectionCounts,
        Vec<SampledRejection>,
    ) {
        self.seal();
        let sample = self.sample.into_values().flatten().collect();
        (self.sealed, self.counts, sample)
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(key: Option<&str>, code: &str, line: u64) -> RecordedRejection {
        RecordedRejection {
            rejection: Rejection {
                key: key.map(|k| PrimaryKey::parse(k).unwrap()),
                object: "exports/a.jsonl".into(),
                line,
                code: code.into(),
                reason: "r".repeat(3000),
            },
            first_failed_at: None,
            in_index: false,
            payload: None,
        }
    }

    /// Issue 13, item 2: every rejected row was held in sync-start (and again in the
    /// finalizer). 200,000 keyless rejections leave exact counts, a sample of 100
    /// and nothing per row.
    #[test]
    fn keyless_rejections_are_counted_and_sampled_only() {
        let mut log = RejectionLog::default();
        for line in 1..=200_000 {
            log.push(rejection(None, "missing_primary_key", line));
            assert_eq!(log.held(), 0);
        }
        log.push(rejection(None, "malformed_line", 7));
        assert_eq!(log.total(), 200_001);
        let (chunks, counts, sample) = log.finish();
        assert!(chunks.is_empty());
        assert_eq!(counts["missing_primary_key"], 200_000);
        assert_eq!(counts["malformed_line"], 1);
        assert_eq!(sample.len(), SAMPLE_PER_CODE + 1);
        let lines: Vec<u64> = sample
            .iter()
            .filter(|s| s.rejection.code == "missing_primary_key")
            .map(|s| s.rejection.line)
            .collect();
        assert_eq!(lines, (1..=100).collect::<Vec<_>>(), "the first 100");
        assert!(sample
            .iter()
            .all(|s| !s.indexed && s.rejection.reason.len() <= MAX_SAMPLE_REASON_BYTES));
    }

    /// Issue 13, item 2: keyed rejections are handed out in sealed chunks of bounded
    /// size as they come, and every one of them is handed out exactly once.
    #[test]
    fn keyed_rejections_leave_in_bounded_chunks() {
        let mut log = RejectionLog::default();
        let mut written = 0;
        let mut most_held = 0;
        for i in 0..20_000 {
            log.push(rejection(
                Some(&format!("k{i}")),
                "non_unique_primary_key",
                i,
            ));
            most_held = most_held.max(log.held());
            for chunk in log.take_sealed() {
                let bytes = serde_json::to_string(&chunk).unwrap().len();
                assert!(bytes <= CHUNK_BYTES, "a chunk of {bytes} bytes");
                written += chunk.len();
            }
        }
        let (last, counts, sample) = log.finish();
        written += last.iter().map(Vec::len).sum::<usize>();
        assert_eq!(written, 20_000);
        assert_eq!(counts["non_unique_primary_key"], 20_000);
        assert_eq!(sample.len(), SAMPLE_PER_CODE);
        assert!(sample.iter().all(|s| s.indexed));
        assert!(most_held < 200, "held {most_held} rejections at once");
    }

    /// Issue 13, item 2: one keyed line repeated (every copy a non-unique key) stored
    /// one rejection per row. The chunk keeps one entry per key, the latest, with the
    /// index entry an earlier copy carried.
    #[test]
    fn a_repeated_key_is_one_entry_of_its_chunk() {
        let mut log = RejectionLog::default();
        let mut carried = rejection(Some("same"), "non_unique_primary_key", 1);
        carried.first_failed_at = Some("2026-11-01T00:00:00Z".into());
        carried.in_index = true;
        log.push(carried);
        for line in 2..=50_000 {
            log.push(rejection(Some("same"), "non_unique_primary_key", line));
            assert!(log.take_sealed().is_empty());
        }
        let (chunks, counts, _) = log.finish();
        assert_eq!(counts["non_unique_primary_key"], 50_000);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), 1);
        let kept = &chunks[0][0];
        assert_eq!(kept.rejection.line, 50_000, "the latest copy");
        assert_eq!(
            kept.first_failed_at.as_deref(),
            Some("2026-11-01T00:00:00Z")
        );
        assert!(kept.in_index);
        let bytes = serde_json::to_string(&chunks[0]).unwrap().len();
        assert!(bytes < 4_000, "{bytes}");
    }

    #[test]
    fn only_a_bounded_number_of_codes_is_sampled() {
        let mut log = RejectionLog::default();
        for code in 0..(MAX_SAMPLED_CODES + 5) {
            log.push(rejection(None, &format!("code_{code}"), 1));
        }
        let (_, counts, sample) = log.finish();
        assert_eq!(counts.len(), MAX_SAMPLED_CODES + 5);
        assert_eq!(sample.len(), MAX_SAMPLED_CODES);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let mut text = "é".repeat(10);
        truncate(&mut text, 6);
        assert!(text.len() <= 6 && text.ends_with('…'), "{text}");
        let mut short = "abc".to_owned();
        truncate(&mut short, 6);
        assert_eq!(short, "abc");
    }
}
