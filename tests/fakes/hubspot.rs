//! A local HubSpot portal: CRM v3 batch upsert by a unique property.
//!
//! `POST /crm/v3/objects/{objectType}/batch/upsert` with `Authorization: Bearer {token}`
//! (else 401 `INVALID_AUTHENTICATION`) and `{"inputs": [{"id", "idProperty",
//! "properties"}]}`: at most 100 inputs, each with the portal's id property (else 400
//! `VALIDATION_ERROR`). Answers 200 `{"status": "COMPLETE", "results"}` when every input
//! was written, 207 with `errors: [{"status": "error", "category", "message",
//! "context": {"ids": [...]}}]` when some were not. A rolling window limits calls:
//! past it, 429 `{"errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}`.
//! Every answer carries `X-HubSpot-RateLimit-Max`, `-Remaining` and
//! `-Interval-Milliseconds`.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};

use crate::{Behaviour, Ledger, VendorStats};

struct PortalState {
    token: String,
    object_type: String,
    id_property: String,
    window: Duration,
    max_per_window: usize,
    recent: VecDeque<Instant>,
    ledger: Ledger,
}

/// A running local portal.
pub struct HubspotServer {
    addr: SocketAddr,
    state: Arc<Mutex<PortalState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HubspotServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HubspotServer {
    /// Starts a portal on a free loopback port for `object_type` records matched by
    /// `id_property`, accepting the private app token `token`; by default 100 calls
    /// per 10 seconds (HubSpot's documented private-app burst limit).
    pub async fn start(token: &str, object_type: &str, id_property: &str) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(PortalState {
            token: token.to_owned(),
            object_type: object_type.to_owned(),
            id_property: id_property.to_owned(),
            window: Duration::from_secs(10),
            max_per_window: 100,
            recent: VecDeque::new(),
            ledger: Ledger::new(),
        }));
        let app = Router::new()
            .route("/crm/v3/objects/{object_type}/batch/upsert", post(upsert))
            .with_state(state.clone());
        let (addr, task) = crate::serve(app).await?;
        Ok(Self { addr, state, task })
    }

    /// The API base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the rolling rate limit.
    pub fn limit_calls(&self, max_per_window: usize, window: Duration) {
        let mut state = self.state.lock().expect("state");
        state.max_per_window = max_per_window;
        state.window = window;
    }

    /// Sets how a record (by id property value) is treated.
    pub fn set(&self, id: impl Into<String>, behaviour: Behaviour) {
        self.state
            .lock()
            .expect("state")
            .ledger
            .behaviours
            .insert(id.into(), behaviour);
    }

    /// Begins the next run (see [`Behaviour`]).
    pub fn next_run(&self) {
        self.state.lock().expect("state").ledger.next_run();
    }

    /// What the portal saw.
    pub fn stats(&self) -> VendorStats {
        self.state.lock().expect("state").ledger.stats.clone()
    }
}

fn error(status: StatusCode, category: &str, message: &str) -> Response {
    (
        status,
        Json(json!({
            "status": "error",
            "message": message,
            "correlationId": "aeb5f871-7f07-4993-9211-075dc63e7cbf",
            "category": category,
        })),
    )
        .into_response()
}

async fn upsert(
    State(state): State<Arc<Mutex<PortalState>>>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut state = state.lock().expect("state");
    let now = Instant::now();
    let window = state.window;
    while state
        .recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        state.recent.pop_front();
    }
    let limited = state.recent.len() >= state.max_per_window;
    if !limited {
        state.recent.push_back(now);
    }
    let remaining = state.max_per_window.saturating_sub(state.recent.len());
    let mut response = if limited {
        state.ledger.stats.rate_limited_calls += 1;
        (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "status": "error",
                "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24",
                "policyName": "TEN_SECONDLY_ROLLING",
                "groupName": "publicapi:private-app:burst:12345",
            })),
        )
            .into_response()
    } else {
        answer(&mut state, &object_type, &headers, &body)
    };
    let headers = response.headers_mut();
    let number = |n: u128| HeaderValue::from_str(&n.to_string()).expect("digits");
    headers.insert(
        "X-HubSpot-RateLimit-Max",
        number(state.max_per_window as u128),
    );
    headers.insert("X-HubSpot-RateLimit-Remaining", number(remaining as u128));
    headers.insert(
        "X-HubSpot-RateLimit-Interval-Milliseconds",
        number(window.as_millis()),
    );
    response
}

fn answer(
    state: &mut PortalState,
    object_type: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == state.token);
    if !authorised {
        state.ledger.stats.unauthorized_calls += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found.",
        );
    }
    if object_type != state.object_type {
        state.ledger.stats.malformed_calls += 1;
        return error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "Unknown object type",
        );
    }
    let inputs = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("inputs").and_then(Value::as_array).cloned());
    let Some(inputs) = inputs else {
        state.ledger.stats.malformed_calls += 1;
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Invalid input JSON",
        );
    };
    if inputs.len() > 100 {
        state.ledger.stats.malformed_calls += 1;
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Batch input size exceeds the maximum of 100",
        );
    }
    let mut ids = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let id = input.get("id").and_then(Value::as_str);
        let property_ok =
            input.get("idProperty").and_then(Value::as_str) == Some(&state.id_property);
        let properties_ok = input
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| p.values().all(|v| v.is_string() || v.is_null()));
        match id {
            Some(id) if property_ok && properties_ok => ids.push(id.to_owned()),
            _ => {
                state.ledger.stats.malformed_calls += 1;
                return error(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    "each input needs id, the portal's idProperty and string properties",
                );
            }
        }
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    if distinct.len() != ids.len() {
        state.ledger.stats.malformed_calls += 1;
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Duplicate IDs found in batch input",
        );
    }
    state.ledger.accept_call(ids.len(), HashSet::new());
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match state.ledger.record(id) {
            None => results.push(json!({
                "id": format!("{}", 51_000 + i),
                "properties": {(state.id_property.clone()): id},
                "createdAt": "2026-11-28T10:00:00.000Z",
                "updatedAt": "2026-11-28T10:00:00.000Z",
                "archived": false,
                "new": false,
            })),
            Some(Behaviour::RejectThisRun { code }) => errors.push(json!({
                "status": "error",
                "category": code,
                "message": "Property values were not valid",
                "context": {"ids": [id]},
                "errors": [{"message": "Email address is invalid", "code": "INVALID_EMAIL", "in": "email"}],
            })),
            Some(Behaviour::Locked { .. }) => errors.push(json!({
                "status": "error",
                "category": "INTERNAL_ERROR",
                "message": "The record is being updated; try again",
                "context": {"ids": [id]},
            })),
        }
    }
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": "2026-11-28T10:00:00.000Z",
        "completedAt": "2026-11-28T10:00:00.100Z",
    });
    if !errors.is_empty() {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
    }
    (status, Json(body)).into_response()
}
