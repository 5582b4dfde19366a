//! Hostile destination answers (issue 13, items 10–14) against real local HTTP servers
//! that write whatever bytes a test scripts: bodies cut mid-stream, truncated or
//! malformed results, omitted and foreign keys, huge bodies and headers, redirects,
//! whole-request refusals of a poisoned row.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use resync_shared::{
    destination::{
        hubspot::Hubspot, hubspot::HubspotConfig, webhook::Webhook, Destination, OutboundRow,
    },
    domain::outcome::{ErrorClass, RowResult},
    PrimaryKey, RowFields,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Reads one HTTP/1.1 request (head and the body its `Content-Length` announces).
async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 65536];
    let mut announced: Option<(usize, usize)> = None;
    loop {
        if let Some((head_end, length)) = announced {
            if request.len() >= head_end + length {
                break;
            }
        }
        let n = socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if announced.is_none() {
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
                announced = Some((end + 4, length));
            }
        }
    }
    String::from_utf8_lossy(&request).into_owned()
}

type Script = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A server that answers each request (one per connection) with the bytes `script`
/// makes of it, then closes the connection. Returns its URL and its request counter.
async fn serve(script: Arc<Script>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/rows", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let script = script.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let request = read_request(&mut socket).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = socket.write_all(&script(&request)).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, calls)
}

/// A complete response with `body`.
fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn canned(status: &'static str, headers: &'static str, body: String) -> String {
    serve(Arc::new(move |_: &str| answer(status, headers, &body)))
        .await
        .0
}

struct Rows {
    keys: Vec<PrimaryKey>,
    fields: RowFields,
}

impl Rows {
    fn new(n: usize) -> Self {
        Self {
            keys: (0..n)
                .map(|i| PrimaryKey::parse(format!("k{i}")).unwrap())
                .collect(),
            fields: RowFields::from_text(r#"{"email":"x@example.com"}"#).unwrap(),
        }
    }

    fn outbound(&self) -> Vec<OutboundRow<'_>> {
        self.keys
            .iter()
            .map(|key| OutboundRow {
                key,
                idempotency_key: format!("run-1:{key}"),
                fields: &self.fields,
            })
            .collect()
    }
}

async fn webhook_send(url: &str, rows: &Rows) -> Vec<RowResult> {
    let webhook = Webhook::new(url, Some("s3cret".into()), 100, Duration::from_secs(5)).unwrap();
    webhook.send(&rows.outbound()).await
}

fn codes(results: &[RowResult]) -> Vec<String> {
    results
        .iter()
        .map(|r| match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.code.clone(),
        })
        .collect()
}

/// Issue 13, item 10: a 2xx whose body was cut off (the connection dropped after the
/// headers) was read as an empty body and counted delivered.
#[tokio::test]
async fn a_2xx_cut_off_mid_body_is_a_transport_error_for_every_row() {
    let (url, _) = serve(Arc::new(|_: &str| {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"results\":[{\"key\":\"k0\",\"status\":\"deliv".to_vec()
    }))
    .await;
    let results = webhook_send(&url, &Rows::new(2)).await;
    for result in &results {
        let error = result.clone().unwrap_err();
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Retryable, "ANSWER_CUT")
        );
    }
}

