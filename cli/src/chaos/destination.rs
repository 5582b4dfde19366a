//! The chaos run's destination: a webhook endpoint that misbehaves on a seed, and keeps
//! its own log of what it received, wrote and answered, which the checks read instead
//! of resync's counts.
//!
//! Its faults, each drawn per request (or per row) from the seed and counted by kind:
//!
//! - **rows**: answered `retry` or `rejected`; omitted from the results (not written);
//! - **requests, nothing written**: 429 (`Retry-After: 1`), 503, a redirect (307 to
//!   another URL: resync must not follow it; the rows fail as `REDIRECT`), the
//!   connection dropped before an answer, every row refused with a 400 naming none
//!   because the request holds a *poisoned* key (a fixed share of keys, by the seed:
//!   resync must split the request to isolate them);
//! - **requests, written but not acknowledged**: the answer lost (it comes after
//!   resync's timeout), the body cut mid-stream (the connection dropped after the
//!   headers), the results document truncated or malformed, a body larger than
//!   resync's cap;
//! - **requests, written and acknowledged oddly**: a slow answer (within the timeout),
//!   results naming keys that were not sent, huge headers (a 32 KiB header and an
//!   absurd `Retry-After` next to a valid answer).
//!
//! Only a row answered `delivered` in an answer resync could read is [`Answer::Delivered`]
//! in the log: the checks take nothing else as acknowledged.
//!
//! Like an endpoint that honours the contract's idempotency keys, it answers a row it
//! already wrote under the same idempotency key (`run_id:key`, the same on every retry
//! within a run) `delivered` again instead of drawing a row fault for it: a replay of
//! a written row — after a crash lost the answer to resync, or a batch delivered twice —
//! is not refused at random. Request faults still apply.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use resync_shared::destination::{
    http::MAX_ANSWER_BYTES,
    webhook::{ResultsBody, RowStatus},
};
use serde::Deserialize;

/// How often each fault happens, per request or per row (0..=1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DestinationFaults {
    /// A row answered `retry` (retryable).
    pub row_retry: f64,
    /// A row answered `rejected` (permanent).
    pub row_reject: f64,
    /// A row left out of the results (and not written).
    pub row_omitted: f64,
    /// A request answered 429 with `Retry-After: 1`.
    pub rate_limit: f64,
    /// A request answered 503.
    pub unavailable: f64,
    /// A request whose rows are written but whose answer comes after resync's timeout.
    pub answer_lost: f64,
    /// A request answered 307 to another URL (nothing written there or here).
    pub redirect: f64,
    /// A request whose connection is dropped before any answer (nothing written).
    pub dropped: f64,
    /// A request written whose answer's body is cut mid-stream (connection dropped
    /// after the headers).
    pub cut_body: f64,
    /// A request written whose results document is cut short (a complete HTTP body).
    pub truncated: f64,
    /// A request written whose results document is not valid JSON.
    pub malformed: f64,
    /// A request written whose answer is larger than resync's cap.
    pub huge_body: f64,
    /// A request written and answered with a 32 KiB header and an absurd `Retry-After`.
    pub huge_headers: f64,
    /// A request written and answered slowly (within resync's timeout).
    pub slow: f64,
    /// A request whose results also name keys it did not send.
    pub foreign_keys: f64,
    /// The share of keys that are poisoned: a request holding one is refused whole
    /// with a 400 that names no row.
    pub poisoned: f64,
}

impl DestinationFaults {
    /// No faults.
    pub const NONE: Self = Self {
        row_retry: 0.0,
        row_reject: 0.0,
        row_omitted: 0.0,
        rate_limit: 0.0,
        unavailable: 0.0,
        answer_lost: 0.0,
        redirect: 0.0,
        dropped: 0.0,
        cut_body: 0.0,
        truncated: 0.0,
        malformed: 0.0,
        huge_body: 0.0,
        huge_headers: 0.0,
        slow: 0.0,
        foreign_keys: 0.0,
        poisoned: 0.0,
    };
}

