//! The sync's lock and a run's way into delivery: take the lock, open the run record
//! for a planning attempt (the first, a resumed one, one after an abandon), record the
//! attempt's plan, abandon a planning that failed, or release a lock that names a run
//! which is not open.

use aws_sdk_dynamodb::{
    error::SdkError,
    types::{ReturnValue, Update},
};

use super::{became_settled, generation_is, run_sk, state_key, sync_pk, RunStore};
use crate::{
    aws::{
        item::{get_n, get_s, n, s},
        AwsError,
    },
    domain::{
        ids::{RunId, SyncId},
        run::{Acquired, PlanSummary, RunRecord, RunStatus, SyncState},
        timestamp,
    },
};

impl RunStore {
    /// Takes the sync's lock for `run`, unless another run holds it. A retried
    /// invocation of the same run gets it again (resuming), so a crashed sync-start
    /// never leaves a sync locked.
    pub async fn acquire(&self, sync: &SyncId, run: &RunId) -> Result<Acquired, AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(state_key()))
            .update_expression("SET open_run = :run, open_since = :now")
            .condition_expression("attribute_not_exists(open_run) OR open_run = :run")
            .expression_attribute_values(":run", s(run.as_str()))
            .expression_attribute_values(":now", s(timestamp::rfc3339(timestamp::now())))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Acquired::Acquired {
                cursor: output.attributes.as_ref().and_then(|a| get_s(a, "cursor")),
                watermark_ms: output
                    .attributes
                    .as_ref()
                    .filter(|a| a.contains_key("watermark"))
                    .map(|a| get_n(a, "watermark")),
            }),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                let state = self.state(sync).await?;
                match state.open_run {
                    Some(open_run) => Ok(Acquired::Busy { open_run }),
                    None => Err(AwsError::response(
                        "DynamoDB.UpdateItem",
                        "lock condition failed but no run is open; retry",
                    )),
                }
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Reads a sync's state (strongly consistent).
    pub async fn state(&self, sync: &SyncId) -> Result<SyncState, AwsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(state_key()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DynamoDB.GetItem", e))?;
        let Some(item) = output.item else {
            return Ok(SyncState::default());
        };
        Ok(SyncState {
            open_run: get_s(&item, "open_run").and_then(|r| RunId::parse(r).ok()),
            open_since: get_s(&item, "open_since").and_then(|t| timestamp::parse_rfc3339(&t)),
            cursor: get_s(&item, "cursor"),
            watermark_ms: item
                .contains_key("watermark")
                .then(|| get_n(&item, "watermark")),
            last_run: get_s(&item, "last_run").and_then(|r| RunId::parse(r).ok()),
        })
    }

    /// Releases the sync's lock if it still names `run`, and only then (a conditional
    /// update: a lock another run has taken since is left alone). For a lock that names
    /// a run which is not open — one already closed, whose late or duplicate start took
    /// the lock again, or one abandoned or never recorded. Returns whether this call
    /// released it.
    pub async fn release(&self, sync: &SyncId, run: &RunId) -> Result<bool, AwsError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(state_key()))
            .update_expression("REMOVE open_run, open_since")
            .condition_expression("open_run = :run")
            .expression_attribute_values(":run", s(run.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(false)
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Opens the run for a planning attempt and returns its record. A new run gets its
    /// record in `planning` state, attempt ([`RunRecord::generation`]) 0. A run still
    /// planning (a retried or duplicate invocation resuming it) or abandoned (planned
    /// again) gets the next attempt: its plan counters and settled hint start afresh,
    /// and whatever an earlier attempt sent or recorded counts for nothing any more. A
    /// run delivering or closed is returned as it is. Each attempt restarts the
    /// planning clock (`planning_since`), so the finalizer never abandons an attempt
    /// still within an invocation's lifetime.
    pub async fn open_run(&self, sync: &SyncId, run: &RunId) -> Result<RunRecord, AwsError> {
        self.open_run_within(sync, run, None).await
    }

    /// [`Self::open_run`], recording the run's deadline: `deadline` after its planning
    /// attempt begins (each attempt plans afresh, so each gets the whole of it; `None`
    /// records no deadline).
    pub async fn open_run_within(
        &self,
        sync: &SyncId,
        run: &RunId,
        deadline: Option<std::time::Duration>,
    ) -> Result<RunRecord, AwsError> {
        let started = timestamp::now();
        let now = timestamp::rfc3339(started);
        let deadline_at = deadline
            .and_then(|d| time::Duration::try_from(d).ok())
            .and_then(|d| started.checked_add(d))
            .map(timestamp::rfc3339);
        let mut put = self.client.put_item().table_name(&self.table);
        if let Some(deadline_at) = &deadline_at {
            put = put.item("deadline", s(deadline_at));
        }
        let result = put
            .item("pk", s(sync_pk(sync)))
            .item("sk", s(run_sk(run)))
            .item("run_id", s(run.as_str()))
            .item("sync_id", s(sync.as_str()))
            .item("status", s(RunStatus::Planning.as_str()))
            .item("started_at", s(&now))
            .item("planning_since", s(&now))
            .item("generation", n(0))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                if let Some(record) = self
                    .plan_again(sync, run, &now, deadline_at.as_deref())
                    .await?
                {
                    return Ok(record);
                }
            }
            Err(err) => return Err(AwsError::sdk("DynamoDB.PutItem", err)),
        }
        self.run(sync, run)
            .await?
            .ok_or_else(|| AwsError::response("DynamoDB.GetItem", "run record vanished"))
    }

    /// Starts the next planning attempt of a run that is planning or abandoned; `None`
    /// when it is neither (delivering or closed: left as it is).
    async fn plan_again(
        &self,
        sync: &SyncId,
        run: &RunId,
        now: &str,
        deadline_at: Option<&str>,
    ) -> Result<Option<RunRecord>, AwsError> {
        let (set_deadline, remove_deadline) = match deadline_at {
            Some(_) => (", deadline = :deadline", ""),
            None => ("", " deadline,"),
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)));
        if let Some(deadline_at) = deadline_at {
            update = update.expression_attribute_values(":deadline", s(deadline_at));
        }
        let result = update
            .update_expression(format!(
                "SET #status = :planning, planning_since = :now, #generation = if_not_exists(#generation, :zero) + :one{set_deadline} \
                 REMOVE{remove_deadline} enqueued, rejected, rejected_by_code, carried_over, waiting, cursor_after, watermark_after, pending_objects, source_objects, settled_hint, abandon_reason, closed_at, close_claim, close_claimed_at, close_index_through, close_rejection_chunks",
            ))
            .condition_expression("#status IN (:planning, :abandoned)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_values(":planning", s(RunStatus::Planning.as_str()))
            .expression_attribute_values(":abandoned", s(RunStatus::Abandoned.as_str()))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(output
                .attributes
                .map(|item| super::parse_run(&item, sync, run))),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(None)
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err)),
        }
    }

    /// Marks a run whose planning attempt `generation` failed as abandoned and releases
    /// the sync — only while the run is still planning under that attempt: a run
    /// already delivering (another invocation of the same event recorded its plan),
    /// closed, or planned again by a later attempt is never abandoned. Its cursor is not
    /// advanced and the index is untouched, so the next run reads the same source and
    /// carries the same failed keys: nothing is lost. A retried invocation of the same
    /// event plans the run again. Returns whether this call abandoned it.
    pub async fn abandon(
        &self,
        sync: &SyncId,
        run: &RunId,
        generation: u32,
        reason: &str,
    ) -> Result<bool, AwsError> {
        let run_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .update_expression(
                "SET #status = :abandoned, abandon_reason = :reason, closed_at = :now",
            )
            .condition_expression(format!(
                "#status = :planning AND {}",
                generation_is(generation)
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_values(":abandoned", s(RunStatus::Abandoned.as_str()))
            .expression_attribute_values(":planning", s(RunStatus::Planning.as_str()))
            .expression_attribute_values(":generation", n(generation))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", s(timestamp::rfc3339(timestamp::now())))
            .build()
            .map_err(|e| AwsError::response("DynamoDB.TransactWriteItems", e.to_string()))?;
        let state_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(state_key()))
            .update_expression("REMOVE open_run, open_since")
            .condition_expression("open_run = :run")
            .expression_attribute_values(":run", s(run.as_str()))
            .build()
            .map_err(|e| AwsError::response("DynamoDB.TransactWriteItems", e.to_string()))?;
        // Canceled: the run is no longer planning (planned, abandoned or closed by
        // another invocation), or the sync is not locked by it.
        self.update_run_and_state(run_update, state_update).await
    }

    /// Records that planning attempt `generation` of `run` begins enqueueing rows.
    ///
    /// Its rows may then be at the destination while a later attempt plans the run
    /// again: a delivery invocation that read the run record before the later attempt
    /// began goes on sending for as long as the function's timeout lets it, and its
    /// ledger item lands after that. The later attempt reads what earlier attempts
    /// settled only once those invocations have ended (see sync-start's re-plan), and
    /// only when this mark says there may have been any.
    pub async fn mark_sending(
        &self,
        sync: &SyncId,
        run: &RunId,
        generation: u32,
    ) -> Result<(), AwsError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .update_expression("SET sending_attempt = :generation")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":generation", n(generation))
            .send()
            .await
            .map_err(|err| AwsError::sdk("DynamoDB.UpdateItem", err))?;
        Ok(())
    }

    /// Records the plan of attempt `plan.generation` and moves the run to `delivering`.
    /// Returns whether every row already looks settled (see
    /// [`RunProgress::became_settled`]), as when delivery finished the rows while they
    /// were still being planned, or nothing was enqueued; or
    /// [`PlanNotRecorded::NotPlanning`] when the run is no longer planning under that
    /// attempt (another invocation of the same event recorded its plan first or planned
    /// the run again, or the run was abandoned).
    pub async fn mark_planned(
        &self,
        sync: &SyncId,
        run: &RunId,
        plan: &PlanSummary<'_>,
    ) -> Result<bool, PlanNotRecorded> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(sync)))
            .key("sk", s(run_sk(run)))
            .condition_expression(format!(
                "#status = :planning AND {}",
                generation_is(plan.generation)
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_values(":generation", n(plan.generation))
            .expression_attribute_values(":planning", s(RunStatus::Planning.as_str()))
            .expression_attribute_values(":delivering", s(RunStatus::Delivering.as_str()))
            .expression_attribute_values(":enqueued", n(plan.enqueued))
            .expression_attribute_values(":rejected", n(plan.rejected))
            .expression_attribute_values(":carried", n(plan.carried_over))
            .expression_attribute_values(":waiting", n(plan.waiting))
            .expression_attribute_values(":objects", n(plan.source_objects))
            .expression_attribute_values(":pending_objects", n(plan.pending_objects));
        let mut expression = "SET #status = :delivering, enqueued = :enqueued, rejected = :rejected, carried_over = :carried, waiting = :waiting, source_objects = :objects, pending_objects = :pending_objects".to_owned();
        if let Some(watermark) = plan.watermark_after {
            expression.push_str(", watermark_after = :watermark");
            update = update.expression_attribute_values(":watermark", n(watermark));
        }
        if let Some(codes) = plan.rejected_by_code {
            expression.push_str(", rejected_by_code = :by_code");
            update = update.expression_attribute_values(
                ":by_code",
                aws_sdk_dynamodb::types::AttributeValue::M(
                    codes
                        .iter()
                        .map(|(code, count)| (code.clone(), n(count)))
                        .collect(),
                ),
            );
        }
        if let Some(cursor) = plan.cursor_after {
            expression.push_str(", cursor_after = :cursor");
            update = update.expression_attribute_values(":cursor", s(cursor));
        }
        let output = update
            .update_expression(expression)
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match output {
            Ok(output) => Ok(became_settled(&output, 0)),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Err(PlanNotRecorded::NotPlanning)
            }
            Err(err) => Err(AwsError::sdk("DynamoDB.UpdateItem", err).into()),
        }
    }
}

/// Why [`RunStore::mark_planned`] recorded no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanNotRecorded {
    /// The run is no longer planning under this attempt: another invocation of the
    /// same event recorded its plan first or planned the run again, or the run was
    /// abandoned. This attempt's plan counts for nothing; the caller stops without
    /// abandoning anything.
    #[error("the run is no longer planning; another invocation planned it or it was abandoned")]
    NotPlanning,
    /// The update failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
}
