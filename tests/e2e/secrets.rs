//! Secrets Manager: the webhook's signing secret read from it.

use crate::helpers::{EnvSettings, TestEnv};

/// The webhook's signing secret comes from Secrets Manager: every request is signed
/// with it (the destination refuses bad signatures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_secrets_come_from_secrets_manager() {
    let env = TestEnv::with(EnvSettings {
        secret_in_secrets_manager: true,
        ..EnvSettings::default()
    })
    .await;
    env.export_rows("batch.jsonl.gz", 0..20).await;
    let counts = env.run().await.record.counts.unwrap();
    assert_eq!(counts.delivered, 20);
    let stats = env.destination.stats();
    assert_eq!(
        stats.bad_requests, 0,
        "every request carried a valid signature"
    );
}
