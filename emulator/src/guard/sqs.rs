//! SQS behind the guard: AWS's size and count limits, and injected faults.

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http_body_util::BodyExt;
use rustack_sqs_http::{body::SqsResponseBody, dispatch::SqsHandler, response::json_response};
use rustack_sqs_model::{
    error::{SqsError, SqsErrorCode},
    operations::SqsOperation,
};
use serde_json::{json, Value};

use super::{FaultKind, Guard};

/// The largest message body and the largest batch of bodies (256 KiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 262_144;
/// Entries of one batch call.
const MAX_BATCH_ENTRIES: usize = 10;
/// `DelaySeconds` at most 15 minutes.
const MAX_DELAY_SECONDS: i64 = 900;
/// `VisibilityTimeout` at most 12 hours.
const MAX_VISIBILITY_SECONDS: i64 = 43_200;

type Answer = Result<http::Response<SqsResponseBody>, SqsError>;

/// An SQS handler with AWS's limits and the fault plan in front of it.
pub(crate) struct GuardedSqs<H> {
    inner: Arc<H>,
    guard: Guard,
}

impl<H> GuardedSqs<H> {
    pub(crate) fn new(inner: H, guard: Guard) -> Self {
        Self {
            inner: Arc::new(inner),
            guard,
        }
    }
}

fn invalid(message: impl Into<String>) -> SqsError {
    SqsError::new(SqsErrorCode::InvalidParameterValue, message)
}

/// Checks a request against AWS's limits.
fn check_limits(operation: &str, body: &Value) -> Result<(), SqsError> {
    let entries = body.get("Entries").and_then(Value::as_array);
    if let Some(entries) = entries {
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err(SqsError::new(
                SqsErrorCode::TooManyEntriesInBatchRequest,
                format!(
                    "Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {}.",
                    entries.len()
                ),
            ));
        }
    }
    let check_message = |message: &Value| -> Result<usize, SqsError> {
        let bytes = message
            .get("MessageBody")
            .and_then(Value::as_str)
            .map_or(0, str::len);
        if bytes > MAX_MESSAGE_BYTES {
            return Err(invalid(format!(
                "One or more parameters are invalid. Reason: Message must be shorter than {MAX_MESSAGE_BYTES} bytes."
            )));
        }
        if let Some(delay) = message.get("DelaySeconds").and_then(Value::as_i64) {
            if !(0..=MAX_DELAY_SECONDS).contains(&delay) {
                return Err(invalid(format!(
                    "Value {delay} for parameter DelaySeconds is invalid. Reason: must be between 0 and {MAX_DELAY_SECONDS}, if provided."
                )));
            }
        }
        Ok(bytes)
    };
    let check_visibility = |request: &Value| -> Result<(), SqsError> {
        if let Some(timeout) = request.get("VisibilityTimeout").and_then(Value::as_i64) {
            if !(0..=MAX_VISIBILITY_SECONDS).contains(&timeout) {
                return Err(invalid(format!(
                    "Value {timeout} for parameter VisibilityTimeout is invalid. Reason: must be between 0 and {MAX_VISIBILITY_SECONDS}."
                )));
            }
        }
        Ok(())
    };
    match operation {
        "SendMessage" => {
            check_message(body)?;
        }
        "SendMessageBatch" => {
            let mut total = 0;
            for entry in entries.into_iter().flatten() {
                total += check_message(entry)?;
            }
            if total > MAX_MESSAGE_BYTES {
                return Err(SqsError::new(
                    SqsErrorCode::BatchRequestTooLong,
                    format!("Batch requests cannot be longer than {MAX_MESSAGE_BYTES} bytes. You have sent {total} bytes."),
                ));
            }
        }
        "ChangeMessageVisibility" | "ReceiveMessage" => check_visibility(body)?,
        "ChangeMessageVisibilityBatch" => {
            for entry in entries.into_iter().flatten() {
                check_visibility(entry)?;
            }
        }
        _ => {}
    }
    if operation == "ReceiveMessage" {
        if let Some(max) = body.get("MaxNumberOfMessages").and_then(Value::as_i64) {
            if !(1..=10).contains(&max) {
                return Err(invalid(format!(
                    "Value {max} for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and 10, if provided."
                )));
            }
        }
    }
    Ok(())
}

/// An injected call-level error, as SQS's JSON protocol answers it.
fn injected_error(kind: &FaultKind) -> Option<http::Response<SqsResponseBody>> {
    let (status, code, fault) = match kind {
        FaultKind::Throttle => (
            http::StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Sender",
        ),
        FaultKind::InternalError => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "Receiver",
        ),
        _ => return None,
    };
    let body = json!({
        "__type": format!("com.amazonaws.sqs#{code}"),
        "message": "injected by the emulator's fault plan",
    });
    let mut response = json_response(body.to_string().into_bytes(), "injected-fault");
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(&format!("{code};{fault}")) {
        response.headers_mut().insert("x-amzn-query-error", value);
    }
    Some(response)
}

