//! The ledger items of a run's earlier planning attempts, read for the carry of a run
//! planned again (see [`crate::domain::replan`]): sync-start reads them to plan the
//! next attempt, the finalizer to close the run.

use super::{ledger::LEDGER, sends::SENDS_PREFIX, RunStore};
use crate::{
    aws::{
        item::{get_n, get_s},
        AwsError,
    },
    domain::{
        ids::{PrimaryKey, RunId},
        ledger::BatchLedger,
        replan::EarlierAttempts,
    },
};

impl RunStore {
    /// What the attempts of run `run` before attempt `generation` settled and retried,
    /// and the run's count of sends per key (paged, strongly consistent); empty for a
    /// first attempt, without a read.
    pub async fn earlier_attempts(
        &self,
        run: &RunId,
        generation: u32,
    ) -> Result<EarlierAttempts, AwsError> {
        let mut earlier = EarlierAttempts::of_generations(generation);
        if generation == 0 {
            return Ok(earlier);
        }
        let mut pages = self.run_items(run, "batch#").send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let Some(body) = get_s(&item, LEDGER) else {
                continue;
            };
            let batch: BatchLedger = serde_json::from_str(&body).map_err(|e| {
                AwsError::response("DynamoDB.Query", format!("unreadable ledger item: {e}"))
            })?;
            if batch.generation < generation {
                earlier.add(batch);
            }
        }
        // The run's count of sends per key (only keys that failed at least once).
        let mut pages = self.run_items(run, SENDS_PREFIX).send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| AwsError::sdk("DynamoDB.Query", e))?;
            let key = get_s(&item, "sk")
                .and_then(|sk| sk.strip_prefix(SENDS_PREFIX).map(str::to_owned))
                .and_then(|key| PrimaryKey::parse(key).ok());
            if let Some(key) = key {
                earlier.add_sends(key, get_n(&item, "sends"));
            }
        }
        Ok(earlier)
    }
}
