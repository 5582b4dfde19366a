//! Rows waiting out a backoff and SQS's in-flight limit (issue 14, item 5).

use std::collections::HashSet;

use resync::destination_server::RowBehaviour;

use crate::helpers::{key, TestEnv};

/// Issue 14, item 5: a row waiting out its retry's backoff was held in flight (received
/// and hidden for the backoff), and every such row counts toward the queue's in-flight
/// limit (120,000 on a standard queue, shared by every sync of the destination): rows
/// locked during a large run filled it, and the queue's other rows could not be
/// received until the backoffs ended. With the emulator's limit set to 5 and 10 rows
/// the destination asks to retry after 15 s, every row is sent once and then nothing is
/// in flight while the 10 wait: they wait as delayed copies, not as hidden messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_out_a_backoff_are_not_in_flight() {
    let env = TestEnv::start().await;
    let Some(in_flight) = env.sqs_in_flight() else {
        eprintln!("skipped: a remote endpoint has no in-flight limit to lower");
        return;
    };
    in_flight.set_limit(5);
    let busy: HashSet<String> = (0..10).map(key).collect();
    for key in &busy {
        env.destination.set(
            key.clone(),
            RowBehaviour::Busy {
                retry_after_secs: 15,
                until_attempt: 1,
            },
        );
    }
    env.export_rows("1.jsonl.gz", 0..30).await;
    let queue = env.runtime.deliveries.values().next().unwrap()[0]
        .queue
        .url()
        .to_owned();

    // Whether, before any busy row's retry, every row was sent once and nothing was in
    // flight.
    let watch = async {
        loop {
            let stats = env.destination.stats();
            let sends = stats.sends.last().cloned().unwrap_or_default();
            if busy.iter().any(|k| sends.get(k).is_some_and(|&n| n > 1)) {
                return false;
            }
            if sends.len() == 30 && in_flight.count(&queue) == 0 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let (run, seen) = tokio::join!(env.run(), watch);

    assert!(
        seen,
        "rows waiting out a backoff held the queue's in-flight slots until their retries"
    );
    let counts = run.record.counts.unwrap();
    assert_eq!((counts.delivered, counts.failed), (30, 0));
    assert!(env.index().await.is_empty());
    let sends = &env.destination.stats().sends[0];
    assert!(busy.iter().all(|k| sends[k] == 2), "{sends:?}");
}

/// Issue 14, item 5: a backoff longer than SQS's longest delay (15 minutes; a policy may
/// ask up to 12 hours) waits as successive delayed copies. A copy received before its
/// backoff's end is not sent and spends no attempt: it goes back to the queue as another
/// delayed copy, and the message received is deleted, not held in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_received_before_its_backoff_ends_goes_back_unsent() {
    use aws_sdk_sqs::types::QueueAttributeName;
    use resync_shared::domain::message::QueueMessage;

    let env = TestEnv::start().await;
    env.export_rows("1.jsonl.gz", 0..1).await;
    env.start_run().await;
    let delivery = env.runtime.deliveries.values().next().unwrap()[0].clone();
    let planned = delivery
        .queue
        .receive(1, std::time::Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    // The planned row, as a message of its own (with packing it came in a segment).
    let mut waiting = QueueMessage::from_body(planned.body().unwrap())
        .unwrap()
        .into_rows()
        .remove(0);
    waiting.attempts_before = 1;
    waiting.backoff_until = Some(time::OffsetDateTime::now_utc().unix_timestamp() + 3_600);
    assert!(delivery
        .queue
        .send_batch(&[waiting.to_body()])
        .await
        .unwrap()
        .is_empty());
    delivery
        .queue
        .delete(&[planned.receipt_handle().unwrap().to_owned()])
        .await
        .unwrap();

    env.deliver_in_one_invocation(1).await;

    assert_eq!(
        env.destination.stats().requests[0],
        0,
        "a row was sent before its backoff ended"
    );
    let attributes = aws_sdk_sqs::Client::new(&env.runtime.sdk)
        .get_queue_attributes()
        .queue_url(delivery.queue.url())
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    let count = |name: QueueAttributeName| -> u64 {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        (
            count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            count(QueueAttributeName::ApproximateNumberOfMessages),
        ),
        (1, 0, 0),
        "the row waits as one delayed copy, nothing in flight"
    );
}
