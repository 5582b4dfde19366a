//! A local destination that speaks the webhook contract (see
//! `resync_shared::destination::webhook`): it verifies the signature, answers per row,
//! keeps rows locked or rejected on demand, and answers slowly on demand. The demo's destination, and the one
//! the end-to-end suites assert against.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{extract::State, http::HeaderMap, http::StatusCode, routing::post, Json, Router};
use resync_shared::destination::webhook::{signature, ResultsBody, RowStatus};
use serde::Deserialize;

/// How the destination treats one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowBehaviour {
    /// Answers `UNABLE_TO_LOCK_ROW` (retryable). With `Some(n)`, the lock is released
    /// after `n` refused attempts in a run; with `None`, it holds until the next run.
    Locked {
        /// Refused attempts before release.
        until_attempt: Option<u32>,
    },
    /// Answers `UNABLE_TO_LOCK_ROW` (retryable) with a `retry_after_secs` for its first
    /// `until_attempt` attempts in a run, then delivers.
    Busy {
        /// The wait the answer asks for, in seconds.
        retry_after_secs: u64,
        /// Refused attempts before release.
        until_attempt: u32,
    },
    /// Answers a validation error (permanent) during the current run only.
    RejectThisRun {
        /// The error code.
        code: String,
    },
}

#[derive(Debug, Default)]
struct ServerState {
    secret: Option<String>,
    run: usize,
    behaviours: HashMap<String, RowBehaviour>,
    attempts_this_run: HashMap<String, u32>,
    rows_received: Vec<u64>,
    keys_received: Vec<HashSet<String>>,
    sends: Vec<HashMap<String, u32>>,
    requests: Vec<u64>,
    largest_request: usize,
    delivered: HashMap<String, Vec<usize>>,
    received_after_delivered: u64,
    bad_requests: u64,
    last_request_at: Option<std::time::Instant>,
    answer_after: std::time::Duration,
    in_flight: usize,
    max_in_flight: usize,
    down: bool,
    refused_while_down: u64,
}

/// Counts one request in flight at the server until it is dropped.
struct InFlight(Arc<Mutex<ServerState>>);

impl InFlight {
    fn enter(state: &Arc<Mutex<ServerState>>) -> Self {
        let mut guard = state.lock().expect("state");
        guard.in_flight += 1;
        guard.max_in_flight = guard.max_in_flight.max(guard.in_flight);
        drop(guard);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// What the destination saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationStats {
    /// Rows received in each run (duplicates included).
    pub rows_received: Vec<u64>,
    /// Distinct keys received in each run.
    pub keys_received: Vec<HashSet<String>>,
    /// How many times each key was received in each run (duplicates included).
    pub sends: Vec<HashMap<String, u32>>,
    /// Requests received in each run.
    pub requests: Vec<u64>,
    /// The largest request, in rows.
    pub largest_request: usize,
    /// Keys acknowledged as delivered at least once.
    pub delivered_keys: HashSet<String>,
    /// Keys acknowledged more than once (duplicates within a run).
    pub delivered_more_than_once: u64,
    /// Rows received in a run for a key already delivered in an earlier run (I3).
    pub received_after_delivered: u64,
    /// Requests refused for a bad signature or body.
    pub bad_requests: u64,
    /// When the last well-formed request arrived.
    pub last_request_at: Option<std::time::Instant>,
    /// The most requests the server was answering at once (what `concurrency` must
    /// bound).
    pub max_in_flight: usize,
    /// Requests answered 503 while the destination was down.
    pub refused_while_down: u64,
}

/// A running local destination.
pub struct DestinationServer {
    addr: SocketAddr,
    state: Arc<Mutex<ServerState>>,
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
    /// Checked to be a JSON object, then not looked at.
    #[allow(dead_code)]
    fields: resync_shared::RowFields,
}

impl DestinationServer {
    /// Starts on a free loopback port; requests must be signed with `secret` if given.
    pub async fn start(secret: Option<String>) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(ServerState {
            secret,
            rows_received: vec![0],
            keys_received: vec![HashSet::new()],
            sends: vec![HashMap::new()],
            requests: vec![0],
            ..ServerState::default()
        }));
        let app = Router::new()
            .route("/rows", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// The URL to configure as the webhook's `url`.
    pub fn url(&self) -> String {
        format!("http://{}/rows", self.addr)
    }

    /// Sets how a key is treated.
    pub fn set(&self, key: impl Into<String>, behaviour: RowBehaviour) {
        self.state
            .lock()
            .expect("state")
            .behaviours
            .insert(key.into(), behaviour);
    }

    /// Takes the destination down (every request answered 503, nothing written) or
    /// brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.lock().expect("state").down = down;
    }

