//! Planning one attempt of a run: the objects the source cursor says to read, read in
//! two passes (duplicate keys, then rows), merged with the failed-row index and sent;
//! rejections recorded as they come; what was made of each object recorded with the
//! plan, so that the run's close moves the cursor (see
//! [`resync_shared::domain::cursor`]).

use std::sync::Arc;

use resync_shared::{
    aws::{report::Severity, runs::PlanNotRecorded, s3_source::ObjectReadError},
    config::SyncConfig,
    crash_points::CrashPoint,
    domain::{
        cursor::{Decision, ListedObject, ObjectOutcome, SourceCursor},
        ledger::RecordedRejection,
        merge::{DuplicateFinder, Planned, RunPlanner},
        run::PlanSummary,
        source::{encoding_for, Encoding, Rejection, SourceReadError},
    },
    RunId, SyncId,
};

use crate::{
    record::Recorder, replan::Replan, send::Sender, SyncStart, SyncStartError, SyncStartOutcome,
};

/// Where the sync's source starts, as its state holds it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Start {
    /// The name cursor of a sync last run before watermarks.
    pub(crate) legacy_after: Option<String>,
    /// The watermark.
    pub(crate) watermark_ms: Option<i64>,
}

/// Pending objects named in an alert, at most.
const ALERT_OBJECTS: usize = 20;

/// One object this attempt reads.
struct ToRead {
    name: Arc<str>,
    listed: ListedObject,
    encoding: Encoding,
    /// Lines an earlier run planned of this version (0: none).
    skip_through: u64,
}

/// Why an object was not read whole.
struct Damage {
    code: &'static str,
    reason: String,
}

/// The rejection that stands for an object not read whole (one per object per run).
fn object_rejection(object: &str, line: u64, damage: &Damage) -> RecordedRejection {
    RecordedRejection {
        rejection: Rejection {
            key: None,
            object: object.to_owned(),
            line,
            code: damage.code.into(),
            reason: damage.reason.clone(),
        },
        first_failed_at: None,
        in_index: false,
        payload: None,
    }
}

fn read_damage(err: &ObjectReadError) -> Damage {
    Damage {
        code: "unreadable_object",
        reason: format!(
            "the object could not be read whole ({err}); it stays pending and is read again every run"
        ),
    }
}

/// The sync's cursor: its watermark, and the object records that still matter (the
/// finalizer deletes those of read objects that left the window).
async fn load_cursor(
    deps: &SyncStart,
    sync: &SyncConfig,
    start: Start,
) -> Result<SourceCursor, SyncStartError> {
    let mut cursor = SourceCursor {
        watermark_ms: start.watermark_ms,
        legacy_after: start.legacy_after,
        lookback_ms: sync.source.lookback_ms(),
        records: Default::default(),
    };
    for stored in deps.runs.objects(&sync.id).await? {
        let Some(record) = stored.record() else {
            continue;
        };
        if cursor.keeps(&record) {
            cursor.records.insert(record.name.clone(), record);
        }
    }
    Ok(cursor)
}

