//! Local stand-ins for the vendor APIs resync's destinations speak, written from the
//! vendors' public documentation and strict about what matters to resync: auth and
//! token expiry, the record limit per call, per-record result shapes and order, lock
//! errors, limit headers and 429s. The end-to-end suites (`e2e/`) and the vendor suite
//! (`vendors/`) drive resync's real destinations against them over real HTTP.
//!
//! - [`salesforce::SalesforceServer`]: OAuth 2.0 token endpoint (client credentials and
//!   JWT bearer, RS256 verified against the app's certificate key) and sObject
//!   Collections upsert by external ID.
//! - [`hubspot::HubspotServer`]: CRM v3 batch upsert by a unique property, 207
//!   multi-status errors, the ten-second rolling rate limit.
//!
//! The fakes live in `fakes/`, one file a vendor; what they share (the per-record
//! [`Behaviour`], the [`VendorStats`] they keep, the loopback server) is here.

#[path = "fakes/hubspot.rs"]
pub mod hubspot;
#[path = "fakes/salesforce.rs"]
pub mod salesforce;

use std::collections::{HashMap, HashSet};

/// How a vendor server treats one record (by its external id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Refused with the vendor's lock error (retryable). With `Some(n)`, released after
    /// `n` refused attempts in a run; with `None`, held until the next run.
    Locked {
        /// Refused attempts before release.
        until_attempt: Option<u32>,
    },
    /// Refused with a validation error (permanent) during the current run only.
    RejectThisRun {
        /// The vendor's error code or category.
        code: String,
    },
}

/// What a vendor server saw, run by run.
#[derive(Debug, Clone, Default)]
pub struct VendorStats {
    /// Accepted write calls in each run (not counting refused ones).
    pub calls: Vec<u64>,
    /// Records received by accepted calls in each run (duplicates included).
    pub records: Vec<u64>,
    /// Distinct ids received in each run.
    pub ids: Vec<HashSet<String>>,
    /// The largest accepted call, in records.
    pub largest_call: usize,
    /// Ids written at least once.
    pub written: HashSet<String>,
    /// Records received in a run for an id already written in an earlier run (I3).
    pub received_after_written: u64,
    /// Calls refused as malformed (bad body, too many records, wrong shape).
    pub malformed_calls: u64,
    /// Calls refused for authentication (unknown or expired token).
    pub unauthorized_calls: u64,
    /// Calls refused by a rate limit (429 or the vendor's limit code).
    pub rate_limited_calls: u64,
    /// Token requests (Salesforce), successful ones.
    pub tokens_issued: u64,
    /// For each accepted call: the distinct values of the grouping field it carried.
    pub groups_per_call: Vec<HashSet<String>>,
}

#[derive(Debug, Default)]
struct Ledger {
    run: usize,
    behaviours: HashMap<String, Behaviour>,
    attempts_this_run: HashMap<String, u32>,
    written_in: HashMap<String, Vec<usize>>,
    stats: VendorStats,
}

impl Ledger {
    fn new() -> Self {
        let mut ledger = Self::default();
        ledger.stats.calls.push(0);
        ledger.stats.records.push(0);
        ledger.stats.ids.push(HashSet::new());
        ledger
    }

    fn next_run(&mut self) {
        self.run += 1;
        self.stats.calls.push(0);
        self.stats.records.push(0);
        self.stats.ids.push(HashSet::new());
        self.attempts_this_run.clear();
        self.behaviours.retain(|_, b| {
            matches!(
                b,
                Behaviour::Locked {
                    until_attempt: Some(_)
                }
            )
        });
    }

    fn accept_call(&mut self, records: usize, groups: HashSet<String>) {
        *self.stats.calls.last_mut().expect("a run") += 1;
        *self.stats.records.last_mut().expect("a run") += records as u64;
        self.stats.largest_call = self.stats.largest_call.max(records);
        self.stats.groups_per_call.push(groups);
    }

    /// Decides one record: `None` written, `Some(behaviour)` refused.
    fn record(&mut self, id: &str) -> Option<Behaviour> {
        let run = self.run;
        self.stats
            .ids
            .last_mut()
            .expect("a run")
            .insert(id.to_owned());
        if self
            .written_in
            .get(id)
            .is_some_and(|runs| runs.iter().any(|&r| r < run))
        {
            self.stats.received_after_written += 1;
        }
        let attempts = {
            let count = self.attempts_this_run.entry(id.to_owned()).or_insert(0);
            *count += 1;
            *count
        };
        match self.behaviours.get(id).cloned() {
            Some(Behaviour::Locked { until_attempt })
                if until_attempt.is_none_or(|n| attempts <= n) =>
            {
                Some(Behaviour::Locked { until_attempt })
            }
            Some(reject @ Behaviour::RejectThisRun { .. }) => Some(reject),
            _ => {
                self.written_in.entry(id.to_owned()).or_default().push(run);
                self.stats.written.insert(id.to_owned());
                None
            }
        }
    }
}

async fn serve(
    app: axum::Router,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}
