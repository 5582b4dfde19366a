//! Destinations: one delivery queue, dead-letter queue and delivery function each, with
//! the settings of `QueueSettings` (`shared/src/resources.rs`), a redrive count above the
//! destination's retry threshold, and the function's SQS event and IAM actions.

use resync::aws::calls::ObservedCalls;
use resync_shared::{
    config::{Config, DestinationConfig},
    resources::{QueueSettings, DELIVERY_FUNCTION_TIMEOUT_SECS},
};
use serde_yaml::Value;

use crate::{
    functions::{events, Functions},
    iam::delivery_grants,
    template::{assert_named, edited, get, number, referenced, strings, text, untag, Template},
};

/// Each destination's queues, then its delivery function (its role against the
/// observed calls).
pub fn each(
    template: &Template,
    config: &Config,
    observed: &ObservedCalls,
    functions: &Functions,
) -> Vec<String> {
    config
        .destinations
        .iter()
        .flat_map(|destination| one(template, config, observed, destination, functions))
        .collect()
}

/// One delivery function per destination.
pub fn one_delivery_function_each(config: &Config, functions: &Functions) -> Vec<String> {
    let mut out = Vec::new();
    let deliveries = functions.count("delivery");
    if deliveries != config.destinations.len() {
        out.push(format!(
            "{deliveries} delivery functions for {} destinations",
            config.destinations.len()
        ));
    }
    out
}

fn one(
    template: &Template,
    config: &Config,
    observed: &ObservedCalls,
    destination: &DestinationConfig,
    functions: &Functions,
) -> Vec<String> {
    let mut out = Vec::new();
    let id = destination.id.as_str();
    let settings = QueueSettings::for_destination(destination);
    let Some((queue_name, queue)) =
        template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-delivery"))
    else {
        out.push(format!(
            "destination {id}: no queue ${{ResyncStack}}-{id}-delivery"
        ));
        return out;
    };
    let Some((dlq_name, dlq)) =
        template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-dlq"))
    else {
        out.push(format!(
            "destination {id}: no queue ${{ResyncStack}}-{id}-dlq"
        ));
        return out;
    };
    out.extend(queue_settings(
        &settings,
        (&queue_name, queue),
        (&dlq_name, dlq),
    ));
    out.extend(redrive(
        destination,
        &settings,
        (&queue_name, queue),
        &dlq_name,
    ));
    out.extend(delivery_function(
        template,
        (config, observed),
        destination,
        functions,
        &settings,
        (&queue_name, queue),
    ));
    out
}

/// The queues' visibility, size and retention, as `QueueSettings` says.
fn queue_settings(
    settings: &QueueSettings,
    (queue_name, queue): (&str, &Value),
    (dlq_name, dlq): (&str, &Value),
) -> Vec<String> {
    let mut out = Vec::new();
    let property = |resource: &Value, key: &str| number(get(resource, &["Properties", key]));
    let visibility = property(queue, "VisibilityTimeout").unwrap_or(0);
    if visibility != u64::from(settings.visibility_timeout_secs) {
        out.push(format!(
            "{queue_name}: VisibilityTimeout {visibility}, QueueSettings says {}",
            settings.visibility_timeout_secs
        ));
    }
    for (key, want) in [
        ("MaximumMessageSize", settings.max_message_bytes),
        ("MessageRetentionPeriod", settings.retention_secs),
    ] {
        if property(queue, key) != Some(u64::from(want)) {
            out.push(format!(
                "{queue_name}: {key} {:?}, want {want}",
                property(queue, key)
            ));
        }
    }
    if property(dlq, "MessageRetentionPeriod") != Some(u64::from(settings.dlq_retention_secs)) {
        out.push(format!(
            "{dlq_name}: retention must be {}",
            settings.dlq_retention_secs
        ));
    }
    out
}

/// The delivery queue's redrive: to its dead-letter queue, after more receives than the
/// destination's attempts.
fn redrive(
    destination: &DestinationConfig,
    settings: &QueueSettings,
    (queue_name, queue): (&str, &Value),
    dlq_name: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let redrive = get(queue, &["Properties", "RedrivePolicy"]);
    if redrive
        .and_then(|r| get(r, &["deadLetterTargetArn"]))
        .and_then(referenced)
        .as_deref()
        != Some(dlq_name)
    {
        out.push(format!("{queue_name}: redrive target is not {dlq_name}"));
    }
    match redrive
        .and_then(|r| get(r, &["maxReceiveCount"]))
        .map(untag)
    {
        Some(Value::Number(n)) => {
            let count = n.as_u64().unwrap_or(0);
            if count <= u64::from(destination.retry.max_attempts) {
                out.push(format!(
                    "{queue_name}: maxReceiveCount {count} is at or below the threshold {} (rows would be dead-lettered instead of failed)",
                    destination.retry.max_attempts
                ));
            } else if count != u64::from(settings.max_receive_count) {
                out.push(format!(
                    "{queue_name}: maxReceiveCount {count}, QueueSettings says {}",
                    settings.max_receive_count
                ));
            }
        }
        other => out.push(format!(
            "{queue_name}: maxReceiveCount must be a number, got {other:?}"
        )),
    }
    out
}

