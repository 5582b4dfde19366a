//! Operator commands that read or change what a sync stored: `resync rejections` (a
//! run's rejections: exact counts by reason and the stored sample), `resync objects`
//! (pending and skipped source objects) and `resync skip-object`.

use resync_shared::{
    aws::runs::RunStore,
    domain::{rejections::SampledRejection, run::RunRecord},
    resources::Resources,
    RunId, SyncId,
};

/// A run's rejections as `resync rejections` prints them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRejections {
    /// The sync.
    pub sync_id: String,
    /// The run.
    pub run_id: String,
    /// Where the run is.
    pub status: String,
    /// Rejected rows in all.
    pub rejected: u64,
    /// Rejected rows by reason code (exact).
    pub by_code: std::collections::BTreeMap<String, u64>,
    /// The stored sample: the first rejections of each code, with object, line, code,
    /// reason, key (when the row had a usable one) and whether the index keeps it.
    pub sample: Vec<SampledRejection>,
}

/// Reads the rejections of `run` of `sync` (by default the open run, else the last
/// closed one) from the stack's runs table.
pub async fn rejections(
    sdk: &aws_config::SdkConfig,
    stack: &str,
    sync: &SyncId,
    run: Option<RunId>,
) -> anyhow::Result<RunRejections> {
    let resources = Resources::for_stack(stack);
    let runs = RunStore::new(aws_sdk_dynamodb::Client::new(sdk), &resources.runs_table);
    let run = match run {
        Some(run) => run,
        None => {
            let state = runs.state(sync).await?;
            state
                .open_run
                .or(state.last_run)
                .ok_or_else(|| anyhow::anyhow!("sync {sync} has no run yet"))?
        }
    };
    let record: RunRecord = runs
        .run(sync, &run)
        .await?
        .ok_or_else(|| anyhow::anyhow!("sync {sync} has no run {run}"))?;
    let sample = runs.rejection_sample(&run, record.generation).await?;
    Ok(RunRejections {
        sync_id: sync.to_string(),
        run_id: run.to_string(),
        status: record.status.as_str().to_owned(),
        rejected: record.rejected,
        by_code: record.rejected_by_code,
        sample,
    })
}

/// The text form: a line of counts, one per code, then the sample.
pub fn rejections_table(report: &RunRejections) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} of sync {} ({}): {} rejected",
        report.run_id, report.sync_id, report.status, report.rejected
    );
    for (code, count) in &report.by_code {
        let _ = writeln!(out, "  {count:>10}  {code}");
    }
    if !report.sample.is_empty() {
        let _ = writeln!(out, "sample (the first of each code):");
    }
    for sampled in &report.sample {
        let r = &sampled.rejection;
        let key = match (&r.key, sampled.indexed) {
            (Some(key), true) => format!(" key {key} (in the failed-row index)"),
            (Some(key), false) => format!(" key {key}"),
            (None, _) => " no key (not in the failed-row index)".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} {} line {}{key}: {}",
            r.code, r.object, r.line, r.reason
        );
    }
    out
}

/// Who is calling, for the record of a skip: `by` when given; otherwise the caller's
/// AWS identity (STS `GetCallerIdentity`, which needs no permission) against AWS, or
/// the OS user against an emulator (`AWS_ENDPOINT_URL`).
pub async fn caller(sdk: &aws_config::SdkConfig, by: Option<String>) -> String {
    if let Some(by) = by.filter(|b| !b.trim().is_empty()) {
        return by;
    }
    let os_user = || {
        std::env::var("USER")
            .or_else(|_| std::env::var("USERNAME"))
            .map(|user| format!("os-user:{user}"))
            .unwrap_or_else(|_| "unknown".to_owned())
    };
    if sdk.endpoint_url().is_some() {
        return os_user();
    }
    match aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
    {
        Ok(identity) => identity.arn.unwrap_or_else(os_user),
        Err(_) => os_user(),
    }
}

/// Skips a pending source object of `sync`: recorded with who, when and why; the sync
/// no longer reads that version of it.
pub async fn skip_object(
    sdk: &aws_config::SdkConfig,
    stack: &str,
    sync: &SyncId,
    object: &str,
    by: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let resources = Resources::for_stack(stack);
    let runs = RunStore::new(aws_sdk_dynamodb::Client::new(sdk), &resources.runs_table);
    runs.skip_object(sync, object, by, reason).await?;
    Ok(())
}

/// The source objects `sync` keeps a record of: pending and skipped ones, and with
/// `all` the ones read within the lookback window too.
pub async fn objects(
    sdk: &aws_config::SdkConfig,
    stack: &str,
    sync: &SyncId,
    all: bool,
) -> anyhow::Result<Vec<resync_shared::aws::runs::StoredObject>> {
    let resources = Resources::for_stack(stack);
    let runs = RunStore::new(aws_sdk_dynamodb::Client::new(sdk), &resources.runs_table);
    let mut objects: Vec<_> = runs
        .objects(sync)
        .await?
        .into_iter()
        .filter(|o| all || o.status != "read")
        .collect();
    objects.sort_by(|a, b| a.object.cmp(&b.object));
    Ok(objects)
}
