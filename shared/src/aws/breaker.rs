//! A destination's circuit breaker, one item per destination in the runs table
//! (`pk = breaker#{destination}`, `sk = breaker`), shared by every delivery invocation of
//! the destination.
//!
//! A destination that is down (every request failing as a whole: a 5xx, a timeout, a
//! refused connection) would otherwise burn every row's attempts in a few backoff rounds
//! and keep the queue's in-flight limit full. The item counts consecutive whole-request
//! failures (`failures`); at the destination's `retry.pause_after_failed_requests` the
//! breaker opens until `open_until` (`retry.pause_secs` later): no request is sent and
//! rows are deferred without spending attempts ([`Gate::Paused`]). When the pause ends,
//! one invocation at a time takes the probe by a conditional update (`probe_until`, a
//! lease) and sends one request ([`Gate::Probe`]); an answer closes the breaker, a whole
//! failure opens it again. Waits stay within the run's deadline like every other wait.
//! The item is read once per invocation and written only when requests fail as a whole,
//! or when the first answer after failures resets it: a healthy destination costs one
//! read per invocation.

use std::time::Duration;

use aws_sdk_dynamodb::{error::SdkError, types::ReturnValue, Client};
use time::OffsetDateTime;

use super::{
    item::{get_n, get_s, n, s},
    AwsError,
};
use crate::domain::{ids::DestinationId, retry::RetryPolicy};

/// How long a probe's lease lasts: an invocation that took the probe and died leaves it
/// to another after this (the delivery function's timeout).
pub const PROBE_LEASE: Duration = Duration::from_secs(60);

/// A destination's breaker as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BreakerState {
    /// Consecutive whole-request failures.
    pub failures: u32,
    /// Paused until then (epoch seconds); `None` when closed.
    pub open_until: Option<i64>,
    /// The last whole failure's error code.
    pub last_error: Option<String>,
}

impl BreakerState {
    /// Whether the breaker has opened (paused, or waiting for a probe to answer).
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// What an invocation may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Everything (`failures`: whole failures counted so far, 0 when healthy).
    Closed {
        /// Consecutive whole failures before this invocation.
        failures: u32,
    },
    /// Nothing: rows wait until `until` (the pause's end, or the probe's lease).
    Paused {
        /// When the next probe may go.
        until: OffsetDateTime,
        /// The breaker as read.
        state: BreakerState,
    },
    /// One request: this invocation holds the probe.
    Probe {
        /// The breaker as read.
        state: BreakerState,
    },
}

/// What an invocation's requests came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestsOutcome {
    /// Requests that failed as a whole.
    pub whole_failures: u32,
    /// Whether any request was answered (a row delivered, or refused for itself).
    pub answered: bool,
    /// The last whole failure's code.
    pub last_error: Option<String>,
}

/// The breakers of a stack's destinations (the runs table).
#[derive(Clone)]
pub struct Breakers {
    client: Client,
    table: String,
}

fn pk(destination: &DestinationId) -> String {
    format!("breaker#{destination}")
}

const SK: &str = "breaker";

impl Breakers {
    /// Wraps a client and the runs table's name.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Reads a destination's breaker (strongly consistent).
    pub async fn state(&self, destination: &DestinationId) -> Result<BreakerState, AwsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk(destination)))
            .key("sk", s(SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.GetItem", e))?;
        Ok(output
            .item
            .map_or_else(BreakerState::default, |item| BreakerState {
                failures: get_n(&item, "failures"),
                open_until: item
                    .contains_key("open_until")
                    .then(|| get_n::<i64>(&item, "open_until")),
                last_error: get_s(&item, "last_error"),
            }))
    }

    /// What an invocation starting at `now` may send: everything while the breaker is
    /// closed; nothing while it is open; one request when the pause has ended and this
    /// invocation took the probe.
    pub async fn gate(
        &self,
        destination: &DestinationId,
        now: OffsetDateTime,
    ) -> Result<Gate, AwsError> {
        let state = self.state(destination).await?;
        let Some(open_until) = state.open_until else {
            return Ok(Gate::Closed {
                failures: state.failures,
            });
        };
        let now_secs = now.unix_timestamp();
        if now_secs < open_until {
            let until = OffsetDateTime::from_unix_timestamp(open_until).unwrap_or(now);
            return Ok(Gate::Paused { until, state });
        }
        let lease = now_secs.saturating_add(PROBE_LEASE.as_secs() as i64);
        let claimed = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk(destination)))
            .key("sk", s(SK))
            .update_expression("SET probe_until = :lease")
            .condition_expression(
                "open_until = :seen AND (attribute_not_exists(probe_until) OR probe_until <= :now)",
            )
            .expression_attribute_values(":lease", n(lease))
            .expression_attribute_values(":seen", n(open_until))
            .expression_attribute_values(":now", n(now_secs))
            .send()
            .await;
        match claimed {
            Ok(_) => Ok(Gate::Probe { state }),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                // Another invocation probes: wait a moment and read again.
                let until = now + Duration::from_secs(1);
                Ok(Gate::Paused { until, state })
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Records what an invocation's requests came to: an answer closes the breaker (a
    /// write only when it had counted failures); whole failures are added, and at the
    /// policy's count — or when a probe failed — the breaker opens for its pause.
    pub async fn record(
        &self,
        destination: &DestinationId,
        gate: &Gate,
        outcome: &RequestsOutcome,
        policy: &RetryPolicy,
        now: OffsetDateTime,
    ) -> Result<(), AwsError> {
        if policy.pause_after_failed_requests == 0 {
            return Ok(());
        }
        let had_failures = match gate {
            Gate::Closed { failures } => *failures > 0,
            Gate::Paused { .. } | Gate::Probe { .. } => true,
        };
        if outcome.answered {
            if had_failures {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(pk(destination)))
                    .key("sk", s(SK))
                    .update_expression("REMOVE failures, open_until, probe_until, last_error")
                    .send()
                    .await
                    .map_err(|e| AwsError::sdk("DynamoDB.UpdateItem", e))?;
                tracing::info!(destination = %destination, "the destination answers again; delivery resumes");
            }
            return Ok(());
        }
        if outcome.whole_failures == 0 {
            return Ok(());
        }
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk(destination)))
            .key("sk", s(SK))
            .update_expression("ADD failures :k SET last_error = :code")
            .expression_attribute_values(":k", n(outcome.whole_failures))
            .expression_attribute_values(
                ":code",
                s(outcome.last_error.as_deref().unwrap_or("REQUEST_FAILED")),
            )
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.UpdateItem", e))?;
        let failures: u32 = output
            .attributes
            .as_ref()
            .map_or(0, |item| get_n(item, "failures"));
        let probe_failed = matches!(gate, Gate::Probe { .. });
        if failures >= policy.pause_after_failed_requests || probe_failed {
            // Whole seconds, rounded up: the pause is never shorter than configured.
            let until = now
                .unix_timestamp()
                .saturating_add(i64::from(now.nanosecond() > 0))
                .saturating_add(i64::try_from(policy.pause_secs).unwrap_or(i64::MAX));
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(pk(destination)))
                .key("sk", s(SK))
                .update_expression("SET open_until = :until REMOVE probe_until")
                .expression_attribute_values(":until", n(until))
                .send()
                .await
                .map_err(|e| AwsError::sdk("DynamoDB.UpdateItem", e))?;
            tracing::warn!(destination = %destination, failures, pause_secs = policy.pause_secs, "the destination is down; delivery pauses");
        }
        Ok(())
    }
}
