//! `resync`'s local runner: the same handlers the Lambdas run, driven in-process
//! exactly as Lambda drives them, against the embedded emulator or any endpoint.
//!
//! # Layout
//!
//! - [`aws`]: SDK configurations (emulator or `AWS_ENDPOINT_URL`), the request counter,
//!   and the recorder of each function's SDK calls (`RESYNC_CALL_LOG`).
//! - [`bench`](mod@bench): `resync bench`, throughput, requests, cost and memory on the emulator.
//! - [`chaos`]: `resync chaos`, runs through injected faults, invariants checked from outside.
//! - [`demo`]: `resync demo`, a whole sync run twice against rows kept locked.
//! - [`destination_server`]: a local webhook destination, the demo's and the tests'.
//! - [`local`]: provisioning, pollers, finalizer and scheduler: [`local::LocalRuntime`].
//! - [`operator`]: operator commands on what a sync stored (`resync rejections`).

pub mod aws;
pub mod bench;
pub mod chaos;
pub mod demo;
pub mod destination_server;
pub mod local;
pub mod operator;
