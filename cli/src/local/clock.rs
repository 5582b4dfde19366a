//! [`HandlerClock`]: invocations and time spent in each function's handler, what Lambda
//! would bill (the bench's cost figures come from it).

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

/// Invocations and time spent in each function's handler (what Lambda would bill).
#[derive(Debug, Default)]
pub struct HandlerClock {
    inner: Mutex<BTreeMap<&'static str, Billed>>,
}

/// One function's invocations and the time its handler ran, added up.
#[derive(Debug, Default, Clone, Copy)]
struct Billed {
    invocations: u64,
    time: Duration,
    longest: Duration,
}

impl HandlerClock {
    /// One invocation of `function` whose handler ran for `elapsed`.
    pub(super) fn record(&self, function: &'static str, elapsed: Duration) {
        let mut inner = self.inner.lock().expect("clock");
        let entry = inner.entry(function).or_default();
        entry.invocations += 1;
        entry.time += elapsed;
        entry.longest = entry.longest.max(elapsed);
    }

    /// Invocations and handler seconds per function.
    pub fn snapshot(&self) -> BTreeMap<&'static str, (u64, f64)> {
        self.inner
            .lock()
            .expect("clock")
            .iter()
            .map(|(k, billed)| (*k, (billed.invocations, billed.time.as_secs_f64())))
            .collect()
    }

    /// The longest single invocation per function, in seconds.
    pub fn longest(&self) -> BTreeMap<&'static str, f64> {
        self.inner
            .lock()
            .expect("clock")
            .iter()
            .map(|(k, billed)| (*k, billed.longest.as_secs_f64()))
            .collect()
    }

    /// Starts again from zero.
    pub fn reset(&self) {
        self.inner.lock().expect("clock").clear();
    }
}
