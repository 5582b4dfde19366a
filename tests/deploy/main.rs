//! The SAM template (`template.yaml`) against the deployed configuration
//! (`config/resync.yaml`) and the one place that defines names and queue settings
//! (`shared/src/resources.rs`): what `sam validate --lint` and `cfn-lint` cannot know.
//!
//! [`problems`] lists every disagreement; the first test wants none, the others break
//! one setting of the real template each and want it named (so the checks are proven
//! to fail when the template drifts).

use std::collections::{BTreeMap, BTreeSet};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use resync_shared::{
    config::{Config, DestinationConfig},
    resources::{QueueSettings, DELIVERY_FUNCTION_TIMEOUT_SECS},
    secrets::SecretRef,
};
use resync_sync_start::SyncStartDetail;
use serde_yaml::{Mapping, Value};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The IAM actions each function's handler calls (read from the adapters it uses:
/// `RunStore`, `FailedRowIndex`, `S3Source`, `WorkQueue`, `Reporter`, `SecretResolver`),
/// plus writing its own logs. `TransactWriteItems` needs `UpdateItem`; `SendMessageBatch`
/// needs `SendMessage`; the event source mapping needs Receive/Delete/GetQueueAttributes.
fn expected_actions(binary: &str, secrets: bool) -> BTreeSet<String> {
    let mut actions: Vec<&str> = vec!["logs:CreateLogStream", "logs:PutLogEvents"];
    actions.extend(match binary {
        "sync-start" => vec![
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "s3:ListBucket",
            "s3:GetObject",
            "sqs:GetQueueUrl",
            "sqs:GetQueueAttributes",
            "sqs:SendMessage",
            "events:PutEvents",
            "sns:Publish",
        ],
        "delivery" => vec![
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:GetQueueUrl",
            "sqs:ChangeMessageVisibility",
            "events:PutEvents",
        ],
        "finalizer" => vec![
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:BatchWriteItem",
            "sqs:GetQueueUrl",
            "sqs:GetQueueAttributes",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "events:PutEvents",
            "sns:Publish",
        ],
        other => panic!("unknown binary {other}"),
    });
    if secrets {
        actions.push("secretsmanager:GetSecretValue");
    }
    actions.into_iter().map(str::to_owned).collect()
}

/// A value without its CloudFormation tag (`!Ref`, `!Sub`, ...).
fn untag(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untag(&tagged.value),
        other => other,
    }
}

fn tag(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) => Some(tagged.tag.to_string().trim_start_matches('!').to_owned()),
        _ => None,
    }
}

/// `!Sub "text"` or `!Sub ["text", {...}]` → the text; a plain string → itself.
fn text(value: &Value) -> Option<String> {
    match untag(value) {
        Value::String(s) => Some(s.clone()),
        Value::Sequence(items) if tag(value).as_deref() == Some("Sub") => {
            items.first().and_then(|v| v.as_str()).map(str::to_owned)
        }
        _ => None,
    }
}

/// `!GetAtt X.Arn`, `!Ref X`, `{"Fn::GetAtt": [X, Arn]}` → `X`.
fn referenced(value: &Value) -> Option<String> {
    match (tag(value).as_deref(), untag(value)) {
        (Some("GetAtt" | "Ref"), Value::String(s)) => s.split('.').next().map(str::to_owned),
        (Some("GetAtt"), Value::Sequence(items)) => {
            items.first().and_then(|v| v.as_str()).map(str::to_owned)
        }
        _ => None,
    }
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| untag(v).as_mapping()?.get(*key))
}

fn number(value: Option<&Value>) -> Option<u64> {
    value.map(untag).and_then(Value::as_u64)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value.map(untag) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| text(v).unwrap_or_else(|| format!("{v:?}")))
            .collect(),
        _ => vec![],
    }
}

struct Template {
    root: Value,
}

impl Template {
    fn resources(&self) -> &Mapping {
        get(&self.root, &["Resources"])
            .and_then(Value::as_mapping)
            .expect("Resources")
    }

    fn of_type(&self, kind: &str) -> Vec<(String, &Value)> {
        self.resources()
            .iter()
            .filter(|(_, r)| get(r, &["Type"]).and_then(Value::as_str) == Some(kind))
            .map(|(name, r)| (name.as_str().unwrap_or_default().to_owned(), r))
            .collect()
    }

