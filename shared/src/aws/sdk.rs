//! The SDK configuration of the deployed functions and the one HTTPS client of every
//! build.
//!
//! The functions build their [`SdkConfig`] from the environment Lambda gives them
//! ([`lambda_sdk_config`]) instead of `aws_config::load_from_env()`: the default chain
//! links the STS, SSO and IMDS clients and the profile parser, none of which a Lambda
//! function uses (its credentials are environment variables), and they cost megabytes
//! in each bootstrap.

use std::time::Duration;

use aws_config::{
    environment::EnvironmentVariableCredentialsProvider, identity::IdentityCache,
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig,
};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_async::{rt::sleep::TokioSleep, time::SystemTimeSource};
use aws_smithy_http_client::{
    proxy::ProxyConfig,
    tls::{rustls_provider::CryptoMode, Provider},
    ConnectorBuilder,
};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// The SDK's connect timeout when none is configured (what `aws_config` sets).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

/// The HTTP client of every SDK client resync builds: hyper 1 and rustls 0.23 on ring,
/// the TLS stack that reqwest (destinations) and jsonwebtoken already link, so a
/// bootstrap carries one. It is the SDK's own default client with ring in place of
/// aws-lc: roots from the system trust store, `HTTPS_PROXY`/`NO_PROXY` honoured, and
/// plain `http://` endpoints (emulators) served too.
pub fn https_client() -> SharedHttpClient {
    // `build_with_connector_fn` is how aws-smithy-runtime builds its default client
    // (hidden from the docs, pinned by Cargo.lock); `build_https` would drop the proxy.
    aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// The SDK configuration of a function running in Lambda, from the process
/// environment. See [`lambda_sdk_config_from`].
pub fn lambda_sdk_config() -> SdkConfig {
    lambda_sdk_config_from(|name| std::env::var(name).ok())
}

/// The SDK configuration of a function running in Lambda, from the variables `env`
/// returns: credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
/// `AWS_SESSION_TOKEN` (what Lambda sets for the execution role), region from
/// `AWS_REGION` (or `AWS_DEFAULT_REGION`), endpoint from `AWS_ENDPOINT_URL` (LocalStack,
/// the local Runtime API smoke test), standard retries (`AWS_RETRY_MODE`,
/// `AWS_MAX_ATTEMPTS`), the SDK's default timeouts and identity cache, and
/// [`https_client`]. Profiles, SSO, web identity, IMDS and service-specific endpoint
/// variables are not read: nothing in Lambda sets them.
pub fn lambda_sdk_config_from(env: impl Fn(&str) -> Option<String>) -> SdkConfig {
    let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let region = set("AWS_REGION")
        .or_else(|| set("AWS_DEFAULT_REGION"))
        .map(Region::new);
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(SharedCredentialsProvider::new(
            EnvironmentVariableCredentialsProvider::new(),
        ))
        .identity_cache(IdentityCache::lazy().build())
        .http_client(https_client())
        .sleep_impl(TokioSleep::new())
        .time_source(SystemTimeSource::new())
        .retry_config(retry_config(&set))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        );
    if let Some(endpoint) = set("AWS_ENDPOINT_URL") {
        builder = builder.endpoint_url(endpoint);
    }
    builder.build()
}

/// Standard retries unless `AWS_RETRY_MODE=adaptive`; `AWS_MAX_ATTEMPTS` when it is a
/// positive number (the SDK's default is 3).
fn retry_config(set: &impl Fn(&str) -> Option<String>) -> RetryConfig {
    let mode = set("AWS_RETRY_MODE").unwrap_or_default();
    let config = if mode.trim().eq_ignore_ascii_case("adaptive") {
        RetryConfig::adaptive()
    } else {
        RetryConfig::standard()
    };
    match set("AWS_MAX_ATTEMPTS").and_then(|n| n.trim().parse::<u32>().ok()) {
        Some(attempts) if attempts > 0 => config.with_max_attempts(attempts),
        _ => config,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_config::retry::RetryMode;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> SdkConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        lambda_sdk_config_from(move |name| vars.get(name).cloned())
    }

    #[test]
    fn region_and_endpoint_come_from_lambda_variables() {
        let sdk = config(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "us-east-2"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        ]);

        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:4566"));
        assert!(sdk.credentials_provider().is_some());
        assert!(sdk.http_client().is_some());
        assert!(sdk.sleep_impl().is_some());
        assert_eq!(
            sdk.timeout_config().and_then(|t| t.connect_timeout()),
            Some(CONNECT_TIMEOUT)
        );
    }

    #[test]
    fn default_region_is_the_fallback_and_no_endpoint_means_aws() {
        let sdk = config(&[
            ("AWS_DEFAULT_REGION", "us-east-2"),
            ("AWS_ENDPOINT_URL", ""),
        ]);

        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("us-east-2"));
        assert_eq!(sdk.endpoint_url(), None);
    }

    #[test]
    fn retries_are_standard_with_three_attempts_unless_configured() {
        let default = config(&[]);
        let configured = config(&[("AWS_RETRY_MODE", "adaptive"), ("AWS_MAX_ATTEMPTS", "5")]);

        let default = default.retry_config().expect("retry config");
        assert_eq!(default.mode(), RetryMode::Standard);
        assert_eq!(default.max_attempts(), 3);
        let configured = configured.retry_config().expect("retry config");
        assert_eq!(configured.mode(), RetryMode::Adaptive);
        assert_eq!(configured.max_attempts(), 5);
    }
}
