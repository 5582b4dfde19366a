//! The finalizer Lambda: configuration from the environment, clients built once.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use resync_finalizer::{handler, Finalizer};
use resync_shared::{aws::report::Reporter, config::Config, resources::Resources};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Arc::new(Config::from_env()?);
    let resources = Resources::from_env()?;
    let sdk = aws_config::load_from_env().await;
    let reporter = Reporter::for_lambda(&sdk, &resources);
    let deps = Finalizer::new(&sdk, config, resources, reporter);
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| handler(&deps, event))).await
}
