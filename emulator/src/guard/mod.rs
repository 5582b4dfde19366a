//! AWS as it really is, in front of the rustack services: the limits AWS enforces and
//! the emulator's crates do not, and seeded fault injection.
//!
//! **Limits** (always on, answered with AWS's error codes):
//! - SQS: a message body ≤ 256 KiB, a `SendMessageBatch` ≤ 10 entries and ≤ 256 KiB of
//!   bodies, `DelaySeconds` ≤ 900, `VisibilityTimeout` ≤ 43,200 (12 h), batch calls of
//!   `DeleteMessageBatch` / `ChangeMessageVisibilityBatch` ≤ 10 entries,
//!   `MaxNumberOfMessages` ≤ 10; at most 120,000 messages in flight per queue (a short
//!   poll past it is refused with `OverLimit`, a long poll returns nothing; the limit
//!   can be lowered through [`crate::Emulator::sqs_in_flight`]); a visibility change at
//!   most 12 hours after the receive.
//! - DynamoDB: an item ≤ 400 KB (`PutItem`, the result of `UpdateItem`, and every put
//!   of `BatchWriteItem` and `TransactWriteItems`), `BatchWriteItem` ≤ 25 requests and no key twice,
//!   `TransactWriteItems` ≤ 100 items and ≤ 4 MB.
//!
//! **Faults** ([`Faults`], through [`crate::Emulator::faults`]): per operation, with a
//! probability drawn from a seeded generator (the same seed and call order give the
//! same faults): throttling, internal errors, `TransactionConflict`, partial failures
//! of SQS batch calls (entries answered as failed on SQS's side, or refused as the
//! sender's fault; not performed), added latency.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

pub(crate) mod dynamodb;
pub(crate) mod in_flight;
pub(crate) mod sqs;

/// What an injected fault does to a matching call.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Refused as throttled (`ThrottlingException` on SQS,
    /// `ProvisionedThroughputExceededException` on DynamoDB); the SDK retries it.
    Throttle,
    /// Refused with a 500 internal error; the SDK retries it.
    InternalError,
    /// DynamoDB: `TransactionConflictException`, or for `TransactWriteItems` a
    /// `TransactionCanceledException` whose reason is `TransactionConflict`.
    TransactionConflict,
    /// SQS batch calls: each entry fails on its own with this probability (answered in
    /// `Failed` with `SenderFault: false`, not performed); the call itself succeeds.
    EntryFailure,
    /// SQS batch calls: each entry is refused as the sender's fault with this
    /// probability (answered in `Failed` with `SenderFault: true` and
    /// `InvalidParameterValue`, not performed), as SQS refuses an entry it will never
    /// take; trying it again does not help.
    RefusedEntry,
    /// The call is answered after this extra delay.
    Latency(Duration),
}

impl FaultKind {
    fn name(&self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::InternalError => "internal_error",
            Self::TransactionConflict => "transaction_conflict",
            Self::EntryFailure => "entry_failure",
            Self::RefusedEntry => "refused_entry",
            Self::Latency(_) => "latency",
        }
    }
}

/// One fault of a plan: which calls, what happens, how often.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// `service.Operation` (`sqs.SendMessageBatch`, `dynamodb.PutItem`), or
    /// `service.*` for every operation of a service.
    pub operation: String,
    /// What happens.
    pub kind: FaultKind,
    /// Chance per call (per entry for [`FaultKind::EntryFailure`]), 0..=1.
    pub probability: f64,
    /// At most this many injections of this rule (`None`: unbounded).
    pub limit: Option<u64>,
}

impl FaultRule {
    /// A rule that fires on every matching call (or entry), at most `limit` times.
    pub fn always(operation: &str, kind: FaultKind, limit: Option<u64>) -> Self {
        Self {
            operation: operation.to_owned(),
            kind,
            probability: 1.0,
            limit,
        }
    }

    fn matches(&self, service: &str, operation: &str) -> bool {
        match self.operation.split_once('.') {
            Some((s, "*")) => s == service,
            Some((s, op)) => s == service && op == operation,
            None => false,
        }
    }
}

#[derive(Debug, Default)]
struct Plan {
    rules: Vec<(FaultRule, u64)>,
    state: u64,
    injected: BTreeMap<String, u64>,
}

