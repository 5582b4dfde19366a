//! The HubSpot destination: CRM v3 batch upsert by a unique property.
//!
//! # Wire format
//!
//! `POST {base_url}/crm/v3/objects/{objectType}/batch/upsert` with
//! `Authorization: Bearer {private app token}` and the body
//! `{"inputs": [{"id": "{key}", "idProperty": "{id_property}", "properties": {…mapped fields}}]}`
//! (at most 100 inputs). The answer:
//!
//! - 200/201 `{"status", "results": [...]}`: every input was written;
//! - 207 (multi-status) `{"status", "results": [...], "numErrors", "errors": [{"status",
//!   "category", "message", "context": {"ids": ["…"]}}]}`: the errors name their inputs by
//!   the ids in `context`; inputs no error names were written;
//! - 429 `{"errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING" | "SECONDLY" |
//!   "DAILY", ...}`: nothing was written. The wait is `Retry-After`, else
//!   `X-HubSpot-RateLimit-Interval-Milliseconds`, else the policy's own window; until it
//!   has passed this destination sends nothing (rows wait as rate-limited without
//!   spending calls). A success that leaves `X-HubSpot-RateLimit-Remaining: 0` pauses the
//!   same way for the interval, so the limit is not hit in the first place;
//! - 400 `{"category": "VALIDATION_ERROR", "message", "context"}`: permanent for the
//!   inputs its context names (the others were not written and are retried), or for all;
//! - 401/403: permanent (the token or its scopes); 5xx, 408, timeouts: retryable.
//!
//! Error categories per record: `RATE_LIMITS` → rate-limited; `VALIDATION_ERROR`,
//! `OBJECT_NOT_FOUND`, `CONFLICT`, `INVALID_AUTHENTICATION`, `MISSING_SCOPES`,
//! `OBJECT_ALREADY_EXISTS` → permanent; anything else → retryable, logged with its
//! category (never row values).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{http, scalar_text, Answer, Destination, OutboundRow, SetupError};
use crate::domain::{
    outcome::{ErrorClass, RowError, RowResult},
    row::UnmappableRow,
};

mod config;

pub use config::HubspotConfig;

/// A HubSpot portal and object type.
pub struct Hubspot {
    client: reqwest::Client,
    url: String,
    id_property: String,
    fields: BTreeMap<String, String>,
    token: String,
    batch_size: usize,
    paused_until: Mutex<Option<(Instant, String)>>,
}

/// The body of a batch answer (200, 201, 207).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// `COMPLETE`, ...
    #[serde(default)]
    pub status: String,
    /// Written records.
    #[serde(default)]
    pub results: Vec<Value>,
    /// Per-record errors (207).
    #[serde(default)]
    pub errors: Vec<BatchError>,
}

/// One error of a 207 answer, or a 4xx body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchError {
    /// `error`.
    #[serde(default)]
    pub status: String,
    /// e.g. `VALIDATION_ERROR`.
    #[serde(default)]
    pub category: String,
    /// HubSpot's message.
    #[serde(default)]
    pub message: String,
    /// Names the inputs, e.g. `{"ids": ["a@example.com"]}`.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// 429 bodies: which limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

/// How a HubSpot error category is handled.
pub fn classify(category: &str) -> Option<ErrorClass> {
    match category {
        "RATE_LIMITS" | "RATE_LIMIT" => Some(ErrorClass::RateLimited),
        "VALIDATION_ERROR"
        | "OBJECT_NOT_FOUND"
        | "CONFLICT"
        | "INVALID_AUTHENTICATION"
        | "MISSING_SCOPES"
        | "OBJECT_ALREADY_EXISTS"
        | "BAD_REQUEST" => Some(ErrorClass::Permanent),
        "INTERNAL_ERROR" | "SERVICE_UNAVAILABLE" | "TIMEOUT" | "LOCKED" => {
            Some(ErrorClass::Retryable)
        }
        _ => None,
    }
}

fn category_error(error: &BatchError, retry_after: Option<Duration>) -> RowError {
    let code = if error.category.is_empty() {
        "UNKNOWN"
    } else {
        error.category.as_str()
    };
    match classify(code) {
        Some(ErrorClass::Permanent) => RowError::permanent(code, &error.message),
        Some(ErrorClass::RateLimited) => RowError::rate_limited(code, &error.message, retry_after),
        Some(_) => RowError::retryable(code, &error.message),
        None => {
            tracing::warn!(
                category = code,
                "unknown HubSpot error category; retrying the row"
            );
            RowError::retryable(code, &error.message)
        }
    }
}

