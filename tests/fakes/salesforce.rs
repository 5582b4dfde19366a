//! A local Salesforce org: the OAuth 2.0 token endpoint and sObject Collections upsert.
//!
//! - `POST /services/oauth2/token` (form): `grant_type=client_credentials` with the
//!   app's `client_id`/`client_secret`, or `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   with an RS256 `assertion` whose signature, `iss`, `sub`, `aud` and `exp` are
//!   checked. Answers `{"access_token", "instance_url", "token_type": "Bearer", "issued_at", "id"}`
//!   or 400 `{"error": "invalid_client" | "invalid_grant", "error_description"}`.
//! - `PATCH /services/data/vXX.X/composite/sobjects/{SObject}/{ExternalIdField}`:
//!   `Authorization: Bearer` must be a live token (tokens expire after a set number of
//!   calls → 401 `[{"errorCode":"INVALID_SESSION_ID"}]`); the body must be
//!   `{"allOrNone": false, "records": [...]}` with at most 200 records, each with
//!   `attributes.type` = the sObject, the external ID field, and no `Id`. Answers 200
//!   with one `UpsertResult` per record in order; locked records get
//!   `UNABLE_TO_LOCK_ROW`, rejected ones their validation code. Every answer carries
//!   `Sforce-Limit-Info: api-usage=used/limit`; past the limit calls get 403
//!   `REQUEST_LIMIT_EXCEEDED`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{patch, post},
    Form, Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Behaviour, Ledger, VendorStats};

/// How the org authenticates its app.
#[derive(Clone)]
pub struct OrgAuth {
    /// Consumer key.
    pub client_id: String,
    /// Consumer secret (client credentials flow).
    pub client_secret: String,
    /// The integration user (JWT `sub`).
    pub username: String,
    /// The app certificate's public key, PEM (JWT bearer flow).
    pub public_key_pem: Option<String>,
    /// Expected JWT `aud`.
    pub audience: String,
}

/// Something the org answers instead of doing the next upsert call.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// 403 `REQUEST_LIMIT_EXCEEDED`.
    RequestLimitExceeded,
    /// 503 with an HTML maintenance page.
    HtmlUnavailable,
}

struct OrgState {
    auth: OrgAuth,
    sobject: String,
    external_id_field: String,
    group_field: Option<String>,
    token_lifetime_calls: Option<u32>,
    tokens: HashMap<String, u32>,
    issued: u64,
    api_used: u64,
    api_limit: u64,
    script: VecDeque<Scripted>,
    ledger: Ledger,
    url: String,
}

/// A running local org.
pub struct SalesforceServer {
    addr: SocketAddr,
    state: Arc<Mutex<OrgState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SalesforceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SalesforceServer {
    /// Starts an org on a free loopback port that upserts `sobject` records by
    /// `external_id_field`.
    pub async fn start(
        auth: OrgAuth,
        sobject: &str,
        external_id_field: &str,
    ) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(OrgState {
            auth,
            sobject: sobject.to_owned(),
            external_id_field: external_id_field.to_owned(),
            group_field: None,
            token_lifetime_calls: None,
            tokens: HashMap::new(),
            issued: 0,
            api_used: 0,
            api_limit: 100_000,
            script: VecDeque::new(),
            ledger: Ledger::new(),
            url: String::new(),
        }));
        let app = Router::new()
            .route("/services/oauth2/token", post(token))
            .route(
                "/services/data/{version}/composite/sobjects/{sobject}/{field}",
                patch(upsert),
            )
            .with_state(state.clone());
        let (addr, task) = crate::serve(app).await?;
        state.lock().expect("state").url = format!("http://{addr}");
        Ok(Self { addr, state, task })
    }

    /// The login URL and instance URL (one server plays both).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tokens stop working after this many upsert calls each.
    pub fn expire_tokens_after(&self, calls: u32) {
        self.state.lock().expect("state").token_lifetime_calls = Some(calls);
    }

    /// Sets the org's daily API usage and limit (reported in `Sforce-Limit-Info`).
    pub fn set_api_usage(&self, used: u64, limit: u64) {
        let mut state = self.state.lock().expect("state");
        state.api_used = used;
        state.api_limit = limit;
    }

    /// Records the distinct values of this field per call (lock-aware batching checks).
    pub fn group_calls_by(&self, field: &str) {
        self.state.lock().expect("state").group_field = Some(field.to_owned());
    }

    /// Answers the next upsert calls with these instead.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state.lock().expect("state").script.extend(answers);
    }

    /// Sets how a record (by external id) is treated.
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

    /// What the org saw.
    pub fn stats(&self) -> VendorStats {
        let state = self.state.lock().expect("state");
        let mut stats = state.ledger.stats.clone();
        stats.tokens_issued = state.issued;
        stats
    }

    /// API calls counted against the org's daily limit so far.
    pub fn api_used(&self) -> u64 {
        self.state.lock().expect("state").api_used
    }
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    assertion: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    #[allow(dead_code)]
    exp: i64,
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(State(state): State<Arc<Mutex<OrgState>>>, Form(form): Form<TokenForm>) -> Response {
    let mut state = state.lock().expect("state");
    let auth = state.auth.clone();
    match form.grant_type.as_str() {
        "client_credentials" => {
            if form.client_id.as_deref() != Some(&auth.client_id)
                || form.client_secret.as_deref() != Some(&auth.client_secret)
            {
                return oauth_error("invalid_client", "invalid client credentials");
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let Some(pem) = &auth.public_key_pem else {
                return oauth_error("invalid_grant", "no certificate uploaded for the app");
            };
            let Some(assertion) = &form.assertion else {
                return oauth_error("invalid_request", "missing assertion");
            };
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
                .expect("the test certificate key is valid");
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[&auth.audience]);
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            let claims = match jsonwebtoken::decode::<Claims>(assertion, &key, &validation) {
                Ok(data) => data.claims,
                Err(_) => return oauth_error("invalid_grant", "invalid assertion"),
            };
            if claims.iss != auth.client_id
                || claims.sub != auth.username
                || claims.aud != auth.audience
            {
                return oauth_error("invalid_grant", "user hasn't approved this consumer");
            }
        }
        _ => return oauth_error("unsupported_grant_type", "grant type not supported"),
    }
    state.issued += 1;
    let access_token = format!("00Dxx0000001gPL!token{}", state.issued);
    let lifetime = state.token_lifetime_calls.unwrap_or(u32::MAX);
    state.tokens.insert(access_token.clone(), lifetime);
    Json(json!({
        "access_token": access_token,
        "instance_url": state.url,
        "id": format!("{}/id/00Dxx0000001gPLEAY/005xx000001SvZrAAK", state.url),
        "token_type": "Bearer",
        "issued_at": "1700000000000",
        "signature": "c2lnbmF0dXJl",
    }))
    .into_response()
}