    fn resource(&self, name: &str) -> Option<&Value> {
        self.resources().get(name)
    }

    /// The resource whose `Properties.{property}` is `!Sub "${ResyncStack}-{suffix}"`.
    fn named(&self, kind: &str, property: &str, suffix: &str) -> Option<(String, &Value)> {
        let wanted = format!("${{ResyncStack}}-{suffix}");
        self.of_type(kind).into_iter().find(|(_, r)| {
            get(r, &["Properties", property]).and_then(text).as_deref() == Some(wanted.as_str())
        })
    }

    /// A function property, falling back to `Globals.Function`.
    fn function_property<'a>(&'a self, function: &'a Value, key: &str) -> Option<&'a Value> {
        get(function, &["Properties", key])
            .or_else(|| get(&self.root, &["Globals", "Function", key]))
    }

    fn environment(&self, function: &Value) -> BTreeMap<String, Value> {
        let mut env = BTreeMap::new();
        for source in [
            get(
                &self.root,
                &["Globals", "Function", "Environment", "Variables"],
            ),
            get(function, &["Properties", "Environment", "Variables"]),
        ]
        .into_iter()
        .flatten()
        {
            for (k, v) in untag(source).as_mapping().into_iter().flatten() {
                env.insert(k.as_str().unwrap_or_default().to_owned(), v.clone());
            }
        }
        env
    }

    fn parameter_default(&self, value: &Value) -> Option<String> {
        let name = referenced(value)?;
        get(&self.root, &["Parameters", &name, "Default"])
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }
}

/// What a function's role grants `action` on: referenced logical ids (`!GetAtt X.Arn`)
/// and ARN texts (`!Sub ...`).
fn granted(template: &Template, function: &Value, action: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(role) = get(function, &["Properties", "Role"])
        .and_then(referenced)
        .and_then(|r| template.resource(&r))
    else {
        return out;
    };
    for policy in get(role, &["Properties", "Policies"])
        .map(untag)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        for statement in get(policy, &["PolicyDocument", "Statement"])
            .map(untag)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if !strings(get(statement, &["Action"]))
                .iter()
                .any(|a| a == action)
            {
                continue;
            }
            let resources = get(statement, &["Resource"])
                .cloned()
                .unwrap_or(Value::Null);
            let list = match untag(&resources) {
                Value::Sequence(items) if tag(&resources).is_none() => items.clone(),
                _ => vec![resources.clone()],
            };
            for resource in &list {
                if let Some(id) = referenced(resource) {
                    out.insert(id);
                } else if let Some(text) = text(resource) {
                    out.insert(text);
                }
            }
        }
    }
    out
}

