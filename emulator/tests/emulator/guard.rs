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

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("queue url")
}

async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    wait_secs: i32,
) -> Result<
    Vec<aws_sdk_sqs::types::Message>,
    aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::receive_message::ReceiveMessageError>,
> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(600)
        .wait_time_seconds(wait_secs)
        .send()
        .await
        .map(|out| out.messages().to_vec())
}

/// Issue 12 (what the guard did not enforce): SQS's in-flight limit. A standard queue
/// holds at most 120,000 messages in flight; past it a short poll is refused with
/// `OverLimit` and a long poll returns nothing. The emulator's queues had no limit, so
/// no test could see rows waiting out a backoff stall a queue.
#[tokio::test]
async fn sqs_refuses_receives_past_the_in_flight_limit() -> Result<()> {
    let emu = Emulator::start().await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emu).await);
    let url = queue(&sqs, "in-flight").await?;
    ensure!(
        emu.sqs_in_flight().limit() == 120_000,
        "AWS's limit by default"
    );
    emu.sqs_in_flight().set_limit(2);
    for i in 0..3 {
        sqs.send_message()
            .queue_url(&url)
            .message_body(format!("m{i}"))
            .send()
            .await
            .map_err(explain)?;
    }

    let first = receive(&sqs, &url, 0).await.map_err(explain)?;
    ensure!(
        first.len() == 2,
        "a receive takes only what fits: {}",
        first.len()
    );
    ensure!(emu.sqs_in_flight().count(&url) == 2);

    let refused = receive(&sqs, &url, 0).await.expect_err("over the limit");
    let code = refused
        .as_service_error()
        .and_then(|e| e.meta().code().map(str::to_owned));
    ensure!(code.as_deref() == Some("OverLimit"), "{code:?}");
    let long_poll = receive(&sqs, &url, 1).await.map_err(explain)?;
    ensure!(
        long_poll.is_empty(),
        "a long poll over the limit returns nothing"
    );

    // A delete and a visibility change to 0 each take a message out of flight.
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(first[0].receipt_handle().context("handle")?)
        .send()
        .await
        .map_err(explain)?;
    sqs.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(first[1].receipt_handle().context("handle")?)
        .visibility_timeout(0)
        .send()
        .await
        .map_err(explain)?;
    ensure!(emu.sqs_in_flight().count(&url) == 0);
    let again = receive(&sqs, &url, 0).await.map_err(explain)?;
    ensure!(
        again.len() == 2,
        "both left messages fit again: {}",
        again.len()
    );
    emu.shutdown().await;
    Ok(())
}

/// Issue 12 (what the guard did not enforce): a message's visibility ends at most 12
/// hours after the receive that returned its handle; SQS refuses a change past that,
/// singly with `InvalidParameterValue` and in a batch as the entry's sender fault.
#[tokio::test]
async fn sqs_refuses_visibility_past_twelve_hours_from_the_receive() -> Result<()> {
    let emu = Emulator::start().await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emu).await);
    let url = queue(&sqs, "visibility").await?;
    for i in 0..2 {
        sqs.send_message()
            .queue_url(&url)
            .message_body(format!("m{i}"))
            .send()
            .await
            .map_err(explain)?;
    }
    let received_at = std::time::Instant::now();
    let messages = receive(&sqs, &url, 0).await.map_err(explain)?;
    ensure!(messages.len() == 2);
    let handle = |i: usize| messages[i].receipt_handle().context("handle");
    // Wait until the receive is at least a whole second old, as SQS counts.
    while received_at.elapsed() < std::time::Duration::from_millis(1_100) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let refused = sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(handle(0)?)
        .visibility_timeout(43_200)
        .send()
        .await
        .expect_err("12 h more, a second after the receive, is past the limit");
    ensure!(
        format!("{}", explain(refused)).contains("Total VisibilityTimeout"),
        "the error says why"
    );
    sqs.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(handle(0)?)
        .visibility_timeout(43_000)
        .send()
        .await
        .map_err(explain)?;

    let batch = sqs
        .change_message_visibility_batch()
        .queue_url(&url)
        .entries(
            aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("past")
                .receipt_handle(handle(1)?)
                .visibility_timeout(43_200)
                .build()?,
        )
        .entries(
            aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("within")
                .receipt_handle(handle(0)?)
                .visibility_timeout(60)
                .build()?,
        )
        .send()
        .await
        .map_err(explain)?;
    ensure!(batch.successful().len() == 1 && batch.successful()[0].id() == "within");
    let failed = batch.failed();
    ensure!(failed.len() == 1 && failed[0].id() == "past" && failed[0].sender_fault());
    ensure!(failed[0].code() == "InvalidParameterValue");
    emu.shutdown().await;
    Ok(())
}

