//! One row on a delivery queue: the SQS message body.
//!
//! One row per message is what makes per-row backoff possible (each message has its own
//! visibility timeout and receive count). The body carries what the delivery function
//! and the finalizer need so neither has to read DynamoDB per row.

use serde::{Deserialize, Serialize};

use crate::domain::{
    ids::{PrimaryKey, RunId, SyncId},
    row::RowFields,
};

/// The body of one delivery-queue message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowMessage {
    /// The run that planned the row.
    pub run_id: RunId,
    /// The run's planning attempt that sent it (see `RunRecord::generation`): a copy
    /// from an attempt the run has since replaced is dropped. Absent (0) in bodies of a
    /// run's first attempt, as in bodies written before attempts were numbered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// The sync the row belongs to.
    pub sync_id: SyncId,
    /// The row's primary key.
    pub key: PrimaryKey,
    /// The row's fields as the destination receives them (JSON text, spliced verbatim).
    pub row: RowFields,
    /// Whether the key was in the failed-row index when the run started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub carried_over: bool,
    /// When the key first failed (carried-over rows), kept across runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed_at: Option<String>,
    /// Attempts spent on the key by earlier runs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prior_attempts: u32,
    /// In-run attempts spent by earlier copies of this message. A rate-limited row is
    /// re-enqueued as a fresh copy (whose `ApproximateReceiveCount` restarts at 1), so
    /// the row's attempt is `attempts_before + ApproximateReceiveCount`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_before: u32,
    /// How often a rate limit deferred the row in this run (bounded; see delivery).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limit_deferrals: u32,
    /// When a retry's backoff ends (unix seconds), for a backoff longer than SQS's
    /// 15-minute delay: the row waits as delayed copies, each gone back to the queue
    /// until then without being sent or spending an attempt (a row waiting out a
    /// backoff is never held invisible, so it does not count toward the queue's
    /// in-flight limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<i64>,
    /// Whether delivery re-enqueued this message as the copy of a row to retry after a
    /// backoff: its original may still be alive beside it (a delete SQS refused, an
    /// invocation that died before the delete), so its sends are counted before they
    /// go (see `resync_shared::aws::runs::sends`). A rate limit's copy is not marked:
    /// it is counted after its answer, so a long limit costs no write per deferral.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copied: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A run's rows packed into one message (the destination's `packing`): a *segment* of
/// up to the destination's batch size, which delivery sends as one request. A row that
/// needs another try leaves its segment as a [`RowMessage`] of its own (a retry's
/// copy, a rate limit's deferral), so per-row backoff is kept; the segment itself is
/// deleted once its rows are settled and never hidden for a backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMessage {
    /// Its place among the segments of its planning attempt (0, 1, …). The first
    /// field of the body, which is how a segment's body is told from a row's
    /// ([`QueueMessage::from_body`]).
    pub segment: u64,
    /// The run that planned the rows.
    pub run_id: RunId,
    /// The planning attempt that sent it (as [`RowMessage::generation`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// The sync the rows belong to.
    pub sync_id: SyncId,
    /// The rows, in plan order. The last field of the body (see [`SegmentBody`]).
    pub rows: Vec<PackedRow>,
}

/// One row of a segment: what a [`RowMessage`] carries beyond its run, less what only
/// a row's later copies carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedRow {
    /// The row's primary key.
    pub key: PrimaryKey,
    /// The row's fields.
    pub row: RowFields,
    /// Whether the key was in the failed-row index when the run started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub carried_over: bool,
    /// When the key first failed (carried-over rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed_at: Option<String>,
    /// Attempts spent on the key by earlier runs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prior_attempts: u32,
    /// Attempts spent before this message: an earlier planning attempt's (a re-plan's
    /// carry), or earlier copies' (a segment copy of rows to retry or defer). The row's
    /// attempt is `attempts_before + ApproximateReceiveCount`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_before: u32,
    /// As [`RowMessage::rate_limit_deferrals`] (a segment copy of deferred rows).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limit_deferrals: u32,
    /// As [`RowMessage::backoff_until`] (a segment copy of rows to retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<i64>,
    /// As [`RowMessage::copied`]: the row's sends are counted before they go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copied: bool,
}

impl From<RowMessage> for PackedRow {
    fn from(message: RowMessage) -> Self {
        Self {
            key: message.key,
            row: message.row,
            carried_over: message.carried_over,
            first_failed_at: message.first_failed_at,
            prior_attempts: message.prior_attempts,
            attempts_before: message.attempts_before,
            rate_limit_deferrals: message.rate_limit_deferrals,
            backoff_until: message.backoff_until,
            copied: message.copied,
        }
    }
}

