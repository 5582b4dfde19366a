//! [`LocalOptions`]: the knobs in which a local run differs from a deployment (timing,
//! simulated crashes and at-least-once copies of events only).

use std::time::Duration;

use resync_shared::resources::{DELIVERY_FUNCTION_TIMEOUT_SECS, QUEUE_VISIBILITY_SECS};

use super::{AtLeastOnce, CrashRules};

/// Knobs of the local runner that differ from a deployment only in timing, and the
/// faults a test or the chaos harness injects (none by default).
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// How soon the messages of a delivery invocation that failed — a simulated crash, a
    /// function error, the function's timeout — come back. Lambda leaves them hidden
    /// until the queue's visibility timeout ends (361 s); locally they come back sooner,
    /// so crashed invocations are retried fast. The queues themselves keep the
    /// deployment's visibility ([`LocalOptions::queue_visibility_secs`]): a row of an
    /// invocation that is still working is never received again, however slow the
    /// destination.
    pub visibility_timeout_secs: u32,
    /// How often the finalizer runs while a run is open.
    pub finalize_every: Duration,
    /// Simulated crashes: this many delivery invocations die before their handler
    /// runs (their messages come back after the visibility timeout).
    pub crash_before_handler: usize,
    /// Simulated crashes: this many delivery invocations do their work but their
    /// response is lost, as when Lambda times out after the handler wrote its ledger.
    pub crash_after_handler: usize,
    /// Batching window of the poller.
    pub batching_window: Duration,
    /// Receives a poller keeps in flight while the queue has a backlog.
    pub receives_in_flight: usize,
    /// A shorter visibility timeout of the delivery queues than the deployment's, for a
    /// harness that compresses time (`resync chaos`: a delete or visibility change SQS
    /// refused brings its message back after this, not after 361 s). It must stay above
    /// the longest invocation; `None` keeps the deployment's rule.
    pub queue_visibility_override: Option<u32>,
    /// The handlers' crash points that fire (none by default). A crashed sync-start or
    /// finalizer is retried as Lambda retries an asynchronous invocation; a crashed
    /// delivery's batch comes back after `visibility_timeout_secs`.
    pub crash_points: CrashRules,
    /// Extra copies of events, as AWS delivers them at least once (none by default).
    pub at_least_once: AtLeastOnce,
    /// How soon a failed sync-start or finalizer invocation is tried again. Lambda
    /// retries an asynchronous invocation twice, about 1 and 2 minutes after it failed,
    /// with the same event and request id; locally the same two retries come sooner.
    pub async_retry_after: Duration,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            visibility_timeout_secs: 30,
            finalize_every: Duration::from_millis(250),
            crash_before_handler: 0,
            crash_after_handler: 0,
            batching_window: Duration::from_millis(200),
            receives_in_flight: 4,
            queue_visibility_override: None,
            crash_points: CrashRules::none(),
            at_least_once: AtLeastOnce::default(),
            async_retry_after: Duration::from_millis(200),
        }
    }
}

impl LocalOptions {
    /// Visibility timeout of the local delivery queues: the deployment's rule, 6 × the
    /// delivery function's timeout + the batching window (the deployment's 361 s, more
    /// when the local window is longer than its 1 s), so a batch stays hidden for as
    /// long as its invocation may run.
    pub fn queue_visibility_secs(&self) -> u32 {
        if let Some(secs) = self.queue_visibility_override {
            return secs;
        }
        let window =
            u32::try_from(self.batching_window.as_secs_f64().ceil() as u64).unwrap_or(u32::MAX);
        QUEUE_VISIBILITY_SECS.max(
            DELIVERY_FUNCTION_TIMEOUT_SECS
                .saturating_mul(6)
                .saturating_add(window),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_queues_keep_the_deployments_visibility() {
        assert_eq!(LocalOptions::default().queue_visibility_secs(), 361);
        let long_window = LocalOptions {
            batching_window: Duration::from_millis(29_500),
            ..LocalOptions::default()
        };
        assert_eq!(long_window.queue_visibility_secs(), 390);
    }
}
