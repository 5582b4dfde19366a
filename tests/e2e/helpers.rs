//! The test environment: an AWS endpoint (the embedded emulator, or the one in
//! `RESYNC_TEST_ENDPOINT`, e.g. moto's server), uniquely named resources, and a local
//! webhook destination on port 0.

use std::{collections::HashSet, io::Write};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use resync::{
    destination_server::DestinationServer,
    local::{LocalOptions, LocalRuntime},
};
use resync_emulator::Emulator;
use resync_shared::{
    aws::index::IndexEntry, config::Config, domain::outcome::ErrorClass, RunId, SyncId,
};
use resync_sync_start::{SyncStartDetail, SyncStartError, SyncStartOutcome};
use resync_tests::{
    hubspot::HubspotServer,
    salesforce::{OrgAuth, SalesforceServer},
};

/// The Salesforce app's consumer key in the tests.
pub const SF_CLIENT_ID: &str = "3MVG9resyncTestConsumerKey";
/// The Salesforce integration user in the tests.
pub const SF_USERNAME: &str = "integration@resync.example.com";
/// The HubSpot private app token in the tests.
pub const HUBSPOT_TOKEN: &str = "pat-na1-resync-test-token";
/// The test app's private key (JWT bearer flow) and its public half (the org's copy).
pub const SF_PRIVATE_KEY: &str = include_str!("../fixtures/salesforce-test-key.pem");
const SF_PUBLIC_KEY: &str = include_str!("../fixtures/salesforce-test-key.pub.pem");

/// Which destination a test environment syncs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// The local webhook destination.
    Webhook,
    /// The local Salesforce org, authenticated with the JWT bearer flow (private key in
    /// Secrets Manager) or the client credentials flow.
    Salesforce {
        jwt: bool,
        /// Order rows by the `account` column (mapped to `AccountId`).
        parent_field: bool,
    },
    /// The local HubSpot portal.
    Hubspot,
}

/// Row counts: the embedded emulator takes the full scenario, a remote emulator a
/// smaller one (moto's SQS slows down with queue length).
pub fn scaled(embedded: usize, remote: usize) -> usize {
    if remote_endpoint().is_some() {
        remote
    } else {
        embedded
    }
}

/// Whether the suite runs against a remote endpoint (e.g. moto's server).
pub fn remote() -> bool {
    remote_endpoint().is_some()
}

fn remote_endpoint() -> Option<String> {
    std::env::var("RESYNC_TEST_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
}

/// Options for the vendor scenarios (with `concurrency: 1`): a batching window long
/// enough to fill an invocation, so every destination call is as full as it can be.
/// moto's ReceiveMessage costs ~1 ms per queued message, so there it takes seconds to
/// gather a few hundred messages; the exact-count scenarios use ≤ 200 rows there.
pub fn full_batches() -> LocalOptions {
    LocalOptions {
        batching_window: std::time::Duration::from_secs(if remote() { 30 } else { 3 }),
        // moto's ReceiveMessage is not atomic: two receives in flight at once can both
        // return the same message (seen: a batch of 200 holding one row twice, so 199
        // distinct rows and a third call). SQS is at-least-once too, but these tests
        // count calls exactly, so on moto a poller keeps one receive in flight.
        receives_in_flight: if remote() { 1 } else { 4 },
        ..LocalOptions::default()
    }
}

/// Settings a test may change.
pub struct EnvSettings {
    pub max_attempts: u32,
    pub batch_size: usize,
    pub options: LocalOptions,
    /// Keep the webhook's signing secret in Secrets Manager instead of the file.
    pub secret_in_secrets_manager: bool,
    /// The destination.
    pub vendor: Vendor,
    /// Delivery invocations at once.
    pub concurrency: u32,
    /// A webhook URL other than the local destination's (e.g. the chaos destination's).
    pub webhook_url: Option<String>,
    /// The sync's `run_deadline_secs` (`None`: the default).
    pub run_deadline_secs: Option<u64>,
    /// More fields of the destination's `retry:` (e.g. `", pause_secs: 1"`).
    pub retry_extra: &'static str,
    /// The destination's backoff: `base_delay_secs` and `max_delay_secs`.
    pub backoff_secs: (u64, u64),
    /// The destination's `packing` (default: `RESYNC_TEST_PACKING=1` turns it on for
    /// the whole suite).
    pub packing: bool,
}

/// Whether the suite runs with packed rows by default.
pub fn packing_by_default() -> bool {
    std::env::var("RESYNC_TEST_PACKING").is_ok_and(|v| v == "1")
}

impl Default for EnvSettings {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            batch_size: 100,
            options: LocalOptions::default(),
            secret_in_secrets_manager: false,
            vendor: Vendor::Webhook,
            concurrency: 2,
            webhook_url: None,
            run_deadline_secs: None,
            retry_extra: "",
            backoff_secs: (1, 2),
            packing: packing_by_default(),
        }
    }
}

