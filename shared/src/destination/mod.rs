//! Destinations: the `Destination` port, the registry of kinds, and one module (or
//! folder) per kind that owns its settings section, their validation, its wire format
//! and its error mapping.
//!
//! A destination sends a batch of rows and says, row by row, what happened. It never
//! fails a batch as a whole: a transport error becomes the same row error for every
//! row of the request, and a request refused as a whole without naming a row is split
//! to find the rows it was refused for ([`bisect`]).
//!
//! - [`registry`]: the kinds resync knows (`kind: webhook | salesforce | hubspot`) and
//!   the one place that maps a kind to its settings section, batch limits and builder.
//!   Adding a destination is a new module here plus one line in the registry (see
//!   `docs/architecture.md`, "Adding a destination").
//! - [`endpoint`]: HTTPS everywhere but loopback.
//! - [`http`]: what every HTTP destination shares: the client (no redirects), capped
//!   answer reads, transport errors, redirects and `Retry-After` as row errors.
//! - [`bisect`]: every kind's [`Destination::send`]: a whole-request refusal that names
//!   no row is split in halves until the rows it was for are isolated.
//! - [`webhook`], [`salesforce`], [`hubspot`]: the kinds.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::{
    domain::{
        ids::PrimaryKey,
        outcome::{RowError, RowResult},
        row::{RowFields, UnmappableRow},
    },
    secrets::{SecretError, SecretRef, SecretResolver},
};

pub mod bisect;
pub mod budget;
pub mod endpoint;
pub mod http;
pub mod hubspot;
pub mod registry;
pub mod salesforce;
pub mod webhook;

pub use endpoint::check_endpoint_url;
pub use registry::{DestinationKind, DestinationSettings};

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

/// What one request to a destination's API came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// One result per row, in request order (a transport error or a refusal that
    /// concerns every row alike — a bad token, a redirect, a 5xx — repeated per row).
    PerRow(Vec<RowResult>),
    /// The request was refused as a whole, permanently, for its content, without naming
    /// the rows at fault (HubSpot's 400 without ids, a webhook's 400, a Salesforce
    /// request error): some rows are bad, which ones is unknown. [`Destination::send`]
    /// splits the request to find them ([`bisect`]).
    Refused(RowError),
}

/// A destination API.
pub trait Destination: Send + Sync {
    /// Rows per request.
    fn batch_size(&self) -> usize;

    /// Sends one request with exactly these rows, and says what the API answered.
    fn request<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Answer>;

    /// Sends the rows; the answer has one result per row, in order. A whole-request
    /// refusal that names no row is bisected (at most `2·⌈log₂ n⌉` extra requests per
    /// bad row of `n`), so only the rows it was for fail, each saying it was isolated.
    fn send<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Vec<RowResult>> {
        Box::pin(bisect::send(self, rows))
    }

    /// The key by which delivery orders an invocation's rows before cutting them into
    /// requests, so rows that share it land in the same request (e.g. contacts of one
    /// Salesforce account: one call takes the parent's lock once instead of several
    /// concurrent calls fighting over it). `None` (the default) keeps the queue's order.
    fn order_key(&self, row: &OutboundRow<'_>) -> Option<String> {
        let _ = row;
        None
    }
}

/// What every destination's requests share, from the destination's common fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Rows per request.
    pub batch_size: usize,
    /// Timeout of one request.
    pub timeout: std::time::Duration,
}

/// A kind's settings section: the `webhook:`, `salesforce:` or `hubspot:` block of a
/// destination in the configuration file. Each kind implements it once; the
/// [`registry`] dispatches to it.
pub trait Section: serde::de::DeserializeOwned + std::fmt::Debug + Clone + Send + Sync {
    /// The kind's name, which is also the section's key in the configuration.
    const KIND: &'static str;
    /// The largest batch the API accepts in one request.
    const MAX_BATCH: usize;
    /// Rows per request when the configuration does not say.
    const DEFAULT_BATCH: usize;
    /// What the section must hold, for the error when it is missing.
    const NEEDS: &'static str;

    /// Checks the values; the error names the field inside the section.
    fn validate(&self) -> Result<(), SettingsError>;

    /// The secrets the section refers to (what the delivery function's IAM must read).
    fn secrets(&self) -> Vec<&SecretRef>;