/// Every disagreement between the template and the configuration.
fn problems(template: &Template, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut fail = |message: String| out.push(message);

    // Functions: runtime, architecture, cargo-lambda build, the bundled configuration.
    let functions = template.of_type("AWS::Serverless::Function");
    let mut by_binary: BTreeMap<String, Vec<(String, &Value)>> = BTreeMap::new();
    for (name, function) in &functions {
        let runtime = template
            .function_property(function, "Runtime")
            .and_then(text);
        if runtime.as_deref() != Some("provided.al2023") {
            fail(format!("{name}: runtime {runtime:?}, want provided.al2023"));
        }
        let arch = strings(template.function_property(function, "Architectures"));
        if arch != ["arm64"] {
            fail(format!("{name}: architectures {arch:?}, want [arm64]"));
        }
        if get(function, &["Metadata", "BuildMethod"]).and_then(Value::as_str)
            != Some("rust-cargolambda")
        {
            fail(format!(
                "{name}: Metadata.BuildMethod must be rust-cargolambda"
            ));
        }
        let binary = get(function, &["Metadata", "BuildProperties", "Binary"])
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !["sync-start", "delivery", "finalizer"].contains(&binary.as_str()) {
            fail(format!(
                "{name}: BuildProperties.Binary {binary:?} is not a function binary"
            ));
            continue;
        }
        let format = get(function, &["Properties", "LoggingConfig", "LogFormat"]).and_then(text);
        if format.as_deref() != Some("JSON") {
            fail(format!(
                "{name}: LoggingConfig.LogFormat {format:?}, want JSON"
            ));
        }
        let env = template.environment(function);
        if env.get("RESYNC_CONFIG").and_then(text).as_deref() != Some("/opt/resync.yaml") {
            fail(format!(
                "{name}: RESYNC_CONFIG must be /opt/resync.yaml (the config layer)"
            ));
        }
        if !env.contains_key("RESYNC_STACK") {
            fail(format!("{name}: RESYNC_STACK is not set"));
        }
        let layers = strings(template.function_property(function, "Layers"));
        let has_config_layer = template
            .function_property(function, "Layers")
            .map(untag)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(referenced)
            .any(|layer| {
                template
                    .resource(&layer)
                    .and_then(|l| get(l, &["Properties", "ContentUri"]))
                    .and_then(text)
                    .is_some_and(|uri| uri.trim_end_matches('/') == "config")
            });
        if !has_config_layer {
            fail(format!(
                "{name}: no layer built from config/ (layers {layers:?})"
            ));
        }
        by_binary
            .entry(binary)
            .or_default()
            .push((name.clone(), function));
    }
    for binary in ["sync-start", "finalizer"] {
        if by_binary.get(binary).map_or(0, Vec::len) != 1 {
            fail(format!("want exactly one {binary} function"));
        }
    }

    // IAM: least privilege, no wildcards.
    for (name, role) in template.of_type("AWS::IAM::Role") {
        for policy in get(role, &["Properties", "Policies"])
            .map(untag)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for statement in get(policy, &["PolicyDocument", "Statement"])
                .map(untag)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                for action in strings(get(statement, &["Action"])) {
                    if action.contains('*') {
                        fail(format!("{name}: wildcard action {action}"));
                    }
                }
                for resource in strings(get(statement, &["Resource"])) {
                    if resource == "*" {
                        fail(format!("{name}: statement on resource *"));
                    }
                }
                if get(statement, &["NotAction"]).is_some()
                    || get(statement, &["NotResource"]).is_some()
                {
                    fail(format!("{name}: NotAction/NotResource"));
                }
            }
        }
    }
    let role_actions = |function: &Value| -> BTreeSet<String> {
        let Some(role) = get(function, &["Properties", "Role"])
            .and_then(referenced)
            .and_then(|r| template.resource(&r))
        else {
            return BTreeSet::new();
        };
        let mut actions = BTreeSet::new();
        for policy in get(role, &["Properties", "Policies"])
            .map(untag)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for statement in get(policy, &["PolicyDocument", "Statement"])
                .map(untag)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                actions.extend(strings(get(statement, &["Action"])));
            }
        }
        actions
    };

    // Destinations: one queue, dead-letter queue and delivery function each.
    for destination in &config.destinations {
        check_destination(template, destination, &by_binary, &role_actions, &mut fail);
    }
    let deliveries = by_binary.get("delivery").map_or(0, Vec::len);
    if deliveries != config.destinations.len() {
        fail(format!(
            "{deliveries} delivery functions for {} destinations",
            config.destinations.len()
        ));
    }
    for binary in ["sync-start", "finalizer"] {
        for (name, function) in by_binary.get(binary).into_iter().flatten() {
            let actions = role_actions(function);
            let expected = expected_actions(binary, false);
            if actions != expected {
                fail(format!(
                    "{name}: IAM actions {actions:?}, want exactly {expected:?}"
                ));
            }
        }
    }

    // Wiring: sync-start sends to every delivery queue, the finalizer drains every
    // dead-letter queue, each function has an errors alarm, each DLQ a depth alarm.
    let alarms = template.of_type("AWS::CloudWatch::Alarm");
    let alarm_on = |metric: &str, dimension: &str, target: &str| {
        alarms.iter().any(|(_, a)| {
            get(a, &["Properties", "MetricName"])
                .and_then(text)
                .as_deref()
                == Some(metric)
                && get(a, &["Properties", "Dimensions"])
                    .map(untag)
                    .and_then(Value::as_sequence)
                    .is_some_and(|dims| {
                        dims.iter().any(|d| {
                            get(d, &["Name"]).and_then(text).as_deref() == Some(dimension)
                                && get(d, &["Value"]).and_then(referenced).as_deref()
                                    == Some(target)
                        })
                    })
        })
    };
    for (name, _) in &functions {
        if !alarm_on("Errors", "FunctionName", name) {
            fail(format!("{name}: no AWS/Lambda Errors alarm"));
        }
    }
    for destination in &config.destinations {
        let id = destination.id.as_str();
        let queue = template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-delivery"));
        let dlq = template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-dlq"));
        for (binary, action, queue) in [
            ("sync-start", "sqs:SendMessage", &queue),
            ("finalizer", "sqs:ReceiveMessage", &dlq),
        ] {
            let Some((queue, _)) = queue else { continue };
            for (name, function) in by_binary.get(binary).into_iter().flatten() {
                if !granted(template, function, action).contains(queue) {
                    fail(format!("{name}: no {action} on {queue} (destination {id})"));
                }
            }
        }
        if let Some((dlq, _)) = &dlq {
            if !alarm_on("ApproximateNumberOfMessagesVisible", "QueueName", dlq) {
                fail(format!("{dlq}: no dead-letter depth alarm"));
            }
        }
    }
    for (name, function) in by_binary.get("sync-start").into_iter().flatten() {
        let reads = granted(template, function, "s3:GetObject");
        for sync in config.syncs.iter().filter(|s| s.source.bucket.is_none()) {
            let suffix = format!("/{}*", sync.source.prefix);
            if !reads.iter().any(|r| r.ends_with(&suffix)) {
                fail(format!(
                    "{name}: no s3:GetObject on the prefix of sync {}",
                    sync.id
                ));
            }
        }
    }

    // Syncs: one schedule rule each whose input is the EventBridge event sync-start reads.
    let sync_start = by_binary
        .get("sync-start")
        .and_then(|f| f.first())
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    for sync in &config.syncs {
        let Some((rule_name, rule)) = template.named("AWS::Events::Rule", "Name", sync.id.as_str())
        else {
            fail(format!(
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
            fail(format!(
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
            fail(format!("{rule_name}: does not target {sync_start}"));
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
                    fail(format!(
                        "{rule_name}: the input must carry the firing's id and time"
                    ));
                }
            }
            Ok(event) => fail(format!(
                "{rule_name}: input names sync {:?}, want {}",
                event.detail.sync_id, sync.id
            )),
            Err(err) => fail(format!(
                "{rule_name}: input is not an EventBridge event: {err}"
            )),
        }
        let alarm = template
            .of_type("AWS::CloudWatch::Alarm")
            .into_iter()
            .any(|(_, a)| {
                get(a, &["Properties", "Namespace"])
                    .and_then(text)
                    .as_deref()
                    == Some("resync")
                    && get(a, &["Properties", "MetricName"])
                        .and_then(text)
                        .as_deref()
                        == Some("RowsFailed")
                    && get(a, &["Properties", "Dimensions"])
                        .map(untag)
                        .and_then(Value::as_sequence)
                        .is_some_and(|dims| {
                            dims.iter().any(|d| {
                                get(d, &["Name"]).and_then(text).as_deref() == Some("SyncId")
                                    && get(d, &["Value"]).and_then(text).as_deref()
                                        == Some(sync.id.as_str())
                            })
                        })
            });
        if !alarm {
            fail(format!(
                "sync {}: no resync/RowsFailed alarm on SyncId",
                sync.id
            ));
        }
    }
    let rules = template
        .of_type("AWS::Events::Rule")
        .into_iter()
        .filter(|(_, r)| get(r, &["Properties", "ScheduleExpression"]).is_some())
        .count();
    if rules != config.syncs.len() {
        fail(format!(
            "{rules} schedule rules for {} syncs",
            config.syncs.len()
        ));
    }

    // The finalizer every minute with the plain scheduled event (detail {}).
    for (name, function) in by_binary.get("finalizer").into_iter().flatten() {
        let events = || {
            get(function, &["Properties", "Events"])
                .map(untag)
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
                .map(|(_, e)| e)
        };
        let scheduled = events().any(|e| {
            get(e, &["Type"]).and_then(text).as_deref() == Some("Schedule")
                && get(e, &["Properties", "Schedule"])
                    .and_then(text)
                    .as_deref()
                    == Some("rate(1 minute)")
                && get(e, &["Properties", "Input"]).is_none()
        });
        if !scheduled {
            fail(format!(
                "{name}: want a rate(1 minute) Schedule event without Input"
            ));
        }
        // And at once when a run looks settled: the notice's rule on the stack's bus.
        let want: serde_json::Value =
            serde_json::from_str(&resync_shared::aws::report::run_settled_pattern())
                .expect("the pattern is JSON");
        let on_notice = events().any(|e| {
            get(e, &["Type"]).and_then(text).as_deref() == Some("EventBridgeRule")
                && get(e, &["Properties", "EventBusName"])
                    .and_then(referenced)
                    .is_some_and(|bus| {
                        template.resource(&bus).is_some_and(|b| {
                            get(b, &["Type"]).and_then(Value::as_str)
                                == Some("AWS::Events::EventBus")
                        })
                    })
                && get(e, &["Properties", "Pattern"])
                    .and_then(|p| serde_json::to_value(p).ok())
                    .is_some_and(|p| p == want)
        });
        if !on_notice {
            fail(format!(
                "{name}: want an EventBridgeRule event on the stack's bus with pattern {want}"
            ));
        }
    }

    // Tables: the keys resources.rs and the adapters use.
    for (suffix, partition, sort, ttl) in [
        ("runs", "pk", "sk", Some("expires_at")),
        ("failed-rows", "sync_id", "key", None),
    ] {
        let Some((name, table)) = template.named("AWS::DynamoDB::Table", "TableName", suffix)
        else {
            fail(format!("no table ${{ResyncStack}}-{suffix}"));
            continue;
        };
        let keys: Vec<(String, String)> = get(table, &["Properties", "KeySchema"])
            .map(untag)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|k| {
                (
                    get(k, &["AttributeName"])
                        .and_then(text)
                        .unwrap_or_default(),
                    get(k, &["KeyType"]).and_then(text).unwrap_or_default(),
                )
            })
            .collect();
        let want = vec![
            (partition.to_owned(), "HASH".to_owned()),
            (sort.to_owned(), "RANGE".to_owned()),
        ];
        if keys != want {
            fail(format!("{name}: keys {keys:?}, want {want:?}"));
        }
        if get(table, &["Properties", "BillingMode"])
            .and_then(text)
            .as_deref()
            != Some("PAY_PER_REQUEST")
        {
            fail(format!("{name}: want on-demand billing"));
        }
        if get(
            table,
            &[
                "Properties",
                "PointInTimeRecoverySpecification",
                "PointInTimeRecoveryEnabled",
            ],
        )
        .and_then(|v| untag(v).as_bool())
            != Some(true)
        {
            fail(format!("{name}: want point-in-time recovery"));
        }
        let ttl_attribute = get(
            table,
            &["Properties", "TimeToLiveSpecification", "AttributeName"],
        )
        .and_then(text);
        if ttl_attribute.as_deref() != ttl {
            fail(format!(
                "{name}: TTL attribute {ttl_attribute:?}, want {ttl:?}"
            ));
        }
    }
    out
}

