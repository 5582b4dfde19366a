//! The names and settings of every AWS resource resync uses — the one place that
//! defines them, read by local provisioning, by the functions at start, and mirrored by
//! the deployment templates. The limits a destination's configuration is checked
//! against when it loads (the delivery function's timeout, the queue's visibility and
//! retention) live beside that check, in `crate::config::deployment`, and are
//! re-exported here.

use crate::{config::DestinationConfig, domain::ids::DestinationId};

pub use crate::config::deployment::{
    BATCHING_WINDOW_SECS, DELIVERY_FUNCTION_TIMEOUT_SECS, QUEUE_RETENTION_SECS,
    QUEUE_VISIBILITY_SECS,
};

/// Dead-letter queue retention: 14 days (longer than the source queue's).
pub const DLQ_RETENTION_SECS: u32 = 14 * 24 * 3600;
/// The message size resync provisions (the largest every SQS implementation accepts).
pub const MAX_MESSAGE_BYTES: u32 = 262_144;
/// How long ledger items are kept after they are written (DynamoDB TTL), in seconds.
pub const LEDGER_TTL_SECS: i64 = 30 * 24 * 3600;

/// Names of one stack's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// Prefix of every name.
    pub stack: String,
    /// Runs, sync state (lock and cursor) and batch ledger items.
    pub runs_table: String,
    /// The failed-row index.
    pub failed_rows_table: String,
    /// Default source bucket.
    pub source_bucket: String,
    /// EventBridge bus for run events.
    pub event_bus: String,
    /// SNS topic for alerts (name; the ARN is resolved or given).
    pub alert_topic: String,
    /// The topic's ARN when known (from the environment in Lambda).
    pub alert_topic_arn: Option<String>,
}

/// Why resource settings could not be read from the environment.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is not set")]
pub struct MissingEnv(pub &'static str);

impl Resources {
    /// The conventional names for a stack.
    pub fn for_stack(stack: &str) -> Self {
        Self {
            stack: stack.to_owned(),
            runs_table: format!("{stack}-runs"),
            failed_rows_table: format!("{stack}-failed-rows"),
            source_bucket: format!("{stack}-source"),
            event_bus: format!("{stack}-events"),
            alert_topic: format!("{stack}-alerts"),
            alert_topic_arn: None,
        }
    }

    /// From the Lambda environment: `RESYNC_STACK`, with optional per-resource overrides
    /// (`RESYNC_RUNS_TABLE`, `RESYNC_FAILED_ROWS_TABLE`, `RESYNC_SOURCE_BUCKET`,
    /// `RESYNC_EVENT_BUS`, `RESYNC_ALERT_TOPIC_ARN`).
    pub fn from_env() -> Result<Self, MissingEnv> {
        let stack = std::env::var("RESYNC_STACK").map_err(|_| MissingEnv("RESYNC_STACK"))?;
        let mut resources = Self::for_stack(&stack);
        let set = |name: &str, slot: &mut String| {
            if let Ok(value) = std::env::var(name) {
                *slot = value;
            }
        };
        set("RESYNC_RUNS_TABLE", &mut resources.runs_table);
        set("RESYNC_FAILED_ROWS_TABLE", &mut resources.failed_rows_table);
        set("RESYNC_SOURCE_BUCKET", &mut resources.source_bucket);
        set("RESYNC_EVENT_BUS", &mut resources.event_bus);
        resources.alert_topic_arn = std::env::var("RESYNC_ALERT_TOPIC_ARN").ok();
        Ok(resources)
    }

    /// A destination's delivery queue.
    pub fn delivery_queue(&self, destination: &DestinationId) -> String {
        format!("{}-{}-delivery", self.stack, destination)
    }

    /// The rule that routes run-settled notices to the finalizer.
    pub fn run_settled_rule(&self) -> String {
        format!("{}-run-settled", self.stack)
    }

    /// Locally, the queue the run-settled rule feeds and the local runner's finalizer
    /// waits on (a deployment's rule invokes the finalizer function instead).
    pub fn finalizer_notices_queue(&self) -> String {
        format!("{}-finalizer-notices", self.stack)
    }

    /// A destination's dead-letter queue.
    pub fn dead_letter_queue(&self, destination: &DestinationId) -> String {
        format!("{}-{}-dlq", self.stack, destination)
    }
}

/// Settings of a destination's delivery queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Visibility timeout: 6 × the delivery function's timeout + the batching window.
    pub visibility_timeout_secs: u32,
    /// Largest message.
    pub max_message_bytes: u32,
    /// Retention of the delivery queue.
    pub retention_secs: u32,
    /// Receives before a message moves to the dead-letter queue: above the
    /// destination's threshold, so only messages that crash the function land there.
    pub max_receive_count: u32,
    /// Retention of the dead-letter queue.
    pub dlq_retention_secs: u32,
    /// Rows per delivery invocation (the event source mapping's batch size).
    pub event_batch_size: u32,
    /// The event source mapping's batching window, in seconds.
    pub batching_window_secs: u32,
}

impl QueueSettings {
    /// The settings for one destination.
    pub fn for_destination(destination: &DestinationConfig) -> Self {
        Self {
            visibility_timeout_secs: QUEUE_VISIBILITY_SECS,
            max_message_bytes: MAX_MESSAGE_BYTES,
            retention_secs: QUEUE_RETENTION_SECS,
            max_receive_count: destination.retry.dead_letter_receive_count(),
            dlq_retention_secs: DLQ_RETENTION_SECS,
            event_batch_size: destination.event_batch_size(),
            batching_window_secs: BATCHING_WINDOW_SECS,
        }
    }
}
