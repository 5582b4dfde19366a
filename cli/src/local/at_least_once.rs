//! At-least-once events, locally: the copies AWS may deliver of an event, at seeded
//! rates ([`AtLeastOnce`], off by default) — EventBridge's schedule event twice (the
//! same event id, so the same run id) or late (after its run closed), a run-settled
//! notice twice or late, and SQS's received batch to two invocations.

use std::{collections::BTreeMap, sync::Mutex};

use super::seeded::Draws;

/// How often each copy is delivered (0..=1 each; all 0, the default: never).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AtLeastOnce {
    /// Seeds the draws.
    pub seed: u64,
    /// A schedule event reaches sync-start twice at once (two invocations).
    pub duplicate_schedule_event: f64,
    /// A copy of a schedule event reaches sync-start after its run closed.
    pub late_schedule_event: f64,
    /// A run-settled notice invokes the finalizer twice at once.
    pub duplicate_notice: f64,
    /// A copy of a run-settled notice invokes the finalizer after its run closed.
    pub late_notice: f64,
    /// A batch the event source mapping received goes to two delivery invocations.
    pub duplicate_batch: f64,
}

/// One kind of extra copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum EventCopy {
    DuplicateScheduleEvent,
    LateScheduleEvent,
    DuplicateNotice,
    LateNotice,
    DuplicateBatch,
}

impl EventCopy {
    /// As counted in the injected faults.
    fn name(self) -> &'static str {
        match self {
            Self::DuplicateScheduleEvent => "duplicate:schedule_event",
            Self::LateScheduleEvent => "late:schedule_event",
            Self::DuplicateNotice => "duplicate:run_settled_notice",
            Self::LateNotice => "late:run_settled_notice",
            Self::DuplicateBatch => "duplicate:delivery_batch",
        }
    }
}

/// The copies still to draw, and those delivered.
#[derive(Debug)]
pub(super) struct EventCopies {
    rates: AtLeastOnce,
    state: Mutex<(Draws, BTreeMap<EventCopy, u64>)>,
}

/// Keeps these draws apart from the crash plan's of the same seed.
const COPIES_SALT: u64 = 0xE7E5;

impl EventCopies {
    pub(super) fn new(rates: AtLeastOnce) -> Self {
        Self {
            rates,
            state: Mutex::new((Draws::new(rates.seed, COPIES_SALT), BTreeMap::new())),
        }
    }

    /// Whether this event gets an extra copy of `kind` (counted if so).
    pub(super) fn draw(&self, kind: EventCopy) -> bool {
        let rate = match kind {
            EventCopy::DuplicateScheduleEvent => self.rates.duplicate_schedule_event,
            EventCopy::LateScheduleEvent => self.rates.late_schedule_event,
            EventCopy::DuplicateNotice => self.rates.duplicate_notice,
            EventCopy::LateNotice => self.rates.late_notice,
            EventCopy::DuplicateBatch => self.rates.duplicate_batch,
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.0.chance(rate) {
            return false;
        }
        *state.1.entry(kind).or_default() += 1;
        true
    }

    /// The copies delivered, by `duplicate:<event>` and `late:<event>`.
    pub(super) fn injected(&self) -> BTreeMap<String, u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .1
            .iter()
            .map(|(kind, count)| (kind.name().to_owned(), *count))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_off_by_default() {
        let copies = EventCopies::new(AtLeastOnce::default());
        for _ in 0..100 {
            assert!(!copies.draw(EventCopy::DuplicateScheduleEvent));
            assert!(!copies.draw(EventCopy::DuplicateBatch));
        }
        assert!(copies.injected().is_empty());
    }

    #[test]
    fn each_kind_fires_at_its_seeded_rate_and_is_counted() {
        let rates = AtLeastOnce {
            seed: 5,
            duplicate_batch: 0.5,
            late_notice: 1.0,
            ..AtLeastOnce::default()
        };
        let run = || {
            let copies = EventCopies::new(rates);
            let drawn: Vec<bool> = (0..100)
                .map(|_| copies.draw(EventCopy::DuplicateBatch))
                .collect();
            assert!(copies.draw(EventCopy::LateNotice));
            assert!(!copies.draw(EventCopy::LateScheduleEvent));
            (drawn, copies.injected())
        };
        let (drawn, injected) = run();
        assert_eq!(drawn, run().0, "the same seed draws the same copies");
        let duplicates = drawn.iter().filter(|d| **d).count() as u64;
        assert!((25..75).contains(&duplicates), "{duplicates}");
        assert_eq!(injected["duplicate:delivery_batch"], duplicates);
        assert_eq!(injected["late:run_settled_notice"], 1);
        assert!(!injected.contains_key("late:schedule_event"));
    }
}
