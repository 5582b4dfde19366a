//! The webhook destination against a real local HTTP server that answers what a test
//! scripts: per-row bodies, bare statuses, bad bodies, slow answers.

use std::time::Duration;

use resync_shared::{
    destination::{webhook::Webhook, Destination, OutboundRow},
    domain::outcome::ErrorClass,
    PrimaryKey,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Reads one HTTP/1.1 request: the headers and the body `Content-Length` announces (what
/// arrived, if the client stops early). Returns the bytes and where the body starts.
async fn read_request(socket: &mut tokio::net::TcpStream) -> (Vec<u8>, usize) {
    let mut request = Vec::new();
    let mut buf = [0u8; 65536];
    let mut announced: Option<(usize, usize)> = None;
    loop {
        if let Some((head_end, length)) = announced {
            if request.len() >= head_end + length {
                return (request, head_end);
            }
        }
        let n = socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            let head_end = announced.map_or(request.len(), |(end, _)| end);
            return (request, head_end);
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
}

/// Rows that all carry the same fields, with `run-1:key` idempotency keys.
fn outbound<'a>(
    keys: &'a [PrimaryKey],
    fields: &'a resync_shared::RowFields,
) -> Vec<OutboundRow<'a>> {
    keys.iter()
        .map(|k| OutboundRow {
            key: k,
            idempotency_key: format!("run-1:{k}"),
            fields,
        })
        .collect()
}

/// Serves one canned HTTP response per connection; returns the URL and the requests seen.
async fn serve(
    status: &'static str,
    headers: &'static str,
    body: String,
    delay: Duration,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/rows", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let (request, _) = read_request(&mut socket).await;
                let _ = tx.send(String::from_utf8_lossy(&request).to_string());
                tokio::time::sleep(delay).await;
                let response = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, rx)
}

fn rows() -> (Vec<PrimaryKey>, resync_shared::RowFields) {
    let keys = vec![
        PrimaryKey::parse("a").unwrap(),
        PrimaryKey::parse("b").unwrap(),
    ];
    let fields = json!({"email": "x@example.com"})
        .as_object()
        .unwrap()
        .clone()
        .try_into()
        .unwrap();
    (keys, fields)
}

async fn send(
    url: &str,
    secret: Option<&str>,
    timeout: Duration,
) -> Vec<Result<(), resync_shared::domain::outcome::RowError>> {
    let webhook = Webhook::new(url, secret.map(str::to_owned), 100, timeout).unwrap();
    let (keys, fields) = rows();
    webhook.send(&outbound(&keys, &fields)).await
}

#[tokio::test]
async fn per_row_results_decide_each_row() {
    let body = json!({"results": [
        {"key": "b", "status": "rejected", "code": "INVALID_EMAIL", "message": "bad email"},
        {"key": "a", "status": "delivered"}
    ]})
    .to_string();
    let (url, mut requests) = serve("200 OK", "", body, Duration::ZERO).await;
    let results = send(&url, Some("s3cret"), Duration::from_secs(5)).await;
    assert_eq!(results[0], Ok(()));
    let error = results[1].clone().unwrap_err();
    assert_eq!(
        (error.class, error.code.as_str()),
        (ErrorClass::Permanent, "INVALID_EMAIL")
    );

    let request = requests.recv().await.unwrap().to_ascii_lowercase();
    assert!(request.contains("x-resync-signature: v1="), "{request}");
    assert!(request.contains("idempotency-key: "), "{request}");
    assert!(
        request.contains("\"idempotency_key\":\"run-1:a\""),
        "{request}"
    );
}

#[tokio::test]
async fn in_order_results_match_by_position_escaped_keys_included() {
    // `\u0061` is "a": a key with an escape is compared by its value.
    let body = r#"{"results": [
        {"key": "\u0061", "status": "retry", "code": "LOCKED", "message": "row \"locked\"", "retry_after_secs": 4},
        {"key": "b", "status": "delivered"}
    ]}"#
    .to_owned();
    let (url, _) = serve("207 Multi-Status", "", body, Duration::ZERO).await;
    let results = send(&url, None, Duration::from_secs(5)).await;
    let error = results[0].clone().unwrap_err();
    assert_eq!(
        (error.class, error.code.as_str(), error.message.as_str()),
        (ErrorClass::Retryable, "LOCKED", "row \"locked\"")
    );
    assert_eq!(error.retry_after, Some(Duration::from_secs(4)));
    assert_eq!(results[1], Ok(()));
}

#[tokio::test]
async fn a_row_missing_from_the_results_is_retried() {
    let body = json!({"results": [{"key": "a", "status": "delivered"}]}).to_string();
    let (url, _) = serve("200 OK", "", body, Duration::ZERO).await;
    let results = send(&url, None, Duration::from_secs(5)).await;
    assert_eq!(results[0], Ok(()));
    assert_eq!(results[1].clone().unwrap_err().code, "MISSING_RESULT");
}

