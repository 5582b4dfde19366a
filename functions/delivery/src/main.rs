//! The delivery Lambda of one destination (named by `RESYNC_DESTINATION`).

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use resync_delivery::{handler, Delivery};
use resync_shared::{
    aws::{queue::WorkQueue, report::SettledNotice, runs::RunStore},
    config::Config,
    destination,
    resources::Resources,
    secrets::SecretResolver,
    DestinationId,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    resync_shared::logging::init_lambda_logging();
    let config = Arc::new(Config::from_env()?);
    let resources = Resources::from_env()?;
    let destination_id = DestinationId::parse(std::env::var("RESYNC_DESTINATION")?)?;
    let destination_config = config
        .destination(&destination_id)
        .ok_or_else(|| {
            format!("RESYNC_DESTINATION: no destination '{destination_id}' in the configuration")
        })?
        .clone();
    let sdk = resync_shared::aws::lambda_sdk_config();
    let secrets = SecretResolver::new(aws_sdk_secretsmanager::Client::new(&sdk));
    let deps = Delivery {
        destination: destination::build(&destination_config, &secrets).await?,
        queue: WorkQueue::resolve(
            aws_sdk_sqs::Client::new(&sdk),
            &resources.delivery_queue(&destination_id),
        )
        .await?,
        runs: RunStore::new(aws_sdk_dynamodb::Client::new(&sdk), &resources.runs_table),
        notice: SettledNotice::new(aws_sdk_eventbridge::Client::new(&sdk), &resources.event_bus),
        destination_config,
        config,
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| handler(&deps, event))).await
}