pub struct TestEnv {
    pub runtime: LocalRuntime,
    pub destination: DestinationServer,
    pub salesforce: Option<SalesforceServer>,
    pub hubspot: Option<HubspotServer>,
    pub s3: aws_sdk_s3::Client,
    pub sync: SyncId,
    /// The AWS requests made so far, by operation.
    pub requests: resync::aws::RequestCounter,
    _emulator: Option<Emulator>,
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::with(EnvSettings::default()).await
    }

    pub async fn with(settings: EnvSettings) -> Self {
        // RESYNC_TEST_LOG=<filter> shows the functions' logs (stderr, captured per test).
        if let Ok(filter) = std::env::var("RESYNC_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let (emulator, endpoint) = match remote_endpoint() {
            Some(endpoint) => (None, endpoint),
            None => {
                let emulator = Emulator::start().await.expect("emulator starts");
                let endpoint = emulator.endpoint_url().to_owned();
                (Some(emulator), endpoint)
            }
        };
        // Every AWS request of the functions and of the test's setup, counted.
        let requests = resync::aws::RequestCounter::default();
        let sdk = requests.instrument(&resync::aws::for_endpoint(&endpoint).await);
        let destination = DestinationServer::start(Some("test-secret".into()))
            .await
            .expect("destination starts");
        let stack = format!("t{}", &uuid_like()[..10]);
        let secret = if settings.secret_in_secrets_manager {
            let created = aws_sdk_secretsmanager::Client::new(&sdk)
                .create_secret()
                .name(format!("{stack}/hook-signing-secret"))
                .secret_string("test-secret")
                .send()
                .await
                .expect("secret created");
            format!("{{ secret_id: \"{}\" }}", created.arn.expect("an ARN"))
        } else {
            "{ value: test-secret }".to_owned()
        };
        let retry = format!(
            "{{ max_attempts: {}, base_delay_secs: {}, max_delay_secs: {}{} }}",
            settings.max_attempts,
            settings.backoff_secs.0,
            settings.backoff_secs.1,
            settings.retry_extra
        );
        let concurrency = settings.concurrency;
        let packing = settings.packing;
        let mut salesforce = None;
        let mut hubspot = None;
        let destination_yaml = match settings.vendor {
            Vendor::Webhook => format!(
                r#"
  - id: hook
    kind: webhook
    batch_size: {batch_size}
    concurrency: {concurrency}
    timeout_secs: 10
    packing: {packing}
    retry: {retry}
    webhook:
      url: {url}
      signing_secret: {secret}"#,
                batch_size = settings.batch_size,
                url = settings
                    .webhook_url
                    .clone()
                    .unwrap_or_else(|| destination.url())
            ),
            Vendor::Salesforce { jwt, parent_field } => {
                let org = SalesforceServer::start(
                    OrgAuth {
                        client_id: SF_CLIENT_ID.into(),
                        client_secret: "consumer-secret".into(),
                        username: SF_USERNAME.into(),
                        public_key_pem: Some(SF_PUBLIC_KEY.into()),
                        audience: "https://login.salesforce.com".into(),
                    },
                    "Contact",
                    "External_Id__c",
                )
                .await
                .expect("the Salesforce org starts");
                let auth = if jwt {
                    let created = aws_sdk_secretsmanager::Client::new(&sdk)
                        .create_secret()
                        .name(format!("{stack}/salesforce-jwt-key"))
                        .secret_string(SF_PRIVATE_KEY)
                        .send()
                        .await
                        .expect("secret created");
                    format!(
                        "{{ flow: jwt_bearer, client_id: {SF_CLIENT_ID}, username: \"{SF_USERNAME}\", audience: \"https://login.salesforce.com\", private_key: {{ secret_id: \"{}\" }} }}",
                        created.arn.expect("an ARN")
                    )
                } else {
                    format!("{{ flow: client_credentials, client_id: {SF_CLIENT_ID}, client_secret: {{ value: consumer-secret }} }}")
                };
                let parent = if parent_field {
                    "\n      parent_field: AccountId"
                } else {
                    ""
                };
                let yaml = format!(
                    r#"
  - id: hook
    kind: salesforce
    concurrency: {concurrency}
    timeout_secs: 10
    packing: {packing}
    retry: {retry}
    salesforce:
      login_url: {url}
      sobject: Contact
      external_id_field: External_Id__c
      fields: {{ email: Email, version: Resync_Version__c, account: AccountId }}{parent}
      auth: {auth}"#,
                    url = org.url()
                );
                salesforce = Some(org);
                yaml
            }
            Vendor::Hubspot => {
                let portal = HubspotServer::start(HUBSPOT_TOKEN, "contacts", "resync_id")
                    .await
                    .expect("the HubSpot portal starts");
                let yaml = format!(
                    r#"
  - id: hook
    kind: hubspot
    concurrency: {concurrency}
    timeout_secs: 10
    packing: {packing}
    retry: {retry}
    hubspot:
      base_url: {url}
      object_type: contacts
      id_property: resync_id
      fields: {{ email: email, version: resync_version }}
      access_token: {{ value: {HUBSPOT_TOKEN} }}"#,
                    url = portal.url()
                );
                hubspot = Some(portal);
                yaml
            }
        };
        let deadline = settings
            .run_deadline_secs
            .map(|secs| format!("    run_deadline_secs: {secs}\n"))
            .unwrap_or_default();
        let yaml = format!(
            r#"
destinations:{destination_yaml}
syncs:
  - id: customers
    source: {{ prefix: exports/customers/ }}
    primary_key: id
    destination: hook
    schedule: rate(1 hour)
{deadline}"#
        );
        let config = Config::from_yaml(&yaml).expect("test config is valid");
        let runtime = LocalRuntime::new(sdk.clone(), config, &stack, settings.options)
            .await
            .expect("provisioning");
        Self {
            s3: resync::aws::s3_client(&sdk),
            runtime,
            destination,
            salesforce,
            hubspot,
            sync: SyncId::parse("customers").unwrap(),
            requests,
            _emulator: emulator,
        }
    }

    /// Exports an object under the sync's prefix.
    pub async fn export(&self, name: &str, body: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(&self.runtime.resources.source_bucket)
            .key(format!("exports/customers/{name}"))
            .body(body.into())
            .send()
            .await
            .expect("export");
    }

    /// Exports rows `range` as JSON Lines (gzip).
    pub async fn export_rows(&self, name: &str, range: std::ops::Range<usize>) {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in range {
            writeln!(encoder, "{}", row(i, "v1")).unwrap();
        }
        self.export(name, encoder.finish().unwrap()).await;
    }

    /// The embedded emulator's fault plan; `None` on a remote endpoint, which cannot
    /// inject faults.
    pub fn faults(&self) -> Option<&resync_emulator::Faults> {
        self._emulator.as_ref().map(Emulator::faults)
    }

    /// The embedded emulator's in-flight accounting of SQS; `None` on a remote
    /// endpoint.
    pub fn sqs_in_flight(&self) -> Option<&resync_emulator::InFlight> {
        self._emulator.as_ref().map(Emulator::sqs_in_flight)
    }

    pub async fn index(&self) -> Vec<IndexEntry> {
        self.runtime
            .index()
            .entries(&self.sync)
            .await
            .expect("index")
    }

    pub async fn run(&self) -> resync::local::LocalRun {
        self.runtime
            .run_sync(&self.sync, &|_| {})
            .await
            .expect("the run closes")
    }
}