#[tokio::test]
async fn without_a_results_body_the_status_decides() {
    let cases = [
        ("204 No Content", "", None),
        (
            "503 Service Unavailable",
            "Retry-After: 7\r\n",
            Some((ErrorClass::Retryable, "HTTP_503")),
        ),
        (
            "429 Too Many Requests",
            "Retry-After: 3\r\n",
            Some((ErrorClass::RateLimited, "HTTP_429")),
        ),
        (
            "408 Request Timeout",
            "",
            Some((ErrorClass::Retryable, "HTTP_408")),
        ),
        (
            "400 Bad Request",
            "",
            Some((ErrorClass::Permanent, "HTTP_400")),
        ),
        (
            "401 Unauthorized",
            "",
            Some((ErrorClass::Permanent, "HTTP_401")),
        ),
    ];
    for (status, headers, expected) in cases {
        let (url, _) = serve(status, headers, String::new(), Duration::ZERO).await;
        let results = send(&url, None, Duration::from_secs(5)).await;
        assert_eq!(results.len(), 2);
        for result in results {
            match expected {
                None => assert_eq!(result, Ok(()), "{status}"),
                Some((class, code)) => {
                    let error = result.unwrap_err();
                    assert_eq!(
                        (error.class, error.code.as_str()),
                        (class, code),
                        "{status}"
                    );
                    if headers.contains("Retry-After") {
                        assert!(
                            error.retry_after.is_some(),
                            "{status}: Retry-After honoured"
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn html_error_pages_and_truncated_json_never_lose_rows() {
    let (url, _) = serve(
        "502 Bad Gateway",
        "Content-Type: text/html\r\n",
        "<html>oops</html>".into(),
        Duration::ZERO,
    )
    .await;
    let results = send(&url, None, Duration::from_secs(5)).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().class == ErrorClass::Retryable));

    // Issue 13, item 10: a 200 whose results document is truncated is ambiguous, not
    // "no results body": every row is retried.
    let (url, _) = serve(
        "200 OK",
        "",
        "{\"results\": [{\"key\": \"a\", \"sta".into(),
        Duration::ZERO,
    )
    .await;
    let results = send(&url, None, Duration::from_secs(5)).await;
    assert!(results.iter().all(|r| {
        let e = r.as_ref().unwrap_err();
        e.class == ErrorClass::Retryable && e.code == "BAD_RESPONSE"
    }));
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_retryable() {
    let (url, _) = serve("200 OK", "", String::new(), Duration::from_secs(5)).await;
    let results = send(&url, None, Duration::from_millis(200)).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().code == "TIMEOUT"));

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/rows", closed.local_addr().unwrap());
    drop(closed);
    let results = send(&url, None, Duration::from_secs(2)).await;
    assert!(results.iter().all(|r| {
        let e = r.as_ref().unwrap_err();
        e.class == ErrorClass::Retryable && e.code == "CONNECTION"
    }));
}

/// An endpoint with a body limit: 413 above `limit` bytes, 204 otherwise. Sends each
/// request's row count (accepted or not) on the channel.
async fn serve_limited(limit: usize) -> (String, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/rows", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (request, head_end) = read_request(&mut socket).await;
                let length = request.len() - head_end;
                let body = String::from_utf8_lossy(&request[head_end..]).to_string();
                let _ = tx.send(body.matches("\"idempotency_key\"").count());
                let status = if length > limit {
                    "413 Payload Too Large"
                } else {
                    "204 No Content"
                };
                let response =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_request_refused_as_too_large_is_sent_in_halves() {
    let (url, mut requests) = serve_limited(7_000).await;
    let webhook = Webhook::new(&url, None, 100, Duration::from_secs(5)).unwrap();
    // Five rows of ~3 KB: all five (15 KB) are refused, then 2 and 3 rows: the 3 are
    // refused again (9 KB) and go as 1 and 2.
    let keys: Vec<PrimaryKey> = (0..6)
        .map(|i| PrimaryKey::parse(format!("k{i}")).unwrap())
        .collect();
    let wide = resync_shared::RowFields::from_text(json!({"notes": "w".repeat(3_000)}).to_string())
        .unwrap();
    let huge = resync_shared::RowFields::from_text(json!({"notes": "h".repeat(8_000)}).to_string())
        .unwrap();
    let results = webhook.send(&outbound(&keys[..5], &wide)).await;
    assert_eq!(results, vec![Ok(()); 5]);
    let mut sizes = Vec::new();
    while let Ok(rows) = requests.try_recv() {
        sizes.push(rows);
    }
    assert_eq!(sizes, vec![5, 2, 3, 1, 2]);

    // One row larger than the limit cannot be split: it fails permanently.
    let alone = [OutboundRow {
        key: &keys[5],
        idempotency_key: "run-1:k5".into(),
        fields: &huge,
    }];
    let error = webhook.send(&alone).await[0].clone().unwrap_err();
    assert_eq!(
        (error.class, error.code.as_str()),
        (ErrorClass::Permanent, "HTTP_413")
    );
}
