//! A run planned again: what its earlier planning attempts settled, carried into the
//! latest attempt's plan and into the run's outcome.
//!
//! A run is planned more than once when a sync-start died or timed out and Lambda
//! retried it, or when its attempt was abandoned and the event came again; every
//! attempt has its own `generation` (see `RunRecord::generation`) and the finalizer
//! tallies the latest attempt's ledger items. Without a carry the new attempt starts
//! from nothing: rows an earlier attempt delivered are sent again, rows it retried get
//! a fresh threshold (I4), and a row a late copy of an earlier attempt delivered stays
//! in the failed-row index when the latest attempt fails it (I2, I3).
//!
//! The carry closes all three from the earlier attempts' ledger items:
//! - **planning** ([`EarlierAttempts::carry`]): a key an earlier attempt delivered is
//!   settled as delivered without a send; a key it failed at the threshold is settled
//!   as failed (its last error, the new payload) without a send; a key it tried and
//!   did not deliver is sent with the attempts it spent (`attempts_before`), so the
//!   threshold counts across attempts. What is settled without a send is written as a
//!   ledger item of the new attempt ([`SettledWithoutSend`]) before its plan is
//!   recorded, so the completeness check counts it.
//! - **closing** ([`EarlierAttempts::delivered_among`]): a key the latest attempt failed
//!   that an earlier attempt delivered (a late copy already at the destination when
//!   the run was planned again) is delivered: the destination has it (writes are
//!   idempotent upserts), so it leaves the index. One outcome per key (I1).
//!
//! The run's count of sends per key (see `crate::aws::runs::sends`) is read too: it
//! shows sends no ledger item does (a message received again after its invocation
//! died raises it to its receive count), and a key whose recorded sends already reached
//! the threshold — two deliveries of one SQS batch each record their own retry — is
//! settled as failed without another send.
//!
//! Every earlier attempt also counts one attempt of every key it may have sent: its
//! invocation may have died between the destination's answer and the ledger write, and
//! that message is dropped when it comes back after the re-plan, so no ledger shows the
//! send ([`EarlierAttempts::carry`]). The ledger items are read only after every
//! delivery invocation of the earlier attempts has ended (sync-start waits out the
//! delivery function's timeout), so a send still in flight is never missed.
//!
//! Memory: the earlier attempts' settled and retried keys only, as the tally holds.

use std::collections::{HashMap, HashSet};

use crate::domain::{
    ids::PrimaryKey,
    ledger::{BatchLedger, FailedRow},
    merge::PlannedRow,
    outcome::RowError,
};

/// What a run's earlier planning attempts did with each key they touched.
#[derive(Debug, Default)]
pub struct EarlierAttempts {
    /// Keys an earlier attempt delivered.
    delivered: HashSet<PrimaryKey>,
    /// Terminal failures of earlier attempts (the one with the most attempts).
    failed: HashMap<PrimaryKey, FailedRow>,
    /// Retries scheduled per key: each entry is one attempt (or one rate-limit
    /// deferral, which the ledger does not tell apart: counted as spent, so the
    /// threshold is never passed).
    retries: HashMap<PrimaryKey, u32>,
    /// The run's count of sends per key, for keys that failed at least once.
    sends: HashMap<PrimaryKey, u32>,
    /// The run's planning attempts before the latest one.
    generations: u32,
}

/// What the latest attempt does with one planned key.
#[derive(Debug, Clone, PartialEq)]
pub enum Carry<'a> {
    /// No earlier attempt tried it: sent as usual.
    Fresh,
    /// An earlier attempt delivered it: settled as delivered, not sent again (I3).
    Delivered,
    /// Earlier attempts spent `attempts_before` of its attempts without delivering it:
    /// sent with them counted (I4).
    Resend {
        /// Attempts already spent in this run.
        attempts_before: u32,
    },
    /// An earlier attempt failed it at the threshold: settled as that failure, not
    /// sent again (I4).
    Exhausted(&'a FailedRow),
    /// Its recorded sends already reached the threshold without a failure at it (two
    /// messages of the row each retried it): settled as failed with `error`, not sent
    /// again (I4).
    Spent {
        /// Its recorded sends in the run.
        attempts: u32,
        /// Its last error, or [`RowError::attempts_spent`] when none was recorded.
        error: RowError,
        /// When an earlier attempt failed it, if one did.
        failed_at: Option<String>,
    },
}

