//! Adapters over the AWS SDK. Each wraps the clients one capability needs, so a
//! function's dependencies mirror its IAM policy.

pub mod breaker;
pub mod budget;
pub mod index;
pub mod item;
pub mod queue;
pub mod report;
pub mod runs;
pub mod s3_source;
pub mod sdk;

pub use sdk::{https_client, lambda_sdk_config};

/// An AWS call failed; the SDK error is kept as the source so throttling, validation
/// and conditional failures stay distinguishable.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct AwsError {
    /// The SDK operation, e.g. `DynamoDB.Query`.
    pub operation: &'static str,
    /// The SDK's own description, with its error code.
    pub message: String,
    /// The SDK error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl AwsError {
    /// Wraps an SDK error.
    pub fn sdk<E>(operation: &'static str, err: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self {
            operation,
            message: aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
            source: Some(Box::new(err)),
        }
    }

    /// An error found in a response that the SDK reported as a success.
    pub fn response(operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            operation,
            message: message.into(),
            source: None,
        }
    }
}
