//! The source cursor: which of the objects under a sync's prefix a run reads.
//!
//! # Why not a name
//!
//! A cursor that is the last object name read passes data it never read: an object
//! that sorts before it but arrives later (parallel unloads finish out of order) is
//! never listed again, a repaired object re-uploaded under the same name is taken for
//! the one already read, and an object that could not be read whole is behind the
//! cursor as soon as a later one is read.
//!
//! # The rules
//!
//! The cursor is a **watermark** — the latest `LastModified` of the objects the sync's
//! closed runs handled (S3's clock, never the local one) — with a **lookback window**
//! (`source.lookback_secs`, default one day), and a record per object the sync knows:
//!
//! - **read** `(name, ETag)`: read whole by a closed run. Kept while its `LastModified`
//!   is within the window (at or after watermark − lookback), then dropped: an object
//!   older than the window is taken as read.
//! - **pending**: could not be read whole (corrupt compression, an unknown format, a
//!   storage error or refusal mid-object, a changed object, a CSV the parser gives up
//!   on). Kept until it is read whole or an operator skips it; never dropped.
//! - **skipped**: an operator skipped it (`resync skip-object`: who, when, why); kept.
//!
//! A listed object is read when it has no record and its `LastModified` is within the
//! window (or the sync has no watermark yet), when its record is pending, or when its
//! ETag differs from its record's (a re-upload). Everything else is skipped.
//!
//! **Bounds.** The records held are those of the objects that arrived within the
//! window, plus pending and skipped ones. An object that becomes visible more than the
//! window after its `LastModified` (a multipart upload's `LastModified` is when it was
//! started) is taken as read: widen the window for exports slower than that.
//!
//! **A pending object's rows.** The rows read before the damage are planned (the
//! destination gets them at once); the object stays pending, and every later run reads
//! it again from its start. While its ETag is unchanged, the lines up to the last line
//! an earlier run planned are not planned again; once it reads whole, its remaining
//! rows are planned. A re-upload (another ETag) is read whole as a new object: every
//! row is planned again, as idempotent upserts.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Its key.
    pub name: String,
    /// Its ETag (as S3 gives it, quotes included).
    pub etag: String,
    /// Its `LastModified`, in Unix milliseconds.
    pub last_modified_ms: i64,
}

/// What a sync remembers of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectStatus {
    /// Read whole by a closed run.
    Read,
    /// Not read whole yet: read again every run.
    Pending,
    /// Skipped by an operator.
    Skipped,
}

impl ObjectStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Pending => "pending",
            Self::Skipped => "skipped",
        }
    }

    /// Reads a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "pending" => Some(Self::Pending),
            "skipped" => Some(Self::Skipped),
            _ => None,
        }
    }
}

/// A sync's record of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// The object's key.
    pub name: String,
    /// The ETag the record is about.
    pub etag: String,
    /// Its `LastModified`, Unix milliseconds.
    pub last_modified_ms: i64,
    /// Read, pending or skipped.
    pub status: ObjectStatus,
    /// Pending: the last line an earlier run planned of this version.
    pub planned_through: u64,
}

/// What a run does with a listed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Read it, planning only the lines after `skip_through`.
    Read {
        /// Lines up to this one were planned by an earlier run (0: none).
        skip_through: u64,
    },
    /// Already read, skipped by an operator, or older than the window.
    Skip,
}

/// The cursor as a run starts from it.
#[derive(Debug, Clone, Default)]
pub struct SourceCursor {
    /// The latest `LastModified` handled by a closed run (Unix ms).
    pub watermark_ms: Option<i64>,
    /// The name cursor of a sync last run before watermarks (objects up to it were
    /// read); used only while there is no watermark.
    pub legacy_after: Option<String>,
    /// The lookback window, in milliseconds.
    pub lookback_ms: i64,
    /// The records the sync keeps, by object name.
    pub records: HashMap<String, ObjectRecord>,
}

impl SourceCursor {
    /// The start of the window: objects modified before it are taken as read.
    pub fn window_start_ms(&self) -> Option<i64> {
        self.watermark_ms
            .map(|w| w.saturating_sub(self.lookback_ms.max(0)))
    }

    /// Whether a stored record still matters (pending and skipped ones always; read
    /// ones while within the window).
    pub fn keeps(&self, record: &ObjectRecord) -> bool {
        record.status != ObjectStatus::Read
            || self
                .window_start_ms()
                .is_none_or(|start| record.last_modified_ms >= start)
    }

    /// What to do with a listed object (see the module's rules).
    pub fn decide(&self, object: &ListedObject) -> Decision {
        match self.records.get(&object.name) {
            Some(record) if record.etag == object.etag => match record.status {
                ObjectStatus::Pending => Decision::Read {
                    skip_through: record.planned_through,
                },
                ObjectStatus::Read | ObjectStatus::Skipped => Decision::Skip,
            },
            // Another version of a known object: a re-upload, read whole.
            Some(_) => Decision::Read { skip_through: 0 },
            None => {
                let new = match (self.window_start_ms(), &self.legacy_after) {
                    (Some(start), _) => object.last_modified_ms >= start,
                    (None, Some(after)) => object.name.as_str() > after.as_str(),
                    (None, None) => true,
                };
                if new {
                    Decision::Read { skip_through: 0 }
                } else {
                    Decision::Skip
                }
            }
        }
    }

    /// Pending records whose object the listing no longer holds (deleted before it was
    /// read whole): they stay pending until an operator skips them.
    pub fn missing_pending(&self, listed: &[ListedObject]) -> Vec<&ObjectRecord> {
        let names: std::collections::HashSet<&str> =
            listed.iter().map(|o| o.name.as_str()).collect();
        let mut missing: Vec<&ObjectRecord> = self
            .records
            .values()
            .filter(|r| r.status == ObjectStatus::Pending && !names.contains(r.name.as_str()))
            .collect();
        missing.sort_by(|a, b| a.name.cmp(&b.name));
        missing
    }

