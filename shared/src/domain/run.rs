//! A run's life and a sync's lock, as values: where a run is, what its record holds,
//! what planning recorded, and the rule that tells which update made a run look
//! settled. The runs table adapter (`crate::aws::runs`) stores and reads them.

use time::OffsetDateTime;

use super::{
    ids::{RunId, SyncId},
    ledger::RunCounts,
    rejections::RejectionCounts,
};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// sync-start is reading the source and enqueueing.
    Planning,
    /// Rows are on the queue; the finalizer closes it when all are settled.
    Delivering,
    /// Closed with exact counts.
    Closed,
    /// Planning failed; the sync was released and the run's source will be read again.
    Abandoned,
}

impl RunStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planning => "planning",
            Self::Delivering => "delivering",
            Self::Closed => "closed",
            Self::Abandoned => "abandoned",
        }
    }

    /// Reads a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "planning" => Some(Self::Planning),
            "delivering" => Some(Self::Delivering),
            "closed" => Some(Self::Closed),
            "abandoned" => Some(Self::Abandoned),
            _ => None,
        }
    }
}

/// A run record.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// Its sync.
    pub sync_id: SyncId,
    /// Where it is.
    pub status: RunStatus,
    /// When sync-start first opened it (`None` if the stored time is unreadable).
    pub started_at: Option<OffsetDateTime>,
    /// When its current planning attempt began: the first, a resumed one (a retried
    /// invocation) or one after an abandon (`None` for records written before it was
    /// kept, or unreadable). The finalizer's staleness rule counts from here.
    pub planning_since: Option<OffsetDateTime>,
    /// Its planning attempt: 0 for the first, one more each time the run is planned
    /// again (a retried or duplicate invocation of its event resuming a planning, or
    /// planning it after an abandon). Every message, ledger item and rejection chunk
    /// carries the attempt that made it; only the current attempt's count, so a plan
    /// made again — from a moved cursor or a new export — is tallied exactly.
    pub generation: u32,
    /// The latest planning attempt that began enqueueing rows (`None` when none did):
    /// a later attempt waits for that attempt's deliveries to end before it reads what
    /// they settled (see `RunStore::mark_sending`).
    pub sending_attempt: Option<u32>,
    /// When the run must end (its sync's `run_deadline_secs` after its current planning
    /// attempt began; `None` for records written before deadlines were kept, or
    /// unreadable). Delivery sets no wait beyond it and closes what is not delivered by
    /// then as failed, so the run closes (I7).
    pub deadline: Option<OffsetDateTime>,
    /// Rows enqueued.
    pub enqueued: u64,
    /// Rows rejected before the queue.
    pub rejected: u64,
    /// The rejected rows by reason code (exact; they add up to `rejected`).
    pub rejected_by_code: RejectionCounts,
    /// Rows carried over from the index.
    pub carried_over: u64,
    /// Index keys that wait for the source (no payload to retry with).
    pub waiting: u64,
    /// The name cursor to store when the run closes (runs planned before watermarks).
    pub cursor_after: Option<String>,
    /// The source watermark (Unix ms) to store when the run closes.
    pub watermark_after: Option<i64>,
    /// Source objects the run could not read whole (they stay pending).
    pub pending_objects: u64,
    /// Source objects read.
    pub source_objects: u64,
    /// Keys settled according to delivery invocations (an upper bound under duplicate
    /// deliveries; the finalizer's tally is exact).
    pub settled_hint: u64,
    /// Final counts, once closed.
    pub counts: Option<RunCounts>,
    /// Failed-row index size after close.
    pub failed_index_size: Option<u64>,
    /// When it closed (or was abandoned).
    pub closed_at: Option<OffsetDateTime>,
    /// How far earlier finalizer invocations got with its close, which resumes there.
    pub close_progress: CloseProgress,
}

/// How far a run's close got before its finalizer invocation ran short of time: the
/// close writes the index in key order, then the keyed rejections chunk by chunk, and an
/// invocation near its deadline records this and leaves the rest to the next one (every
/// write is idempotent, so one that died without recording only repeats writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseProgress {
    /// The last key of the index update written (its failures, as puts, and recovered
    /// keys, as deletes, one list in key order).
    pub index_through: Option<String>,
    /// Keyed rejection chunks written.
    pub rejection_chunks: u64,
}

impl RunRecord {
    /// The time left until the run's deadline at `now` (zero once it passed; `None`
    /// without a deadline).
    pub fn until_deadline(&self, now: OffsetDateTime) -> Option<std::time::Duration> {
        let left = self.deadline? - now;
        Some(left.try_into().unwrap_or(std::time::Duration::ZERO))
    }
}

