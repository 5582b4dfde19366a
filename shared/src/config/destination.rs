//! A destination's common fields (id, kind, batch size, concurrency, timeout, retry
//! policy) and its kind's own section, which the destination registry parses and
//! validates: this module knows no kind by name.

use std::{collections::BTreeMap, collections::HashSet, sync::Arc, time::Duration};

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::{
    destination::{
        budget::CallBudget, Destination, DestinationError, DestinationKind, DestinationSettings,
        RequestLimits, SettingsError,
    },
    domain::{ids::DestinationId, retry::RetryPolicy},
    secrets::SecretResolver,
};

/// One destination: its API, batch size, concurrency and retry policy.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    /// Names the destination's delivery queue and dead-letter queue.
    pub id: DestinationId,
    /// Which API; the section of the same name holds its settings.
    pub kind: DestinationKind,
    /// Rows per destination request (default: the kind's).
    pub batch_size: Option<usize>,
    /// The destination's requests in flight at once: delivery invocations at once (the
    /// event source mapping's `MaximumConcurrency`, at least 2 on AWS), each sending its
    /// requests one after another.
    pub concurrency: u32,
    /// Timeout of one destination request, in seconds; with the batch size, it must let
    /// one delivery invocation finish within the function's timeout
    /// ([`DestinationConfig::invocation_bound`]).
    pub timeout_secs: u64,
    /// In-run retries: `max_attempts` is the destination's failure threshold.
    pub retry: RetryPolicy,
    /// Whether a run's rows travel packed: sync-start puts up to `batch_size` rows in
    /// one queue message (a *segment*), which delivery sends as one request; a row to
    /// retry leaves its segment and travels alone (see `resync_shared::domain::message`).
    /// Off by default for now: see `docs/packed-segments.md` for what is still to come.
    pub packing: bool,
    /// The kind's own settings (its section).
    pub settings: DestinationSettings,
}

/// A destination as the file spells it: the common fields, and every other key (the
/// kind's section, or a mistake) kept raw for the registry.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawDestination {
    id: DestinationId,
    kind: DestinationKind,
    batch_size: Option<usize>,
    #[serde(default = "default_concurrency")]
    concurrency: u32,
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    packing: bool,
    #[serde(flatten)]
    sections: BTreeMap<String, serde_yaml::Value>,
}

const COMMON_FIELDS: &str = "id, kind, batch_size, concurrency, timeout_secs, retry, packing";

fn default_concurrency() -> u32 {
    5
}

/// Two requests of 25 s and the invocation's 10 s of queue and ledger calls fit the
/// delivery function's 60 s.
fn default_timeout_secs() -> u64 {
    25
}

impl DestinationConfig {
    /// The largest batch the destination's kind accepts in one request.
    pub fn kind_max_batch(&self) -> usize {
        self.kind.max_batch()
    }

    /// Rows per destination request.
    pub fn effective_batch_size(&self) -> usize {
        self.batch_size.unwrap_or(self.kind.default_batch())
    }

    /// Timeout of one destination request.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// What every request of this destination shares.
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            batch_size: self.effective_batch_size(),
            timeout: self.timeout(),
        }
    }

    /// Resolves the destination's secrets and builds its API client; a daily API
    /// budget is counted in `budget` (`None`: in this process only).
    pub async fn build(
        &self,
        secrets: &SecretResolver,
        budget: Option<Arc<dyn CallBudget>>,
    ) -> Result<Arc<dyn Destination>, DestinationError> {
        self.settings
            .build(self.id.as_str(), self.request_limits(), secrets, budget)
            .await
    }
}

/// The dotted path of a field inside a destination's section.
fn section_field(at: &str, kind: DestinationKind, err: &SettingsError) -> String {
    if err.field.is_empty() {
        format!("{at}.{}", kind.as_str())
    } else {
        format!("{at}.{}.{}", kind.as_str(), err.field)
    }
}

/// Checks the destinations' common fields and hands each section to its kind; the
/// error names the field.
pub(super) fn validate_destinations(
    raw: Vec<RawDestination>,
) -> Result<Vec<DestinationConfig>, ConfigError> {
    let mut ids = HashSet::new();
    let mut destinations = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        let at = format!("destinations[{i}]");
        if !ids.insert(d.id.clone()) {
            return Err(invalid(
                format!("{at}.id"),
                format!("destination id '{}' is used twice", d.id),
            ));
        }
        let kind = d.kind;
        if let Some(size) = d.batch_size {
            if size == 0 || size > kind.max_batch() {
                return Err(invalid(
                    format!("{at}.batch_size"),
                    format!("must be between 1 and {} for this kind", kind.max_batch()),
                ));
            }
        }
        if d.concurrency == 0 || d.concurrency > 1000 {
            return Err(invalid(
                format!("{at}.concurrency"),
                "must be between 1 and 1000",
            ));
        }
        // The upper bound depends on the batch size: `deployment::check_destination`.
        if d.timeout_secs == 0 {
            return Err(invalid(
                format!("{at}.timeout_secs"),
                "must be at least 1 (seconds)",
            ));
        }
        d.retry
            .validate()
            .map_err(|(field, message)| invalid(format!("{at}.retry.{field}"), message))?;
        let mut own_section = None;
        for (key, value) in d.sections {
            match DestinationKind::ALL.iter().find(|k| k.as_str() == key) {
                Some(&k) if k == kind => own_section = Some(value),
                // A section for another kind is a mistake (a kind changed, a section
                // pasted from another destination): it would be ignored, so it is refused.
                Some(_) => {
                    return Err(invalid(
                        format!("{at}.{key}"),
                        format!(
                            "a `{key}:` section belongs to a destination of kind '{key}'; this one is of kind '{}'",
                            kind.as_str()
                        ),
                    ))
                }
                None => {
                    return Err(ConfigError::Shape {
                        field: format!("{at}.{key}"),
                        message: format!(
                            "unknown field `{key}`, expected one of {COMMON_FIELDS} or the `{}:` section",
                            kind.as_str()
                        ),
                    })
                }
            }
        }
        let Some(section) = own_section else {
            return Err(invalid(
                format!("{at}.{}", kind.as_str()),
                format!(
                    "a destination of kind '{k}' needs a `{k}:` section {}",
                    kind.section_needs(),
                    k = kind.as_str()
                ),
            ));
        };
        let settings = kind
            .parse_section(section)
            .map_err(|err| ConfigError::Shape {
                field: section_field(&at, kind, &err),
                message: err.message,
            })?;
        settings
            .validate()
            .map_err(|err| invalid(section_field(&at, kind, &err), err.message))?;
        let destination = DestinationConfig {
            id: d.id,
            kind,
            batch_size: d.batch_size,
            concurrency: d.concurrency,
            timeout_secs: d.timeout_secs,
            retry: d.retry,
            packing: d.packing,
            settings,
        };
        super::deployment::check_destination(&destination, &at)?;
        destinations.push(destination);
    }
    Ok(destinations)
}