/// Every string (or number) inside an error's `context`: the ids it names.
fn context_ids(context: &Map<String, Value>) -> HashSet<String> {
    fn collect(value: &Value, into: &mut HashSet<String>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| collect(v, into)),
            Value::Object(map) => map.values().for_each(|v| collect(v, into)),
            other => {
                if let Some(text) = scalar_text(other) {
                    into.insert(text);
                }
            }
        }
    }
    let mut ids = HashSet::new();
    context.values().for_each(|v| collect(v, &mut ids));
    ids
}

impl Hubspot {
    /// A client for one object type.
    pub fn new(
        config: &HubspotConfig,
        token: String,
        batch_size: usize,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        Ok(Self {
            client: http::client(timeout)?,
            url: format!(
                "{}/crm/v3/objects/{}/batch/upsert",
                config.base_url.trim_end_matches('/'),
                config.object_type
            ),
            id_property: config.id_property.clone(),
            fields: config.fields.clone(),
            token,
            batch_size: batch_size.min(100),
            paused_until: Mutex::new(None),
        })
    }

    /// One input of the request body; a row whose mapped fields cannot be read fails alone.
    fn input(&self, row: &OutboundRow<'_>) -> Result<Value, UnmappableRow> {
        let mut properties = Map::new();
        let fields = row
            .fields
            .pick(&|column| self.fields.contains_key(column))?;
        for (column, property) in &self.fields {
            if let Some(value) = fields.get(column) {
                // HubSpot property values are strings; null clears a property.
                let value = match value {
                    Value::Null => Value::Null,
                    Value::String(_) => value.clone(),
                    other => scalar_text(other)
                        .map(Value::String)
                        .unwrap_or_else(|| Value::String(other.to_string())),
                };
                properties.insert(property.clone(), value);
            }
        }
        Ok(serde_json::json!({
            "id": row.key.as_str(),
            "idProperty": self.id_property,
            "properties": properties,
        }))
    }

    fn pause(&self, wait: Duration, policy: &str) {
        // A wait HubSpot asked for: capped, and added without overflow.
        let now = Instant::now();
        let wait = http::capped_wait(wait);
        let until = now.checked_add(wait).unwrap_or(now);
        let mut slot = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_none_or(|(current, _)| *current < until) {
            *slot = Some((until, policy.to_owned()));
        }
    }

    fn paused(&self) -> Option<(Duration, String)> {
        let slot = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (until, policy) = slot.as_ref()?;
        let now = Instant::now();
        (*until > now).then(|| (*until - now, policy.clone()))
    }

