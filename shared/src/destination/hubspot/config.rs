//! The `hubspot:` section of a destination: its settings and their validation.

use std::{collections::BTreeMap, sync::Arc};

use futures::future::BoxFuture;
use serde::Deserialize;

use super::Hubspot;
use crate::{
    destination::{
        check_endpoint_url, Destination, RequestLimits, Section, SettingsError, SetupError,
    },
    secrets::{SecretRef, SecretResolver},
};

/// A HubSpot destination: CRM v3 batch upsert by a unique property.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotConfig {
    /// API base URL.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Object type, e.g. `contacts`, `companies` or a custom object's `2-…` id.
    pub object_type: String,
    /// The unique property the sync's primary key is matched on (e.g. `email`).
    pub id_property: String,
    /// Source column → HubSpot property; only mapped columns are sent (at least one).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The private app's access token (sent as `Authorization: Bearer`).
    pub access_token: SecretRef,
}

fn default_base_url() -> String {
    "https://api.hubapi.com".into()
}

impl Section for HubspotConfig {
    const KIND: &'static str = "hubspot";
    const MAX_BATCH: usize = 100;
    const DEFAULT_BATCH: usize = 100;
    const NEEDS: &'static str = "(object_type, id_property, access_token)";

    fn validate(&self) -> Result<(), SettingsError> {
        check_endpoint_url(&self.base_url)
            .map_err(|message| SettingsError::new("base_url", message))?;
        for (field, value) in [
            ("object_type", &self.object_type),
            ("id_property", &self.id_property),
        ] {
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(SettingsError::new(
                    field,
                    format!("'{value}' is not a HubSpot name (letters, digits, '_', '-')"),
                ));
            }
        }
        if self.fields.is_empty() {
            return Err(SettingsError::new(
                "fields",
                "map at least one source column to a HubSpot property (column: property)",
            ));
        }
        Ok(())
    }

    fn secrets(&self) -> Vec<&SecretRef> {
        vec![&self.access_token]
    }

    fn build<'a>(
        &'a self,
        limits: RequestLimits,
        secrets: &'a SecretResolver,
        _budget: Option<Arc<dyn crate::destination::budget::CallBudget>>,
    ) -> BoxFuture<'a, Result<Arc<dyn Destination>, SetupError>> {
        Box::pin(async move {
            let token = secrets.resolve(&self.access_token).await?;
            let hubspot = Hubspot::new(self, token, limits.batch_size, limits.timeout)?;
            Ok(Arc::new(hubspot) as Arc<dyn Destination>)
        })
    }
}