/// What sync-start planned: recorded when the run moves to `delivering`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanSummary<'a> {
    /// The planning attempt ([`RunRecord::generation`]) that made the plan: it is
    /// recorded only while that attempt is still the run's.
    pub generation: u32,
    /// Rows enqueued.
    pub enqueued: u64,
    /// Rows rejected before the queue.
    pub rejected: u64,
    /// The rejected rows by reason code (exact).
    pub rejected_by_code: Option<&'a RejectionCounts>,
    /// Enqueued rows carried over from the failed-row index.
    pub carried_over: u64,
    /// Index keys that wait for the source (no payload to retry with).
    pub waiting: u64,
    /// Source objects read.
    pub source_objects: u64,
    /// The last object read: the sync's name cursor once the run closes (only for
    /// runs planned before watermarks; `None` now).
    pub cursor_after: Option<&'a str>,
    /// The source watermark once the run closes (see [`crate::domain::cursor`]).
    pub watermark_after: Option<i64>,
    /// Source objects not read whole.
    pub pending_objects: u64,
}

/// A sync's state item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The open run, if any.
    pub open_run: Option<RunId>,
    /// When the open run last took the lock (`None` without a lock, or unreadable).
    pub open_since: Option<OffsetDateTime>,
    /// The last source object consumed by a closed run planned before watermarks.
    pub cursor: Option<String>,
    /// The source watermark: the latest `LastModified` a closed run handled (Unix ms).
    pub watermark_ms: Option<i64>,
    /// The last run that closed.
    pub last_run: Option<RunId>,
}

/// What taking a sync's lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The sync is ours for this run; `cursor` and `watermark_ms` are where its
    /// source starts.
    Acquired {
        /// The stored name cursor (syncs last run before watermarks).
        cursor: Option<String>,
        /// The stored watermark.
        watermark_ms: Option<i64>,
    },
    /// Another run is still open.
    Busy {
        /// That run.
        open_run: RunId,
    },
}

/// A run item's progress fields as an update left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunProgress {
    /// The status after the update (`None` if unreadable).
    pub status: Option<RunStatus>,
    /// Rows enqueued (0 while planning).
    pub enqueued: u64,
    /// The settled hint after the update.
    pub settled_hint: u64,
}

impl RunProgress {
    /// Whether the update that added `added` to the settled hint (0: the update that set
    /// the enqueued count and the status) is the one that made the run look settled:
    /// delivering, with the hint at or above the enqueued count, where this update
    /// crossed. Updates of one item are serialised, so exactly one update crosses: its
    /// caller tells the finalizer, which closes the run now instead of at its next tick.
    /// The hint can over-count (a retried invocation adds its batch twice), so the
    /// crossing can come early; the finalizer then finds the ledger incomplete and its
    /// schedule closes the run as before.
    pub fn became_settled(&self, added: u64) -> bool {
        let delivering = self.status == Some(RunStatus::Delivering);
        let (hint, enqueued) = (self.settled_hint, self.enqueued);
        delivering && hint >= enqueued && (added == 0 || hint - added < enqueued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: RunStatus, enqueued: Option<u64>, hint: u64) -> RunProgress {
        RunProgress {
            status: Some(status),
            enqueued: enqueued.unwrap_or(0),
            settled_hint: hint,
        }
    }

    #[test]
    fn only_the_update_that_crosses_the_enqueued_count_reports_settled() {
        // Delivery's ADD: crosses from 90 to 100 of 100, and from 95 to 105.
        assert!(run(RunStatus::Delivering, Some(100), 100).became_settled(10));
        assert!(run(RunStatus::Delivering, Some(100), 105).became_settled(10));
        // Below the count, or already at it before this update.
        assert!(!run(RunStatus::Delivering, Some(100), 99).became_settled(10));
        assert!(!run(RunStatus::Delivering, Some(100), 120).became_settled(10));
        // While planning the count is not known yet: sync-start's update decides.
        assert!(!run(RunStatus::Planning, None, 100).became_settled(100));
        // sync-start's update (nothing added): settled when the hint is already there,
        // including a run that enqueued nothing.
        assert!(run(RunStatus::Delivering, Some(100), 100).became_settled(0));
        assert!(run(RunStatus::Delivering, Some(0), 0).became_settled(0));
        assert!(!run(RunStatus::Delivering, Some(100), 40).became_settled(0));
        // A closed run is never reported again.
        assert!(!run(RunStatus::Closed, Some(100), 110).became_settled(10));
    }

    #[test]
    fn statuses_read_back_as_stored() {
        for status in [
            RunStatus::Planning,
            RunStatus::Delivering,
            RunStatus::Closed,
            RunStatus::Abandoned,
        ] {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(RunStatus::parse("open"), None);
    }
}
