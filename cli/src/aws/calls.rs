//! Issue 12, defect 9: the IAM grants of each function, observed instead of kept by
//! hand. The delivery role lacked `sqs:SendMessage`, so on AWS a rate-limited row could
//! not be re-enqueued as a delayed copy; the deploy test's hand-kept list of actions
//! encoded the same gap.
//!
//! With `RESYNC_CALL_LOG=<dir>` the local runtime builds each handler's SDK
//! configuration through a [`CallRecorder`], which reads every request the handler
//! sends: the service and operation, the IAM action(s) AWS authorises it with
//! (`SendMessageBatch` → `sqs:SendMessage`, a `TransactWriteItems` → the item action of
//! each part, `ListObjectsV2` → `s3:ListBucket`, ...), and the resource it names,
//! classified by the stack's naming ([`StackNaming`], from
//! [`Resources`](resync_shared::resources::Resources)) into a [`ResourceKind`]. Each
//! distinct call is appended once per process to a JSON Lines file in the directory
//! ([`CallLog`]). The union of those files, function → action → resource kinds
//! ([`ObservedCalls`]), is committed as `tests/deploy/observed-calls.json`; the deploy
//! suite checks both templates against it (`scripts/observed-calls.sh` regenerates it).
//!
//! What counts for a function is what its execution role signs on AWS: its handler's
//! calls and, for delivery, the event source mapping's (Lambda's pollers receive,
//! delete and read attributes with the function's role). Provisioning, the local
//! finalizer-notice queue and test setup use the runtime's plain configuration and count
//! for no function.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use aws_config::SdkConfig;
use resync_shared::{config::Config, resources::Resources, secrets::SecretRef, DestinationId};
use serde::{Deserialize, Serialize};

/// The environment variable that turns recording on: a directory that receives one
/// JSON Lines file per process. Unset (the default), nothing is recorded and the SDK
/// configurations are the plain ones.
pub const CALL_LOG_ENV: &str = "RESYNC_CALL_LOG";

/// The function whose execution role signs a call on AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// sync-start.
    SyncStart,
    /// One destination's delivery function, with the event source mapping that feeds it.
    Delivery(DestinationId),
    /// The finalizer.
    Finalizer,
}

impl Caller {
    /// The binary the function is built from (`Metadata.BuildProperties.Binary` in
    /// template.yaml), the key of [`ObservedCalls`].
    pub fn binary(&self) -> &'static str {
        match self {
            Self::SyncStart => "sync-start",
            Self::Delivery(_) => "delivery",
            Self::Finalizer => "finalizer",
        }
    }
}

/// What a call was made on, in the stack's naming. For a delivery function the queues
/// and secrets are its own destination's; for sync-start and the finalizer, any
/// configured destination's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// The runs table (runs, sync state, ledger items).
    RunsTable,
    /// The failed-row index.
    FailedRowsTable,
    /// A source bucket (the stack's, or one a sync names): the bucket itself.
    SourceBucket,
    /// An object under a sync's prefix in its source bucket.
    SourceObject,
    /// A destination's delivery queue.
    DeliveryQueue,
    /// A destination's dead-letter queue.
    DeadLetterQueue,
    /// The run-events bus.
    EventBus,
    /// The alert topic.
    AlertTopic,
    /// A Secrets Manager secret the destination's configuration names.
    DestinationSecret,
    /// Nothing the stack's naming knows (`service:name`, the stack's prefix written
    /// `${stack}`): no template can grant it, so the deploy check names it.
    Unclassified(String),
}

impl ResourceKind {
    /// Every kind the naming knows, in order.
    pub const KNOWN: [ResourceKind; 9] = [
        Self::RunsTable,
        Self::FailedRowsTable,
        Self::SourceBucket,
        Self::SourceObject,
        Self::DeliveryQueue,
        Self::DeadLetterQueue,
        Self::EventBus,
        Self::AlertTopic,
        Self::DestinationSecret,
    ];

