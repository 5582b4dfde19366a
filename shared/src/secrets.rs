//! Where destination secrets come from: Secrets Manager in production; an environment
//! variable or a literal for local runs. Secret values are never logged.

use serde::Deserialize;

/// A reference to a secret in the configuration file: a map with exactly one of
/// `secret_id`, `env` or `value`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SecretRefFields")]
pub enum SecretRef {
    /// A Secrets Manager secret (name or ARN); its `SecretString` is the value.
    SecretId(String),
    /// An environment variable of the function or CLI.
    Env(String),
    /// A literal (for local tries only; the deploy checks refuse it).
    Value(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRefFields {
    secret_id: Option<String>,
    env: Option<String>,
    value: Option<String>,
}

impl TryFrom<SecretRefFields> for SecretRef {
    type Error = &'static str;

    fn try_from(fields: SecretRefFields) -> Result<Self, Self::Error> {
        match (fields.secret_id, fields.env, fields.value) {
            (Some(id), None, None) => Ok(Self::SecretId(id)),
            (None, Some(name), None) => Ok(Self::Env(name)),
            (None, None, Some(value)) => Ok(Self::Value(value)),
            _ => Err("a secret takes exactly one of `secret_id`, `env` or `value`"),
        }
    }
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SecretId(id) => f.debug_tuple("SecretId").field(id).finish(),
            Self::Env(name) => f.debug_tuple("Env").field(name).finish(),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// Secrets Manager failed or the secret has no string value.
    #[error("cannot read secret {id}: {reason}")]
    SecretsManager {
        /// The secret's id.
        id: String,
        /// Why (never the value).
        reason: String,
    },
}

/// Reads secrets, from Secrets Manager when a client is given.
#[derive(Clone, Debug)]
pub struct SecretResolver {
    client: Option<aws_sdk_secretsmanager::Client>,
}

impl SecretResolver {
    /// A resolver that can read Secrets Manager.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self {
            client: Some(client),
        }
    }

    /// A resolver for env and literal references only.
    pub fn local_only() -> Self {
        Self { client: None }
    }

    /// Resolves one reference.
    pub async fn resolve(&self, secret: &SecretRef) -> Result<String, SecretError> {
        match secret {
            SecretRef::Value(value) => Ok(value.clone()),
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))
            }
            SecretRef::SecretId(id) => {
                let client = self
                    .client
                    .as_ref()
                    .ok_or_else(|| SecretError::SecretsManager {
                        id: id.clone(),
                        reason: "no Secrets Manager client configured".into(),
                    })?;
                let output = client
                    .get_secret_value()
                    .secret_id(id)
                    .send()
                    .await
                    .map_err(|err| SecretError::SecretsManager {
                        id: id.clone(),
                        reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&err)
                            .to_string(),
                    })?;
                output
                    .secret_string
                    .ok_or_else(|| SecretError::SecretsManager {
                        id: id.clone(),
                        reason: "the secret has no SecretString".into(),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_secrets_are_redacted_in_debug_output() {
        let secret = SecretRef::Value("hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn env_secrets_name_the_missing_variable() {
        let resolver = SecretResolver::local_only();
        let err = resolver
            .resolve(&SecretRef::Env("RESYNC_TEST_SURELY_UNSET".into()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("RESYNC_TEST_SURELY_UNSET"));
    }
}