/// Issue 13, item 10: malformed `results` documents were read as "no results body"
/// and counted delivered; omitted rows and foreign keys are settled by key.
#[tokio::test]
async fn a_results_document_that_cannot_be_read_retries_its_rows() {
    let rows = Rows::new(2);
    for body in [
        r#"{"results": [{"key": "k0", "status": "delivered"}, {"key": "k1""#,
        r#"{"results": [{"key": "k0", "status": "delivered"},]}"#,
        r#"{"results": {"k0": "delivered"}}"#,
        r#"{"results": [{"key": "k0"}]}"#,
        r#"{"results": [], "results": []}"#,
        "{\"results\": [\u{1}]}",
    ] {
        let url = canned("200 OK", "", body.to_owned()).await;
        let results = webhook_send(&url, &rows).await;
        assert_eq!(codes(&results), ["BAD_RESPONSE", "BAD_RESPONSE"], "{body}");
        assert!(results
            .iter()
            .all(|r| r.as_ref().unwrap_err().class == ErrorClass::Retryable));
    }
    // A 207 promises per-row results: without them it is ambiguous too.
    let url = canned("207 Multi-Status", "", String::new()).await;
    assert_eq!(
        codes(&webhook_send(&url, &rows).await),
        ["BAD_RESPONSE", "BAD_RESPONSE"]
    );
    // Omitted rows are retried, foreign keys ignored, a bad retry hint read leniently.
    let body = json!({"results": [
        {"key": "elsewhere", "status": "delivered"},
        {"key": "k1", "status": "retry", "code": "LOCKED", "retry_after_secs": 1e30},
        {"key": "k1", "status": "delivered"},
    ]})
    .to_string();
    let url = canned("200 OK", "", body).await;
    let results = webhook_send(&url, &rows).await;
    assert_eq!(codes(&results), ["MISSING_RESULT", "LOCKED"]);
    assert_eq!(
        results[1].clone().unwrap_err().retry_after,
        Some(Duration::from_secs(12 * 3600))
    );
    // Genuinely no results body: the status decides.
    for body in ["", "OK", "<html>thanks</html>", r#"{"accepted": 2}"#, "[]"] {
        let url = canned("200 OK", "", body.to_owned()).await;
        assert_eq!(
            codes(&webhook_send(&url, &rows).await),
            ["ok", "ok"],
            "{body:?}"
        );
    }
}

/// Issue 13, item 11: answers were read whole whatever their size.
#[tokio::test]
async fn an_answer_larger_than_the_cap_is_not_read_and_its_rows_are_retried() {
    let rows = Rows::new(2);
    // Valid results followed by 9 MiB of padding, announced by its length.
    let mut body = json!({"results": [{"key": "k0", "status": "delivered"}, {"key": "k1", "status": "delivered"}]}).to_string();
    body.push_str(&" ".repeat(9 * 1024 * 1024));
    let url = canned("200 OK", "", body.clone()).await;
    assert_eq!(
        codes(&webhook_send(&url, &rows).await),
        ["ANSWER_TOO_LARGE", "ANSWER_TOO_LARGE"]
    );
    // The same, streamed without a length: reading stops at the cap.
    let chunked = Arc::new(move |_: &str| {
        let mut out =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for piece in body.as_bytes().chunks(1 << 20) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    });
    let (url, _) = serve(chunked).await;
    assert_eq!(
        codes(&webhook_send(&url, &rows).await),
        ["ANSWER_TOO_LARGE", "ANSWER_TOO_LARGE"]
    );
}

/// Issue 13, item 12: `Retry-After` is read in both forms, capped, and huge headers
/// next to it do not matter.
#[tokio::test]
async fn retry_after_is_read_defensively_and_capped() {
    let rows = Rows::new(1);
    let padding = format!("X-Padding: {}\r\n", "p".repeat(32 * 1024));
    let headers: &'static str =
        Box::leak(format!("Retry-After: 99999999999999999999999999\r\n{padding}").into_boxed_str());
    let url = canned("503 Service Unavailable", headers, String::new()).await;
    let error = webhook_send(&url, &rows).await[0].clone().unwrap_err();
    assert_eq!(error.code, "HTTP_503");
    assert_eq!(error.retry_after, Some(Duration::from_secs(12 * 3600)));
    let url = canned(
        "429 Too Many Requests",
        "Retry-After: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
        String::new(),
    )
    .await;
    let error = webhook_send(&url, &rows).await[0].clone().unwrap_err();
    assert_eq!(
        (error.class, error.retry_after),
        (ErrorClass::RateLimited, Some(Duration::ZERO))
    );
}