/// What the destination did with one row of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Written, and resync was told so in an answer it could read.
    Delivered,
    /// Written, but the answer was lost, cut, garbled or too large to read.
    WrittenAnswerLost,
    /// Answered `retry`.
    Retry,
    /// Answered `rejected`.
    Rejected,
    /// Left out of the results; not written.
    Omitted,
    /// The whole request was answered 429 (a rate limit: no attempt spent).
    RateLimited,
    /// The whole request was answered 503.
    Unavailable,
    /// The whole request was answered with a redirect; not written.
    Redirected,
    /// The connection was dropped before an answer; not written.
    Dropped,
    /// The whole request was refused (400, naming no row) for a poisoned key in it.
    Refused,
}

impl Answer {
    /// Whether the destination wrote the row.
    pub fn written(self) -> bool {
        matches!(self, Self::Delivered | Self::WrittenAnswerLost)
    }
}

/// One row of one request, as the destination logged it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The run, from the row's idempotency key (`run_id:key`).
    pub run_id: String,
    /// The row's key.
    pub key: String,
    /// What happened to it.
    pub answer: Answer,
    /// The request's sequence number (order of arrival).
    pub request: u64,
}

#[derive(Debug)]
struct ChaosState {
    faults: DestinationFaults,
    seed: u64,
    rng: u64,
    requests: u64,
    log: Vec<Received>,
    injected: HashMap<&'static str, u64>,
    /// Idempotency keys of the rows written.
    written: HashSet<String>,
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(z: u64) -> f64 {
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl ChaosState {
    fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        // splitmix64, as the emulator's fault plan.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        unit(splitmix(self.rng)) < probability
    }

    /// Whether `key` is poisoned: fixed per key and seed, so every request holding it
    /// is refused while the fault lasts.
    fn poisoned(&self, key: &str) -> bool {
        if self.faults.poisoned <= 0.0 {
            return false;
        }
        let hash = key.bytes().fold(self.seed ^ 0x00B1_5EC7, |h, b| {
            splitmix(h.wrapping_add(u64::from(b)))
        });
        unit(hash) < self.faults.poisoned
    }

    fn count(&mut self, fault: &'static str) {
        *self.injected.entry(fault).or_default() += 1;
    }
}

/// A running chaos destination.
pub struct ChaosDestination {
    addr: SocketAddr,
    state: Arc<Mutex<ChaosState>>,
    answer_delay: Duration,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct RequestBody {
    rows: Vec<RequestRow>,
}

#[derive(Deserialize)]
struct RequestRow {
    key: String,
    idempotency_key: String,
}

/// How long a slow answer takes (well inside the chaos destination's 2 s timeout).
const SLOW_ANSWER: Duration = Duration::from_millis(300);

impl ChaosDestination {
    /// Starts on a free loopback port. A lost answer is sent after `answer_delay`
    /// (longer than resync's request timeout).
    pub async fn start(
        seed: u64,
        faults: DestinationFaults,
        answer_delay: Duration,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(ChaosState {
            faults,
            seed,
            rng: seed ^ 0x005E_ED0F_DE57,
            requests: 0,
            log: Vec::new(),
            injected: HashMap::new(),
            written: HashSet::new(),
        }));
        let app = Router::new()
            .route("/rows", post(receive))
            .route("/elsewhere", post(elsewhere))
            .with_state((state.clone(), answer_delay));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            answer_delay,
            task,
        })
    }

    /// The URL to configure as the webhook's `url`.
    pub fn url(&self) -> String {
        format!("http://{}/rows", self.addr)
    }

    /// How long a lost answer takes.
    pub fn answer_delay(&self) -> Duration {
        self.answer_delay
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: DestinationFaults) {
        self.lock().faults = faults;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaosState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every row received so far, in order of arrival.
    pub fn log(&self) -> Vec<Received> {
        self.lock().log.clone()
    }

    /// Rows received so far (the log's length).
    pub fn received(&self) -> usize {
        self.lock().log.len()
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> HashMap<&'static str, u64> {
        self.lock().injected.clone()
    }

    /// Keys written (answered or not) in the log.
    pub fn written(&self) -> HashSet<String> {
        self.log()
            .into_iter()
            .filter(|r| r.answer.written())
            .map(|r| r.key)
            .collect()
    }
}