    /// The watermark once a run that handled `objects` closes: never earlier than now.
    pub fn watermark_after<'a>(
        &self,
        objects: impl IntoIterator<Item = &'a ListedObject>,
    ) -> Option<i64> {
        objects
            .into_iter()
            .map(|o| o.last_modified_ms)
            .chain(self.watermark_ms)
            .max()
    }
}

/// What a run made of one object it tried to read: recorded with the run's plan, and
/// turned into the object's record when the run closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectOutcome {
    /// The object's key.
    pub name: String,
    /// The version read (the listing's ETag).
    pub etag: String,
    /// Its `LastModified`, Unix ms.
    pub last_modified_ms: i64,
    /// Whether it was read whole.
    pub whole: bool,
    /// Not whole: the last line planned of this version (this run's or an earlier's).
    #[serde(default)]
    pub planned_through: u64,
    /// Not whole: why (a reason code: `unreadable_object`, `unknown_format`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Not whole: the reason, for the alert and `resync objects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn listed(name: &str, etag: &str, at: i64) -> ListedObject {
        ListedObject {
            name: name.into(),
            etag: etag.into(),
            last_modified_ms: at,
        }
    }

    fn record(name: &str, etag: &str, at: i64, status: ObjectStatus) -> ObjectRecord {
        ObjectRecord {
            name: name.into(),
            etag: etag.into(),
            last_modified_ms: at,
            status,
            planned_through: 7,
        }
    }

    fn cursor(records: Vec<ObjectRecord>) -> SourceCursor {
        SourceCursor {
            watermark_ms: Some(100 * HOUR),
            legacy_after: None,
            lookback_ms: 24 * HOUR,
            records: records.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }

    /// Issue 13, item 7: objects that sort before the last one read but arrive later,
    /// re-uploads, and objects not read whole were passed by the name cursor.
    #[test]
    fn late_objects_reuploads_and_pending_objects_are_read() {
        let c = cursor(vec![
            record("b", "\"1\"", 99 * HOUR, ObjectStatus::Read),
            record("p", "\"1\"", 90 * HOUR, ObjectStatus::Pending),
            record("s", "\"1\"", 99 * HOUR, ObjectStatus::Skipped),
        ]);
        // Read whole before: skipped; another version of it: read.
        assert_eq!(c.decide(&listed("b", "\"1\"", 99 * HOUR)), Decision::Skip);
        assert_eq!(
            c.decide(&listed("b", "\"2\"", 101 * HOUR)),
            Decision::Read { skip_through: 0 }
        );
        // A late arrival that sorts first, within the window: read.
        assert_eq!(
            c.decide(&listed("a", "\"1\"", 99 * HOUR)),
            Decision::Read { skip_through: 0 }
        );
        // Pending: read again, its planned lines skipped; repaired: read whole.
        assert_eq!(
            c.decide(&listed("p", "\"1\"", 90 * HOUR)),
            Decision::Read { skip_through: 7 }
        );
        assert_eq!(
            c.decide(&listed("p", "\"2\"", 101 * HOUR)),
            Decision::Read { skip_through: 0 }
        );
        // Skipped by an operator: skipped until it changes.
        assert_eq!(c.decide(&listed("s", "\"1\"", 99 * HOUR)), Decision::Skip);
        assert_eq!(
            c.decide(&listed("s", "\"2\"", 102 * HOUR)),
            Decision::Read { skip_through: 0 }
        );
        // Older than the window, with no record: taken as read.
        assert_eq!(c.decide(&listed("z", "\"1\"", 75 * HOUR)), Decision::Skip);
        assert_eq!(
            c.decide(&listed("z", "\"1\"", 76 * HOUR)),
            Decision::Read { skip_through: 0 }
        );
    }

    #[test]
    fn read_records_are_kept_while_within_the_window_and_pending_ones_always() {
        let c = cursor(vec![]);
        assert!(c.keeps(&record("a", "e", 76 * HOUR, ObjectStatus::Read)));
        assert!(!c.keeps(&record("a", "e", 75 * HOUR, ObjectStatus::Read)));
        assert!(c.keeps(&record("a", "e", HOUR, ObjectStatus::Pending)));
        assert!(c.keeps(&record("a", "e", HOUR, ObjectStatus::Skipped)));
    }

    #[test]
    fn without_a_watermark_the_legacy_name_cursor_or_everything_decides() {
        let mut c = SourceCursor {
            legacy_after: Some("m".into()),
            lookback_ms: HOUR,
            ..SourceCursor::default()
        };
        assert_eq!(c.decide(&listed("a", "e", 0)), Decision::Skip);
        assert_eq!(
            c.decide(&listed("n", "e", 0)),
            Decision::Read { skip_through: 0 }
        );
        c.legacy_after = None;
        assert_eq!(
            c.decide(&listed("a", "e", 0)),
            Decision::Read { skip_through: 0 }
        );
    }

    #[test]
    fn the_watermark_only_moves_forward_and_missing_pending_objects_are_named() {
        let c = cursor(vec![record("gone", "e", HOUR, ObjectStatus::Pending)]);
        assert_eq!(
            c.watermark_after(&[listed("a", "e", HOUR)]),
            Some(100 * HOUR)
        );
        assert_eq!(
            c.watermark_after(&[listed("a", "e", 120 * HOUR)]),
            Some(120 * HOUR)
        );
        let missing = c.missing_pending(&[listed("a", "e", HOUR)]);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].name, "gone");
    }
}
