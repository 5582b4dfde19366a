//! The webhook destination.
//!
//! # Wire contract
//!
//! `POST {url}` with `Content-Type: application/json` and the body
//! `{"rows":[{"key":"…","idempotency_key":"run_id:key","fields":{…}}, …]}`.
//!
//! Headers: `Idempotency-Key` (a digest of the rows' idempotency keys: the same for a
//! retried request of the same rows), `X-Resync-Timestamp` (Unix seconds) and, when a
//! signing secret is configured, `X-Resync-Signature: v1=<hex HMAC-SHA256 of
//! "{timestamp}.{body}">`.
//!
//! Per-row results (optional): a 200 or 207 answer whose body is
//! `{"results":[{"key":"…","status":"delivered"|"retry"|"rejected","code":"…","message":"…","retry_after_secs":N}]}`.
//! A row missing from `results` is retried. Without such a body the HTTP status decides
//! for the whole request: 2xx delivered; 408, 429 and 5xx retryable (429 as a rate
//! limit), honouring `Retry-After` (seconds); other 4xx permanent; timeouts and
//! connection errors retryable.
//!
//! A `413 Payload Too Large` answer to a request of several rows splits it in halves,
//! sent one after the other (and split again while refused), so wide rows reach an
//! endpoint whatever its body limit; a single row refused with 413 fails permanently.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    check_endpoint_url, http, Destination, OutboundRow, RequestLimits, Section, SettingsError,
    SetupError,
};
use crate::{
    domain::outcome::{RowError, RowResult},
    secrets::{SecretRef, SecretResolver},
};

/// The `webhook:` section of a destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// HTTPS URL (plain HTTP only for loopback addresses).
    pub url: String,
    /// Secret for the `X-Resync-Signature` HMAC-SHA256 header.
    pub signing_secret: Option<SecretRef>,
}

impl Section for WebhookConfig {
    const KIND: &'static str = "webhook";
    const MAX_BATCH: usize = 1000;
    const DEFAULT_BATCH: usize = 100;
    const NEEDS: &'static str = "with its url";

    fn validate(&self) -> Result<(), SettingsError> {
        check_endpoint_url(&self.url).map_err(|message| SettingsError::new("url", message))
    }

    fn secrets(&self) -> Vec<&SecretRef> {
        self.signing_secret.iter().collect()
    }

    fn build<'a>(
        &'a self,
        limits: RequestLimits,
        secrets: &'a SecretResolver,
    ) -> BoxFuture<'a, Result<Arc<dyn Destination>, SetupError>> {
        Box::pin(async move {
            let secret = match &self.signing_secret {
                Some(secret) => Some(secrets.resolve(secret).await?),
                None => None,
            };
            let webhook = Webhook::new(&self.url, secret, limits.batch_size, limits.timeout)?;
            Ok(Arc::new(webhook) as Arc<dyn Destination>)
        })
    }
}

/// A webhook endpoint.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
    batch_size: usize,
}

#[derive(Serialize)]
struct RequestBody<'a> {
    rows: Vec<RequestRow<'a>>,
}

#[derive(Serialize)]
struct RequestRow<'a> {
    key: &'a str,
    idempotency_key: &'a str,
    fields: &'a serde_json::value::RawValue,
}

/// The per-row answer body. Parsed borrowing from the response text (no copy of a key
/// or status that has no escapes).
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultsBody<'a> {
    /// One entry per row.
    #[serde(borrow)]
    pub results: Vec<RowStatus<'a>>,
}

