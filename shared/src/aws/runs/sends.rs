//! The run's count of sends per key: how many times a row has gone to the destination
//! in the run, whichever of its messages sent it.
//!
//! A row may live as more than one message: SQS delivers a message twice, a delete SQS
//! refused leaves an original beside its delayed copy, a planning attempt re-sends
//! what an earlier one sent. Each message counts its own attempts
//! (`ApproximateReceiveCount` plus what it carries), so without a shared count each
//! would spend the whole threshold on its own and the destination would see the row
//! more often than the threshold allows (I4).
//!
//! The count is kept only for rows that fail: a planning attempt's message is counted
//! after its first answer, and only when it is to be retried (a clean run writes
//! nothing here); a message that may have a twin (received before, or a retry's copy)
//! is counted before it goes, on the condition that the count stays within the
//! threshold. Every count is raised to the sending message's own count of attempts when
//! that is higher, so it is at least what any of the row's messages has seen. A send
//! refused by a rate limit is given back (rate limits spend no attempt). One item per
//! key that failed at least once: `run#{run}` / `sends#{key}`, with the ledger's expiry.

use aws_sdk_dynamodb::{
    error::SdkError, operation::update_item::builders::UpdateItemFluentBuilder, types::ReturnValue,
};

use super::{expires_at, ledger_pk, RunStore};
use crate::{
    aws::{
        item::{get_n, n, s},
        AwsError,
    },
    domain::ids::{PrimaryKey, RunId},
};

const OPERATION: &str = "DynamoDB.UpdateItem";

/// How the sort key of a key's count begins (the key follows).
pub(super) const SENDS_PREFIX: &str = "sends#";

fn sends_sk(key: &PrimaryKey) -> String {
    format!("{SENDS_PREFIX}{}", key.as_str())
}

/// What counting one more send of a key came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendCount {
    /// The send is counted: the key's sends in the run, this one included.
    Counted(u32),
    /// The key's sends already reached the threshold: this one must not go.
    Spent,
}

impl RunStore {
    /// An update of the count item of `key` in `run` (its expiry renewed: `:expires`).
    fn update(&self, run: &RunId, key: &PrimaryKey) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(ledger_pk(run)))
            .key("sk", s(sends_sk(key)))
            .expression_attribute_values(":expires", expires_at())
    }

    /// Counts one more send of `key` in `run`, unless the key already had `max` sends,
    /// and raises the count to `attempt` (the sending message's own count of its
    /// attempts, this one included) when it is lower: the count is then at least what
    /// any message of the row has seen, even when an earlier send was never counted (a
    /// planning attempt's first send that was delivered, its ledger lost).
    pub async fn count_send(
        &self,
        run: &RunId,
        key: &PrimaryKey,
        attempt: u32,
        max: u32,
    ) -> Result<SendCount, AwsError> {
        self.add_send(run, key, attempt, Some(max)).await
    }

    /// Counts a send of `key` in `run` after its answer (a first send to be retried),
    /// raised to `attempt` like [`RunStore::count_send`].
    pub async fn count_sent(
        &self,
        run: &RunId,
        key: &PrimaryKey,
        attempt: u32,
    ) -> Result<(), AwsError> {
        self.add_send(run, key, attempt, None).await.map(|_| ())
    }

    /// Adds one send to the count of `key` in `run` (only while it is below `max`, if
    /// given) and raises it to `attempt` when lower.
    async fn add_send(
        &self,
        run: &RunId,
        key: &PrimaryKey,
        attempt: u32,
        max: Option<u32>,
    ) -> Result<SendCount, AwsError> {
        let mut update = self
            .update(run, key)
            .update_expression("ADD sends :one SET expires_at = :expires")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew);
        if let Some(max) = max {
            update = update
                .condition_expression("attribute_not_exists(sends) OR sends < :max")
                .expression_attribute_values(":max", n(max));
        }
        match update.send().await {
            Ok(output) => {
                let sends: u32 = output
                    .attributes
                    .as_ref()
                    .map_or(0, |item| get_n(item, "sends"));
                if sends == 0 {
                    return Err(AwsError::response(
                        OPERATION,
                        "the send count came back without its value",
                    ));
                }
                if sends < attempt {
                    self.raise_sends(run, key, attempt).await?;
                }
                Ok(SendCount::Counted(sends.max(attempt)))
            }
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(SendCount::Spent)
            }
            Err(err) => Err(AwsError::sdk(OPERATION, err)),
        }
    }

    /// Raises the count of `key` in `run` to `sends`, unless it is already as high.
    async fn raise_sends(&self, run: &RunId, key: &PrimaryKey, sends: u32) -> Result<(), AwsError> {
        let result = self
            .update(run, key)
            .update_expression("SET sends = :sends, expires_at = :expires")
            .condition_expression("attribute_not_exists(sends) OR sends < :sends")
            .expression_attribute_values(":sends", n(sends))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(())
            }
            Err(err) => Err(AwsError::sdk(OPERATION, err)),
        }
    }

    /// Gives back a counted send of `key` in `run` that a rate limit refused.
    pub async fn give_back_send(&self, run: &RunId, key: &PrimaryKey) -> Result<(), AwsError> {
        self.update(run, key)
            .update_expression("ADD sends :minus_one SET expires_at = :expires")
            .expression_attribute_values(":minus_one", n(-1))
            .send()
            .await
            .map_err(|err| AwsError::sdk(OPERATION, err))?;
        Ok(())
    }
}