    /// The kind's name in [`ObservedCalls`] (`runs-table`, `delivery-queue`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            Self::RunsTable => "runs-table",
            Self::FailedRowsTable => "failed-rows-table",
            Self::SourceBucket => "source-bucket",
            Self::SourceObject => "source-object",
            Self::DeliveryQueue => "delivery-queue",
            Self::DeadLetterQueue => "dead-letter-queue",
            Self::EventBus => "event-bus",
            Self::AlertTopic => "alert-topic",
            Self::DestinationSecret => "destination-secret",
            Self::Unclassified(name) => name,
        }
    }

    /// The kind a name in [`ObservedCalls`] stands for (anything else is unclassified).
    pub fn parse(name: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .unwrap_or_else(|| Self::Unclassified(name.to_owned()))
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request names, before classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A DynamoDB table (name or ARN).
    Table(String),
    /// An SQS queue (URL or name).
    Queue(String),
    /// An S3 bucket.
    Bucket(String),
    /// An S3 object.
    Object {
        /// Its bucket.
        bucket: String,
        /// Its key.
        key: String,
    },
    /// An EventBridge bus (name or ARN; none is the default bus).
    Bus(String),
    /// An SNS topic ARN.
    Topic(String),
    /// A Secrets Manager secret id (name or ARN).
    Secret(String),
    /// A request whose resource could not be read (`service:operation`).
    Unknown(String),
}

/// One destination's names.
#[derive(Debug, Clone)]
struct DestinationNames {
    id: DestinationId,
    delivery_queue: String,
    dead_letter_queue: String,
    secret_ids: Vec<String>,
}

/// The stack's naming ([`Resources`]) and the configuration's destinations and sources:
/// what classifies a [`Target`] into a [`ResourceKind`].
#[derive(Debug, Clone)]
pub struct StackNaming {
    resources: Resources,
    destinations: Vec<DestinationNames>,
    /// (bucket, prefix) of every sync.
    sources: Vec<(String, String)>,
}

impl StackNaming {
    /// The naming of `resources`' stack for `config`.
    pub fn new(resources: &Resources, config: &Config) -> Self {
        let destinations = config
            .destinations
            .iter()
            .map(|destination| DestinationNames {
                id: destination.id.clone(),
                delivery_queue: resources.delivery_queue(&destination.id),
                dead_letter_queue: resources.dead_letter_queue(&destination.id),
                secret_ids: destination
                    .settings
                    .secrets()
                    .into_iter()
                    .filter_map(|secret| match secret {
                        SecretRef::SecretId(id) => Some(id.clone()),
                        SecretRef::Env(_) | SecretRef::Value(_) => None,
                    })
                    .collect(),
            })
            .collect();
        let sources = config
            .syncs
            .iter()
            .map(|sync| {
                (
                    sync.source
                        .bucket
                        .clone()
                        .unwrap_or_else(|| resources.source_bucket.clone()),
                    sync.source.prefix.clone(),
                )
            })
            .collect();
        Self {
            resources: resources.clone(),
            destinations,
            sources,
        }
    }

    /// The destinations whose queues and secrets `caller` may use: its own for a
    /// delivery function, every one for the others.
    fn scope<'a>(&'a self, caller: &'a Caller) -> impl Iterator<Item = &'a DestinationNames> {
        self.destinations
            .iter()
            .filter(move |destination| match caller {
                Caller::Delivery(own) => &destination.id == own,
                Caller::SyncStart | Caller::Finalizer => true,
            })
    }

    /// What `target` is, for `caller`.
    pub fn classify(&self, caller: &Caller, target: &Target) -> ResourceKind {
        let resources = &self.resources;
        let kind = match target {
            Target::Table(table) => {
                let table = last_segment(table, '/');
                if table == resources.runs_table {
                    Some(ResourceKind::RunsTable)
                } else if table == resources.failed_rows_table {
                    Some(ResourceKind::FailedRowsTable)
                } else {
                    None
                }
            }
            Target::Queue(queue) => {
                let queue = last_segment(queue, '/');
                self.scope(caller).find_map(|destination| {
                    if queue == destination.delivery_queue {
                        Some(ResourceKind::DeliveryQueue)
                    } else if queue == destination.dead_letter_queue {
                        Some(ResourceKind::DeadLetterQueue)
                    } else {
                        None
                    }
                })
            }
            Target::Bucket(bucket) => self
                .sources
                .iter()
                .any(|(source, _)| source == bucket)
                .then_some(ResourceKind::SourceBucket),
            Target::Object { bucket, key } => self
                .sources
                .iter()
                .any(|(source, prefix)| source == bucket && key.starts_with(prefix.as_str()))
                .then_some(ResourceKind::SourceObject),
            Target::Bus(bus) => {
                (last_segment(bus, '/') == resources.event_bus).then_some(ResourceKind::EventBus)
            }
            Target::Topic(topic) => (last_segment(topic, ':') == resources.alert_topic)
                .then_some(ResourceKind::AlertTopic),
            Target::Secret(secret) => self
                .scope(caller)
                .filter(|_| matches!(caller, Caller::Delivery(_)))
                .any(|destination| destination.secret_ids.iter().any(|id| id == secret))
                .then_some(ResourceKind::DestinationSecret),
            Target::Unknown(_) => None,
        };
        kind.unwrap_or_else(|| ResourceKind::Unclassified(self.unclassified(target)))
    }

