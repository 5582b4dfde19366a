//! resync's library: everything the three Lambda functions and the local runner share.
//!
//! # Layout
//!
//! - [`ids`]: newtypes for the identifiers that cross process boundaries
//!   (`SyncId`, `RunId`, `PrimaryKey`, `DestinationId`), validated once at the edge.
//! - [`config`]: the sync configuration file (destinations and syncs), loaded and
//!   validated with errors that name the offending field.
//! - [`retry`]: the per-destination retry policy and full-jitter exponential backoff.
//! - [`outcome`]: what a destination said about one row (delivered, retryable,
//!   rate-limited, permanent), and the decision the delivery function takes from it.
//! - [`source`]: the "new rows" of a run — JSON Lines / CSV objects, gzip or plain,
//!   parsed as a stream with per-line rejections.
//! - [`merge`]: the pure planning rule that merges a run's source rows with the
//!   failed-row index (each key once, source values win).
//! - [`row`]: a row's fields as the JSON object text they arrived in (validated once,
//!   spliced verbatim into messages, request bodies and the index).
//! - [`message`]: the wire DTO of one row on the delivery queue.
//! - [`ledger`]: run accounting — batch ledger entries and the pure tally that closes a
//!   run with exact counts.
//! - [`resources`]: the names and settings of every queue, table, bucket, topic and bus
//!   (one place, used by provisioning and by the functions).
//! - [`destination`]: the `Destination` port and its adapters: the webhook, Salesforce
//!   (sObject Collections upsert, OAuth 2.0 server-to-server) and HubSpot (CRM v3 batch
//!   upsert).
//! - [`aws`]: adapters over the AWS SDK (DynamoDB run ledger and failed-row index, SQS
//!   work queue, S3 source, SNS/EventBridge/EMF run reporting), the one HTTPS client
//!   of every build and the functions' SDK configuration from the Lambda environment.
//! - [`secrets`]: where destination secrets come from (Secrets Manager in production).
//! - [`logging`]: the functions' log subscriber (JSON lines, one level, no regex).
#![warn(missing_docs)]

pub mod aws;
pub mod config;
pub mod destination;
pub mod ids;
pub mod ledger;
pub mod logging;
pub mod merge;
pub mod message;
pub mod outcome;
pub mod resources;
pub mod retry;
pub mod row;
pub mod secrets;
pub mod source;
pub mod time_util;

pub use ids::{DestinationId, PrimaryKey, RunId, SyncId};
pub use row::RowFields;
