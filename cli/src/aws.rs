//! SDK configuration for local runs.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

/// An SDK configuration for an emulator at `endpoint` (static test credentials).
pub async fn for_endpoint(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "resync-local"))
        .load()
        .await
}

/// The SDK's standard configuration (`AWS_ENDPOINT_URL`, profiles, ...), with
/// `us-east-1` when no region is configured.
pub async fn from_env() -> SdkConfig {
    let loaded = aws_config::defaults(BehaviorVersion::latest()).load().await;
    if loaded.region().is_some() {
        loaded
    } else {
        aws_config::defaults(BehaviorVersion::latest())
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
