//! The sync configuration: destinations and syncs, in one YAML file.
//!
//! Loading validates everything up front and names the offending field
//! (`syncs[1].destination: no destination with id 'crm' ...`), so a bad deploy fails
//! at start, not in the middle of a run. The Lambdas read the file named by
//! `RESYNC_CONFIG` (a path bundled with the function); the CLI takes `--config`.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    time::Duration,
};

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
    /// Salesforce REST API: sObject Collections upsert by external ID (200 per call).
    Salesforce,
    /// HubSpot CRM v3: batch upsert by a unique property (100 per call).
    Hubspot,
}

impl DestinationKind {
    /// The kind as the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Salesforce => "salesforce",
            Self::Hubspot => "hubspot",
        }
    }
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
    /// Settings of a `kind: salesforce` destination.
    pub salesforce: Option<SalesforceConfig>,
    /// Settings of a `kind: hubspot` destination.
    pub hubspot: Option<HubspotConfig>,
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
            DestinationKind::Salesforce => 200,
            DestinationKind::Hubspot => 100,
        }
    }

    /// Rows per destination request.
    pub fn effective_batch_size(&self) -> usize {
        self.batch_size.unwrap_or(match self.kind {
            DestinationKind::Webhook => 100,
            DestinationKind::Salesforce | DestinationKind::Hubspot => self.kind_max_batch(),
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

/// A Salesforce destination: sObject Collections upsert by external ID.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// Where tokens are requested: `https://login.salesforce.com`, `https://test.salesforce.com`
    /// for sandboxes, or the org's My Domain URL.
    #[serde(default = "default_salesforce_login_url")]
    pub login_url: String,
    /// The REST API base, when it must differ from the `instance_url` the token answer names.
    pub instance_url: Option<String>,
    /// REST API version, e.g. `62.0` (sObject Collections upsert needs 46.0 or later).
    #[serde(default = "default_salesforce_api_version")]
    pub api_version: String,
    /// The sObject, e.g. `Contact` or `Invoice__c`.
    pub sobject: String,
    /// The external ID field the sync's primary key is written to (the upsert key).
    pub external_id_field: String,
    /// Source column → Salesforce field; only mapped columns are sent (at least one).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// A parent lookup field (e.g. `AccountId`): rows are ordered by it before they are
    /// cut into requests, so rows under one parent share a call (fewer lock conflicts).
    pub parent_field: Option<String>,
    /// Share of the org's daily API limit (from `Sforce-Limit-Info`) past which resync
    /// stops calling and lets rows wait as rate-limited (0 < share ≤ 1).
    #[serde(default = "default_api_budget_share")]
    pub api_budget_share: f64,
    /// OAuth 2.0 server-to-server credentials.
    pub auth: SalesforceAuth,
}

/// The OAuth 2.0 flow resync uses to get a Salesforce access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceFlow {
    /// Client credentials: consumer key and secret of an app with a run-as integration user.
    ClientCredentials,
    /// JWT bearer: an RS256 assertion signed with the app's certificate key, for `username`.
    JwtBearer,
}

/// Salesforce OAuth settings; which fields are needed depends on `flow`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceAuth {
    /// The flow.
    pub flow: SalesforceFlow,
    /// The app's consumer key (`client_id`, the JWT's `iss`).
    pub client_id: String,
    /// The consumer secret (client credentials flow).
    pub client_secret: Option<SecretRef>,
    /// The integration user's username (JWT bearer flow: the JWT's `sub`).
    pub username: Option<String>,
    /// PEM private key that signs the assertion (JWT bearer flow).
    pub private_key: Option<SecretRef>,
    /// The JWT's `aud` (default: the login URL).
    pub audience: Option<String>,
}

fn default_salesforce_login_url() -> String {
    "https://login.salesforce.com".into()
}

fn default_salesforce_api_version() -> String {
    "62.0".into()
}

