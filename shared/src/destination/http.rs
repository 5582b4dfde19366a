//! What every HTTP destination shares: its client, and the readings of a transport
//! failure and of `Retry-After` as row errors (one wording for all kinds).

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::SetupError;
use crate::domain::outcome::RowError;

/// The HTTP client of one destination: its request timeout and resync's user agent.
pub fn client(timeout: Duration) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("resync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SetupError::Client)
}

/// A request that got no answer, as a retryable row error: `TIMEOUT`, `CONNECTION` or
/// `TRANSPORT`. `peer` names the other end in the message ("the webhook", "HubSpot").
/// URLs are left out of the message (they may carry tokens).
pub fn transport_error(err: reqwest::Error, peer: &str) -> RowError {
    if err.is_timeout() {
        RowError::retryable("TIMEOUT", format!("{peer} did not answer in time"))
    } else if err.is_connect() {
        RowError::retryable("CONNECTION", format!("cannot connect to {peer}"))
    } else {
        RowError::retryable(
            "TRANSPORT",
            format!("request failed: {}", err.without_url()),
        )
    }
}

/// A header's value as a whole number (surrounding spaces allowed).
pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the APIs resync calls).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_u64(headers, "retry-after").map(Duration::from_secs)
}
