//! An in-process AWS emulator for local runs and tests.
//!
//! [`Emulator::start`] serves SQS, DynamoDB, S3, SNS, EventBridge and Secrets Manager
//! over HTTP/1.1 on one loopback port, built from the `rustack-*` crates. Point any
//! AWS SDK client at [`Emulator::endpoint_url`] (S3 clients with
//! `force_path_style(true)`); signatures are not validated, so any static credentials
//! work. Requests are routed by:
//!
//! - `X-Amz-Target: AmazonSQS.*` → SQS (queue URLs point back at this emulator),
//! - `X-Amz-Target: DynamoDB_20120810.*` → DynamoDB,
//! - `X-Amz-Target: AWSEvents.*` → EventBridge,
//! - `X-Amz-Target: secretsmanager.*` → Secrets Manager (secrets are found by name or
//!   by the ARN `CreateSecret` returned, which ends in a random six-character suffix),
//! - a form-encoded `POST` whose `Action=` is an SNS operation → SNS,
//! - anything else → S3 (path-style).
//!
//! SQS and DynamoDB requests pass a guard first that refuses what AWS refuses and the
//! rustack crates accept (message and batch sizes, `DelaySeconds`, visibility, 400 KB
//! items, `BatchWriteItem` and `TransactWriteItems` bounds and duplicate keys), and
//! injects the seeded faults of [`Emulator::faults`] (throttling, internal errors,
//! transaction conflicts, partial batch failures, latency).
//!
//! SNS `sqs` subscriptions and EventBridge SQS targets deliver into the emulator's own
//! queues. All state is in memory (large S3 objects are spooled to temporary files)
//! and dies with the emulator; two emulators in one process are independent.
//!
//! Logging: nothing is logged at INFO per request. The rustack crates' own INFO lines
//! (one per routed S3 request, one per created queue or bucket) are dropped for the
//! subscriber that is current when the emulator starts, so install the `tracing`
//! subscriber first; their DEBUG/TRACE/WARN events are forwarded as usual.
//!
//! ```no_run
//! # async fn demo() -> Result<(), resync_emulator::EmulatorError> {
//! let emulator = resync_emulator::Emulator::start().await?;
//! println!("AWS endpoint: {}", emulator.endpoint_url());
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod body;
mod bridge;
mod guard;
mod quiet;
mod s3;
mod server;
mod sns;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use guard::{in_flight::InFlight, FaultKind, FaultRule, Faults};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// A running emulator. The server runs as a task on the runtime that started it;
/// dropping the emulator (or [`Emulator::shutdown`]) stops it.
pub struct Emulator {
    endpoint_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    providers: server::Providers,
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("cannot read the listening address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

impl Emulator {
    /// Start on 127.0.0.1 with an OS-chosen port; returns once it accepts connections.
    ///
    /// # Errors
    /// [`EmulatorError`] when the socket cannot be bound.
    pub async fn start() -> Result<Emulator, EmulatorError> {
        Self::start_on(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await
    }

    /// Same, on a given address (e.g. "127.0.0.1:4566").
    ///
    /// Port 0 lets the OS choose. An unspecified address (`0.0.0.0`, `::`) listens on
    /// all interfaces but advertises the loopback address in the endpoint and in
    /// queue URLs.
    ///
    /// # Errors
    /// [`EmulatorError`] when the socket cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> Result<Emulator, EmulatorError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EmulatorError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(EmulatorError::LocalAddr)?;
        let host = match local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let port = local_addr.port();
        let (services, providers) = server::Services::new(&host, port);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server::serve(listener, services, stopped));
        tracing::debug!(%local_addr, "AWS emulator listening");
        Ok(Emulator {
            endpoint_url: format!("http://{host}:{port}"),
            stop: Some(stop),
            task: Some(task),
            providers,
        })
    }

    /// "http://127.0.0.1:PORT"
    #[must_use]
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }

    /// The fault plan: empty until a test sets one (see [`Faults::set`]).
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.providers.faults
    }

    /// SQS's in-flight accounting: how many messages each queue has in flight, and the
    /// limit past which receives are refused (AWS's 120,000 unless a test lowers it).
    #[must_use]
    pub fn sqs_in_flight(&self) -> &InFlight {
        &self.providers.in_flight
    }

    /// Stop accepting and end the server task (also done on Drop).
    ///
    /// Open connections are closed, pending SNS/EventBridge deliveries are drained
    /// (for a few seconds at most) and the SQS queue actors are stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.providers.shutdown().await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Dropping the sender stops the accept loop; abort covers a runtime that is
        // itself shutting down. Queue actors end once the providers are dropped.
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}