fn hubspot(url: &str) -> Hubspot {
    let config: HubspotConfig = serde_yaml::from_str(&format!(
        "{{ base_url: '{}', object_type: contacts, id_property: resync_id, fields: {{ email: email }}, access_token: {{ value: t }} }}",
        url.trim_end_matches("/rows")
    ))
    .unwrap();
    Hubspot::new(&config, "t".into(), 100, Duration::from_secs(5)).unwrap()
}

/// Issue 13, item 12: a huge `Retry-After` on HubSpot's 429 panicked the destination
/// (an `Instant` overflow in its pause); now the wait is capped and later requests wait
/// without calling.
#[tokio::test]
async fn a_huge_retry_after_from_hubspot_pauses_without_panicking() {
    let (url, calls) = serve(Arc::new(|_: &str| {
        answer(
            "429 Too Many Requests",
            "Retry-After: 18446744073709551615\r\nX-HubSpot-RateLimit-Interval-Milliseconds: 18446744073709551615\r\n",
            r#"{"status":"error","errorType":"RATE_LIMIT","policyName":"DAILY"}"#,
        )
    }))
    .await;
    let portal = hubspot(&url);
    let rows = Rows::new(2);
    for _ in 0..2 {
        let results = portal.send(&rows.outbound()).await;
        for result in results {
            let error = result.unwrap_err();
            assert_eq!(
                (error.class, error.code.as_str()),
                (ErrorClass::RateLimited, "RATE_LIMIT_DAILY")
            );
            assert!(error.retry_after <= Some(Duration::from_secs(12 * 3600)));
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the pause holds");
}

/// Issue 13, item 13: redirects were followed — to plain http, and re-sending the
/// signed body on 307/308. Now a 3xx is a permanent error naming the location and
/// nothing is sent there.
#[tokio::test]
async fn redirects_are_not_followed_and_the_signed_body_is_never_re_sent() {
    let (target, target_calls) = serve(Arc::new(|_: &str| answer("204 No Content", "", ""))).await;
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let location: &'static str =
            Box::leak(format!("Location: {target}?sig=secret\r\n").into_boxed_str());
        let (url, calls) = serve(Arc::new(move |_: &str| answer(status, location, ""))).await;
        let results = webhook_send(&url, &Rows::new(3)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{status}: one request");
        for result in results {
            let error = result.unwrap_err();
            assert_eq!(
                (error.class, error.code.as_str()),
                (ErrorClass::Permanent, "REDIRECT"),
                "{status}"
            );
            assert!(error.message.contains(&target), "{}", error.message);
            assert!(!error.message.contains("secret"), "{}", error.message);
        }
        // HubSpot the same.
        let results = hubspot(&url).send(&Rows::new(1).outbound()).await;
        assert_eq!(codes(&results), ["REDIRECT"], "{status}");
    }
    assert_eq!(
        target_calls.load(Ordering::SeqCst),
        0,
        "nothing followed a redirect"
    );
}

/// Issue 13, item 13: plain http was refused only when the configuration loaded; a
/// destination built any other way sent rows to a plain-http host.
#[tokio::test]
async fn plain_http_is_refused_at_request_time_except_to_loopback() {
    let results = webhook_send("http://192.0.2.1:9/rows", &Rows::new(2)).await;
    assert_eq!(codes(&results), ["INSECURE_URL", "INSECURE_URL"]);
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().class == ErrorClass::Permanent));
    let results = hubspot("http://192.0.2.1:9/rows")
        .send(&Rows::new(1).outbound())
        .await;
    assert_eq!(codes(&results), ["INSECURE_URL"]);
}

