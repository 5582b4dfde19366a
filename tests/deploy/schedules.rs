//! Syncs: one schedule rule each, on the configured schedule, targeting sync-start with
//! an input that is the EventBridge event sync-start reads; a resync/RowsFailed alarm
//! each; and no other schedule rules.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use resync_shared::config::Config;
use resync_sync_start::SyncStartDetail;
use serde_yaml::Value;

use crate::{
    functions::Functions,
    template::{assert_named, edited, get, referenced, text, untag, Template},
};

/// Each sync's schedule rule: its schedule, its target and input, its alarm.
pub fn sync_rules(template: &Template, config: &Config, functions: &Functions) -> Vec<String> {
    let mut out = Vec::new();
    let sync_start = functions
        .built_from("sync-start")
        .next()
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    for sync in &config.syncs {
        let Some((rule_name, rule)) = template.named("AWS::Events::Rule", "Name", sync.id.as_str())
        else {
            out.push(format!(
                "sync {}: no schedule rule named ${{ResyncStack}}-{}",
                sync.id, sync.id
            ));
            continue;
        };
        let schedule = get(rule, &["Properties", "ScheduleExpression"]);
        let schedule = schedule
            .and_then(|s| template.parameter_default(s).or_else(|| text(s)))
            .unwrap_or_default();
        if schedule != sync.schedule {
            out.push(format!(
                "sync {}: schedule {schedule:?}, the configuration says {:?}",
                sync.id, sync.schedule
            ));
        }
        let targets = get(rule, &["Properties", "Targets"])
            .map(untag)
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        let Some(target) = targets.iter().find(|t| {
            get(t, &["Arn"]).and_then(referenced).as_deref() == Some(sync_start.as_str())
        }) else {
            out.push(format!("{rule_name}: does not target {sync_start}"));
            continue;
        };
        let input = get(target, &["InputTransformer", "InputTemplate"])
            .and_then(text)
            .unwrap_or_default()
            .replace("<id>", "a1b2")
            .replace("<time>", "2026-11-28T10:00:00Z")
            .replace("<account>", "123456789012")
            .replace("<region>", "us-east-1")
            .replace(
                "<resources>",
                "[\"arn:aws:events:us-east-1:123456789012:rule/x\"]",
            );
        match serde_json::from_str::<EventBridgeEvent<SyncStartDetail>>(&input) {
            Ok(event) if event.detail.sync_id == sync.id.as_str() => {
                if event.id.as_deref() != Some("a1b2") || event.time.is_none() {
                    out.push(format!(
                        "{rule_name}: the input must carry the firing's id and time"
                    ));
                }
            }
            Ok(event) => out.push(format!(
                "{rule_name}: input names sync {:?}, want {}",
                event.detail.sync_id, sync.id
            )),
            Err(err) => out.push(format!(
                "{rule_name}: input is not an EventBridge event: {err}"
            )),
        }
        if !rows_failed_alarm(template, sync.id.as_str()) {
            out.push(format!(
                "sync {}: no resync/RowsFailed alarm on SyncId",
                sync.id
            ));
        }
    }
    out
}

/// Whether a resync/RowsFailed alarm watches the sync `sync_id` (dimension `SyncId`).
fn rows_failed_alarm(template: &Template, sync_id: &str) -> bool {
    template.has_alarm(Some("resync"), "RowsFailed", "SyncId", |value| {
        text(value).as_deref() == Some(sync_id)
    })
}

/// As many schedule rules as syncs.
pub fn rule_count(template: &Template, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let rules = template
        .of_type("AWS::Events::Rule")
        .into_iter()
        .filter(|(_, r)| get(r, &["Properties", "ScheduleExpression"]).is_some())
        .count();
    if rules != config.syncs.len() {
        out.push(format!(
            "{rules} schedule rules for {} syncs",
            config.syncs.len()
        ));
    }
    out
}

#[test]
fn a_schedule_input_that_names_another_sync_or_a_wrong_schedule_is_caught() {
    assert_named(
        &edited("\"sync_id\": \"customers\"", "\"sync_id\": \"custmers\""),
        "input names sync",
    );
    assert_named(
        &edited("Default: rate(15 minutes)", "Default: rate(5 minutes)"),
        "schedule",
    );
}
