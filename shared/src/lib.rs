//! resync's library: everything the three Lambda functions and the local runner share.
//!
//! # Layout
//!
//! The modules form layers; each uses only those above it in this list, so the pure
//! rules can be read and tested without the services around them (a test in this
//! crate checks the boundaries).
//!
//! - [`domain`]: the pure rules — identifiers, rows, the source reader, planning
//!   (merge), the queue message, the retry policy and the per-row decision, run
//!   accounting (ledger), run states. No AWS SDK, no HTTP.
//! - [`yaml`]: reading YAML with errors that name the field.
//! - [`secrets`]: where destination secrets come from (Secrets Manager in production).
//! - [`destination`]: the `Destination` port, the registry of kinds and one module per
//!   kind (webhook, Salesforce, HubSpot), each owning its settings section, wire format
//!   and error mapping.
//! - [`config`]: the configuration file — syncs and the destinations' common fields,
//!   loaded and validated with errors that name the field; a destination's own section
//!   goes to its kind through the registry.
//! - [`resources`]: the names and settings of every queue, table, bucket, topic and bus
//!   (one place, used by provisioning and by the functions).
//! - [`aws`]: adapters over the AWS SDK — the runs table (lock, ledger, close), the
//!   failed-row index, the work queue, the S3 source, run reporting — the one HTTPS
//!   client of every build and the functions' SDK configuration.
//! - [`logging`]: the functions' log subscriber (JSON lines, one level, no regex).
//! - [`crash_points`]: the named places between a handler's side effects where a test
//!   harness makes an invocation die (never, in a deployment).
#![warn(missing_docs)]

pub mod aws;
pub mod config;
pub mod crash_points;
pub mod destination;
pub mod domain;
pub mod logging;
pub mod resources;
pub mod secrets;
pub mod yaml;

pub use domain::ids::{DestinationId, PrimaryKey, RunId, SyncId};
pub use domain::row::RowFields;

#[cfg(test)]
mod layers;
