//! Provisioning: every resource of a stack that `resync_shared::resources` names —
//! tables, delivery and dead-letter queues, buckets, the event bus with the run-settled
//! rule and its notice queue, the alert topic — created idempotently.

use std::collections::HashSet;

use anyhow::Context as _;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use resync_shared::{
    aws::report::run_settled_pattern,
    config::Config,
    resources::{QueueSettings, Resources},
};

use super::LocalOptions;

/// Creates every resource of a stack for a configuration (idempotent) and returns the
/// resource names with the alert topic's ARN.
pub async fn provision(
    sdk: &SdkConfig,
    config: &Config,
    stack: &str,
    options: &LocalOptions,
) -> anyhow::Result<Resources> {
    let mut resources = Resources::for_stack(stack);
    let dynamo = aws_sdk_dynamodb::Client::new(sdk);
    create_table(&dynamo, &resources.runs_table, "pk", "sk").await?;
    create_table(&dynamo, &resources.failed_rows_table, "sync_id", "key").await?;

    let sqs = aws_sdk_sqs::Client::new(sdk);
    create_delivery_queues(&sqs, config, &resources, options).await?;
    create_buckets(sdk, config, &resources).await?;
    route_run_settled_notices(sdk, &sqs, &resources).await?;

    let sns = aws_sdk_sns::Client::new(sdk);
    let topic = sns
        .create_topic()
        .name(&resources.alert_topic)
        .send()
        .await
        .context("creating the alert topic")?;
    resources.alert_topic_arn = topic.topic_arn;
    Ok(resources)
}

/// Each destination's delivery queue, redriving to its own dead-letter queue.
async fn create_delivery_queues(
    sqs: &aws_sdk_sqs::Client,
    config: &Config,
    resources: &Resources,
    options: &LocalOptions,
) -> anyhow::Result<()> {
    for destination in &config.destinations {
        let settings = QueueSettings::for_destination(destination);
        let dlq_url = sqs
            .create_queue()
            .queue_name(resources.dead_letter_queue(&destination.id))
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                settings.dlq_retention_secs.to_string(),
            )
            .send()
            .await
            .context("creating a dead-letter queue")?
            .queue_url
            .context("CreateQueue answered no URL")?;
        let dlq_arn = queue_arn(sqs, &dlq_url).await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": settings.max_receive_count,
        });
        sqs.create_queue()
            .queue_name(resources.delivery_queue(&destination.id))
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                options.queue_visibility_secs().to_string(),
            )
            .attributes(
                QueueAttributeName::MaximumMessageSize,
                settings.max_message_bytes.to_string(),
            )
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                settings.retention_secs.to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await
            .context("creating a delivery queue")?;
    }
    Ok(())
}

/// The stack's source bucket and every bucket a sync reads from.
async fn create_buckets(
    sdk: &SdkConfig,
    config: &Config,
    resources: &Resources,
) -> anyhow::Result<()> {
    let s3 = crate::aws::s3_client(sdk);
    let mut buckets: HashSet<String> = HashSet::from([resources.source_bucket.clone()]);
    buckets.extend(config.syncs.iter().filter_map(|s| s.source.bucket.clone()));
    for bucket in buckets {
        if let Err(err) = s3.create_bucket().bucket(&bucket).send().await {
            let service = err.as_service_error();
            let exists = service.is_some_and(|e| {
                e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
            });
            if !exists {
                return Err(anyhow::Error::new(err).context(format!("creating bucket {bucket}")));
            }
        }
    }
    Ok(())
}

/// The event bus and its run-settled rule. A deployment's rule invokes the finalizer;
/// here it feeds a queue the runner's finalizer loop waits on.
async fn route_run_settled_notices(
    sdk: &SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    resources: &Resources,
) -> anyhow::Result<()> {
    let events = aws_sdk_eventbridge::Client::new(sdk);
    if let Err(err) = events
        .create_event_bus()
        .name(&resources.event_bus)
        .send()
        .await
    {
        if !err
            .as_service_error()
            .is_some_and(|e| e.is_resource_already_exists_exception())
        {
            return Err(anyhow::Error::new(err).context("creating the event bus"));
        }
    }
    let notices_url = sqs
        .create_queue()
        .queue_name(resources.finalizer_notices_queue())
        .attributes(QueueAttributeName::VisibilityTimeout, "5")
        .send()
        .await
        .context("creating the finalizer's notice queue")?
        .queue_url
        .context("CreateQueue answered no URL")?;
    events
        .put_rule()
        .name(resources.run_settled_rule())
        .event_bus_name(&resources.event_bus)
        .event_pattern(run_settled_pattern())
        .send()
        .await
        .context("creating the run-settled rule")?;
    events
        .put_targets()
        .rule(resources.run_settled_rule())
        .event_bus_name(&resources.event_bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("finalizer")
                .arn(queue_arn(sqs, &notices_url).await?)
                .build()
                .context("the run-settled rule's target")?,
        )
        .send()
        .await
        .context("targeting the run-settled rule")?;
    Ok(())
}

/// A queue's ARN, read from its attributes.
async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .with_context(|| format!("reading the ARN of queue {url}"))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("no QueueArn")
}

/// A table with a string partition and sort key, on demand (one that exists is kept).
async fn create_table(
    dynamo: &aws_sdk_dynamodb::Client,
    name: &str,
    partition: &str,
    sort: &str,
) -> anyhow::Result<()> {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("complete")
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("complete")
    };
    let result = dynamo
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(partition))
        .attribute_definitions(attribute(sort))
        .key_schema(key(partition, KeyType::Hash))
        .key_schema(key(sort, KeyType::Range))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!("creating table {name}"))),
    }
}