    async fn upsert(&self, rows: &[OutboundRow<'_>], inputs: Vec<Value>) -> Answer {
        if let Err(error) = http::check_request_url(&self.url, "HubSpot") {
            return Answer::PerRow(vec![Err(error); rows.len()]);
        }
        if let Some((wait, policy)) = self.paused() {
            return Answer::PerRow(vec![
                Err(RowError::rate_limited(
                    format!("RATE_LIMIT_{policy}"),
                    "waiting for HubSpot's rate-limit window to reset",
                    Some(wait),
                ));
                rows.len()
            ]);
        }
        let body = serde_json::json!({
            "inputs": inputs,
        });
        let mut response = match self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => {
                return Answer::PerRow(vec![Err(http::transport_error(err, "HubSpot")); rows.len()])
            }
        };
        let status_code = response.status();
        let status = status_code.as_u16();
        let headers = response.headers().clone();
        if status_code.is_redirection() {
            let error = http::redirect_error(status_code, &headers, "HubSpot");
            return Answer::PerRow(vec![Err(error); rows.len()]);
        }
        let interval = http::header_u64(&headers, "x-hubspot-ratelimit-interval-milliseconds")
            .map(Duration::from_millis);
        if http::header_u64(&headers, "x-hubspot-ratelimit-remaining") == Some(0) {
            self.pause(
                interval.unwrap_or(Duration::from_secs(10)),
                "TEN_SECONDLY_ROLLING",
            );
        }
        let text = match http::read_body(&mut response, http::MAX_ANSWER_BYTES).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(err) => {
                return Answer::PerRow(vec![Err(err.row_error("HubSpot", status_code)); rows.len()])
            }
        };
        Answer::PerRow(match status {
            200 | 201 | 207 => self.per_input(rows, &text),
            429 => {
                let error: BatchError = serde_json::from_str(&text).unwrap_or_default();
                let policy = error
                    .policy_name
                    .unwrap_or_else(|| "TEN_SECONDLY_ROLLING".into());
                let wait = http::capped_wait(http::retry_after(&headers).or(interval).unwrap_or(
                    match policy.as_str() {
                        "SECONDLY" => Duration::from_secs(1),
                        "DAILY" => Duration::from_secs(3600),
                        _ => Duration::from_secs(10),
                    },
                ));
                tracing::warn!(policy = %policy, wait_ms = wait.as_millis() as u64, "HubSpot rate limit reached");
                self.pause(wait, &policy);
                vec![
                    Err(RowError::rate_limited(
                        format!("RATE_LIMIT_{policy}"),
                        format!("HubSpot's {policy} rate limit was reached"),
                        Some(wait),
                    ));
                    rows.len()
                ]
            }
            400 | 409 | 422 => {
                let Ok(error) = serde_json::from_str::<BatchError>(&text) else {
                    return Answer::Refused(RowError::permanent(
                        format!("HTTP_{status}"),
                        format!(
                            "HubSpot refused the batch ({status}) with a body that is not JSON"
                        ),
                    ));
                };
                let named = context_ids(&error.context);
                let any_named = rows.iter().any(|r| named.contains(r.key.as_str()));
                let row_error = category_error(&error, None);
                if !any_named {
                    // One bad input refuses the batch and HubSpot does not say which:
                    // split the request to find it (retryable categories are not split).
                    return Answer::Refused(row_error);
                }
                rows.iter()
                    .map(|row| {
                        if !any_named || named.contains(row.key.as_str()) {
                            Err(row_error.clone())
                        } else {
                            Err(RowError::retryable(
                                "BATCH_REFUSED",
                                "HubSpot refused the batch because of another record",
                            ))
                        }
                    })
                    .collect()
            }
            401 | 403 => vec![
                Err(RowError::permanent(
                    format!("HTTP_{status}"),
                    "HubSpot refused the access token or its scopes",
                ));
                rows.len()
            ],
            status if status >= 500 || status == 408 => {
                vec![
                    Err(RowError::unanswered(
                        format!("HTTP_{status}"),
                        format!("HubSpot answered {status}"),
                    )
                    .with_retry_after(http::retry_after(&headers)));
                    rows.len()
                ]
            }
            status => vec![
                Err(RowError::permanent(
                    format!("HTTP_{status}"),
                    format!("HubSpot refused the request: {status}"),
                ));
                rows.len()
            ],
        })
    }

    /// Settles each input of a 200/201/207 answer.
    fn per_input(&self, rows: &[OutboundRow<'_>], text: &str) -> Vec<RowResult> {
        let answer: BatchAnswer = match serde_json::from_str(text) {
            Ok(answer) => answer,
            Err(err) => {
                let what = if text.trim_start().starts_with('<') {
                    "an HTML page"
                } else if err.is_eof() {
                    "truncated JSON"
                } else {
                    "a body that is not a batch answer"
                };
                return vec![
                    Err(RowError::retryable(
                        "BAD_RESPONSE",
                        format!("HubSpot answered with {what}"),
                    ));
                    rows.len()
                ];
            }
        };
        let mut errors: HashMap<String, RowError> = HashMap::new();
        for error in &answer.errors {
            let row_error = category_error(error, None);
            for id in context_ids(&error.context) {
                errors.entry(id).or_insert_with(|| row_error.clone());
            }
        }
        // Written records, by the id property's value when HubSpot echoes it.
        let echoed: HashSet<String> = answer
            .results
            .iter()
            .filter_map(|r| r.get("properties")?.get(&self.id_property))
            .filter_map(scalar_text)
            .collect();
        // Written records echoing ids the batch did not send decide nothing: ignored,
        // counted in the log.
        let sent: HashSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let foreign = echoed
            .iter()
            .filter(|id| !sent.contains(id.as_str()))
            .count();
        if foreign > 0 {
            tracing::warn!(
                foreign,
                rows = rows.len(),
                "HubSpot's answer names ids the batch did not send; ignored"
            );
        }
        let unnamed = rows
            .iter()
            .filter(|r| !errors.contains_key(r.key.as_str()))
            .count();
        let all_written = answer.results.len() == unnamed;
        if !all_written {
            tracing::error!(
                expected = unnamed,
                got = answer.results.len(),
                errors = answer.errors.len(),
                "HubSpot answered a wrong number of results"
            );
        }
        rows.iter()
            .map(|row| {
                if let Some(error) = errors.get(row.key.as_str()) {
                    Err(error.clone())
                } else if all_written || echoed.contains(row.key.as_str()) {
                    Ok(())
                } else {
                    Err(RowError::retryable(
                        "RESULT_COUNT_MISMATCH",
                        "HubSpot's answer has no result for this record",
                    ))
                }
            })
            .collect()
    }
}

