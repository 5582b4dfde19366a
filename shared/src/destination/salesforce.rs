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
//! Every answer's `Sforce-Limit-Info: api-usage=used/limit` is remembered. Once `used`
//! reaches `api_budget_share × limit`, requests are not sent: their rows wait as
//! rate-limited (`API_BUDGET_RESERVED`) and are not failed. After [`BUDGET_RECHECK`]
//! one request goes through again to read a fresh figure (the org's usage is a rolling
//! 24-hour window), so a stopped destination spends at most one call per recheck.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{scalar_text, Destination, OutboundRow};
use crate::{
    config::{SalesforceAuth, SalesforceConfig, SalesforceFlow},
    outcome::{ErrorClass, RowError, RowResult},
    secrets::{SecretError, SecretResolver},
};

/// How long a reading past the API budget stops calls before one call re-reads it.
pub const BUDGET_RECHECK: Duration = Duration::from_secs(300);

/// Lifetime of a JWT bearer assertion (Salesforce accepts at most a few minutes).
const ASSERTION_LIFETIME_SECS: i64 = 180;

/// Credentials of one of the two server-to-server flows, resolved from their secrets.
pub enum Credentials {
    /// OAuth 2.0 client credentials flow.
    ClientCredentials {
        /// Consumer key.
        client_id: String,
        /// Consumer secret.
        client_secret: String,
    },
    /// OAuth 2.0 JWT bearer flow.
    JwtBearer {
        /// Consumer key (`iss`).
        client_id: String,
        /// Integration user (`sub`).
        username: String,
        /// Signing key (RS256).
        key: jsonwebtoken::EncodingKey,
        /// `aud`, when not the login URL.
        audience: Option<String>,
    },
}

/// Why credentials could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The private key is not an RSA PEM key.
    #[error("{0}")]
    Key(String),
}

impl Credentials {
    /// Reads the flow's secrets (Secrets Manager in production).
    pub async fn resolve(
        auth: &SalesforceAuth,
        secrets: &SecretResolver,
    ) -> Result<Self, CredentialError> {
        match auth.flow {
            SalesforceFlow::ClientCredentials => {
                let secret = auth.client_secret.as_ref().ok_or_else(|| {
                    CredentialError::Key("the client_credentials flow needs client_secret".into())
                })?;
                Ok(Self::ClientCredentials {
                    client_id: auth.client_id.clone(),
                    client_secret: secrets.resolve(secret).await?,
                })
            }
            SalesforceFlow::JwtBearer => {
                let key = auth.private_key.as_ref().ok_or_else(|| {
                    CredentialError::Key("the jwt_bearer flow needs private_key".into())
                })?;
                let pem = secrets.resolve(key).await?;
                Ok(Self::JwtBearer {
                    client_id: auth.client_id.clone(),
                    username: auth.username.clone().ok_or_else(|| {
                        CredentialError::Key("the jwt_bearer flow needs username".into())
                    })?,
                    key: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                        CredentialError::Key(format!("private_key is not an RSA PEM key: {e}"))
                    })?,
                    audience: auth.audience.clone(),
                })
            }
        }
    }
}

#[derive(Clone)]
struct Token {
    access_token: String,
    instance_url: String,
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
struct ApiUsage {
    used: u64,
    limit: u64,
    read_at: Instant,
}

/// A Salesforce org.
pub struct Salesforce {
    client: reqwest::Client,
    login_url: String,
    instance_url: Option<String>,
    api_version: String,
    sobject: String,
    external_id_field: String,
    fields: BTreeMap<String, String>,
    parent_column: Option<String>,
    budget_share: f64,
    credentials: Credentials,
    batch_size: usize,
    token: tokio::sync::Mutex<Option<Token>>,
    generation: std::sync::atomic::AtomicU64,
    usage: Mutex<Option<ApiUsage>>,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    instance_url: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
}

/// One `UpsertResult` of an sObject Collections answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpsertResult {
    /// The record's id (absent on failure).
    #[serde(default)]
    pub id: Option<String>,
    /// Whether the record was written.
    pub success: bool,
    /// Why not.
    #[serde(default)]
    pub errors: Vec<RecordError>,
    /// Whether the record was created (rather than updated).
    #[serde(default)]
    pub created: Option<bool>,
}