    /// `service:name` of a target no rule knows, with the stack's prefix as `${stack}`
    /// (test stacks are named at random).
    fn unclassified(&self, target: &Target) -> String {
        let (service, name) = match target {
            Target::Table(name) => ("dynamodb", last_segment(name, '/')),
            Target::Queue(name) => ("sqs", last_segment(name, '/')),
            Target::Bucket(name) => ("s3", name.as_str()),
            Target::Object { bucket, .. } => ("s3", bucket.as_str()),
            Target::Bus(name) => ("events", last_segment(name, '/')),
            Target::Topic(name) => ("sns", last_segment(name, ':')),
            Target::Secret(name) => ("secretsmanager", last_segment(name, ':')),
            Target::Unknown(what) => ("unknown", what.as_str()),
        };
        let stack = format!("{}-", self.resources.stack);
        let name = match name.strip_prefix(&stack) {
            Some(rest) => format!("${{stack}}-{rest}"),
            None => name.to_owned(),
        };
        format!("unclassified {service}:{name}")
    }
}

/// The part of `text` after the last `separator` (all of it when there is none).
fn last_segment(text: &str, separator: char) -> &str {
    text.rsplit(separator).next().unwrap_or(text)
}

/// The parts of an HTTP request a [`CallRecorder`] reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The URI (path and query; scheme and host when present).
    pub uri: &'a str,
    /// The `x-amz-target` header (the JSON protocols' operation).
    pub target: Option<&'a str>,
    /// The `authorization` header (its SigV4 scope names the service).
    pub authorization: Option<&'a str>,
    /// The body, when it is in memory.
    pub body: &'a [u8],
}

/// One SDK call as AWS authorises it: the service and operation, and each IAM action
/// it needs on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorised {
    /// `sqs`, `dynamodb`, `s3`, `events`, `sns`, `secretsmanager`, ...
    pub service: String,
    /// The API operation (`SendMessageBatch`, `ListObjectsV2`, ...).
    pub operation: String,
    /// `(IAM action, what it is needed on)`, one per part of the call.
    pub needs: Vec<(String, Target)>,
}

/// The service of a request: the SigV4 credential scope's
/// (`Credential=KEY/DATE/REGION/SERVICE/aws4_request`), else the JSON target's prefix.
fn service_of(request: &RequestView<'_>) -> Option<String> {
    let scoped = request.authorization.and_then(|auth| {
        let credential = auth.split("Credential=").nth(1)?;
        let scope = credential.split([',', ' ']).next()?;
        scope.split('/').nth(3).map(str::to_owned)
    });
    scoped.or_else(|| {
        let prefix = request.target?.split('.').next()?;
        Some(
            match prefix {
                "AmazonSQS" => "sqs",
                p if p.starts_with("DynamoDB") => "dynamodb",
                "AWSEvents" => "events",
                p if p.starts_with("secretsmanager") => "secretsmanager",
                other => other,
            }
            .to_owned(),
        )
    })
}

