//! The template as YAML: reading `template.yaml` and `config/resync.yaml`, the small
//! readers of CloudFormation values (tags, `!Sub` texts, references), the [`Template`]
//! lookups the checks share, and the mutation helpers of the tests ([`edited`],
//! [`assert_named`], [`problems_observing`]).

use std::collections::BTreeMap;

use resync::aws::calls::ObservedCalls;
use resync_shared::config::Config;
use serde_yaml::{Mapping, Value};

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A value without its CloudFormation tag (`!Ref`, `!Sub`, ...).
pub fn untag(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untag(&tagged.value),
        other => other,
    }
}

pub fn tag(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) => Some(tagged.tag.to_string().trim_start_matches('!').to_owned()),
        _ => None,
    }
}

/// `!Sub "text"` or `!Sub ["text", {...}]` → the text; a plain string → itself.
pub fn text(value: &Value) -> Option<String> {
    match untag(value) {
        Value::String(s) => Some(s.clone()),
        Value::Sequence(items) if tag(value).as_deref() == Some("Sub") => {
            items.first().and_then(|v| v.as_str()).map(str::to_owned)
        }
        _ => None,
    }
}

/// `!GetAtt X.Arn`, `!Ref X`, `{"Fn::GetAtt": [X, Arn]}` → `X`.
pub fn referenced(value: &Value) -> Option<String> {
    match (tag(value).as_deref(), untag(value)) {
        (Some("GetAtt" | "Ref"), Value::String(s)) => s.split('.').next().map(str::to_owned),
        (Some("GetAtt"), Value::Sequence(items)) => {
            items.first().and_then(|v| v.as_str()).map(str::to_owned)
        }
        _ => None,
    }
}

pub fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| untag(v).as_mapping()?.get(*key))
}

pub fn number(value: Option<&Value>) -> Option<u64> {
    value.map(untag).and_then(Value::as_u64)
}

pub fn strings(value: Option<&Value>) -> Vec<String> {
    match value.map(untag) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| text(v).unwrap_or_else(|| format!("{v:?}")))
            .collect(),
        _ => vec![],
    }
}

/// The parsed template.
pub struct Template {
    root: Value,
}

impl Template {
    fn resources(&self) -> &Mapping {
        get(&self.root, &["Resources"])
            .and_then(Value::as_mapping)
            .expect("Resources")
    }

    pub fn of_type(&self, kind: &str) -> Vec<(String, &Value)> {
        self.resources()
            .iter()
            .filter(|(_, r)| get(r, &["Type"]).and_then(Value::as_str) == Some(kind))
            .map(|(name, r)| (name.as_str().unwrap_or_default().to_owned(), r))
            .collect()
    }

    pub fn resource(&self, name: &str) -> Option<&Value> {
        self.resources().get(name)
    }

    /// The resource whose `Properties.{property}` is `!Sub "${ResyncStack}-{suffix}"`.
    pub fn named(&self, kind: &str, property: &str, suffix: &str) -> Option<(String, &Value)> {
        let wanted = format!("${{ResyncStack}}-{suffix}");
        self.of_type(kind).into_iter().find(|(_, r)| {
            get(r, &["Properties", property]).and_then(text).as_deref() == Some(wanted.as_str())
        })
    }

    /// A function property, falling back to `Globals.Function`.
    pub fn function_property<'a>(&'a self, function: &'a Value, key: &str) -> Option<&'a Value> {
        get(function, &["Properties", key])
            .or_else(|| get(&self.root, &["Globals", "Function", key]))
    }

    pub fn environment(&self, function: &Value) -> BTreeMap<String, Value> {
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

    /// Whether an alarm watches `metric` (in `namespace`, when given) with the dimension
    /// `dimension` set to a value that `value` accepts.
    pub fn has_alarm(
        &self,
        namespace: Option<&str>,
        metric: &str,
        dimension: &str,
        value: impl Fn(&Value) -> bool,
    ) -> bool {
        self.of_type("AWS::CloudWatch::Alarm").iter().any(|(_, a)| {
            namespace.is_none_or(|namespace| {
                get(a, &["Properties", "Namespace"])
                    .and_then(text)
                    .as_deref()
                    == Some(namespace)
            }) && get(a, &["Properties", "MetricName"])
                .and_then(text)
                .as_deref()
                == Some(metric)
                && get(a, &["Properties", "Dimensions"])
                    .map(untag)
                    .and_then(Value::as_sequence)
                    .is_some_and(|dims| {
                        dims.iter().any(|d| {
                            get(d, &["Name"]).and_then(text).as_deref() == Some(dimension)
                                && get(d, &["Value"]).is_some_and(&value)
                        })
                    })
        })
    }

    pub fn parameter_default(&self, value: &Value) -> Option<String> {
        let name = referenced(value)?;
        get(&self.root, &["Parameters", &name, "Default"])
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }
}

pub fn template_text() -> String {
    std::fs::read_to_string(format!("{ROOT}/template.yaml")).expect("template.yaml")
}

pub fn config() -> Config {
    Config::load(std::path::Path::new(&format!("{ROOT}/config/resync.yaml")))
        .expect("config/resync.yaml")
}

pub fn problems_of(text: &str) -> Vec<String> {
    problems_observing(text, &crate::iam::observed_calls())
}

/// The problems of a template text against a given observation of the handlers' calls.
pub fn problems_observing(text: &str, observed: &ObservedCalls) -> Vec<String> {
    let root: Value = serde_yaml::from_str(text).expect("template parses");
    crate::problems(&Template { root }, &config(), observed)
}

/// The real template with one edit (the edit must apply).
pub fn edited(from: &str, to: &str) -> Vec<String> {
    let text = template_text();
    assert!(
        text.contains(from),
        "template.yaml no longer contains {from:?}"
    );
    problems_of(&text.replacen(from, to, 1))
}

pub fn assert_named(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:#?}"
    );
}
