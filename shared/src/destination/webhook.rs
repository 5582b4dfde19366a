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
//!
//! How an answer is read (see [`crate::destination::http`] for the shared rules):
//!
//! - A 2xx body (no other is read) is read whole, at most [`http::MAX_ANSWER_BYTES`];
//!   a body cut off (the connection dropped, the timeout hit mid-body) or longer than
//!   that is a transport error: every row of the request retried (`ANSWER_CUT`,
//!   `ANSWER_TOO_LARGE`).
//! - A 2xx with no body, or a body that is not JSON at all (does not start with `{` or
//!   `[`: `OK`, an HTML page), or JSON without a `results` member: the status decides,
//!   delivered (a 207 without results is ambiguous, below).
//! - A body that starts like JSON but does not parse (truncated, malformed, `results`
//!   twice), or a `results` member that is not a list of `{key, status}`: ambiguous,
//!   every row retried (`BAD_RESPONSE`). Writes are idempotent upserts, so a retry of
//!   a row that was written is harmless; counting an unwritten row delivered is not.
//! - A row missing from `results` is retried (`MISSING_RESULT`); results naming keys
//!   the request did not send are ignored (counted in the log, never named); an unknown
//!   status is retried. `retry_after_secs` is read leniently and capped at 12 hours.
//!
//! Without a results body the HTTP status decides for the whole request: 2xx
//! delivered; 408, 429 and 5xx retryable (429 as a rate limit), honouring
//! `Retry-After` (seconds or an HTTP-date, capped at 12 hours); 401/403 permanent for
//! every row; any 3xx permanent (`REDIRECT`, naming the location: no redirect is
//! followed, so a signed body is never sent anywhere else); other 4xx — 413 included —
//! refuse the request as a whole without naming a row, so the request is split in
//! halves to isolate the rows it was refused for ([`crate::destination::bisect`]);
//! timeouts and connection errors retryable. A single row refused that way fails
//! permanently with the endpoint's status as its code.

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
    check_endpoint_url, http, Answer, Destination, OutboundRow, RequestLimits, Section,
    SettingsError, SetupError,
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
        _budget: Option<Arc<dyn crate::destination::budget::CallBudget>>,
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
    /// Wait before retrying, in seconds (any JSON number; negative is none, fractions
    /// round up, anything larger than 64 bits or not a number is read leniently).
    #[serde(
        default,
        deserialize_with = "lenient_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after_secs: Option<u64>,
}

/// A number of seconds as any JSON value: numbers saturate into `u64`, anything else
/// is no wait (a bad hint must not make the whole answer unreadable).
fn lenient_secs<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(match value {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f > 0.0).map(|f| f.ceil() as u64)),
        _ => None,
    })
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

    /// One request. A `413` to several rows, and any other content refusal that names
    /// no row, is [`Answer::Refused`]: [`Destination::send`] splits the request.
    async fn post(&self, rows: &[OutboundRow<'_>]) -> Answer {
        if let Err(error) = http::check_request_url(&self.url, "the webhook") {
            return Answer::PerRow(vec![Err(error); rows.len()]);
        }
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
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(err) => {
                return Answer::PerRow(vec![
                    Err(RowError::permanent(
                        "UNSERIALISABLE",
                        format!("the rows cannot be written as JSON: {err}"),
                    ));
                    rows.len()
                ])
            }
        };
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
        let mut response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) => {
                return Answer::PerRow(vec![
                    Err(http::transport_error(err, "the webhook"));
                    rows.len()
                ]);
            }
        };
        let status = response.status();
        if status.is_redirection() {
            let error = http::redirect_error(status, response.headers(), "the webhook");
            return Answer::PerRow(vec![Err(error); rows.len()]);
        }
        let retry_after = http::retry_after(response.headers());
        if status.is_success() {
            // Only a 2xx body is read (the status alone decides the others).
            return Answer::PerRow(
                match http::read_body(&mut response, http::MAX_ANSWER_BYTES).await {
                    Ok(body) => success(status.as_u16(), &body, rows),
                    // An answer not read whole says nothing reliable about any row.
                    Err(err) => vec![Err(err.row_error("the webhook", status)); rows.len()],
                },
            );
        }
        let code = format!("HTTP_{}", status.as_u16());
        let whole = match status.as_u16() {
            429 => RowError::rate_limited(code, "the webhook is rate limiting", retry_after),
            408 => RowError::unanswered(code, format!("the webhook answered {status}"))
                .with_retry_after(retry_after),
            _ if status.is_server_error() => {
                RowError::unanswered(code, format!("the webhook answered {status}"))
                    .with_retry_after(retry_after)
            }
            // Credentials: every row would be refused alike; not the rows' fault.
            401 | 403 => RowError::permanent(
                code,
                format!("the webhook refused the request's credentials: {status}"),
            ),
            413 => {
                return Answer::Refused(RowError::permanent(
                    code,
                    format!("the webhook refused the request as too large: {status}"),
                ))
            }
            _ if status.is_client_error() => {
                return Answer::Refused(RowError::permanent(
                    code,
                    format!("the webhook refused the request: {status}"),
                ))
            }
            _ => RowError::permanent(code, format!("the webhook answered {status}")),
        };
        Answer::PerRow(vec![Err(whole); rows.len()])
    }
}

