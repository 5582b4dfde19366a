//! End-to-end tests of the emulator through the real AWS SDK clients.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_dynamodb::{
    operation::{put_item::PutItemError, transact_write_items::TransactWriteItemsError},
    types::{
        AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, DeleteRequest,
        KeySchemaElement, KeyType, Put, PutRequest, ReturnValue, ScalarAttributeType,
        TransactWriteItem, WriteRequest,
    },
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use resync_emulator::Emulator;
use tokio::io::AsyncReadExt;

async fn sdk_config(emu: &Emulator) -> SdkConfig {
    // Plain HTTP to the loopback emulator; the SDK crates build no default client.
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(emu.endpoint_url())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .load()
        .await
}

fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
}

/// An SDK error with its whole source chain (the SDK's `Display` says only "service error").
fn explain<E: std::error::Error + Send + Sync + 'static>(error: E) -> anyhow::Error {
    anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(&error))
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted or shifted chunk shows.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect()
}

/// Poll `check` until it yields `Some`, or fail after `deadline`.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// SQS
// ---------------------------------------------------------------------------

async fn queue_attributes(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    names: &[QueueAttributeName],
) -> Result<HashMap<QueueAttributeName, String>> {
    let mut request = sqs.get_queue_attributes().queue_url(url);
    for name in names {
        request = request.attribute_names(name.clone());
    }
    Ok(request
        .send()
        .await
        .map_err(explain)?
        .attributes
        .unwrap_or_default())
}

async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, wait: i32) -> Result<Vec<Message>> {
    Ok(sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .map_err(explain)?
        .messages
        .unwrap_or_default())
}

fn receive_count(message: &Message) -> Result<u32> {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .context("ApproximateReceiveCount missing")?
        .parse()
        .context("ApproximateReceiveCount not a number")
}

fn body(message: &Message) -> &str {
    message.body().unwrap_or_default()
}

