//! Tables: the runs table and the failed-row index, with the keys `resources.rs` and
//! the adapters use, on-demand billing, point-in-time recovery and the runs' TTL.

use serde_yaml::Value;

use crate::template::{assert_named, edited, get, text, untag, Template};

/// Each table's keys, billing, recovery and TTL.
pub fn keys_and_settings(template: &Template) -> Vec<String> {
    let mut out = Vec::new();
    for (suffix, partition, sort, ttl) in [
        ("runs", "pk", "sk", Some("expires_at")),
        ("failed-rows", "sync_id", "key", None),
    ] {
        let Some((name, table)) = template.named("AWS::DynamoDB::Table", "TableName", suffix)
        else {
            out.push(format!("no table ${{ResyncStack}}-{suffix}"));
            continue;
        };
        let keys: Vec<(String, String)> = get(table, &["Properties", "KeySchema"])
            .map(untag)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|k| {
                (
                    get(k, &["AttributeName"])
                        .and_then(text)
                        .unwrap_or_default(),
                    get(k, &["KeyType"]).and_then(text).unwrap_or_default(),
                )
            })
            .collect();
        let want = vec![
            (partition.to_owned(), "HASH".to_owned()),
            (sort.to_owned(), "RANGE".to_owned()),
        ];
        if keys != want {
            out.push(format!("{name}: keys {keys:?}, want {want:?}"));
        }
        if get(table, &["Properties", "BillingMode"])
            .and_then(text)
            .as_deref()
            != Some("PAY_PER_REQUEST")
        {
            out.push(format!("{name}: want on-demand billing"));
        }
        if get(
            table,
            &[
                "Properties",
                "PointInTimeRecoverySpecification",
                "PointInTimeRecoveryEnabled",
            ],
        )
        .and_then(|v| untag(v).as_bool())
            != Some(true)
        {
            out.push(format!("{name}: want point-in-time recovery"));
        }
        let ttl_attribute = get(
            table,
            &["Properties", "TimeToLiveSpecification", "AttributeName"],
        )
        .and_then(text);
        if ttl_attribute.as_deref() != ttl {
            out.push(format!(
                "{name}: TTL attribute {ttl_attribute:?}, want {ttl:?}"
            ));
        }
    }
    out
}

#[test]
fn a_missing_ttl_or_wrong_key_is_caught() {
    assert_named(
        &edited("AttributeName: expires_at", "AttributeName: expiry"),
        "TTL attribute",
    );
    assert_named(
        &edited(
            "{ AttributeName: key, KeyType: RANGE }",
            "{ AttributeName: row_key, KeyType: RANGE }",
        ),
        "keys",
    );
}
