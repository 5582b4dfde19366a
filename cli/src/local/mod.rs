//! Running syncs locally: provisioning, the SQS event-source-mapping poller, the
//! finalizer loop and the scheduler, all around the functions' own handlers.
//!
//! # Layout
//!
//! - `options`: [`LocalOptions`], the timing knobs, simulated crashes and event copies.
//! - `provision`: creating a stack's resources, idempotently ([`provision()`]).
//! - `runtime`: [`LocalRuntime`], which drives a run from sync-start to its close.
//! - `event_source`: the pollers of a delivery queue and the delivery invocations they
//!   make ([`sqs_event`] builds the event Lambda would).
//! - `crashes`: the simulated crashes of delivery invocations, and the seeded plan of
//!   the handlers' crash points ([`CrashRules`]).
//! - `at_least_once`: extra copies of schedule events, run-settled notices and received
//!   batches, at seeded rates ([`AtLeastOnce`]).
//! - `seeded`: the seeded generator both plans draw from.
//! - `notices`: the finalizer's wait on run-settled notices.
//! - `clock`: [`HandlerClock`], invocations and handler time per function.
//! - `lambda`: the `LambdaEvent` each handler gets ([`lambda_invocation`]).
//! - `scheduler`: [`schedule`], each named sync run when its schedule says.

mod at_least_once;
mod clock;
mod crashes;
mod event_source;
mod lambda;
mod notices;
mod options;
mod provision;
mod runtime;
mod scheduler;
mod seeded;

pub use at_least_once::AtLeastOnce;
pub use clock::HandlerClock;
pub use crashes::{CrashRule, CrashRules};
pub use event_source::sqs_event;
pub use lambda::{lambda_invocation, lambda_invocation_until};
pub use options::LocalOptions;
pub use provision::provision;
pub use runtime::{LocalRun, LocalRuntime, Progress};
pub use scheduler::{schedule, AGAIN_AFTER_FAILURE};
