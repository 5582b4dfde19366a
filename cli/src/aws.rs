//! SDK configuration for local runs, the request counter of the benchmark, and
//! ([`calls`]) the recorder of what each function's calls need from IAM.

pub mod calls;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use resync_shared::aws::https_client;

/// An SDK configuration for an emulator at `endpoint` (static test credentials).
pub async fn for_endpoint(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "resync-local"))
        .load()
        .await
}

/// The SDK's standard configuration (`AWS_ENDPOINT_URL`, profiles, SSO, ...), with
/// `us-east-1` when no region is configured. The credential providers that call AWS
/// (SSO, STS) use the same HTTPS client as the service clients.
pub async fn from_env() -> SdkConfig {
    let loaded = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .load()
        .await;
    if loaded.region().is_some() {
        loaded
    } else {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .region(Region::new("us-east-1"))
            .load()
            .await
    }
}

/// An S3 client that addresses buckets by path when talking to an emulator.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build(),
    )
}

/// Counts every AWS request made through an SDK configuration, by service and
/// operation, with DynamoDB capacity units derived from item sizes (1 write unit per
/// started KB written, 2 per transactional write; 1 read unit per started 4 KB read,
/// strongly consistent). Emulators return no `ConsumedCapacity`, so the sizes are taken
/// from the request and response bodies the SDK sends and receives.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    inner: std::sync::Arc<std::sync::Mutex<RequestCounts>>,
}

/// What a [`RequestCounter`] saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RequestCounts {
    /// Requests by `service.operation` (e.g. `sqs.SendMessageBatch`, `s3.GET`).
    pub by_operation: std::collections::BTreeMap<String, u64>,
    /// DynamoDB write units.
    pub dynamodb_write_units: u64,
    /// DynamoDB read units.
    pub dynamodb_read_units: u64,
    /// SQS requests as AWS bills them: each started 64 KiB of a request's payload, or of
    /// its answer's (a receive), is one request. Counted from the HTTP bodies, whose
    /// envelope makes it an upper bound.
    pub sqs_billed_requests: u64,
}

impl RequestCounts {
    /// Requests to one service.
    pub fn service(&self, service: &str) -> u64 {
        let prefix = format!("{service}.");
        self.by_operation
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

impl RequestCounter {
    /// A copy of `sdk` whose clients all report to this counter (over plain HTTP when
    /// `sdk` has no HTTP client of its own: meant for loopback emulators).
    pub fn instrument(&self, sdk: &SdkConfig) -> SdkConfig {
        // The benchmark talks plain HTTP to the loopback emulator.
        let inner = sdk
            .http_client()
            .unwrap_or_else(|| aws_smithy_http_client::Builder::new().build_http());
        let counter = self.clone();
        let client =
            aws_smithy_runtime_api::client::http::http_client_fn(move |settings, components| {
                use aws_smithy_runtime_api::client::http::HttpClient as _;
                let connector = inner.http_connector(settings, components);
                aws_smithy_runtime_api::client::http::SharedHttpConnector::new(CountingConnector {
                    inner: connector,
                    counter: counter.clone(),
                })
            });
        sdk.to_builder().http_client(client).build()
    }

    /// The counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        self.inner.lock().expect("counter").clone()
    }

    /// Starts counting from zero.
    pub fn reset(&self) {
        *self.inner.lock().expect("counter") = RequestCounts::default();
    }
}

#[derive(Debug)]
struct CountingConnector {
    inner: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    counter: RequestCounter,
}

fn dynamodb_write_units(operation: &str, body: &serde_json::Value) -> u64 {
    let units = |item: &serde_json::Value| (item.to_string().len() as u64).div_ceil(1024).max(1);
    match operation {
        "PutItem" => units(&body["Item"]),
        // Run and state items are far below 1 KB.
        "UpdateItem" | "DeleteItem" => 1,
        "BatchWriteItem" => body["RequestItems"]
            .as_object()
            .map(|tables| {
                tables
                    .values()
                    .flat_map(|requests| requests.as_array().cloned().unwrap_or_default())
                    .map(|request| match request.get("PutRequest") {
                        Some(put) => units(&put["Item"]),
                        None => 1,
                    })
                    .sum()
            })
            .unwrap_or(0),
        "TransactWriteItems" => {
            2 * body["TransactItems"]
                .as_array()
                .map_or(0, |a| a.len() as u64)
        }
        _ => 0,
    }
}

impl aws_smithy_runtime_api::client::http::HttpConnector for CountingConnector {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        let (service, operation) = match request.headers().get("x-amz-target") {
            Some(target) => {
                let (prefix, operation) = target.split_once('.').unwrap_or((target, ""));
                let service = match prefix {
                    "AmazonSQS" => "sqs",
                    p if p.starts_with("DynamoDB") => "dynamodb",
                    "AWSEvents" => "events",
                    p if p.starts_with("secretsmanager") => "secretsmanager",
                    other => other,
                };
                (service.to_owned(), operation.to_owned())
            }
            None => {
                let body = request.body().bytes().unwrap_or_default();
                if body.starts_with(b"Action=") || request.uri().contains("Action=") {
                    ("sns".to_owned(), "Publish".to_owned())
                } else {
                    ("s3".to_owned(), request.method().to_owned())
                }
            }
        };
        let write_units = if service == "dynamodb" {
            request
                .body()
                .bytes()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .map_or(0, |body| dynamodb_write_units(&operation, &body))
        } else {
            0
        };
        {
            let mut counts = self.counter.inner.lock().expect("counter");
            *counts
                .by_operation
                .entry(format!("{service}.{operation}"))
                .or_default() += 1;
            counts.dynamodb_write_units += write_units;
        }
        let counter = self.counter.clone();
        let reads =
            service == "dynamodb" && matches!(operation.as_str(), "GetItem" | "Query" | "Scan");
        const SQS_CHUNK: u64 = 64 * 1024;
        let sqs_chunks = (service == "sqs").then(|| {
            (request.body().bytes().map_or(0, |b| b.len()) as u64)
                .div_ceil(SQS_CHUNK)
                .max(1)
        });
        let future = self.inner.call(request);
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(async move {
            let response = future.await?;
            if let Some(sent) = sqs_chunks {
                let answered = response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.parse::<u64>().ok())
                    .or_else(|| response.body().bytes().map(|b| b.len() as u64))
                    .unwrap_or(0)
                    .div_ceil(SQS_CHUNK);
                counter.inner.lock().expect("counter").sqs_billed_requests += sent.max(answered);
            }
            if reads {
                let length = response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.parse::<u64>().ok())
                    .or_else(|| response.body().bytes().map(|b| b.len() as u64))
                    .unwrap_or(0);
                counter.inner.lock().expect("counter").dynamodb_read_units +=
                    length.div_ceil(4096).max(1);
            }
            Ok(response)
        })
    }
}
