//! Crash injection, two kinds ([`LocalOptions`]'s knobs):
//!
//! - [`Crashes`]: delivery invocations that die before their handler runs, or whose
//!   response is lost after it ran (`crash_before_handler`, `crash_after_handler`);
//! - [`SeededCrashPlan`]: the handlers' own crash points (`CrashPoint`, between two side
//!   effects of sync-start, delivery or the finalizer), each firing by a seeded chance
//!   up to a limit ([`CrashRules`]). A crashed sync-start or finalizer is retried by the
//!   runtime as Lambda retries an asynchronous invocation; a crashed delivery's batch
//!   comes back to the queue.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use resync_shared::crash_points::{CrashPlan, CrashPoint};

use super::{seeded::Draws, LocalOptions};

/// Simulated crashes of delivery invocations still to happen, and those that did.
#[derive(Debug, Default)]
pub(super) struct Crashes {
    before_handler: AtomicUsize,
    after_handler: AtomicUsize,
    happened_before: AtomicU64,
    happened_after: AtomicU64,
}

impl Crashes {
    /// The crashes the options ask for.
    pub(super) fn new(options: &LocalOptions) -> Self {
        Self {
            before_handler: AtomicUsize::new(options.crash_before_handler),
            after_handler: AtomicUsize::new(options.crash_after_handler),
            ..Self::default()
        }
    }

    /// Whether this invocation dies before its handler runs (one fewer to come if so).
    pub(super) fn before_handler(&self) -> bool {
        Self::take(&self.before_handler, &self.happened_before)
    }

    /// Whether this invocation's response is lost after its handler ran (one fewer to
    /// come if so).
    pub(super) fn after_handler(&self) -> bool {
        Self::take(&self.after_handler, &self.happened_after)
    }

    /// The crashes that happened, by `crash:before_handler` and `crash:after_handler`.
    pub(super) fn injected(&self) -> BTreeMap<String, u64> {
        [
            ("crash:before_handler", &self.happened_before),
            ("crash:after_handler", &self.happened_after),
        ]
        .into_iter()
        .map(|(name, count)| (name.to_owned(), count.load(Ordering::SeqCst)))
        .filter(|(_, count)| *count > 0)
        .collect()
    }

    fn take(counter: &AtomicUsize, happened: &AtomicU64) -> bool {
        let taken = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if taken {
            happened.fetch_add(1, Ordering::SeqCst);
        }
        taken
    }
}

/// How often one crash point fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrashRule {
    /// Chance each time a handler reaches the point (0..=1).
    pub probability: f64,
    /// At most this many crashes there (`None`: unbounded).
    pub limit: Option<u64>,
}

/// The handlers' crash points that fire, seeded (empty: none does, the default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CrashRules {
    /// Seeds the draws.
    pub seed: u64,
    /// The points that may fire.
    pub rules: BTreeMap<CrashPoint, CrashRule>,
}

impl CrashRules {
    /// No crash point fires.
    pub fn none() -> Self {
        Self::default()
    }

    /// Rules drawn from a generator seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            rules: BTreeMap::new(),
        }
    }

    /// Also crash at `point` with `probability`, at most `limit` times.
    pub fn at(mut self, point: CrashPoint, probability: f64, limit: Option<u64>) -> Self {
        self.rules.insert(point, CrashRule { probability, limit });
        self
    }

    /// Crash the first `times` times a handler reaches `point`.
    pub fn first(self, point: CrashPoint, times: u64) -> Self {
        self.at(point, 1.0, Some(times))
    }

    /// Whether any point may fire.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The crash plan the handlers consult at each of their crash points.
#[derive(Debug)]
pub(super) struct SeededCrashPlan {
    rules: BTreeMap<CrashPoint, CrashRule>,
    state: Mutex<PlanState>,
}

#[derive(Debug)]
struct PlanState {
    draws: Draws,
    fired: BTreeMap<CrashPoint, u64>,
}

/// Keeps the crash plan's draws apart from the event copies' of the same seed.
const CRASH_SALT: u64 = 0xC4A5;

impl SeededCrashPlan {
    /// The plan of `rules`.
    pub(super) fn new(rules: &CrashRules) -> Self {
        Self {
            rules: rules.rules.clone(),
            state: Mutex::new(PlanState {
                draws: Draws::new(rules.seed, CRASH_SALT),
                fired: BTreeMap::new(),
            }),
        }
    }

    /// The crashes injected so far, by `crash:<point>`.
    pub(super) fn injected(&self) -> BTreeMap<String, u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .fired
            .iter()
            .map(|(point, count)| (format!("crash:{}", point.name()), *count))
            .collect()
    }
}

impl CrashPlan for SeededCrashPlan {
    fn crashes_at(&self, point: CrashPoint) -> bool {
        let Some(rule) = self.rules.get(&point) else {
            return false;
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fired = state.fired.get(&point).copied().unwrap_or(0);
        if rule.limit.is_some_and(|limit| fired >= limit) || !state.draws.chance(rule.probability) {
            return false;
        }
        state.fired.insert(point, fired + 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(rules: &CrashRules, point: CrashPoint, reached: usize) -> Vec<bool> {
        let plan = SeededCrashPlan::new(rules);
        (0..reached).map(|_| plan.crashes_at(point)).collect()
    }

    #[test]
    fn a_point_fires_by_its_seeded_chance_up_to_its_limit() {
        let rules = CrashRules::seeded(7).at(CrashPoint::DeliveryAfterLedgerWrite, 0.3, Some(4));
        let first = fired(&rules, CrashPoint::DeliveryAfterLedgerWrite, 100);
        assert_eq!(
            first,
            fired(&rules, CrashPoint::DeliveryAfterLedgerWrite, 100)
        );
        assert_eq!(first.iter().filter(|f| **f).count(), 4);
        let other_seed = CrashRules {
            seed: 8,
            ..rules.clone()
        };
        assert_ne!(
            first,
            fired(&other_seed, CrashPoint::DeliveryAfterLedgerWrite, 100)
        );
    }

    #[test]
    fn points_without_a_rule_never_fire_and_counts_name_the_point() {
        let rules = CrashRules::none().first(CrashPoint::FinalizerBeforeClose, 2);
        let plan = SeededCrashPlan::new(&rules);
        assert!(!plan.crashes_at(CrashPoint::FinalizerAfterIndexWrites));
        let fired: Vec<bool> = (0..4)
            .map(|_| plan.crashes_at(CrashPoint::FinalizerBeforeClose))
            .collect();
        assert_eq!(fired, [true, true, false, false]);
        assert_eq!(
            plan.injected(),
            BTreeMap::from([("crash:finalizer.before_close".to_owned(), 2)])
        );
    }

    #[test]
    fn invocation_crashes_are_counted_as_they_happen() {
        let crashes = Crashes::new(&LocalOptions {
            crash_before_handler: 1,
            ..LocalOptions::default()
        });
        assert!(crashes.injected().is_empty());
        assert!(crashes.before_handler());
        assert!(!crashes.before_handler());
        assert!(!crashes.after_handler());
        assert_eq!(
            crashes.injected(),
            BTreeMap::from([("crash:before_handler".to_owned(), 1)])
        );
    }
}
