//! The carry of a run planned again (see `resync_shared::domain::replan`): keys an
//! earlier planning attempt settled are not sent again, keys it tried carry the
//! attempts they spent.

use resync_shared::{
    aws::{runs::RunStore, AwsError},
    config::{Config, SyncConfig},
    domain::{
        ids::{RunId, SyncId},
        merge::PlannedRow,
        replan::{EarlierAttempts, SettledWithoutSend},
        retry::RetryPolicy,
        run::RunRecord,
        timestamp,
    },
    resources::DELIVERY_FUNCTION_TIMEOUT_SECS,
};
use time::OffsetDateTime;

/// When every delivery invocation that may still send rows of the run's earlier
/// planning attempts has ended: `None` for a first attempt, or when no earlier attempt
/// began enqueueing rows.
///
/// A delivery invocation that read the run record before this attempt began goes on
/// sending for as long as the delivery function's timeout lets it, and writes its
/// ledger item after its answers; one that reads it later drops the earlier attempt's
/// messages unsent. Read before that, the earlier attempts' ledgers miss those sends,
/// and the row gets them on top of the threshold (I4), or a row one of them delivered
/// is sent again.
pub(crate) fn earlier_deliveries_end(record: &RunRecord) -> Option<OffsetDateTime> {
    if record.generation == 0 || record.sending_attempt.is_none() {
        return None;
    }
    let began = record.planning_since.unwrap_or_else(timestamp::now);
    Some(began + time::Duration::seconds(i64::from(DELIVERY_FUNCTION_TIMEOUT_SECS) + 1))
}

/// What this planning attempt takes over from the run's earlier attempts.
pub(crate) struct Replan {
    earlier: EarlierAttempts,
    max_attempts: u32,
    settled: SettledWithoutSend,
    /// Rows settled without a send, and how many of them came from the index.
    settled_rows: u64,
    settled_carried: u64,
}

impl Replan {
    /// Reads what the run's attempts before `generation` settled (nothing for a first
    /// attempt), once their deliveries have ended (`deliveries_end`, see
    /// [`earlier_deliveries_end`]).
    pub(crate) async fn load(
        runs: &RunStore,
        config: &Config,
        sync: &SyncConfig,
        run: &RunId,
        generation: u32,
        deliveries_end: Option<OffsetDateTime>,
    ) -> Result<Self, AwsError> {
        if let Some(end) = deliveries_end {
            let left = end - timestamp::now();
            if left.is_positive() {
                tracing::info!(sync = %sync.id, run = %run, generation, wait_secs = left.whole_seconds(), "planning again: waiting for the earlier attempts' deliveries to end before reading what they settled");
                tokio::time::sleep(left.try_into().unwrap_or_default()).await;
            }
        }
        let max_attempts = config.destination(&sync.destination).map_or_else(
            || RetryPolicy::default().max_attempts,
            |d| d.retry.max_attempts,
        );
        Ok(Self {
            earlier: runs.earlier_attempts(run, generation).await?,
            max_attempts,
            settled: SettledWithoutSend::default(),
            settled_rows: 0,
            settled_carried: 0,
        })
    }

    /// The row to send and the attempts it already spent in this run, or `None` when
    /// an earlier attempt settled it (it is recorded as settled by this one).
    pub(crate) fn route(&mut self, planned: PlannedRow) -> Option<(PlannedRow, u32)> {
        if self.earlier.is_empty() {
            return Some((planned, 0));
        }
        let carried = planned.carried.is_some();
        let carry = self.earlier.carry(&planned.key, self.max_attempts);
        let sent = self.settled.settle(planned, carry);
        if sent.is_none() {
            self.settled_rows += 1;
            self.settled_carried += u64::from(carried);
        }
        sent
    }

    /// Writes the rows settled without a send as a ledger item of attempt `generation`
    /// — before the plan is recorded, so the run's completeness counts them — and
    /// returns the plan's `(enqueued, carried_over)` with them added to the sent rows'.
    pub(crate) async fn record(
        self,
        runs: &RunStore,
        sync: &SyncId,
        run: &RunId,
        generation: u32,
        (sent, sent_carried): (u64, u64),
    ) -> Result<(u64, u64), AwsError> {
        let ledger = self.settled.into_ledger(generation);
        if !ledger.is_empty() {
            runs.record_batch(sync, run, &format!("replan-{generation:06}"), &ledger)
                .await?;
            tracing::info!(
                sync = %sync,
                run = %run,
                generation,
                delivered = ledger.delivered.len() + ledger.recovered.len(),
                failed = ledger.failed.len(),
                "rows an earlier planning attempt settled are not sent again"
            );
        }
        Ok((
            sent.saturating_add(self.settled_rows),
            sent_carried.saturating_add(self.settled_carried),
        ))
    }
}
