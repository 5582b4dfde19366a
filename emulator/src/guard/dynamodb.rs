//! DynamoDB behind the guard: AWS's item, batch and transaction limits, and injected
//! faults.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use rustack_dynamodb_http::{DynamoDBHandler, DynamoDBResponseBody};
use rustack_dynamodb_model::{
    types::CancellationReason, DynamoDBError, DynamoDBErrorCode, DynamoDBOperation,
};
use serde_json::Value;

use super::{FaultKind, Guard};

/// The largest item: 400 KB.
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;
/// Requests of one `BatchWriteItem`.
const MAX_BATCH_WRITES: usize = 25;
/// Items of one `TransactWriteItems`.
const MAX_TRANSACTION_ITEMS: usize = 100;
/// The size of one `TransactWriteItems`: 4 MB.
const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;

type Answer = Result<http::Response<DynamoDBResponseBody>, DynamoDBError>;

/// A DynamoDB handler with AWS's limits and the fault plan in front of it.
pub(crate) struct GuardedDynamoDB<H> {
    inner: Arc<H>,
    guard: Guard,
    /// Each table's key attributes, from its `CreateTable` (for duplicate-key checks).
    keys: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Held through an `UpdateItem` and its size check, so the item a refused update
    /// puts back is the one it read (updates are serialised; the emulator is in-process).
    updates: Arc<tokio::sync::Mutex<()>>,
}

impl<H> GuardedDynamoDB<H> {
    pub(crate) fn new(inner: H, guard: Guard) -> Self {
        Self {
            inner: Arc::new(inner),
            guard,
            keys: Arc::default(),
            updates: Arc::default(),
        }
    }
}

