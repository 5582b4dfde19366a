//! In-process delivery from SNS subscriptions and EventBridge targets into the
//! emulator's own SQS provider, so `sqs` subscriptions and targets work end to end.

use std::sync::Arc;

use async_trait::async_trait;
use rustack_events_core::delivery::{DeliveryError as EventsDeliveryError, Target, TargetDelivery};
use rustack_sns_core::publisher::{DeliveryError as SnsDeliveryError, SqsPublisher};
use rustack_sqs_core::provider::RustackSqs;
use rustack_sqs_model::input::SendMessageInput;

/// Sends SNS and EventBridge deliveries to queues of the local SQS provider.
#[derive(Debug, Clone)]
pub(crate) struct SqsBridge {
    sqs: Arc<RustackSqs>,
}

impl SqsBridge {
    pub(crate) fn new(sqs: Arc<RustackSqs>) -> Self {
        Self { sqs }
    }

    /// Queue URL for a local-account, local-region SQS ARN.
    fn url(&self, arn: &str) -> Result<String, String> {
        self.sqs.queue_url_for_arn(arn).map_err(|e| e.to_string())
    }

    async fn send(
        &self,
        arn: &str,
        body: &str,
        group: Option<&str>,
        dedup: Option<&str>,
    ) -> Result<(), String> {
        let queue_url = self.url(arn)?;
        self.sqs
            .send_message(SendMessageInput {
                queue_url,
                message_body: body.to_owned(),
                message_group_id: group.map(str::to_owned),
                message_deduplication_id: dedup.map(str::to_owned),
                ..SendMessageInput::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl SqsPublisher for SqsBridge {
    fn validate(&self, queue_arn: &str) -> Result<(), SnsDeliveryError> {
        self.url(queue_arn)
            .map(|_| ())
            .map_err(SnsDeliveryError::Unsupported)
    }

    async fn send_message(
        &self,
        queue_arn: &str,
        message_body: &str,
        message_group_id: Option<&str>,
        message_deduplication_id: Option<&str>,
    ) -> Result<(), SnsDeliveryError> {
        self.send(
            queue_arn,
            message_body,
            message_group_id,
            message_deduplication_id,
        )
        .await
        .map_err(|reason| SnsDeliveryError::SqsDeliveryFailed {
            queue_arn: queue_arn.to_owned(),
            reason,
        })
    }
}

#[async_trait]
impl TargetDelivery for SqsBridge {
    fn validate(&self, target: &Target) -> Result<(), EventsDeliveryError> {
        if target.arn.split(':').nth(2) != Some("sqs") {
            return Err(EventsDeliveryError::Unsupported(format!(
                "only SQS targets are delivered by the emulator: {}",
                target.arn
            )));
        }
        self.url(&target.arn)
            .map(|_| ())
            .map_err(EventsDeliveryError::InvalidArn)
    }

    async fn deliver(&self, target: &Target, event_json: &str) -> Result<(), EventsDeliveryError> {
        TargetDelivery::validate(self, target)?;
        let group = target
            .sqs_parameters
            .as_ref()
            .map(|p| p.message_group_id.as_str());
        self.send(&target.arn, event_json, group, None)
            .await
            .map_err(EventsDeliveryError::TargetError)
    }
}
