//! SQS behind the guard: AWS's size and count limits, and injected faults.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use rustack_sqs_http::{body::SqsResponseBody, dispatch::SqsHandler, response::json_response};
use rustack_sqs_model::{
    error::{SqsError, SqsErrorCode},
    operations::SqsOperation,
};
use serde_json::{json, Value};

use super::{
    in_flight::{queue_name, InFlight, MAX_VISIBLE_AFTER_RECEIVE},
    FaultKind, Guard,
};

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
            let queue = parsed
                .get("QueueUrl")
                .and_then(Value::as_str)
                .map(|url| queue_name(url).to_owned())
                .unwrap_or_default();
            let in_flight = guard.in_flight.as_ref();
            match operation {
                "ReceiveMessage" => {
                    if let Some(refused) = over_in_flight_limit(in_flight, &queue, &parsed).await {
                        return refused;
                    }
                    let visibility = match requested_visibility(&parsed) {
                        Some(visibility) => visibility,
                        None => queue_visibility(inner.as_ref(), &parsed).await,
                    };
                    let body = capped_receive(in_flight, &queue, &parsed, body);
                    let (parts, bytes) = read(inner.handle_operation(op, body).await?).await?;
                    if parts.status.is_success() {
                        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let handles = answer
                            .get("Messages")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(|m| m.get("ReceiptHandle").and_then(Value::as_str));
                        in_flight.received(&queue, handles, visibility, Instant::now());
                    }
                    return Ok(rebuilt(parts, bytes));
                }
                "ChangeMessageVisibility" => {
                    let handle = receipt_handle(&parsed);
                    let visibility = requested_visibility(&parsed).unwrap_or_default();
                    if in_flight
                        .check_visibility(&queue, handle, visibility, Instant::now())
                        .is_err()
                    {
                        return Err(invalid(beyond_receive_limit(visibility)));
                    }
                    let answer = inner.handle_operation(op, body).await?;
                    if answer.status().is_success() {
                        in_flight.visibility_changed(&queue, handle, visibility, Instant::now());
                    }
                    return Ok(answer);
                }
                "DeleteMessage" => {
                    let answer = inner.handle_operation(op, body).await?;
                    if answer.status().is_success() {
                        in_flight.deleted(&queue, receipt_handle(&parsed));
                    }
                    return Ok(answer);
                }
                "PurgeQueue" | "DeleteQueue" => {
                    let answer = inner.handle_operation(op, body).await?;
                    if answer.status().is_success() {
                        in_flight.forget_queue(&queue);
                    }
                    return Ok(answer);
                }
                _ => {}
            }
            if !is_batch(operation) {
                return inner.handle_operation(op, body).await;
            }
            let now = Instant::now();
            let refusal = |entry: &Value| -> Option<Value> {
                if guard.faults.draw_entry("sqs", operation) {
                    return Some(failed_entry(entry, false, "InternalError", INJECTED));
                }
                if guard.faults.draw_refused_entry("sqs", operation) {
                    return Some(failed_entry(entry, true, "InvalidParameterValue", INJECTED));
                }
                if operation == "ChangeMessageVisibilityBatch" {
                    let visibility = requested_visibility(entry).unwrap_or_default();
                    if in_flight
                        .check_visibility(&queue, receipt_handle(entry), visibility, now)
                        .is_err()
                    {
                        let message = beyond_receive_limit(visibility);
                        return Some(failed_entry(entry, true, "InvalidParameterValue", &message));
                    }
                }
                None
            };
            match batch_with_refusals(inner.as_ref(), op, &parsed, body, refusal).await? {
                Ok(answer) => {
                    track_batch(in_flight, &queue, operation, &parsed, &answer);
                    Ok(json_response(answer.to_string().into_bytes(), "guarded"))
                }
                Err(refused_whole) => Ok(refused_whole),
            }
        })
    }
}

/// What an injected entry failure says.
const INJECTED: &str = "injected by the emulator's fault plan";

/// AWS's words for a visibility change past 12 hours from the receive.
fn beyond_receive_limit(visibility: Duration) -> String {
    format!(
        "Value {} for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [{} seconds].",
        visibility.as_secs(),
        MAX_VISIBLE_AFTER_RECEIVE.as_secs()
    )
}

