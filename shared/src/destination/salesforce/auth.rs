//! Salesforce OAuth 2.0 server-to-server: the client credentials and JWT bearer flows,
//! and the one cached access token a destination shares across requests (refreshed
//! once per stale token).

use serde::{Deserialize, Serialize};

use crate::{
    destination::{check_endpoint_url, SetupError},
    domain::outcome::RowError,
    secrets::SecretResolver,
};

use super::config::{SalesforceAuth, SalesforceFlow};

/// The largest token answer read (an access token, an instance URL and a few ids).
const TOKEN_ANSWER_BYTES: usize = 64 * 1024;

/// Lifetime of a JWT bearer assertion (Salesforce accepts at most a few minutes).
const ASSERTION_LIFETIME_SECS: i64 = 180;

/// Credentials of one of the two server-to-server flows, resolved from their secrets.
pub enum Credentials {
    /// OAuth 2.0 client credentials flow.
    ClientCredentials {
        /// Consumer key.
        client_id: String,
        /// Consumer secret.
        client_secret: String,
    },
    /// OAuth 2.0 JWT bearer flow.
    JwtBearer {
        /// Consumer key (`iss`).
        client_id: String,
        /// Integration user (`sub`).
        username: String,
        /// Signing key (RS256).
        key: jsonwebtoken::EncodingKey,
        /// `aud`, when not the login URL.
        audience: Option<String>,
    },
}

impl Credentials {
    /// Reads the flow's secrets (Secrets Manager in production).
    pub async fn resolve(
        auth: &SalesforceAuth,
        secrets: &SecretResolver,
    ) -> Result<Self, SetupError> {
        match auth.flow {
            SalesforceFlow::ClientCredentials => {
                let secret = auth.client_secret.as_ref().ok_or_else(|| {
                    SetupError::Credential("the client_credentials flow needs client_secret".into())
                })?;
                Ok(Self::ClientCredentials {
                    client_id: auth.client_id.clone(),
                    client_secret: secrets.resolve(secret).await?,
                })
            }
            SalesforceFlow::JwtBearer => {
                let key = auth.private_key.as_ref().ok_or_else(|| {
                    SetupError::Credential("the jwt_bearer flow needs private_key".into())
                })?;
                let pem = secrets.resolve(key).await?;
                Ok(Self::JwtBearer {
                    client_id: auth.client_id.clone(),
                    username: auth.username.clone().ok_or_else(|| {
                        SetupError::Credential("the jwt_bearer flow needs username".into())
                    })?,
                    key: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                        SetupError::Credential(format!("private_key is not an RSA PEM key: {e}"))
                    })?,
                    audience: auth.audience.clone(),
                })
            }
        }
    }
}

#[derive(Clone)]
pub(super) struct Token {
    pub(super) access_token: String,
    pub(super) instance_url: String,
    pub(super) generation: u64,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    instance_url: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
}

/// Where tokens come from, and the cached one.
pub(super) struct Auth {
    pub(super) client: reqwest::Client,
    pub(super) login_url: String,
    pub(super) instance_url: Option<String>,
    pub(super) credentials: Credentials,
    pub(super) token: tokio::sync::Mutex<Option<Token>>,
    pub(super) generation: std::sync::atomic::AtomicU64,
}

impl Auth {
    /// The cached token, or a new one when there is none or when `stale` is the
    /// generation of a token a call was refused with (one refresh per stale token).
    pub(super) async fn token(&self, stale: Option<u64>) -> Result<Token, RowError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref() {
            if Some(token.generation) != stale {
                return Ok(token.clone());
            }
        }
        let token = self.request_token().await?;
        *slot = Some(token.clone());
        Ok(token)
    }

    async fn request_token(&self) -> Result<Token, RowError> {
        let url = format!("{}/services/oauth2/token", self.login_url);
        let form: Vec<(&str, String)> = match &self.credentials {
            Credentials::ClientCredentials {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.clone()),
            ],
            Credentials::JwtBearer {
                client_id,
                username,
                key,
                audience,
            } => {
                let claims = Assertion {
                    iss: client_id,
                    sub: username,
                    aud: audience.as_deref().unwrap_or(&self.login_url),
                    exp: crate::domain::timestamp::now().unix_timestamp() + ASSERTION_LIFETIME_SECS,
                };
                let assertion = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                    &claims,
                    key,
                )
                .map_err(|e| {
                    RowError::permanent("AUTH_FAILED", format!("cannot sign the JWT: {e}"))
                })?;
                vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                    ),
                    ("assertion", assertion),
                ]
            }
        };
        let response = self
            .client
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|err| {
                RowError::retryable(
                    "AUTH_UNAVAILABLE",
                    format!(
                        "cannot reach the Salesforce token endpoint: {}",
                        err.without_url()
                    ),
                )
            })?;
        let mut response = response;
        let status = response.status();
        if status.is_redirection() {
            return Err(crate::destination::http::redirect_error(
                status,
                response.headers(),
                "the Salesforce token endpoint",
            ));
        }
        // A token answer is small; a cut or oversized one is retried like an outage.
        let text =
            match crate::destination::http::read_body(&mut response, TOKEN_ANSWER_BYTES).await {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err(err) => {
                    return Err(RowError::retryable(
                        "AUTH_UNAVAILABLE",
                        format!("the Salesforce token endpoint's answer was unreadable: {err}"),
                    ))
                }
            };
        if status.is_success() {
            let answer: TokenAnswer = serde_json::from_str(&text).map_err(|_| {
                RowError::retryable(
                    "AUTH_UNAVAILABLE",
                    "the Salesforce token endpoint answered without an access token",
                )
            })?;
            let instance_url = self
                .instance_url
                .clone()
                .or(answer
                    .instance_url
                    .map(|u| u.trim_end_matches('/').to_owned()))
                .ok_or_else(|| {
                    RowError::permanent(
                        "AUTH_FAILED",
                        "the token answer names no instance_url; set salesforce.instance_url",
                    )
                })?;
            if let Err(message) = check_endpoint_url(&instance_url) {
                return Err(RowError::permanent("AUTH_FAILED", message));
            }
            let generation = self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            tracing::info!(generation, "Salesforce access token obtained");
            return Ok(Token {
                access_token: answer.access_token,
                instance_url,
                generation,
            });
        }
        let oauth_error = serde_json::from_str::<OAuthError>(&text)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP_{}", status.as_u16()));
        tracing::warn!(status = status.as_u16(), error = %oauth_error, "Salesforce refused the token request");
        if status.is_server_error() || status.as_u16() == 429 {
            Err(RowError::retryable(
                "AUTH_UNAVAILABLE",
                format!("the Salesforce token endpoint answered {status}"),
            ))
        } else {
            // Wrong consumer key, secret, user or certificate: retrying cannot help
            // before an operator fixes the configuration.
            Err(RowError::permanent(
                "AUTH_FAILED",
                format!("Salesforce refused the credentials: {oauth_error}"),
            ))
        }
    }
}