    /// Resolves the section's secrets and builds the destination; a destination with a
    /// daily API budget counts its calls in `budget` (`None`: in its own process).
    fn build<'a>(
        &'a self,
        limits: RequestLimits,
        secrets: &'a SecretResolver,
        budget: Option<Arc<dyn budget::CallBudget>>,
    ) -> BoxFuture<'a, Result<Arc<dyn Destination>, SetupError>>;
}

/// A section's value refused; `field` is relative to the section (`""`: the section).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// The field inside the section, dotted (`auth.client_secret`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl SettingsError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a destination could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A credential is unusable (e.g. a private key that is not an RSA PEM key).
    #[error("{0}")]
    Credential(String),
}

/// A destination could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("destination {destination}: {source}")]
pub struct DestinationError {
    /// The destination.
    pub destination: String,
    /// Why.
    #[source]
    pub source: SetupError,
}

/// Sends the rows a destination can map and fails the others alone.
///
/// `map` turns a row into what the destination sends for it; a row it cannot map (see
/// [`UnmappableRow`]) gets a permanent `unmappable_row` error with the reason and is not
/// sent, so one poison row never costs its request's other rows. `send` receives the
/// mappable rows with their mapped form, in order, and answers for them; per-row
/// results come back in the order of `rows`. A whole-request refusal of the mappable
/// rows is passed on as it is: bisecting then isolates the bad rows, and a part holding
/// only unmappable rows costs no request.
pub(crate) async fn send_mappable<'r, T, F, Fut>(
    rows: &[OutboundRow<'r>],
    map: impl Fn(&OutboundRow<'r>) -> Result<T, UnmappableRow>,
    send: F,
) -> Answer
where
    F: FnOnce(Vec<OutboundRow<'r>>, Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let mut results: Vec<Option<RowResult>> = Vec::with_capacity(rows.len());
    let mut mappable = Vec::with_capacity(rows.len());
    let mut mapped = Vec::with_capacity(rows.len());
    for row in rows {
        match map(row) {
            Ok(value) => {
                results.push(None);
                mappable.push(row.clone());
                mapped.push(value);
            }
            Err(unmappable) => {
                tracing::warn!(key = %row.key, "the destination cannot map the row; failing it alone");
                results.push(Some(Err(RowError::permanent(
                    UnmappableRow::CODE,
                    unmappable.reason,
                ))));
            }
        }
    }
    let sent = if mappable.is_empty() {
        Vec::new()
    } else {
        match send(mappable, mapped).await {
            Answer::PerRow(sent) => sent,
            refused @ Answer::Refused(_) => return refused,
        }
    };
    let mut sent = sent.into_iter();
    Answer::PerRow(
        results
            .into_iter()
            .map(|slot| match slot {
                Some(result) => result,
                None => sent.next().unwrap_or_else(|| {
                    Err(RowError::retryable(
                        "RESULT_COUNT_MISMATCH",
                        "the destination gave no result for this row",
                    ))
                }),
            })
            .collect(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, item 1: rows a destination cannot map fail alone as `unmappable_row`;
    /// the others are sent, and every result comes back in the order of the rows.
    #[tokio::test]
    async fn unmappable_rows_fail_alone_and_results_keep_the_rows_order() {
        let keys: Vec<PrimaryKey> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| PrimaryKey::parse(*k).unwrap())
            .collect();
        let good = RowFields::from_text(r#"{"v": 1}"#).unwrap();
        let poison = RowFields::from_text(r#"{"v": 1e400}"#).unwrap();
        let rows: Vec<OutboundRow<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| OutboundRow {
                key,
                idempotency_key: format!("r:{key}"),
                fields: if i % 2 == 1 { &poison } else { &good },
            })
            .collect();
        let answer = send_mappable(
            &rows,
            |row| row.fields.pick(&|_| true),
            |sent, mapped| async move {
                assert_eq!(sent.len(), mapped.len());
                Answer::PerRow(
                    sent.iter()
                        .map(|row| {
                            if row.key.as_str() == "c" {
                                Err(RowError::retryable("LOCKED", "locked"))
                            } else {
                                Ok(())
                            }
                        })
                        .collect(),
                )
            },
        )
        .await;
        let Answer::PerRow(results) = answer else {
            panic!("per-row answers stay per row");
        };
        let codes: Vec<Option<String>> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.code.clone()))
            .collect();
        assert_eq!(
            codes,
            [
                None,
                Some("unmappable_row".into()),
                Some("LOCKED".into()),
                Some("unmappable_row".into())
            ]
        );
    }
}