/// What the body of `SegmentMessage` starts with, and a row's never does.
const SEGMENT_BODY_START: &str = "{\"segment\":";

/// A segment's body built row by row, so sync-start knows its size before it adds a
/// row (a message must fit the queue's largest).
#[derive(Debug, Clone)]
pub struct SegmentBody {
    /// The body so far, without its closing `]}`.
    text: String,
    rows: usize,
}

impl SegmentBody {
    /// An empty segment of a run's planning attempt.
    pub fn new(segment: u64, run_id: &RunId, generation: u32, sync_id: &SyncId) -> Self {
        let empty = SegmentMessage {
            segment,
            run_id: run_id.clone(),
            generation,
            sync_id: sync_id.clone(),
            rows: Vec::new(),
        };
        let mut text = serde_json::to_string(&empty).expect("a segment always serialises");
        // `…"rows":[]}`: the rows go before the last two characters.
        text.truncate(text.len() - 2);
        Self { text, rows: 0 }
    }

    /// The body's size with one more row of `row_json` bytes.
    pub fn bytes_with(&self, row_json: usize) -> usize {
        self.text.len() + row_json + usize::from(self.rows > 0) + 2
    }

    /// Rows so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Adds a row's JSON ([`PackedRow::to_json`]).
    pub fn push(&mut self, row_json: &str) {
        if self.rows > 0 {
            self.text.push(',');
        }
        self.text.push_str(row_json);
        self.rows += 1;
    }

    /// The message body.
    pub fn finish(mut self) -> String {
        self.text.push_str("]}");
        self.text
    }
}

impl PackedRow {
    /// The row's JSON inside a segment's body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a PackedRow always serialises")
    }

    /// Whether SQS takes the row's text inside a message: it refuses U+FFFE and U+FFFF
    /// (JSON text holds no other character outside SQS's set), and a row it would
    /// refuse must not take its segment's other rows with it.
    pub fn fits_a_message(row_json: &str) -> bool {
        !row_json.contains(['\u{FFFE}', '\u{FFFF}'])
    }
}

impl SegmentMessage {
    /// The message body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a SegmentMessage always serialises")
    }

    /// The rows as the single-row messages they leave as when they need another try.
    pub fn into_rows(self) -> impl Iterator<Item = RowMessage> {
        let Self {
            run_id,
            generation,
            sync_id,
            rows,
            ..
        } = self;
        rows.into_iter().map(move |row| RowMessage {
            run_id: run_id.clone(),
            generation,
            sync_id: sync_id.clone(),
            key: row.key,
            row: row.row,
            carried_over: row.carried_over,
            first_failed_at: row.first_failed_at,
            prior_attempts: row.prior_attempts,
            attempts_before: row.attempts_before,
            rate_limit_deferrals: row.rate_limit_deferrals,
            backoff_until: row.backoff_until,
            copied: row.copied,
        })
    }
}

/// The body of any delivery-queue message.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueMessage {
    /// A segment of rows.
    Segment(SegmentMessage),
    /// One row.
    Row(RowMessage),
}

impl QueueMessage {
    /// Parses a message body: a segment's starts with its `segment` field.
    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        if body.starts_with(SEGMENT_BODY_START) {
            serde_json::from_str(body).map(Self::Segment)
        } else {
            RowMessage::from_body(body).map(Self::Row)
        }
    }

    /// Its rows as single-row messages.
    pub fn into_rows(self) -> Vec<RowMessage> {
        match self {
            Self::Segment(segment) => segment.into_rows().collect(),
            Self::Row(row) => vec![row],
        }
    }
}

