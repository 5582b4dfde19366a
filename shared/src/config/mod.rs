//! The sync configuration: destinations and syncs, in one YAML file.
//!
//! Loading validates everything up front and names the offending field
//! (`syncs[1].destination: no destination with id 'crm' ...`), so a bad deploy fails
//! at start, not in the middle of a run. The Lambdas read the file named by
//! `RESYNC_CONFIG` (a path bundled with the function); the CLI takes `--config`.
//!
//! - [`destination`]: a destination's common fields; its kind's own section is parsed
//!   and validated by that kind (`crate::destination::registry`).
//! - [`sync`]: a sync's source, key, destination, schedule and alert rule.
//! - [`schedule`]: EventBridge schedule expressions.
//! - [`deployment`]: what a deployment can honour (the delivery function's timeout, the
//!   queues' visibility and retention) and the check that each destination fits it.

use std::path::Path;

use serde::Deserialize;

use crate::domain::ids::{DestinationId, SyncId};

pub mod deployment;
pub mod destination;
pub mod schedule;
pub mod sync;

pub use crate::domain::source::SourceFormat;
pub use deployment::RowLifetime;
pub use destination::DestinationConfig;
pub use schedule::rate_period;
pub use sync::{AlertRule, SourceConfig, SyncConfig};

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

/// The whole configuration file, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where rows go.
    pub destinations: Vec<DestinationConfig>,
    /// What is synced where, and when.
    pub syncs: Vec<SyncConfig>,
}

/// The file as written, before destinations' sections are handed to their kinds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    destinations: Vec<destination::RawDestination>,
    syncs: Vec<SyncConfig>,
}

impl Config {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = crate::yaml::from_yaml(serde_yaml::Deserializer::from_str(text))
            .map_err(|err| ConfigError::Shape {
                field: if err.field.is_empty() {
                    "(top level)".into()
                } else {
                    err.field
                },
                message: err.message,
            })?;
        let destinations = destination::validate_destinations(raw.destinations)?;
        sync::validate_syncs(&raw.syncs, &destinations)?;
        Ok(Self {
            destinations,
            syncs: raw.syncs,
        })
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
}