/// One error of a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordError {
    /// e.g. `UNABLE_TO_LOCK_ROW`.
    pub status_code: String,
    /// Salesforce's message.
    #[serde(default)]
    pub message: String,
    /// The fields involved.
    #[serde(default)]
    pub fields: Vec<String>,
}

/// One entry of a refused request's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    /// e.g. `INVALID_SESSION_ID`.
    pub error_code: String,
    /// Salesforce's message.
    #[serde(default)]
    pub message: String,
}

/// How a Salesforce error code is handled; unknown codes are retried.
pub fn classify(code: &str) -> ErrorClass {
    known_class(code).unwrap_or(ErrorClass::Retryable)
}

fn known_class(code: &str) -> Option<ErrorClass> {
    const RETRYABLE: &[&str] = &[
        "UNABLE_TO_LOCK_ROW",
        "SERVER_UNAVAILABLE",
        "REQUEST_RUNNING_TOO_LONG",
        "QUERY_TIMEOUT",
        "TIMEOUT",
        "INVALID_SESSION_ID",
    ];
    const RATE_LIMITED: &[&str] = &[
        "REQUEST_LIMIT_EXCEEDED",
        "TOO_MANY_REQUESTS",
        "CONCURRENT_REQUEST_LIMIT_EXCEEDED",
        "API_BUDGET_RESERVED",
    ];
    const PERMANENT: &[&str] = &[
        "REQUIRED_FIELD_MISSING",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "FIELD_INTEGRITY_EXCEPTION",
        "FIELD_FILTER_VALIDATION_EXCEPTION",
        "INVALID_FIELD",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "INVALID_TYPE",
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "INVALID_EMAIL_ADDRESS",
        "INVALID_CROSS_REFERENCE_KEY",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "MALFORMED_ID",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "DUPLICATE_VALUE",
        "DUPLICATES_DETECTED",
        "DUPLICATE_EXTERNAL_ID",
        "MULTIPLE_MATCHES",
        "STRING_TOO_LONG",
        "ENTITY_IS_DELETED",
        "JSON_PARSER_ERROR",
        "NOT_FOUND",
    ];
    if RETRYABLE.contains(&code) {
        Some(ErrorClass::Retryable)
    } else if RATE_LIMITED.contains(&code) {
        Some(ErrorClass::RateLimited)
    } else if PERMANENT.contains(&code) || code.starts_with("INSUFFICIENT_ACCESS") {
        Some(ErrorClass::Permanent)
    } else {
        None
    }
}

fn row_error(code: &str, message: impl Into<String>) -> RowError {
    let message = message.into();
    match known_class(code) {
        Some(ErrorClass::Permanent) => RowError::permanent(code, message),
        Some(ErrorClass::RateLimited) => RowError::rate_limited(code, message, None),
        Some(_) => RowError::retryable(code, message),
        None => {
            // The code only: Salesforce's messages may quote field values (I6).
            tracing::warn!(code, "unknown Salesforce error code; retrying the row");
            RowError::retryable(code, message)
        }
    }
}

/// Parses `api-usage=used/limit` out of a `Sforce-Limit-Info` value.
pub fn parse_limit_info(value: &str) -> Option<(u64, u64)> {
    value.split(',').find_map(|part| {
        let (used, limit) = part.trim().strip_prefix("api-usage=")?.split_once('/')?;
        Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
    })
}

enum Attempt {
    Done(Vec<RowResult>),
    StaleToken,
}