/// One scheduling event of the sync as EventBridge delivers it (the fixture's shape)
/// with its own id and time, so a test can deliver it twice (EventBridge and Lambda's
/// async invocations are at-least-once) and knows the run it names before sync-start
/// runs.
pub struct ScheduleEvent {
    pub event: EventBridgeEvent<SyncStartDetail>,
    /// The run the event names (`RunId::from_event`, as sync-start derives it).
    pub run_id: RunId,
}

impl ScheduleEvent {
    pub fn new() -> Self {
        let id = format!("evt-{}", uuid_like());
        let at = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap();
        let time = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let event = serde_json::from_value(serde_json::json!({
            "version": "0",
            "id": id,
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "000000000000",
            "time": time,
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:000000000000:rule/resync-customers"],
            "detail": { "sync_id": "customers" }
        }))
        .unwrap();
        Self {
            event,
            run_id: RunId::from_event(at, &id),
        }
    }
}

impl TestEnv {
    /// Delivers a scheduling event to sync-start (a fresh invocation each time).
    pub async fn fire(&self, event: &ScheduleEvent) -> Result<SyncStartOutcome, SyncStartError> {
        resync_sync_start::handler(
            &self.runtime.sync_start,
            resync::local::lambda_invocation(event.event.clone()),
        )
        .await
    }