/// Receive from `url` until a message whose body is `wanted` arrives.
async fn receive_body(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    wanted: &str,
    deadline: Duration,
) -> Result<Message> {
    eventually(&format!("message {wanted}"), deadline, || async {
        let messages = receive(sqs, url, 1).await?;
        Ok(messages.into_iter().find(|m| body(m) == wanted))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_batches_visibility_redelivery_and_dead_letter_queue() -> Result<()> {
    let emu = Emulator::start().await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emu).await);

    let dlq_url = sqs
        .create_queue()
        .queue_name("jobs-dlq")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no DLQ url")?;
    let dlq_arn = queue_attributes(&sqs, &dlq_url, &[QueueAttributeName::QueueArn])
        .await?
        .remove(&QueueAttributeName::QueueArn)
        .context("no DLQ arn")?;
    let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":2}}"#);
    let url = sqs
        .create_queue()
        .queue_name("jobs")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .attributes(QueueAttributeName::MaximumMessageSize, "65536")
        .attributes(QueueAttributeName::RedrivePolicy, &redrive)
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no queue url")?;
    ensure!(
        url.starts_with(emu.endpoint_url()),
        "queue URL {url} does not point at {}",
        emu.endpoint_url()
    );
    let looked_up = sqs
        .get_queue_url()
        .queue_name("jobs")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(looked_up.queue_url(), Some(url.as_str()));

    let counts = [
        QueueAttributeName::MaximumMessageSize,
        QueueAttributeName::VisibilityTimeout,
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ];
    let attrs = queue_attributes(&sqs, &url, &counts).await?;
    assert_eq!(attrs[&QueueAttributeName::MaximumMessageSize], "65536");
    assert_eq!(attrs[&QueueAttributeName::VisibilityTimeout], "30");
    assert_eq!(attrs[&QueueAttributeName::ApproximateNumberOfMessages], "0");
    let policy = queue_attributes(&sqs, &url, &[QueueAttributeName::RedrivePolicy])
        .await?
        .remove(&QueueAttributeName::RedrivePolicy)
        .context("no RedrivePolicy")?;
    let compact: String = policy.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        compact.contains(&dlq_arn) && compact.contains(r#""maxReceiveCount":2"#),
        "RedrivePolicy {policy}"
    );

    // SendMessageBatch of 10: every entry succeeds, under its own id.
    let mut batch = sqs.send_message_batch().queue_url(&url);
    for i in 0..10 {
        batch = batch.entries(
            SendMessageBatchRequestEntry::builder()
                .id(format!("e{i}"))
                .message_body(format!("job-{i}"))
                .build()?,
        );
    }
    let sent = batch.send().await.map_err(explain)?;
    assert!(sent.failed().is_empty(), "failed: {:?}", sent.failed());
    let ids: BTreeSet<String> = sent
        .successful()
        .iter()
        .map(|s| s.id().to_owned())
        .collect();
    let expected: BTreeSet<String> = (0..10).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected);
    for entry in sent.successful() {
        assert!(!entry.message_id().is_empty());
        assert!(!entry.md5_of_message_body().is_empty());
    }
    let attrs = queue_attributes(&sqs, &url, &counts).await?;
    assert_eq!(
        attrs[&QueueAttributeName::ApproximateNumberOfMessages],
        "10"
    );

    // First receive: all 10, each with receive count 1 and a plausible SentTimestamp.
    let now_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let mut first: HashMap<String, Message> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.len() < 10 {
        ensure!(
            Instant::now() < deadline,
            "only {} of 10 received",
            first.len()
        );
        for m in receive(&sqs, &url, 1).await? {
            assert_eq!(receive_count(&m)?, 1, "first delivery of {}", body(&m));
            let sent_ms: u64 = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .context("SentTimestamp missing")?
                .parse()?;
            assert!(
                sent_ms.abs_diff(now_ms) < 60_000,
                "SentTimestamp {sent_ms} far from now {now_ms}"
            );
            assert!(first.insert(body(&m).to_owned(), m).is_none(), "duplicate");
        }
    }
    let attrs = queue_attributes(&sqs, &url, &counts).await?;
    assert_eq!(attrs[&QueueAttributeName::ApproximateNumberOfMessages], "0");
    assert_eq!(
        attrs[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible],
        "10"
    );
    // All in flight: nothing to receive.
    assert!(receive(&sqs, &url, 0).await?.is_empty());

    // job-0 becomes visible at once, job-1 after 2 s.
    let handle = |name: &str| first[name].receipt_handle().unwrap_or_default().to_owned();
    let changed = sqs
        .change_message_visibility_batch()
        .queue_url(&url)
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("now")
                .receipt_handle(handle("job-0"))
                .visibility_timeout(0)
                .build()?,
        )
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("later")
                .receipt_handle(handle("job-1"))
                .visibility_timeout(2)
                .build()?,
        )
        .send()
        .await
        .map_err(explain)?;
    assert!(
        changed.failed().is_empty(),
        "failed: {:?}",
        changed.failed()
    );
    assert_eq!(changed.successful().len(), 2);
    let changed_at = Instant::now();

    let again = receive(&sqs, &url, 0).await?;
    let bodies: Vec<&str> = again.iter().map(body).collect();
    assert_eq!(
        bodies,
        ["job-0"],
        "only job-0 is visible right after the change"
    );
    assert_eq!(
        receive_count(&again[0])?,
        2,
        "redelivery increments the count"
    );
    let job0 = again[0].clone();

    let job1 = receive_body(&sqs, &url, "job-1", Duration::from_secs(15)).await?;
    let hidden_for = changed_at.elapsed();
    assert!(
        hidden_for >= Duration::from_millis(1500),
        "job-1 came back after {hidden_for:?}, before its 2 s visibility timeout"
    );
    assert_eq!(receive_count(&job1)?, 2);

    // DeleteMessageBatch: job-1 and the eight untouched ones.
    let mut delete = sqs.delete_message_batch().queue_url(&url);
    let mut handles = vec![job1.receipt_handle().unwrap_or_default().to_owned()];
    handles.extend((2..10).map(|i| handle(&format!("job-{i}"))));
    for (i, h) in handles.iter().enumerate() {
        delete = delete.entries(
            DeleteMessageBatchRequestEntry::builder()
                .id(format!("d{i}"))
                .receipt_handle(h)
                .build()?,
        );
    }
    let deleted = delete.send().await.map_err(explain)?;
    assert!(
        deleted.failed().is_empty(),
        "failed: {:?}",
        deleted.failed()
    );
    assert_eq!(deleted.successful().len(), 9);

    // job-0 has been received twice (= maxReceiveCount): the next receive attempt
    // moves it to the dead-letter queue instead of delivering it a third time.
    sqs.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(job0.receipt_handle().unwrap_or_default())
        .visibility_timeout(0)
        .send()
        .await
        .map_err(explain)?;
    let third = receive(&sqs, &url, 1).await?;
    assert!(
        third.is_empty(),
        "job-0 delivered a third time: {:?}",
        third.iter().map(receive_count).collect::<Vec<_>>()
    );
    let dead = receive_body(&sqs, &dlq_url, "job-0", Duration::from_secs(10)).await?;
    assert!(receive_count(&dead)? >= 1);
    let attrs = queue_attributes(&sqs, &url, &counts).await?;
    assert_eq!(attrs[&QueueAttributeName::ApproximateNumberOfMessages], "0");
    assert_eq!(
        attrs[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible],
        "0"
    );

    emu.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// DynamoDB
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------