impl Salesforce {
    /// A client for one org, sObject and external ID field.
    pub fn new(
        config: &SalesforceConfig,
        credentials: Credentials,
        batch_size: usize,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("resync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let parent_column = config.parent_field.as_ref().map(|parent| {
            config
                .fields
                .iter()
                .find(|(_, target)| *target == parent)
                .map(|(column, _)| column.clone())
                .unwrap_or_else(|| parent.clone())
        });
        Ok(Self {
            client,
            login_url: config.login_url.trim_end_matches('/').to_owned(),
            instance_url: config
                .instance_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            api_version: config.api_version.clone(),
            sobject: config.sobject.clone(),
            external_id_field: config.external_id_field.clone(),
            fields: config.fields.clone(),
            parent_column,
            budget_share: config.api_budget_share,
            credentials,
            batch_size: batch_size.min(200),
            token: tokio::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            usage: Mutex::new(None),
        })
    }

    /// The last `Sforce-Limit-Info` reading: (used, limit).
    pub fn api_usage(&self) -> Option<(u64, u64)> {
        self.usage
            .lock()
            .expect("usage")
            .map(|usage| (usage.used, usage.limit))
    }

    /// The cached token, or a new one when there is none or when `stale` is the
    /// generation of a token a call was refused with (one refresh per stale token).
    async fn token(&self, stale: Option<u64>) -> Result<Token, RowError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref() {
            if Some(token.generation) != stale {
                return Ok(token.clone());
            }
        }
        let token = self.request_token().await?;
        *slot = Some(token.clone());
        Ok(token)
    }

    async fn request_token(&self) -> Result<Token, RowError> {
        let url = format!("{}/services/oauth2/token", self.login_url);
        let form: Vec<(&str, String)> = match &self.credentials {
            Credentials::ClientCredentials {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.clone()),
            ],
            Credentials::JwtBearer {
                client_id,
                username,
                key,
                audience,
            } => {
                let claims = Assertion {
                    iss: client_id,
                    sub: username,
                    aud: audience.as_deref().unwrap_or(&self.login_url),
                    exp: crate::time_util::now().unix_timestamp() + ASSERTION_LIFETIME_SECS,
                };
                let assertion = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                    &claims,
                    key,
                )
                .map_err(|e| {
                    RowError::permanent("AUTH_FAILED", format!("cannot sign the JWT: {e}"))
                })?;
                vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                    ),
                    ("assertion", assertion),
                ]
            }
        };
        let response = self
            .client
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|err| {
                RowError::retryable(
                    "AUTH_UNAVAILABLE",
                    format!(
                        "cannot reach the Salesforce token endpoint: {}",
                        err.without_url()
                    ),
                )
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let answer: TokenAnswer = serde_json::from_str(&text).map_err(|_| {
                RowError::retryable(
                    "AUTH_UNAVAILABLE",
                    "the Salesforce token endpoint answered without an access token",
                )
            })?;
            let instance_url = self
                .instance_url
                .clone()
                .or(answer
                    .instance_url
                    .map(|u| u.trim_end_matches('/').to_owned()))
                .ok_or_else(|| {
                    RowError::permanent(
                        "AUTH_FAILED",
                        "the token answer names no instance_url; set salesforce.instance_url",
                    )
                })?;
            if let Err(message) = super::check_endpoint_url(&instance_url) {
                return Err(RowError::permanent("AUTH_FAILED", message));
            }
            let generation = self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            tracing::info!(generation, "Salesforce access token obtained");
            return Ok(Token {
                access_token: answer.access_token,
                instance_url,
                generation,
            });
        }
        let oauth_error = serde_json::from_str::<OAuthError>(&text)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP_{}", status.as_u16()));
        tracing::warn!(status = status.as_u16(), error = %oauth_error, "Salesforce refused the token request");
        if status.is_server_error() || status.as_u16() == 429 {
            Err(RowError::retryable(
                "AUTH_UNAVAILABLE",
                format!("the Salesforce token endpoint answered {status}"),
            ))
        } else {
            // Wrong consumer key, secret, user or certificate: retrying cannot help
            // before an operator fixes the configuration.
            Err(RowError::permanent(
                "AUTH_FAILED",
                format!("Salesforce refused the credentials: {oauth_error}"),
            ))
        }
    }

    fn budget_exhausted(&self) -> Option<Duration> {
        let usage = (*self.usage.lock().expect("usage"))?;
        let over = usage.limit > 0 && usage.used as f64 >= self.budget_share * usage.limit as f64;
        let age = usage.read_at.elapsed();
        (over && age < BUDGET_RECHECK).then(|| BUDGET_RECHECK - age)
    }

    fn record(&self, row: &OutboundRow<'_>) -> Value {
        let mut record = Map::new();
        record.insert(
            "attributes".into(),
            serde_json::json!({ "type": self.sobject }),
        );
        record.insert(
            self.external_id_field.clone(),
            Value::String(row.key.as_str().to_owned()),
        );
        let mut fields = row.fields.to_map();
        for (column, field) in &self.fields {
            if field == &self.external_id_field {
                continue;
            }
            if let Some(value) = fields.remove(column) {
                record.insert(field.clone(), value);
            }
        }
        Value::Object(record)
    }

    async fn upsert(&self, rows: &[OutboundRow<'_>]) -> Vec<RowResult> {
        if let Some(wait) = self.budget_exhausted() {
            return vec![
                Err(RowError::rate_limited(
                    "API_BUDGET_RESERVED",
                    format!(
                        "the org used its configured share ({:.0}%) of the daily API limit; waiting",
                        self.budget_share * 100.0
                    ),
                    Some(wait),
                ));
                rows.len()
            ];
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "allOrNone": false,
            "records": rows.iter().map(|row| self.record(row)).collect::<Vec<_>>(),
        }))
        .expect("records serialise");
        let mut stale = None;
        for _ in 0..2 {
            let token = match self.token(stale).await {
                Ok(token) => token,
                Err(error) => return vec![Err(error); rows.len()],
            };
            match self.call(&token, &body, rows.len()).await {
                Attempt::Done(results) => return results,
                Attempt::StaleToken => stale = Some(token.generation),
            }
        }
        vec![
            Err(RowError::retryable(
                "INVALID_SESSION_ID",
                "Salesforce refused a freshly issued access token",
            ));
            rows.len()
        ]
    }

    async fn call(&self, token: &Token, body: &[u8], count: usize) -> Attempt {
        let url = format!(
            "{}/services/data/v{}/composite/sobjects/{}/{}",
            token.instance_url, self.api_version, self.sobject, self.external_id_field
        );
        let response = match self
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
                let (code, message) = if err.is_timeout() {
                    ("TIMEOUT", "Salesforce did not answer in time".to_owned())
                } else if err.is_connect() {
                    ("CONNECTION", "cannot connect to Salesforce".to_owned())
                } else {
                    (
                        "TRANSPORT",
                        format!("request failed: {}", err.without_url()),
                    )
                };
                return Attempt::Done(vec![Err(RowError::retryable(code, message)); count]);
            }
        };
        let status = response.status();
        if let Some((used, limit)) = response
            .headers()
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_limit_info)
        {
            *self.usage.lock().expect("usage") = Some(ApiUsage {
                used,
                limit,
                read_at: Instant::now(),
            });
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.text().await {
            Ok(text) => text,
            Err(_) => {
                return Attempt::Done(vec![
                    Err(RowError::retryable(
                        "BAD_RESPONSE",
                        format!("Salesforce's {status} answer was cut off"),
                    ));
                    count
                ])
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
            return Attempt::Done(per_record(&text, count));
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
                row_error(&error.error_code, error.message.clone())
            }
            (_, status) if status >= 500 || status == 408 => RowError::retryable(
                format!("HTTP_{status}"),
                format!("Salesforce answered {}", describe(status, &text)),
            )
            .with_retry_after(retry_after),
            (_, status) => RowError::permanent(
                format!("HTTP_{status}"),
                format!(
                    "Salesforce refused the request: {}",
                    describe(status, &text)
                ),
            ),
        };
        Attempt::Done(vec![Err(whole); count])
    }
}

