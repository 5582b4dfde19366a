//! Running syncs locally: provisioning, the SQS event-source-mapping poller, the
//! finalizer loop and the scheduler, all around the functions' own handlers.
//!
//! # Layout
//!
//! - `options`: [`LocalOptions`], the timing knobs and simulated crashes.
//! - `provision`: creating a stack's resources, idempotently ([`provision()`]).
//! - `runtime`: [`LocalRuntime`], which drives a run from sync-start to its close.
//! - `event_source`: the pollers of a delivery queue and the delivery invocations they
//!   make ([`sqs_event`] builds the event Lambda would).
//! - `crashes`: the simulated crashes of delivery invocations.
//! - `notices`: the finalizer's wait on run-settled notices.
//! - `clock`: [`HandlerClock`], invocations and handler time per function.
//! - `lambda`: the `LambdaEvent` each handler gets ([`lambda_invocation`]).
//! - `scheduler`: [`schedule`], each named sync run when its schedule says.

mod clock;
mod crashes;
mod event_source;
mod lambda;
mod notices;
mod options;
mod provision;
mod runtime;
mod scheduler;

pub use clock::HandlerClock;
pub use event_source::sqs_event;
pub use lambda::lambda_invocation;
pub use options::LocalOptions;
pub use provision::provision;
pub use runtime::{LocalRun, LocalRuntime, Progress};
pub use scheduler::{schedule, AGAIN_AFTER_FAILURE};
