//! A destination's daily API budget, counted where every caller of the destination sees
//! it (Salesforce's `Sforce-Limit-Info: api-usage=used/limit`).
//!
//! A call **reserves** its place before it is sent and gives it back when answered,
//! with the usage the answer reported. It may go only while the last reading's `used`,
//! plus the calls reserved and not yet given back, plus itself stays within `share ×
//! limit`. Until the first reading, one call at a time goes (it reads the figure).
//! Once a reading is past the share, one call goes again after [`BUDGET_RECHECK`] to
//! read a fresh figure (the org's usage is a rolling 24-hour window), so a stopped
//! destination spends at most one call per recheck.
//!
//! Where the count lives decides what "every caller" means:
//! - [`LocalBudget`]: this process's requests in flight (unit tests, one process);
//! - the runs table (`crate::aws::budget::SharedBudget`): every delivery invocation of
//!   the destination, across Lambda's execution environments, which share no memory.
//!   Delivery uses this one, so the reserve holds however many invocations run at once.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

/// How long a reading past the budget stops calls before one call re-reads it.
pub const BUDGET_RECHECK: Duration = Duration::from_secs(300);

/// The usage an answer reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiReading {
    /// Calls the org used in its window.
    pub used: u64,
    /// The org's limit.
    pub limit: u64,
}

/// Whether `used` + `reserved` + one more call stays within `share × limit` (a limit of
/// 0 is read as no limit).
fn within_share(reading: ApiReading, reserved: u64, share: f64) -> bool {
    let committed = reading.used.saturating_add(reserved).saturating_add(1);
    reading.limit == 0 || committed as f64 <= share * reading.limit as f64
}

/// Whether one more call may be reserved, given the last reading and its age (`None`:
/// no reading yet) and the calls reserved and not yet given back; otherwise how long
/// to wait before asking again. The one rule of every budget, wherever it keeps count.
pub fn admit(
    reading: Option<(ApiReading, Duration)>,
    in_flight: u64,
    share: f64,
) -> Result<(), Duration> {
    let Some((reading, age)) = reading else {
        // Until the first reading, one call at a time (it reads the figure).
        return if in_flight == 0 {
            Ok(())
        } else {
            Err(Duration::from_secs(1))
        };
    };
    if within_share(reading, in_flight, share) {
        return Ok(());
    }
    if age >= BUDGET_RECHECK && in_flight == 0 {
        // One call re-reads the rolling figure.
        return Ok(());
    }
    if within_share(reading, 0, share) {
        // The rest of the budget is held by calls in flight: ask again soon.
        return Err(Duration::from_secs(1));
    }
    Err(BUDGET_RECHECK
        .saturating_sub(age)
        .max(Duration::from_secs(1)))
}

/// A reserved call. Give it back with [`CallBudget::release`]; a ticket dropped
/// unreleased (the call's future was cancelled) is given back by its budget's own rule
/// (at once in-process, at the lease's end in the runs table).
pub struct Ticket {
    /// The in-process count it gives back when dropped (`None`: counted elsewhere).
    _local: Option<LocalTicket>,
}

struct LocalTicket {
    state: Arc<Mutex<LocalState>>,
    _first_reading: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for LocalTicket {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

impl Ticket {
    /// A ticket of a budget that keeps its count elsewhere.
    pub fn remote() -> Self {
        Self { _local: None }
    }
}

/// Where a destination's calls are counted against its API budget.
pub trait CallBudget: Send + Sync {
    /// Reserves one call within `share` of the limit, or says how long to wait before
    /// asking again.
    fn reserve(&self, share: f64) -> BoxFuture<'_, Result<Ticket, Duration>>;

    /// Gives a reserved call back, with the usage its answer reported (if it did).
    fn release(&self, ticket: Ticket, reading: Option<ApiReading>) -> BoxFuture<'_, ()>;
}

#[derive(Debug, Default)]
struct LocalState {
    reading: Option<(ApiReading, Instant)>,
    in_flight: u64,
}

/// The budget counted in this process: its requests in flight share one count.
#[derive(Default)]
pub struct LocalBudget {
    state: Arc<Mutex<LocalState>>,
    /// Held by the one call in flight while there is no reading yet.
    first_reading: Arc<tokio::sync::Mutex<()>>,
}

impl LocalBudget {
    fn state(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CallBudget for LocalBudget {
    fn reserve(&self, share: f64) -> BoxFuture<'_, Result<Ticket, Duration>> {
        Box::pin(async move {
            let first_reading = if self.state().reading.is_none() {
                Some(self.first_reading.clone().lock_owned().await)
            } else {
                None
            };
            // The check and the count are one step under the lock, so concurrent
            // requests never spend the same remainder twice.
            let mut state = self.state();
            let reading = state
                .reading
                .map(|(reading, read_at)| (reading, read_at.elapsed()));
            admit(reading, state.in_flight, share)?;
            state.in_flight = state.in_flight.saturating_add(1);
            Ok(Ticket {
                _local: Some(LocalTicket {
                    state: self.state.clone(),
                    _first_reading: first_reading,
                }),
            })
        })
    }

    fn release(&self, ticket: Ticket, reading: Option<ApiReading>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(reading) = reading {
                self.state().reading = Some((reading, Instant::now()));
            }
            // The reading is recorded before the call stops counting as in flight.
            drop(ticket);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_in_flight_count_against_the_reading() {
        let budget = LocalBudget::default();
        let first = budget
            .reserve(0.9)
            .await
            .expect("the first call reads the figure");
        budget
            .release(first, Some(ApiReading { used: 7, limit: 10 }))
            .await;
        // 90% of 10 is 9: two calls may be in flight over a reading of 7, not three.
        let a = budget.reserve(0.9).await.expect("8 of 9");
        let b = budget.reserve(0.9).await.expect("9 of 9");
        // 10 of 9: the rest is held by calls in flight, so ask again soon.
        assert_eq!(
            budget.reserve(0.9).await.err(),
            Some(Duration::from_secs(1)),
            "10 of 9"
        );
        drop(a);
        let c = budget
            .reserve(0.9)
            .await
            .expect("a dropped ticket is given back");
        drop((b, c));
    }

    #[test]
    fn the_share_of_a_reading() {
        let reading = ApiReading {
            used: 26,
            limit: 30,
        };
        assert!(within_share(reading, 0, 0.9));
        assert!(!within_share(reading, 1, 0.9));
        assert!(within_share(ApiReading { used: 99, limit: 0 }, 5, 0.9));
    }
}
