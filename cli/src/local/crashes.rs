//! Crash injection: the delivery invocations still to die before their handler runs, or
//! after it ran with their response lost ([`LocalOptions`]'s `crash_*` knobs).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::LocalOptions;

/// Simulated crashes still to happen.
#[derive(Debug, Default)]
pub(super) struct Crashes {
    before_handler: AtomicUsize,
    after_handler: AtomicUsize,
}

impl Crashes {
    /// The crashes the options ask for.
    pub(super) fn new(options: &LocalOptions) -> Self {
        Self {
            before_handler: AtomicUsize::new(options.crash_before_handler),
            after_handler: AtomicUsize::new(options.crash_after_handler),
        }
    }

    /// Whether this invocation dies before its handler runs (one fewer to come if so).
    pub(super) fn before_handler(&self) -> bool {
        Self::take(&self.before_handler)
    }

    /// Whether this invocation's response is lost after its handler ran (one fewer to
    /// come if so).
    pub(super) fn after_handler(&self) -> bool {
        Self::take(&self.after_handler)
    }

    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}
