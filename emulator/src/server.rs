//! The HTTP side: the accept loop, one hyper connection task per socket, and the
//! per-request routing to the service that owns the request.

use crate::guard::{dynamodb::GuardedDynamoDB, sqs::GuardedSqs, Guard};
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, service::Service};
use hyper_util::rt::TokioIo;
use rustack_dynamodb_core::{
    config::DynamoDBConfig, handler::RustackDynamoDBHandler, provider::RustackDynamoDB,
};
use rustack_dynamodb_http::service::{DynamoDBHttpConfig, DynamoDBHttpService};
use rustack_events_core::{
    config::EventsConfig, handler::RustackEventsHandler, provider::RustackEvents,
};
use rustack_events_http::service::{EventsHttpConfig, EventsHttpService};
use rustack_s3_core::{RustackS3, S3Config};
use rustack_s3_http::{S3HttpConfig, S3HttpService, S3Router};
use rustack_secretsmanager_core::{
    config::SecretsManagerConfig, handler::RustackSecretsManagerHandler,
    provider::RustackSecretsManager,
};
use rustack_secretsmanager_http::{SecretsManagerHttpConfig, SecretsManagerHttpService};
use rustack_sns_core::{config::SnsConfig, provider::RustackSns};
use rustack_sqs_core::{config::SqsConfig, handler::RustackSqsHandler, provider::RustackSqs};
use rustack_sqs_http::service::{SqsHttpConfig, SqsHttpService};
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet};
use tracing::{instrument::WithSubscriber, Dispatch};

use crate::{
    body::{boxed, full, FileBody, ResponseBody},
    bridge::SqsBridge,
    s3::{ObjectRange, S3Backend},
    sns::Sns,
};

const REGION: &str = "us-east-1";
const ACCOUNT_ID: &str = "000000000000";
/// Largest form-encoded (SNS) request body read into memory.
const FORM_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The providers, kept for an orderly shutdown.
pub(crate) struct Providers {
    /// The fault plan the guards draw from.
    pub(crate) faults: Arc<crate::guard::Faults>,
    /// SQS's in-flight accounting.
    pub(crate) in_flight: Arc<crate::guard::in_flight::InFlight>,
    pub(crate) sqs: Arc<RustackSqs>,
    pub(crate) sns: Arc<RustackSns>,
    pub(crate) events: Arc<RustackEvents>,
}

impl Providers {
    /// Drain SNS/EventBridge deliveries, then stop the SQS queue actors.
    pub(crate) async fn shutdown(&self) {
        let grace = Duration::from_secs(5);
        let _ = tokio::time::timeout(grace, self.events.shutdown()).await;
        let _ = tokio::time::timeout(grace, self.sns.shutdown()).await;
        let _ = tokio::time::timeout(grace, self.sqs.shutdown_all()).await;
    }
}

/// Every service behind the one port.
pub(crate) struct Services {
    sqs: SqsHttpService<GuardedSqs<RustackSqsHandler>>,
    dynamodb: DynamoDBHttpService<GuardedDynamoDB<RustackDynamoDBHandler>>,
    events: EventsHttpService<RustackEventsHandler>,
    secrets: SecretsManagerHttpService<RustackSecretsManagerHandler>,
    sns: Sns,
    s3: S3HttpService<S3Backend>,
    s3_backend: Arc<S3Backend>,
    s3_router: S3Router,
    /// Request handling runs under this dispatcher when set (see `crate::quiet`).
    quiet: Option<Dispatch>,
}