impl EarlierAttempts {
    /// What `generations` earlier planning attempts did (their ledger items are added
    /// with [`EarlierAttempts::add`]).
    pub fn of_generations(generations: u32) -> Self {
        Self {
            generations,
            ..Self::default()
        }
    }

    /// Adds one ledger item of an earlier attempt.
    pub fn add(&mut self, item: BatchLedger) {
        self.delivered.extend(item.delivered);
        self.delivered.extend(item.recovered);
        for key in item.retrying {
            let count = self.retries.entry(key).or_default();
            *count = count.saturating_add(1);
        }
        for row in item.failed {
            match self.failed.get(&row.key) {
                Some(existing) if existing.attempts >= row.attempts => {}
                _ => {
                    self.failed.insert(row.key.clone(), row);
                }
            }
        }
    }

    /// Adds the run's count of sends of `key` (see `crate::aws::runs::sends`).
    pub fn add_sends(&mut self, key: PrimaryKey, sends: u32) {
        let count = self.sends.entry(key).or_default();
        *count = (*count).max(sends);
    }

    /// Whether there was no earlier attempt (a first planning attempt): nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.generations == 0
            && self.delivered.is_empty()
            && self.failed.is_empty()
            && self.retries.is_empty()
            && self.sends.is_empty()
    }

    /// What the latest attempt does with `key`, under the destination's threshold
    /// `max_attempts` (attempts of one row in one run).
    pub fn carry(&self, key: &PrimaryKey, max_attempts: u32) -> Carry<'_> {
        if self.delivered.contains(key) {
            return Carry::Delivered;
        }
        let failed = self.failed.get(key);
        if let Some(row) = failed {
            if row.attempts >= max_attempts {
                return Carry::Exhausted(row);
            }
        }
        let recorded = self
            .retries
            .get(key)
            .copied()
            .unwrap_or(0)
            .max(failed.map_or(0, |row| row.attempts))
            .max(self.sends.get(key).copied().unwrap_or(0));
        if recorded >= max_attempts {
            // Sent as often as the threshold allows, as the ledgers and the count of
            // sends show: another send would pass it (I4).
            return Carry::Spent {
                attempts: recorded,
                error: failed.map_or_else(
                    || RowError::attempts_spent(max_attempts),
                    |row| row.error.clone(),
                ),
                failed_at: failed.and_then(|row| row.failed_at.clone()),
            };
        }
        // Each earlier attempt may have sent the key once more than its ledger shows:
        // an invocation that died between the destination's answer and its ledger
        // write, whose message came back after the run was planned again and was
        // dropped unrecorded. Counted as spent, so the threshold is never passed (I4,
        // as the destination counts sends); at worst a key gets one attempt fewer.
        let spent = recorded.saturating_add(self.generations);
        if spent == 0 {
            Carry::Fresh
        } else {
            // The allowance alone never exhausts a key: its last attempt is left to
            // the latest plan, and gives the failure its error.
            Carry::Resend {
                attempts_before: spent.min(max_attempts.saturating_sub(1)),
            }
        }
    }

    /// The failures of the latest attempt (`failures`) whose key an earlier attempt
    /// delivered, as a ledger item that settles them delivered (recovered when the key
    /// was carried over from the index, so it leaves it). Added to the run's tally, it
    /// makes the delivery win over the later failure.
    pub fn delivered_among<'a>(
        &self,
        failures: impl IntoIterator<Item = &'a FailedRow>,
    ) -> BatchLedger {
        let mut ledger = BatchLedger::default();
        for row in failures {
            if self.delivered.contains(&row.key) {
                if row.carried_over {
                    ledger.recovered.push(row.key.clone());
                } else {
                    ledger.delivered.push(row.key.clone());
                }
            }
        }
        ledger
    }
}