/// Reads what a request does and what AWS needs to allow it. `None` for a request it
/// cannot read at all (no service).
pub fn authorise(request: &RequestView<'_>) -> Option<Authorised> {
    let service = service_of(request)?;
    let json = || serde_json::from_slice::<serde_json::Value>(request.body).unwrap_or_default();
    let (path, query) = match request.uri.split_once('?') {
        Some((path, query)) => (path, query),
        None => (request.uri, ""),
    };
    // Drop a scheme and host when the URI carries them.
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => path,
    };
    let (operation, needs) = match service.as_str() {
        "s3" => s3(request.method, path, query),
        "sns" => {
            let form = form_fields(request.body);
            let operation = form
                .iter()
                .find(|(k, _)| k == "Action")
                .map_or_else(String::new, |(_, v)| v.clone());
            let topic = form.iter().find(|(k, _)| k == "TopicArn").map_or_else(
                || Target::Unknown(format!("sns:{operation}")),
                |(_, v)| Target::Topic(v.clone()),
            );
            (operation.clone(), vec![(format!("sns:{operation}"), topic)])
        }
        _ => {
            let operation = request
                .target
                .and_then(|t| t.split_once('.'))
                .map_or_else(String::new, |(_, op)| op.to_owned());
            let needs = match service.as_str() {
                "dynamodb" => dynamodb(&operation, &json()),
                "sqs" => sqs(&operation, &json()),
                "events" => events(&operation, &json()),
                "secretsmanager" => {
                    let body = json();
                    let secret = body["SecretId"].as_str().map_or_else(
                        || Target::Unknown(format!("secretsmanager:{operation}")),
                        |id| Target::Secret(id.to_owned()),
                    );
                    vec![(format!("secretsmanager:{operation}"), secret)]
                }
                other => vec![(
                    format!("{other}:{operation}"),
                    Target::Unknown(format!("{other}:{operation}")),
                )],
            };
            (operation, needs)
        }
    };
    Some(Authorised {
        service,
        operation,
        needs,
    })
}

/// DynamoDB: each operation is its own action on its table, except the transactions
/// (the item action of each part, on the part's table) and the batches (on each table
/// they name).
fn dynamodb(operation: &str, body: &serde_json::Value) -> Vec<(String, Target)> {
    let table = |value: &serde_json::Value| {
        value.as_str().map_or_else(
            || Target::Unknown(format!("dynamodb:{operation}")),
            |name| Target::Table(name.to_owned()),
        )
    };
    match operation {
        "TransactWriteItems" | "TransactGetItems" => body["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let (part, action) = [
                    ("Put", "PutItem"),
                    ("Update", "UpdateItem"),
                    ("Delete", "DeleteItem"),
                    ("ConditionCheck", "ConditionCheckItem"),
                    ("Get", "GetItem"),
                ]
                .into_iter()
                .find(|(part, _)| item.get(*part).is_some())?;
                Some((
                    format!("dynamodb:{action}"),
                    table(&item[part]["TableName"]),
                ))
            })
            .collect(),
        "BatchWriteItem" | "BatchGetItem" => body["RequestItems"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, _)| (format!("dynamodb:{operation}"), Target::Table(name.clone())))
            .collect(),
        _ => vec![(format!("dynamodb:{operation}"), table(&body["TableName"]))],
    }
}

/// SQS: a batch call needs its single action (`SendMessageBatch` → `sqs:SendMessage`).
fn sqs(operation: &str, body: &serde_json::Value) -> Vec<(String, Target)> {
    let action = match operation {
        "SendMessageBatch" => "SendMessage",
        "DeleteMessageBatch" => "DeleteMessage",
        "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
        other => other,
    };
    let queue = body["QueueUrl"]
        .as_str()
        .or_else(|| body["QueueName"].as_str())
        .map_or_else(
            || Target::Unknown(format!("sqs:{operation}")),
            |queue| Target::Queue(queue.to_owned()),
        );
    vec![(format!("sqs:{action}"), queue)]
}

/// EventBridge: `PutEvents` on the bus of each entry (the default bus when none).
fn events(operation: &str, body: &serde_json::Value) -> Vec<(String, Target)> {
    let action = format!("events:{operation}");
    match body["Entries"].as_array() {
        Some(entries) => entries
            .iter()
            .map(|entry| {
                let bus = entry["EventBusName"].as_str().unwrap_or("default");
                (action.clone(), Target::Bus(bus.to_owned()))
            })
            .collect(),
        None => vec![(
            action,
            body["Name"].as_str().map_or_else(
                || Target::Unknown(format!("events:{operation}")),
                |bus| Target::Bus(bus.to_owned()),
            ),
        )],
    }
}

