//! [`schedule`]: the local stand-in for the EventBridge schedule rules, running each
//! sync when it is due.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use resync_shared::SyncId;

use super::{LocalRun, LocalRuntime};

/// Runs every sync on its `rate(...)` schedule until `stop` (the local stand-in for the
/// EventBridge rules). `cron(...)` schedules are run once at start.
pub async fn schedule(
    runtime: &LocalRuntime,
    stop: Arc<AtomicBool>,
    on_run: &(dyn Fn(&SyncId, anyhow::Result<LocalRun>) + Sync),
) {
    let mut next: HashMap<SyncId, Instant> = runtime
        .config
        .syncs
        .iter()
        .map(|s| (s.id.clone(), Instant::now()))
        .collect();
    while !stop.load(Ordering::SeqCst) {
        for sync in &runtime.config.syncs {
            let due = next.get(&sync.id).is_some_and(|at| Instant::now() >= *at);
            if !due {
                continue;
            }
            let result = runtime.run_sync(&sync.id, &|_| {}).await;
            on_run(&sync.id, result);
            match resync_shared::config::rate_period(&sync.schedule) {
                Some(period) => {
                    next.insert(sync.id.clone(), Instant::now() + period);
                }
                None => {
                    next.remove(&sync.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
