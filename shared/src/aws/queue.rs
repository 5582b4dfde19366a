//! A destination's delivery queue (or its dead-letter queue) over SQS.
//!
//! Every batch call is checked entry by entry: SQS answers HTTP 200 with failed entries
//! inside, and a row dropped there would be a row lost.

use std::time::Duration;

use futures::StreamExt;

use aws_sdk_sqs::{
    error::ProvideErrorMetadata,
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
        MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
    },
    Client,
};

use super::AwsError;

/// Tries of one batch call (the first included) before its failed entries are given up.
const SEND_TRIES: u32 = 6;

/// The longest `DelaySeconds` SQS accepts (15 minutes).
pub const MAX_DELAY_SECONDS: u64 = crate::domain::retry::SQS_MAX_DELAY.as_secs();

/// The most message-body bytes one `SendMessageBatch` may carry. SQS refuses a larger
/// request whole (`BatchRequestTooLong`): 1 MiB today, 256 KiB where the old limit still
/// holds; the smaller is used, which is also every queue's largest message here.
pub const MAX_BATCH_BYTES: usize = 262_144;

/// Whether SQS refused a `SendMessageBatch` for its entries' content (a message or the
/// request too large, a parameter out of range), which no retry changes.
fn refused_for_its_entries<R>(
    err: &aws_sdk_sqs::error::SdkError<
        aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError,
        R,
    >,
) -> bool {
    matches!(
        err.code(),
        Some(
            "InvalidParameterValue"
                | "AWS.SimpleQueueService.BatchRequestTooLong"
                | "BatchRequestTooLong"
                | "InvalidMessageContents"
        )
    )
}

/// `DeleteMessageBatch` requests one [`WorkQueue::delete`] keeps in flight.
const DELETES_IN_FLIGHT: usize = 10;

/// Queues looked up by name once per container (a `GetQueueUrl` and a
/// `GetQueueAttributes` per queue, then cached).
#[derive(Debug)]
pub struct QueueDirectory {
    client: Client,
    resolved: tokio::sync::Mutex<std::collections::HashMap<String, WorkQueue>>,
}

impl QueueDirectory {
    /// An empty directory over an SQS client.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            resolved: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The queue of that name, resolved on first use.
    pub async fn get(&self, name: &str) -> Result<WorkQueue, AwsError> {
        let mut resolved = self.resolved.lock().await;
        if let Some(queue) = resolved.get(name) {
            return Ok(queue.clone());
        }
        let queue = WorkQueue::resolve(self.client.clone(), name).await?;
        resolved.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }
}

/// An SQS queue by URL.
#[derive(Debug, Clone)]
pub struct WorkQueue {
    client: Client,
    url: String,
    max_message_bytes: usize,
}

/// A message SQS would not take, with SQS's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    /// Index of the body in the call's input.
    pub index: usize,
    /// SQS's error code.
    pub code: String,
    /// SQS's message.
    pub message: String,
    /// Whether SQS blames the entry itself (it would refuse it again); otherwise the
    /// entry failed on SQS's side and was still failing after the retries.
    pub sender_fault: bool,
}

impl WorkQueue {
    /// Looks a queue up by name and reads its maximum message size.
    pub async fn resolve(client: Client, name: &str) -> Result<Self, AwsError> {
        let url = client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| AwsError::sdk("SQS.GetQueueUrl", e))?
            .queue_url
            .ok_or_else(|| AwsError::response("SQS.GetQueueUrl", "no QueueUrl in the answer"))?;
        let attributes = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .send()
            .await
            .map_err(|e| AwsError::sdk("SQS.GetQueueAttributes", e))?;
        let max_message_bytes = attributes
            .attributes
            .as_ref()
            .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
            .and_then(|v| v.parse().ok())
            .unwrap_or(262_144);
        Ok(Self {
            client,
            url,
            max_message_bytes,
        })
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The queue's largest message, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Sends up to 10 bodies — in one `SendMessageBatch`, or in several when together
    /// they exceed [`MAX_BATCH_BYTES`] — retrying failed entries that are not the
    /// sender's fault with backoff. Returns the entries SQS refused for good (a body
    /// larger than a message can be is among them, with SQS's reason).
    pub async fn send_batch(&self, bodies: &[String]) -> Result<Vec<Unsent>, AwsError> {
        self.send_batch_delayed(bodies, &[]).await
    }

