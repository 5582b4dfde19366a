//! [`LocalOptions`]: the knobs in which a local run differs from a deployment (timing
//! and simulated crashes only).

use std::time::Duration;

/// Knobs of the local runner that differ from a deployment only in timing.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Visibility timeout of the delivery queues (a deployment uses 6 × the function
    /// timeout; locally a crashed invocation's rows should come back sooner).
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
        }
    }
}
