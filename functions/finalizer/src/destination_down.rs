//! The critical alert of a run that closed while its destination was down (its
//! circuit breaker open: see `resync_shared::aws::breaker`).

use resync_shared::{aws::report::Severity, config::SyncConfig, RunId};

use crate::Finalizer;

/// A run that closed while its destination's breaker is open ended with its rows
/// carried to the next run because the destination is down: a critical alert names the
/// destination (best effort: a failure to alert is logged, and the run stays closed).
pub(crate) async fn alert(deps: &Finalizer, sync: &SyncConfig, run: &RunId, failed: u64) {
    let state = match deps.breakers.state(&sync.destination).await {
        Ok(state) => state,
        Err(err) => {
            tracing::warn!(sync = %sync.id, error = %err, "cannot read the destination's breaker");
            return;
        }
    };
    if !state.is_open() {
        return;
    }
    let last_error = state.last_error.as_deref().unwrap_or("REQUEST_FAILED");
    tracing::error!(sync = %sync.id, run = %run, destination = %sync.destination, failures = state.failures, last_error, "the run closed while its destination is down");
    if !sync.alert.critical_on_run_error {
        return;
    }
    let detail = serde_json::json!({
        "run_id": run.as_str(),
        "destination": sync.destination.as_str(),
        "failed_requests_in_a_row": state.failures,
        "last_error": last_error,
        "rows_carried_over": failed,
        "error": format!(
            "destination {} is down: {} requests in a row failed as a whole (last: {last_error}); run {run} closed with {failed} rows kept in the failed-row index for the next run",
            sync.destination, state.failures
        ),
    });
    let subject = format!(
        "destination {} of sync {} is down",
        sync.destination, sync.id
    );
    if let Err(err) = deps
        .reporter
        .alert(Severity::Critical, &sync.id, &subject, detail)
        .await
    {
        tracing::error!(sync = %sync.id, error = %err, "could not send the alert");
    }
}