async fn list_page(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    token: Option<String>,
) -> Result<(Vec<String>, Option<String>)> {
    let out = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .max_keys(2)
        .set_continuation_token(token)
        .send()
        .await
        .map_err(explain)?;
    let keys = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    let next = if out.is_truncated() == Some(true) {
        Some(
            out.next_continuation_token
                .context("truncated without a token")?,
        )
    } else {
        None
    };
    Ok((keys, next))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_large_objects_stream_and_listing_pages() -> Result<()> {
    let emu = Emulator::start().await?;
    let s3 = s3_client(&sdk_config(&emu).await);
    let bucket = "exports";
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(explain)?;
    s3.head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(explain)?;
    let buckets = s3.list_buckets().send().await.map_err(explain)?;
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, [bucket]);

    // 5 MB round trip through the streaming body.
    let data = pseudo_random(5 * 1024 * 1024, 7);
    s3.put_object()
        .bucket(bucket)
        .key("big/object.bin")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .map_err(explain)?;
    let head = s3
        .head_object()
        .bucket(bucket)
        .key("big/object.bin")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(head.content_length(), Some(i64::try_from(data.len())?));
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("big/object.bin")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(got.content_length(), Some(i64::try_from(data.len())?));
    let mut read = Vec::new();
    got.body.into_async_read().read_to_end(&mut read).await?;
    assert!(
        read == data,
        "downloaded bytes differ ({} vs {})",
        read.len(),
        data.len()
    );

    // A ranged read of the stored file.
    let part = s3
        .get_object()
        .bucket(bucket)
        .key("big/object.bin")
        .range("bytes=1000000-1000099")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(
        part.content_range(),
        Some(format!("bytes 1000000-1000099/{}", data.len()).as_str())
    );
    let bytes = part.body.collect().await?.into_bytes();
    assert_eq!(bytes.as_ref(), &data[1_000_000..1_000_100]);

    // Small objects too (kept in memory by rustack), collected.
    s3.put_object()
        .bucket(bucket)
        .key("small.txt")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .map_err(explain)?;
    let small = s3
        .get_object()
        .bucket(bucket)
        .key("small.txt")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(small.body.collect().await?.into_bytes().as_ref(), b"hello");

    // ListObjectsV2: prefix, MaxKeys=2 paging by continuation token, StartAfter.
    for name in ["e", "c", "a", "d", "b"] {
        s3.put_object()
            .bucket(bucket)
            .key(format!("logs/{name}.log"))
            .body(ByteStream::from(name.as_bytes().to_vec()))
            .send()
            .await
            .map_err(explain)?;
    }
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let (keys, next) = list_page(&s3, bucket, "logs/", token).await?;
        pages.push(keys);
        ensure!(pages.len() < 10, "listing does not terminate");
        match next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let expected =
        |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("logs/{n}.log")).collect() };
    assert_eq!(
        pages,
        [
            expected(&["a", "b"]),
            expected(&["c", "d"]),
            expected(&["e"])
        ]
    );
    let after = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("logs/")
        .start_after("logs/b.log")
        .send()
        .await
        .map_err(explain)?;
    let keys: Vec<&str> = after.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["logs/c.log", "logs/d.log", "logs/e.log"]);

    // DeleteObject, then the object is gone.
    s3.delete_object()
        .bucket(bucket)
        .key("logs/a.log")
        .send()
        .await
        .map_err(explain)?;
    let err = s3
        .head_object()
        .bucket(bucket)
        .key("logs/a.log")
        .send()
        .await
        .expect_err("deleted object still there");
    assert!(err.into_service_error().is_not_found());

    emu.shutdown().await;
    Ok(())
}

