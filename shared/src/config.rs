//! The sync configuration: destinations and syncs, in one YAML file.
//!
//! Loading validates everything up front and names the offending field
//! (`syncs[1].destination: no destination with id 'crm' ...`), so a bad deploy fails
//! at start, not in the middle of a run. The Lambdas read the file named by
//! `RESYNC_CONFIG` (a path bundled with the function); the CLI takes `--config`.

use std::{collections::HashSet, path::Path, time::Duration};

use serde::Deserialize;

use crate::{
    ids::{DestinationId, SyncId},
    retry::RetryPolicy,
    secrets::SecretRef,
};

/// Why a configuration was refused; always names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not have the expected shape.
    #[error("configuration field `{field}`: {message}")]
    Shape {
        /// Dotted path of the field, e.g. `syncs[0].retry.max_attempts`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The values are well-formed but not acceptable.
    #[error("configuration field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where rows go.
    pub destinations: Vec<DestinationConfig>,
    /// What is synced where, and when.
    pub syncs: Vec<SyncConfig>,
}

/// Which kind of API a destination speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// JSON batches POSTed to an HTTPS endpoint, signed with HMAC-SHA256.
    Webhook,
}

/// One destination: its API, batch size, concurrency and retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Names the destination's delivery queue and dead-letter queue.
    pub id: DestinationId,
    /// Which API; the section of the same name holds its settings.
    pub kind: DestinationKind,
    /// Rows per destination request (default: the kind's maximum).
    pub batch_size: Option<usize>,
    /// How many delivery invocations may call this destination at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Timeout of one destination request, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// In-run retries: `max_attempts` is the destination's failure threshold.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Settings of a `kind: webhook` destination.
    pub webhook: Option<WebhookConfig>,
}

fn default_concurrency() -> u32 {
    5
}

fn default_timeout_secs() -> u64 {
    30
}

impl DestinationConfig {
    /// The largest batch a destination kind accepts in one request.
    pub fn kind_max_batch(&self) -> usize {
        match self.kind {
            DestinationKind::Webhook => 1000,
        }
    }

    /// Rows per destination request.
    pub fn effective_batch_size(&self) -> usize {
        self.batch_size.unwrap_or(match self.kind {
            DestinationKind::Webhook => 100,
        })
    }

    /// Timeout of one destination request.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// A webhook destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// HTTPS URL (plain HTTP only for loopback addresses).
    pub url: String,
    /// Secret for the `X-Resync-Signature` HMAC-SHA256 header.
    pub signing_secret: Option<SecretRef>,
}

/// Source file format; by default taken from the object's name
/// (`.jsonl`, `.ndjson`, `.json` → JSON Lines; `.csv` → CSV; an extra `.gz` means gzip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
}

/// Where a sync's new rows come from: objects under an S3 prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The bucket (default: the stack's source bucket).
    pub bucket: Option<String>,
    /// The prefix the warehouse exports each batch of changed rows under; object keys
    /// must sort in the order the exports arrive (e.g. a timestamp in the name).
    pub prefix: String,
    /// Force a format instead of taking it from object names.
    pub format: Option<SourceFormat>,
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

impl Config {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let field = err.path().to_string();
            let message = err.into_inner().to_string();
            let message = message
                .strip_prefix(&format!("{field}: "))
                .map(str::to_owned)
                .unwrap_or(message);
            ConfigError::Shape {
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Reads the file named by `RESYNC_CONFIG` (how the Lambdas get it).
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = std::env::var("RESYNC_CONFIG").map_err(|_| {
            invalid(
                "RESYNC_CONFIG",
                "environment variable is not set (path of the configuration file bundled with the function)",
            )
        })?;
        Self::load(Path::new(&path))
    }

    /// Looks up a sync.
    pub fn sync(&self, id: &SyncId) -> Option<&SyncConfig> {
        self.syncs.iter().find(|s| &s.id == id)
    }