impl Plan {
    /// splitmix64: small, seeded, and the same on every machine.
    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The emulator's fault plan: empty (no faults) until [`Faults::set`] is called.
#[derive(Debug, Default)]
pub struct Faults {
    plan: Mutex<Plan>,
}

impl Faults {
    /// Replaces the plan: `rules` drawn from a generator seeded with `seed`; the
    /// injection counts start again from zero.
    pub fn set(&self, seed: u64, rules: Vec<FaultRule>) {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        *plan = Plan {
            rules: rules.into_iter().map(|r| (r, 0)).collect(),
            state: seed,
            injected: BTreeMap::new(),
        };
    }

    /// Removes every rule (the counts stay readable).
    pub fn clear(&self) {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.rules.clear();
    }

    /// Faults injected so far, by `kind:service.Operation`.
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .injected
            .clone()
    }

    /// The call-level fault for one call, if a rule fires (entry faults excluded).
    pub(crate) fn draw_call(&self, service: &str, operation: &str) -> Option<FaultKind> {
        self.draw(service, operation, |kind| {
            !matches!(kind, FaultKind::EntryFailure | FaultKind::RefusedEntry)
        })
    }

    /// Whether one entry of a batch call is refused as the sender's fault.
    pub(crate) fn draw_refused_entry(&self, service: &str, operation: &str) -> bool {
        self.draw(service, operation, |kind| *kind == FaultKind::RefusedEntry)
            .is_some()
    }

    /// Whether one entry of a batch call fails.
    pub(crate) fn draw_entry(&self, service: &str, operation: &str) -> bool {
        self.draw(service, operation, |kind| *kind == FaultKind::EntryFailure)
            .is_some()
    }

    fn draw(
        &self,
        service: &str,
        operation: &str,
        wanted: impl Fn(&FaultKind) -> bool,
    ) -> Option<FaultKind> {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        if plan.rules.is_empty() {
            return None;
        }
        for index in 0..plan.rules.len() {
            let (rule, fired) = &plan.rules[index];
            if !wanted(&rule.kind)
                || !rule.matches(service, operation)
                || rule.limit.is_some_and(|limit| *fired >= limit)
            {
                continue;
            }
            let probability = rule.probability;
            if plan.next_unit() < probability {
                let kind = plan.rules[index].0.kind.clone();
                plan.rules[index].1 += 1;
                *plan
                    .injected
                    .entry(format!("{}:{service}.{operation}", kind.name()))
                    .or_default() += 1;
                return Some(kind);
            }
        }
        None
    }
}

/// What the guards share: the fault plan and SQS's in-flight accounting.
#[derive(Debug, Clone, Default)]
pub(crate) struct Guard {
    pub(crate) faults: Arc<Faults>,
    pub(crate) in_flight: Arc<in_flight::InFlight>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_faults_and_limits_are_kept() {
        let draws = |seed| {
            let faults = Faults::default();
            faults.set(
                seed,
                vec![FaultRule {
                    operation: "sqs.*".into(),
                    kind: FaultKind::Throttle,
                    probability: 0.3,
                    limit: Some(5),
                }],
            );
            let fired: Vec<bool> = (0..100)
                .map(|_| faults.draw_call("sqs", "ReceiveMessage").is_some())
                .collect();
            (fired, faults.injected())
        };
        let (a, counts) = draws(7);
        assert_eq!(a, draws(7).0);
        assert_ne!(a, draws(8).0);
        assert_eq!(a.iter().filter(|f| **f).count(), 5);
        assert_eq!(counts["throttle:sqs.ReceiveMessage"], 5);
    }

    #[test]
    fn rules_match_their_operation_or_service() {
        let faults = Faults::default();
        faults.set(
            1,
            vec![FaultRule::always(
                "dynamodb.PutItem",
                FaultKind::InternalError,
                None,
            )],
        );
        assert!(faults.draw_call("dynamodb", "GetItem").is_none());
        assert!(faults.draw_call("sqs", "PutItem").is_none());
        assert_eq!(
            faults.draw_call("dynamodb", "PutItem"),
            Some(FaultKind::InternalError)
        );
        assert!(!faults.draw_entry("dynamodb", "PutItem"));
    }
}