    /// Moves time attributes of a runs-table item `ago` into the past, as if their
    /// writer had written them then: how a test ages a planning or a lock instead of
    /// waiting for it. The item must exist.
    async fn backdate(&self, sk: &str, attributes: &[&str], ago: std::time::Duration) {
        let then = time::OffsetDateTime::now_utc() - ago;
        let then = then
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let mut update = aws_sdk_dynamodb::Client::new(&self.runtime.sdk)
            .update_item()
            .table_name(&self.runtime.resources.runs_table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("sync#{}", self.sync)),
            )
            .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(sk.into()))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":then", aws_sdk_dynamodb::types::AttributeValue::S(then));
        let mut sets = Vec::new();
        for (i, attribute) in attributes.iter().enumerate() {
            update = update.expression_attribute_names(format!("#a{i}"), *attribute);
            sets.push(format!("#a{i} = :then"));
        }
        update
            .update_expression(format!("SET {}", sets.join(", ")))
            .send()
            .await
            .expect("backdated");
    }

    /// Ages a run's planning (its start and its current attempt's start) by `ago`.
    pub async fn backdate_planning(&self, run: &RunId, ago: std::time::Duration) {
        self.backdate(
            &format!("run#{run}"),
            &["started_at", "planning_since"],
            ago,
        )
        .await;
    }

    /// Ages the sync's lock (when it was taken) by `ago`.
    pub async fn backdate_lock(&self, ago: std::time::Duration) {
        self.backdate("state", &["open_since"], ago).await;
    }
}

/// Longer than a sync-start invocation can live (Lambda's limit is 15 minutes).
pub const LONGER_THAN_AN_INVOCATION: std::time::Duration = std::time::Duration::from_secs(17 * 60);

pub fn key(i: usize) -> String {
    format!("cust-{i:06}")
}

pub fn row(i: usize, version: &str) -> serde_json::Value {
    serde_json::json!({"id": key(i), "email": format!("c{i}@example.com"), "version": version})
}