fn api_error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!([{"message": message, "errorCode": code}])),
    )
}

async fn upsert(
    State(state): State<Arc<Mutex<OrgState>>>,
    Path((version, sobject, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut state = state.lock().expect("state");
    let mut response = answer(&mut state, &version, &sobject, &field, &headers, &body);
    let limit = format!("api-usage={}/{}", state.api_used, state.api_limit);
    response.headers_mut().insert(
        "Sforce-Limit-Info",
        HeaderValue::from_str(&limit).expect("ascii"),
    );
    response
}

fn answer(
    state: &mut OrgState,
    version: &str,
    sobject: &str,
    field: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    match state.tokens.get_mut(&bearer) {
        Some(remaining) if *remaining > 0 => *remaining -= 1,
        _ => {
            state.ledger.stats.unauthorized_calls += 1;
            return api_error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
            )
            .into_response();
        }
    }
    state.api_used += 1;
    if state.api_used > state.api_limit {
        state.ledger.stats.rate_limited_calls += 1;
        return api_error(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
        )
        .into_response();
    }
    if let Some(scripted) = state.script.pop_front() {
        return match scripted {
            Scripted::RequestLimitExceeded => {
                state.ledger.stats.rate_limited_calls += 1;
                api_error(
                    StatusCode::FORBIDDEN,
                    "REQUEST_LIMIT_EXCEEDED",
                    "TotalRequests Limit exceeded.",
                )
                .into_response()
            }
            Scripted::HtmlUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "text/html")],
                "<html><body>Down for maintenance</body></html>",
            )
                .into_response(),
        };
    }
    let version_ok = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .and_then(|(major, _)| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 46);
    if !version_ok || sobject != state.sobject || field != state.external_id_field {
        state.ledger.stats.malformed_calls += 1;
        return api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        )
        .into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        state.ledger.stats.malformed_calls += 1;
        return api_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "Unexpected character",
        )
        .into_response();
    };
    if request.get("allOrNone") != Some(&Value::Bool(false)) {
        state.ledger.stats.malformed_calls += 1;
        return api_error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            "resync must send allOrNone: false",
        )
        .into_response();
    }
    let Some(records) = request.get("records").and_then(Value::as_array) else {
        state.ledger.stats.malformed_calls += 1;
        return api_error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            "records is required",
        )
        .into_response();
    };
    if records.len() > 200 {
        state.ledger.stats.malformed_calls += 1;
        return api_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        )
        .into_response();
    }
    let mut ids = Vec::with_capacity(records.len());
    for record in records {
        let type_ok = record
            .pointer("/attributes/type")
            .and_then(Value::as_str)
            .is_some_and(|t| t == state.sobject);
        let id = record.get(&state.external_id_field).and_then(Value::as_str);
        let has_record_id = record
            .as_object()
            .is_some_and(|o| o.keys().any(|k| k.eq_ignore_ascii_case("id")));
        match id {
            Some(id) if type_ok && !has_record_id => ids.push(id.to_owned()),
            _ => {
                state.ledger.stats.malformed_calls += 1;
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    "every record needs attributes.type and the external ID, and no Id",
                )
                .into_response();
            }
        }
    }
    let groups: HashSet<String> = match &state.group_field {
        Some(group) => records
            .iter()
            .filter_map(|r| r.get(group).and_then(Value::as_str).map(str::to_owned))
            .collect(),
        None => HashSet::new(),
    };
    state.ledger.accept_call(records.len(), groups);
    let results: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| match state.ledger.record(id) {
            None => json!({"id": format!("003xx{:010}", i), "success": true, "errors": [], "created": false}),
            Some(Behaviour::Locked { .. }) => json!({"success": false, "errors": [{
                "statusCode": "UNABLE_TO_LOCK_ROW",
                "message": "unable to obtain exclusive access to this record or 1 records: 001xx000003DGb2AAG",
                "fields": []
            }]}),
            Some(Behaviour::RejectThisRun { code }) => json!({"success": false, "errors": [{
                "statusCode": code,
                "message": "Required fields are missing: [LastName]",
                "fields": ["LastName"]
            }]}),
        })
        .collect();
    Json(Value::Array(results)).into_response()
}