fn receipt_handle(request: &Value) -> &str {
    request
        .get("ReceiptHandle")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn requested_visibility(request: &Value) -> Option<Duration> {
    let seconds = request.get("VisibilityTimeout").and_then(Value::as_i64)?;
    Some(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// The queue's own visibility timeout, for a receive that names none.
async fn queue_visibility<H: SqsHandler>(inner: &H, receive: &Value) -> Duration {
    let request = json!({
        "QueueUrl": receive.get("QueueUrl").cloned().unwrap_or(Value::Null),
        "AttributeNames": ["VisibilityTimeout"],
    });
    let seconds = async {
        let response = inner
            .handle_operation(
                SqsOperation::GetQueueAttributes,
                Bytes::from(request.to_string()),
            )
            .await
            .ok()?;
        let (_, bytes) = read(response).await.ok()?;
        let answer: Value = serde_json::from_slice(&bytes).ok()?;
        answer
            .pointer("/Attributes/VisibilityTimeout")
            .and_then(Value::as_str)?
            .parse::<u64>()
            .ok()
    }
    .await;
    Duration::from_secs(seconds.unwrap_or(30))
}

/// A receive while the queue holds its limit in flight: a short poll is refused with
/// `OverLimit`; a long poll waits out its time for the count to drop and then returns
/// no messages, as SQS does.
async fn over_in_flight_limit(
    in_flight: &InFlight,
    queue: &str,
    receive: &Value,
) -> Option<Answer> {
    if in_flight.may_receive(queue, Instant::now()) {
        return None;
    }
    let wait = receive
        .get("WaitTimeSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .clamp(0, 20);
    if wait == 0 {
        return Some(Err(SqsError::new(
            SqsErrorCode::OverLimit,
            format!(
                "The queue has {} messages in flight, its limit.",
                in_flight.limit()
            ),
        )));
    }
    let until = Instant::now() + Duration::from_secs(wait.unsigned_abs());
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if in_flight.may_receive(queue, Instant::now()) {
            return None;
        }
    }
    Some(Ok(json_response(b"{}".to_vec(), "guarded")))
}

/// A receive asks for no more messages than may still go in flight.
fn capped_receive(in_flight: &InFlight, queue: &str, receive: &Value, body: Bytes) -> Bytes {
    let asked = receive
        .get("MaxNumberOfMessages")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let room = in_flight.room(queue, Instant::now());
    if asked <= room {
        return body;
    }
    let mut capped = receive.clone();
    capped["MaxNumberOfMessages"] = json!(room.max(1));
    Bytes::from(capped.to_string())
}

async fn read(
    response: http::Response<SqsResponseBody>,
) -> Result<(http::response::Parts, Bytes), SqsError> {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|err| SqsError::new(SqsErrorCode::InternalError, err.to_string()))?
        .to_bytes();
    Ok((parts, bytes))
}

fn rebuilt(parts: http::response::Parts, bytes: Bytes) -> http::Response<SqsResponseBody> {
    http::Response::from_parts(parts, SqsResponseBody::from_bytes(bytes))
}

fn failed_entry(entry: &Value, sender_fault: bool, code: &str, message: &str) -> Value {
    json!({
        "Id": entry.get("Id").cloned().unwrap_or(Value::Null),
        "SenderFault": sender_fault,
        "Code": code,
        "Message": message,
    })
}

/// What a performed batch call changed in the in-flight accounting: its successful
/// deletes and visibility changes.
fn track_batch(
    in_flight: &InFlight,
    queue: &str,
    operation: &str,
    request: &Value,
    answer: &Value,
) {
    let entries = request
        .get("Entries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let now = Instant::now();
    let successful = answer
        .get("Successful")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("Id"));
    for id in successful {
        let Some(entry) = entries.iter().find(|e| e.get("Id") == Some(id)) else {
            continue;
        };
        match operation {
            "DeleteMessageBatch" => in_flight.deleted(queue, receipt_handle(entry)),
            "ChangeMessageVisibilityBatch" => in_flight.visibility_changed(
                queue,
                receipt_handle(entry),
                requested_visibility(entry).unwrap_or_default(),
                now,
            ),
            _ => {}
        }
    }
}

/// A batch call whose entries `refusal` may fail one by one (injected faults, AWS's
/// per-entry rules): the others are performed and the answer lists the refused ones in
/// `Failed`, as SQS answers a batch call.
async fn batch_with_refusals<H: SqsHandler>(
    inner: &H,
    op: SqsOperation,
    request: &Value,
    body: Bytes,
    refusal: impl Fn(&Value) -> Option<Value>,
) -> Result<Result<Value, http::Response<SqsResponseBody>>, SqsError> {
    let entries = request
        .get("Entries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut refused = Vec::new();
    let mut passing = Vec::new();
    for entry in entries {
        match refusal(&entry) {
            Some(failure) => refused.push(failure),
            None => passing.push(entry),
        }
    }
    let mut answer = json!({ "Successful": [], "Failed": [] });
    if !passing.is_empty() {
        let forwarded = if refused.is_empty() {
            body
        } else {
            let mut rest = request.clone();
            rest["Entries"] = Value::Array(passing);
            Bytes::from(rest.to_string())
        };
        let (parts, bytes) = read(inner.handle_operation(op, forwarded).await?).await?;
        if !parts.status.is_success() {
            return Ok(Err(rebuilt(parts, bytes)));
        }
        answer = serde_json::from_slice(&bytes).unwrap_or(answer);
    }
    match answer.get_mut("Failed").and_then(Value::as_array_mut) {
        Some(list) => list.extend(refused),
        None => answer["Failed"] = Value::Array(refused),
    }
    if answer.get("Successful").is_none() {
        answer["Successful"] = json!([]);
    }
    Ok(Ok(answer))
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