fn check_destination(
    template: &Template,
    destination: &DestinationConfig,
    by_binary: &BTreeMap<String, Vec<(String, &Value)>>,
    role_actions: &dyn Fn(&Value) -> BTreeSet<String>,
    fail: &mut dyn FnMut(String),
) {
    let id = destination.id.as_str();
    let settings = QueueSettings::for_destination(destination);
    let Some((queue_name, queue)) =
        template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-delivery"))
    else {
        fail(format!(
            "destination {id}: no queue ${{ResyncStack}}-{id}-delivery"
        ));
        return;
    };
    let Some((dlq_name, dlq)) =
        template.named("AWS::SQS::Queue", "QueueName", &format!("{id}-dlq"))
    else {
        fail(format!(
            "destination {id}: no queue ${{ResyncStack}}-{id}-dlq"
        ));
        return;
    };
    let property = |resource: &Value, key: &str| number(get(resource, &["Properties", key]));
    let visibility = property(queue, "VisibilityTimeout").unwrap_or(0);
    if visibility != u64::from(settings.visibility_timeout_secs) {
        fail(format!(
            "{queue_name}: VisibilityTimeout {visibility}, QueueSettings says {}",
            settings.visibility_timeout_secs
        ));
    }
    for (key, want) in [
        ("MaximumMessageSize", settings.max_message_bytes),
        ("MessageRetentionPeriod", settings.retention_secs),
    ] {
        if property(queue, key) != Some(u64::from(want)) {
            fail(format!(
                "{queue_name}: {key} {:?}, want {want}",
                property(queue, key)
            ));
        }
    }
    if property(dlq, "MessageRetentionPeriod") != Some(u64::from(settings.dlq_retention_secs)) {
        fail(format!(
            "{dlq_name}: retention must be {}",
            settings.dlq_retention_secs
        ));
    }
    let redrive = get(queue, &["Properties", "RedrivePolicy"]);
    if redrive
        .and_then(|r| get(r, &["deadLetterTargetArn"]))
        .and_then(referenced)
        .as_deref()
        != Some(dlq_name.as_str())
    {
        fail(format!("{queue_name}: redrive target is not {dlq_name}"));
    }
    match redrive
        .and_then(|r| get(r, &["maxReceiveCount"]))
        .map(untag)
    {
        Some(Value::Number(n)) => {
            let count = n.as_u64().unwrap_or(0);
            if count <= u64::from(destination.retry.max_attempts) {
                fail(format!(
                    "{queue_name}: maxReceiveCount {count} is at or below the threshold {} (rows would be dead-lettered instead of failed)",
                    destination.retry.max_attempts
                ));
            } else if count != u64::from(settings.max_receive_count) {
                fail(format!(
                    "{queue_name}: maxReceiveCount {count}, QueueSettings says {}",
                    settings.max_receive_count
                ));
            }
        }
        other => fail(format!(
            "{queue_name}: maxReceiveCount must be a number, got {other:?}"
        )),
    }

    let Some((name, function)) = by_binary
        .get("delivery")
        .into_iter()
        .flatten()
        .find(|(_, f)| {
            template
                .environment(f)
                .get("RESYNC_DESTINATION")
                .and_then(text)
                .as_deref()
                == Some(id)
        })
    else {
        fail(format!(
            "destination {id}: no delivery function with RESYNC_DESTINATION={id}"
        ));
        return;
    };
    let timeout = number(template.function_property(function, "Timeout"));
    if timeout != Some(u64::from(DELIVERY_FUNCTION_TIMEOUT_SECS)) {
        fail(format!("{name}: Timeout {timeout:?}, want DELIVERY_FUNCTION_TIMEOUT_SECS = {DELIVERY_FUNCTION_TIMEOUT_SECS}"));
    }
    let window = u64::from(settings.batching_window_secs);
    if visibility < 6 * timeout.unwrap_or(u64::MAX / 12) + window {
        fail(format!(
            "{queue_name}: visibility {visibility} < 6 × function timeout + batching window"
        ));
    }
    let events: Vec<&Value> = get(function, &["Properties", "Events"])
        .map(untag)
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .map(|(_, e)| e)
        .filter(|e| get(e, &["Type"]).and_then(text).as_deref() == Some("SQS"))
        .collect();
    let [event] = events.as_slice() else {
        fail(format!(
            "{name}: want exactly one SQS event, got {}",
            events.len()
        ));
        return;
    };
    if get(event, &["Properties", "Queue"])
        .and_then(referenced)
        .as_deref()
        != Some(queue_name.as_str())
    {
        fail(format!("{name}: SQS event is not on {queue_name}"));
    }
    let response_types = strings(get(event, &["Properties", "FunctionResponseTypes"]));
    if response_types != ["ReportBatchItemFailures"] {
        fail(format!(
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
            fail(format!("{name}: {} {got:?}, want {want}", path.join(".")));
        }
    }
    let secrets = destination
        .settings
        .secrets()
        .iter()
        .any(|s| matches!(s, SecretRef::SecretId(_)));
    let actions = role_actions(function);
    let expected = expected_actions("delivery", secrets);
    if actions != expected {
        fail(format!(
            "{name}: IAM actions {actions:?}, want exactly {expected:?}"
        ));
    }
}

fn template_text() -> String {
    std::fs::read_to_string(format!("{ROOT}/template.yaml")).expect("template.yaml")
}

fn config() -> Config {
    Config::load(std::path::Path::new(&format!("{ROOT}/config/resync.yaml")))
        .expect("config/resync.yaml")
}

fn problems_of(text: &str) -> Vec<String> {
    let root: Value = serde_yaml::from_str(text).expect("template parses");
    problems(&Template { root }, &config())
}

/// The real template with one edit (the edit must apply).
fn edited(from: &str, to: &str) -> Vec<String> {
    let text = template_text();
    assert!(
        text.contains(from),
        "template.yaml no longer contains {from:?}"
    );
    problems_of(&text.replacen(from, to, 1))
}

fn assert_named(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:#?}"
    );
}

