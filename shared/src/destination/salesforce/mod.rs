//! The Salesforce destination: sObject Collections upsert by external ID.
//!
//! # Wire format
//!
//! `PATCH {instance_url}/services/data/v{api_version}/composite/sobjects/{SObject}/{ExternalIdField}`
//! with `Authorization: Bearer {access_token}` and the body
//! `{"allOrNone": false, "records": [{"attributes": {"type": "{SObject}"}, "{ExternalIdField}": "{key}", …mapped fields}]}`
//! (at most 200 records). A well-formed request answers 200 with one `UpsertResult` per
//! record, in request order: `{"id", "success", "created", "errors": [{"statusCode", "message", "fields"}]}`.
//! A refused request answers a 4xx/5xx with `[{"errorCode", "message"}]`.
//!
//! # Authentication
//!
//! OAuth 2.0 server-to-server, against `{login_url}/services/oauth2/token`: the client
//! credentials flow (consumer key and secret) or the JWT bearer flow (an RS256 assertion
//! with `iss` = consumer key, `sub` = username, `aud` = login URL, `exp` = now + 3 min).
//! The token (and the `instance_url` it names) is cached in the destination object, so a
//! warm Lambda reuses it across invocations. Salesforce tokens carry no expiry: when a
//! call answers 401 / `INVALID_SESSION_ID`, the token is refreshed **once** (one refresh
//! for all requests in flight that saw the same stale token) and the call is repeated.
//!
//! # Error classes
//!
//! See [`classify`]: locks, 5xx and timeouts are retryable; `REQUEST_LIMIT_EXCEEDED` and
//! 429 are rate limits; validation and data errors are permanent with Salesforce's code
//! and message; an unknown code is retried (and logged with its code, never row values).
//!
//! # API budget
//!
//! Every answer's `Sforce-Limit-Info: api-usage=used/limit` is remembered. A request
//! **reserves** its call before it is sent: it goes only while `used` + the calls this
//! destination has in flight + 1 stays within `api_budget_share × limit`, checked and
//! counted under one lock, so requests in flight share one reservation instead of each
//! checking the same stale reading (the reserve holds however many are in flight). Until
//! the first reading, one call at a time goes (the first reads the figure). A request
//! that cannot reserve is not sent: its rows wait as rate-limited
//! (`API_BUDGET_RESERVED`) and are not failed. After [`BUDGET_RECHECK`] one request goes
//! through again to read a fresh figure (the org's usage is a rolling 24-hour window), so
//! a stopped destination spends at most one call per recheck. The reservation is this
//! process's: concurrent delivery invocations each hold their own (see the README's
//! Known limits).

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{http, scalar_text, Answer, Destination, OutboundRow, SetupError};
use crate::domain::{
    outcome::{ErrorClass, RowError},
    row::UnmappableRow,
};

mod answer;
mod auth;
mod config;

pub use answer::{classify, parse_limit_info, ApiError, RecordError, UpsertResult};
pub use auth::Credentials;
pub use config::{SalesforceAuth, SalesforceConfig, SalesforceFlow};

use answer::{describe, per_record, row_error};
use auth::{Auth, Token};

/// How long a reading past the API budget stops calls before one call re-reads it.
pub const BUDGET_RECHECK: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct ApiUsage {
    used: u64,
    limit: u64,
    read_at: Instant,
}

/// The daily API budget as this destination sees it: the last reading, and the calls
/// reserved (sent or about to be) that it may not count yet.
#[derive(Debug, Default)]
struct Budget {
    reading: Option<ApiUsage>,
    in_flight: u64,
}

/// One reserved call; dropping it (after the answer's reading was recorded, or when the
/// call was never made) gives the reservation back.
struct Reservation<'a> {
    budget: &'a Mutex<Budget>,
    _first_reading: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        budget.in_flight = budget.in_flight.saturating_sub(1);
    }
}

/// A Salesforce org.
pub struct Salesforce {
    client: reqwest::Client,
    auth: Auth,
    api_version: String,
    sobject: String,
    external_id_field: String,
    fields: BTreeMap<String, String>,
    parent_column: Option<String>,
    budget_share: f64,
    batch_size: usize,
    budget: Mutex<Budget>,
    /// Held by the one call in flight while there is no reading yet.
    first_reading: tokio::sync::Mutex<()>,
}

enum Attempt {
    Done(Answer),
    StaleToken,
}