    /// Like [`Self::send_batch`], with a per-message `DelaySeconds` (SQS takes at most
    /// 900 s; longer delays are capped). `delays` is empty or has one entry per body.
    pub async fn send_batch_delayed(
        &self,
        bodies: &[String],
        delays: &[Duration],
    ) -> Result<Vec<Unsent>, AwsError> {
        assert!(
            delays.is_empty() || delays.len() == bodies.len(),
            "one delay per body"
        );
        assert!(
            bodies.len() <= 10,
            "SendMessageBatch takes at most 10 entries"
        );
        let mut refused = Vec::new();
        let mut start = 0;
        while start < bodies.len() {
            // Consecutive bodies up to the request's byte limit (at least one each time).
            let mut end = start + 1;
            let mut bytes = bodies[start].len();
            while end < bodies.len() && bytes + bodies[end].len() <= MAX_BATCH_BYTES {
                bytes += bodies[end].len();
                end += 1;
            }
            match self.send_entries(bodies, delays, start..end).await {
                Ok(unsent) => refused.extend(unsent),
                // Nothing was sent yet: the whole call failed.
                Err(err) if start == 0 => return Err(err),
                // Earlier requests of this call were sent: only this one's entries
                // are unsent. An error here must not read as "nothing sent", or the
                // caller would keep rows whose copies are already on the queue.
                Err(err) => refused.extend((start..end).map(|index| Unsent {
                    index,
                    code: "RequestFailed".into(),
                    message: err.to_string(),
                    sender_fault: false,
                })),
            }
            start = end;
        }
        Ok(refused)
    }