/// An attribute value's size as DynamoDB counts it (UTF-8 bytes of strings, about half
/// a byte a digit of numbers, decoded bytes of binaries, 3 bytes of overhead for lists
/// and maps plus 1 a element).
fn value_size(value: &Value) -> usize {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    let number = |text: &str| {
        let digits = text.chars().filter(char::is_ascii_digit).count();
        digits.div_ceil(2) + 1
    };
    let binary = |text: &str| text.len() * 3 / 4;
    let texts = |inner: &Value| -> Vec<String> {
        inner
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    match kind.as_str() {
        "S" => inner.as_str().map_or(0, str::len),
        "N" => inner.as_str().map_or(0, number),
        "B" => inner.as_str().map_or(0, binary),
        "BOOL" | "NULL" => 1,
        "SS" => texts(inner).iter().map(String::len).sum(),
        "NS" => texts(inner).iter().map(|t| number(t)).sum(),
        "BS" => texts(inner).iter().map(|t| binary(t)).sum(),
        "L" => {
            3 + inner
                .as_array()
                .map_or(0, |a| a.iter().map(|v| value_size(v) + 1).sum())
        }
        "M" => 3 + inner.as_object().map_or(0, item_size_of_map),
        _ => 0,
    }
}

fn item_size_of_map(item: &serde_json::Map<String, Value>) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

/// An item's size as DynamoDB counts it against the 400 KB limit.
pub(crate) fn item_size(item: &Value) -> usize {
    item.as_object().map_or(0, item_size_of_map)
}

fn too_large(size: usize) -> DynamoDBError {
    DynamoDBError::validation(format!(
        "Item size has exceeded the maximum allowed size ({size} bytes > {MAX_ITEM_BYTES})"
    ))
}

fn check_item(item: Option<&Value>) -> Result<usize, DynamoDBError> {
    let size = item.map_or(0, item_size);
    if size > MAX_ITEM_BYTES {
        return Err(too_large(size));
    }
    Ok(size)
}

/// The key of one write request of a `BatchWriteItem`, as text, when the table's key
/// attributes are known.
fn request_key(request: &Value, key_names: &[String]) -> Option<String> {
    let item = request
        .get("PutRequest")
        .and_then(|p| p.get("Item"))
        .or_else(|| request.get("DeleteRequest").and_then(|d| d.get("Key")))?;
    let parts: Vec<String> = key_names
        .iter()
        .map(|name| item.get(name).map(Value::to_string).unwrap_or_default())
        .collect();
    Some(parts.join("\u{1f}"))
}

impl<H> GuardedDynamoDB<H> {
    /// Checks a request against AWS's limits.
    fn check_limits(&self, operation: &str, body: &Value) -> Result<(), DynamoDBError> {
        match operation {
            "CreateTable" => {
                if let (Some(table), Some(schema)) = (
                    body.get("TableName").and_then(Value::as_str),
                    body.get("KeySchema").and_then(Value::as_array),
                ) {
                    let names = schema
                        .iter()
                        .filter_map(|k| k.get("AttributeName").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect();
                    self.keys
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(table.to_owned(), names);
                }
            }
            "PutItem" => {
                check_item(body.get("Item"))?;
            }
            "BatchWriteItem" => {
                let tables = body.get("RequestItems").and_then(Value::as_object);
                let count: usize = tables
                    .into_iter()
                    .flatten()
                    .map(|(_, requests)| requests.as_array().map_or(0, Vec::len))
                    .sum();
                if count > MAX_BATCH_WRITES {
                    return Err(DynamoDBError::validation(format!(
                        "Too many items requested for the BatchWriteItem call ({count} > {MAX_BATCH_WRITES})"
                    )));
                }
                let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                for (table, requests) in tables.into_iter().flatten() {
                    let mut seen = HashSet::new();
                    for request in requests.as_array().into_iter().flatten() {
                        check_item(request.get("PutRequest").and_then(|p| p.get("Item")))?;
                        let key = keys
                            .get(table)
                            .and_then(|names| request_key(request, names));
                        if let Some(key) = key {
                            if !seen.insert(key) {
                                return Err(DynamoDBError::validation(
                                    "Provided list of item keys contains duplicates",
                                ));
                            }
                        }
                    }
                }
            }
            "TransactWriteItems" => {
                let items = body
                    .get("TransactItems")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if items.len() > MAX_TRANSACTION_ITEMS {
                    return Err(DynamoDBError::validation(format!(
                        "Member must have length less than or equal to {MAX_TRANSACTION_ITEMS} ({} items)",
                        items.len()
                    )));
                }
                let mut total = 0;
                for item in items {
                    total += match item.get("Put") {
                        Some(put) => check_item(put.get("Item"))?,
                        None => item.to_string().len(),
                    };
                }
                if total > MAX_TRANSACTION_BYTES {
                    return Err(DynamoDBError::validation(format!(
                        "Transaction request cannot be larger than 4 MB ({total} bytes)"
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// An injected call-level error, as DynamoDB answers it.
fn injected_error(kind: &FaultKind, operation: &str, body: &Value) -> Option<DynamoDBError> {
    let message = "injected by the emulator's fault plan";
    Some(match kind {
        FaultKind::Throttle => DynamoDBError::with_message(
            DynamoDBErrorCode::ProvisionedThroughputExceededException,
            message,
        ),
        FaultKind::InternalError => {
            DynamoDBError::with_message(DynamoDBErrorCode::InternalServerError, message)
        }
        FaultKind::TransactionConflict if operation == "TransactWriteItems" => {
            let items = body
                .get("TransactItems")
                .and_then(Value::as_array)
                .map_or(1, Vec::len);
            let reasons = (0..items)
                .map(|i| CancellationReason {
                    code: Some(
                        if i == 0 {
                            "TransactionConflict"
                        } else {
                            "None"
                        }
                        .to_owned(),
                    ),
                    message: (i == 0).then(|| message.to_owned()),
                    item: None,
                })
                .collect();
            DynamoDBError::transaction_cancelled(reasons)
        }
        FaultKind::TransactionConflict => {
            DynamoDBError::with_message(DynamoDBErrorCode::TransactionConflictException, message)
        }
        FaultKind::EntryFailure | FaultKind::RefusedEntry | FaultKind::Latency(_) => return None,
    })
}

impl<H: DynamoDBHandler> DynamoDBHandler for GuardedDynamoDB<H> {
    fn handle_operation(
        &self,
        op: DynamoDBOperation,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
        let operation = op.as_str();
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let checked = self.check_limits(operation, &parsed);
        let fault = self.guard.faults.draw_call("dynamodb", operation);
        let inner = Arc::clone(&self.inner);
        let updates = Arc::clone(&self.updates);
        Box::pin(async move {
            checked?;
            match fault {
                Some(FaultKind::Latency(delay)) => tokio::time::sleep(delay).await,
                Some(kind) => {
                    if let Some(err) = injected_error(&kind, operation, &parsed) {
                        return Err(err);
                    }
                }
                None => {}
            }
            if operation == "UpdateItem" {
                let _serialised = updates.lock().await;
                return size_checked_update(inner.as_ref(), body, &parsed).await;
            }
            inner.handle_operation(op, body).await
        })
    }
}

/// The item at the request's `TableName` and `Key`, read consistently.
async fn current_item<H: DynamoDBHandler>(
    inner: &H,
    request: &Value,
) -> Result<Option<Value>, DynamoDBError> {
    let get = serde_json::json!({
        "TableName": request.get("TableName").cloned().unwrap_or(Value::Null),
        "Key": request.get("Key").cloned().unwrap_or(Value::Null),
        "ConsistentRead": true,
    });
    let response = inner
        .handle_operation(DynamoDBOperation::GetItem, Bytes::from(get.to_string()))
        .await?;
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|err| DynamoDBError::internal_error(err.to_string()))?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(answer.get("Item").cloned())
}

/// An `UpdateItem` whose result would be over 400 KB is refused, as DynamoDB refuses
/// it, and leaves the item as it was. The update is applied, measured, and undone when
/// too large (the rustack crate cannot measure an update before applying it).
async fn size_checked_update<H: DynamoDBHandler>(
    inner: &H,
    body: Bytes,
    request: &Value,
) -> Answer {
    let before = current_item(inner, request).await?;
    let answer = inner
        .handle_operation(DynamoDBOperation::UpdateItem, body)
        .await?;
    if !answer.status().is_success() {
        return Ok(answer);
    }
    let Some(after) = current_item(inner, request).await? else {
        return Ok(answer);
    };
    let size = item_size(&after);
    if size <= MAX_ITEM_BYTES {
        return Ok(answer);
    }
    let table = request.get("TableName").cloned().unwrap_or(Value::Null);
    let (restore_op, restore) = match before {
        Some(item) => (
            DynamoDBOperation::PutItem,
            serde_json::json!({ "TableName": table, "Item": item }),
        ),
        None => (
            DynamoDBOperation::DeleteItem,
            serde_json::json!({
                "TableName": table,
                "Key": request.get("Key").cloned().unwrap_or(Value::Null),
            }),
        ),
    };
    inner
        .handle_operation(restore_op, Bytes::from(restore.to_string()))
        .await?;
    Err(DynamoDBError::validation(format!(
        "Item size to update has exceeded the maximum allowed size ({size} bytes > {MAX_ITEM_BYTES})"
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn item_sizes_count_names_and_values_as_dynamodb_does() {
        let item = json!({
            "pk": {"S": "sync#a"},
            "n": {"N": "12345"},
            "flag": {"BOOL": true},
            "list": {"L": [{"S": "ab"}, {"N": "1"}]},
        });
        // pk 2+6, n 1+(3+1), flag 4+1, list 4+3+(2+1)+(2+1)
        assert_eq!(item_size(&item), 8 + 5 + 5 + 13);
    }

    #[test]
    fn items_over_400_kb_and_duplicate_keys_are_refused() {
        let guard = GuardedDynamoDB::new((), Guard::default());
        let big = json!({"pk": {"S": "x".repeat(MAX_ITEM_BYTES)}});
        let err = guard
            .check_limits("PutItem", &json!({"TableName": "t", "Item": big}))
            .unwrap_err();
        assert!(
            err.message.contains("maximum allowed size"),
            "{}",
            err.message
        );
        guard
            .check_limits(
                "CreateTable",
                &json!({"TableName": "t", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}]}),
            )
            .unwrap();
        let put = |k: &str| json!({"PutRequest": {"Item": {"pk": {"S": k}}}});
        let twice = json!({"RequestItems": {"t": [put("a"), put("b"), put("a")]}});
        let err = guard.check_limits("BatchWriteItem", &twice).unwrap_err();
        assert!(err.message.contains("duplicates"), "{}", err.message);
        let many: Vec<Value> = (0..26).map(|i| put(&i.to_string())).collect();
        assert!(guard
            .check_limits("BatchWriteItem", &json!({"RequestItems": {"t": many}}))
            .is_err());
        let fine = json!({"RequestItems": {"t": [put("a"), put("b")]}});
        assert!(guard.check_limits("BatchWriteItem", &fine).is_ok());
    }
}