/// Plans attempt `generation` of the run: reads the objects the cursor says to read,
/// merges them with the failed-row index, enqueues the rows and records the
/// rejections, the objects' outcomes and the plan.
pub(crate) async fn plan(
    deps: &SyncStart,
    sync: &SyncConfig,
    run_id: &RunId,
    generation: u32,
    start: Start,
    earlier_deliveries_end: Option<time::OffsetDateTime>,
) -> Result<SyncStartOutcome, SyncStartError> {
    let queue = deps.queue(&sync.destination).await?;
    let bucket = sync
        .source
        .bucket
        .clone()
        .unwrap_or_else(|| deps.resources.source_bucket.clone());

    let listed = deps.source.list(&bucket, &sync.source.prefix).await?;
    let cursor = load_cursor(deps, sync, start).await?;
    let mut rejections = Recorder::new(&deps.runs, run_id, generation);
    let mut outcomes: Vec<ObjectOutcome> = Vec::new();
    let mut to_read = Vec::new();
    let mut candidates = Vec::new();
    for object in &listed {
        let Decision::Read { skip_through } = cursor.decide(object) else {
            continue;
        };
        candidates.push(object);
        match encoding_for(&object.name, sync.source.format) {
            Some(encoding) => to_read.push(ToRead {
                name: Arc::from(object.name.as_str()),
                listed: object.clone(),
                encoding,
                skip_through,
            }),
            None => {
                let damage = Damage {
                    code: "unknown_format",
                    reason: "the object's name does not say its format (.jsonl, .ndjson, .json, .csv, optionally .gz); set the sync's source.format. It stays pending and is read again every run".into(),
                };
                rejections.push(object_rejection(&object.name, 0, &damage));
                outcomes.push(outcome(object, Some(&damage), skip_through));
            }
        }
    }
    let source_objects = candidates.len() as u64;
    // A sync's first run with a watermark, after runs that kept a name cursor: the
    // objects that cursor passed were read by those runs. They count towards the
    // watermark, and those within its window are recorded as read, or the next run
    // would take them for new.
    let presumed: Vec<&ListedObject> = if cursor.watermark_ms.is_none()
        && cursor.legacy_after.is_some()
    {
        listed
            .iter()
            .filter(|o| !cursor.records.contains_key(&o.name) && cursor.decide(o) == Decision::Skip)
            .collect()
    } else {
        Vec::new()
    };
    // Every object this run tries counts, read whole or not (one not read whole is
    // kept pending by its record, whatever the watermark).
    let watermark_after =
        cursor.watermark_after(candidates.iter().copied().chain(presumed.iter().copied()));
    if let Some(watermark) = watermark_after {
        let window_start = watermark.saturating_sub(sync.source.lookback_ms());
        outcomes.extend(
            presumed
                .iter()
                .filter(|o| o.last_modified_ms >= window_start)
                .map(|o| outcome(o, None, 0)),
        );
    }

    // Pass 1: find keys that occur more than once in this run's source. An object that
    // cannot be read here is not read in pass 2 either.
    let mut finder = DuplicateFinder::default();
    let mut readable = Vec::with_capacity(to_read.len());
    for object in to_read {
        let (observed, read) = deps
            .source
            .observe_keys(
                &bucket,
                &object.listed,
                object.encoding,
                &sync.primary_key,
                finder,
            )
            .await;
        finder = observed;
        match read {
            Ok(()) => readable.push(object),
            Err(err) => {
                let damage = read_damage(&err);
                rejections.push(object_rejection(&object.name, 0, &damage));
                outcomes.push(outcome(&object.listed, Some(&damage), object.skip_through));
            }
        }
    }

    // Pass 2: plan and enqueue; rejections are counted, sampled and written out chunk
    // by chunk as they come.
    let index = deps.index.load_for_planning(&sync.id).await?;
    let mut planner = RunPlanner::new(index, finder.duplicates());
    let mut replan = Replan::load(
        &deps.runs,
        &deps.config,
        sync,
        run_id,
        generation,
        earlier_deliveries_end,
    )
    .await?;
    // A later attempt waits for this one's deliveries before it reads their ledgers.
    deps.runs.mark_sending(&sync.id, run_id, generation).await?;
    // Rows travel packed in segments of the destination's batch size if it says so.
    let packing = deps
        .config
        .destination(&sync.destination)
        .filter(|destination| destination.packing)
        .map(|destination| destination.effective_batch_size());
    let mut sender = Sender::new(
        &queue,
        run_id,
        generation,
        &sync.id,
        &deps.crash_points,
        packing,
    );
    sender.replan = Some(&mut replan);
    for object in &readable {
        let mut planned_through = object.skip_through;
        let mut damage = None;
        match deps
            .source
            .stream(&bucket, &object.listed, object.encoding, &sync.primary_key)
            .await
        {
            Err(err) => {
                let found = read_damage(&ObjectReadError::Aws(err));
                rejections.push(object_rejection(&object.name, 0, &found));
                damage = Some(found);
            }
            Ok((mut rows, reader)) => {
                while let Some(chunk) = rows.recv().await {
                    for event in chunk {
                        match event {
                            // Planned by an earlier run that read this version this far.
                            Ok(row) if row.line <= object.skip_through => {}
                            Ok(row) => {
                                planned_through = planned_through.max(row.line);
                                match planner.plan(row, &object.name) {
                                    Planned::Enqueue(planned) => {
                                        sender.push(planned, &mut rejections.log).await?
                                    }
                                    Planned::Reject(rejection, carried) => {
                                        rejections.push(RecordedRejection {
                                            rejection,
                                            first_failed_at: carried
                                                .as_ref()
                                                .map(|c| c.first_failed_at.clone()),
                                            in_index: carried.is_some(),
                                            payload: None,
                                        })
                                    }
                                }
                            }
                            // The parser could not read on (corrupt compression, a CSV it
                            // gives up on): the object is not read whole.
                            Err(rejection) if rejection.code == "unreadable_object" => {
                                damage = Some(Damage {
                                    code: "unreadable_object",
                                    reason: format!(
                                        "{}; it stays pending and is read again every run",
                                        rejection.reason
                                    ),
                                });
                                rejections.push(record(rejection));
                            }
                            Err(rejection) if rejection.line <= object.skip_through => {}
                            Err(rejection) => {
                                planned_through = planned_through.max(rejection.line);
                                rejections.push(record(rejection));
                            }
                        }
                    }
                    rejections.flush().await?;
                }
                if let Err(err) = join(reader).await {
                    let found = read_damage(&ObjectReadError::Read(err));
                    rejections.push(object_rejection(&object.name, 0, &found));
                    damage = Some(found);
                }
            }
        }
        outcomes.push(outcome(&object.listed, damage.as_ref(), planned_through));
    }
    // The failed keys the source did not mention, retried from their stored payloads,
    // read back from the index page by page (planning holds keys, not payloads).
    let mut leftovers = planner.leftovers();
    if !leftovers.is_empty() {
        deps.index
            .read_payloads(&sync.id, async |key, payload| {
                if let Some(planned) = leftovers.plan(&key, payload) {
                    sender.push(planned, &mut rejections.log).await?;
                    rejections.flush().await?;
                }
                Ok::<(), SyncStartError>(())
            })
            .await?;
    }
    let waiting = leftovers.waiting();
    let sent = sender.finish(&mut rejections.log).await?;
    let (enqueued, carried_over) = replan
        .record(&deps.runs, &sync.id, run_id, generation, sent)
        .await?;
    let (rejected, rejected_by_code) = rejections.finish().await?;
    if !outcomes.is_empty() {
        deps.runs
            .record_object_outcomes(run_id, generation, &outcomes)
            .await?;
    }

    let pending: Vec<&ObjectOutcome> = outcomes.iter().filter(|o| !o.whole).collect();
    let plan = PlanSummary {
        generation,
        enqueued,
        rejected,
        rejected_by_code: Some(&rejected_by_code),
        carried_over,
        waiting: waiting as u64,
        source_objects,
        cursor_after: None,
        watermark_after,
        pending_objects: pending.len() as u64,
    };
    let settled = match deps.runs.mark_planned(&sync.id, run_id, &plan).await {
        Ok(settled) => settled,
        Err(PlanNotRecorded::NotPlanning) => {
            // Another invocation of the same event (a duplicate, or Lambda's retry)
            // recorded its plan first or planned the run again, or the run was
            // abandoned: this one's plan does not count (delivery drops its rows), and
            // abandoning now would abandon the other's run.
            tracing::warn!(sync = %sync.id, run = %run_id, generation, enqueued, "the run was planned by another invocation of its event; this plan is not recorded and its rows are dropped");
            return Ok(SyncStartOutcome::AlreadyPlanned {
                sync_id: sync.id.clone(),
                run_id: run_id.clone(),
            });
        }
        Err(PlanNotRecorded::Aws(err)) => return Err(err.into()),
    };
    deps.crash_points
        .reached(CrashPoint::SyncStartAfterMarkPlanned)?;
    if settled {
        deps.notice.send(&sync.id, run_id).await;
    }
    let missing: Vec<&str> = cursor
        .missing_pending(&listed)
        .into_iter()
        .map(|r| r.name.as_str())
        .collect();
    alert_pending(deps, &sync.id, run_id, &pending, &missing).await;
    tracing::info!(
        sync = %sync.id,
        run = %run_id,
        enqueued,
        rejected,
        carried_over,
        waiting,
        objects = source_objects,
        pending_objects = pending.len(),
        "run planned"
    );
    Ok(SyncStartOutcome::Started {
        sync_id: sync.id.clone(),
        run_id: run_id.clone(),
        enqueued,
        rejected,
        carried_over,
        source_objects,
        pending_objects: pending.len() as u64,
    })
}