/// `"503 with a non-JSON body"` and the like, for messages (never the body itself).
fn describe(status: u16, text: &str) -> String {
    if text.trim_start().starts_with('<') {
        format!("{status} with an HTML page")
    } else if serde_json::from_str::<Value>(text).is_err() && !text.is_empty() {
        format!("{status} with a body that is not JSON")
    } else {
        status.to_string()
    }
}

/// Matches a 200 answer's results to the request's records, in order.
fn per_record(text: &str, count: usize) -> Vec<RowResult> {
    let results: Vec<UpsertResult> = match serde_json::from_str(text) {
        Ok(results) => results,
        Err(err) => {
            let what = if text.trim_start().starts_with('<') {
                "an HTML page".to_owned()
            } else if err.is_eof() {
                "truncated JSON".to_owned()
            } else {
                "a body that is not sObject Collections results".to_owned()
            };
            return vec![
                Err(RowError::retryable(
                    "BAD_RESPONSE",
                    format!("Salesforce answered 200 with {what}"),
                ));
                count
            ];
        }
    };
    if results.len() != count {
        tracing::error!(
            expected = count,
            got = results.len(),
            "Salesforce answered a wrong number of results"
        );
        return vec![
            Err(RowError::retryable(
                "RESULT_COUNT_MISMATCH",
                format!(
                    "Salesforce answered {} results for {count} records",
                    results.len()
                ),
            ));
            count
        ];
    }
    results
        .into_iter()
        .map(|result| {
            if result.success {
                return Ok(());
            }
            match result.errors.into_iter().next() {
                Some(error) => {
                    let message = if error.fields.is_empty() {
                        error.message
                    } else {
                        format!("{} (fields: {})", error.message, error.fields.join(", "))
                    };
                    Err(row_error(&error.status_code, message))
                }
                None => Err(RowError::retryable(
                    "BAD_RESPONSE",
                    "Salesforce reported a failure without an error",
                )),
            }
        })
        .collect()
}