fn default_api_budget_share() -> f64 {
    0.9
}

/// A HubSpot destination: CRM v3 batch upsert by a unique property.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotConfig {
    /// API base URL.
    #[serde(default = "default_hubspot_base_url")]
    pub base_url: String,
    /// Object type, e.g. `contacts`, `companies` or a custom object's `2-…` id.
    pub object_type: String,
    /// The unique property the sync's primary key is matched on (e.g. `email`).
    pub id_property: String,
    /// Source column → HubSpot property; only mapped columns are sent (at least one).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The private app's access token (sent as `Authorization: Bearer`).
    pub access_token: SecretRef,
}

fn default_hubspot_base_url() -> String {
    "https://api.hubapi.com".into()
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
            // A section for another kind is a mistake (a kind changed, a section pasted
            // from another destination): it would be ignored, so it is refused.
            for (section, present, kind) in [
                ("webhook", d.webhook.is_some(), DestinationKind::Webhook),
                (
                    "salesforce",
                    d.salesforce.is_some(),
                    DestinationKind::Salesforce,
                ),
                ("hubspot", d.hubspot.is_some(), DestinationKind::Hubspot),
            ] {
                if present && d.kind != kind {
                    return Err(invalid(
                        format!("{at}.{section}"),
                        format!(
                            "a `{section}:` section belongs to a destination of kind '{section}'; this one is of kind '{}'",
                            d.kind.as_str()
                        ),
                    ));
                }
            }
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
                DestinationKind::Salesforce => validate_salesforce(&at, d.salesforce.as_ref())?,
                DestinationKind::Hubspot => validate_hubspot(&at, d.hubspot.as_ref())?,
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

fn validate_salesforce(at: &str, section: Option<&SalesforceConfig>) -> Result<(), ConfigError> {
    let Some(sf) = section else {
        return Err(invalid(
            format!("{at}.salesforce"),
            "a destination of kind 'salesforce' needs a `salesforce:` section (sobject, external_id_field, auth)",
        ));
    };
    let at = format!("{at}.salesforce");
    crate::destination::check_endpoint_url(&sf.login_url)
        .map_err(|message| invalid(format!("{at}.login_url"), message))?;
    if let Some(url) = &sf.instance_url {
        crate::destination::check_endpoint_url(url)
            .map_err(|message| invalid(format!("{at}.instance_url"), message))?;
    }
    let version_ok = sf
        .api_version
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)))
        .is_some_and(|(major, _)| major >= 46);
    if !version_ok {
        return Err(invalid(
            format!("{at}.api_version"),
            format!(
                "'{}' is not an API version of 46.0 or later (sObject Collections upsert)",
                sf.api_version
            ),
        ));
    }
    for (field, value) in [
        ("sobject", &sf.sobject),
        ("external_id_field", &sf.external_id_field),
    ] {
        if !is_api_name(value) {
            return Err(invalid(
                format!("{at}.{field}"),
                format!("'{value}' is not a Salesforce API name (letters, digits, '_')"),
            ));
        }
    }
    if sf.fields.is_empty() {
        return Err(invalid(
            format!("{at}.fields"),
            "map at least one source column to a Salesforce field (column: Field__c)",
        ));
    }
    if !(sf.api_budget_share > 0.0 && sf.api_budget_share <= 1.0) {
        return Err(invalid(
            format!("{at}.api_budget_share"),
            "must be in (0, 1]",
        ));
    }
    let auth = &sf.auth;
    match auth.flow {
        SalesforceFlow::ClientCredentials if auth.client_secret.is_none() => Err(invalid(
            format!("{at}.auth.client_secret"),
            "the client_credentials flow needs the consumer secret",
        )),
        SalesforceFlow::JwtBearer if auth.username.is_none() => Err(invalid(
            format!("{at}.auth.username"),
            "the jwt_bearer flow needs the integration user's username",
        )),
        SalesforceFlow::JwtBearer if auth.private_key.is_none() => Err(invalid(
            format!("{at}.auth.private_key"),
            "the jwt_bearer flow needs the PEM private key that signs the assertion",
        )),
        _ => Ok(()),
    }
}