/// A reader that pauses mid-download (backpressure) still gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_download_survives_a_slow_reader() -> Result<()> {
    let emu = Emulator::start().await?;
    let s3 = s3_client(&sdk_config(&emu).await);
    s3.create_bucket()
        .bucket("slow")
        .send()
        .await
        .map_err(explain)?;
    // Larger than the loopback socket buffers, so the server must wait for the reader.
    let data = pseudo_random(48 * 1024 * 1024, 11);
    s3.put_object()
        .bucket("slow")
        .key("k")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .map_err(explain)?;
    let got = s3
        .get_object()
        .bucket("slow")
        .key("k")
        .send()
        .await
        .map_err(explain)?;
    let mut reader = got.body.into_async_read();
    let mut read = vec![0; 64 * 1024];
    reader.read_exact(&mut read).await?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    reader.read_to_end(&mut read).await?;
    assert!(
        read == data,
        "downloaded bytes differ ({} vs {})",
        read.len(),
        data.len()
    );
    emu.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// SNS and EventBridge
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_publish_and_eventbridge_put_events() -> Result<()> {
    let emu = Emulator::start().await?;
    let config = sdk_config(&emu).await;
    let sns = aws_sdk_sns::Client::new(&config);
    let events = aws_sdk_eventbridge::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);

    let topic = sns
        .create_topic()
        .name("sync-alerts")
        .send()
        .await
        .map_err(explain)?
        .topic_arn
        .context("no topic arn")?;
    assert!(topic.starts_with("arn:aws:sns:us-east-1:"), "{topic}");
    assert!(topic.ends_with(":sync-alerts"), "{topic}");
    let email = sns
        .subscribe()
        .topic_arn(&topic)
        .protocol("email")
        .endpoint("ops@example.com")
        .send()
        .await
        .map_err(explain)?;
    // rustack refuses non-SQS subscriptions; the emulator stores them (as AWS, an
    // email subscription answers "pending confirmation" until confirmed).
    assert_eq!(email.subscription_arn(), Some("pending confirmation"));
    let err = sns
        .subscribe()
        .topic_arn(format!("{topic}-missing"))
        .protocol("email")
        .endpoint("ops@example.com")
        .send()
        .await
        .expect_err("subscribing to a missing topic must fail");
    assert!(err.into_service_error().is_not_found_exception());

    // SNS delivers to SQS subscriptions in-process.
    let queue = sqs
        .create_queue()
        .queue_name("alerts")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no queue url")?;
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint("arn:aws:sqs:us-east-1:000000000000:alerts")
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .map_err(explain)?;
    let listed = sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .map_err(explain)?;
    let mut protocols: Vec<(&str, &str)> = listed
        .subscriptions()
        .iter()
        .map(|s| (s.protocol().unwrap_or(""), s.endpoint().unwrap_or("")))
        .collect();
    protocols.sort_unstable();
    assert_eq!(
        protocols,
        [
            ("email", "ops@example.com"),
            ("sqs", "arn:aws:sqs:us-east-1:000000000000:alerts")
        ]
    );
    let published = sns
        .publish()
        .topic_arn(&topic)
        .subject("sync failed")
        .message("run 42 failed")
        .send()
        .await
        .map_err(explain)?;
    assert!(!published.message_id().unwrap_or_default().is_empty());
    let delivered = receive_body(&sqs, &queue, "run 42 failed", Duration::from_secs(10)).await?;
    assert_eq!(body(&delivered), "run 42 failed");

    let email_arn = listed
        .subscriptions()
        .iter()
        .find(|s| s.protocol() == Some("email"))
        .and_then(|s| s.subscription_arn())
        .context("email subscription not listed")?;
    sns.unsubscribe()
        .subscription_arn(email_arn)
        .send()
        .await
        .map_err(explain)?;
    let listed = sns.list_subscriptions().send().await.map_err(explain)?;
    assert!(
        listed
            .subscriptions()
            .iter()
            .all(|s| s.protocol() == Some("sqs")),
        "email subscription still listed after Unsubscribe"
    );
    assert_eq!(listed.subscriptions().len(), 1);

    // EventBridge: custom bus, PutEvents, and a rule delivering to SQS.
    let bus = events
        .create_event_bus()
        .name("resync")
        .send()
        .await
        .map_err(explain)?
        .event_bus_arn
        .context("no bus arn")?;
    assert!(bus.ends_with(":event-bus/resync"), "{bus}");
    let queue = sqs
        .create_queue()
        .queue_name("events")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no queue url")?;
    events
        .put_rule()
        .name("finished")
        .event_bus_name("resync")
        .event_pattern(r#"{"source":["resync"]}"#)
        .send()
        .await
        .map_err(explain)?;
    let targets = events
        .put_targets()
        .rule("finished")
        .event_bus_name("resync")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("q")
                .arn("arn:aws:sqs:us-east-1:000000000000:events")
                .build()?,
        )
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(targets.failed_entry_count(), 0);
    let put = events
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name("resync")
                .source("resync")
                .detail_type("SyncFinished")
                .detail(r#"{"run":"42"}"#)
                .build(),
        )
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name("resync")
                .source("someone-else")
                .detail_type("Other")
                .detail("{}")
                .build(),
        )
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(put.failed_entry_count(), 0);
    assert_eq!(put.entries().len(), 2);
    assert!(put.entries().iter().all(|e| e.event_id().is_some()));
    let event = eventually("event in SQS", Duration::from_secs(10), || async {
        Ok(receive(&sqs, &queue, 1).await?.into_iter().next())
    })
    .await?;
    assert!(body(&event).contains("SyncFinished"), "{}", body(&event));
    assert!(
        receive(&sqs, &queue, 1).await?.is_empty(),
        "the non-matching event was delivered"
    );

    emu.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Secrets Manager
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_create_get_put_and_delete() -> Result<()> {
    let emu = Emulator::start().await?;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk_config(&emu).await);
    let name = "resync/test/db-password";

    let created = secrets
        .create_secret()
        .name(name)
        .secret_string("first")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(created.name(), Some(name));
    let arn = created
        .arn()
        .context("CreateSecret returned no ARN")?
        .to_owned();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}-"
        )),
        "unexpected ARN {arn}"
    );
    let first_version = created
        .version_id()
        .context("CreateSecret returned no VersionId")?
        .to_owned();

    // By name and by the returned ARN: the same secret, version and value.
    for id in [name, arn.as_str()] {
        let got = secrets
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(explain)?;
        assert_eq!(got.secret_string(), Some("first"), "read by {id}");
        assert_eq!(got.name(), Some(name), "read by {id}");
        assert_eq!(got.arn(), Some(arn.as_str()), "read by {id}");
        assert_eq!(
            got.version_id(),
            Some(first_version.as_str()),
            "read by {id}"
        );
        assert_eq!(got.version_stages(), ["AWSCURRENT"], "read by {id}");
    }

    // PutSecretValue makes a new AWSCURRENT version; the old one becomes AWSPREVIOUS.
    let put = secrets
        .put_secret_value()
        .secret_id(name)
        .secret_string("second")
        .send()
        .await
        .map_err(explain)?;
    let second_version = put
        .version_id()
        .context("PutSecretValue returned no VersionId")?
        .to_owned();
    assert_ne!(second_version, first_version);
    assert_eq!(put.version_stages(), ["AWSCURRENT"]);
    for id in [name, arn.as_str()] {
        let got = secrets
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(explain)?;
        assert_eq!(got.secret_string(), Some("second"), "read by {id}");
        assert_eq!(
            got.version_id(),
            Some(second_version.as_str()),
            "read by {id}"
        );
    }
    let previous = secrets
        .get_secret_value()
        .secret_id(&arn)
        .version_stage("AWSPREVIOUS")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(previous.secret_string(), Some("first"));

    // A secret that was never created.
    let err = secrets
        .get_secret_value()
        .secret_id("resync/test/missing")
        .send()
        .await
        .expect_err("reading a missing secret must fail");
    match err.into_service_error() {
        GetSecretValueError::ResourceNotFoundException(_) => {}
        other => bail!("expected ResourceNotFoundException, got {other:?}"),
    }

    // Forced deletion removes the secret at once: it is gone by name and by ARN, and
    // the name can be reused immediately.
    let deleted = secrets
        .delete_secret()
        .secret_id(&arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(deleted.name(), Some(name));
    assert!(deleted.deletion_date().is_some());
    for id in [name, arn.as_str()] {
        let err = secrets
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .expect_err("a deleted secret must not be readable");
        assert!(
            matches!(
                err.into_service_error(),
                GetSecretValueError::ResourceNotFoundException(_)
            ),
            "expected ResourceNotFoundException reading {id} after deletion"
        );
    }
    let recreated = secrets
        .create_secret()
        .name(name)
        .secret_string("third")
        .send()
        .await
        .map_err(explain)?;
    assert_ne!(
        recreated.arn(),
        Some(arn.as_str()),
        "a new secret gets a new ARN"
    );
    let got = secrets
        .get_secret_value()
        .secret_id(name)
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(got.secret_string(), Some("third"));

    emu.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Isolation and load
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_emulators_are_independent() -> Result<()> {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Emulator>();
    send_sync::<resync_emulator::EmulatorError>();
    let a = Emulator::start().await?;
    let b = Emulator::start().await?;
    assert_ne!(a.endpoint_url(), b.endpoint_url());
    let (config_a, config_b) = (sdk_config(&a).await, sdk_config(&b).await);
    let (sqs_a, sqs_b) = (
        aws_sdk_sqs::Client::new(&config_a),
        aws_sdk_sqs::Client::new(&config_b),
    );
    let (s3_a, s3_b) = (s3_client(&config_a), s3_client(&config_b));

    let url_a = sqs_a
        .create_queue()
        .queue_name("only-in-a")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no url")?;
    assert!(url_a.starts_with(a.endpoint_url()));
    let err = sqs_b
        .get_queue_url()
        .queue_name("only-in-a")
        .send()
        .await
        .expect_err("queue leaked into the other emulator");
    assert!(err.into_service_error().is_queue_does_not_exist());
    s3_a.create_bucket()
        .bucket("only-in-a")
        .send()
        .await
        .map_err(explain)?;
    assert!(s3_b
        .list_buckets()
        .send()
        .await
        .map_err(explain)?
        .buckets()
        .is_empty());

    // Stopping one leaves the other serving.
    let endpoint_a = a.endpoint_url().to_owned();
    a.shutdown().await;
    let url_b = sqs_b
        .create_queue()
        .queue_name("in-b")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no url")?;
    sqs_b
        .send_message()
        .queue_url(&url_b)
        .message_body("still here")
        .send()
        .await
        .map_err(explain)?;
    let addr = endpoint_a.trim_start_matches("http://");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{endpoint_a} still accepts connections after shutdown"
    );
    drop(b);
    Ok(())
}

