//! AWS as it really is: the limits the emulator enforces in front of the rustack
//! services, and its seeded fault plan, seen through the real SDK.

use anyhow::{ensure, Context, Result};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, WriteRequest,
};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use resync_emulator::{Emulator, FaultKind, FaultRule};

use crate::helpers::{explain, sdk_config};

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

async fn table(ddb: &aws_sdk_dynamodb::Client, name: &str) -> Result<()> {
    ddb.create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(explain)?;
    Ok(())
}

fn put(pk: &str) -> Result<WriteRequest> {
    Ok(WriteRequest::builder()
        .put_request(PutRequest::builder().item("pk", s(pk)).build()?)
        .build())
}

#[tokio::test]
async fn dynamodb_refuses_what_aws_refuses() -> Result<()> {
    let emu = Emulator::start().await?;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk_config(&emu).await);
    table(&ddb, "limits").await?;

    let big = ddb
        .put_item()
        .table_name("limits")
        .item("pk", s("big"))
        .item("blob", s(&"x".repeat(400 * 1024)))
        .send()
        .await;
    let err = big.expect_err("an item over 400 KB is refused");
    ensure!(
        format!("{}", explain(err)).contains("maximum allowed size"),
        "the error says why"
    );

    let twice = ddb
        .batch_write_item()
        .request_items("limits", vec![put("a")?, put("b")?, put("a")?])
        .send()
        .await;
    let err = twice.expect_err("a key twice in one batch is refused");
    ensure!(format!("{}", explain(err)).contains("duplicates"));

    let many = (0..26)
        .map(|i| put(&i.to_string()))
        .collect::<Result<Vec<_>>>()?;
    ensure!(ddb
        .batch_write_item()
        .request_items("limits", many)
        .send()
        .await
        .is_err());
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn sqs_refuses_what_aws_refuses() -> Result<()> {
    let emu = Emulator::start().await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emu).await);
    let url = sqs
        .create_queue()
        .queue_name("limits")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("queue url")?;
    let wide = "x".repeat(30 * 1024);
    let entries = (0..10)
        .map(|i| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&wide)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let err = sqs
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send()
        .await
        .expect_err("300 KB of bodies in one batch is refused");
    ensure!(format!("{}", explain(err)).contains("BatchRequestTooLong"));
    let err = sqs
        .send_message()
        .queue_url(&url)
        .message_body("m")
        .delay_seconds(901)
        .send()
        .await
        .expect_err("a delay over 15 minutes is refused");
    ensure!(format!("{}", explain(err)).contains("DelaySeconds"));
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn injected_faults_reach_the_sdk_as_aws_sends_them() -> Result<()> {
    let emu = Emulator::start().await?;
    let config = sdk_config(&emu).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    table(&ddb, "faults").await?;
    let url = sqs
        .create_queue()
        .queue_name("faults")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("queue url")?;

    // Three entries fail on their own; the other seven are sent.
    emu.faults().set(
        42,
        vec![
            FaultRule::always("sqs.SendMessageBatch", FaultKind::EntryFailure, Some(3)),
            FaultRule::always("dynamodb.PutItem", FaultKind::Throttle, Some(1)),
        ],
    );
    let entries = (0..10)
        .map(|i| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(format!("m{i}"))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let output = sqs
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(explain)?;
    ensure!(output.failed().len() == 3, "{:?}", output.failed());
    ensure!(output.successful().len() == 7);
    ensure!(output.failed().iter().all(|f| !f.sender_fault()));
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(explain)?;
    let depth = attributes
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .context("depth")?;
    ensure!(depth == "7", "failed entries are not sent: {depth}");

    // A throttled PutItem is retried by the SDK and succeeds.
    ddb.put_item()
        .table_name("faults")
        .item("pk", s("a"))
        .send()
        .await
        .map_err(explain)?;
    let injected = emu.faults().injected();
    ensure!(
        injected.get("entry_failure:sqs.SendMessageBatch") == Some(&3),
        "{injected:?}"
    );
    ensure!(
        injected.get("throttle:dynamodb.PutItem") == Some(&1),
        "{injected:?}"
    );
    emu.shutdown().await;
    Ok(())
}