/// The failed-row index after a run whose `expected` rows stayed locked: exactly those
/// rows, each with the lock error, retryable, at the threshold of 5 attempts.
#[track_caller]
pub fn assert_locked_at_the_threshold(index: &[IndexEntry], expected: &HashSet<String>) {
    assert_eq!(
        index
            .iter()
            .map(|e| e.key.to_string())
            .collect::<HashSet<_>>(),
        *expected
    );
    for entry in index {
        assert_eq!(entry.error_code, "UNABLE_TO_LOCK_ROW");
        assert_eq!(entry.error_class, ErrorClass::Retryable.as_str());
        assert_eq!(entry.attempts, 5, "threshold reached, not exceeded (I4)");
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let counter = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "{:x}",
        (nanos as u64)
            ^ (u64::from(std::process::id()) << 32)
            ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
    .chars()
    .chain(std::iter::repeat('0'))
    .take(16)
    .collect()
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Queues subscribed to the stack's run-events bus (every `resync` event) and alert
/// topic (raw SNS delivery), to see what operators would receive.
pub struct Sinks {
    sqs: aws_sdk_sqs::Client,
    pub events_url: String,
    pub alerts_url: String,
}

impl Sinks {
    /// Bodies of up to `want` messages, waiting for them up to 20 seconds.
    pub async fn receive(&self, url: &str, want: usize) -> Vec<String> {
        let mut bodies = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while bodies.len() < want && std::time::Instant::now() < deadline {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            bodies.extend(
                out.messages
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| m.body),
            );
        }
        bodies
    }
}

impl Sinks {
    /// The first event (parsed) on `url` that `wanted` accepts, waiting up to 20 seconds.
    pub async fn wait_for(
        &self,
        url: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            for message in out.messages.unwrap_or_default() {
                let Some(event) = message
                    .body
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                else {
                    continue;
                };
                if let Some(receipt) = message.receipt_handle {
                    self.sqs
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .unwrap();
                }
                if wanted(&event) {
                    return Some(event);
                }
            }
        }
        None
    }
}

