//! [`schedule`]: the local stand-in for the EventBridge schedule rules, running each
//! named sync when it is due.

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

/// After a failed run, how soon its sync is run again: the deployment's finalizer
/// schedule, which would have driven the run left open to its close by then (the local
/// run does that first, then starts the next).
pub const AGAIN_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Runs each of `syncs` on its `rate(...)` schedule until `stop` (the local stand-in for
/// the EventBridge rules). `cron(...)` schedules are run once at start. A run that
/// fails is tried again after [`AGAIN_AFTER_FAILURE`] (or its period, if shorter).
pub async fn schedule(
    runtime: &LocalRuntime,
    syncs: &[SyncId],
    stop: Arc<AtomicBool>,
    on_run: &(dyn Fn(&SyncId, anyhow::Result<LocalRun>) + Sync),
) {
    let mut next: HashMap<&SyncId, Instant> =
        syncs.iter().map(|sync| (sync, Instant::now())).collect();
    while !stop.load(Ordering::SeqCst) {
        for sync in syncs {
            let due = next.get(sync).is_some_and(|at| Instant::now() >= *at);
            if !due {
                continue;
            }
            let period = runtime
                .config
                .sync(sync)
                .and_then(|s| resync_shared::config::rate_period(&s.schedule));
            let result = runtime.run_sync(sync, &|_| {}).await;
            let again = match (&result, period) {
                (Err(_), Some(period)) => Some(period.min(AGAIN_AFTER_FAILURE)),
                (Err(_), None) => Some(AGAIN_AFTER_FAILURE),
                (Ok(_), period) => period,
            };
            on_run(sync, result);
            match again {
                Some(after) => {
                    next.insert(sync, Instant::now() + after);
                }
                None => {
                    next.remove(sync);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
