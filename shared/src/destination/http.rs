//! What every HTTP destination shares: its client (no redirects followed), answers read
//! with a size cap, the readings of a transport failure, a redirect and `Retry-After`
//! as row errors (one wording for all kinds), and the HTTPS rule checked again at
//! request time.
//!
//! Every value here comes from the other end, so every reading is defensive: a header
//! that is not text, not a number or absurdly large is ignored or capped, never a panic.

use std::time::Duration;

use reqwest::{header::HeaderMap, Response, StatusCode};

use super::{check_endpoint_url, SetupError};
use crate::domain::{outcome::RowError, retry::SQS_MAX_VISIBILITY};

/// The largest answer body read from a destination, in bytes (8 MiB). A valid answer
/// for the largest batch any kind allows fits with room to spare: 1,000 webhook results
/// (or 200 Salesforce results, 100 HubSpot results) at 8 KiB each. A longer answer is
/// not read further: its rows are retried (`ANSWER_TOO_LARGE`).
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// The longest wait a destination may ask for (`Retry-After`, a per-row
/// `retry_after_secs`, a rate-limit interval): SQS's 12-hour visibility limit, the most
/// a row can be hidden anyway. Longer (or overflowing) values are cut to it.
pub const MAX_WAIT: Duration = SQS_MAX_VISIBILITY;

/// The HTTP client of one destination: its request timeout, resync's user agent, and
/// **no redirects followed**: a redirect would re-send a signed body (307/308) or
/// credentials to a URL nobody configured, possibly over plain http. A 3xx answer is a
/// permanent error instead ([`redirect_error`]).
pub fn client(timeout: Duration) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("resync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SetupError::Client)
}

/// A request that got no answer, as a retryable row error: `TIMEOUT`, `CONNECTION` or
/// `TRANSPORT`. `peer` names the other end in the message ("the webhook", "HubSpot").
/// URLs are left out of the message (they may carry tokens).
pub fn transport_error(err: reqwest::Error, peer: &str) -> RowError {
    if err.is_timeout() {
        RowError::unanswered("TIMEOUT", format!("{peer} did not answer in time"))
    } else if err.is_connect() {
        RowError::unanswered("CONNECTION", format!("cannot connect to {peer}"))
    } else {
        RowError::unanswered(
            "TRANSPORT",
            format!("request failed: {}", err.without_url()),
        )
    }
}

/// Why an answer's body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed or timed out before the body ended.
    #[error("the answer was cut off: {0}")]
    Cut(#[source] reqwest::Error),
    /// The body is longer than the cap.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl BodyError {
    /// The error every row of the request gets: retryable (the destination may or may
    /// not have written them; writes are idempotent upserts), `ANSWER_CUT` or
    /// `ANSWER_TOO_LARGE`.
    pub fn row_error(&self, peer: &str, status: StatusCode) -> RowError {
        match self {
            Self::Cut(err) if err.is_timeout() => RowError::unanswered(
                "ANSWER_CUT",
                format!("{peer}'s {status} answer did not end in time"),
            ),
            Self::Cut(_) => RowError::unanswered(
                "ANSWER_CUT",
                format!("{peer}'s {status} answer was cut off"),
            ),
            Self::TooLarge(cap) => RowError::unanswered(
                "ANSWER_TOO_LARGE",
                format!("{peer}'s {status} answer is larger than {cap} bytes; not read"),
            ),
        }
    }
}

/// Reads an answer's body whole, streaming, and at most `cap` bytes of it: a body the
/// `Content-Length` announces larger is not read at all, a longer one is not read past
/// the cap.
pub async fn read_body(response: &mut Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if let Some(length) = response.content_length() {
        if length > cap as u64 {
            return Err(BodyError::TooLarge(cap));
        }
    }
    let mut body = Vec::with_capacity(
        response
            .content_length()
            .map_or(0, |length| usize::try_from(length).unwrap_or(cap).min(cap)),
    );
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Cut)? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Err(BodyError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A 3xx answer as a permanent error for every row: resync follows no redirects (the
/// request is not sent again, to the new location or anywhere). The message names the
/// location without its query or fragment (which may carry tokens), so an operator can
/// configure the final URL.
pub fn redirect_error(status: StatusCode, headers: &HeaderMap, peer: &str) -> RowError {
    let location = headers
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            let end = value.find(['?', '#']).unwrap_or(value.len());
            value[..end].to_owned()
        })
        .unwrap_or_else(|| "nowhere readable".to_owned());
    RowError::permanent(
        "REDIRECT",
        format!(
            "{peer} answered {status} redirecting to {location}; resync follows no redirects: configure the final URL"
        ),
    )
}

