//! AWS's faults, injected by the embedded emulator's fault plan: what SQS or DynamoDB
//! refuse on their own side never costs a row (these tests skip on a remote endpoint,
//! which cannot inject faults).

use resync::destination_server::RowBehaviour;
use resync_emulator::{FaultKind, FaultRule};

use crate::helpers::{key, TestEnv};

/// Issue 12, defect 5: an entry SQS keeps refusing on its own side (not the row's
/// fault) used to become an `enqueue_refused` rejection with no payload, overwriting a
/// carried key's stored payload, so the key waited for a re-export for ever. Now the
/// planning attempt ends (the run is abandoned and planned again), the index keeps the
/// key with its payload, and the next run delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_sqs_refuses_on_its_own_side_keeps_its_payload_and_is_delivered_next_run() {
    let env = TestEnv::start().await;
    let Some(faults) = env.faults() else {
        return;
    };
    env.export_rows("batch.jsonl.gz", 0..20).await;
    env.destination.set(
        key(7),
        RowBehaviour::RejectThisRun {
            code: "REQUIRED_FIELD_MISSING".into(),
        },
    );
    let run1 = env.run().await.record.counts.unwrap();
    assert_eq!((run1.delivered, run1.failed), (19, 1));
    env.destination.next_run();

    // Run 2 has no new export: the carried key is sent from its stored payload, and SQS
    // fails every entry on its side, retries included.
    faults.set(
        1,
        vec![FaultRule::always(
            "sqs.SendMessageBatch",
            FaultKind::EntryFailure,
            None,
        )],
    );
    let attempt = env.runtime.run_sync(&env.sync, &|_| {}).await;
    faults.clear();
    assert!(
        attempt.is_err(),
        "a run whose rows SQS would not take must not close as if it had planned them: {:?}",
        attempt.map(|run| run.record.counts)
    );
    let index = env.index().await;
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].key.as_str(), key(7));
    assert_eq!(index[0].error_class, "permanent", "the last error is kept");
    assert!(index[0].payload.is_some(), "the payload is kept");

    let run3 = env.run().await.record.counts.unwrap();
    assert_eq!((run3.planned, run3.delivered, run3.recovered), (1, 1, 1));
    assert!(env.index().await.is_empty());
    let received = env.destination.stats().keys_received;
    assert!(received.last().unwrap().contains(&key(7)));
}
