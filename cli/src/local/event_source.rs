//! The SQS event source mapping, locally: pollers that gather batches from a delivery
//! queue, invoke delivery with the `SqsEvent` Lambda would build, and delete what the
//! partial batch response allows — with the simulated crashes of [`Crashes`], and, at
//! the at-least-once plan's rate, a received batch handed to two invocations at once
//! (SQS may deliver a message twice, to two consumers).
//!
//! As on Lambda, an invocation runs at most the delivery function's timeout and its
//! messages stay hidden for the queue's visibility timeout, which outlasts it (the
//! deployment's rule, [`LocalOptions::queue_visibility_secs`]): a row is received again
//! only after its invocation is over, however slow the destination. Where Lambda would
//! leave the messages of an invocation that failed (a crash, a function error, a
//! timeout) hidden until that timeout ends, the runner gives them back after
//! [`LocalOptions::visibility_timeout_secs`], so a local run does not wait minutes for
//! them.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use resync_delivery::Delivery;
use resync_shared::resources::{QueueSettings, DELIVERY_FUNCTION_TIMEOUT_SECS};

use super::{
    at_least_once::{EventCopies, EventCopy},
    crashes::Crashes,
    lambda_invocation, HandlerClock, LocalOptions,
};

/// The running pollers of one destination queue.
pub(super) struct Pollers {
    stop: Arc<AtomicBool>,
    invocations: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Pollers {
    /// Starts the pollers of a delivery's queue, one per instance of the function (as
    /// many as its destination's concurrency): each poller invokes its own instance, so
    /// what an instance keeps in memory (a token, a rate-limit pause, the API budget's
    /// in-process count) is its own, as on Lambda, where concurrent invocations run in
    /// separate execution environments.
    pub(super) fn start(
        instances: &[Arc<Delivery>],
        crashes: Arc<Crashes>,
        copies: Arc<EventCopies>,
        clock: Arc<HandlerClock>,
        options: &LocalOptions,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let invocations = Arc::new(AtomicUsize::new(0));
        let tasks = instances
            .iter()
            .map(|delivery| {
                let poller = Poller {
                    invoker: Invoker {
                        delivery: delivery.clone(),
                        invocations: invocations.clone(),
                        crashes: crashes.clone(),
                        copies: copies.clone(),
                        clock: clock.clone(),
                        failed_batch_returns_after: Duration::from_secs(u64::from(
                            options.visibility_timeout_secs,
                        )),
                    },
                    stop: stop.clone(),
                    window: options.batching_window,
                    receives_in_flight: options.receives_in_flight.max(1),
                };
                tokio::spawn(poller.poll())
            })
            .collect();
        Self {
            stop,
            invocations,
            tasks,
        }
    }

    /// Whether a poller has stopped already (before [`Pollers::stop`], one only does on
    /// an error).
    pub(super) fn any_finished(&self) -> bool {
        self.tasks.iter().any(|poller| poller.is_finished())
    }

    /// Stops the pollers (each finishes its current batch and long poll) and returns
    /// the delivery invocations they made.
    pub(super) async fn stop(self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        for poller in self.tasks {
            poller.await.context("a delivery poller panicked")??;
        }
        Ok(self.invocations.load(Ordering::SeqCst))
    }
}

/// One poller of an event source mapping.
struct Poller {
    /// What its invocations work with.
    invoker: Invoker,
    /// Set when the pollers should stop.
    stop: Arc<AtomicBool>,
    /// The batching window.
    window: Duration,
    /// Receives kept in flight while the queue has a backlog (at least 1).
    receives_in_flight: usize,
}

/// What every delivery invocation of one destination's pollers shares.
#[derive(Clone)]
struct Invoker {
    delivery: Arc<Delivery>,
    /// Invocations made, counted across the pollers.
    invocations: Arc<AtomicUsize>,
    crashes: Arc<Crashes>,
    /// Extra copies of received batches.
    copies: Arc<EventCopies>,
    clock: Arc<HandlerClock>,
    /// When the messages of an invocation that failed become visible again.
    failed_batch_returns_after: Duration,
}

/// The longest a delivery invocation runs: Lambda stops it at the function's timeout.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(DELIVERY_FUNCTION_TIMEOUT_SECS as u64);

impl Poller {
    /// Gathers a batch (up to the mapping's batch size, within the batching window),
    /// invokes delivery with a real `SqsEvent`, and deletes exactly what the partial
    /// batch response did not list. An empty or unknown `itemIdentifier`, or a function
    /// error, fails the whole batch: nothing is deleted and the messages return when
    /// their visibility timeout ends.
    async fn poll(self) -> anyhow::Result<()> {
        let Self {
            invoker,
            stop,
            window,
            receives_in_flight,
        } = self;
        let delivery = &invoker.delivery;
        let settings = QueueSettings::for_destination(&delivery.destination_config);
        let batch_size = settings.event_batch_size as usize;
        let queue = &delivery.queue;
        let queue_arn = format!(
            "arn:aws:sqs:us-east-1:000000000000:{}",
            queue.url().rsplit('/').next().unwrap_or_default()
        );
        // The invocations of the last batch: one, or two when it was delivered twice.
        let mut running: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
        // Receives in flight. They outlive the batch that asked for them: when the window
        // ends first, what they bring starts the next batch (dropping one could lose the
        // messages it took for a whole visibility timeout).
        let mut receiving = futures::stream::FuturesUnordered::new();
        // Receives in flight at once: one while the queue looks empty (an idle poller costs
        // one long poll a second), more while receives come back full, as Lambda's pollers
        // scale with the backlog.
        let mut fan_out = 1;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if stopping && receiving.is_empty() {
                break;
            }
            let mut messages: Vec<aws_sdk_sqs::types::Message> = Vec::new();
            let mut window_ends: Option<tokio::time::Instant> = None;
            while messages.len() < batch_size {
                if !stopping {
                    // Long polls, as Lambda's pollers do; never more than the batch size.
                    while receiving.len() < fan_out
                        && messages.len() + 10 * receiving.len() < batch_size
                    {
                        let want = (batch_size - messages.len() - 10 * receiving.len()).min(10);
                        let queue = queue.clone();
                        receiving.push(async move {
                            queue.receive(want as i32, Duration::from_secs(1)).await
                        });
                    }
                }
                // The batch goes when it is full or its window ends, as Lambda invokes when
                // the batching window expires — not when the long poll in flight returns.
                let received = match window_ends {
                    Some(end) => tokio::select! {
                        received = futures::StreamExt::next(&mut receiving) => received,
                        () = tokio::time::sleep_until(end) => break,
                    },
                    None => futures::StreamExt::next(&mut receiving).await,
                };
                let Some(received) = received else { break };
                let received = match received {
                    Ok(received) => received,
                    Err(err) => {
                        // The poller stops: what it gathered goes back to the queue now.
                        let handles = messages.into_iter().filter_map(|m| m.receipt_handle);
                        invoker.give_back(handles.collect()).await;
                        return Err(err.into());
                    }
                };
                fan_out = if received.len() == 10 {
                    receives_in_flight
                } else {
                    1
                };
                messages.extend(received);
                if !messages.is_empty() && window_ends.is_none() {
                    window_ends = Some(tokio::time::Instant::now() + window);
                }
                if stop.load(Ordering::SeqCst) && !stopping {
                    break;
                }
            }
            if messages.is_empty() {
                continue;
            }
            // The next batch is gathered while this one's invocation runs, as Lambda's
            // pollers keep polling while functions run; at most one invocation per poller
            // (two for a batch delivered twice).
            for previous in running.drain(..) {
                previous.await.context("a delivery invocation panicked")??;
            }
            if invoker.copies.draw(EventCopy::DuplicateBatch) {
                tracing::warn!(
                    messages = messages.len(),
                    "the batch is delivered to two invocations"
                );
                running.push(tokio::spawn(
                    invoker.clone().invoke(messages.clone(), queue_arn.clone()),
                ));
            }
            running.push(tokio::spawn(
                invoker.clone().invoke(messages, queue_arn.clone()),
            ));
        }
        for previous in running {
            previous.await.context("a delivery invocation panicked")??;
        }
        Ok(())
    }
}

