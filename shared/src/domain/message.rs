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

    #[test]
    fn bodies_written_before_attempts_were_numbered_are_a_first_attempts() {
        let body = r#"{"run_id":"r1","sync_id":"accounts","key":"42","row":{"id":42}}"#;
        assert_eq!(RowMessage::from_body(body).unwrap().generation, 0);
    }
}
