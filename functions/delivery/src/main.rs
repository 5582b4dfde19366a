//! The delivery Lambda of one destination (named by `RESYNC_DESTINATION`).

use lambda_runtime::{service_fn, Error, LambdaEvent};
use resync_delivery::{handler, Delivery};
use resync_shared::{config::Config, resources::Resources, secrets::SecretResolver, DestinationId};

#[tokio::main]
async fn main() -> Result<(), Error> {
    resync_shared::logging::init_lambda_logging();
    let config = Config::from_env()?;
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
    let deps = Delivery::new(&sdk, &resources, destination_config, &secrets).await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| handler(&deps, event))).await
}