impl Services {
    /// Build all providers; `host`/`port` are what queue URLs advertise.
    pub(crate) fn new(host: &str, port: u16) -> (Arc<Self>, Providers) {
        let sqs = Arc::new(RustackSqs::new(SqsConfig {
            skip_signature_validation: true,
            default_region: REGION.to_owned(),
            account_id: ACCOUNT_ID.to_owned(),
            host: host.to_owned(),
            port,
        }));
        let bridge = Arc::new(SqsBridge::new(Arc::clone(&sqs)));
        let sns = Arc::new(RustackSns::new(
            SnsConfig {
                skip_signature_validation: true,
                default_region: REGION.to_owned(),
                account_id: ACCOUNT_ID.to_owned(),
                host: host.to_owned(),
                port,
            },
            Arc::clone(&bridge) as _,
        ));
        let events = Arc::new(RustackEvents::new(
            EventsConfig {
                skip_signature_validation: true,
                default_region: REGION.to_owned(),
                account_id: ACCOUNT_ID.to_owned(),
                host: host.to_owned(),
                port,
            },
            bridge as _,
        ));
        let dynamodb = Arc::new(RustackDynamoDB::new(DynamoDBConfig {
            skip_signature_validation: true,
            default_region: REGION.to_owned(),
        }));
        let secrets = Arc::new(RustackSecretsManager::new(SecretsManagerConfig {
            skip_signature_validation: true,
            default_region: REGION.to_owned(),
            default_account_id: ACCOUNT_ID.to_owned(),
        }));
        let s3_config = S3HttpConfig {
            // Path-style is what the SDK clients use (`force_path_style(true)`);
            // `BUCKET.localhost:PORT` virtual-hosted requests work too.
            domain: "localhost".to_owned(),
            virtual_hosting: true,
            skip_signature_validation: true,
            region: REGION.to_owned(),
            credential_provider: None,
        };
        let guard = Guard::default();
        let s3_backend = Arc::new(S3Backend::new(RustackS3::new(S3Config {
            s3_skip_signature_validation: true,
            default_region: REGION.to_owned(),
            ..S3Config::default()
        })));
        let services = Self {
            sqs: SqsHttpService::new(
                Arc::new(GuardedSqs::new(
                    RustackSqsHandler::new(Arc::clone(&sqs)),
                    guard.clone(),
                )),
                SqsHttpConfig {
                    skip_signature_validation: true,
                    region: REGION.to_owned(),
                    credential_provider: None,
                },
            ),
            dynamodb: DynamoDBHttpService::new(
                Arc::new(GuardedDynamoDB::new(
                    RustackDynamoDBHandler::new(dynamodb),
                    guard.clone(),
                )),
                DynamoDBHttpConfig {
                    skip_signature_validation: true,
                    region: REGION.to_owned(),
                    credential_provider: None,
                },
            ),
            events: EventsHttpService::new(
                Arc::new(RustackEventsHandler::new(Arc::clone(&events))),
                EventsHttpConfig {
                    skip_signature_validation: true,
                    region: REGION.to_owned(),
                    credential_provider: None,
                },
            ),
            secrets: SecretsManagerHttpService::new(
                Arc::new(RustackSecretsManagerHandler::new(secrets)),
                SecretsManagerHttpConfig {
                    skip_signature_validation: true,
                    region: REGION.to_owned(),
                    credential_provider: None,
                },
            ),
            sns: Sns::new(Arc::clone(&sns), ACCOUNT_ID),
            s3_router: S3Router::new(&s3_config.domain, s3_config.virtual_hosting),
            s3: S3HttpService::from_shared(Arc::clone(&s3_backend), s3_config),
            s3_backend,
            quiet: crate::quiet::Quiet::dispatch_for_current(),
        };
        let providers = Providers {
            faults: guard.faults,
            in_flight: guard.in_flight,
            sqs,
            sns,
            events,
        };
        (Arc::new(services), providers)
    }

    /// Answer one request.
    async fn handle(&self, req: http::Request<Incoming>) -> http::Response<ResponseBody> {
        match &self.quiet {
            Some(dispatch) => self.route(req).with_subscriber(dispatch.clone()).await,
            None => self.route(req).await,
        }
    }

