//! A destination's API budget counted in the runs table (`pk = budget#{destination}`,
//! `sk = budget`), so every delivery invocation of the destination — each in its own
//! execution environment, sharing no memory — reserves from one count
//! ([`crate::destination::budget`] has the rule).
//!
//! The item holds the latest reading (`api_used`, `api_limit`, `read_at`, epoch
//! seconds) and the calls reserved and not yet given back (`in_flight`, with
//! `lease_until`). A call reserves by reading the item (strongly consistent) and adding
//! itself to `in_flight` on the condition that neither the count nor the reading moved
//! meanwhile (another invocation's reservation makes it read again). An answer records
//! its reading *before* its call leaves `in_flight`, and a reading only replaces a
//! smaller one (or one a minute old: the window rolls), so at any moment every call the
//! org has counted is in the stored reading or still in `in_flight`: the reserve holds
//! across invocations. An invocation that dies holding a reservation leaves `in_flight`
//! one too high until no call reserved for [`CALL_LEASE`]; then the count is reset.
//! That errs on the side of the reserve. Costs one read and one write per reserved call
//! and two writes per answer — a call carries up to 200 records.

use std::time::Duration;

use aws_sdk_dynamodb::{error::SdkError, operation::update_item::UpdateItemError, Client};
use futures::future::BoxFuture;
use time::OffsetDateTime;

use super::{
    item::{get_n, n, s, Item},
    AwsError,
};
use crate::destination::budget::{admit, ApiReading, CallBudget, Ticket};

/// How long the reservations in flight count without a new one: longer than a call
/// (the request timeout) and the delivery function's timeout.
pub const CALL_LEASE: Duration = Duration::from_secs(180);

/// After this, a smaller reading replaces the stored one (the org's window rolled).
const READING_KEEPS: i64 = 60;

/// Conditional attempts of one reservation before it waits like a full budget.
const RESERVE_ATTEMPTS: usize = 8;

const SK: &str = "budget";

/// One destination's budget in the runs table.
#[derive(Clone)]
pub struct SharedBudget {
    client: Client,
    table: String,
    pk: String,
}

/// The item as read.
#[derive(Debug, Default)]
struct Seen {
    reading: Option<(ApiReading, i64)>,
    in_flight: Option<u64>,
    lease_until: i64,
}

fn seen(item: Option<&Item>) -> Seen {
    let Some(item) = item else {
        return Seen::default();
    };
    let reading = item.contains_key("read_at").then(|| {
        (
            ApiReading {
                used: get_n(item, "api_used"),
                limit: get_n(item, "api_limit"),
            },
            get_n::<i64>(item, "read_at"),
        )
    });
    Seen {
        reading,
        in_flight: item
            .contains_key("in_flight")
            .then(|| get_n::<u64>(item, "in_flight")),
        lease_until: get_n(item, "lease_until"),
    }
}

/// Whether a call may be reserved over what was seen at `now`, or the wait.
fn decide(seen: &Seen, share: f64, now: i64) -> Result<(), Duration> {
    let reading = seen.reading.map(|(reading, read_at)| {
        let age = u64::try_from(now.saturating_sub(read_at)).unwrap_or(0);
        (reading, Duration::from_secs(age))
    });
    admit(reading, seen.in_flight.unwrap_or(0), share)
}

/// Whether a conditional update was applied: `false` when its condition failed.
fn applied<R>(result: Result<R, SdkError<UpdateItemError>>) -> Result<bool, AwsError> {
    match result {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(err)) if err.err().is_conditional_check_failed_exception() => {
            Ok(false)
        }
        Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
    }
}

impl SharedBudget {
    /// The budget of `destination` in the runs table `table`.
    pub fn new(client: Client, table: impl Into<String>, destination: &str) -> Self {
        Self {
            client,
            table: table.into(),
            pk: format!("budget#{destination}"),
        }
    }

