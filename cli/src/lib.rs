//! `resync`'s local runner: the same handlers the Lambdas run, driven in-process
//! exactly as Lambda drives them, against the embedded emulator or any endpoint.
//!
//! # Layout
//!
//! - [`local`]: provisioning (the resources `resync_shared::resources` defines), the
//!   SQS event-source-mapping poller, the scheduler loop and [`local::LocalRuntime`],
//!   which runs a sync from sync-start to a closed run.
//! - [`destination_server`]: a local HTTP server speaking the webhook contract, with
//!   locked and rejecting rows on demand: the demo's destination and the tests'.
//! - [`demo`]: `resync demo`.
//! - [`aws`]: building SDK configurations for the emulator or `AWS_ENDPOINT_URL`.

pub mod aws;
pub mod bench;
pub mod demo;
pub mod destination_server;
pub mod local;