/// The HTTPS rule again at request time, for every URL a request goes to (configured
/// ones, and those a destination learns later, such as Salesforce's `instance_url`):
/// plain http only to loopback. A refusal is a permanent `INSECURE_URL` error naming
/// no URL (it may carry tokens).
pub fn check_request_url(url: &str, peer: &str) -> Result<(), RowError> {
    check_endpoint_url(url).map_err(|_| {
        RowError::permanent(
            "INSECURE_URL",
            format!("{peer}'s URL is not https (plain http is sent only to loopback addresses)"),
        )
    })
}

/// A header's value as a whole number (surrounding spaces allowed); `None` when it is
/// absent, not text, not a number or beyond 64 bits.
pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A wait a destination asked for, cut to [`MAX_WAIT`].
pub fn capped_wait(wait: Duration) -> Duration {
    wait.min(MAX_WAIT)
}

/// `Retry-After`, in either of its forms (RFC 9110): delay-seconds, or an HTTP-date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`; a date in the past is no wait). Capped at
/// [`MAX_WAIT`], a number of any length included; an unreadable value is ignored.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?;
    parse_retry_after(value, crate::domain::timestamp::now())
}

fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a long time".
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(capped_wait(Duration::from_secs(secs)));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let date = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let wait = date - now;
    if wait.is_negative() {
        return Some(Duration::ZERO);
    }
    Some(capped_wait(Duration::try_from(wait).unwrap_or(MAX_WAIT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    /// Issue 13, item 12: a huge `Retry-After` overflowed the waits built from it (the
    /// HubSpot pause panicked); every reading is capped at SQS's 12 hours.
    #[test]
    fn retry_after_of_any_size_is_capped_at_twelve_hours() {
        for value in [
            "18446744073709551615",
            "99999999999999999999999999999999999999",
            "86400",
        ] {
            assert_eq!(
                retry_after(&headers("retry-after", value)),
                Some(MAX_WAIT),
                "{value}"
            );
        }
        assert_eq!(
            retry_after(&headers("retry-after", " 7 ")),
            Some(Duration::from_secs(7))
        );
        for value in ["-1", "1.5", "soon", ""] {
            assert_eq!(retry_after(&headers("retry-after", value)), None, "{value}");
        }
    }

    /// Issue 13, item 12: the HTTP-date form of `Retry-After` was ignored.
    #[test]
    fn retry_after_as_an_http_date_is_the_time_until_it() {
        let now = time::macros::datetime!(2026-12-01 10:00:00 UTC);
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_WAIT)
        );
        assert_eq!(
            parse_retry_after("Tue, 41 Dec 2026 10:00:30 GMT", now),
            None
        );
    }

    #[test]
    fn numeric_headers_beyond_64_bits_are_ignored() {
        assert_eq!(
            header_u64(&headers("x-n", "99999999999999999999999"), "x-n"),
            None
        );
        assert_eq!(header_u64(&headers("x-n", "12"), "x-n"), Some(12));
    }

    #[test]
    fn a_redirect_names_its_location_without_query() {
        let error = redirect_error(
            StatusCode::TEMPORARY_REDIRECT,
            &headers("location", "http://evil.example/rows?token=abc#x"),
            "the webhook",
        );
        assert_eq!(error.code, "REDIRECT");
        assert!(error.message.contains("http://evil.example/rows"));
        assert!(!error.message.contains("token"), "{}", error.message);
    }
}