/// 2,000 messages sent in batches of 10 by concurrent senders, then received and
/// deleted in batches: every message exactly once. Prints the timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_throughput_2000_messages() -> Result<()> {
    const TOTAL: usize = 2_000;
    const SENDERS: usize = 8;
    let emu = Emulator::start().await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emu).await);
    let url = sqs
        .create_queue()
        .queue_name("load")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no url")?;

    let start = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let (sqs, url) = (sqs.clone(), url.clone());
        senders.spawn(async move {
            for batch in (sender..TOTAL / 10).step_by(SENDERS) {
                let mut request = sqs.send_message_batch().queue_url(&url);
                for i in 0..10 {
                    request = request.entries(
                        SendMessageBatchRequestEntry::builder()
                            .id(format!("m{i}"))
                            .message_body(format!("{}", batch * 10 + i))
                            .build()?,
                    );
                }
                let out = request.send().await.map_err(explain)?;
                ensure!(out.failed().is_empty() && out.successful().len() == 10);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let sent_in = start.elapsed();

    let start = Instant::now();
    let mut seen = BTreeSet::new();
    let mut receivers = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (sqs, url) = (sqs.clone(), url.clone());
        receivers.spawn(async move {
            let mut bodies = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let messages = receive(&sqs, &url, 0).await?;
                if messages.is_empty() {
                    empty += 1;
                    continue;
                }
                empty = 0;
                let mut delete = sqs.delete_message_batch().queue_url(&url);
                for (i, m) in messages.iter().enumerate() {
                    bodies.push(body(m).parse::<usize>()?);
                    delete = delete.entries(
                        DeleteMessageBatchRequestEntry::builder()
                            .id(format!("d{i}"))
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()?,
                    );
                }
                ensure!(delete.send().await.map_err(explain)?.failed().is_empty());
            }
            anyhow::Ok(bodies)
        });
    }
    while let Some(done) = receivers.join_next().await {
        for b in done?? {
            ensure!(seen.insert(b), "message {b} received twice");
        }
    }
    let received_in = start.elapsed();
    assert_eq!(seen.len(), TOTAL);
    assert_eq!(seen.last(), Some(&(TOTAL - 1)));
    println!(
        "SQS: sent {TOTAL} messages in batches of 10 ({SENDERS} senders) in {sent_in:?}; \
         received + deleted them in {received_in:?}"
    );

    // Many connections at once: single SendMessage requests from 64 tasks.
    const CONCURRENT: usize = 64;
    const PER_TASK: usize = 50;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let (sqs, url) = (sqs.clone(), url.clone());
        tasks.spawn(async move {
            for i in 0..PER_TASK {
                sqs.send_message()
                    .queue_url(&url)
                    .message_body(i.to_string())
                    .send()
                    .await
                    .map_err(explain)?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = start.elapsed();
    let attrs = queue_attributes(
        &sqs,
        &url,
        &[QueueAttributeName::ApproximateNumberOfMessages],
    )
    .await?;
    assert_eq!(
        attrs[&QueueAttributeName::ApproximateNumberOfMessages],
        (CONCURRENT * PER_TASK).to_string()
    );
    println!(
        "SQS: {} single SendMessage requests from {CONCURRENT} concurrent tasks in {elapsed:?} \
         ({:.0} requests/s, debug build)",
        CONCURRENT * PER_TASK,
        (CONCURRENT * PER_TASK) as f64 / elapsed.as_secs_f64()
    );
    emu.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

/// Records the target and level of every event.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(String, tracing::Level)>>>);

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        if let Ok(mut events) = self.0.lock() {
            events.push((meta.target().to_owned(), *meta.level()));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// rustack logs each routed S3 request (and each created bucket/queue) at INFO; the
/// emulator keeps those out of the embedder's subscriber but forwards the rest.
#[tokio::test(flavor = "current_thread")]
async fn requests_log_nothing_at_info() -> Result<()> {
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let _guard = tracing::subscriber::set_default(Recorder(events.clone()));
    let emu = Emulator::start().await?;
    let config = sdk_config(&emu).await;
    let s3 = s3_client(&config);
    s3.create_bucket()
        .bucket("quiet")
        .send()
        .await
        .map_err(explain)?;
    s3.list_objects_v2()
        .bucket("quiet")
        .send()
        .await
        .map_err(explain)?;
    aws_sdk_sqs::Client::new(&config)
        .create_queue()
        .queue_name("quiet")
        .send()
        .await
        .map_err(explain)?;
    emu.shutdown().await;

    let events = events.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let rustack: Vec<&(String, tracing::Level)> = events
        .iter()
        .filter(|(target, _)| target.starts_with("rustack_"))
        .collect();
    assert!(
        rustack
            .iter()
            .any(|(t, l)| t.starts_with("rustack_s3_http") && *l == tracing::Level::DEBUG),
        "rustack DEBUG events should still reach the subscriber: {rustack:?}"
    );
    let info: Vec<_> = rustack
        .iter()
        .filter(|(_, level)| *level == tracing::Level::INFO)
        .collect();
    assert!(info.is_empty(), "INFO events per request: {info:?}");
    Ok(())
}
