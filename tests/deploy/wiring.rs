//! Wiring: every function has an AWS/Lambda Errors alarm; sync-start may send to every
//! delivery queue and read every sync's source prefix, the finalizer may drain every
//! dead-letter queue, and each dead-letter queue has a depth alarm.

use resync_shared::config::Config;

use crate::{
    functions::Functions,
    iam::granted,
    template::{assert_named, edited, referenced, Template},
};

/// Whether an alarm watches `metric` of the resource `target` (a `!Ref` in the
/// dimension `dimension`).
fn alarm_on(template: &Template, metric: &str, dimension: &str, target: &str) -> bool {
    template.has_alarm(None, metric, dimension, |value| {
        referenced(value).as_deref() == Some(target)
    })
}

/// Each function has an errors alarm.
pub fn error_alarms(template: &Template, functions: &Functions) -> Vec<String> {
    let mut out = Vec::new();
    for (name, _) in &functions.all {
        if !alarm_on(template, "Errors", "FunctionName", name) {
            out.push(format!("{name}: no AWS/Lambda Errors alarm"));
        }
    }
    out
}

/// Sync-start sends to every delivery queue, the finalizer drains every dead-letter
/// queue, and each dead-letter queue has a depth alarm.
pub fn destination_queues(
    template: &Template,
    config: &Config,
    functions: &Functions,
) -> Vec<String> {
    let mut out = Vec::new();
    for destination in &config.destinations {
        let id = destination.id.as_str();
        let queue = template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-delivery"));
        let dlq = template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-dlq"));
        for (binary, action, queue) in [
            ("sync-start", "sqs:SendMessage", &queue),
            ("finalizer", "sqs:ReceiveMessage", &dlq),
        ] {
            let Some((queue, _)) = queue else { continue };
            for (name, function) in functions.built_from(binary) {
                if !granted(template, function, action).contains(queue) {
                    out.push(format!("{name}: no {action} on {queue} (destination {id})"));
                }
            }
        }
        if let Some((dlq, _)) = &dlq {
            if !alarm_on(
                template,
                "ApproximateNumberOfMessagesVisible",
                "QueueName",
                dlq,
            ) {
                out.push(format!("{dlq}: no dead-letter depth alarm"));
            }
        }
    }
    out
}

/// Sync-start reads the source prefix of every sync in the stack's bucket.
pub fn source_reads(template: &Template, config: &Config, functions: &Functions) -> Vec<String> {
    let mut out = Vec::new();
    for (name, function) in functions.built_from("sync-start") {
        let reads = granted(template, function, "s3:GetObject");
        for sync in config.syncs.iter().filter(|s| s.source.bucket.is_none()) {
            let suffix = format!("/{}*", sync.source.prefix);
            if !reads.iter().any(|r| r.ends_with(&suffix)) {
                out.push(format!(
                    "{name}: no s3:GetObject on the prefix of sync {}",
                    sync.id
                ));
            }
        }
    }
    out
}

#[test]
fn a_destination_queue_missing_from_sync_start_or_the_finalizer_is_caught() {
    assert_named(
        &edited(
            "                Resource:\n                  - !GetAtt CrmWebhookDeliveryQueue.Arn",
            "                Resource:\n                  - !GetAtt CrmWebhookDeadLetterQueue.Arn",
        ),
        "no sqs:SendMessage",
    );
    assert_named(
        &edited(
            "                Resource:\n                  - !GetAtt CrmWebhookDeadLetterQueue.Arn",
            "                Resource:\n                  - !GetAtt CrmWebhookDeliveryQueue.Arn",
        ),
        "no sqs:ReceiveMessage",
    );
}

#[test]
fn a_missing_alarm_or_source_prefix_is_caught() {
    assert_named(
        &edited(
            "Value: !Ref FinalizerFunction",
            "Value: !Ref SyncStartFunction",
        ),
        "no AWS/Lambda Errors alarm",
    );
    assert_named(
        &edited(
            "${Bucket}/exports/accounts/*",
            "${Bucket}/exports/acounts/*",
        ),
        "no s3:GetObject on the prefix of sync accounts",
    );
}