impl RowMessage {
    /// The idempotency key destinations receive for this row: `run_id:primary_key`.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.run_id, self.key)
    }

    /// The message body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a RowMessage always serialises")
    }

    /// Parses a message body.
    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_omit_defaults() {
        let message = RowMessage {
            run_id: RunId::parse("r1").unwrap(),
            generation: 0,
            sync_id: SyncId::parse("accounts").unwrap(),
            key: PrimaryKey::parse("42").unwrap(),
            row: serde_json::json!({"id": 42, "name": "x"})
                .as_object()
                .unwrap()
                .clone()
                .try_into()
                .unwrap(),
            carried_over: false,
            first_failed_at: None,
            prior_attempts: 0,
            attempts_before: 0,
            rate_limit_deferrals: 0,
            backoff_until: None,
            copied: false,
        };
        let body = message.to_body();
        assert!(!body.contains("carried_over"));
        assert!(!body.contains("prior_attempts"));
        assert!(!body.contains("generation"));
        assert_eq!(RowMessage::from_body(&body).unwrap(), message);
        assert_eq!(message.idempotency_key(), "r1:42");

        let replanned = RowMessage {
            generation: 2,
            ..message
        };
        let body = replanned.to_body();
        assert!(body.contains(r#""generation":2"#), "{body}");
        assert_eq!(RowMessage::from_body(&body).unwrap(), replanned);
        assert_eq!(
            replanned.idempotency_key(),
            "r1:42",
            "one row of one run, whichever attempt sent it"
        );
    }

    fn packed(key: &str, carried: bool) -> PackedRow {
        PackedRow {
            key: PrimaryKey::parse(key).unwrap(),
            row: RowFields::from_text(format!(r#"{{"id":"{key}","n":"\u00e9"}}"#)).unwrap(),
            carried_over: carried,
            first_failed_at: carried.then(|| "2026-11-30T00:00:00Z".to_owned()),
            prior_attempts: u32::from(carried) * 3,
            attempts_before: 0,
            rate_limit_deferrals: 0,
            backoff_until: None,
            copied: false,
        }
    }

    #[test]
    fn a_segment_built_row_by_row_is_its_serialised_body_and_reads_back_as_rows() {
        let run = RunId::parse("r1").unwrap();
        let sync = SyncId::parse("accounts").unwrap();
        let rows = vec![packed("a", false), packed("b", true)];
        let mut body = SegmentBody::new(7, &run, 2, &sync);
        assert_eq!(body.bytes_with(0), body.clone().finish().len());
        for row in &rows {
            let json = row.to_json();
            let expected = body.bytes_with(json.len());
            body.push(&json);
            assert_eq!(body.clone().finish().len(), expected);
        }
        assert_eq!(body.rows(), 2);
        let text = body.finish();
        let segment = SegmentMessage {
            segment: 7,
            run_id: run.clone(),
            generation: 2,
            sync_id: sync.clone(),
            rows,
        };
        assert_eq!(text, segment.to_body());
        let QueueMessage::Segment(parsed) = QueueMessage::from_body(&text).unwrap() else {
            panic!("a segment's body reads as a segment: {text}");
        };
        assert_eq!(parsed, segment);
        let singles = QueueMessage::Segment(parsed).into_rows();
        assert_eq!(singles.len(), 2);
        assert_eq!(singles[1].key.as_str(), "b");
        assert!(singles[1].carried_over);
        assert_eq!(singles[1].prior_attempts, 3);
        assert_eq!(singles[1].generation, 2);
        assert_eq!(singles[1].idempotency_key(), "r1:b");
        assert!(!singles[0].copied && singles[0].attempts_before == 0);
    }

    #[test]
    fn a_segment_copy_keeps_each_rows_attempts_deferrals_and_backoff() {
        let row = RowMessage {
            attempts_before: 2,
            rate_limit_deferrals: 3,
            backoff_until: Some(1_800_000_000),
            copied: true,
            ..QueueMessage::Segment(SegmentMessage {
                segment: 1,
                run_id: RunId::parse("r1").unwrap(),
                generation: 0,
                sync_id: SyncId::parse("accounts").unwrap(),
                rows: vec![packed("a", true)],
            })
            .into_rows()
            .remove(0)
        };
        let copy = SegmentMessage {
            segment: 1,
            run_id: row.run_id.clone(),
            generation: 0,
            sync_id: row.sync_id.clone(),
            rows: vec![PackedRow::from(row.clone())],
        };
        let back = QueueMessage::from_body(&copy.to_body())
            .unwrap()
            .into_rows();
        assert_eq!(back, vec![row]);
    }

    #[test]
    fn a_row_body_is_not_taken_for_a_segment() {
        let body = r#"{"run_id":"r1","sync_id":"accounts","key":"segment","row":{"segment":1}}"#;
        assert!(matches!(
            QueueMessage::from_body(body).unwrap(),
            QueueMessage::Row(row) if row.key.as_str() == "segment"
        ));
    }

    #[test]
    fn rows_sqs_would_refuse_are_known_before_they_share_a_segment() {
        assert!(PackedRow::fits_a_message(r#"{"a":"\ud83d\ude00 é"}"#));
        assert!(!PackedRow::fits_a_message("{\"a\":\"\u{FFFF}\"}"));
        assert!(!PackedRow::fits_a_message("{\"a\":\"\u{FFFE}\"}"));
    }

    #[test]
    fn bodies_written_before_attempts_were_numbered_are_a_first_attempts() {
        let body = r#"{"run_id":"r1","sync_id":"accounts","key":"42","row":{"id":42}}"#;
        assert_eq!(RowMessage::from_body(body).unwrap().generation, 0);
    }
}
