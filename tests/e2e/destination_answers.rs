//! Hostile destination answers end to end (issue 13, items 10–14): the webhook points
//! at the fault-injecting chaos destination (`resync::chaos::destination`), and the
//! invariants are checked from the destination's own log and the index
//! (`resync::chaos::checks`), never from resync's counts.

use std::{collections::HashSet, time::Duration};

use resync::chaos::{
    checks::{self, RunFacts},
    destination::{Answer, ChaosDestination, DestinationFaults},
};

use crate::helpers::{key, scaled, EnvSettings, TestEnv};

/// Faults heavy enough that a run of a few thousand rows meets each of them.
const HOSTILE: DestinationFaults = DestinationFaults {
    row_retry: 0.02,
    row_reject: 0.01,
    row_omitted: 0.02,
    rate_limit: 0.03,
    unavailable: 0.03,
    // A lost answer outlives the request timeout (10 s here): left to `resync chaos`.
    answer_lost: 0.0,
    redirect: 0.03,
    dropped: 0.04,
    cut_body: 0.08,
    truncated: 0.08,
    malformed: 0.08,
    huge_body: 0.02,
    huge_headers: 0.04,
    slow: 0.04,
    foreign_keys: 0.05,
    poisoned: 0.002,
};

async fn facts(
    env: &TestEnv,
    destination: &ChaosDestination,
    seen: &mut usize,
    source_keys: HashSet<String>,
    index_before: HashSet<String>,
) -> RunFacts {
    let run = env.run().await;
    let ledger = env
        .runtime
        .runs()
        .ledger(&run.record.run_id, run.record.generation)
        .await
        .expect("the run's ledger");
    let log = destination.log();
    let received = log[*seen..].to_vec();
    *seen = log.len();
    RunFacts {
        run_id: run.record.run_id.as_str().to_owned(),
        planning_attempts: run.record.generation.saturating_add(1),
        source_keys,
        index_before,
        index_after: index_keys(env).await,
        index_spent: env
            .index()
            .await
            .into_iter()
            .filter(|entry| entry.error_code == resync_shared::domain::outcome::ATTEMPTS_SPENT)
            .map(|entry| entry.key.as_str().to_owned())
            .collect(),
        ledger_delivered: ledger
            .into_iter()
            .flat_map(|item| item.delivered.into_iter().chain(item.recovered))
            .map(|k| k.as_str().to_owned())
            .collect(),
        received,
    }
}

async fn index_keys(env: &TestEnv) -> HashSet<String> {
    env.index()
        .await
        .into_iter()
        .map(|entry| entry.key.as_str().to_owned())
        .collect()
}

/// Issue 13, item 10 (and 11–14 beside it): under seeded destination faults, rows
/// were counted delivered that the destination had answered with a cut, truncated or
/// malformed results document — they left the index for good. Now only rows the
/// destination's log shows written *and* acknowledged in a readable answer count as
/// delivered; every other row is retried or kept in the index with its reason, and the
/// next, fault-free run delivers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_rows_written_and_acknowledged_are_counted_delivered() {
    let rows = scaled(3_000, 300);
    let destination = ChaosDestination::start(13, HOSTILE, Duration::from_secs(30))
        .await
        .expect("the chaos destination starts");
    let env = TestEnv::with(EnvSettings {
        batch_size: 25,
        webhook_url: Some(destination.url()),
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("hostile.jsonl.gz", 0..rows).await;
    let mut seen = 0;
    let planned: HashSet<String> = (0..rows).map(key).collect();
    let first = facts(&env, &destination, &mut seen, planned, HashSet::new()).await;
    let injected = destination.injected();
    eprintln!("destination faults injected: {injected:?}");
    let garbled: u64 = ["cut_body", "truncated_results", "malformed_results"]
        .iter()
        .filter_map(|kind| injected.get(kind))
        .sum();
    assert!(garbled > 0, "answers were garbled: {injected:?}");
    assert_eq!(
        injected.get("redirect_followed"),
        None,
        "no redirect followed"
    );
    let kept = first.index_after.clone();
    assert!(!kept.is_empty(), "some rows failed under the faults");
    let errors: HashSet<String> = env
        .index()
        .await
        .into_iter()
        .map(|entry| entry.error_code)
        .collect();
    eprintln!("codes in the index: {errors:?}");

    destination.set_faults(DestinationFaults::NONE);
    let second = facts(&env, &destination, &mut seen, HashSet::new(), kept).await;
    let findings = checks::check(&[first, second], 4);
    assert!(findings.violations.is_empty(), "{:?}", findings.violations);
    assert_eq!((findings.lost_rows, findings.wrongly_delivered), (0, 0));
    assert!(findings.index_exact);
    assert!(
        env.index().await.is_empty(),
        "the fault-free run delivered the rest"
    );
    let written: HashSet<String> = destination
        .log()
        .into_iter()
        .filter(|r| r.answer == Answer::Delivered)
        .map(|r| r.key)
        .collect();
    assert_eq!(written.len(), rows, "every row written and acknowledged");
}