impl Salesforce {
    /// A client for one org, sObject and external ID field.
    pub fn new(
        config: &SalesforceConfig,
        credentials: Credentials,
        batch_size: usize,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let client = http::client(timeout)?;
        let parent_column = config.parent_field.as_ref().map(|parent| {
            config
                .fields
                .iter()
                .find(|(_, target)| *target == parent)
                .map(|(column, _)| column.clone())
                .unwrap_or_else(|| parent.clone())
        });
        Ok(Self {
            auth: Auth {
                client: client.clone(),
                login_url: config.login_url.trim_end_matches('/').to_owned(),
                instance_url: config
                    .instance_url
                    .as_ref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
                credentials,
                token: tokio::sync::Mutex::new(None),
                generation: std::sync::atomic::AtomicU64::new(0),
            },
            client,
            api_version: config.api_version.clone(),
            sobject: config.sobject.clone(),
            external_id_field: config.external_id_field.clone(),
            fields: config.fields.clone(),
            parent_column,
            budget_share: config.api_budget_share,
            batch_size: batch_size.min(200),
            budget: Mutex::new(Budget::default()),
            first_reading: tokio::sync::Mutex::new(()),
        })
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves one call of the daily budget, or says how long to wait for one. The
    /// check and the count are one step under the lock, so concurrent requests never
    /// spend the same remainder twice.
    async fn reserve(&self) -> Result<Reservation<'_>, Duration> {
        let first_reading = if self.budget().reading.is_none() {
            Some(self.first_reading.lock().await)
        } else {
            None
        };
        let mut budget = self.budget();
        if let Some(usage) = budget.reading {
            let committed = usage
                .used
                .saturating_add(budget.in_flight)
                .saturating_add(1);
            let within =
                usage.limit == 0 || committed as f64 <= self.budget_share * usage.limit as f64;
            let age = usage.read_at.elapsed();
            // Past the recheck, one call may re-read the rolling figure.
            let recheck = age >= BUDGET_RECHECK && budget.in_flight == 0;
            if !within && !recheck {
                let wait = BUDGET_RECHECK.saturating_sub(age);
                return Err(wait.max(Duration::from_secs(1)));
            }
        }
        budget.in_flight = budget.in_flight.saturating_add(1);
        Ok(Reservation {
            budget: &self.budget,
            _first_reading: first_reading,
        })
    }

    /// One record of the request body; a row whose mapped fields cannot be read fails alone.
    fn record(&self, row: &OutboundRow<'_>) -> Result<Value, UnmappableRow> {
        let mut record = Map::new();
        record.insert(
            "attributes".into(),
            serde_json::json!({ "type": self.sobject }),
        );
        record.insert(
            self.external_id_field.clone(),
            Value::String(row.key.as_str().to_owned()),
        );
        let mut fields = row
            .fields
            .pick(&|column| self.fields.contains_key(column))?;
        for (column, field) in &self.fields {
            if field == &self.external_id_field {
                continue;
            }
            if let Some(value) = fields.remove(column) {
                record.insert(field.clone(), value);
            }
        }
        Ok(Value::Object(record))
    }

