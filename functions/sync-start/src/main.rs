//! The sync-start Lambda: configuration from the environment, clients built once.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use resync_shared::{aws::report::Reporter, config::Config, resources::Resources};
use resync_sync_start::{handler, SyncStart};

#[tokio::main]
async fn main() -> Result<(), Error> {
    resync_shared::logging::init_lambda_logging();
    let config = Arc::new(Config::from_env()?);
    let resources = Resources::from_env()?;
    let sdk = resync_shared::aws::lambda_sdk_config();
    let reporter = Reporter::for_lambda(&sdk, &resources);
    let deps = SyncStart::new(&sdk, config, resources, reporter);
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| handler(&deps, event))).await
}
