//! What a deployment can honour, and the check that each destination's limits fit it.
//!
//! A destination's `timeout_secs`, `batch_size` and `retry` policy are promises only if
//! the stack around them can keep them: the delivery function must outlive the requests
//! of one invocation, a backoff must end within SQS's 12 hours from the receive, and a
//! row must settle before its message expires. The numbers below are the deployment's
//! (the templates set them; `crate::resources` builds the queue settings from them and
//! re-exports them). They are fixed for every destination: a destination is checked
//! against them when the file loads, so a configuration the stack cannot honour fails at
//! start, naming the field, instead of stalling a run.

use std::time::Duration;

use super::{invalid, ConfigError, DestinationConfig};
use crate::domain::retry::{MAX_RATE_LIMIT_DEFERRALS, SQS_MAX_DELAY, SQS_MAX_VISIBILITY};

/// Timeout of the delivery function, in seconds: the same for every destination (the
/// templates set it). A destination's requests are checked to fit it
/// ([`DestinationConfig::invocation_bound`]), not the reverse.
pub const DELIVERY_FUNCTION_TIMEOUT_SECS: u32 = 60;

/// The event source mapping's batching window, in seconds.
pub const BATCHING_WINDOW_SECS: u32 = 1;

/// Visibility timeout of a delivery queue: 6 × the function's timeout + the batching
/// window, as AWS advises for SQS event sources, so a batch stays hidden while its
/// invocation (or Lambda's retry of a throttled one) still works on it.
pub const QUEUE_VISIBILITY_SECS: u32 = 6 * DELIVERY_FUNCTION_TIMEOUT_SECS + BATCHING_WINDOW_SECS;

/// Retention of a delivery queue: 4 days. A message older than this is gone, its row
/// never settled; [`DestinationConfig::row_lifetime`] must fit it.
pub const QUEUE_RETENTION_SECS: u32 = 4 * 24 * 3600;

/// Destination requests one delivery invocation keeps in flight: one, its requests sent
/// one after another, so a destination's `concurrency` (the event source mapping's
/// `MaximumConcurrency`, the local runtime's pollers) is exactly the requests the
/// destination sees at once (the delivery function's own `REQUESTS_IN_FLIGHT`; a test
/// of the deployment keeps the two equal).
pub const REQUESTS_IN_FLIGHT: usize = 1;

/// What one delivery invocation may spend outside destination requests: reading the
/// run, writing its ledger item, changing visibilities, sending deferred copies and the
/// run-settled notice (milliseconds each when AWS is healthy; this is the slack).
pub const INVOCATION_OVERHEAD_SECS: u64 = 10;

/// The worst case of one row's stay in its delivery queue during one run, in seconds,
/// by cause. A message's retention counts from its send; a rate-limit deferral sends a
/// fresh copy, so counting deferrals in one message's life is on the safe side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLifetime {
    /// The backoffs between attempts, each at its ceiling (`max_attempts − 1` of them).
    pub backoffs: u64,
    /// Every receive the row may take before it settles or is dead-lettered
    /// (`max_attempts` + the dead-letter margin), each held for the queue's visibility
    /// timeout: an invocation ends within the function's timeout (its requests
    /// included), one that crashes gives the row back when the visibility ends.
    pub receives: u64,
    /// `MAX_RATE_LIMIT_DEFERRALS` deferrals, each waiting SQS's longest delay and then
    /// an invocation.
    pub deferrals: u64,
}

impl RowLifetime {
    /// The whole worst case.
    pub fn total(&self) -> u64 {
        self.backoffs
            .saturating_add(self.receives)
            .saturating_add(self.deferrals)
    }
}

impl DestinationConfig {
    /// Rows per delivery invocation (the event source mapping's batch size): two
    /// destination batches, 20..=1000 — several requests per invocation keep ledger
    /// writes per row low.
    ///
    /// With `packing`, messages per invocation instead: each message (a segment of up
    /// to `batch_size` rows, or one row) is at most one request, so as many as fit the
    /// function's timeout one after another, 1..=10 (ten messages of the queue's
    /// largest size are 2.5 MB, well inside Lambda's 6 MB invocation payload).
    pub fn event_batch_size(&self) -> u32 {
        if self.packing {
            let budget = u64::from(DELIVERY_FUNCTION_TIMEOUT_SECS)
                .saturating_sub(INVOCATION_OVERHEAD_SECS)
                / self.timeout_secs.max(1)
                * REQUESTS_IN_FLIGHT as u64;
            return u32::try_from(budget.clamp(1, 10)).unwrap_or(10);
        }
        let twice = self.effective_batch_size().saturating_mul(2);
        u32::try_from(twice).unwrap_or(u32::MAX).clamp(20, 1000)
    }

    /// Destination requests one invocation makes one after another: its rows in
    /// batches of `batch_size`, [`REQUESTS_IN_FLIGHT`] at a time.
    pub fn sequential_requests(&self) -> u64 {
        let batch = self.effective_batch_size().max(1) as u64;
        let requests = if self.packing {
            u64::from(self.event_batch_size())
        } else {
            u64::from(self.event_batch_size()).div_ceil(batch)
        };
        requests.div_ceil(REQUESTS_IN_FLIGHT as u64)
    }