/// S3 (REST, path-style addressing as the local runtime uses): the operation from the
/// method, path and query, and its action (`ListObjectsV2` → `s3:ListBucket` on the
/// bucket, `GetObject`/`HeadObject` → `s3:GetObject` on the object).
fn s3(method: &str, path: &str, query: &str) -> (String, Vec<(String, Target)>) {
    let path = path.trim_start_matches('/');
    let (bucket, key) = match path.split_once('/') {
        Some((bucket, key)) if !key.is_empty() => {
            (percent_decoded(bucket), Some(percent_decoded(key)))
        }
        Some((bucket, _)) => (percent_decoded(bucket), None),
        None => (percent_decoded(path), None),
    };
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    let (operation, action) = match (method, &key) {
        ("GET", None) if has("list-type") => ("ListObjectsV2", "ListBucket"),
        ("GET", None) => ("ListObjects", "ListBucket"),
        ("HEAD", None) => ("HeadBucket", "ListBucket"),
        ("GET", Some(_)) => ("GetObject", "GetObject"),
        ("HEAD", Some(_)) => ("HeadObject", "GetObject"),
        ("PUT", Some(_)) => ("PutObject", "PutObject"),
        ("DELETE", Some(_)) => ("DeleteObject", "DeleteObject"),
        ("PUT", None) => ("CreateBucket", "CreateBucket"),
        ("POST", None) if has("delete") => ("DeleteObjects", "DeleteObject"),
        (other, _) => (other, other),
    };
    let target = match key {
        Some(key) => Target::Object { bucket, key },
        None => Target::Bucket(bucket),
    };
    (operation.to_owned(), vec![(format!("s3:{action}"), target)])
}

/// `a=1&b=x%2Fy` → `[("a", "1"), ("b", "x/y")]`.
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((
                percent_decoded(key),
                percent_decoded(&value.replace('+', " ")),
            ))
        })
        .collect()
}

/// Percent-decoding; a malformed escape is kept as written.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = (bytes[at] == b'%')
            .then(|| bytes.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One distinct call a function's role must allow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObservedCall {
    /// The function's binary ([`Caller::binary`]).
    pub function: String,
    /// The IAM action (`sqs:SendMessage`).
    pub action: String,
    /// What it was called on ([`ResourceKind::as_str`]).
    pub resource: String,
    /// The operation that needed it (`sqs.SendMessageBatch`), for the reader.
    pub operation: String,
}

/// The file of one process's distinct calls, in a [`CALL_LOG_ENV`] directory.
#[derive(Debug)]
pub struct CallLog {
    path: PathBuf,
    seen: Mutex<HashSet<ObservedCall>>,
}

impl CallLog {
    /// The process's log when [`CALL_LOG_ENV`] names a directory (created if missing),
    /// one per process whatever the number of runtimes.
    pub fn from_env() -> std::io::Result<Option<Arc<Self>>> {
        static LOG: OnceLock<Arc<CallLog>> = OnceLock::new();
        let Some(dir) = std::env::var_os(CALL_LOG_ENV).filter(|dir| !dir.is_empty()) else {
            return Ok(None);
        };
        if let Some(log) = LOG.get() {
            return Ok(Some(log.clone()));
        }
        let log = Arc::new(Self::in_dir(Path::new(&dir))?);
        Ok(Some(LOG.get_or_init(|| log).clone()))
    }

    /// A new file in `dir`, named for this process and the time.
    pub fn in_dir(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            path: dir.join(format!("calls-{}-{nanos}.jsonl", std::process::id())),
            seen: Mutex::new(HashSet::new()),
        })
    }

    /// Appends `call` unless this log holds it already. A failed write is logged: the
    /// comparison with the committed file then names what is missing.
    pub fn record(&self, call: ObservedCall) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.contains(&call) {
            return;
        }
        let written = serde_json::to_string(&call)
            .map_err(std::io::Error::other)
            .and_then(|line| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?
                    .write_all(format!("{line}\n").as_bytes())
            });
        match written {
            Ok(()) => {
                seen.insert(call);
            }
            Err(err) => {
                tracing::warn!(error = %err, path = %self.path.display(), "could not record an SDK call")
            }
        }
    }
}

