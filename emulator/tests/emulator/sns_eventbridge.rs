//! SNS and EventBridge: publishing and putting events, delivered to SQS queues.

use std::time::Duration;

use anyhow::{Context, Result};
use resync_emulator::Emulator;

use crate::helpers::{body, eventually, explain, receive, receive_body, sdk_config};

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
