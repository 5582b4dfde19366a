//! Isolation: two emulators in one process share nothing, and one stopping leaves the
//! other serving.

use anyhow::{Context, Result};
use resync_emulator::Emulator;

use crate::helpers::{explain, s3_client, sdk_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_emulators_are_independent() -> Result<()> {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Emulator>();
    send_sync::<resync_emulator::EmulatorError>();
    let a = Emulator::start().await?;
    let b = Emulator::start().await?;
    assert_ne!(a.endpoint_url(), b.endpoint_url());
    let (config_a, config_b) = (sdk_config(&a).await, sdk_config(&b).await);
    let (sqs_a, sqs_b) = (
        aws_sdk_sqs::Client::new(&config_a),
        aws_sdk_sqs::Client::new(&config_b),
    );
    let (s3_a, s3_b) = (s3_client(&config_a), s3_client(&config_b));

    let url_a = sqs_a
        .create_queue()
        .queue_name("only-in-a")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no url")?;
    assert!(url_a.starts_with(a.endpoint_url()));
    let err = sqs_b
        .get_queue_url()
        .queue_name("only-in-a")
        .send()
        .await
        .expect_err("queue leaked into the other emulator");
    assert!(err.into_service_error().is_queue_does_not_exist());
    s3_a.create_bucket()
        .bucket("only-in-a")
        .send()
        .await
        .map_err(explain)?;
    assert!(s3_b
        .list_buckets()
        .send()
        .await
        .map_err(explain)?
        .buckets()
        .is_empty());

    // Stopping one leaves the other serving.
    let endpoint_a = a.endpoint_url().to_owned();
    a.shutdown().await;
    let url_b = sqs_b
        .create_queue()
        .queue_name("in-b")
        .send()
        .await
        .map_err(explain)?
        .queue_url
        .context("no url")?;
    sqs_b
        .send_message()
        .queue_url(&url_b)
        .message_body("still here")
        .send()
        .await
        .map_err(explain)?;
    let addr = endpoint_a.trim_start_matches("http://");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{endpoint_a} still accepts connections after shutdown"
    );
    drop(b);
    Ok(())
}