/// A webhook that refuses (400, no results) any request holding a poisoned key.
async fn poisoned_webhook(
    poisoned: &'static [&'static str],
    status: &'static str,
) -> (String, Arc<AtomicUsize>) {
    serve(Arc::new(move |request: &str| {
        let body = &request[request.find("\r\n\r\n").map_or(0, |i| i + 4)..];
        let refused = poisoned
            .iter()
            .any(|key| body.contains(&format!("\"key\":\"{key}\"")));
        if refused {
            answer(status, "", r#"{"error":"invalid row"}"#)
        } else {
            answer("204 No Content", "", "")
        }
    }))
    .await
}

/// Issue 13, item 14: a whole-request refusal naming no row failed every row of the
/// request; it is now split in halves until the poisoned rows are isolated, within
/// 2·⌈log₂ n⌉ extra requests per bad row, counted at the server.
#[tokio::test]
async fn a_refused_request_is_bisected_to_isolate_the_poisoned_rows() {
    let rows = Rows::new(100);
    for poisoned in [&["k41"][..], &["k0", "k77"][..]] {
        let poisoned: &'static [&'static str] = Box::leak(poisoned.to_vec().into_boxed_slice());
        let (url, calls) = poisoned_webhook(poisoned, "400 Bad Request").await;
        let results = webhook_send(&url, &rows).await;
        let calls = calls.load(Ordering::SeqCst);
        assert!(
            calls - 1 <= 2 * 7 * poisoned.len(),
            "{calls} requests for {} bad rows of 100",
            poisoned.len()
        );
        for (key, result) in rows.keys.iter().zip(&results) {
            if poisoned.contains(&key.as_str()) {
                let error = result.clone().unwrap_err();
                assert_eq!(
                    (error.class, error.code.as_str()),
                    (ErrorClass::Permanent, "HTTP_400")
                );
                assert!(
                    error
                        .message
                        .starts_with("isolated by splitting the request: "),
                    "{}",
                    error.message
                );
            } else {
                assert_eq!(*result, Ok(()), "{key}");
            }
        }
    }
    // Auth refusals and retryable errors are never split: one request each.
    for status in [
        "401 Unauthorized",
        "403 Forbidden",
        "503 Service Unavailable",
        "429 Too Many Requests",
    ] {
        let (url, calls) = poisoned_webhook(&["k3"], status).await;
        let results = webhook_send(&url, &rows).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{status}");
        assert!(results.iter().all(Result::is_err), "{status}");
    }
}

/// Issue 13, item 14: HubSpot's 400 that names no input failed the whole batch
/// permanently for one bad contact.
#[tokio::test]
async fn a_hubspot_batch_refused_without_ids_is_bisected() {
    let (url, calls) = serve(Arc::new(|request: &str| {
        if request.contains("\"id\":\"k13\"") {
            answer(
                "400 Bad Request",
                "",
                r#"{"status":"error","category":"VALIDATION_ERROR","message":"Property values were not valid","context":{}}"#,
            )
        } else {
            let inputs = request.matches("\"idProperty\"").count();
            let results: Vec<_> = (0..inputs).map(|i| json!({"id": i.to_string()})).collect();
            answer("200 OK", "", &json!({"status": "COMPLETE", "results": results}).to_string())
        }
    }))
    .await;
    let rows = Rows::new(100);
    let results = hubspot(&url).send(&rows.outbound()).await;
    assert!(calls.load(Ordering::SeqCst) - 1 <= 14);
    for (i, result) in results.iter().enumerate() {
        if i == 13 {
            let error = result.clone().unwrap_err();
            assert_eq!(
                (error.class, error.code.as_str()),
                (ErrorClass::Permanent, "VALIDATION_ERROR")
            );
            assert_eq!(
                error.message,
                "isolated by splitting the request: Property values were not valid"
            );
        } else {
            assert_eq!(*result, Ok(()), "row {i}");
        }
    }
}

