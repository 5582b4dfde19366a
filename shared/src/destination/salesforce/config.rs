//! The `salesforce:` section of a destination: its settings and their validation.

use std::{collections::BTreeMap, sync::Arc};

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{Credentials, Salesforce};
use crate::{
    destination::{
        check_endpoint_url, Destination, RequestLimits, Section, SettingsError, SetupError,
    },
    secrets::{SecretRef, SecretResolver},
};

/// A Salesforce destination: sObject Collections upsert by external ID.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// Where tokens are requested: `https://login.salesforce.com`, `https://test.salesforce.com`
    /// for sandboxes, or the org's My Domain URL.
    #[serde(default = "default_login_url")]
    pub login_url: String,
    /// The REST API base, when it must differ from the `instance_url` the token answer names.
    pub instance_url: Option<String>,
    /// REST API version, e.g. `62.0` (sObject Collections upsert needs 46.0 or later).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The sObject, e.g. `Contact` or `Invoice__c`.
    pub sobject: String,
    /// The external ID field the sync's primary key is written to (the upsert key).
    pub external_id_field: String,
    /// Source column → Salesforce field; only mapped columns are sent (at least one).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// A parent lookup field (e.g. `AccountId`): rows are ordered by it before they are
    /// cut into requests, so rows under one parent share a call (fewer lock conflicts).
    pub parent_field: Option<String>,
    /// Share of the org's daily API limit (from `Sforce-Limit-Info`) past which resync
    /// stops calling and lets rows wait as rate-limited (0 < share ≤ 1).
    #[serde(default = "default_api_budget_share")]
    pub api_budget_share: f64,
    /// OAuth 2.0 server-to-server credentials.
    pub auth: SalesforceAuth,
}

/// The OAuth 2.0 flow resync uses to get a Salesforce access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceFlow {
    /// Client credentials: consumer key and secret of an app with a run-as integration user.
    ClientCredentials,
    /// JWT bearer: an RS256 assertion signed with the app's certificate key, for `username`.
    JwtBearer,
}

/// Salesforce OAuth settings; which fields are needed depends on `flow`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceAuth {
    /// The flow.
    pub flow: SalesforceFlow,
    /// The app's consumer key (`client_id`, the JWT's `iss`).
    pub client_id: String,
    /// The consumer secret (client credentials flow).
    pub client_secret: Option<SecretRef>,
    /// The integration user's username (JWT bearer flow: the JWT's `sub`).
    pub username: Option<String>,
    /// PEM private key that signs the assertion (JWT bearer flow).
    pub private_key: Option<SecretRef>,
    /// The JWT's `aud` (default: the login URL).
    pub audience: Option<String>,
}

fn default_login_url() -> String {
    "https://login.salesforce.com".into()
}

fn default_api_version() -> String {
    "62.0".into()
}

fn default_api_budget_share() -> f64 {
    0.9
}

fn is_api_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Section for SalesforceConfig {
    const KIND: &'static str = "salesforce";
    const MAX_BATCH: usize = 200;
    const DEFAULT_BATCH: usize = 200;
    const NEEDS: &'static str = "(sobject, external_id_field, auth)";

    fn validate(&self) -> Result<(), SettingsError> {
        check_endpoint_url(&self.login_url)
            .map_err(|message| SettingsError::new("login_url", message))?;
        if let Some(url) = &self.instance_url {
            check_endpoint_url(url)
                .map_err(|message| SettingsError::new("instance_url", message))?;
        }
        let version_ok = self
            .api_version
            .split_once('.')
            .and_then(|(major, minor)| {
                Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
            })
            .is_some_and(|(major, _)| major >= 46);
        if !version_ok {
            return Err(SettingsError::new(
                "api_version",
                format!(
                    "'{}' is not an API version of 46.0 or later (sObject Collections upsert)",
                    self.api_version
                ),
            ));
        }
        for (field, value) in [
            ("sobject", &self.sobject),
            ("external_id_field", &self.external_id_field),
        ] {
            if !is_api_name(value) {
                return Err(SettingsError::new(
                    field,
                    format!("'{value}' is not a Salesforce API name (letters, digits, '_')"),
                ));
            }
        }
        if self.fields.is_empty() {
            return Err(SettingsError::new(
                "fields",
                "map at least one source column to a Salesforce field (column: Field__c)",
            ));
        }
        if !(self.api_budget_share > 0.0 && self.api_budget_share <= 1.0) {
            return Err(SettingsError::new("api_budget_share", "must be in (0, 1]"));
        }
        let auth = &self.auth;
        match auth.flow {
            SalesforceFlow::ClientCredentials if auth.client_secret.is_none() => {
                Err(SettingsError::new(
                    "auth.client_secret",
                    "the client_credentials flow needs the consumer secret",
                ))
            }
            SalesforceFlow::JwtBearer if auth.username.is_none() => Err(SettingsError::new(
                "auth.username",
                "the jwt_bearer flow needs the integration user's username",
            )),
            SalesforceFlow::JwtBearer if auth.private_key.is_none() => Err(SettingsError::new(
                "auth.private_key",
                "the jwt_bearer flow needs the PEM private key that signs the assertion",
            )),
            _ => Ok(()),
        }
    }

    fn secrets(&self) -> Vec<&SecretRef> {
        self.auth
            .client_secret
            .iter()
            .chain(self.auth.private_key.iter())
            .collect()
    }

    fn build<'a>(
        &'a self,
        limits: RequestLimits,
        secrets: &'a SecretResolver,
        budget: Option<Arc<dyn crate::destination::budget::CallBudget>>,
    ) -> BoxFuture<'a, Result<Arc<dyn Destination>, SetupError>> {
        Box::pin(async move {
            let credentials = Credentials::resolve(&self.auth, secrets).await?;
            let salesforce =
                Salesforce::new(self, credentials, limits.batch_size, limits.timeout, budget)?;
            Ok(Arc::new(salesforce) as Arc<dyn Destination>)
        })
    }
}
