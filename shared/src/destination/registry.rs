//! The destination kinds resync knows, in one place.
//!
//! Each line of [`kinds!`] names a kind as the configuration spells it, its enum
//! variant and the [`Section`] type that owns its settings; everything else (parsing a
//! section, batch limits, validation, the secrets it reads, building the destination)
//! is dispatched from here to that type. Adding a destination: write its module (a type
//! implementing [`Section`] and one implementing [`Destination`]), then add its line.

use std::sync::Arc;

use serde::Deserialize;

use super::{
    budget::CallBudget, hubspot::HubspotConfig, salesforce::SalesforceConfig,
    webhook::WebhookConfig, Destination, DestinationError, RequestLimits, Section, SettingsError,
};
use crate::secrets::{SecretRef, SecretResolver};

macro_rules! kinds {
    ($($variant:ident => $section:ty),+ $(,)?) => {
        /// Which kind of API a destination speaks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum DestinationKind {
            $(
                #[doc = concat!("Settings: [`", stringify!($section), "`].")]
                $variant,
            )+
        }

        /// A destination's own settings: the section of its kind.
        #[derive(Debug, Clone)]
        pub enum DestinationSettings {
            $(
                #[doc = concat!("A `", stringify!($variant), "` destination.")]
                $variant($section),
            )+
        }

        impl DestinationKind {
            /// Every kind, in the registry's order.
            pub const ALL: &'static [DestinationKind] = &[$(Self::$variant),+];

            /// The kind as the configuration spells it (also its section's key).
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => <$section as Section>::KIND),+ }
            }

            /// The largest batch the kind's API accepts in one request.
            pub fn max_batch(self) -> usize {
                match self { $(Self::$variant => <$section as Section>::MAX_BATCH),+ }
            }

            /// Rows per request when the configuration does not say.
            pub fn default_batch(self) -> usize {
                match self { $(Self::$variant => <$section as Section>::DEFAULT_BATCH),+ }
            }

            /// What the kind's section must hold (for the error when it is missing).
            pub fn section_needs(self) -> &'static str {
                match self { $(Self::$variant => <$section as Section>::NEEDS),+ }
            }

            /// Parses the kind's section; a shape error names the field inside it.
            pub fn parse_section(
                self,
                section: serde_yaml::Value,
            ) -> Result<DestinationSettings, SettingsError> {
                match self {
                    $(Self::$variant => parse::<$section>(section).map(DestinationSettings::$variant)),+
                }
            }
        }

        impl DestinationSettings {
            /// The kind these settings belong to.
            pub fn kind(&self) -> DestinationKind {
                match self { $(Self::$variant(_) => DestinationKind::$variant),+ }
            }

            /// Checks the values; the error names the field inside the section.
            pub fn validate(&self) -> Result<(), SettingsError> {
                match self { $(Self::$variant(section) => section.validate()),+ }
            }

            /// The secrets the section refers to.
            pub fn secrets(&self) -> Vec<&SecretRef> {
                match self { $(Self::$variant(section) => section.secrets()),+ }
            }

            /// Resolves the secrets and builds the destination `id` describes.
            pub async fn build(
                &self,
                id: &str,
                limits: RequestLimits,
                secrets: &SecretResolver,
                budget: Option<Arc<dyn CallBudget>>,
            ) -> Result<Arc<dyn Destination>, DestinationError> {
                let built = match self {
                    $(Self::$variant(section) => section.build(limits, secrets, budget).await),+
                };
                built.map_err(|source| DestinationError {
                    destination: id.to_owned(),
                    source,
                })
            }
        }
    };
}

kinds! {
    Webhook => WebhookConfig,
    Salesforce => SalesforceConfig,
    Hubspot => HubspotConfig,
}

fn parse<S: Section>(section: serde_yaml::Value) -> Result<S, SettingsError> {
    crate::yaml::from_yaml(section).map_err(|err| SettingsError::new(err.field, err.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_named_by_its_section_key() {
        for kind in DestinationKind::ALL {
            let parsed: DestinationKind =
                serde_yaml::from_str(kind.as_str()).expect("the kind's own name parses");
            assert_eq!(parsed, *kind);
            assert!(kind.default_batch() >= 1 && kind.default_batch() <= kind.max_batch());
        }
    }

    #[test]
    fn a_section_shape_error_names_the_field_inside_it() {
        let section = serde_yaml::from_str("{ url: [1] }").unwrap();
        let err = DestinationKind::Webhook.parse_section(section).unwrap_err();
        assert_eq!(err.field, "url");
    }
}
