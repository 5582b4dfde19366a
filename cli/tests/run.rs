//! `resync run` as an operator runs it: the built binary against an emulator that
//! outlives it (as `resync emulator`, LocalStack or moto do) — its exit status, what it
//! prints, and what it leaves in the stack. The emulator is the embedded one, or the
//! endpoint in `RESYNC_TEST_ENDPOINT` (e.g. moto's server).

use std::{
    io::BufRead,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, Method, StatusCode},
    response::{IntoResponse, Response},
};
use resync::{
    destination_server::DestinationServer,
    local::{LocalOptions, LocalRuntime},
};
use resync_emulator::Emulator;
use resync_shared::{config::Config, domain::run::RunStatus, SyncId};
use resync_sync_start::SyncStartOutcome;

/// An emulator, a local destination and a configuration file with two syncs, `other`
/// (first in the file) and `customers`, both to that destination.
struct Stack {
    /// The embedded emulator, unless `RESYNC_TEST_ENDPOINT` names another.
    _emulator: Option<Emulator>,
    endpoint: String,
    destination: DestinationServer,
    config_path: PathBuf,
    name: String,
}

impl Stack {
    async fn start() -> Self {
        let (emulator, endpoint) = match std::env::var("RESYNC_TEST_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => (None, endpoint),
            _ => {
                let emulator = Emulator::start().await.expect("the emulator starts");
                let endpoint = emulator.endpoint_url().to_owned();
                (Some(emulator), endpoint)
            }
        };
        let destination = DestinationServer::start(Some("cli-test-secret".into()))
            .await
            .expect("the destination starts");
        let name = format!("cli{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let yaml = format!(
            r#"
destinations:
  - id: hook
    kind: webhook
    batch_size: 10
    timeout_secs: 5
    retry: {{ max_attempts: 2, base_delay_secs: 1, max_delay_secs: 1 }}
    webhook:
      url: {url}
      signing_secret: {{ value: cli-test-secret }}
syncs:
  - id: other
    source: {{ prefix: exports/other/ }}
    primary_key: id
    destination: hook
    schedule: rate(1 hour)
  - id: customers
    source: {{ prefix: exports/customers/ }}
    primary_key: id
    destination: hook
    schedule: rate(1 hour)
"#,
            url = destination.url()
        );
        let config_path = std::env::temp_dir().join(format!("{name}.yaml"));
        std::fs::write(&config_path, yaml).expect("the configuration is written");
        Self {
            _emulator: emulator,
            endpoint,
            destination,
            config_path,
            name,
        }
    }

    fn config(&self) -> Config {
        Config::load(&self.config_path).expect("the test configuration is valid")
    }

    /// The local runtime of the stack, in this process (provisions it).
    async fn runtime(&self) -> LocalRuntime {
        let sdk = resync::aws::for_endpoint(&self.endpoint).await;
        LocalRuntime::new(sdk, self.config(), &self.name, LocalOptions::default())
            .await
            .expect("provisioning")
    }

    /// Exports `rows` rows with keys `{prefix}-000000`.. under the sync's prefix.
    async fn export(&self, runtime: &LocalRuntime, sync: &str, prefix: &str, rows: usize) {
        let body: String = (0..rows)
            .map(|i| format!("{{\"id\":\"{prefix}-{i:06}\",\"n\":{i}}}\n"))
            .collect();
        resync::aws::s3_client(&runtime.sdk)
            .put_object()
            .bucket(&runtime.resources.source_bucket)
            .key(format!("exports/{sync}/batch.jsonl"))
            .body(body.into_bytes().into())
            .send()
            .await
            .expect("export");
    }

    /// `resync <args> --config … --stack …` against `endpoint`.
    fn command(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_resync"));
        command
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .args(["--stack", &self.name])
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("RESYNC_LOG");
        command
    }

    /// Runs `resync <args>` to its end (off the runtime, which serves the emulator).
    async fn resync(&self, endpoint: &str, args: &[&str]) -> Output {
        let mut command = self.command(endpoint, args);
        tokio::task::spawn_blocking(move || command.output().expect("resync runs"))
            .await
            .expect("the command's thread")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// stdout's JSON lines.
fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Issue 12, defect 10: a `resync run` interrupted once its sync-start had opened the
/// run (Ctrl-C, a crash) left the sync open, and every later `resync run` refused it
/// ("still open; not overlapping it") — and exited 0. The next `resync run` drives the
/// open run to its close, as the finalizer's schedule does on AWS, then runs the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_closes_a_run_an_interrupted_runner_left_open() {
    let stack = Stack::start().await;
    let sync = SyncId::parse("customers").unwrap();
    let left_open = {
        let runtime = stack.runtime().await;
        stack.export(&runtime, "customers", "cust", 20).await;
        // The runner that is interrupted: sync-start ran, nothing was delivered.
        match runtime.start(&sync).await.expect("sync-start") {
            SyncStartOutcome::Started { run_id, .. } => run_id,
            other => panic!("expected a start, got {other:?}"),
        }
    };

    let output = stack
        .resync(&stack.endpoint, &["run", "--sync", "customers", "--json"])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);