impl Drop for ChaosDestination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a request as a whole gets, drawn before its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whole {
    RateLimited,
    Unavailable,
    Redirected,
    Dropped,
    Refused,
    AnswerLost,
    CutBody,
    Truncated,
    Malformed,
    HugeBody,
    HugeHeaders,
    Slow,
}

impl Whole {
    fn draw(state: &mut ChaosState, rows: &[RequestRow]) -> Option<Self> {
        let faults = state.faults;
        let draws = [
            (faults.rate_limit, Self::RateLimited, "rate_limit"),
            (faults.unavailable, Self::Unavailable, "unavailable"),
            (faults.redirect, Self::Redirected, "redirect"),
            (faults.dropped, Self::Dropped, "dropped_connection"),
            (faults.answer_lost, Self::AnswerLost, "answer_lost"),
            (faults.cut_body, Self::CutBody, "cut_body"),
            (faults.truncated, Self::Truncated, "truncated_results"),
            (faults.malformed, Self::Malformed, "malformed_results"),
            (faults.huge_body, Self::HugeBody, "huge_body"),
            (faults.huge_headers, Self::HugeHeaders, "huge_headers"),
            (faults.slow, Self::Slow, "slow_answer"),
        ];
        for (probability, whole, name) in draws {
            if state.chance(probability) {
                state.count(name);
                return Some(whole);
            }
        }
        if rows.iter().any(|row| state.poisoned(&row.key)) {
            state.count("refused_for_a_poisoned_row");
            return Some(Self::Refused);
        }
        None
    }

    /// The log's answer for every row of the request, when the fault decides it.
    fn answer(self) -> Option<Answer> {
        match self {
            Self::RateLimited => Some(Answer::RateLimited),
            Self::Unavailable => Some(Answer::Unavailable),
            Self::Redirected => Some(Answer::Redirected),
            Self::Dropped => Some(Answer::Dropped),
            Self::Refused => Some(Answer::Refused),
            Self::AnswerLost
            | Self::CutBody
            | Self::Truncated
            | Self::Malformed
            | Self::HugeBody => Some(Answer::WrittenAnswerLost),
            Self::HugeHeaders | Self::Slow => None,
        }
    }
}

/// A redirect's target: answers 204 to anything (and logs nothing). resync must never
/// get here.
async fn elsewhere(State((state, _)): State<(Arc<Mutex<ChaosState>>, Duration)>) -> StatusCode {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .count("redirect_followed");
    StatusCode::NO_CONTENT
}

/// An answer that sends its headers and `first`, then drops the connection before the
/// `announced` length: the body is cut mid-stream. With nothing to send first, the
/// connection is dropped before any answer at all (hyper has not flushed the head yet).
fn cut_after(first: Vec<u8>, announced: usize) -> Response {
    use futures::StreamExt as _;
    let flushed = !first.is_empty();
    let head =
        futures::stream::iter(flushed.then(|| Ok::<Bytes, std::io::Error>(Bytes::from(first))));
    let cut = futures::stream::once(async move {
        if flushed {
            // Pending for a moment, so hyper writes the head and the first bytes.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(std::io::Error::other(
            "the chaos destination cut the answer",
        ))
    });
    let mut response = Response::new(Body::from_stream(head.chain(cut)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, announced.into());
    response
}