    /// An update of the budget's item.
    fn update(
        &self,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.pk))
            .key("sk", s(SK))
    }

    async fn read(&self) -> Result<Seen, AwsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&self.pk))
            .key("sk", s(SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.GetItem", e))?;
        Ok(seen(output.item.as_ref()))
    }

    /// One reservation attempt: `Ok(Some(()))` reserved, `Ok(None)` the item moved
    /// meanwhile (read again), `Err(wait)` not now.
    async fn try_reserve(&self, share: f64) -> Result<Option<()>, Result<Duration, AwsError>> {
        let seen = self.read().await.map_err(Err)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let in_flight = seen.in_flight.unwrap_or(0);
        if in_flight > 0 && seen.lease_until < now {
            // Nothing reserved for a whole lease: what is still counted is what dead
            // invocations left. Reset it (if nobody reserved meanwhile).
            let reset = self
                .update()
                .update_expression("SET in_flight = :zero")
                .condition_expression("lease_until = :seen")
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":seen", n(seen.lease_until))
                .send()
                .await;
            if applied(reset).map_err(Err)? {
                tracing::warn!(budget = %self.pk, calls = in_flight, "API budget reservations of invocations that ended without giving them back were reset");
            }
            return Ok(None);
        }
        decide(&seen, share, now).map_err(Ok)?;
        let lease = now.saturating_add(CALL_LEASE.as_secs() as i64);
        let mut update = self
            .update()
            .update_expression("ADD in_flight :one SET lease_until = :lease")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":lease", n(lease));
        let in_flight_unchanged = match seen.in_flight {
            Some(count) => {
                update = update.expression_attribute_values(":in_flight", n(count));
                "in_flight = :in_flight"
            }
            None => "attribute_not_exists(in_flight)",
        };
        let reading_unchanged = match seen.reading {
            Some((reading, read_at)) => {
                update = update
                    .expression_attribute_values(":used", n(reading.used))
                    .expression_attribute_values(":read_at", n(read_at));
                "api_used = :used AND read_at = :read_at"
            }
            None => "attribute_not_exists(read_at)",
        };
        let reserved = update
            .condition_expression(format!("{in_flight_unchanged} AND {reading_unchanged}"))
            .send()
            .await;
        Ok(applied(reserved).map_err(Err)?.then_some(()))
    }

    async fn record_reading(&self, reading: ApiReading) -> Result<(), AwsError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let recorded = self
            .update()
            .update_expression("SET api_used = :used, api_limit = :limit, read_at = :now")
            .condition_expression(
                "attribute_not_exists(api_used) OR api_used <= :used OR read_at <= :old",
            )
            .expression_attribute_values(":used", n(reading.used))
            .expression_attribute_values(":limit", n(reading.limit))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":old", n(now.saturating_sub(READING_KEEPS)))
            .send()
            .await;
        // Not applied: a larger reading is there already, and it counts this call too.
        applied(recorded).map(|_| ())
    }

    async fn give_back(&self) -> Result<(), AwsError> {
        let given = self
            .update()
            .update_expression("ADD in_flight :minus_one")
            .condition_expression("in_flight > :zero")
            .expression_attribute_values(":minus_one", n(-1))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        // Not applied: reset meanwhile (a lease ran out), nothing to give back.
        applied(given).map(|_| ())
    }
}

impl CallBudget for SharedBudget {
    fn reserve(&self, share: f64) -> BoxFuture<'_, Result<Ticket, Duration>> {
        Box::pin(async move {
            for _ in 0..RESERVE_ATTEMPTS {
                match self.try_reserve(share).await {
                    Ok(Some(())) => return Ok(Ticket::remote()),
                    Ok(None) => continue,
                    Err(Ok(wait)) => return Err(wait),
                    Err(Err(err)) => {
                        // No count, no call: the rows wait as for a full budget.
                        tracing::warn!(budget = %self.pk, error = %err, "the API budget could not be read; the call waits");
                        return Err(Duration::from_secs(5));
                    }
                }
            }
            // Contended by other invocations all along: ask again soon.
            Err(Duration::from_secs(1))
        })
    }

    fn release(&self, _ticket: Ticket, reading: Option<ApiReading>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(reading) = reading {
                if let Err(err) = self.record_reading(reading).await {
                    tracing::warn!(budget = %self.pk, error = %err, "the API budget's reading was not recorded");
                }
            }
            if let Err(err) = self.give_back().await {
                tracing::warn!(budget = %self.pk, error = %err, "a reserved call was not given back; it counts until the lease ends");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::budget::BUDGET_RECHECK;

    fn reading(used: u64, limit: u64, read_at: i64) -> Option<(ApiReading, i64)> {
        Some((ApiReading { used, limit }, read_at))
    }

    #[test]
    fn reservations_count_against_the_reading() {
        let now = 1_000_000;
        let first = Seen::default();
        assert_eq!(decide(&first, 0.9, now), Ok(()));
        let reading_pending = Seen {
            in_flight: Some(1),
            ..Seen::default()
        };
        assert!(
            decide(&reading_pending, 0.9, now).is_err(),
            "one first call"
        );
        let mut seen = Seen {
            reading: reading(25, 30, now),
            in_flight: Some(1),
            lease_until: now + 10,
        };
        assert_eq!(decide(&seen, 0.9, now), Ok(()), "27 of 27");
        seen.in_flight = Some(2);
        assert_eq!(decide(&seen, 0.9, now), Err(Duration::from_secs(1)));
        seen.reading = reading(27, 30, now - 10);
        seen.in_flight = Some(0);
        assert_eq!(
            decide(&seen, 0.9, now),
            Err(BUDGET_RECHECK - Duration::from_secs(10))
        );
        seen.reading = reading(27, 30, now - 301);
        assert_eq!(decide(&seen, 0.9, now), Ok(()), "one recheck");
        seen.in_flight = Some(1);
        assert!(decide(&seen, 0.9, now).is_err(), "one recheck at a time");
    }
}
