//! Crash points: the named places between two side effects of a handler where a test
//! harness can make an invocation die, as a Lambda timeout or crash kills one
//! mid-work. Each function's dependencies hold a [`CrashPoints`]; a deployment's is
//! [`CrashPoints::none`], which never fires and costs one branch per point.
//!
//! A crash is [`CrashPoints::reached`] answering [`InjectedCrash`]: the handler returns
//! it at once with `?`, and no error path acts on it (sync-start neither abandons the
//! run nor alerts), so what the handler did before the point stays done and nothing
//! after it happens — what a killed invocation leaves behind. Lambda treats a function
//! error as it treats a timeout or a crash: an asynchronous invocation (EventBridge) is
//! retried with the same event and request id, and the messages of a failed SQS batch
//! come back when their visibility timeout ends; the local runtime retries the same way.

use std::{fmt, sync::Arc};

/// One place between two side effects of a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrashPoint {
    /// sync-start: the sync's lock is taken; the run is not opened yet.
    SyncStartAfterAcquire,
    /// sync-start: some of the plan's `SendMessageBatch` calls are done, not all
    /// (consulted after each one that returned).
    SyncStartMidSend,
    /// sync-start: the plan is recorded; the settled notice is not sent yet.
    SyncStartAfterMarkPlanned,
    /// delivery: the destination was called for a run's rows; nothing is recorded,
    /// no copy queued, no visibility changed.
    DeliveryAfterDestinationCall,
    /// delivery: the delayed copies of waiting rows (rate-limited, backing off) are
    /// queued; their originals are not deleted, no ledger item is written (consulted
    /// only when SQS took a copy). The originals come back beside their copies.
    DeliveryAfterCopies,
    /// delivery: rate-limited copies are queued and their originals deleted; the
    /// ledger item is not written yet.
    DeliveryBeforeLedgerWrite,
    /// delivery: the ledger item is written; no settled notice, no visibility change,
    /// no answer yet.
    DeliveryAfterLedgerWrite,
    /// finalizer: the run's failures and recoveries are in the index; nothing is
    /// reported, the run is not closed.
    FinalizerAfterIndexWrites,
    /// finalizer: the run is reported; it is not closed yet.
    FinalizerBeforeClose,
}

impl CrashPoint {
    /// Every point, in the order a run passes them.
    pub const ALL: [CrashPoint; 9] = [
        Self::SyncStartAfterAcquire,
        Self::SyncStartMidSend,
        Self::SyncStartAfterMarkPlanned,
        Self::DeliveryAfterDestinationCall,
        Self::DeliveryAfterCopies,
        Self::DeliveryBeforeLedgerWrite,
        Self::DeliveryAfterLedgerWrite,
        Self::FinalizerAfterIndexWrites,
        Self::FinalizerBeforeClose,
    ];

    /// `function.point`, as plans name it and reports count it.
    pub fn name(self) -> &'static str {
        match self {
            Self::SyncStartAfterAcquire => "sync_start.after_acquire",
            Self::SyncStartMidSend => "sync_start.mid_send",
            Self::SyncStartAfterMarkPlanned => "sync_start.after_mark_planned",
            Self::DeliveryAfterDestinationCall => "delivery.after_destination_call",
            Self::DeliveryAfterCopies => "delivery.after_copies",
            Self::DeliveryBeforeLedgerWrite => "delivery.before_ledger_write",
            Self::DeliveryAfterLedgerWrite => "delivery.after_ledger_write",
            Self::FinalizerAfterIndexWrites => "finalizer.after_index_writes",
            Self::FinalizerBeforeClose => "finalizer.before_close",
        }
    }

    /// The point of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|point| point.name() == name)
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decides, each time a handler reaches a point, whether its invocation dies there
/// (the local runtime's seeded plan implements it).
pub trait CrashPlan: Send + Sync + fmt::Debug {
    /// Whether the invocation dies at `point` now.
    fn crashes_at(&self, point: CrashPoint) -> bool;
}

/// A handler's crash points: a plan, or none (a deployment).
#[derive(Debug, Clone, Default)]
pub struct CrashPoints {
    plan: Option<Arc<dyn CrashPlan>>,
}

impl CrashPoints {
    /// No crash ever: what every deployment runs with.
    pub fn none() -> Self {
        Self::default()
    }

    /// Crashes where `plan` says.
    pub fn with_plan(plan: Arc<dyn CrashPlan>) -> Self {
        Self { plan: Some(plan) }
    }

    /// The handler reached `point`: an error when the invocation dies here, which the
    /// handler returns at once.
    pub fn reached(&self, point: CrashPoint) -> Result<(), InjectedCrash> {
        match &self.plan {
            Some(plan) if plan.crashes_at(point) => {
                tracing::warn!(point = point.name(), "injected crash");
                Err(InjectedCrash { point })
            }
            _ => Ok(()),
        }
    }
}

/// An invocation that died at a crash point (injected by a test harness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected crash at {point}")]
pub struct InjectedCrash {
    /// Where it died.
    pub point: CrashPoint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Only(CrashPoint);

    impl CrashPlan for Only {
        fn crashes_at(&self, point: CrashPoint) -> bool {
            point == self.0
        }
    }

    #[test]
    fn no_plan_never_crashes() {
        let points = CrashPoints::none();
        assert!(CrashPoint::ALL.iter().all(|p| points.reached(*p).is_ok()));
    }

    #[test]
    fn a_plan_crashes_where_it_says_and_names_the_point() {
        let points = CrashPoints::with_plan(Arc::new(Only(CrashPoint::DeliveryAfterLedgerWrite)));
        assert!(points
            .reached(CrashPoint::DeliveryBeforeLedgerWrite)
            .is_ok());
        let crash = points
            .reached(CrashPoint::DeliveryAfterLedgerWrite)
            .unwrap_err();
        assert_eq!(
            crash.to_string(),
            "injected crash at delivery.after_ledger_write"
        );
    }

    #[test]
    fn names_are_unique_and_read_back() {
        for point in CrashPoint::ALL {
            assert_eq!(CrashPoint::from_name(point.name()), Some(point));
        }
        assert_eq!(CrashPoint::from_name("delivery.nowhere"), None);
    }
}