fn validate_hubspot(at: &str, section: Option<&HubspotConfig>) -> Result<(), ConfigError> {
    let Some(hs) = section else {
        return Err(invalid(
            format!("{at}.hubspot"),
            "a destination of kind 'hubspot' needs a `hubspot:` section (object_type, id_property, access_token)",
        ));
    };
    let at = format!("{at}.hubspot");
    crate::destination::check_endpoint_url(&hs.base_url)
        .map_err(|message| invalid(format!("{at}.base_url"), message))?;
    for (field, value) in [
        ("object_type", &hs.object_type),
        ("id_property", &hs.id_property),
    ] {
        if value.is_empty()
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                format!("{at}.{field}"),
                format!("'{value}' is not a HubSpot name (letters, digits, '_', '-')"),
            ));
        }
    }
    if hs.fields.is_empty() {
        return Err(invalid(
            format!("{at}.fields"),
            "map at least one source column to a HubSpot property (column: property)",
        ));
    }
    Ok(())
}

fn is_api_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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
    fn the_vendor_examples_load() {
        for text in [
            include_str!("../../examples/salesforce.yaml"),
            include_str!("../../examples/hubspot.yaml"),
        ] {
            let config = Config::from_yaml(text).unwrap();
            let d = &config.destinations[0];
            assert_eq!(d.effective_batch_size(), d.kind_max_batch());
        }
    }

    #[test]
    fn vendor_sections_are_checked_field_by_field() {
        let salesforce = include_str!("../../examples/salesforce.yaml");
        let text = salesforce.replace("sobject: Contact", "sobject: \"Contact; DROP\"");
        assert_eq!(error_field(&text), "destinations[0].salesforce.sobject");
        let text = salesforce.replace("api_version: \"62.0\"", "api_version: \"45.0\"");
        assert_eq!(error_field(&text), "destinations[0].salesforce.api_version");
        let text = salesforce.replace(
            "        client_secret: { env: SALESFORCE_CLIENT_SECRET }",
            "",
        );
        assert_eq!(
            error_field(&text),
            "destinations[0].salesforce.auth.client_secret"
        );
        let text = salesforce.replace("https://login.salesforce.com", "http://login.example.com");
        assert_eq!(error_field(&text), "destinations[0].salesforce.login_url");
        let hubspot = include_str!("../../examples/hubspot.yaml");
        let text = hubspot.replace("    hubspot:\n", "    hubspot_settings:\n");
        assert!(Config::from_yaml(&text).is_err());
        let text = hubspot.replace("kind: hubspot", "kind: hubspot\n    batch_size: 101");
        assert_eq!(error_field(&text), "destinations[0].batch_size");
    }

    #[test]
    fn a_section_of_another_kind_is_refused() {
        let salesforce = include_str!("../../examples/salesforce.yaml");
        let text = salesforce.replace(
            "    salesforce:\n",
            "    webhook: { url: https://hooks.example.com/rows }\n    salesforce:\n",
        );
        assert_eq!(error_field(&text), "destinations[0].webhook");
        let text = GOOD.replace(
            "    webhook:\n",
            "    hubspot: { object_type: contacts, id_property: resync_id, fields: { email: email }, access_token: { value: t } }\n    webhook:\n",
        );
        assert_eq!(error_field(&text), "destinations[0].hubspot");
    }

    #[test]
    fn a_webhook_without_its_section_is_refused() {
        let text = GOOD.replace("    webhook:\n      url: https://hooks.example.com/rows\n      signing_secret: { secret_id: \"arn:aws:secretsmanager:us-east-1:123456789012:secret:crm\" }\n", "");
        assert_eq!(error_field(&text), "destinations[0].webhook");
    }
}
