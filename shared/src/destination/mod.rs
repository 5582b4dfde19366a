//! The `Destination` port: sends a batch of rows and says, row by row, what happened.
//! A destination never fails a batch as a whole: a transport error becomes the same
//! row error for every row of the request.

use std::{net::IpAddr, sync::Arc};

use futures::future::BoxFuture;
use serde_json::Value;

use crate::{
    config::{DestinationConfig, DestinationKind},
    ids::PrimaryKey,
    outcome::RowResult,
    row::RowFields,
    secrets::{SecretError, SecretResolver},
};

pub mod hubspot;
pub mod salesforce;
pub mod webhook;

/// One row as a destination receives it.
#[derive(Debug, Clone)]
pub struct OutboundRow<'a> {
    /// The sync's primary key value (upserts are keyed by it).
    pub key: &'a PrimaryKey,
    /// `run_id:primary_key`: the same on every retry of the row within a run.
    pub idempotency_key: String,
    /// The fields (JSON object text; destinations that map fields parse it).
    pub fields: &'a RowFields,
}

/// A destination API.
pub trait Destination: Send + Sync {
    /// Rows per request.
    fn batch_size(&self) -> usize;

    /// Sends one request's rows; the answer has one result per row, in order.
    fn send<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Vec<RowResult>>;

    /// The key by which delivery orders an invocation's rows before cutting them into
    /// requests, so rows that share it land in the same request (e.g. contacts of one
    /// Salesforce account: one call takes the parent's lock once instead of several
    /// concurrent calls fighting over it). `None` (the default) keeps the queue's order.
    fn order_key(&self, row: &OutboundRow<'_>) -> Option<String> {
        let _ = row;
        None
    }
}

/// A destination could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Its secret could not be read.
    #[error("destination {destination}: {source}")]
    Secret {
        /// The destination.
        destination: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// Its HTTP client could not be built.
    #[error("destination {destination}: {message}")]
    Setup {
        /// The destination.
        destination: String,
        /// Why.
        message: String,
    },
}

/// Builds the destination a configuration describes.
pub async fn build(
    config: &DestinationConfig,
    secrets: &SecretResolver,
) -> Result<Arc<dyn Destination>, DestinationError> {
    match config.kind {
        DestinationKind::Webhook => {
            let webhook = config
                .webhook
                .as_ref()
                .ok_or_else(|| DestinationError::Setup {
                    destination: config.id.to_string(),
                    message: "missing webhook section".into(),
                })?;
            let secret = match &webhook.signing_secret {
                Some(secret) => Some(secrets.resolve(secret).await.map_err(|source| {
                    DestinationError::Secret {
                        destination: config.id.to_string(),
                        source,
                    }
                })?),
                None => None,
            };
            Ok(Arc::new(
                webhook::Webhook::new(
                    &webhook.url,
                    secret,
                    config.effective_batch_size(),
                    config.timeout(),
                )
                .map_err(|message| DestinationError::Setup {
                    destination: config.id.to_string(),
                    message,
                })?,
            ))
        }
        DestinationKind::Salesforce => {
            let section = config
                .salesforce
                .as_ref()
                .ok_or_else(|| setup(config, "missing salesforce section"))?;
            let credentials = salesforce::Credentials::resolve(&section.auth, secrets)
                .await
                .map_err(|err| match err {
                    salesforce::CredentialError::Secret(source) => DestinationError::Secret {
                        destination: config.id.to_string(),
                        source,
                    },
                    salesforce::CredentialError::Key(message) => setup(config, &message),
                })?;
            Ok(Arc::new(
                salesforce::Salesforce::new(
                    section,
                    credentials,
                    config.effective_batch_size(),
                    config.timeout(),
                )
                .map_err(|message| setup(config, &message))?,
            ))
        }
        DestinationKind::Hubspot => {
            let section = config
                .hubspot
                .as_ref()
                .ok_or_else(|| setup(config, "missing hubspot section"))?;
            let token = secrets
                .resolve(&section.access_token)
                .await
                .map_err(|source| DestinationError::Secret {
                    destination: config.id.to_string(),
                    source,
                })?;
            Ok(Arc::new(
                hubspot::Hubspot::new(
                    section,
                    token,
                    config.effective_batch_size(),
                    config.timeout(),
                )
                .map_err(|message| setup(config, &message))?,
            ))
        }
    }
}

fn setup(config: &DestinationConfig, message: &str) -> DestinationError {
    DestinationError::Setup {
        destination: config.id.to_string(),
        message: message.to_owned(),
    }
}

/// The text of a JSON field value as a destination sends it as an identifier: strings
/// as they are, numbers and booleans in their JSON form; `None` for null, arrays and objects.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Accepts `https://` URLs, and `http://` only for loopback hosts (local tries).
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "'{url}' must use https (plain http is accepted only for loopback addresses)"
                ))
            }
        }
        other => Err(format!("'{url}' has scheme '{other}'; expected https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_everywhere_but_loopback() {
        assert!(check_endpoint_url("https://api.example.com/x").is_ok());
        assert!(check_endpoint_url("http://127.0.0.1:9000/x").is_ok());
        assert!(check_endpoint_url("http://localhost:9000/x").is_ok());
        assert!(check_endpoint_url("http://[::1]:9000/x").is_ok());
        assert!(check_endpoint_url("http://10.0.0.1/x").is_err());
        assert!(check_endpoint_url("http://example.com/x").is_err());
        assert!(check_endpoint_url("ftp://example.com/x").is_err());
        assert!(check_endpoint_url("not a url").is_err());
    }
}