    /// One `SendMessageBatch` of `bodies[range]` (entry ids are the bodies' indexes).
    async fn send_entries(
        &self,
        bodies: &[String],
        delays: &[Duration],
        range: std::ops::Range<usize>,
    ) -> Result<Vec<Unsent>, AwsError> {
        let mut pending: Vec<usize> = range.collect();
        let mut refused = Vec::new();
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=SEND_TRIES {
            let entries = pending
                .iter()
                .map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&bodies[i])
                        .set_delay_seconds(
                            delays
                                .get(i)
                                .map(|d| d.as_secs().min(MAX_DELAY_SECONDS) as i32),
                        )
                        .build()
                        .expect("id and body are set")
                })
                .collect::<Vec<_>>();
            let output = match self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(output) => output,
                // SQS refuses the request for what its entries are (one too large, a
                // delay out of range): it would refuse them again, and the other
                // requests of the call stand.
                Err(err) if refused_for_its_entries(&err) => {
                    let message =
                        aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
                    refused.extend(pending.iter().map(|&index| Unsent {
                        index,
                        code: err.code().unwrap_or("InvalidParameterValue").to_owned(),
                        message: message.clone(),
                        sender_fault: true,
                    }));
                    break;
                }
                Err(err) if attempt < SEND_TRIES => {
                    tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&err), attempt, "SendMessageBatch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    continue;
                }
                Err(err) => return Err(AwsError::sdk("SQS.SendMessageBatch", err)),
            };
            let mut retry = Vec::new();
            for failed in output.failed() {
                let Ok(index) = failed.id().parse::<usize>() else {
                    return Err(AwsError::response(
                        "SQS.SendMessageBatch",
                        format!("unknown entry id {} in the answer", failed.id()),
                    ));
                };
                if failed.sender_fault() || attempt == SEND_TRIES {
                    refused.push(Unsent {
                        index,
                        code: failed.code().to_owned(),
                        message: failed.message().unwrap_or_default().to_owned(),
                        sender_fault: failed.sender_fault(),
                    });
                } else {
                    retry.push(index);
                }
            }
            let answered = output.successful().len() + output.failed().len();
            if answered != pending.len() {
                return Err(AwsError::response(
                    "SQS.SendMessageBatch",
                    format!("{answered} results for {} entries", pending.len()),
                ));
            }
            if retry.is_empty() {
                break;
            }
            pending = retry;
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Ok(refused)
    }

    /// Receives up to 10 messages with their receive count.
    pub async fn receive(&self, max: i32, wait: Duration) -> Result<Vec<Message>, AwsError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| AwsError::sdk("SQS.ReceiveMessage", e))?;
        Ok(output.messages.unwrap_or_default())
    }

    /// Sets the visibility timeout of messages (backoff). Entries SQS failed on its own
    /// side are tried again, as [`WorkQueue::send_batch`]'s are; returns how many it
    /// still refused (those come back when their current timeout ends: later, never
    /// lost).
    pub async fn change_visibility(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<usize, AwsError> {
        let mut refused = 0;
        for chunk in entries.chunks(10) {
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            let mut delay = Duration::from_millis(50);
            for attempt in 1..=SEND_TRIES {
                let batch = pending
                    .iter()
                    .map(|&i| {
                        let (receipt, visibility) = &chunk[i];
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(receipt)
                            .visibility_timeout(visibility.as_secs() as i32)
                            .build()
                            .expect("id and receipt are set")
                    })
                    .collect::<Vec<_>>();
                let output = self
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(batch))
                    .send()
                    .await
                    .map_err(|e| AwsError::sdk("SQS.ChangeMessageVisibilityBatch", e))?;
                let failed = output
                    .failed()
                    .iter()
                    .map(|f| (f.id(), f.code(), f.sender_fault()));
                pending = entries_to_retry(
                    "ChangeMessageVisibility",
                    failed,
                    &pending,
                    attempt == SEND_TRIES,
                    &mut refused,
                );
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Ok(refused)
    }

    /// Deletes messages by receipt handle. Entries SQS failed on its own side are tried
    /// again; returns how many it still refused (those come back as copies).
    pub async fn delete(&self, receipts: &[String]) -> Result<usize, AwsError> {
        // Built eagerly: a lazy map in the stream's type would not be `Send` for
        // every lifetime, and the handlers' futures must be.
        let batches: Vec<_> = receipts
            .chunks(10)
            .map(|chunk| self.delete_batch(chunk))
            .collect();
        let mut outputs = futures::stream::iter(batches).buffer_unordered(DELETES_IN_FLIGHT);
        let mut refused = 0;
        while let Some(output) = outputs.next().await {
            refused += output?;
        }
        Ok(refused)
    }

    /// One `DeleteMessageBatch` of at most 10 receipts, and its retries.
    async fn delete_batch(&self, chunk: &[String]) -> Result<usize, AwsError> {
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        let mut refused = 0;
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=SEND_TRIES {
            let entries = pending
                .iter()
                .map(|&i| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&chunk[i])
                        .build()
                        .expect("id and receipt are set")
                })
                .collect::<Vec<_>>();
            let output = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| AwsError::sdk("SQS.DeleteMessageBatch", e))?;
            let failed = output
                .failed()
                .iter()
                .map(|f| (f.id(), f.code(), f.sender_fault()));
            pending = entries_to_retry(
                "DeleteMessage",
                failed,
                &pending,
                attempt == SEND_TRIES,
                &mut refused,
            );
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Ok(refused)
    }

    /// Approximate visible + in-flight messages.
    pub async fn depth(&self) -> Result<(u64, u64), AwsError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| AwsError::sdk("SQS.GetQueueAttributes", e))?;
        let get = |name: QueueAttributeName| {
            output
                .attributes
                .as_ref()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

/// Of a batch call's failed entries (`(id, code, sender_fault)`, ids being positions in
/// `pending`'s batch), the positions to try again: those SQS failed on its own side,
/// unless this was the `last_try`. The others are counted in `refused`, as is an id the
/// call was not sent.
fn entries_to_retry<'a>(
    operation: &'static str,
    failed: impl Iterator<Item = (&'a str, &'a str, bool)>,
    pending: &[usize],
    last_try: bool,
    refused: &mut usize,
) -> Vec<usize> {
    let mut retry = Vec::new();
    for (id, code, sender_fault) in failed {
        match id.parse::<usize>().ok().filter(|i| pending.contains(i)) {
            Some(position) if !sender_fault && !last_try => retry.push(position),
            _ => {
                tracing::warn!(code, operation, "SQS refused an entry");
                *refused += 1;
            }
        }
    }
    retry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sqs_failed_on_its_side_are_tried_again_until_the_last_try() {
        let failed = [
            ("0", "InternalError", false),
            ("3", "ReceiptHandleIsInvalid", true),
            ("7", "InternalError", false),
            ("9", "InternalError", false),
        ];
        let pending = [0, 3, 7];
        let mut refused = 0;
        let retry = entries_to_retry("Op", failed.into_iter(), &pending, false, &mut refused);
        assert_eq!(retry, [0, 7]);
        assert_eq!(refused, 2, "the sender's fault and an id never sent");

        let mut refused = 0;
        let retry = entries_to_retry("Op", failed.into_iter(), &pending, true, &mut refused);
        assert!(retry.is_empty());
        assert_eq!(refused, 4);
    }
}