impl Invoker {
    /// One delivery invocation of a gathered batch, then the deletes the partial batch
    /// response allows.
    async fn invoke(
        self,
        messages: Vec<aws_sdk_sqs::types::Message>,
        queue_arn: String,
    ) -> anyhow::Result<()> {
        let event = sqs_event(messages, &queue_arn);
        let receipts: Vec<Receipt> = event
            .records
            .iter()
            .filter_map(|m| {
                Some(Receipt {
                    message_id: m.message_id.clone()?,
                    handle: m.receipt_handle.clone()?,
                })
            })
            .collect();
        self.invocations.fetch_add(1, Ordering::SeqCst);
        let all = |receipts: Vec<Receipt>| receipts.into_iter().map(|r| r.handle).collect();
        if self.crashes.before_handler() {
            tracing::warn!("simulated crash before the handler ran");
            self.give_back(all(receipts)).await;
            return Ok(());
        }
        let started = Instant::now();
        let handler = resync_delivery::handler(&self.delivery, lambda_invocation(event));
        let response = tokio::time::timeout(FUNCTION_TIMEOUT, handler).await;
        self.clock.record("delivery", started.elapsed());
        let Ok(response) = response else {
            tracing::error!(
                timeout_secs = FUNCTION_TIMEOUT.as_secs(),
                "delivery invocation stopped at the function's timeout, as Lambda stops it; the batch returns to the queue"
            );
            self.give_back(all(receipts)).await;
            return Ok(());
        };
        let response = match response {
            Ok(response) => response,
            Err(err) => {
                tracing::error!(error = %err, "delivery invocation failed; the batch returns to the queue");
                self.give_back(all(receipts)).await;
                return Ok(());
            }
        };
        let failed: HashSet<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        // The rows the response lists keep the visibility the handler gave them (their
        // backoff); the others come back sooner if the batch is not deleted.
        let unlisted = |receipts: Vec<Receipt>| -> Vec<String> {
            receipts
                .into_iter()
                .filter(|receipt| !failed.contains(receipt.message_id.as_str()))
                .map(|receipt| receipt.handle)
                .collect()
        };
        if self.crashes.after_handler() {
            tracing::warn!("simulated crash: the invocation's response is lost");
            self.give_back(unlisted(receipts)).await;
            return Ok(());
        }
        let known = |id: &str| receipts.iter().any(|receipt| receipt.message_id == id);
        if failed.iter().any(|id| id.is_empty() || !known(id)) {
            tracing::error!(
                "partial batch response names an empty or unknown itemIdentifier; the whole batch fails"
            );
            self.give_back(unlisted(receipts)).await;
            return Ok(());
        }
        self.delivery.queue.delete(&unlisted(receipts)).await?;
        Ok(())
    }