    /// Looks up a destination.
    pub fn destination(&self, id: &DestinationId) -> Option<&DestinationConfig> {
        self.destinations.iter().find(|d| &d.id == id)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut destination_ids = HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let at = format!("destinations[{i}]");
            if !destination_ids.insert(&d.id) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("destination id '{}' is used twice", d.id),
                ));
            }
            if let Some(size) = d.batch_size {
                if size == 0 || size > d.kind_max_batch() {
                    return Err(invalid(
                        format!("{at}.batch_size"),
                        format!("must be between 1 and {} for this kind", d.kind_max_batch()),
                    ));
                }
            }
            if d.concurrency == 0 || d.concurrency > 1000 {
                return Err(invalid(
                    format!("{at}.concurrency"),
                    "must be between 1 and 1000",
                ));
            }
            if d.timeout_secs == 0 || d.timeout_secs > 600 {
                return Err(invalid(
                    format!("{at}.timeout_secs"),
                    "must be between 1 and 600",
                ));
            }
            d.retry
                .validate()
                .map_err(|(field, message)| invalid(format!("{at}.retry.{field}"), message))?;
            match d.kind {
                DestinationKind::Webhook => {
                    let Some(webhook) = &d.webhook else {
                        return Err(invalid(
                            format!("{at}.webhook"),
                            "a destination of kind 'webhook' needs a `webhook:` section with its url",
                        ));
                    };
                    crate::destination::check_endpoint_url(&webhook.url)
                        .map_err(|message| invalid(format!("{at}.webhook.url"), message))?;
                }
            }
        }
        let mut sync_ids = HashSet::new();
        for (i, s) in self.syncs.iter().enumerate() {
            let at = format!("syncs[{i}]");
            if !sync_ids.insert(&s.id) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("sync id '{}' is used twice", s.id),
                ));
            }
            if self.destination(&s.destination).is_none() {
                return Err(invalid(
                    format!("{at}.destination"),
                    format!(
                        "no destination with id '{}' (known: {})",
                        s.destination,
                        self.destinations
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
}

/// Parses the period of a `rate(...)` expression; `None` for `cron(...)`.
pub fn rate_period(schedule: &str) -> Option<Duration> {
    let inner = schedule.strip_prefix("rate(")?.strip_suffix(')')?;
    let (count, unit) = inner.trim().split_once(' ')?;
    let count: u64 = count.parse().ok()?;
    let secs = match unit.trim() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(count * secs))
}

fn check_schedule(schedule: &str) -> Result<(), String> {
    if schedule.starts_with("rate(") {
        match rate_period(schedule) {
            Some(p) if !p.is_zero() => Ok(()),
            _ => Err(format!(
                "'{schedule}' is not a valid rate expression; expected e.g. 'rate(15 minutes)'"
            )),
        }
    } else if let Some(inner) = schedule
        .strip_prefix("cron(")
        .and_then(|s| s.strip_suffix(')'))
    {
        if inner.split_whitespace().count() == 6 {
            Ok(())
        } else {
            Err(format!(
                "'{schedule}' is not a valid cron expression; EventBridge cron has six fields"
            ))
        }
    } else {
        Err(format!(
            "'{schedule}' must be an EventBridge schedule expression: rate(...) or cron(...)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
destinations:
  - id: crm
    kind: webhook
    batch_size: 50
    retry: { max_attempts: 4, base_delay_secs: 1, max_delay_secs: 30 }
    webhook:
      url: https://hooks.example.com/rows
      signing_secret: { secret_id: "arn:aws:secretsmanager:us-east-1:123456789012:secret:crm" }
syncs:
  - id: accounts
    source: { prefix: exports/accounts/ }
    primary_key: id
    destination: crm
    schedule: rate(15 minutes)
"#;

    fn error_field(text: &str) -> String {
        match Config::from_yaml(text).unwrap_err() {
            ConfigError::Shape { field, .. } | ConfigError::Invalid { field, .. } => field,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn a_valid_file_loads_with_defaults() {
        let config = Config::from_yaml(GOOD).unwrap();
        let d = &config.destinations[0];
        assert_eq!(d.effective_batch_size(), 50);
        assert_eq!(d.retry.max_attempts, 4);
        assert_eq!(d.concurrency, 5);
        let s = &config.syncs[0];
        assert_eq!(s.alert.warn_failed_rows, 1);
        assert!(s.alert.critical_on_run_error);
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let text = GOOD.replace("max_attempts: 4", "max_attempts: four");
        assert_eq!(error_field(&text), "destinations[0].retry.max_attempts");
    }

    #[test]
    fn an_unknown_field_names_where_it_is() {
        let text = GOOD.replace("primary_key: id", "primary_key: id\n    primary_keys: [id]");
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("syncs[0]"), "{err}");
        assert!(err.contains("primary_keys"), "{err}");
    }

    #[test]
    fn an_unknown_destination_is_refused_with_the_known_ones() {
        let text = GOOD.replace("destination: crm", "destination: erp");
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("syncs[0].destination"), "{err}");
        assert!(err.contains("known: crm"), "{err}");
    }

    #[test]
    fn plain_http_is_refused_except_for_loopback() {
        let text = GOOD.replace("https://hooks.example.com", "http://hooks.example.com");
        assert_eq!(error_field(&text), "destinations[0].webhook.url");
        let text = GOOD.replace("https://hooks.example.com", "http://127.0.0.1:8080");
        assert!(Config::from_yaml(&text).is_ok());
    }

    #[test]
    fn retry_policy_bounds_are_checked() {
        let text = GOOD.replace("max_attempts: 4", "max_attempts: 0");
        assert_eq!(error_field(&text), "destinations[0].retry.max_attempts");
        let text = GOOD.replace("max_delay_secs: 30", "max_delay_secs: 50000");
        assert_eq!(error_field(&text), "destinations[0].retry.max_delay_secs");
    }

    #[test]
    fn schedules_must_be_eventbridge_expressions() {
        let text = GOOD.replace("rate(15 minutes)", "every 15 minutes");
        assert_eq!(error_field(&text), "syncs[0].schedule");
        let text = GOOD.replace("rate(15 minutes)", "\"cron(0 * * * ? *)\"");
        assert!(Config::from_yaml(&text).is_ok());
        assert_eq!(
            rate_period("rate(2 hours)"),
            Some(Duration::from_secs(7200))
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = GOOD.replace(
            "syncs:\n",
            "syncs:\n  - id: accounts\n    source: { prefix: a/ }\n    primary_key: id\n    destination: crm\n    schedule: rate(1 hour)\n",
        );
        assert_eq!(error_field(&text), "syncs[1].id");
    }

    #[test]
    fn a_webhook_without_its_section_is_refused() {
        let text = GOOD.replace("    webhook:\n      url: https://hooks.example.com/rows\n      signing_secret: { secret_id: \"arn:aws:secretsmanager:us-east-1:123456789012:secret:crm\" }\n", "");
        assert_eq!(error_field(&text), "destinations[0].webhook");
    }
}