/// One row's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowStatus<'a> {
    /// The row's key.
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    /// `delivered`, `retry` or `rejected`.
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    /// Error code.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub code: Option<Cow<'a, str>>,
    /// Error message.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub message: Option<Cow<'a, str>>,
    /// Wait before retrying, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// The signature header value for a body: `v1=<hex HMAC-SHA256("{timestamp}.{body}")>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// A webhook client.
    pub fn new(
        url: &str,
        secret: Option<String>,
        batch_size: usize,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        Ok(Self {
            client: http::client(timeout)?,
            url: url.to_owned(),
            secret,
            batch_size,
        })
    }

    /// Posts the rows, halving a request the endpoint refuses as too large.
    async fn post(&self, rows: &[OutboundRow<'_>]) -> Vec<RowResult> {
        let mut results = Vec::with_capacity(rows.len());
        // A stack of requests still to send, the next on top, so results stay in order.
        let mut pending = vec![rows];
        while let Some(part) = pending.pop() {
            match self.post_once(part).await {
                Some(answer) => results.extend(answer),
                None => {
                    let (first, second) = part.split_at(part.len() / 2);
                    tracing::info!(
                        rows = part.len(),
                        "the webhook refused the request as too large; sending it in halves"
                    );
                    pending.push(second);
                    pending.push(first);
                }
            }
        }
        results
    }

    /// One request; `None` when the endpoint refused a request of several rows with 413.
    async fn post_once(&self, rows: &[OutboundRow<'_>]) -> Option<Vec<RowResult>> {
        let body = RequestBody {
            rows: rows
                .iter()
                .map(|r| RequestRow {
                    key: r.key.as_str(),
                    idempotency_key: &r.idempotency_key,
                    fields: r.fields.as_raw(),
                })
                .collect(),
        };
        let body = serde_json::to_vec(&body).expect("rows serialise");
        let timestamp = crate::domain::timestamp::now().unix_timestamp();
        let mut digest = Sha256::new();
        for row in rows {
            digest.update(row.idempotency_key.as_bytes());
            digest.update(b"\n");
        }
        let mut request = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", hex::encode(digest.finalize()))
            .header("X-Resync-Timestamp", timestamp.to_string());
        if let Some(secret) = &self.secret {
            request = request.header("X-Resync-Signature", signature(secret, timestamp, &body));
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) => {
                return Some(vec![
                    Err(http::transport_error(err, "the webhook"));
                    rows.len()
                ]);
            }
        };
        let status = response.status();
        if status.as_u16() == 413 && rows.len() > 1 {
            return None;
        }
        let retry_after = http::retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        if status.as_u16() == 200 || status.as_u16() == 207 {
            if let Ok(parsed) = serde_json::from_str::<ResultsBody>(&text) {
                return Some(per_row(rows, parsed.results));
            }
        }
        let code = format!("HTTP_{}", status.as_u16());
        let whole = if status.is_success() {
            Ok(())
        } else if status.as_u16() == 429 {
            Err(RowError::rate_limited(
                code,
                "the webhook is rate limiting",
                retry_after,
            ))
        } else if status.as_u16() == 408 || status.is_server_error() {
            Err(
                RowError::retryable(code, format!("the webhook answered {status}"))
                    .with_retry_after(retry_after),
            )
        } else {
            Err(RowError::permanent(
                code,
                format!("the webhook refused the request: {status}"),
            ))
        };
        Some(vec![whole; rows.len()])
    }
}

fn per_row(rows: &[OutboundRow<'_>], results: Vec<RowStatus<'_>>) -> Vec<RowResult> {
    // The usual answer lists the rows in request order: match by position. This gives
    // exactly what matching by key (first answer to first copy) gives.
    if results.len() == rows.len()
        && results
            .iter()
            .zip(rows)
            .all(|(result, row)| result.key == row.key.as_str())
    {
        return results.into_iter().map(row_result).collect();
    }
    let mut by_key: HashMap<Cow<'_, str>, VecDeque<RowStatus<'_>>> = HashMap::new();
    for result in results {
        by_key
            .entry(result.key.clone())
            .or_default()
            .push_back(result);
    }
    rows.iter()
        .map(|row| {
            match by_key
                .get_mut(row.key.as_str())
                .and_then(VecDeque::pop_front)
            {
                None => Err(RowError::retryable(
                    "MISSING_RESULT",
                    "the webhook's answer has no result for this row",
                )),
                Some(result) => row_result(result),
            }
        })
        .collect()
}

fn row_result(result: RowStatus<'_>) -> RowResult {
    match result.status.as_ref() {
        "delivered" | "ok" => Ok(()),
        status => {
            let code = result.code.unwrap_or_default().into_owned();
            let message = result.message.unwrap_or_default().into_owned();
            match status {
                "retry" => Err(RowError::retryable(code, message)
                    .with_retry_after(result.retry_after_secs.map(Duration::from_secs))),
                "rejected" => Err(RowError::permanent(code, message)),
                other => Err(RowError::retryable(
                    "UNKNOWN_STATUS",
                    format!("unknown row status '{other}'"),
                )),
            }
        }
    }
}

impl Destination for Webhook {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn send<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Vec<RowResult>> {
        Box::pin(self.post(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // RFC 4231-style check: a different body or secret changes the signature.
        let a = signature("secret", 1_700_000_000, b"{}");
        assert!(a.starts_with("v1="));
        assert_eq!(a.len(), 3 + 64);
        assert_ne!(a, signature("secret", 1_700_000_000, b"{ }"));
        assert_ne!(a, signature("other", 1_700_000_000, b"{}"));
        assert_ne!(a, signature("secret", 1_700_000_001, b"{}"));
        assert_eq!(a, signature("secret", 1_700_000_000, b"{}"));
    }
}
