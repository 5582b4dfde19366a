//! End-to-end suite: whole runs through the real handlers, the real SDK and a real
//! emulator (embedded by default; `RESYNC_TEST_ENDPOINT` points it elsewhere, e.g. at
//! moto's server, with smaller row counts).
//!
//! One module per topic:
//! - `seed`: the seed and FAQ scenarios, permanent errors;
//! - `at_least_once`: duplicate deliveries, crashed invocations, late copies, copies of
//!   an abandoned run, schedule events delivered twice (at once, or after the close);
//! - `aws_faults`: what SQS and DynamoDB refuse on their own side (the embedded
//!   emulator's fault plan) never costs a row;
//! - `dead_letters`: rows that keep crashing their invocation, failed from the
//!   dead-letter queue;
//! - `failed_rows`: when a failing key failed, and its attempts per run and in all;
//! - `source_rows`: bad lines, duplicate keys, too-large and wide rows, new rows merged
//!   with failed keys;
//! - `runs`: overlapping starts, the close on the last row, the settled report, close
//!   claims and two finalizers, the local scheduler, a run that cannot run, locks left
//!   by runs that are not open, a run planned again, a resumed planning;
//! - `reporting`: metrics, summaries and alerts, ledger write units;
//! - `secrets`: signing secrets from Secrets Manager;
//! - `salesforce`, `hubspot`: the vendor scenarios;
//! - `rate_limits`: rate-limited rows wait, and are kept when their copy is refused;
//! - `breaker`: a destination that is down pauses delivery, probes, resumes; one that
//!   stays down ends the run by its deadline with an alert;
//! - `concurrency`: a destination's `concurrency` is the requests it sees at once;
//! - `item_limits`: DynamoDB's item size and batch-write limits with the widest keys,
//!   rows and rejections resync accepts.
//!
//! `helpers`: the test environment they share.

mod helpers;

mod at_least_once;
mod aws_faults;
mod breaker;
mod concurrency;
mod crash_points;
mod dead_letters;
mod failed_rows;
mod hubspot;
mod item_limits;
mod rate_limits;
mod reporting;
mod runs;
mod salesforce;
mod secrets;
mod seed;
mod source_rows;
