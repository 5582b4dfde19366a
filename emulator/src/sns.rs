//! SNS (awsQuery, form-encoded) requests, with one workaround.
//!
//! rustack's `Subscribe` rejects every protocol but `sqs` ("Unsupported delivery
//! protocol: only SQS subscriptions are executable"). The emulator therefore keeps
//! subscriptions of other protocols (email, https, ...) itself: `Subscribe` stores
//! them (nothing is ever delivered to them), `ListSubscriptions` and
//! `ListSubscriptionsByTopic` list them, `Unsubscribe` and `DeleteTopic` remove them.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, PoisonError,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use rustack_sns_core::{
    handler::RustackSnsHandler, provider::RustackSns, subscription::SubscriptionProtocol,
};
use rustack_sns_http::{
    body::SnsResponseBody,
    request::get_optional_param,
    response::{error_to_response, xml_response, XmlWriter},
};
use rustack_sns_model::{
    error::SnsError, input::GetTopicAttributesInput, operations::SnsOperation,
};

const REQUEST_ID: &str = "00000000-0000-4000-8000-000000000000";

/// A subscription kept by the emulator.
#[derive(Debug, Clone)]
struct Subscription {
    arn: String,
    topic_arn: String,
    protocol: String,
    endpoint: String,
}

/// SNS: the rustack provider plus the non-SQS subscriptions it refuses.
pub(crate) struct Sns {
    provider: Arc<RustackSns>,
    handler: RustackSnsHandler,
    account_id: String,
    others: Mutex<Vec<Subscription>>,
    next_id: AtomicU64,
}

type SnsResult = Result<http::Response<SnsResponseBody>, SnsError>;

