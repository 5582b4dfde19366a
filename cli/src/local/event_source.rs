//! The SQS event source mapping, locally: pollers that gather batches from a delivery
//! queue, invoke delivery with the `SqsEvent` Lambda would build, and delete what the
//! partial batch response allows — with the simulated crashes of [`Crashes`].

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
use resync_shared::resources::QueueSettings;

use super::{crashes::Crashes, lambda_invocation, HandlerClock, LocalOptions};

/// The running pollers of one destination queue.
pub(super) struct Pollers {
    stop: Arc<AtomicBool>,
    invocations: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Pollers {
    /// Starts the pollers of a delivery's queue, as many as its destination's
    /// concurrency.
    pub(super) fn start(
        delivery: Arc<Delivery>,
        crashes: Arc<Crashes>,
        clock: Arc<HandlerClock>,
        options: &LocalOptions,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let invocations = Arc::new(AtomicUsize::new(0));
        let tasks = (0..delivery.destination_config.concurrency)
            .map(|_| {
                let poller = Poller {
                    invoker: Invoker {
                        delivery: delivery.clone(),
                        invocations: invocations.clone(),
                        crashes: crashes.clone(),
                        clock: clock.clone(),
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
    clock: Arc<HandlerClock>,
}

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
        let mut running: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
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
            let mut messages = Vec::new();
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
                let received = received?;
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
            // pollers keep polling while functions run; at most one invocation per poller.
            if let Some(previous) = running.take() {
                previous.await.context("a delivery invocation panicked")??;
            }
            running = Some(tokio::spawn(
                invoker.clone().invoke(messages, queue_arn.clone()),
            ));
        }
        if let Some(previous) = running.take() {
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
        let Self {
            delivery,
            invocations,
            crashes,
            clock,
        } = self;
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
        invocations.fetch_add(1, Ordering::SeqCst);
        if crashes.before_handler() {
            tracing::warn!("simulated crash before the handler ran");
            return Ok(());
        }
        let started = Instant::now();
        let response = resync_delivery::handler(&delivery, lambda_invocation(event)).await;
        clock.record("delivery", started.elapsed());
        if crashes.after_handler() {
            tracing::warn!("simulated crash: the invocation's response is lost");
            return Ok(());
        }
        let response = match response {
            Ok(response) => response,
            Err(err) => {
                tracing::error!(error = %err, "delivery invocation failed; the batch returns to the queue");
                return Ok(());
            }
        };
        let failed: HashSet<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let known = |id: &str| receipts.iter().any(|receipt| receipt.message_id == id);
        if failed.iter().any(|id| id.is_empty() || !known(id)) {
            tracing::error!(
                "partial batch response names an empty or unknown itemIdentifier; the whole batch fails"
            );
            return Ok(());
        }
        let to_delete: Vec<String> = receipts
            .into_iter()
            .filter(|receipt| !failed.contains(receipt.message_id.as_str()))
            .map(|receipt| receipt.handle)
            .collect();
        delivery.queue.delete(&to_delete).await?;
        Ok(())
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