    async fn upsert(&self, rows: &[OutboundRow<'_>], records: Vec<Value>) -> Answer {
        let reservation = match self.reserve().await {
            Ok(reservation) => reservation,
            Err(wait) => {
                return Answer::PerRow(vec![
                Err(RowError::rate_limited(
                    "API_BUDGET_RESERVED",
                    format!(
                        "the org used its configured share ({:.0}%) of the daily API limit; waiting",
                        self.budget_share * 100.0
                    ),
                    Some(wait),
                ));
                rows.len()
                ])
            }
        };
        let answer = self.upsert_reserved(rows, records).await;
        drop(reservation);
        answer
    }

    async fn upsert_reserved(&self, rows: &[OutboundRow<'_>], records: Vec<Value>) -> Answer {
        let body = match serde_json::to_vec(&serde_json::json!({
            "allOrNone": false,
            "records": records,
        })) {
            Ok(body) => body,
            Err(err) => {
                return Answer::PerRow(vec![
                    Err(RowError::permanent(
                        "UNSERIALISABLE",
                        format!("the records cannot be written as JSON: {err}"),
                    ));
                    rows.len()
                ])
            }
        };
        let mut stale = None;
        for _ in 0..2 {
            let token = match self.auth.token(stale).await {
                Ok(token) => token,
                Err(error) => return Answer::PerRow(vec![Err(error); rows.len()]),
            };
            match self.call(&token, &body, rows.len()).await {
                Attempt::Done(answer) => return answer,
                Attempt::StaleToken => stale = Some(token.generation),
            }
        }
        Answer::PerRow(vec![
            Err(RowError::retryable(
                "INVALID_SESSION_ID",
                "Salesforce refused a freshly issued access token",
            ));
            rows.len()
        ])
    }

    async fn call(&self, token: &Token, body: &[u8], count: usize) -> Attempt {
        let url = format!(
            "{}/services/data/v{}/composite/sobjects/{}/{}",
            token.instance_url, self.api_version, self.sobject, self.external_id_field
        );
        // The instance URL comes from the token endpoint's answer: the HTTPS rule holds
        // for it at every request, not only when the configuration loaded.
        if let Err(error) = http::check_request_url(&url, "Salesforce's instance") {
            return Attempt::Done(Answer::PerRow(vec![Err(error); count]));
        }
        let mut response = match self
            .client
            .patch(&url)
            .bearer_auth(&token.access_token)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body.to_vec())
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => {
                return Attempt::Done(Answer::PerRow(vec![
                    Err(http::transport_error(
                        err,
                        "Salesforce"
                    ));
                    count
                ]))
            }
        };
        let status = response.status();
        // 300 is Salesforce's own answer to an ambiguous external ID; other 3xx are
        // redirects, never followed.
        if status.is_redirection() && status.as_u16() != 300 {
            let error = http::redirect_error(status, response.headers(), "Salesforce");
            return Attempt::Done(Answer::PerRow(vec![Err(error); count]));
        }
        if let Some((used, limit)) = response
            .headers()
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_limit_info)
        {
            self.budget().reading = Some(ApiUsage {
                used,
                limit,
                read_at: Instant::now(),
            });
        }
        let retry_after = http::retry_after(response.headers());
        let text = match http::read_body(&mut response, http::MAX_ANSWER_BYTES).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(err) => {
                return Attempt::Done(Answer::PerRow(vec![
                    Err(err.row_error("Salesforce", status));
                    count
                ]))
            }
        };
        let api_errors = serde_json::from_str::<Vec<ApiError>>(&text).ok();
        let first_code = api_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|e| e.error_code.as_str());
        if status.as_u16() == 401 || first_code == Some("INVALID_SESSION_ID") {
            tracing::info!(
                generation = token.generation,
                "Salesforce access token refused; refreshing it once"
            );
            return Attempt::StaleToken;
        }
        if status.as_u16() == 200 {
            return Attempt::Done(Answer::PerRow(per_record(&text, count)));
        }
        let whole = match (api_errors.as_ref().and_then(|e| e.first()), status.as_u16()) {
            (_, 300) => RowError::permanent(
                "MULTIPLE_MATCHES",
                "the external ID matches more than one record (HTTP 300)",
            ),
            (_, 429) => {
                RowError::rate_limited("HTTP_429", "Salesforce is rate limiting", retry_after)
            }
            (Some(error), _) if classify(&error.error_code) == ErrorClass::RateLimited => {
                RowError::rate_limited(&error.error_code, &error.message, retry_after)
            }
            (Some(error), status) if status < 500 => {
                let whole = row_error(&error.error_code, error.message.clone());
                if status != 403 && splittable(&error.error_code) {
                    // A request error names no record: one record's value (malformed
                    // JSON, a bad field value) refuses all of them. Split to find it.
                    return Attempt::Done(Answer::Refused(whole));
                }
                whole
            }
            (_, status) if status >= 500 || status == 408 => RowError::retryable(
                format!("HTTP_{status}"),
                format!("Salesforce answered {}", describe(status, &text)),
            )
            .with_retry_after(retry_after)
            .of_a_request_without_answer(),
            (_, status) => RowError::permanent(
                format!("HTTP_{status}"),
                format!(
                    "Salesforce refused the request: {}",
                    describe(status, &text)
                ),
            ),
        };
        Attempt::Done(Answer::PerRow(vec![Err(whole); count]))
    }
}

/// Whether a whole-request error may be caused by one record's content (and so is worth
/// splitting the request for), rather than by the destination's setup, which every
/// record would hit alike (access, an unknown sObject or field, the URL).
fn splittable(code: &str) -> bool {
    !(code.starts_with("INSUFFICIENT_ACCESS")
        || matches!(
            code,
            "NOT_FOUND"
                | "INVALID_TYPE"
                | "INVALID_FIELD"
                | "API_DISABLED_FOR_ORG"
                | "API_CURRENTLY_DISABLED"
        ))
}

impl Destination for Salesforce {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn request<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Answer> {
        Box::pin(super::send_mappable(
            rows,
            |row| self.record(row),
            move |rows, records| async move { self.upsert(&rows, records).await },
        ))
    }

    fn order_key(&self, row: &OutboundRow<'_>) -> Option<String> {
        row.fields
            .field(self.parent_column.as_ref()?)
            .as_ref()
            .and_then(scalar_text)
    }
}
