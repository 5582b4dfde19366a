//! The functions: runtime, architecture, the cargo-lambda build of one of the three
//! binaries, JSON logs and the bundled configuration; one sync-start and one finalizer;
//! and the finalizer's two triggers (every minute, and a run-settled notice).

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::template::{assert_named, edited, get, referenced, strings, text, untag, Template};

/// The binaries a function may be built from.
const BINARIES: [&str; 3] = ["sync-start", "delivery", "finalizer"];

/// The template's functions: all of them, and those built from a known binary grouped by
/// binary (each in template order).
pub struct Functions<'a> {
    pub all: Vec<(String, &'a Value)>,
    by_binary: BTreeMap<String, Vec<(String, &'a Value)>>,
}

impl<'a> Functions<'a> {
    pub fn of(template: &'a Template) -> Self {
        let all = template.of_type("AWS::Serverless::Function");
        let mut by_binary: BTreeMap<String, Vec<(String, &Value)>> = BTreeMap::new();
        for (name, function) in &all {
            let binary = binary(function);
            if BINARIES.contains(&binary.as_str()) {
                by_binary
                    .entry(binary)
                    .or_default()
                    .push((name.clone(), *function));
            }
        }
        Self { all, by_binary }
    }

    /// The functions built from `binary`.
    pub fn built_from(&self, binary: &str) -> impl Iterator<Item = &(String, &'a Value)> {
        self.by_binary.get(binary).into_iter().flatten()
    }

    /// How many functions are built from `binary`.
    pub fn count(&self, binary: &str) -> usize {
        self.by_binary.get(binary).map_or(0, Vec::len)
    }
}

/// `Metadata.BuildProperties.Binary`, or an empty text.
fn binary(function: &Value) -> String {
    get(function, &["Metadata", "BuildProperties", "Binary"])
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A function's events (`Properties.Events`).
pub fn events(function: &Value) -> impl Iterator<Item = &Value> {
    get(function, &["Properties", "Events"])
        .map(untag)
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .map(|(_, e)| e)
}

/// Runtime, architecture, cargo-lambda build, logs, the bundled configuration; exactly
/// one sync-start and one finalizer.
pub fn builds(template: &Template, functions: &Functions) -> Vec<String> {
    let mut out = Vec::new();
    for (name, function) in &functions.all {
        let runtime = template
            .function_property(function, "Runtime")
            .and_then(text);
        if runtime.as_deref() != Some("provided.al2023") {
            out.push(format!("{name}: runtime {runtime:?}, want provided.al2023"));
        }
        let arch = strings(template.function_property(function, "Architectures"));
        if arch != ["arm64"] {
            out.push(format!("{name}: architectures {arch:?}, want [arm64]"));
        }
        if get(function, &["Metadata", "BuildMethod"]).and_then(Value::as_str)
            != Some("rust-cargolambda")
        {
            out.push(format!(
                "{name}: Metadata.BuildMethod must be rust-cargolambda"
            ));
        }
        let binary = binary(function);
        if !BINARIES.contains(&binary.as_str()) {
            out.push(format!(
                "{name}: BuildProperties.Binary {binary:?} is not a function binary"
            ));
            continue;
        }
        let format = get(function, &["Properties", "LoggingConfig", "LogFormat"]).and_then(text);
        if format.as_deref() != Some("JSON") {
            out.push(format!(
                "{name}: LoggingConfig.LogFormat {format:?}, want JSON"
            ));
        }
        let env = template.environment(function);
        if env.get("RESYNC_CONFIG").and_then(text).as_deref() != Some("/opt/resync.yaml") {
            out.push(format!(
                "{name}: RESYNC_CONFIG must be /opt/resync.yaml (the config layer)"
            ));
        }
        if !env.contains_key("RESYNC_STACK") {
            out.push(format!("{name}: RESYNC_STACK is not set"));
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
            out.push(format!(
                "{name}: no layer built from config/ (layers {layers:?})"
            ));
        }
    }
    for binary in ["sync-start", "finalizer"] {
        if functions.count(binary) != 1 {
            out.push(format!("want exactly one {binary} function"));
        }
    }
    out
}

/// The finalizer every minute with the plain scheduled event (detail {}), and at once
/// when a run looks settled.
pub fn finalizer_triggers(template: &Template, functions: &Functions) -> Vec<String> {
    let mut out = Vec::new();
    for (name, function) in functions.built_from("finalizer") {
        let scheduled = events(function).any(|e| {
            get(e, &["Type"]).and_then(text).as_deref() == Some("Schedule")
                && get(e, &["Properties", "Schedule"])
                    .and_then(text)
                    .as_deref()
                    == Some("rate(1 minute)")
                && get(e, &["Properties", "Input"]).is_none()
        });
        if !scheduled {
            out.push(format!(
                "{name}: want a rate(1 minute) Schedule event without Input"
            ));
        }
        // And at once when a run looks settled: the notice's rule on the stack's bus.
        let want: serde_json::Value =
            serde_json::from_str(&resync_shared::aws::report::run_settled_pattern())
                .expect("the pattern is JSON");
        let on_notice = events(function).any(|e| {
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
            out.push(format!(
                "{name}: want an EventBridgeRule event on the stack's bus with pattern {want}"
            ));
        }
    }
    out
}

#[test]
fn a_finalizer_without_the_run_settled_rule_is_caught() {
    let problems = edited("detail-type: [Run settled]", "detail-type: [Run Settled]");
    assert_named(&problems, "EventBridgeRule event on the stack's bus");
}