/// A Salesforce org on one local server: the token endpoint names the server itself as
/// the instance (or `instance`), and every sObject Collections call is answered by
/// `collections`.
async fn salesforce_org(
    instance: Option<&'static str>,
    collections: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
) -> (
    resync_shared::destination::salesforce::Salesforce,
    Arc<AtomicUsize>,
) {
    use resync_shared::destination::salesforce::{Credentials, Salesforce, SalesforceConfig};
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let named = base.clone();
    let (url, calls) = serve(Arc::new(move |request: &str| {
        if request.starts_with("POST /services/oauth2/token") {
            let instance =
                instance.map_or_else(|| named.get().cloned().unwrap_or_default(), str::to_owned);
            answer(
                "200 OK",
                "",
                &json!({"access_token": "00Dtoken", "instance_url": instance}).to_string(),
            )
        } else {
            collections(request)
        }
    }))
    .await;
    let root = url.trim_end_matches("/rows").to_owned();
    base.set(root.clone()).unwrap();
    let config: SalesforceConfig = serde_yaml::from_str(&format!(
        "{{ login_url: '{root}', sobject: Contact, external_id_field: Resync_Id__c, fields: {{ email: Email }}, auth: {{ flow: client_credentials, client_id: c, client_secret: {{ value: s }} }} }}"
    ))
    .unwrap();
    let credentials = Credentials::ClientCredentials {
        client_id: "c".into(),
        client_secret: "s".into(),
    };
    (
        Salesforce::new(&config, credentials, 200, Duration::from_secs(5), None).unwrap(),
        calls,
    )
}

/// Issue 13, item 14: a Salesforce whole-request error (`[{"errorCode", "message"}]`
/// with a 400) failed every record of the call for one record's bad value.
#[tokio::test]
async fn a_salesforce_request_error_is_bisected_to_the_bad_record() {
    let (org, calls) = salesforce_org(None, |request: &str| {
        if request.contains("\"Resync_Id__c\":\"k150\"") {
            answer(
                "400 Bad Request",
                "",
                r#"[{"errorCode":"JSON_PARSER_ERROR","message":"Cannot deserialize instance of date"}]"#,
            )
        } else {
            let records = request.matches("\"attributes\"").count();
            let results: Vec<_> = (0..records)
                .map(|i| json!({"id": format!("003{i}"), "success": true, "errors": [], "created": true}))
                .collect();
            answer("200 OK", "", &serde_json::Value::from(results).to_string())
        }
    })
    .await;
    let rows = Rows::new(200);
    let results = org.send(&rows.outbound()).await;
    // One token request, then the calls: at most 2·⌈log₂ 200⌉ = 16 extra.
    let calls = calls.load(Ordering::SeqCst) - 1;
    assert!(calls - 1 <= 16, "{calls} calls");
    for (i, result) in results.iter().enumerate() {
        if i == 150 {
            let error = result.clone().unwrap_err();
            assert_eq!(
                (error.class, error.code.as_str()),
                (ErrorClass::Permanent, "JSON_PARSER_ERROR")
            );
            assert!(error
                .message
                .starts_with("isolated by splitting the request: "));
        } else {
            assert_eq!(*result, Ok(()), "record {i}");
        }
    }
}

/// Issue 13, items 10 and 13: a Salesforce call answered with a redirect, a short
/// results array or a cut body never counts a record written; an instance URL that is
/// plain http (not loopback) is never called.
#[tokio::test]
async fn salesforce_answers_that_cannot_be_trusted_write_nothing() {
    let rows = Rows::new(3);
    let (org, _) = salesforce_org(None, |_: &str| {
        answer(
            "307 Temporary Redirect",
            "Location: http://127.0.0.1:9/x\r\n",
            "",
        )
    })
    .await;
    assert_eq!(codes(&org.send(&rows.outbound()).await), ["REDIRECT"; 3]);
    let (org, _) = salesforce_org(None, |_: &str| {
        answer(
            "200 OK",
            "",
            r#"[{"id":"0031","success":true,"errors":[]}]"#,
        )
    })
    .await;
    assert_eq!(
        codes(&org.send(&rows.outbound()).await),
        ["RESULT_COUNT_MISMATCH"; 3]
    );
    let (org, _) = salesforce_org(None, |_: &str| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n[{\"id\":\"0031\",\"success\":true".to_vec()
    })
    .await;
    assert_eq!(codes(&org.send(&rows.outbound()).await), ["ANSWER_CUT"; 3]);
    let (org, calls) = salesforce_org(Some("http://192.0.2.1"), |_: &str| {
        answer("200 OK", "", "[]")
    })
    .await;
    let results = org.send(&rows.outbound()).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().class == ErrorClass::Permanent));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the token request");
}