    /// Makes the messages of a batch whose invocation failed visible again after
    /// `failed_batch_returns_after` (Lambda leaves them until the queue's visibility
    /// timeout ends). Best effort: one it cannot change comes back at that timeout.
    async fn give_back(&self, handles: Vec<String>) {
        let entries: Vec<(String, Duration)> = handles
            .into_iter()
            .map(|handle| (handle, self.failed_batch_returns_after))
            .collect();
        if entries.is_empty() {
            return;
        }
        if let Err(err) = self.delivery.queue.change_visibility(&entries).await {
            tracing::warn!(error = %err, "could not give a failed batch back early; it returns at the queue's visibility timeout");
        }
    }
}

/// A received message's id (the partial batch response's `itemIdentifier`) and the
/// receipt handle that deletes it.
struct Receipt {
    message_id: String,
    handle: String,
}

/// The `SqsEvent` Lambda would build for received messages.
pub fn sqs_event(
    messages: impl IntoIterator<Item = aws_sdk_sqs::types::Message>,
    queue_arn: &str,
) -> SqsEvent {
    let mut event = SqsEvent::default();
    for message in messages {
        let mut record = SqsMessage::default();
        record.message_id = message.message_id;
        record.receipt_handle = message.receipt_handle;
        record.body = message.body;
        record.md5_of_body = message.md5_of_body;
        record.event_source = Some("aws:sqs".into());
        record.event_source_arn = Some(queue_arn.to_owned());
        record.aws_region = Some("us-east-1".into());
        if let Some(attributes) = message.attributes {
            for (name, value) in attributes {
                let name = match name {
                    MessageSystemAttributeName::ApproximateReceiveCount => {
                        "ApproximateReceiveCount"
                    }
                    MessageSystemAttributeName::SentTimestamp => "SentTimestamp",
                    _ => continue,
                };
                record.attributes.insert(name.into(), value);
            }
        }
        event.records.push(record);
    }
    event
}
