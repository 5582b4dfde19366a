//! What the suites share: an SDK configuration for an emulator, the S3 client, SDK
//! errors with their causes, polling, and receiving from a queue (SQS itself, and the
//! queues SNS and EventBridge deliver to).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use resync_emulator::Emulator;

pub async fn sdk_config(emu: &Emulator) -> SdkConfig {
    // Plain HTTP to the loopback emulator; the SDK crates build no default client.
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(emu.endpoint_url())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .load()
        .await
}

pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
}

/// An SDK error with its whole source chain (the SDK's `Display` says only "service error").
pub fn explain<E: std::error::Error + Send + Sync + 'static>(error: E) -> anyhow::Error {
    anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(&error))
}

/// Poll `check` until it yields `Some`, or fail after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, wait: i32) -> Result<Vec<Message>> {
    Ok(sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .map_err(explain)?
        .messages
        .unwrap_or_default())
}

pub fn body(message: &Message) -> &str {
    message.body().unwrap_or_default()
}

/// Receive from `url` until a message whose body is `wanted` arrives.
pub async fn receive_body(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    wanted: &str,
    deadline: Duration,
) -> Result<Message> {
    eventually(&format!("message {wanted}"), deadline, || async {
        let messages = receive(sqs, url, 1).await?;
        Ok(messages.into_iter().find(|m| body(m) == wanted))
    })
    .await
}