    /// The longest one delivery invocation of this destination takes when every request
    /// waits its whole timeout: [`Self::sequential_requests`] × `timeout_secs` +
    /// [`INVOCATION_OVERHEAD_SECS`]. It must fit [`DELIVERY_FUNCTION_TIMEOUT_SECS`].
    pub fn invocation_bound(&self) -> Duration {
        Duration::from_secs(
            self.sequential_requests()
                .saturating_mul(self.timeout_secs)
                .saturating_add(INVOCATION_OVERHEAD_SECS),
        )
    }

    /// The worst case of one row's stay in the delivery queue during one run. It counts
    /// the policy's backoff ceilings; a destination's `Retry-After` beyond
    /// `max_delay_secs` can lengthen a wait (up to SQS's 12 hours), which no
    /// configuration bounds.
    pub fn row_lifetime(&self) -> RowLifetime {
        let policy = &self.retry;
        let backoffs = (1..policy.max_attempts)
            .map(|attempt| policy.backoff_ceiling(attempt).as_secs())
            .fold(0u64, u64::saturating_add);
        let receives = u64::from(policy.dead_letter_receive_count())
            .saturating_mul(u64::from(QUEUE_VISIBILITY_SECS));
        let deferrals = u64::from(MAX_RATE_LIMIT_DEFERRALS)
            .saturating_mul(SQS_MAX_DELAY.as_secs() + u64::from(DELIVERY_FUNCTION_TIMEOUT_SECS));
        RowLifetime {
            backoffs,
            receives,
            deferrals,
        }
    }
}

/// The largest `max_delay_secs` SQS honours: a backoff is set when the invocation that
/// received the row ends — up to the batching window and the function's timeout after
/// the receive — and SQS refuses a visibility that ends more than 12 hours after it.
pub fn max_backoff_secs() -> u64 {
    SQS_MAX_VISIBILITY.as_secs()
        - u64::from(BATCHING_WINDOW_SECS)
        - u64::from(DELIVERY_FUNCTION_TIMEOUT_SECS)
}

/// Checks that a destination's limits fit the deployment; `at` is its path
/// (`destinations[0]`) and the error names the field to change.
pub(super) fn check_destination(d: &DestinationConfig, at: &str) -> Result<(), ConfigError> {
    let function_timeout = u64::from(DELIVERY_FUNCTION_TIMEOUT_SECS);
    let invocation = d.invocation_bound().as_secs();
    if invocation > function_timeout {
        let rounds = d.sequential_requests();
        let rows = d.event_batch_size();
        let batch = d.effective_batch_size();
        let requests = if d.packing {
            u64::from(rows)
        } else {
            u64::from(rows).div_ceil(batch.max(1) as u64)
        };
        let longest = function_timeout.saturating_sub(INVOCATION_OVERHEAD_SECS) / rounds.max(1);
        return Err(invalid(
            format!("{at}.timeout_secs"),
            format!(
                "one delivery invocation takes up to {rows} {unit} in {requests} requests of {batch}, \
                 one after another: {rounds} × {} s + {INVOCATION_OVERHEAD_SECS} s for its \
                 queue and ledger calls = {invocation} s, more than the delivery function's \
                 {function_timeout} s timeout (DELIVERY_FUNCTION_TIMEOUT_SECS), which would stop it \
                 mid-batch; with this batch_size a request may take at most {longest} s",
                d.timeout_secs,
                unit = if d.packing { "messages" } else { "rows" },
            ),
        ));
    }
    let max_backoff = max_backoff_secs();
    if d.retry.max_delay_secs > max_backoff {
        return Err(invalid(
            format!("{at}.retry.max_delay_secs"),
            format!(
                "must be at most {max_backoff}: a backoff starts when the invocation that received \
                 the row ends, up to {BATCHING_WINDOW_SECS} s + {function_timeout} s after the \
                 receive, and SQS refuses a visibility that ends more than {} s (12 hours) after \
                 the receive",
                SQS_MAX_VISIBILITY.as_secs()
            ),
        ));
    }
    let lifetime = d.row_lifetime();
    let retention = u64::from(QUEUE_RETENTION_SECS);
    if lifetime.total() > retention {
        return Err(invalid(
            format!("{at}.retry"),
            format!(
                "a row may stay in the delivery queue for up to {} s in one run — backoffs of up to \
                 {} s over {} attempts, {} receives of up to {QUEUE_VISIBILITY_SECS} s each, \
                 {MAX_RATE_LIMIT_DEFERRALS} rate-limit deferrals of up to {} s each — more than the \
                 queue keeps a message ({retention} s, 4 days): it would expire unsettled and its \
                 run never close; lower max_attempts or max_delay_secs",
                lifetime.total(),
                lifetime.backoffs,
                d.retry.max_attempts,
                d.retry.dead_letter_receive_count(),
                SQS_MAX_DELAY.as_secs() + function_timeout,
            ),
        ));
    }
    Ok(())
}