/// The body of a 2xx answer as far as `results` goes: only the member is parsed here
/// (any other members are the endpoint's business).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    results: Option<&'a serde_json::value::RawValue>,
}

/// Settles the rows of a 2xx answer (read whole): see the module's wire contract.
fn success(status: u16, body: &[u8], rows: &[OutboundRow<'_>]) -> Vec<RowResult> {
    let ambiguous = |what: &str| {
        tracing::warn!(
            status,
            rows = rows.len(),
            what,
            "the webhook's results could not be read; retrying the request's rows"
        );
        vec![
            Err(RowError::retryable(
                "BAD_RESPONSE",
                format!("the webhook answered {status} with {what}"),
            ));
            rows.len()
        ]
    };
    let no_results = || {
        if status == 207 {
            // Multi-status promises per-row results.
            ambiguous("a multi-status answer without results")
        } else {
            vec![Ok(()); rows.len()]
        }
    };
    let looks_like_json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));
    if !looks_like_json {
        // Absent, or not JSON at all ("OK", an HTML page): the status decides.
        return no_results();
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return ambiguous("a JSON body that is not UTF-8");
    };
    let envelope: Envelope<'_> = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        // Valid JSON, just not an object (`[]`): no results member. (An object whose
        // shape is wrong can only name `results` twice: ambiguous.)
        Err(err)
            if err.classify() == serde_json::error::Category::Data
                && text.trim_start().starts_with('[') =>
        {
            return no_results()
        }
        Err(err) if err.is_eof() => return ambiguous("truncated JSON"),
        Err(_) => return ambiguous("malformed JSON"),
    };
    let Some(results) = envelope.results else {
        return no_results();
    };
    match serde_json::from_str::<Vec<RowStatus<'_>>>(results.get()) {
        Ok(results) => per_row(rows, results),
        Err(_) => ambiguous("a results member that is not a list of row results"),
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
    let settled: Vec<RowResult> = rows
        .iter()
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
        .collect();
    // Results for keys the request did not send (or more results than copies sent)
    // decide nothing: ignored, and counted in the log (their keys are not the sync's).
    let unmatched: usize = by_key.values().map(VecDeque::len).sum();
    if unmatched > 0 {
        tracing::warn!(
            unmatched,
            rows = rows.len(),
            "the webhook's results name keys the request did not send; ignored"
        );
    }
    settled
}

fn row_result(result: RowStatus<'_>) -> RowResult {
    match result.status.as_ref() {
        "delivered" | "ok" => Ok(()),
        status => {
            let code = result.code.unwrap_or_default().into_owned();
            let message = result.message.unwrap_or_default().into_owned();
            match status {
                "retry" => Err(RowError::retryable(code, message).with_retry_after(
                    result
                        .retry_after_secs
                        .map(|secs| http::capped_wait(Duration::from_secs(secs))),
                )),
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

    fn request<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Answer> {
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
