//! DynamoDB: conditions, counters, paging, batches and transactions.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use aws_sdk_dynamodb::{
    operation::{put_item::PutItemError, transact_write_items::TransactWriteItemsError},
    types::{
        AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, DeleteRequest,
        KeySchemaElement, KeyType, Put, PutRequest, ReturnValue, ScalarAttributeType,
        TransactWriteItem, WriteRequest,
    },
};
use resync_emulator::Emulator;

use crate::helpers::{explain, sdk_config};

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn key(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// All items of partition `pk`, page by page: (items' sort keys, number of pages).
async fn query_all(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    limit: Option<i32>,
) -> Result<(Vec<String>, usize)> {
    let mut sort_keys = Vec::new();
    let mut pages = 0;
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = ddb
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .set_limit(limit)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(explain)?;
        pages += 1;
        ensure!(pages < 1000, "query does not terminate");
        for item in page.items() {
            match item.get("sk") {
                Some(AttributeValue::S(sk)) => sort_keys.push(sk.clone()),
                other => bail!("bad sort key {other:?}"),
            }
        }
        match page.last_evaluated_key {
            Some(last) if !last.is_empty() => start = Some(last),
            _ => return Ok((sort_keys, pages)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_conditions_counters_paging_batches_and_transactions() -> Result<()> {
    let emu = Emulator::start().await?;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk_config(&emu).await);
    let table = "state";
    ddb.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("sk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("sk")
                .key_type(KeyType::Range)
                .build()?,
        )
        .send()
        .await
        .map_err(explain)?;

    // Conditional create: the second attempt fails with ConditionalCheckFailed.
    let put_once = || {
        ddb.put_item()
            .table_name(table)
            .set_item(Some(key("lock", "run-1")))
            .item("owner", s("a"))
            .condition_expression("attribute_not_exists(pk)")
            .send()
    };
    put_once().await?;
    let err = put_once()
        .await
        .expect_err("second conditional put must fail");
    assert!(
        matches!(
            err.into_service_error(),
            PutItemError::ConditionalCheckFailedException(_)
        ),
        "expected ConditionalCheckFailedException"
    );

    // ADD counter, returning the new value.
    for expected in ["1", "2", "3"] {
        let out = ddb
            .update_item()
            .table_name(table)
            .set_key(Some(key("counter", "c")))
            .update_expression("ADD #n :one")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(explain)?;
        let attrs = out.attributes.context("no UPDATED_NEW attributes")?;
        assert_eq!(attrs.get("n"), Some(&AttributeValue::N(expected.into())));
        assert!(
            !attrs.contains_key("pk"),
            "UPDATED_NEW returns only updated attributes"
        );
    }

    // BatchWriteItem: 25 puts, then 25 deletes.
    let puts: Vec<WriteRequest> = (0..25)
        .map(|i| -> Result<WriteRequest> {
            let mut item = key("batch", &format!("{i:03}"));
            item.insert("v".into(), AttributeValue::N(i.to_string()));
            Ok(WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build()?)
                .build())
        })
        .collect::<Result<_>>()?;
    let out = ddb
        .batch_write_item()
        .request_items(table, puts)
        .send()
        .await
        .map_err(explain)?;
    assert!(out.unprocessed_items.unwrap_or_default().is_empty());
    let (keys, _) = query_all(&ddb, table, "batch", None).await?;
    assert_eq!(keys, (0..25).map(|i| format!("{i:03}")).collect::<Vec<_>>());
    let deletes: Vec<WriteRequest> = (0..25)
        .map(|i| -> Result<WriteRequest> {
            Ok(WriteRequest::builder()
                .delete_request(
                    DeleteRequest::builder()
                        .set_key(Some(key("batch", &format!("{i:03}"))))
                        .build()?,
                )
                .build())
        })
        .collect::<Result<_>>()?;
    let out = ddb
        .batch_write_item()
        .request_items(table, deletes)
        .send()
        .await
        .map_err(explain)?;
    assert!(out.unprocessed_items.unwrap_or_default().is_empty());
    assert!(query_all(&ddb, table, "batch", None).await?.0.is_empty());

    // Query paging with Limit and ExclusiveStartKey.
    for i in 0..30 {
        ddb.put_item()
            .table_name(table)
            .set_item(Some(key("page", &format!("{i:03}"))))
            .send()
            .await
            .map_err(explain)?;
    }
    let (keys, pages) = query_all(&ddb, table, "page", Some(7)).await?;
    assert_eq!(keys, (0..30).map(|i| format!("{i:03}")).collect::<Vec<_>>());
    assert!(pages >= 5, "30 items with Limit 7 took {pages} pages");

    // Over 1 MB in one partition: the server pages by itself.
    let blob = "x".repeat(100 * 1024);
    for i in 0..15 {
        let mut item = key("big", &format!("{i:03}"));
        item.insert("blob".into(), s(&blob));
        ddb.put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(explain)?;
    }
    let first = ddb
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", s("big"))
        .send()
        .await
        .map_err(explain)?;
    assert!(
        first.items().len() < 15 && first.last_evaluated_key.is_some(),
        "a 1.5 MB result must be split: got {} items in the first page",
        first.items().len()
    );
    let (keys, pages) = query_all(&ddb, table, "big", None).await?;
    assert_eq!(keys, (0..15).map(|i| format!("{i:03}")).collect::<Vec<_>>());
    assert!(pages >= 2);

    // TransactWriteItems: a failing condition cancels the whole transaction.
    let mut new_item = key("txn", "new");
    new_item.insert("v".into(), s("written"));
    let err = ddb
        .transact_write_items()
        .transact_items(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(table)
                        .set_item(Some(new_item))
                        .build()?,
                )
                .build(),
        )
        .transact_items(
            TransactWriteItem::builder()
                .condition_check(
                    ConditionCheck::builder()
                        .table_name(table)
                        .set_key(Some(key("lock", "run-1")))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()?,
                )
                .build(),
        )
        .send()
        .await
        .expect_err("transaction with a failing condition must be cancelled");
    match err.into_service_error() {
        TransactWriteItemsError::TransactionCanceledException(e) => {
            let codes: Vec<Option<&str>> =
                e.cancellation_reasons().iter().map(|r| r.code()).collect();
            assert_eq!(codes.len(), 2, "one reason per item: {codes:?}");
            assert_eq!(codes[1], Some("ConditionalCheckFailed"));
        }
        other => bail!("expected TransactionCanceledException, got {other:?}"),
    }
    let got = ddb
        .get_item()
        .table_name(table)
        .set_key(Some(key("txn", "new")))
        .consistent_read(true)
        .send()
        .await
        .map_err(explain)?;
    assert!(got.item.is_none(), "cancelled transaction wrote its Put");

    emu.shutdown().await;
    Ok(())
}
