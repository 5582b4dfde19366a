//! The close of a run planned again (see `resync_shared::domain::replan`): a key the
//! latest attempt failed that an earlier attempt delivered is delivered.

use resync_shared::{
    aws::{runs::RunStore, AwsError},
    domain::{ledger::RunTally, run::RunRecord},
};

/// Settles as delivered the latest attempt's failures whose key an earlier planning
/// attempt of the run delivered (a late copy of that attempt, already at the
/// destination when the run was planned again): the destination has the row, so it
/// leaves the index and is not sent again by the next run (I2, I3). Nothing to read
/// for a run planned once.
pub(crate) async fn carry_earlier_deliveries(
    runs: &RunStore,
    record: &RunRecord,
    tally: &mut RunTally,
) -> Result<(), AwsError> {
    if record.generation == 0 || tally.failures().is_empty() {
        return Ok(());
    }
    let earlier = runs
        .earlier_attempts(&record.run_id, record.generation)
        .await?;
    let delivered = earlier.delivered_among(tally.failures());
    if !delivered.is_empty() {
        tracing::info!(
            sync = %record.sync_id,
            run = %record.run_id,
            keys = delivered.settled(),
            "failures of the latest planning attempt that an earlier one delivered count as delivered"
        );
        tally.add(delivered);
    }
    Ok(())
}