#[test]
fn the_template_agrees_with_the_configuration_and_resources() {
    let problems = problems_of(&template_text());
    assert!(
        problems.is_empty(),
        "template.yaml drifted:\n{}",
        problems.join("\n")
    );
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
fn a_wildcard_action_or_resource_is_caught() {
    assert_named(
        &edited("Action: [sns:Publish]", "Action: [\"sns:*\"]"),
        "wildcard action",
    );
    assert_named(
        &edited("Resource: !GetAtt RunsTable.Arn", "Resource: \"*\""),
        "resource *",
    );
}

#[test]
fn a_finalizer_without_the_run_settled_rule_is_caught() {
    let problems = edited("detail-type: [Run settled]", "detail-type: [Run Settled]");
    assert_named(&problems, "EventBridgeRule event on the stack's bus");
}

#[test]
fn an_extra_iam_action_is_caught() {
    let problems = edited(
        "Action: [dynamodb:Query, dynamodb:BatchWriteItem]",
        "Action: [dynamodb:Query, dynamodb:BatchWriteItem, dynamodb:DeleteTable]",
    );
    assert_named(&problems, "IAM actions");
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

#[test]
fn a_missing_ttl_or_wrong_key_is_caught() {
    assert_named(
        &edited("AttributeName: expires_at", "AttributeName: expiry"),
        "TTL attribute",
    );
    assert_named(
        &edited(
            "{ AttributeName: key, KeyType: RANGE }",
            "{ AttributeName: row_key, KeyType: RANGE }",
        ),
        "keys",
    );
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

/// Packages that must not be in the build graph at all (any crate of the workspace
/// pulling them in would put them in the bootstraps too, since `cargo lambda build --bin`
/// at the root unifies features across every member): a second crypto library, the
/// legacy hyper 0.14 + rustls 0.21 connector of the SDK, a second trust store.
fn unwanted_packages(lockfile: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut name = "";
    for line in lockfile.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = value.trim_matches('"');
        } else if let Some(value) = line.strip_prefix("version = ") {
            let version = value.trim_matches('"');
            // 0.x releases: the minor number is the major one.
            let minor = |below: u32| {
                version.starts_with("0.")
                    && version
                        .split('.')
                        .nth(1)
                        .and_then(|minor| minor.parse::<u32>().ok())
                        .is_some_and(|minor| minor < below)
            };
            let unwanted = match name {
                "aws-lc-rs" | "aws-lc-sys" | "aws-lc-fips-sys" | "webpki-roots" => true,
                "rustls" => minor(23),
                "hyper-rustls" => minor(27),
                "hyper" => version.starts_with("0."),
                "h2" => minor(4),
                _ => false,
            };
            if unwanted {
                found.push(format!("{name} {version}"));
            }
        }
    }
    found
}

/// Bootstrap size: one TLS stack (rustls 0.23 on ring) in every build; the SDK's
/// default features would add aws-lc-rs and the legacy connector (README, Deploy).
#[test]
fn the_lockfile_holds_one_tls_stack() {
    let lockfile = std::fs::read_to_string(format!("{ROOT}/Cargo.lock")).expect("Cargo.lock");
    assert_eq!(unwanted_packages(&lockfile), Vec::<String>::new());
}

#[test]
fn a_second_tls_stack_in_the_lockfile_is_caught() {
    let lockfile = "[[package]]\nname = \"aws-lc-rs\"\nversion = \"1.19.0\"\n\n\
                    [[package]]\nname = \"rustls\"\nversion = \"0.21.12\"\n\n\
                    [[package]]\nname = \"rustls\"\nversion = \"0.23.46\"\n\n\
                    [[package]]\nname = \"hyper\"\nversion = \"0.14.32\"\n\n\
                    [[package]]\nname = \"hyper-rustls\"\nversion = \"0.24.2\"\n\n\
                    [[package]]\nname = \"hyper\"\nversion = \"1.12.0\"\n";
    assert_eq!(
        unwanted_packages(lockfile),
        [
            "aws-lc-rs 1.19.0",
            "rustls 0.21.12",
            "hyper 0.14.32",
            "hyper-rustls 0.24.2"
        ]
    );
}