/// A refused entry (the sender's fault: SQS will never take it) is answered in
/// `Failed` with `SenderFault: true` and not performed; the others are.
#[tokio::test]
async fn refused_entries_are_the_senders_fault_and_not_sent() -> Result<()> {
    let emu = Emulator::start().await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emu).await);
    let url = queue(&sqs, "refused").await?;
    emu.faults().set(
        7,
        vec![FaultRule::always(
            "sqs.SendMessageBatch",
            FaultKind::RefusedEntry,
            Some(2),
        )],
    );
    let entries = (0..5)
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
    ensure!(output.failed().len() == 2 && output.successful().len() == 3);
    ensure!(output
        .failed()
        .iter()
        .all(|f| f.sender_fault() && f.code() == "InvalidParameterValue"));
    let received = receive(&sqs, &url, 0).await.map_err(explain)?;
    ensure!(received.len() == 3, "refused entries are not sent");
    ensure!(
        emu.faults()
            .injected()
            .get("refused_entry:sqs.SendMessageBatch")
            == Some(&2)
    );
    emu.shutdown().await;
    Ok(())
}

/// Issue 12 (what the guard did not enforce): an `UpdateItem` whose result would be
/// over 400 KB is refused as DynamoDB refuses it, and the item stays as it was; the
/// emulator applied it, so an ever-growing item (a run's ledger, a counter list) could
/// pass every test and fail on AWS.
#[tokio::test]
async fn dynamodb_refuses_updates_that_grow_an_item_past_400_kb() -> Result<()> {
    let emu = Emulator::start().await?;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk_config(&emu).await);
    table(&ddb, "updates").await?;
    let grow = |pk: &str, bytes: usize| {
        ddb.update_item()
            .table_name("updates")
            .key("pk", s(pk))
            .update_expression("SET #b = :b, #n = if_not_exists(#n, :zero) + :one")
            .expression_attribute_names("#b", "blob")
            .expression_attribute_names("#n", "writes")
            .expression_attribute_values(":b", s(&"x".repeat(bytes)))
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
    };
    grow("a", 300 * 1024).await.map_err(explain)?;
    let err = grow("a", 401 * 1024).await.expect_err("over 400 KB");
    ensure!(
        format!("{}", explain(err)).contains("maximum allowed size"),
        "the error says why"
    );
    let item = ddb
        .get_item()
        .table_name("updates")
        .key("pk", s("a"))
        .send()
        .await
        .map_err(explain)?
        .item
        .context("the item is still there")?;
    ensure!(item.get("writes") == Some(&AttributeValue::N("1".into())));
    ensure!(
        item.get("blob")
            .and_then(|b| b.as_s().ok())
            .map(String::len)
            == Some(300 * 1024)
    );

    // A refused update of an item that did not exist leaves no item.
    grow("b", 401 * 1024).await.expect_err("over 400 KB");
    let absent = ddb
        .get_item()
        .table_name("updates")
        .key("pk", s("b"))
        .send()
        .await
        .map_err(explain)?;
    ensure!(absent.item.is_none());
    emu.shutdown().await;
    Ok(())
}
