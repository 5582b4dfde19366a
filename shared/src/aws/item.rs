//! DynamoDB item codec: the few attribute shapes resync stores (strings and numbers),
//! written and read one way for every table.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::AwsError;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A string attribute.
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A string attribute's value, if present and a string.
pub fn get_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

/// A number attribute's value; 0 when absent or unreadable (counters start at 0).
pub fn get_n<T: std::str::FromStr + Default>(item: &Item, name: &str) -> T {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The largest item resync writes: DynamoDB's limit is 400 KB, counted as the UTF-8
/// length of every attribute name and value. Taken as 400,000 bytes, the strictest
/// reading (AWS documents "400 KB"; emulators enforce 400 KiB or 405,000 bytes).
pub const MAX_ITEM_BYTES: usize = 400_000;

/// An item's size as DynamoDB counts it: names plus values (strings by their UTF-8
/// length; numbers counted by their digits, which is never less than DynamoDB's count).
pub fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) | AttributeValue::N(text) => text.len(),
        AttributeValue::B(bytes) => bytes.as_ref().len(),
        AttributeValue::Ss(texts) | AttributeValue::Ns(texts) => {
            texts.iter().map(String::len).sum()
        }
        AttributeValue::L(values) => 3 + values.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(name, v)| 1 + name.len() + value_size(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Refuses an item larger than [`MAX_ITEM_BYTES`] before it is sent, with an error
/// that names the operation and the sizes, so no emulator's leniency hides an item
/// AWS would refuse.
pub fn check_item_size(operation: &'static str, item: &Item) -> Result<(), AwsError> {
    let size = item_size(item);
    if size > MAX_ITEM_BYTES {
        return Err(AwsError::response(
            operation,
            format!(
                "not sent: an item of {size} bytes is larger than DynamoDB's 400 KB item limit ({MAX_ITEM_BYTES} bytes)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_measured_by_names_and_values() {
        let mut item = Item::new();
        item.insert("pk".into(), s("run#1"));
        item.insert("n".into(), n(12345));
        assert_eq!(item_size(&item), 2 + 5 + 1 + 5);
        assert!(check_item_size("DynamoDB.PutItem", &item).is_ok());
    }

    /// Issue 12, defect 4: an item DynamoDB would refuse is refused before it is sent,
    /// with a clear error (the embedded emulator accepts up to 400 KiB).
    #[test]
    fn an_item_over_400_kb_is_not_sent() {
        let mut item = Item::new();
        item.insert("pk".into(), s("run#1"));
        item.insert("ledger".into(), s("x".repeat(MAX_ITEM_BYTES)));
        let err = check_item_size("DynamoDB.PutItem", &item).unwrap_err();
        assert_eq!(err.operation, "DynamoDB.PutItem");
        assert!(err.message.contains("400 KB"), "{}", err.message);
    }
}
