//! Reading Salesforce's answers: sObject Collections results matched to the request's
//! records, refused requests' error bodies, error codes as classes, and the
//! `Sforce-Limit-Info` usage figure.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::outcome::{ErrorClass, RowError, RowResult};

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

pub(super) fn row_error(code: &str, message: impl Into<String>) -> RowError {
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

/// `"503 with a non-JSON body"` and the like, for messages (never the body itself).
pub(super) fn describe(status: u16, text: &str) -> String {
    if text.trim_start().starts_with('<') {
        format!("{status} with an HTML page")
    } else if serde_json::from_str::<Value>(text).is_err() && !text.is_empty() {
        format!("{status} with a body that is not JSON")
    } else {
        status.to_string()
    }
}

/// Matches a 200 answer's results to the request's records, in order.
pub(super) fn per_record(text: &str, count: usize) -> Vec<RowResult> {
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
