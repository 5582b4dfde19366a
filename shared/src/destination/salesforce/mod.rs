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
//! Every answer's `Sforce-Limit-Info: api-usage=used/limit` is remembered, and a request
//! **reserves** its call before it is sent ([`super::budget`]): it goes only while
//! `used` + the calls reserved and not yet answered + 1 stays within
//! `api_budget_share × limit`. Delivery counts the reservations in the runs table, so
//! requests in flight share one reservation across every invocation of the destination
//! and the reserve holds however many run at once. A request that cannot reserve is not
//! sent: its rows wait as rate-limited (`API_BUDGET_RESERVED`) and are not failed.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{
    budget::{ApiReading, CallBudget, LocalBudget},
    http, scalar_text, Answer, Destination, OutboundRow, SetupError,
};
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

pub use super::budget::BUDGET_RECHECK;

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
    /// Where the calls are counted against the org's daily API budget.
    budget: Arc<dyn CallBudget>,
}

enum Attempt {
    Done(Answer),
    StaleToken,
}

/// What a call came to, and the usage its answer reported.
struct Called {
    attempt: Attempt,
    reading: Option<ApiReading>,
}

impl Salesforce {
    /// A client for one org, sObject and external ID field; its calls are counted in
    /// `budget` (`None`: in this process only).
    pub fn new(
        config: &SalesforceConfig,
        credentials: Credentials,
        batch_size: usize,
        timeout: Duration,
        budget: Option<Arc<dyn CallBudget>>,
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
            budget: budget.unwrap_or_else(|| Arc::new(LocalBudget::default())),
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
        let ticket = match self.budget.reserve(self.budget_share).await {
            Ok(ticket) => ticket,
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
        let (answer, reading) = self.upsert_reserved(rows, records).await;
        // The reading is recorded before the call stops counting as reserved.
        self.budget.release(ticket, reading).await;
        answer
    }

    /// The answer, and the latest usage the org reported.
    async fn upsert_reserved(
        &self,
        rows: &[OutboundRow<'_>],
        records: Vec<Value>,
    ) -> (Answer, Option<ApiReading>) {
        let body = match serde_json::to_vec(&serde_json::json!({
            "allOrNone": false,
            "records": records,
        })) {
            Ok(body) => body,
            Err(err) => {
                let error = RowError::permanent(
                    "UNSERIALISABLE",
                    format!("the records cannot be written as JSON: {err}"),
                );
                return (Answer::PerRow(vec![Err(error); rows.len()]), None);
            }
        };
        let mut stale = None;
        let mut reading = None;
        for _ in 0..2 {
            let token = match self.auth.token(stale).await {
                Ok(token) => token,
                Err(error) => return (Answer::PerRow(vec![Err(error); rows.len()]), reading),
            };
            let called = self.call(&token, &body, rows.len()).await;
            reading = called.reading.or(reading);
            match called.attempt {
                Attempt::Done(answer) => return (answer, reading),
                Attempt::StaleToken => stale = Some(token.generation),
            }
        }
        let error = RowError::retryable(
            "INVALID_SESSION_ID",
            "Salesforce refused a freshly issued access token",
        );
        (Answer::PerRow(vec![Err(error); rows.len()]), reading)
    }

    async fn call(&self, token: &Token, body: &[u8], count: usize) -> Called {
        let done = |answer| Called {
            attempt: Attempt::Done(answer),
            reading: None,
        };
        let url = format!(
            "{}/services/data/v{}/composite/sobjects/{}/{}",
            token.instance_url, self.api_version, self.sobject, self.external_id_field
        );
        // The instance URL comes from the token endpoint's answer: the HTTPS rule holds
        // for it at every request, not only when the configuration loaded.
        if let Err(error) = http::check_request_url(&url, "Salesforce's instance") {
            return done(Answer::PerRow(vec![Err(error); count]));
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
                return done(Answer::PerRow(vec![
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
            return done(Answer::PerRow(vec![Err(error); count]));
        }
        let reading = response
            .headers()
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_limit_info)
            .map(|(used, limit)| ApiReading { used, limit });
        let retry_after = http::retry_after(response.headers());
        let attempt = match http::read_body(&mut response, http::MAX_ANSWER_BYTES).await {
            Ok(body) => answer(
                status.as_u16(),
                &String::from_utf8_lossy(&body),
                retry_after,
                token,
                count,
            ),
            Err(err) => Attempt::Done(Answer::PerRow(vec![
                Err(err.row_error("Salesforce", status));
                count
            ])),
        };
        Called { attempt, reading }
    }
}

/// What an answer read whole says about the request's records.
fn answer(
    status: u16,
    text: &str,
    retry_after: Option<Duration>,
    token: &Token,
    count: usize,
) -> Attempt {
    let api_errors = serde_json::from_str::<Vec<ApiError>>(text).ok();
    let first_code = api_errors
        .as_ref()
        .and_then(|errors| errors.first())
        .map(|e| e.error_code.as_str());
    if status == 401 || first_code == Some("INVALID_SESSION_ID") {
        tracing::info!(
            generation = token.generation,
            "Salesforce access token refused; refreshing it once"
        );
        return Attempt::StaleToken;
    }
    if status == 200 {
        return Attempt::Done(Answer::PerRow(per_record(text, count)));
    }
    let whole = match (api_errors.as_ref().and_then(|e| e.first()), status) {
        (_, 300) => RowError::permanent(
            "MULTIPLE_MATCHES",
            "the external ID matches more than one record (HTTP 300)",
        ),
        (_, 429) => RowError::rate_limited("HTTP_429", "Salesforce is rate limiting", retry_after),
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
        (_, status) if status >= 500 || status == 408 => RowError::unanswered(
            format!("HTTP_{status}"),
            format!("Salesforce answered {}", describe(status, text)),
        )
        .with_retry_after(retry_after),
        (_, status) => RowError::permanent(
            format!("HTTP_{status}"),
            format!("Salesforce refused the request: {}", describe(status, text)),
        ),
    };
    Attempt::Done(Answer::PerRow(vec![Err(whole); count]))
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
