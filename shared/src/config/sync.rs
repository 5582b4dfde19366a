//! A sync's settings: its source, primary key, destination, schedule and alert rule.

use std::{collections::HashSet, time::Duration};

use serde::Deserialize;

use super::{
    deployment::{QUEUE_RETENTION_SECS, QUEUE_VISIBILITY_SECS},
    invalid,
    schedule::{check_schedule, rate_period},
    ConfigError, DestinationConfig,
};
use crate::domain::{
    ids::{DestinationId, SyncId},
    source::SourceFormat,
};

/// Where a sync's new rows come from: objects under an S3 prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The bucket (default: the stack's source bucket).
    pub bucket: Option<String>,
    /// The prefix the warehouse exports each batch of changed rows under (objects are
    /// read in any order they arrive; see [`crate::domain::cursor`]).
    pub prefix: String,
    /// Force a format instead of taking it from object names.
    pub format: Option<SourceFormat>,
    /// How long after its `LastModified` an object may still appear and be read: the
    /// source cursor's lookback window (default one day). An object that becomes
    /// visible later than this after its `LastModified` is taken as read.
    #[serde(default = "default_lookback_secs")]
    pub lookback_secs: u64,
}

/// One day.
fn default_lookback_secs() -> u64 {
    86_400
}

impl SourceConfig {
    /// The lookback window in milliseconds (saturating).
    pub fn lookback_ms(&self) -> i64 {
        i64::try_from(self.lookback_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// When to alert about a run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Warn when a run ends with at least this many failed or rejected rows (0 disables).
    #[serde(default = "default_warn_failed_rows")]
    pub warn_failed_rows: u64,
    /// Raise a critical alert when a run could not run at all.
    #[serde(default = "default_true")]
    pub critical_on_run_error: bool,
}

fn default_warn_failed_rows() -> u64 {
    1
}

fn default_true() -> bool {
    true
}

impl Default for AlertRule {
    fn default() -> Self {
        Self {
            warn_failed_rows: default_warn_failed_rows(),
            critical_on_run_error: true,
        }
    }
}

/// One sync: source → destination, keyed by a primary key, on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The sync's id.
    pub id: SyncId,
    /// Where its rows come from.
    pub source: SourceConfig,
    /// The column that identifies a row; upserts at the destination are keyed by it.
    pub primary_key: String,
    /// The destination's id.
    pub destination: DestinationId,
    /// EventBridge schedule expression: `rate(15 minutes)` or `cron(...)`.
    pub schedule: String,
    /// When to alert.
    #[serde(default)]
    pub alert: AlertRule,
    /// How long a run may deliver, in seconds from its start (default: see
    /// [`SyncConfig::run_deadline`]). No wait of a row (backoff, rate-limit deferral,
    /// paused destination) is set to end after it; a row not delivered by then is closed
    /// as failed and carried to the next run, so every run ends (I7).
    #[serde(default)]
    pub run_deadline_secs: Option<u64>,
}

/// The deadline of a sync on a `cron(...)` schedule (whose period is not checked here)
/// when the file sets none: one hour.
pub const DEFAULT_CRON_RUN_DEADLINE_SECS: u64 = 3600;

/// The longest default deadline: six hours (a daily sync's run gets that, not 18 h).
pub const MAX_DEFAULT_RUN_DEADLINE_SECS: u64 = 6 * 3600;

impl SyncConfig {
    /// The run's deadline, from its start: `run_deadline_secs`, or by default three
    /// quarters of a `rate(...)` schedule's period (at most six hours) — so a run ends
    /// well before the next one is due — and one hour for a `cron(...)` schedule.
    pub fn run_deadline(&self) -> Duration {
        let secs = self.run_deadline_secs.unwrap_or_else(|| {
            rate_period(&self.schedule).map_or(DEFAULT_CRON_RUN_DEADLINE_SECS, |period| {
                (period.as_secs() / 4 * 3).clamp(1, MAX_DEFAULT_RUN_DEADLINE_SECS)
            })
        });
        Duration::from_secs(secs)
    }
}

/// Checks a sync's deadline against its schedule (a run must end before the next is
/// due) and the delivery queue's retention (a row's message must outlive the run,
/// including one more receive after the deadline); `at` is the sync's path.
fn check_run_deadline(s: &SyncConfig, at: &str) -> Result<(), ConfigError> {
    let field = format!("{at}.run_deadline_secs");
    let deadline = s.run_deadline().as_secs();
    if deadline == 0 {
        return Err(invalid(field, "must be at least 1 (seconds)"));
    }
    if let Some(period) = rate_period(&s.schedule) {
        if deadline > period.as_secs() {
            return Err(invalid(
                field,
                format!(
                    "{deadline} s is longer than the schedule's period ({} s, `{}`): a run must \
                     end before the next one is due, or every other run is skipped",
                    period.as_secs(),
                    s.schedule
                ),
            ));
        }
    }
    let retention = u64::from(QUEUE_RETENTION_SECS);
    let longest = retention.saturating_sub(u64::from(QUEUE_VISIBILITY_SECS));
    if deadline > longest {
        return Err(invalid(
            field,
            format!(
                "{deadline} s is more than {longest} s: a row's message must outlive its run — the \
                 delivery queue keeps a message {retention} s (4 days), and a row received at the \
                 deadline may stay in flight {QUEUE_VISIBILITY_SECS} s more"
            ),
        ));
    }
    Ok(())
}

/// Checks every sync against the destinations; the error names the field.
pub(super) fn validate_syncs(
    syncs: &[SyncConfig],
    destinations: &[DestinationConfig],
) -> Result<(), ConfigError> {
    let mut sync_ids = HashSet::new();
    for (i, s) in syncs.iter().enumerate() {
        let at = format!("syncs[{i}]");
        if !sync_ids.insert(&s.id) {
            return Err(invalid(
                format!("{at}.id"),
                format!("sync id '{}' is used twice", s.id),
            ));
        }
        if !destinations.iter().any(|d| d.id == s.destination) {
            return Err(invalid(
                format!("{at}.destination"),
                format!(
                    "no destination with id '{}' (known: {})",
                    s.destination,
                    destinations
                        .iter()
                        .map(|d| d.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if s.primary_key.trim().is_empty() {
            return Err(invalid(format!("{at}.primary_key"), "must name a column"));
        }
        if s.primary_key.trim() != s.primary_key {
            return Err(invalid(
                format!("{at}.primary_key"),
                format!(
                    "'{}' has whitespace around the column name; keys are read from the column named exactly so (no row would have it)",
                    s.primary_key.escape_debug()
                ),
            ));
        }
        if s.source.prefix.starts_with('/') {
            return Err(invalid(
                format!("{at}.source.prefix"),
                "S3 prefixes do not start with '/'",
            ));
        }
        check_schedule(&s.schedule)
            .map_err(|message| invalid(format!("{at}.schedule"), message))?;
        check_run_deadline(s, &at)?;
    }
    Ok(())
}