/// The keys a re-planned attempt settles without sending them: written as one of its
/// own ledger items (split like any other) before its plan is recorded.
#[derive(Debug, Default)]
pub struct SettledWithoutSend {
    ledger: BatchLedger,
}

impl SettledWithoutSend {
    /// Settles `planned` by `carry` when an earlier attempt already decided it;
    /// returns the row back, with the attempts to count, when it must be sent.
    pub fn settle(&mut self, planned: PlannedRow, carry: Carry<'_>) -> Option<(PlannedRow, u32)> {
        match carry {
            Carry::Fresh => Some((planned, 0)),
            Carry::Resend { attempts_before } => Some((planned, attempts_before)),
            Carry::Delivered if planned.carried.is_some() => {
                self.ledger.recovered.push(planned.key);
                None
            }
            Carry::Delivered => {
                self.ledger.delivered.push(planned.key);
                None
            }
            Carry::Exhausted(earlier) => {
                self.fail(
                    planned,
                    earlier.error.clone(),
                    earlier.attempts,
                    earlier.failed_at.clone(),
                );
                None
            }
            Carry::Spent {
                attempts,
                error,
                failed_at,
            } => {
                self.fail(planned, error, attempts, failed_at);
                None
            }
        }
    }

    /// Settles `planned` as failed after `attempts` with `error`, as an earlier attempt
    /// left it.
    fn fail(
        &mut self,
        planned: PlannedRow,
        error: RowError,
        attempts: u32,
        failed_at: Option<String>,
    ) {
        self.ledger.failed.push(FailedRow {
            key: planned.key,
            error,
            attempts,
            prior_attempts: planned.carried.as_ref().map_or(0, |c| c.attempts),
            carried_over: planned.carried.is_some(),
            first_failed_at: planned.carried.map(|c| c.first_failed_at),
            // When the earlier attempt failed it, not when this one settled it.
            failed_at,
            // The latest plan's values: the index retries the row with them.
            payload: planned.fields,
        });
    }

