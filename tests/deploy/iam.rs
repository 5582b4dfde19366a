//! IAM: least privilege. No wildcard actions or resources, no `NotAction` or
//! `NotResource`; each function's role grants exactly the actions its handler calls,
//! and what it grants an action on is read by the wiring checks ([`granted`]).

use std::collections::BTreeSet;

use serde_yaml::Value;

use crate::{
    functions::Functions,
    template::{assert_named, edited, get, referenced, strings, tag, text, untag, Template},
};

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
            // A closed run's report, once sent (`RunStore::report_sent`).
            "dynamodb:DeleteItem",
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

/// The role a function runs as (`Properties.Role: !GetAtt X.Arn`).
fn role<'a>(template: &'a Template, function: &Value) -> Option<&'a Value> {
    get(function, &["Properties", "Role"])
        .and_then(referenced)
        .and_then(|r| template.resource(&r))
}

/// The statements of a role's inline policies.
fn statements(role: &Value) -> impl Iterator<Item = &Value> {
    get(role, &["Properties", "Policies"])
        .map(untag)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .flat_map(|policy| {
            get(policy, &["PolicyDocument", "Statement"])
                .map(untag)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
        })
}

/// Every action a function's role grants.
fn role_actions(template: &Template, function: &Value) -> BTreeSet<String> {
    let Some(role) = role(template, function) else {
        return BTreeSet::new();
    };
    statements(role)
        .flat_map(|statement| strings(get(statement, &["Action"])))
        .collect()
}

/// A function's role grants exactly the actions its binary's handler calls (with
/// `secrets`, reading a secret too).
pub fn exact_actions(
    template: &Template,
    name: &str,
    function: &Value,
    binary: &str,
    secrets: bool,
) -> Option<String> {
    let actions = role_actions(template, function);
    let expected = expected_actions(binary, secrets);
    (actions != expected)
        .then(|| format!("{name}: IAM actions {actions:?}, want exactly {expected:?}"))
}

/// What a function's role grants `action` on: referenced logical ids (`!GetAtt X.Arn`)
/// and ARN texts (`!Sub ...`).
pub fn granted(template: &Template, function: &Value, action: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(role) = role(template, function) else {
        return out;
    };
    for statement in statements(role) {
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
    out
}

/// No role grants a wildcard action, a statement on resource `*`, or uses `NotAction`
/// or `NotResource`.
pub fn no_wildcards(template: &Template) -> Vec<String> {
    let mut out = Vec::new();
    for (name, role) in template.of_type("AWS::IAM::Role") {
        for statement in statements(role) {
            for action in strings(get(statement, &["Action"])) {
                if action.contains('*') {
                    out.push(format!("{name}: wildcard action {action}"));
                }
            }
            for resource in strings(get(statement, &["Resource"])) {
                if resource == "*" {
                    out.push(format!("{name}: statement on resource *"));
                }
            }
            if get(statement, &["NotAction"]).is_some()
                || get(statement, &["NotResource"]).is_some()
            {
                out.push(format!("{name}: NotAction/NotResource"));
            }
        }
    }
    out
}

/// sync-start's and the finalizer's roles grant exactly the actions their handlers call
/// (each delivery function's is checked with its destination).
pub fn function_actions(template: &Template, functions: &Functions) -> Vec<String> {
    let mut out = Vec::new();
    for binary in ["sync-start", "finalizer"] {
        for (name, function) in functions.built_from(binary) {
            out.extend(exact_actions(template, name, function, binary, false));
        }
    }
    out
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
fn an_extra_iam_action_is_caught() {
    let problems = edited(
        "Action: [dynamodb:Query, dynamodb:BatchWriteItem]",
        "Action: [dynamodb:Query, dynamodb:BatchWriteItem, dynamodb:DeleteTable]",
    );
    assert_named(&problems, "IAM actions");
}