    let runtime = stack.runtime().await;
    let record = runtime
        .runs()
        .run(&sync, &left_open)
        .await
        .unwrap()
        .expect("the run's record");
    assert_eq!(
        record.status,
        RunStatus::Closed,
        "the run left open is closed; resync said: {stderr}"
    );
    assert_eq!(record.counts.map(|c| c.delivered), Some(20));
    assert_eq!(runtime.runs().state(&sync).await.unwrap().open_run, None);
    assert!(output.status.success(), "{stderr}");
    let lines = json_lines(&output);
    assert_eq!(
        lines.len(),
        2,
        "the closed run, then the new one: {lines:?}"
    );
    assert_eq!(lines[0]["run_id"], left_open.as_str());
    assert_eq!(lines[0]["resumed"], true);
    assert_eq!(lines[0]["delivered"], 20);
    assert_eq!(lines[1]["sync_id"], "customers");
    assert_eq!(
        lines[1]["planned"], 0,
        "nothing new: the export was consumed"
    );
    assert_eq!(stack.destination.stats().keys_received[0].len(), 20);
}

/// Issue 12, defect 10: `resync run` exited 0 when its run failed. A run that cannot
/// run — here the source bucket refuses to be listed — exits non-zero, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_exits_non_zero() {
    let stack = Stack::start().await;
    let proxy = RefusingProxy::start(&stack.endpoint).await;

    let output = stack
        .resync(&proxy.url, &["run", "--sync", "customers"])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        !output.status.success(),
        "a failed run exits non-zero; resync said: {stderr}"
    );
    assert!(stderr.contains("ListObjectsV2"), "{stderr}");
}

/// Issue 12, defect 10: `resync run --watch --sync customers` ran every sync of the
/// file on its schedule, `other` first. It runs only the sync it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_runs_only_the_sync_it_names() {
    let stack = Stack::start().await;
    {
        let runtime = stack.runtime().await;
        stack.export(&runtime, "other", "other", 3).await;
        stack.export(&runtime, "customers", "cust", 5).await;
    }
    let mut command = stack.command(
        &stack.endpoint,
        &["run", "--watch", "--sync", "customers", "--json"],
    );
    let first_run = tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("resync starts");
        let stdout = child.stdout.take().expect("stdout");
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let first = received.recv_timeout(Duration::from_secs(60));
        let _ = child.kill();
        let _ = child.wait();
        first
    })
    .await
    .expect("the watcher's thread")
    .expect("a run within 60 s");
    let first_run: serde_json::Value = serde_json::from_str(&first_run).expect("a JSON line");

    assert_eq!(first_run["planned"], 5, "the first run is the named sync's");
    assert_eq!(first_run["sync_id"], "customers");
    let keys = &stack.destination.stats().keys_received[0];
    assert!(
        keys.iter().all(|key| key.starts_with("cust-")),
        "only the named sync's rows were sent: {keys:?}"
    );
}

/// A forwarding proxy in front of the emulator that refuses S3's ListObjectsV2 with
/// `AccessDenied` — a source a run cannot read — and passes everything else through.
struct RefusingProxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

struct Upstream {
    target: String,
    client: reqwest::Client,
}

impl RefusingProxy {
    async fn start(target: &str) -> Self {
        let upstream = Arc::new(Upstream {
            target: target.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
        });
        let app = axum::Router::new().fallback(forward).with_state(upstream);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, task }
    }
}

impl Drop for RefusingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(upstream): State<Arc<Upstream>>,
    request: axum::extract::Request,
) -> Response {
    let lists_objects = request.method() == Method::GET
        && request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "list-type=2"));
    if lists_objects {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "application/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let answer = upstream
        .client
        .request(parts.method, format!("{}{path}", upstream.target))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let mut headers = answer.headers().clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let body = answer.bytes().await.unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().extend(headers);
    response
}

