//! What the failed-row index (and `resync failed`) says about a failing key: when it
//! failed and how many attempts it took, per run and in all.

use resync::destination_server::RowBehaviour;
use resync_shared::domain::{run::RunStatus, timestamp};

use crate::helpers::{finalize_with, key, EnvSettings, TestEnv};

/// Issue 13, item 17: `resync failed` showed the run's close time as both the first and
/// the last failure of a row, and `attempts` added up across runs without saying so.
/// Delivery now records when it failed the row; the index keeps the first failing
/// run's time across runs, the last attempt's time, and the attempts of the last run
/// beside the total. The run is closed only after the failure is taken, so a close time
/// standing in for the failure time shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_says_when_a_row_failed_and_its_attempts_per_run_and_in_all() {
    let env = TestEnv::with(EnvSettings {
        max_attempts: 4,
        ..EnvSettings::default()
    })
    .await;
    env.destination.set(
        key(1),
        RowBehaviour::RejectThisRun {
            code: "INVALID_EMAIL".into(),
        },
    );
    env.export_rows("batch.jsonl.gz", 0..3).await;
    let run = env.start_run().await;
    let before = timestamp::now();
    env.deliver_in_one_invocation(3).await;
    let failed_by = timestamp::now();
    finalize_with(&env.runtime.finalizer, Some(&env.sync))
        .await
        .unwrap();
    let record = env
        .runtime
        .runs()
        .run(&env.sync, &run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, RunStatus::Closed);
    let index = env.index().await;
    assert_eq!(index.len(), 1);
    let entry = &index[0];
    let first = timestamp::parse_rfc3339(&entry.first_failed_at).unwrap();
    assert!(
        before <= first && first <= failed_by,
        "first failed {first}, the row was failed between {before} and {failed_by} (closed {:?})",
        record.closed_at
    );
    assert_eq!(entry.last_failed_at, entry.first_failed_at);
    assert_eq!((entry.attempts_last_run, entry.attempts), (1, 1));
    let listed = serde_json::to_value(entry).unwrap();
    assert_eq!(listed["attempts_total"], 1, "{listed}");
    assert_eq!(listed["attempts_last_run"], 1, "{listed}");

    // Run 2: locked for the whole run, so 4 attempts in it and 5 in all; the first
    // failure is still run 1's.
    env.destination.next_run();
    env.destination.set(
        key(1),
        RowBehaviour::Locked {
            until_attempt: None,
        },
    );
    let second = env.run().await.record;
    let index = env.index().await;
    assert_eq!(index.len(), 1);
    let entry = &index[0];
    assert_eq!(entry.first_failed_at, timestamp::rfc3339(first));
    assert_eq!((entry.attempts_last_run, entry.attempts), (4, 5));
    let last = timestamp::parse_rfc3339(&entry.last_failed_at).unwrap();
    assert!(second.started_at.unwrap() < last && last < second.closed_at.unwrap());
}
