//! SQS's in-flight accounting, which the emulator's queues do not keep: a message is
//! in flight from the receive that hid it until it is deleted or visible again.
//!
//! Two AWS rules depend on it:
//! - a standard queue holds at most 120,000 messages in flight; past that,
//!   `ReceiveMessage` is refused with `OverLimit` ([`InFlight::set_limit`] lowers it, so
//!   a test can reach it with a few messages);
//! - a message's visibility may be extended to at most 12 hours after the receive that
//!   returned its receipt handle: a `ChangeMessageVisibility` beyond that is refused.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// AWS's in-flight limit of a standard queue.
pub const STANDARD_QUEUE_IN_FLIGHT: u64 = 120_000;
/// A message's visibility ends at most this long after its receive (12 hours).
pub const MAX_VISIBLE_AFTER_RECEIVE: Duration = Duration::from_secs(43_200);

/// One received message, by receipt handle.
#[derive(Debug, Clone, Copy)]
struct Held {
    received: Instant,
    hidden_until: Instant,
}

/// Why a visibility change is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VisibilityRefused {
    /// Past 12 hours from the receive.
    BeyondReceiveLimit,
}

/// The messages each queue has in flight (queues by name, messages by receipt handle).
#[derive(Debug)]
pub struct InFlight {
    limit: AtomicU64,
    queues: Mutex<HashMap<String, HashMap<String, Held>>>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            limit: AtomicU64::new(STANDARD_QUEUE_IN_FLIGHT),
            queues: Mutex::default(),
        }
    }
}

/// A queue's name from its URL (`…/ACCOUNT/NAME`), so the same queue reached through
/// `localhost` or `127.0.0.1` is counted once.
pub(crate) fn queue_name(queue_url: &str) -> &str {
    queue_url.rsplit('/').next().unwrap_or(queue_url)
}

impl InFlight {
    /// Sets the in-flight limit of every queue (AWS: 120,000 for a standard queue).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The in-flight limit of every queue.
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Messages of `queue` (its URL or name) in flight now.
    #[must_use]
    pub fn count(&self, queue: &str) -> u64 {
        self.count_at(queue_name(queue), Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Held>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count_at(&self, queue: &str, now: Instant) -> u64 {
        let mut queues = self.lock();
        let Some(held) = queues.get_mut(queue) else {
            return 0;
        };
        held.retain(|_, h| h.hidden_until > now);
        held.len() as u64
    }

    /// Whether a receive may return messages: fewer than the limit in flight.
    pub(crate) fn may_receive(&self, queue: &str, now: Instant) -> bool {
        self.room(queue, now) > 0
    }

    /// How many more messages may go in flight.
    pub(crate) fn room(&self, queue: &str, now: Instant) -> u64 {
        self.limit().saturating_sub(self.count_at(queue, now))
    }

    /// Messages a receive returned, hidden for `visibility`.
    pub(crate) fn received<'a>(
        &self,
        queue: &str,
        receipt_handles: impl IntoIterator<Item = &'a str>,
        visibility: Duration,
        now: Instant,
    ) {
        let mut queues = self.lock();
        let held = queues.entry(queue.to_owned()).or_default();
        for handle in receipt_handles {
            held.insert(
                handle.to_owned(),
                Held {
                    received: now,
                    hidden_until: now + visibility,
                },
            );
        }
    }

    /// Checks a visibility change against the 12 hours from the receive.
    pub(crate) fn check_visibility(
        &self,
        queue: &str,
        receipt_handle: &str,
        visibility: Duration,
        now: Instant,
    ) -> Result<(), VisibilityRefused> {
        let queues = self.lock();
        let Some(held) = queues.get(queue).and_then(|q| q.get(receipt_handle)) else {
            return Ok(());
        };
        // Whole seconds, as SQS counts: the full 12 hours may be set right after a
        // receive.
        let since_receive =
            Duration::from_secs(now.saturating_duration_since(held.received).as_secs());
        if since_receive + visibility > MAX_VISIBLE_AFTER_RECEIVE {
            return Err(VisibilityRefused::BeyondReceiveLimit);
        }
        Ok(())
    }

    /// A visibility change SQS performed.
    pub(crate) fn visibility_changed(
        &self,
        queue: &str,
        receipt_handle: &str,
        visibility: Duration,
        now: Instant,
    ) {
        let mut queues = self.lock();
        if let Some(held) = queues
            .get_mut(queue)
            .and_then(|q| q.get_mut(receipt_handle))
        {
            held.hidden_until = now + visibility;
        }
    }

    /// A message deleted by its receipt handle.
    pub(crate) fn deleted(&self, queue: &str, receipt_handle: &str) {
        let mut queues = self.lock();
        if let Some(held) = queues.get_mut(queue) {
            held.remove(receipt_handle);
        }
    }

    /// A queue purged or deleted: nothing of it is in flight.
    pub(crate) fn forget_queue(&self, queue: &str) {
        self.lock().remove(queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_messages_count_until_deleted_or_visible_again() {
        let in_flight = InFlight::default();
        in_flight.set_limit(2);
        let t0 = Instant::now();
        in_flight.received("q", ["a", "b"], Duration::from_secs(30), t0);
        assert_eq!(in_flight.count_at("q", t0), 2);
        assert!(!in_flight.may_receive("q", t0), "two of two in flight");
        in_flight.deleted("q", "a");
        assert!(in_flight.may_receive("q", t0));
        in_flight.received("q", ["c"], Duration::from_secs(30), t0);
        in_flight.visibility_changed("q", "c", Duration::ZERO, t0);
        assert_eq!(in_flight.count_at("q", t0), 1, "c is visible again");
        assert_eq!(
            in_flight.count_at("q", t0 + Duration::from_secs(31)),
            0,
            "b's visibility ran out"
        );
        assert_eq!(in_flight.count_at("other", t0), 0);
    }

    #[test]
    fn visibility_ends_at_most_twelve_hours_after_the_receive() {
        let in_flight = InFlight::default();
        let t0 = Instant::now();
        in_flight.received("q", ["a"], Duration::from_secs(30), t0);
        assert_eq!(
            in_flight.check_visibility(
                "q",
                "a",
                MAX_VISIBLE_AFTER_RECEIVE,
                t0 + Duration::from_millis(900)
            ),
            Ok(()),
            "the whole 12 hours within the receive's second"
        );
        let later = t0 + Duration::from_secs(3_600);
        assert_eq!(
            in_flight.check_visibility("q", "a", Duration::from_secs(39_600), later),
            Ok(()),
            "one hour after the receive, eleven more hours reach exactly twelve"
        );
        assert_eq!(
            in_flight.check_visibility("q", "a", Duration::from_secs(39_601), later),
            Err(VisibilityRefused::BeyondReceiveLimit)
        );
        assert_eq!(
            in_flight.check_visibility("q", "unknown", MAX_VISIBLE_AFTER_RECEIVE, later),
            Ok(()),
            "a handle the guard never saw is left to SQS"
        );
    }

    #[test]
    fn queues_are_named_by_the_last_segment_of_their_url() {
        assert_eq!(
            queue_name("http://127.0.0.1:4566/000000000000/deliveries"),
            "deliveries"
        );
        assert_eq!(queue_name("deliveries"), "deliveries");
    }
}