/// Function → IAM action → the kinds of resource it was called on: what every recorded
/// call needs, the form of `tests/deploy/observed-calls.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedCalls {
    /// By function binary, then action.
    pub functions: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl ObservedCalls {
    /// Adds one call.
    pub fn add(&mut self, call: &ObservedCall) {
        self.functions
            .entry(call.function.clone())
            .or_default()
            .entry(call.action.clone())
            .or_default()
            .insert(call.resource.clone());
    }

    /// The union of every log in `dir` (`*.jsonl`); a line that does not parse is an
    /// error naming its file.
    pub fn from_log_dir(dir: &Path) -> std::io::Result<Self> {
        let mut observed = Self::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            for line in std::fs::read_to_string(&path)?.lines() {
                if line.trim().is_empty() {
                    continue;
                }
                let call: ObservedCall = serde_json::from_str(line)
                    .map_err(|err| std::io::Error::other(format!("{}: {err}", path.display())))?;
                observed.add(&call);
            }
        }
        Ok(observed)
    }

    /// The actions `function` was seen to need, with the kinds of resource.
    pub fn of(&self, function: &str) -> impl Iterator<Item = (&str, ResourceKind)> {
        self.functions
            .get(function)
            .into_iter()
            .flatten()
            .flat_map(|(action, kinds)| {
                kinds
                    .iter()
                    .map(move |kind| (action.as_str(), ResourceKind::parse(kind)))
            })
    }

    /// `(function, action, kind)` lines of `self` missing from `other`.
    pub fn missing_from(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        for (function, actions) in &self.functions {
            for (action, kinds) in actions {
                for kind in kinds {
                    let known = other
                        .functions
                        .get(function)
                        .and_then(|a| a.get(action))
                        .is_some_and(|k| k.contains(kind));
                    if !known {
                        out.push(format!("{function}: {action} on {kind}"));
                    }
                }
            }
        }
        out
    }
}

/// Tags every request made through an SDK configuration with the function it is made
/// for, and records what it needs in a [`CallLog`].
#[derive(Debug, Clone)]
pub struct CallRecorder {
    log: Arc<CallLog>,
    naming: Arc<StackNaming>,
    caller: Caller,
}

impl CallRecorder {
    /// Records `caller`'s calls, classified by `naming`, into `log`.
    pub fn new(log: Arc<CallLog>, naming: Arc<StackNaming>, caller: Caller) -> Self {
        Self {
            log,
            naming,
            caller,
        }
    }

    /// A copy of `sdk` whose clients report every request to this recorder (over plain
    /// HTTP when `sdk` has no HTTP client of its own).
    pub fn instrument(&self, sdk: &SdkConfig) -> SdkConfig {
        let inner = sdk
            .http_client()
            .unwrap_or_else(|| aws_smithy_http_client::Builder::new().build_http());
        let recorder = self.clone();
        let client =
            aws_smithy_runtime_api::client::http::http_client_fn(move |settings, components| {
                use aws_smithy_runtime_api::client::http::HttpClient as _;
                let connector = inner.http_connector(settings, components);
                aws_smithy_runtime_api::client::http::SharedHttpConnector::new(RecordingConnector {
                    inner: connector,
                    recorder: recorder.clone(),
                })
            });
        sdk.to_builder().http_client(client).build()
    }

    /// Records what one request needs.
    fn record(&self, request: &RequestView<'_>) {
        let Some(call) = authorise(request) else {
            tracing::warn!(
                uri = request.uri,
                "an SDK request names no service; not recorded"
            );
            return;
        };
        for (action, target) in &call.needs {
            self.log.record(ObservedCall {
                function: self.caller.binary().to_owned(),
                action: action.clone(),
                resource: self
                    .naming
                    .classify(&self.caller, target)
                    .as_str()
                    .to_owned(),
                operation: format!("{}.{}", call.service, call.operation),
            });
        }
    }
}

#[derive(Debug)]
struct RecordingConnector {
    inner: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    recorder: CallRecorder,
}

