//! The chaos destination's own tests: each fault reads to resync as it should.

use std::time::Duration;

use resync_shared::{
    destination::{webhook::Webhook, Destination, OutboundRow},
    domain::outcome::RowResult,
    PrimaryKey, RowFields,
};

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

/// What resync's webhook makes of one request to the chaos destination with `faults`.
async fn through_resync(
    faults: DestinationFaults,
    rows: usize,
) -> (Vec<RowResult>, ChaosDestination) {
    let destination = ChaosDestination::start(7, faults, Duration::from_secs(3))
        .await
        .unwrap();
    let keys: Vec<PrimaryKey> = (0..rows)
        .map(|i| PrimaryKey::parse(format!("k{i}")).unwrap())
        .collect();
    let fields = RowFields::from_text("{}").unwrap();
    let outbound: Vec<OutboundRow<'_>> = keys
        .iter()
        .map(|key| OutboundRow {
            key,
            idempotency_key: format!("r1:{key}"),
            fields: &fields,
        })
        .collect();
    let webhook = Webhook::new(&destination.url(), None, 100, Duration::from_secs(1)).unwrap();
    let results = webhook.send(&outbound).await;
    (results, destination)
}

fn codes(results: &[RowResult]) -> Vec<String> {
    results
        .iter()
        .map(|r| {
            r.as_ref()
                .map_or_else(|e| e.code.clone(), |()| "ok".to_owned())
        })
        .collect()
}

#[tokio::test]
async fn each_fault_reads_to_resync_as_its_log_says() {
    let none = DestinationFaults::NONE;
    let cases: Vec<(DestinationFaults, &[&str], Answer)> = vec![
        (
            DestinationFaults {
                cut_body: 1.0,
                ..none
            },
            &["ANSWER_CUT"],
            Answer::WrittenAnswerLost,
        ),
        (
            DestinationFaults {
                truncated: 1.0,
                ..none
            },
            &["BAD_RESPONSE"],
            Answer::WrittenAnswerLost,
        ),
        (
            DestinationFaults {
                malformed: 1.0,
                ..none
            },
            &["BAD_RESPONSE"],
            Answer::WrittenAnswerLost,
        ),
        (
            DestinationFaults {
                huge_body: 1.0,
                ..none
            },
            &["ANSWER_TOO_LARGE"],
            Answer::WrittenAnswerLost,
        ),
        (
            DestinationFaults {
                answer_lost: 1.0,
                ..none
            },
            &["TIMEOUT"],
            Answer::WrittenAnswerLost,
        ),
        (
            DestinationFaults {
                redirect: 1.0,
                ..none
            },
            &["REDIRECT"],
            Answer::Redirected,
        ),
        (
            DestinationFaults {
                dropped: 1.0,
                ..none
            },
            &["TRANSPORT"],
            Answer::Dropped,
        ),
        (
            DestinationFaults {
                row_omitted: 1.0,
                ..none
            },
            &["MISSING_RESULT"],
            Answer::Omitted,
        ),
        (
            DestinationFaults {
                huge_headers: 1.0,
                ..none
            },
            &["ok"],
            Answer::Delivered,
        ),
        (
            DestinationFaults { slow: 1.0, ..none },
            &["ok"],
            Answer::Delivered,
        ),
        (
            DestinationFaults {
                foreign_keys: 1.0,
                ..none
            },
            &["ok"],
            Answer::Delivered,
        ),
    ];
    for (faults, expected, logged) in cases {
        let (results, destination) = through_resync(faults, 3).await;
        for code in codes(&results) {
            assert!(expected.contains(&code.as_str()), "{faults:?}: {code}");
        }
        assert!(
            destination.log().iter().all(|r| r.answer == logged),
            "{faults:?}: {:?}",
            destination.log()
        );
        assert!(!destination.injected().contains_key("redirect_followed"));
    }
}

#[tokio::test]
async fn a_poisoned_key_is_refused_until_resync_isolates_it() {
    let (results, destination) = through_resync(
        DestinationFaults {
            poisoned: 0.2,
            ..DestinationFaults::NONE
        },
        40,
    )
    .await;
    let poisoned: Vec<String> = (0..40)
        .map(|i| format!("k{i}"))
        .filter(|key| destination.lock().poisoned(key))
        .collect();
    assert!(!poisoned.is_empty());
    for (i, result) in results.iter().enumerate() {
        let key = format!("k{i}");
        if poisoned.contains(&key) {
            let error = result.clone().unwrap_err();
            assert_eq!(error.code, "HTTP_400");
            assert!(error
                .message
                .starts_with("isolated by splitting the request"));
        } else {
            assert_eq!(*result, Ok(()), "{key}");
        }
    }
    let written = destination.written();
    assert_eq!(written.len(), 40 - poisoned.len());
}