impl Destination for Salesforce {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn send<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Vec<RowResult>> {
        Box::pin(self.upsert(rows))
    }

    fn order_key(&self, row: &OutboundRow<'_>) -> Option<String> {
        row.fields
            .field(self.parent_column.as_ref()?)
            .as_ref()
            .and_then(scalar_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_is_read_from_the_api_usage_entry() {
        assert_eq!(
            parse_limit_info("api-usage=10018/100000"),
            Some((10018, 100_000))
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=5/100(appName=x), api-usage=7/15000"),
            Some((7, 15_000))
        );
        assert_eq!(parse_limit_info("garbage"), None);
    }

    #[test]
    fn codes_map_to_the_documented_classes() {
        assert_eq!(classify("UNABLE_TO_LOCK_ROW"), ErrorClass::Retryable);
        assert_eq!(classify("REQUEST_LIMIT_EXCEEDED"), ErrorClass::RateLimited);
        for code in [
            "REQUIRED_FIELD_MISSING",
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "INVALID_FIELD",
            "DUPLICATE_VALUE",
            "STRING_TOO_LONG",
            "ENTITY_IS_DELETED",
            "INSUFFICIENT_ACCESS_OR_READONLY",
            "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
        ] {
            assert_eq!(classify(code), ErrorClass::Permanent, "{code}");
        }
        assert_eq!(classify("SOMETHING_NEW"), ErrorClass::Retryable);
    }

    #[test]
    fn results_are_matched_in_order_and_bad_bodies_retry_every_row() {
        let text = r#"[{"id":"003A","success":true,"errors":[],"created":false},
            {"success":false,"errors":[{"statusCode":"STRING_TOO_LONG","message":"too long","fields":["LastName"]}]}]"#;
        let results = per_record(text, 2);
        assert!(results[0].is_ok());
        let error = results[1].clone().unwrap_err();
        assert_eq!(error.class, ErrorClass::Permanent);
        assert_eq!(error.code, "STRING_TOO_LONG");
        assert!(error.message.contains("LastName"));
        for (body, expected) in [
            (&text[..40], "truncated JSON"),
            ("<html>oops</html>", "an HTML page"),
        ] {
            let results = per_record(body, 2);
            let error = results[0].clone().unwrap_err();
            assert_eq!(error.code, "BAD_RESPONSE");
            assert!(error.message.contains(expected), "{}", error.message);
        }
        let error = per_record(text, 3)[2].clone().unwrap_err();
        assert_eq!(error.code, "RESULT_COUNT_MISMATCH");
    }
}
