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
//! - `corpus`: the bad-input corpus of `tests/corpus/` (sources and configurations
//!   with their expected outcomes);
//! - `failed_rows`: when a failing key failed, and its attempts per run and in all;
//! - `source_rows`: bad lines, duplicate keys, too-large and wide rows, new rows merged
//!   with failed keys;
//! - `source_objects`: the source cursor — pending objects retried until read whole or
//!   skipped, re-uploads and late arrivals read;
//! - `runs`: overlapping starts, the close on the last row, the settled report, close
//!   claims and two finalizers, the local scheduler, a run that cannot run, locks left
//!   by runs that are not open, a run planned again, a resumed planning;
//! - `reporting`: metrics, summaries and alerts, ledger write units;
//! - `secrets`: signing secrets from Secrets Manager;
//! - `salesforce`, `hubspot`: the vendor scenarios;
//! - `rate_limits`: rate-limited rows wait, and are kept when their copy is refused;
//! - `destination_answers`: a destination that misbehaves in every way the
//!   fault-injecting chaos destination knows (cut, truncated, malformed and huge
//!   answers, omitted and foreign keys, redirects, dropped connections, huge headers,
//!   poisoned rows refusing whole requests): nothing counted delivered unless written
//!   and acknowledged;
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
mod corpus;
mod crash_points;
mod dead_letters;
mod destination_answers;
mod failed_rows;
mod hubspot;
mod in_flight;
mod item_limits;
mod packing;
mod rate_limits;
mod replan;
mod reporting;
mod runs;
mod salesforce;
mod secrets;
mod seed;
mod source_objects;
mod source_rows;