async fn receive(
    State((state, answer_delay)): State<(Arc<Mutex<ChaosState>>, Duration)>,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: RequestBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("bad body: {err}")).into_response(),
    };
    let (whole, results) = {
        let mut state = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.requests += 1;
        let sequence = state.requests;
        let faults = state.faults;
        let whole = Whole::draw(&mut state, &request.rows);
        let mut results = Vec::with_capacity(request.rows.len());
        for row in request.rows {
            let run_id = row
                .idempotency_key
                .strip_suffix(row.key.as_str())
                .and_then(|run| run.strip_suffix(':'))
                .unwrap_or_default()
                .to_owned();
            let answer = match whole.and_then(Whole::answer) {
                Some(answer) => answer,
                None if state.written.contains(&row.idempotency_key) => Answer::Delivered,
                None if state.chance(faults.row_retry) => {
                    state.count("row_retry");
                    Answer::Retry
                }
                None if state.chance(faults.row_reject) => {
                    state.count("row_reject");
                    Answer::Rejected
                }
                None if state.chance(faults.row_omitted) => {
                    state.count("row_omitted");
                    Answer::Omitted
                }
                None => Answer::Delivered,
            };
            if answer.written() {
                state.written.insert(row.idempotency_key.clone());
            }
            let (status, code) = match answer {
                Answer::Retry => ("retry", Some("UNABLE_TO_LOCK_ROW")),
                Answer::Rejected => ("rejected", Some("FIELD_CUSTOM_VALIDATION_EXCEPTION")),
                _ => ("delivered", None),
            };
            if answer != Answer::Omitted {
                results.push(RowStatus {
                    key: row.key.clone().into(),
                    status: status.into(),
                    code: code.map(Into::into),
                    message: code.map(|_| "injected by the chaos destination".into()),
                    retry_after_secs: None,
                });
            }
            state.log.push(Received {
                run_id,
                key: row.key,
                answer,
                request: sequence,
            });
        }
        if whole.is_none() && state.chance(faults.foreign_keys) {
            state.count("foreign_keys");
            for i in 0..3 {
                results.push(RowStatus {
                    key: format!("not-sent-{sequence}-{i}").into(),
                    status: "delivered".into(),
                    code: None,
                    message: None,
                    retry_after_secs: None,
                });
            }
        }
        (whole, results)
    };
    let json = serde_json::to_vec(&ResultsBody { results }).unwrap_or_default();
    let ok = |body: Vec<u8>| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    match whole {
        None => ok(json),
        Some(Whole::RateLimited) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        Some(Whole::Unavailable) => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response()
        }
        Some(Whole::Redirected) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, "/elsewhere")],
        )
            .into_response(),
        Some(Whole::Refused) => (
            StatusCode::BAD_REQUEST,
            r#"{"error":"a row of this request is invalid"}"#,
        )
            .into_response(),
        Some(Whole::Dropped) => cut_after(Vec::new(), json.len().max(1)),
        Some(Whole::CutBody) => {
            let half = json.len() / 2;
            cut_after(json[..half].to_vec(), json.len())
        }
        Some(Whole::Truncated) => {
            let keep = json.len().saturating_sub(json.len() / 3).max(1);
            ok(json[..keep.min(json.len())].to_vec())
        }
        Some(Whole::Malformed) => {
            let mut text = String::from_utf8_lossy(&json).into_owned();
            // A trailing comma inside the list: JSON no parser accepts.
            text.insert(text.len().saturating_sub(2), ',');
            ok(text.into_bytes())
        }
        Some(Whole::HugeBody) => {
            let mut body = json;
            body.resize(MAX_ANSWER_BYTES + 1024, b' ');
            ok(body)
        }
        Some(Whole::HugeHeaders) => {
            let mut response = ok(json);
            let headers = response.headers_mut();
            if let Ok(padding) = "p".repeat(32 * 1024).parse() {
                headers.insert("x-chaos-padding", padding);
            }
            headers.insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static("99999999999999999999999999999999"),
            );
            response
        }
        Some(Whole::Slow) => {
            tokio::time::sleep(SLOW_ANSWER).await;
            ok(json)
        }
        Some(Whole::AnswerLost) => {
            tokio::time::sleep(answer_delay).await;
            ok(json)
        }
    }
}

#[cfg(test)]
mod tests;