impl TestEnv {
    pub async fn sinks(&self) -> Sinks {
        let sdk = &self.runtime.sdk;
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let stack = &self.runtime.resources.stack;
        let (events_url, events_arn) = queue_with_arn(&sqs, &format!("{stack}-events-sink")).await;
        let (alerts_url, alerts_arn) = queue_with_arn(&sqs, &format!("{stack}-alerts-sink")).await;
        let events = aws_sdk_eventbridge::Client::new(sdk);
        let bus = &self.runtime.resources.event_bus;
        events
            .put_rule()
            .name(format!("{stack}-all"))
            .event_bus_name(bus)
            .event_pattern(r#"{"source":["resync"]}"#)
            .send()
            .await
            .unwrap();
        events
            .put_targets()
            .rule(format!("{stack}-all"))
            .event_bus_name(bus)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("sink")
                    .arn(&events_arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        aws_sdk_sns::Client::new(sdk)
            .subscribe()
            .topic_arn(self.runtime.resources.alert_topic_arn.clone().unwrap())
            .protocol("sqs")
            .endpoint(&alerts_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .unwrap();
        Sinks {
            sqs,
            events_url,
            alerts_url,
        }
    }
}

async fn queue_with_arn(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .unwrap();
    (url, arn)
}

impl TestEnv {
    /// Starts a run with no pollers running (nothing is delivered until the test says)
    /// and returns its id.
    pub async fn start_run(&self) -> resync_shared::RunId {
        match self.runtime.start(&self.sync).await.unwrap() {
            resync_sync_start::SyncStartOutcome::Started { run_id, .. } => run_id,
            other => panic!("expected a started run, got {other:?}"),
        }
    }

    /// Receives the messages holding `count` rows (one each, or packed in segments)
    /// from the sync's delivery queue and hands them to one delivery invocation, as an
    /// event source mapping with a large batch does; deletes them when the invocation
    /// succeeded (as Lambda does). Panics with the invocation's error otherwise, or
    /// when a minute passes without a message (moto's receives are slow, so the bound
    /// is on progress, not on the whole).
    ///
    /// The messages are received hidden for 15 minutes, not the queue's own timeout: an
    /// event source mapping gathers its batch within its batching window, while this
    /// gathers thousands one receive at a time, and on a busy machine the first would
    /// come back before the last was received — the same message twice in one batch,
    /// its second copy a receive past the threshold (CI, stop 19).
    pub async fn deliver_in_one_invocation(&self, count: usize) {
        let delivery = self.runtime.deliveries.values().next().unwrap()[0].clone();
        let sqs = aws_sdk_sqs::Client::new(&self.runtime.sdk);
        let mut messages: Vec<aws_sdk_sqs::types::Message> = Vec::new();
        let mut rows = 0;
        let mut last_message = std::time::Instant::now();
        while rows < count {
            assert!(
                last_message.elapsed() < std::time::Duration::from_secs(60),
                "{rows} of {count} rows came, then nothing for a minute"
            );
            let received = sqs
                .receive_message()
                .queue_url(delivery.queue.url())
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(900)
                .message_system_attribute_names(
                    aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
                )
                .send()
                .await
                .unwrap();
            for message in received.messages.unwrap_or_default() {
                rows += rows_in(&message);
                messages.push(message);
                last_message = std::time::Instant::now();
            }
        }
        assert_eq!(rows, count, "more rows came than were asked for");
        let ids: std::collections::HashSet<_> =
            messages.iter().map(|m| m.message_id.clone()).collect();
        assert_eq!(ids.len(), messages.len(), "a message was received twice");
        let receipts: Vec<String> = messages
            .iter()
            .filter_map(|m| m.receipt_handle.clone())
            .collect();
        let event = resync::local::sqs_event(messages, "arn:aws:sqs:us-east-1:000000000000:q");
        let response = resync_delivery::handler(&delivery, resync::local::lambda_invocation(event))
            .await
            .unwrap_or_else(|err| panic!("the invocation failed as a whole: {err}"));
        assert!(response.batch_item_failures.is_empty());
        delivery.queue.delete(&receipts).await.unwrap();
    }
}

/// The rows a delivery queue's message holds: a segment's, or one (a row's message, or
/// one that is not resync's).
fn rows_in(message: &aws_sdk_sqs::types::Message) -> usize {
    resync_shared::domain::message::QueueMessage::from_body(message.body().unwrap_or_default())
        .map_or(1, |parsed| parsed.into_rows().len())
}

/// Receives messages from `queue` (as it hides them) until they hold at least `rows`
/// rows, one each or packed in segments, and at most 10 messages; panics when a minute
/// passes without a message.
pub async fn receive_rows(
    queue: &resync_shared::aws::queue::WorkQueue,
    rows: usize,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut messages: Vec<aws_sdk_sqs::types::Message> = Vec::new();
    let mut held = 0;
    let mut last_message = std::time::Instant::now();
    while held < rows && messages.len() < 10 {
        assert!(
            last_message.elapsed() < std::time::Duration::from_secs(60),
            "{held} of {rows} rows came, then nothing for a minute"
        );
        let want = 10 - messages.len() as i32;
        for message in queue
            .receive(want, std::time::Duration::from_secs(1))
            .await
            .unwrap()
        {
            held += rows_in(&message);
            messages.push(message);
            last_message = std::time::Instant::now();
        }
    }
    messages
}

/// Runs a finalizer's handler as its schedule would (every sync, or just `sync`).
pub async fn finalize_with(
    finalizer: &resync_finalizer::Finalizer,
    sync: Option<&SyncId>,
) -> Result<resync_finalizer::FinalizerOutput, resync_finalizer::FinalizerError> {
    let mut event: aws_lambda_events::eventbridge::EventBridgeEvent<
        resync_finalizer::FinalizerDetail,
    > = Default::default();
    event.detail = resync_finalizer::FinalizerDetail {
        sync_id: sync.map(ToString::to_string),
    };
    resync_finalizer::handler(finalizer, resync::local::lambda_invocation(event)).await
}

/// What a run's partition of the runs table holds of its rejections, read raw: the
/// entries of its `reject#` chunks (keyed rejections, for the index) and of its
/// `sample#` items (the detailed sample), whatever their planning attempt.
#[derive(Debug, Default)]
pub struct StoredRejections {
    pub chunk_entries: Vec<serde_json::Value>,
    pub sample_entries: Vec<serde_json::Value>,
}

impl TestEnv {
    pub async fn stored_rejections(&self, run: &RunId) -> StoredRejections {
        use aws_sdk_dynamodb::types::AttributeValue;
        let mut stored = StoredRejections::default();
        let mut pages = aws_sdk_dynamodb::Client::new(&self.runtime.sdk)
            .query()
            .table_name(&self.runtime.resources.runs_table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("run#{run}")))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.expect("the run's items");
            let entries = |name: &str| -> Vec<serde_json::Value> {
                item.get(name)
                    .and_then(|v| v.as_s().ok())
                    .map(|body| serde_json::from_str(body).expect("a JSON array"))
                    .unwrap_or_default()
            };
            stored.chunk_entries.extend(entries("rejections"));
            stored.sample_entries.extend(entries("sample"));
        }
        stored
    }
}