/// Issue 13, item 8: rejections lost where they came from (a row too large for a
/// message was stored with object "" and line 0; a key too long for the index was a
/// "missing key"), and keyless rejections could be seen only by reading DynamoDB.
/// `resync rejections` lists a run's rejections: exact counts by code and the sample,
/// each with its object, line, code and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_lists_a_runs_rejections_with_where_they_came_from() {
    let stack = Stack::start().await;
    let runtime = stack.runtime().await;
    let sync = SyncId::parse("customers").unwrap();
    let lines = [
        serde_json::json!({"id": "a-1", "n": 1}).to_string(),
        "{\"id\": \"a-2\", ".to_owned(),
        serde_json::json!({"customer": "a-3"}).to_string(),
        serde_json::json!({"id": "x".repeat(1100)}).to_string(),
        serde_json::json!({"id": "a-5", "notes": "n".repeat(300_000)}).to_string(),
        serde_json::json!({"id": "a-6"}).to_string(),
    ];
    resync::aws::s3_client(&runtime.sdk)
        .put_object()
        .bucket(&runtime.resources.source_bucket)
        .key("exports/customers/batch.jsonl")
        .body(format!("{}\n", lines.join("\n")).into_bytes().into())
        .send()
        .await
        .expect("export");
    let run = runtime.run_sync(&sync, &|_| {}).await.expect("the run");
    assert_eq!(run.record.counts.unwrap().rejected, 4);

    let output = stack
        .resync(
            &stack.endpoint,
            &["rejections", "--sync", "customers", "--json"],
        )
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = &json_lines(&output)[0];
    assert_eq!(report["run_id"], run.record.run_id.as_str());
    assert_eq!(report["rejected"], 4);
    assert_eq!(
        report["by_code"],
        serde_json::json!({"malformed_line": 1, "missing_primary_key": 1, "primary_key_too_long": 1, "row_too_large": 1})
    );
    let sample = report["sample"].as_array().unwrap();
    let by_line: std::collections::BTreeMap<u64, &serde_json::Value> = sample
        .iter()
        .map(|s| (s["line"].as_u64().unwrap(), s))
        .collect();
    assert_eq!(by_line.keys().copied().collect::<Vec<_>>(), [2, 3, 4, 5]);
    for entry in sample {
        assert_eq!(entry["object"], "exports/customers/batch.jsonl", "{entry}");
        assert!(!entry["reason"].as_str().unwrap().is_empty());
    }
    assert_eq!(by_line[&4]["code"], "primary_key_too_long");
    assert_eq!(by_line[&4]["indexed"], false);
    assert!(by_line[&4]["reason"]
        .as_str()
        .unwrap()
        .contains("not kept in the failed-row index"));
    assert_eq!(by_line[&5]["code"], "row_too_large");
    assert_eq!(by_line[&5]["key"], "a-5");
    assert_eq!(by_line[&5]["indexed"], true);
    let index = runtime.index().entries(&sync).await.unwrap();
    assert_eq!(index.len(), 1);
    assert!(
        index[0].error_message.contains("batch.jsonl line 5"),
        "{}",
        index[0].error_message
    );

    let text = stack
        .resync(&stack.endpoint, &["rejections", "--sync", "customers"])
        .await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("4 rejected"), "{text}");
    assert!(
        text.contains("row_too_large exports/customers/batch.jsonl line 5"),
        "{text}"
    );
}

/// Issue 13, item 7: an object resync could not read whole stays pending until it is
/// read or an operator skips it explicitly. `resync objects` lists it; `resync
/// skip-object` skips it, recording who (the OS user against an emulator, or `--by`),
/// when and why; the next run neither reads it nor counts it pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_object_records_who_skipped_a_pending_object() {
    let stack = Stack::start().await;
    let runtime = stack.runtime().await;
    let sync = SyncId::parse("customers").unwrap();
    let object = "exports/customers/unload.parquet";
    resync::aws::s3_client(&runtime.sdk)
        .put_object()
        .bucket(&runtime.resources.source_bucket)
        .key(object)
        .body(b"PAR1".to_vec().into())
        .send()
        .await
        .expect("export");
    let run = runtime.run_sync(&sync, &|_| {}).await.expect("the run");
    assert_eq!(run.record.pending_objects, 1);

    let listed = stack
        .resync(&stack.endpoint, &["objects", "--sync", "customers"])
        .await;
    let listed = json_lines(&listed);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["object"], object);
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(listed[0]["code"], "unknown_format");

    let skipped = stack
        .resync(
            &stack.endpoint,
            &[
                "skip-object",
                "--sync",
                "customers",
                "--object",
                object,
                "--reason",
                "not an export",
            ],
        )
        .await;
    assert!(
        skipped.status.success(),
        "{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
    let again = stack
        .resync(
            &stack.endpoint,
            &[
                "skip-object",
                "--sync",
                "customers",
                "--object",
                "exports/customers/none.jsonl",
                "--reason",
                "x",
            ],
        )
        .await;
    assert!(!again.status.success(), "only a pending object is skipped");

    let listed = stack
        .resync(&stack.endpoint, &["objects", "--sync", "customers"])
        .await;
    let listed = json_lines(&listed);
    assert_eq!(listed[0]["status"], "skipped");
    assert_eq!(listed[0]["skip_reason"], "not an export");
    let by = listed[0]["skipped_by"].as_str().unwrap();
    assert!(by.starts_with("os-user:") || by == "unknown", "{by}");
    assert!(listed[0]["skipped_at"].is_string());
    let next = runtime.run_sync(&sync, &|_| {}).await.expect("the run");
    assert_eq!(next.record.pending_objects, 0);
    assert_eq!(next.record.counts.unwrap().planned, 0);
}
