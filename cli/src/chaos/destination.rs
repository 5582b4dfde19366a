//! The chaos run's destination: a webhook endpoint that misbehaves on a seed — rows
//! answered `retry` or `rejected`, requests answered 429 or 503, answers lost after
//! the write (the request outlives resync's timeout) — and keeps its own log of what it
//! received and answered, which the checks read instead of resync's counts.
//!
//! Like an endpoint that honours the contract's idempotency keys, it answers a row it
//! already wrote under the same idempotency key (`run_id:key`, the same on every retry
//! within a run) `delivered` again instead of drawing a row fault for it: a replay of
//! a written row — after a crash lost the answer to resync, or a batch delivered twice —
//! is not refused at random. Request faults (429, 503, a lost answer) still apply.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use resync_shared::destination::webhook::{ResultsBody, RowStatus};
use serde::Deserialize;

/// How often each fault happens, per request or per row (0..=1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DestinationFaults {
    /// A row answered `retry` (retryable).
    pub row_retry: f64,
    /// A row answered `rejected` (permanent).
    pub row_reject: f64,
    /// A request answered 429 with `Retry-After: 1`.
    pub rate_limit: f64,
    /// A request answered 503.
    pub unavailable: f64,
    /// A request whose rows are written but whose answer comes after resync's timeout.
    pub answer_lost: f64,
}

impl DestinationFaults {
    /// No faults.
    pub const NONE: Self = Self {
        row_retry: 0.0,
        row_reject: 0.0,
        rate_limit: 0.0,
        unavailable: 0.0,
        answer_lost: 0.0,
    };
}

/// What the destination did with one row of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Written, and resync was told so.
    Delivered,
    /// Written, but the answer was lost (resync saw a timeout).
    WrittenAnswerLost,
    /// Answered `retry`.
    Retry,
    /// Answered `rejected`.
    Rejected,
    /// The whole request was answered 429 (a rate limit: no attempt spent).
    RateLimited,
    /// The whole request was answered 503.
    Unavailable,
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
    rng: u64,
    requests: u64,
    log: Vec<Received>,
    injected: HashMap<&'static str, u64>,
    /// Idempotency keys of the rows written.
    written: HashSet<String>,
}

impl ChaosState {
    fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        // splitmix64, as the emulator's fault plan.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < probability
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
            rng: seed ^ 0x005E_ED0F_DE57,
            requests: 0,
            log: Vec::new(),
            injected: HashMap::new(),
            written: HashSet::new(),
        }));
        let app = Router::new()
            .route("/rows", post(receive))
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
        self.state.lock().expect("state").faults = faults;
    }

    /// Every row received so far, in order of arrival.
    pub fn log(&self) -> Vec<Received> {
        self.state.lock().expect("state").log.clone()
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> HashMap<&'static str, u64> {
        self.state.lock().expect("state").injected.clone()
    }

    /// Keys written (answered or not) in the log.
    pub fn written(&self) -> HashSet<String> {
        self.log()
            .into_iter()
            .filter(|r| matches!(r.answer, Answer::Delivered | Answer::WrittenAnswerLost))
            .map(|r| r.key)
            .collect()
    }
}

impl Drop for ChaosDestination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State((state, answer_delay)): State<(Arc<Mutex<ChaosState>>, Duration)>,
    _headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: RequestBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("bad body: {err}")).into_response(),
    };
    let (response, delay) = {
        let mut state = state.lock().expect("state");
        state.requests += 1;
        let sequence = state.requests;
        let faults = state.faults;
        let whole = if state.chance(faults.rate_limit) {
            state.count("rate_limit");
            Some(Answer::RateLimited)
        } else if state.chance(faults.unavailable) {
            state.count("unavailable");
            Some(Answer::Unavailable)
        } else if state.chance(faults.answer_lost) {
            state.count("answer_lost");
            Some(Answer::WrittenAnswerLost)
        } else {
            None
        };
        let mut results = Vec::with_capacity(request.rows.len());
        for row in request.rows {
            let run_id = row
                .idempotency_key
                .strip_suffix(row.key.as_str())
                .and_then(|run| run.strip_suffix(':'))
                .unwrap_or_default()
                .to_owned();
            let answer = match whole {
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
                None => Answer::Delivered,
            };
            if matches!(answer, Answer::Delivered | Answer::WrittenAnswerLost) {
                state.written.insert(row.idempotency_key.clone());
            }
            let (status, code) = match answer {
                Answer::Retry => ("retry", Some("UNABLE_TO_LOCK_ROW")),
                Answer::Rejected => ("rejected", Some("FIELD_CUSTOM_VALIDATION_EXCEPTION")),
                _ => ("delivered", None),
            };
            results.push(RowStatus {
                key: row.key.clone().into(),
                status: status.into(),
                code: code.map(Into::into),
                message: code.map(|_| "injected by the chaos destination".into()),
                retry_after_secs: None,
            });
            state.log.push(Received {
                run_id,
                key: row.key,
                answer,
                request: sequence,
            });
        }
        match whole {
            Some(Answer::RateLimited) => (
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    "slow down",
                )
                    .into_response(),
                None,
            ),
            Some(Answer::Unavailable) => (
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response(),
                None,
            ),
            Some(_) => (
                Json(ResultsBody { results }).into_response(),
                Some(answer_delay),
            ),
            None => (Json(ResultsBody { results }).into_response(), None),
        }
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn send(destination: &ChaosDestination, idempotency_key: &str) -> String {
        let body = serde_json::json!({"rows": [{"key": "k1", "idempotency_key": idempotency_key, "fields": {}}]});
        let answer: serde_json::Value = reqwest::Client::new()
            .post(destination.url())
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["results"][0]["status"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_row_written_under_an_idempotency_key_is_answered_delivered_when_sent_again() {
        let destination = ChaosDestination::start(1, DestinationFaults::NONE, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(send(&destination, "r1:k1").await, "delivered");
        destination.set_faults(DestinationFaults {
            row_reject: 1.0,
            ..DestinationFaults::NONE
        });
        assert_eq!(send(&destination, "r1:k1").await, "delivered", "a replay");
        assert_eq!(
            send(&destination, "r2:k1").await,
            "rejected",
            "another run's row"
        );
        let answers: Vec<Answer> = destination.log().iter().map(|r| r.answer).collect();
        assert_eq!(
            answers,
            [Answer::Delivered, Answer::Delivered, Answer::Rejected]
        );
    }
}