fn record(rejection: Rejection) -> RecordedRejection {
    RecordedRejection {
        rejection,
        first_failed_at: None,
        in_index: false,
        payload: None,
    }
}

fn outcome(object: &ListedObject, damage: Option<&Damage>, planned_through: u64) -> ObjectOutcome {
    ObjectOutcome {
        name: object.name.clone(),
        etag: object.etag.clone(),
        last_modified_ms: object.last_modified_ms,
        whole: damage.is_none(),
        planned_through: if damage.is_some() { planned_through } else { 0 },
        code: damage.map(|d| d.code.to_owned()),
        reason: damage.map(|d| d.reason.clone()),
    }
}

/// A critical alert for source objects not read whole (this run's, and pending ones
/// that are no longer listed): data the sync has not read, until each is read whole
/// or skipped (`resync skip-object`). Raised by every run while any is pending.
async fn alert_pending(
    deps: &SyncStart,
    sync: &SyncId,
    run: &RunId,
    pending: &[&ObjectOutcome],
    missing: &[&str],
) {
    if pending.is_empty() && missing.is_empty() {
        return;
    }
    tracing::error!(sync = %sync, run = %run, pending = pending.len(), missing = missing.len(), "source objects not read whole stay pending");
    let objects: Vec<serde_json::Value> = pending
        .iter()
        .take(ALERT_OBJECTS)
        .map(|o| serde_json::json!({"object": o.name, "code": o.code, "reason": o.reason}))
        .collect();
    let detail = serde_json::json!({
        "run_id": run.as_str(),
        "pending_objects": pending.len(),
        "objects": objects,
        "missing_pending_objects": missing.iter().take(ALERT_OBJECTS).collect::<Vec<_>>(),
        "action": "repair and re-upload each object under the same name, or skip it: resync skip-object --sync SYNC --object OBJECT --reason WHY",
    });
    let subject = format!(
        "sync {sync}: {} source objects not read whole",
        pending.len() + missing.len()
    );
    if let Err(err) = deps
        .reporter
        .alert(Severity::Critical, sync, &subject, detail)
        .await
    {
        tracing::error!(sync = %sync, error = %err, "could not send the alert");
    }
}

async fn join(
    reader: tokio::task::JoinHandle<Result<(), SourceReadError>>,
) -> Result<(), SourceReadError> {
    match reader.await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}