impl aws_smithy_runtime_api::client::http::HttpConnector for RecordingConnector {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        self.recorder.record(&RequestView {
            method: request.method(),
            uri: request.uri(),
            target: request.headers().get("x-amz-target"),
            authorization: request.headers().get("authorization"),
            body: request.body().bytes().unwrap_or_default(),
        });
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> StackNaming {
        let config = Config::from_yaml(
            r#"
destinations:
  - id: hook
    kind: webhook
    webhook:
      url: https://example.com/hook
      signing_secret: { secret_id: "arn:aws:secretsmanager:us-east-1:000000000000:secret:t1/hook-AbCdEf" }
  - id: other
    kind: webhook
    webhook: { url: https://example.com/other }
syncs:
  - id: customers
    source: { prefix: exports/customers/ }
    primary_key: id
    destination: hook
    schedule: rate(1 hour)
"#,
        )
        .expect("a valid configuration");
        StackNaming::new(&Resources::for_stack("t1"), &config)
    }

    fn hook() -> Caller {
        Caller::Delivery(DestinationId::parse("hook").expect("an id"))
    }

    fn json_request<'a>(target: &'a str, body: &'a str) -> RequestView<'a> {
        RequestView {
            method: "POST",
            uri: "/",
            target: Some(target),
            authorization: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn sqs_batch_calls_need_their_single_action() {
        for (operation, action) in [
            ("SendMessageBatch", "sqs:SendMessage"),
            ("DeleteMessageBatch", "sqs:DeleteMessage"),
            (
                "ChangeMessageVisibilityBatch",
                "sqs:ChangeMessageVisibility",
            ),
            ("ReceiveMessage", "sqs:ReceiveMessage"),
        ] {
            let target = format!("AmazonSQS.{operation}");
            let call = authorise(&json_request(
                &target,
                r#"{"QueueUrl":"http://127.0.0.1:1/000000000000/t1-hook-delivery"}"#,
            ))
            .expect("an SQS call");
            assert_eq!(call.service, "sqs");
            assert_eq!(
                call.needs,
                vec![(
                    action.to_owned(),
                    Target::Queue("http://127.0.0.1:1/000000000000/t1-hook-delivery".into())
                )]
            );
        }
    }

    #[test]
    fn a_transaction_needs_the_item_action_of_each_part_on_its_table() {
        let call = authorise(&json_request(
            "DynamoDB_20120810.TransactWriteItems",
            r#"{"TransactItems":[{"Update":{"TableName":"t1-runs"}},{"ConditionCheck":{"TableName":"t1-failed-rows"}},{"Put":{"TableName":"t1-runs"}}]}"#,
        ))
        .expect("a DynamoDB call");
        assert_eq!(
            call.needs,
            vec![
                (
                    "dynamodb:UpdateItem".to_owned(),
                    Target::Table("t1-runs".into())
                ),
                (
                    "dynamodb:ConditionCheckItem".to_owned(),
                    Target::Table("t1-failed-rows".into())
                ),
                (
                    "dynamodb:PutItem".to_owned(),
                    Target::Table("t1-runs".into())
                ),
            ]
        );
    }

    #[test]
    fn s3_listing_needs_list_bucket_on_the_bucket_and_reading_get_object_on_the_object() {
        let signed = "AWS4-HMAC-SHA256 Credential=test/20261201/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        let list = authorise(&RequestView {
            method: "GET",
            uri: "http://127.0.0.1:1/t1-source?list-type=2&prefix=exports%2Fcustomers%2F",
            target: None,
            authorization: Some(signed),
            body: b"",
        })
        .expect("an S3 call");
        assert_eq!(list.operation, "ListObjectsV2");
        assert_eq!(
            list.needs,
            vec![(
                "s3:ListBucket".to_owned(),
                Target::Bucket("t1-source".into())
            )]
        );
        let get = authorise(&RequestView {
            method: "GET",
            uri: "/t1-source/exports/customers/a%20b.jsonl.gz?x-id=GetObject",
            target: None,
            authorization: Some(signed),
            body: b"",
        })
        .expect("an S3 call");
        assert_eq!(
            get.needs,
            vec![(
                "s3:GetObject".to_owned(),
                Target::Object {
                    bucket: "t1-source".into(),
                    key: "exports/customers/a b.jsonl.gz".into()
                }
            )]
        );
        assert_eq!(
            naming().classify(&Caller::SyncStart, &get.needs[0].1),
            ResourceKind::SourceObject
        );
        assert!(matches!(
            naming().classify(
                &Caller::SyncStart,
                &Target::Object {
                    bucket: "t1-source".into(),
                    key: "elsewhere/x".into()
                }
            ),
            ResourceKind::Unclassified(_)
        ));
    }

    #[test]
    fn sns_publish_is_read_from_the_form_body() {
        let call = authorise(&RequestView {
            method: "POST",
            uri: "/",
            target: None,
            authorization: Some("AWS4-HMAC-SHA256 Credential=test/20261201/us-east-1/sns/aws4_request, SignedHeaders=host, Signature=0"),
            body: b"Action=Publish&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A000000000000%3At1-alerts&Message=x",
        })
        .expect("an SNS call");
        assert_eq!(call.operation, "Publish");
        assert_eq!(call.needs[0].0, "sns:Publish");
        assert_eq!(
            naming().classify(&Caller::Finalizer, &call.needs[0].1),
            ResourceKind::AlertTopic
        );
    }

    #[test]
    fn a_delivery_function_owns_only_its_destinations_queues_and_secrets() {
        let naming = naming();
        let own = Target::Queue("http://h/000000000000/t1-hook-delivery".into());
        let other = Target::Queue("http://h/000000000000/t1-other-delivery".into());
        assert_eq!(naming.classify(&hook(), &own), ResourceKind::DeliveryQueue);
        assert_eq!(
            naming.classify(&hook(), &other),
            ResourceKind::Unclassified("unclassified sqs:${stack}-other-delivery".into())
        );
        assert_eq!(
            naming.classify(&Caller::SyncStart, &other),
            ResourceKind::DeliveryQueue
        );
        let secret = Target::Secret(
            "arn:aws:secretsmanager:us-east-1:000000000000:secret:t1/hook-AbCdEf".into(),
        );
        assert_eq!(
            naming.classify(&hook(), &secret),
            ResourceKind::DestinationSecret
        );
        assert!(matches!(
            naming.classify(&Caller::SyncStart, &secret),
            ResourceKind::Unclassified(_)
        ));
    }

    #[test]
    fn tables_buses_and_the_local_notice_queue_are_classified_by_the_stacks_names() {
        let naming = naming();
        assert_eq!(
            naming.classify(&Caller::Finalizer, &Target::Table("t1-runs".into())),
            ResourceKind::RunsTable
        );
        assert_eq!(
            naming.classify(
                &Caller::Finalizer,
                &Target::Table("arn:aws:dynamodb:us-east-1:0:table/t1-failed-rows".into())
            ),
            ResourceKind::FailedRowsTable
        );
        assert_eq!(
            naming.classify(&hook(), &Target::Bus("t1-events".into())),
            ResourceKind::EventBus
        );
        assert_eq!(
            naming.classify(
                &Caller::Finalizer,
                &Target::Queue("http://h/0/t1-finalizer-notices".into())
            ),
            ResourceKind::Unclassified("unclassified sqs:${stack}-finalizer-notices".into())
        );
    }

    #[test]
    fn a_kind_reads_back_from_its_name() {
        for kind in ResourceKind::KNOWN {
            assert_eq!(ResourceKind::parse(kind.as_str()), kind);
        }
        assert_eq!(
            ResourceKind::parse("unclassified sqs:x"),
            ResourceKind::Unclassified("unclassified sqs:x".into())
        );
    }

    #[test]
    fn a_log_keeps_each_call_once_and_its_directory_reads_back_as_the_union() {
        let dir = std::env::temp_dir().join(format!("resync-calls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = CallLog::in_dir(&dir).expect("a log");
        let call = |action: &str| ObservedCall {
            function: "delivery".into(),
            action: action.into(),
            resource: "delivery-queue".into(),
            operation: "sqs.X".into(),
        };
        log.record(call("sqs:SendMessage"));
        log.record(call("sqs:SendMessage"));
        log.record(call("sqs:ReceiveMessage"));
        let lines = std::fs::read_to_string(&log.path).expect("the file");
        assert_eq!(lines.lines().count(), 2);
        let observed = ObservedCalls::from_log_dir(&dir).expect("the union");
        assert_eq!(
            observed.of("delivery").collect::<Vec<_>>(),
            vec![
                ("sqs:ReceiveMessage", ResourceKind::DeliveryQueue),
                ("sqs:SendMessage", ResourceKind::DeliveryQueue)
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
