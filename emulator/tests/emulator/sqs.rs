//! SQS: batches, visibility, redelivery and the dead-letter queue; 2,000 messages
//! through concurrent senders.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context, Result};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use resync_emulator::Emulator;

use crate::helpers::{body, explain, receive, receive_body, sdk_config};

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

fn receive_count(message: &Message) -> Result<u32> {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .context("ApproximateReceiveCount missing")?
        .parse()
        .context("ApproximateReceiveCount not a number")
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