    async fn route(&self, req: http::Request<Incoming>) -> http::Response<ResponseBody> {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if target.starts_with("AmazonSQS.") {
            call(&self.sqs, req).await
        } else if target.starts_with("DynamoDB_20120810.") {
            call(&self.dynamodb, req).await
        } else if target.starts_with("AWSEvents.") {
            call(&self.events, req).await
        } else if target.starts_with("secretsmanager.") {
            call(&self.secrets, req).await
        } else if is_form_post(&req) {
            self.form_post(req).await
        } else {
            self.s3(req).await
        }
    }

    /// S3 through the rustack service (which stages `PutObject` bodies to disk);
    /// `GetObject` bodies are attached here (see [`ObjectRange`]).
    async fn s3(&self, req: http::Request<Incoming>) -> http::Response<ResponseBody> {
        let Ok(response) = self.s3.call(req).await;
        let (mut parts, body) = response.into_parts();
        let Some(range) = parts.extensions.remove::<ObjectRange>() else {
            return http::Response::from_parts(parts, boxed(body));
        };
        match FileBody::open(range).await {
            Ok(file) => http::Response::from_parts(parts, boxed(file)),
            Err(error) => {
                tracing::debug!(%error, "cannot open stored S3 object");
                let err = rustack_s3_model::S3Error::internal_error(error.to_string());
                let (parts, body) =
                    rustack_s3_http::response::error_to_response(&err, "emulator").into_parts();
                http::Response::from_parts(parts, boxed(body))
            }
        }
    }

    /// A form-encoded POST: SNS when `Action=` names an SNS operation, else S3.
    async fn form_post(&self, req: http::Request<Incoming>) -> http::Response<ResponseBody> {
        let (parts, incoming) = req.into_parts();
        let body = match Limited::new(incoming, FORM_BODY_LIMIT).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return plain(
                    http::StatusCode::BAD_REQUEST,
                    format!("cannot read body: {error}"),
                )
            }
        };
        let params = rustack_sns_http::request::parse_form_params(&body);
        if let Ok(op) = rustack_sns_http::router::resolve_operation(&params) {
            let (parts, body) = self.sns.handle(op, &params, body).await.into_parts();
            return http::Response::from_parts(parts, boxed(body));
        }
        self.s3_buffered(parts, body).await
    }

    /// S3 for a request whose body was already read (never `PutObject`/`UploadPart`:
    /// those are `PUT`s and take the staged path).
    async fn s3_buffered(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> http::Response<ResponseBody> {
        let req = http::Request::from_parts(parts, ());
        let response = match self.s3_router.resolve(&req) {
            Ok(ctx) => {
                let (parts, ()) = req.into_parts();
                rustack_s3_http::dispatch::dispatch_operation(&*self.s3_backend, parts, body, ctx)
                    .await
            }
            Err(error) => Err(error),
        };
        let response = response.unwrap_or_else(|error| {
            rustack_s3_http::response::error_to_response(&error, "emulator")
        });
        let (parts, body) = response.into_parts();
        http::Response::from_parts(parts, boxed(body))
    }
}

fn is_form_post<B>(req: &http::Request<B>) -> bool {
    req.method() == http::Method::POST
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            })
}

fn plain(status: http::StatusCode, message: String) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(full(message));
    *response.status_mut() = status;
    response
}

/// Run a rustack hyper service and box its body.
async fn call<S, B>(service: &S, req: http::Request<Incoming>) -> http::Response<ResponseBody>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>,
    B: hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
{
    let Ok(response) = service.call(req).await;
    let (parts, body) = response.into_parts();
    http::Response::from_parts(parts, boxed(body))
}

/// Accept connections until `stop` fires (or its sender is dropped). Connection
/// tasks live in a `JoinSet`, so they all end when this returns.
pub(crate) async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, peer, Arc::clone(&services)));
                }
                Err(error) => {
                    // E.g. EMFILE: back off briefly instead of spinning.
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, services: Arc<Services>) {
    let service = hyper::service::service_fn(move |req| {
        let services = Arc::clone(&services);
        async move { Ok::<_, Infallible>(services.handle(req).await) }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::trace!(%peer, %error, "connection ended with an error");
    }
}