    /// The ledger item of attempt `generation` (empty when nothing was settled).
    pub fn into_ledger(self, generation: u32) -> BatchLedger {
        BatchLedger {
            generation,
            ..self.ledger
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{merge::CarriedEntry, outcome::RowError, row::RowFields};

    fn key(k: &str) -> PrimaryKey {
        PrimaryKey::parse(k).unwrap()
    }

    fn failed(k: &str, attempts: u32) -> FailedRow {
        FailedRow {
            key: key(k),
            error: RowError::retryable("UNABLE_TO_LOCK_ROW", "locked"),
            attempts,
            prior_attempts: 0,
            carried_over: false,
            first_failed_at: None,
            failed_at: None,
            payload: RowFields::from_text(r#"{"v":"old"}"#.to_owned()).unwrap(),
        }
    }

    fn planned(k: &str, carried: bool) -> PlannedRow {
        PlannedRow {
            key: key(k),
            fields: RowFields::from_text(r#"{"v":"new"}"#.to_owned()).unwrap(),
            carried: carried.then(|| CarriedEntry {
                first_failed_at: "2026-01-01T00:00:00Z".into(),
                attempts: 7,
            }),
            origin: None,
        }
    }

    fn earlier() -> EarlierAttempts {
        let mut earlier = EarlierAttempts::default();
        earlier.add(BatchLedger {
            delivered: vec![key("d")],
            recovered: vec![key("c")],
            retrying: vec![key("r"), key("f2"), key("dup")],
            failed: vec![failed("f2", 2), failed("f4", 4), failed("dup", 1)],
            ..Default::default()
        });
        earlier.add(BatchLedger {
            retrying: vec![key("r"), key("r")],
            delivered: vec![key("dup")],
            ..Default::default()
        });
        earlier
    }

    /// Issue 12: a re-planned run sent again what an earlier attempt had delivered, and
    /// restarted the attempts of what it had tried.
    #[test]
    fn a_replanned_key_is_settled_or_sent_with_its_spent_attempts() {
        let earlier = earlier();
        assert_eq!(earlier.carry(&key("d"), 4), Carry::Delivered);
        assert_eq!(earlier.carry(&key("c"), 4), Carry::Delivered);
        // Delivered wins over a failure of the same run.
        assert_eq!(earlier.carry(&key("dup"), 4), Carry::Delivered);
        assert_eq!(earlier.carry(&key("new"), 4), Carry::Fresh);
        assert_eq!(
            earlier.carry(&key("f2"), 4),
            Carry::Resend { attempts_before: 2 }
        );
        assert_eq!(
            earlier.carry(&key("r"), 4),
            Carry::Resend { attempts_before: 3 }
        );
        assert!(matches!(earlier.carry(&key("f4"), 4), Carry::Exhausted(row) if row.attempts == 4));
        // Three recorded sends at a threshold of 3: none is left to the latest plan.
        assert!(matches!(
            earlier.carry(&key("r"), 3),
            Carry::Spent { attempts: 3, .. }
        ));
        assert!(!earlier.is_empty());
        assert!(EarlierAttempts::default().is_empty());
    }

    /// Issue 12, I4 across planning attempts: an invocation of an earlier attempt sent
    /// a key, died before its ledger write, and its message — back after the run was
    /// planned again — was dropped unrecorded; the carry counted only the ledger's
    /// attempts, so the latest attempt had the key's whole remaining threshold and the
    /// destination received it 5 times at a threshold of 4 (`resync chaos`, seed 3,
    /// a run planned 3 times: Retry, Delivered [unrecorded], then 3 more sends). Each
    /// earlier attempt now counts one attempt of every key it may have sent.
    #[test]
    fn each_earlier_attempt_counts_one_unrecorded_send_of_every_key() {
        let mut two_earlier = EarlierAttempts::of_generations(2);
        two_earlier.add(BatchLedger {
            retrying: vec![key("r")],
            ..Default::default()
        });
        two_earlier.add(BatchLedger {
            retrying: vec![key("r")],
            ..Default::default()
        });
        assert_eq!(
            two_earlier.carry(&key("r"), 5),
            Carry::Resend { attempts_before: 4 }
        );
        // Never more than leaves one attempt to the latest plan.
        assert_eq!(
            two_earlier.carry(&key("r"), 4),
            Carry::Resend { attempts_before: 3 }
        );
        // A key no ledger of the earlier attempts names may still have been sent once
        // by each of them.
        assert_eq!(
            two_earlier.carry(&key("new"), 4),
            Carry::Resend { attempts_before: 2 }
        );
        assert!(!EarlierAttempts::of_generations(1).is_empty());
        assert!(EarlierAttempts::of_generations(0).is_empty());
    }

    /// Issue 12, I4 across planning attempts: SQS delivered a batch of the first
    /// attempt to two invocations, each sent its rows and recorded a retry, and the
    /// re-plan still left every row one more send (the allowance never exhausted a
    /// key): 3 sends at a threshold of 2. Recorded sends — the ledgers' retries or the
    /// run's count of sends, whichever is higher — that reach the threshold settle the
    /// key as failed without a send; the allowance for unrecorded sends alone never
    /// does.
    #[test]
    fn a_key_whose_recorded_sends_reached_the_threshold_is_not_sent_again() {
        let mut earlier = EarlierAttempts::of_generations(1);
        for _twin in 0..2 {
            earlier.add(BatchLedger {
                retrying: vec![key("twin")],
                ..Default::default()
            });
        }
        earlier.add_sends(key("counted"), 3);
        earlier.add_sends(key("counted"), 2);
        earlier.add_sends(key("once"), 1);
        let Carry::Spent {
            attempts, error, ..
        } = earlier.carry(&key("twin"), 2)
        else {
            panic!("{:?}", earlier.carry(&key("twin"), 2));
        };
        assert_eq!((attempts, error.code.as_str()), (2, "ATTEMPTS_SPENT"));
        assert!(matches!(
            earlier.carry(&key("counted"), 3),
            Carry::Spent { attempts: 3, .. }
        ));
        // Below the threshold the count of sends is carried like the ledgers' retries,
        // with the allowance on top.
        assert_eq!(
            earlier.carry(&key("counted"), 5),
            Carry::Resend { attempts_before: 4 }
        );
        // One recorded send plus the allowance, at a threshold of 2: the last attempt
        // is still the latest plan's.
        assert_eq!(
            earlier.carry(&key("once"), 2),
            Carry::Resend { attempts_before: 1 }
        );
        assert_eq!(
            earlier.carry(&key("new"), 1),
            Carry::Resend { attempts_before: 0 }
        );

        let mut settled = SettledWithoutSend::default();
        assert!(settled
            .settle(planned("twin", false), earlier.carry(&key("twin"), 2))
            .is_none());
        let ledger = settled.into_ledger(1);
        let [failure] = ledger.failed.as_slice() else {
            panic!("{:?}", ledger.failed)
        };
        assert_eq!(
            (failure.attempts, failure.error.code.as_str()),
            (2, "ATTEMPTS_SPENT")
        );
        assert_eq!(failure.payload.as_str(), r#"{"v":"new"}"#);
    }

    #[test]
    fn keys_settled_without_a_send_form_the_new_attempts_ledger_item() {
        let earlier = earlier();
        let mut settled = SettledWithoutSend::default();
        assert!(settled
            .settle(planned("d", false), earlier.carry(&key("d"), 4))
            .is_none());
        assert!(settled
            .settle(planned("c", true), earlier.carry(&key("c"), 4))
            .is_none());
        assert!(settled
            .settle(planned("f4", true), earlier.carry(&key("f4"), 4))
            .is_none());
        let (row, before) = settled
            .settle(planned("f2", false), earlier.carry(&key("f2"), 4))
            .unwrap();
        assert_eq!((row.key.as_str(), before), ("f2", 2));
        let (_, before) = settled
            .settle(planned("new", false), earlier.carry(&key("new"), 4))
            .unwrap();
        assert_eq!(before, 0);

        let ledger = settled.into_ledger(3);
        assert_eq!(ledger.generation, 3);
        assert_eq!(ledger.delivered, vec![key("d")]);
        assert_eq!(ledger.recovered, vec![key("c")]);
        let [failure] = ledger.failed.as_slice() else {
            panic!("{:?}", ledger.failed)
        };
        assert_eq!((failure.attempts, failure.prior_attempts), (4, 7));
        assert!(failure.carried_over);
        assert_eq!(failure.error.code, "UNABLE_TO_LOCK_ROW");
        assert_eq!(failure.payload.as_str(), r#"{"v":"new"}"#);
        assert_eq!(ledger.settled(), 3);
    }

    /// Issue 12: a late copy of an earlier attempt delivered a row the latest attempt
    /// then failed; the index kept it although the destination had it.
    #[test]
    fn a_failure_of_the_latest_attempt_that_an_earlier_one_delivered_is_delivered() {
        let earlier = earlier();
        let carried = FailedRow {
            carried_over: true,
            ..failed("c", 4)
        };
        let latest = [failed("d", 4), carried, failed("other", 4)];
        let ledger = earlier.delivered_among(&latest);
        assert_eq!(ledger.delivered, vec![key("d")]);
        assert_eq!(ledger.recovered, vec![key("c")]);
        assert!(ledger.failed.is_empty() && ledger.retrying.is_empty());
    }
}