impl Destination for Hubspot {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn request<'a>(&'a self, rows: &'a [OutboundRow<'a>]) -> BoxFuture<'a, Answer> {
        Box::pin(super::send_mappable(
            rows,
            |row| self.input(row),
            move |rows, inputs| async move { self.upsert(&rows, inputs).await },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_ids_are_collected_from_any_shape() {
        let context = serde_json::json!({"ids": ["a", "b"], "id": "c", "n": [1]});
        let ids = context_ids(context.as_object().unwrap());
        assert_eq!(
            ids,
            ["a", "b", "c", "1"].map(String::from).into_iter().collect()
        );
    }

    fn portal() -> Hubspot {
        let config: HubspotConfig = serde_yaml::from_str(
            "{ object_type: contacts, id_property: resync_id, fields: { email: email }, access_token: { value: t } }",
        )
        .unwrap();
        Hubspot::new(&config, "t".into(), 100, Duration::from_secs(1)).unwrap()
    }

    fn settle(body: &str) -> Vec<RowResult> {
        let keys: Vec<crate::PrimaryKey> = ["a", "b", "c"]
            .map(|k| crate::PrimaryKey::parse(k).unwrap())
            .into();
        let fields = crate::RowFields::from_text("{}").unwrap();
        let rows: Vec<OutboundRow<'_>> = keys
            .iter()
            .map(|key| OutboundRow {
                key,
                idempotency_key: String::new(),
                fields: &fields,
            })
            .collect();
        portal().per_input(&rows, body)
    }

    #[test]
    fn multi_status_errors_name_their_rows_and_the_rest_are_written() {
        let results = settle(
            r#"{"status":"COMPLETE","results":[{"id":"1"},{"id":"2"}],"numErrors":1,
               "errors":[{"status":"error","category":"VALIDATION_ERROR","message":"bad","context":{"ids":["b"]}}]}"#,
        );
        assert!(results[0].is_ok() && results[2].is_ok());
        let error = results[1].clone().unwrap_err();
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Permanent, "VALIDATION_ERROR")
        );
    }

    #[test]
    fn bad_answers_retry_every_row_with_a_clear_message() {
        for (body, expected) in [
            (r#"{"status":"COMPLETE","results":[{"id""#, "truncated JSON"),
            ("<html><body>502 Bad Gateway</body></html>", "an HTML page"),
        ] {
            for result in settle(body) {
                let error = result.unwrap_err();
                assert_eq!(
                    (error.class, error.code.as_str()),
                    (ErrorClass::Retryable, "BAD_RESPONSE")
                );
                assert!(error.message.contains(expected), "{}", error.message);
            }
        }
        // Two results for three inputs and no errors: which one is missing is unknown.
        let results = settle(r#"{"status":"COMPLETE","results":[{"id":"1"},{"id":"2"}]}"#);
        assert!(results
            .iter()
            .all(|r| r.as_ref().unwrap_err().code == "RESULT_COUNT_MISMATCH"));
        // Unless HubSpot echoes the id property: then the echoed ones are written.
        let results = settle(
            r#"{"status":"COMPLETE","results":[{"id":"1","properties":{"resync_id":"a"}}]}"#,
        );
        assert!(results[0].is_ok());
        assert_eq!(
            results[1].clone().unwrap_err().code,
            "RESULT_COUNT_MISMATCH"
        );
    }

    #[test]
    fn categories_map_to_classes() {
        assert_eq!(classify("VALIDATION_ERROR"), Some(ErrorClass::Permanent));
        assert_eq!(classify("RATE_LIMITS"), Some(ErrorClass::RateLimited));
        assert_eq!(classify("SOMETHING_NEW"), None);
    }
}
