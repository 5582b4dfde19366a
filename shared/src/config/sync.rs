//! A sync's settings: its source, primary key, destination, schedule and alert rule.

use std::collections::HashSet;

use serde::Deserialize;

use super::{invalid, schedule::check_schedule, ConfigError, DestinationConfig};
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
    }
    Ok(())
}