    /// Answers every request only after `delay`: a healthy but slow destination.
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.state.lock().expect("state").answer_after = delay;
    }

    /// Begins the next run: locks held until the next run are released, this-run
    /// rejections end, attempt counts restart.
    pub fn next_run(&self) {
        let mut state = self.state.lock().expect("state");
        state.run += 1;
        state.rows_received.push(0);
        state.keys_received.push(HashSet::new());
        state.sends.push(HashMap::new());
        state.requests.push(0);
        state.attempts_this_run.clear();
        state.behaviours.retain(|_, b| {
            matches!(
                b,
                RowBehaviour::Locked {
                    until_attempt: Some(_)
                }
            )
        });
    }

    /// What it saw so far.
    pub fn stats(&self) -> DestinationStats {
        let state = self.state.lock().expect("state");
        DestinationStats {
            rows_received: state.rows_received.clone(),
            keys_received: state.keys_received.clone(),
            sends: state.sends.clone(),
            requests: state.requests.clone(),
            largest_request: state.largest_request,
            delivered_keys: state.delivered.keys().cloned().collect(),
            delivered_more_than_once: state
                .delivered
                .values()
                .filter(|runs| runs.len() > 1)
                .count() as u64,
            received_after_delivered: state.received_after_delivered,
            bad_requests: state.bad_requests,
            last_request_at: state.last_request_at,
            max_in_flight: state.max_in_flight,
            refused_while_down: state.refused_while_down,
        }
    }
}

impl Drop for DestinationServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ServerState>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ResultsBody<'static>>, (StatusCode, String)> {
    let _in_flight = InFlight::enter(&state);
    let delay = state.lock().expect("state").answer_after;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut state = state.lock().expect("state");
    if state.down {
        state.refused_while_down += 1;
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "down for maintenance".into(),
        ));
    }
    if let Some(secret) = &state.secret {
        let timestamp = headers
            .get("x-resync-timestamp")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let given = headers
            .get("x-resync-signature")
            .and_then(|v| v.to_str().ok());
        let valid = match (timestamp, given) {
            (Some(t), Some(given)) => signature(secret, t, &body) == given,
            _ => false,
        };
        if !valid {
            state.bad_requests += 1;
            return Err((StatusCode::UNAUTHORIZED, "bad signature".into()));
        }
    }
    if headers.get("idempotency-key").is_none() {
        state.bad_requests += 1;
        return Err((StatusCode::BAD_REQUEST, "missing Idempotency-Key".into()));
    }
    let request: RequestBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            state.bad_requests += 1;
            return Err((StatusCode::BAD_REQUEST, format!("bad body: {err}")));
        }
    };
    // The contract: each row's idempotency key is `run_id:primary_key`.
    if let Some(row) = request.rows.iter().find(|row| {
        row.idempotency_key
            .strip_suffix(row.key.as_str())
            .is_none_or(|run| run.len() < 2 || !run.ends_with(':'))
    }) {
        state.bad_requests += 1;
        return Err((
            StatusCode::BAD_REQUEST,
            format!("row '{}': idempotency_key is not run_id:key", row.key),
        ));
    }
    let run = state.run;
    state.last_request_at = Some(std::time::Instant::now());
    *state.requests.last_mut().expect("a run") += 1;
    *state.rows_received.last_mut().expect("a run") += request.rows.len() as u64;
    state.largest_request = state.largest_request.max(request.rows.len());
    let mut results = Vec::with_capacity(request.rows.len());
    for row in request.rows {
        state
            .keys_received
            .last_mut()
            .expect("a run")
            .insert(row.key.clone());
        *state
            .sends
            .last_mut()
            .expect("a run")
            .entry(row.key.clone())
            .or_insert(0) += 1;
        if state
            .delivered
            .get(&row.key)
            .is_some_and(|runs| runs.iter().any(|&r| r < run))
        {
            state.received_after_delivered += 1;
        }
        // Attempts are counted only for keys with a scripted behaviour.
        let behaviour = state.behaviours.get(&row.key).cloned();
        let attempts = match behaviour {
            Some(_) => {
                let count = state.attempts_this_run.entry(row.key.clone()).or_insert(0);
                *count += 1;
                *count
            }
            None => 0,
        };
        let status = match behaviour {
            Some(RowBehaviour::Locked { until_attempt })
                if until_attempt.is_none_or(|n| attempts <= n) =>
            {
                RowStatus {
                    key: row.key.into(),
                    status: "retry".into(),
                    code: Some("UNABLE_TO_LOCK_ROW".into()),
                    message: Some("unable to obtain exclusive access to this record".into()),
                    retry_after_secs: None,
                }
            }
            Some(RowBehaviour::Busy {
                retry_after_secs,
                until_attempt,
            }) if attempts <= until_attempt => RowStatus {
                key: row.key.into(),
                status: "retry".into(),
                code: Some("UNABLE_TO_LOCK_ROW".into()),
                message: Some("the record is busy".into()),
                retry_after_secs: Some(retry_after_secs),
            },
            Some(RowBehaviour::RejectThisRun { code }) => RowStatus {
                key: row.key.into(),
                status: "rejected".into(),
                code: Some(code.into()),
                message: Some("the record failed validation".into()),
                retry_after_secs: None,
            },
            _ => {
                state
                    .delivered
                    .entry(row.key.clone())
                    .or_default()
                    .push(run);
                RowStatus {
                    key: row.key.into(),
                    status: "delivered".into(),
                    code: None,
                    message: None,
                    retry_after_secs: None,
                }
            }
        };
        results.push(status);
    }
    Ok(Json(ResultsBody { results }))
}