impl Sns {
    pub(crate) fn new(provider: Arc<RustackSns>, account_id: &str) -> Self {
        Self {
            handler: RustackSnsHandler::new(Arc::clone(&provider)),
            provider,
            account_id: account_id.to_owned(),
            others: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn others(&self) -> std::sync::MutexGuard<'_, Vec<Subscription>> {
        self.others.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answer one SNS request; `params` are the parsed form of `body`.
    pub(crate) async fn handle(
        &self,
        op: SnsOperation,
        params: &[(String, String)],
        body: Bytes,
    ) -> http::Response<SnsResponseBody> {
        let result = match op {
            SnsOperation::Subscribe
                if get_optional_param(params, "Protocol").is_some_and(|p| p != "sqs") =>
            {
                self.subscribe_other(params)
            }
            SnsOperation::Unsubscribe => self.unsubscribe(op, params, body).await,
            SnsOperation::DeleteTopic => {
                if let Some(topic) = get_optional_param(params, "TopicArn") {
                    self.others().retain(|s| s.topic_arn != topic);
                }
                self.dispatch(op, body).await
            }
            SnsOperation::ListSubscriptions | SnsOperation::ListSubscriptionsByTopic => {
                self.list(op, params, body).await
            }
            _ => self.dispatch(op, body).await,
        };
        result.unwrap_or_else(|error| error_to_response(&error, REQUEST_ID))
    }

    async fn dispatch(&self, op: SnsOperation, body: Bytes) -> SnsResult {
        rustack_sns_http::dispatch::dispatch_operation(&self.handler, op, body).await
    }

    fn subscribe_other(&self, params: &[(String, String)]) -> SnsResult {
        let protocol = get_optional_param(params, "Protocol").unwrap_or_default();
        SubscriptionProtocol::parse(protocol)?;
        let topic_arn = get_optional_param(params, "TopicArn")
            .ok_or_else(|| SnsError::invalid_parameter("TopicArn is required"))?;
        self.provider
            .get_topic_attributes(&GetTopicAttributesInput {
                topic_arn: topic_arn.to_owned(),
            })
            .map_err(|_| SnsError::not_found("Topic does not exist"))?;
        let endpoint = get_optional_param(params, "Endpoint")
            .filter(|e| !e.is_empty())
            .ok_or_else(|| {
                SnsError::invalid_parameter(
                    "Invalid parameter: Endpoint Reason: Endpoint is required",
                )
            })?;
        let mut others = self.others();
        let arn = match others
            .iter()
            .find(|s| s.topic_arn == topic_arn && s.protocol == protocol && s.endpoint == endpoint)
        {
            Some(existing) => existing.arn.clone(),
            None => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let arn = format!("{topic_arn}:00000000-0000-4000-8000-{id:012x}");
                others.push(Subscription {
                    arn: arn.clone(),
                    topic_arn: topic_arn.to_owned(),
                    protocol: protocol.to_owned(),
                    endpoint: endpoint.to_owned(),
                });
                arn
            }
        };
        drop(others);
        // As AWS: subscriptions needing confirmation answer "pending confirmation"
        // unless the caller asks for the ARN.
        let return_arn = get_optional_param(params, "ReturnSubscriptionArn")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let shown = if return_arn || protocol == "lambda" || protocol == "firehose" {
            arn.as_str()
        } else {
            "pending confirmation"
        };
        let mut w = XmlWriter::new();
        w.start_response("Subscribe");
        w.start_result("Subscribe");
        w.write_element("SubscriptionArn", shown);
        w.end_element("SubscribeResult");
        w.write_response_metadata(REQUEST_ID);
        w.end_element("SubscribeResponse");
        Ok(xml_response(w.into_string(), REQUEST_ID))
    }

    async fn unsubscribe(
        &self,
        op: SnsOperation,
        params: &[(String, String)],
        body: Bytes,
    ) -> SnsResult {
        let arn = get_optional_param(params, "SubscriptionArn").unwrap_or_default();
        let removed = {
            let mut others = self.others();
            let before = others.len();
            others.retain(|s| s.arn != arn);
            others.len() != before
        };
        if !removed {
            return self.dispatch(op, body).await;
        }
        let mut w = XmlWriter::new();
        w.start_response("Unsubscribe");
        w.start_result("Unsubscribe");
        w.end_element("UnsubscribeResult");
        w.write_response_metadata(REQUEST_ID);
        w.end_element("UnsubscribeResponse");
        Ok(xml_response(w.into_string(), REQUEST_ID))
    }

    /// The provider's listing, with the emulator's subscriptions added to its first page.
    async fn list(&self, op: SnsOperation, params: &[(String, String)], body: Bytes) -> SnsResult {
        let response = self.dispatch(op, body).await?;
        if get_optional_param(params, "NextToken").is_some() || !response.status().is_success() {
            return Ok(response);
        }
        let topic = get_optional_param(params, "TopicArn");
        let mut members = XmlWriter::new();
        for sub in self
            .others()
            .iter()
            .filter(|s| topic.is_none_or(|t| t == s.topic_arn))
        {
            members.raw("<member>");
            members.write_element("SubscriptionArn", &sub.arn);
            members.write_element("Owner", &self.account_id);
            members.write_element("Protocol", &sub.protocol);
            members.write_element("Endpoint", &sub.endpoint);
            members.write_element("TopicArn", &sub.topic_arn);
            members.raw("</member>");
        }
        let members = members.into_string();
        if members.is_empty() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let xml = body
            .collect()
            .await
            .map_err(|e| SnsError::invalid_parameter(e.to_string()))?
            .to_bytes();
        let xml = String::from_utf8_lossy(&xml);
        let xml = if xml.contains("</Subscriptions>") {
            xml.replacen("</Subscriptions>", &format!("{members}</Subscriptions>"), 1)
        } else {
            xml.replacen(
                "<Subscriptions/>",
                &format!("<Subscriptions>{members}</Subscriptions>"),
                1,
            )
        };
        let mut parts = parts;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Ok(http::Response::from_parts(
            parts,
            SnsResponseBody::from_xml(xml.into_bytes()),
        ))
    }
}