fn is_batch(operation: &str) -> bool {
    matches!(
        operation,
        "SendMessageBatch" | "DeleteMessageBatch" | "ChangeMessageVisibilityBatch"
    )
}

impl<H: SqsHandler> SqsHandler for GuardedSqs<H> {
    fn handle_operation(
        &self,
        op: SqsOperation,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
        let inner = Arc::clone(&self.inner);
        let guard = self.guard.clone();
        Box::pin(async move {
            let operation = op.as_str();
            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            check_limits(operation, &parsed)?;
            match guard.faults.draw_call("sqs", operation) {
                Some(FaultKind::Latency(delay)) => tokio::time::sleep(delay).await,
                Some(kind) => {
                    if let Some(response) = injected_error(&kind) {
                        return Ok(response);
                    }
                }
                None => {}
            }
            if is_batch(operation) {
                if let Some(answer) = partial_batch(inner.as_ref(), &guard, op, &parsed).await {
                    return answer;
                }
            }
            inner.handle_operation(op, body).await
        })
    }
}

/// A batch call some of whose entries the plan fails: the others are performed and
/// the answer lists the failed ones in `Failed`. `None` when no entry fails.
async fn partial_batch<H: SqsHandler>(
    inner: &H,
    guard: &Guard,
    op: SqsOperation,
    request: &Value,
) -> Option<Answer> {
    let entries = request.get("Entries")?.as_array()?;
    let (failing, passing): (Vec<&Value>, Vec<&Value>) = entries
        .iter()
        .partition(|_| guard.faults.draw_entry("sqs", op.as_str()));
    if failing.is_empty() {
        return None;
    }
    let failed: Vec<Value> = failing
        .iter()
        .map(|entry| {
            json!({
                "Id": entry.get("Id").cloned().unwrap_or(Value::Null),
                "SenderFault": false,
                "Code": "InternalError",
                "Message": "injected by the emulator's fault plan",
            })
        })
        .collect();
    let mut answer = json!({ "Successful": [], "Failed": [] });
    if !passing.is_empty() {
        let mut rest = request.clone();
        rest["Entries"] = Value::Array(passing.into_iter().cloned().collect());
        let response = match inner
            .handle_operation(op, Bytes::from(rest.to_string()))
            .await
        {
            Ok(response) => response,
            Err(err) => return Some(Err(err)),
        };
        if !response.status().is_success() {
            return Some(Ok(response));
        }
        let bytes = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                return Some(Err(SqsError::new(
                    SqsErrorCode::InternalError,
                    err.to_string(),
                )))
            }
        };
        answer = serde_json::from_slice(&bytes).unwrap_or(answer);
    }
    if let Some(list) = answer.get_mut("Failed").and_then(Value::as_array_mut) {
        list.extend(failed);
    } else {
        answer["Failed"] = Value::Array(failed);
    }
    if answer.get("Successful").is_none() {
        answer["Successful"] = json!([]);
    }
    Some(Ok(json_response(
        answer.to_string().into_bytes(),
        "injected-fault",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_over_the_limits_are_refused_with_sqs_codes() {
        let ten_kib = "x".repeat(10 * 1024);
        let entries: Vec<Value> = (0..11)
            .map(|i| json!({"Id": i.to_string(), "MessageBody": "m"}))
            .collect();
        let err = check_limits("SendMessageBatch", &json!({ "Entries": entries })).unwrap_err();
        assert_eq!(err.code, SqsErrorCode::TooManyEntriesInBatchRequest);
        let entries: Vec<Value> = (0..10)
            .map(|i| json!({"Id": i.to_string(), "MessageBody": ten_kib.repeat(3)}))
            .collect();
        let err = check_limits("SendMessageBatch", &json!({ "Entries": entries })).unwrap_err();
        assert_eq!(err.code, SqsErrorCode::BatchRequestTooLong);
        let err = check_limits(
            "SendMessage",
            &json!({"MessageBody": "m", "DelaySeconds": 901}),
        )
        .unwrap_err();
        assert_eq!(err.code, SqsErrorCode::InvalidParameterValue);
        let err = check_limits(
            "ChangeMessageVisibility",
            &json!({"ReceiptHandle": "r", "VisibilityTimeout": 43_201}),
        )
        .unwrap_err();
        assert_eq!(err.code, SqsErrorCode::InvalidParameterValue);
        assert!(check_limits(
            "SendMessage",
            &json!({"MessageBody": ten_kib, "DelaySeconds": 900})
        )
        .is_ok());
    }
}