/// The destination's delivery function: its timeout against the queue's visibility, its
/// one SQS event (batch items reported, batch size, window, concurrency), its IAM
/// grants against the observed calls.
fn delivery_function(
    template: &Template,
    (config, observed): (&Config, &ObservedCalls),
    destination: &DestinationConfig,
    functions: &Functions,
    settings: &QueueSettings,
    (queue_name, queue): (&str, &Value),
) -> Vec<String> {
    let mut out = Vec::new();
    let id = destination.id.as_str();
    let visibility = number(get(queue, &["Properties", "VisibilityTimeout"])).unwrap_or(0);
    let Some((name, function)) = functions.built_from("delivery").find(|(_, f)| {
        template
            .environment(f)
            .get("RESYNC_DESTINATION")
            .and_then(text)
            .as_deref()
            == Some(id)
    }) else {
        out.push(format!(
            "destination {id}: no delivery function with RESYNC_DESTINATION={id}"
        ));
        return out;
    };
    let timeout = number(template.function_property(function, "Timeout"));
    if timeout != Some(u64::from(DELIVERY_FUNCTION_TIMEOUT_SECS)) {
        out.push(format!("{name}: Timeout {timeout:?}, want DELIVERY_FUNCTION_TIMEOUT_SECS = {DELIVERY_FUNCTION_TIMEOUT_SECS}"));
    }
    let window = u64::from(settings.batching_window_secs);
    if visibility < 6 * timeout.unwrap_or(u64::MAX / 12) + window {
        out.push(format!(
            "{queue_name}: visibility {visibility} < 6 × function timeout + batching window"
        ));
    }
    let events: Vec<&Value> = events(function)
        .filter(|e| get(e, &["Type"]).and_then(text).as_deref() == Some("SQS"))
        .collect();
    let [event] = events.as_slice() else {
        out.push(format!(
            "{name}: want exactly one SQS event, got {}",
            events.len()
        ));
        return out;
    };
    if get(event, &["Properties", "Queue"])
        .and_then(referenced)
        .as_deref()
        != Some(queue_name)
    {
        out.push(format!("{name}: SQS event is not on {queue_name}"));
    }
    let response_types = strings(get(event, &["Properties", "FunctionResponseTypes"]));
    if response_types != ["ReportBatchItemFailures"] {
        out.push(format!(
            "{name}: FunctionResponseTypes {response_types:?}, want [ReportBatchItemFailures]"
        ));
    }
    for (path, want) in [
        (vec!["Properties", "BatchSize"], settings.event_batch_size),
        (
            vec!["Properties", "MaximumBatchingWindowInSeconds"],
            settings.batching_window_secs,
        ),
        (
            vec!["Properties", "ScalingConfig", "MaximumConcurrency"],
            destination.concurrency,
        ),
    ] {
        let got = number(get(event, &path));
        if got != Some(u64::from(want)) {
            out.push(format!("{name}: {} {got:?}, want {want}", path.join(".")));
        }
    }
    out.extend(delivery_grants(
        template,
        config,
        observed,
        (name, function),
        destination,
    ));
    out
}

#[test]
fn a_misspelt_report_batch_item_failures_is_caught() {
    let problems = edited("[ReportBatchItemFailures]", "[ReportBatchItemFailure]");
    assert_named(&problems, "FunctionResponseTypes");
}

#[test]
fn a_redrive_count_at_the_threshold_is_caught() {
    assert_named(
        &edited("maxReceiveCount: 7", "maxReceiveCount: 5"),
        "at or below the threshold",
    );
    assert_named(
        &edited("maxReceiveCount: 7", "maxReceiveCount: \"7\""),
        "must be a number",
    );
}

#[test]
fn queue_settings_that_differ_from_resources_rs_are_caught() {
    assert_named(
        &edited("VisibilityTimeout: 361", "VisibilityTimeout: 300"),
        "VisibilityTimeout",
    );
    assert_named(&edited("BatchSize: 200", "BatchSize: 10"), "BatchSize");
    assert_named(
        &edited("MaximumConcurrency: 5", "MaximumConcurrency: 50"),
        "MaximumConcurrency",
    );
    assert_named(
        &edited("Timeout: 60", "Timeout: 30"),
        "DELIVERY_FUNCTION_TIMEOUT_SECS",
    );
}

/// The configuration's check of a destination's request timeout counts the requests one
/// delivery invocation keeps in flight: it must count what the function does.
#[test]
fn the_configuration_counts_the_requests_delivery_keeps_in_flight() {
    assert_eq!(
        resync_shared::config::deployment::REQUESTS_IN_FLIGHT,
        resync_delivery::REQUESTS_IN_FLIGHT
    );
}
