//! The pure rules of resync: no AWS SDK, no HTTP. Everything here is decided from
//! values and tested in isolation; the adapters (`crate::aws`, `crate::destination`)
//! carry the results to the services.
//!
//! - [`cursor`]: the source cursor — a `LastModified` watermark with a lookback window
//!   and per-object records (read, pending, skipped) — and which objects a run reads.
//! - [`ids`]: newtypes for the identifiers that cross process boundaries
//!   (`SyncId`, `RunId`, `PrimaryKey`, `DestinationId`), validated once at the edge.
//! - [`row`]: a row's fields as the JSON object text they arrived in (validated once,
//!   spliced verbatim into messages, request bodies and the index).
//! - [`source`]: the "new rows" of a run — JSON Lines / CSV, gzip or plain, parsed as a
//!   stream with per-line rejections.
//! - [`merge`]: planning — a run's source rows merged with the failed-row index (each key
//!   once, source values win), duplicate keys found by sorted hashes.
//! - [`message`]: the wire DTO of one row on the delivery queue.
//! - [`retry`]: the retry policy — the failure threshold, full-jitter exponential
//!   backoff, rate-limit deferrals, the dead-letter receive count.
//! - [`outcome`]: what a destination said about one row, and [`outcome::decide`], the
//!   one function that turns it into what delivery does (deliver, hide for a backoff,
//!   defer a rate-limited row, fail it).
//! - [`ledger`]: run accounting — the ledger item of one delivery invocation and the
//!   tally that closes a run with exact counts.
//! - [`rejections`]: a run's rejections in bounded memory — exact counts by code, a
//!   sample of the first of each code, keyed rejections handed out in chunks.
//! - [`replan`]: a run planned again — what its earlier attempts settled, carried
//!   into the latest attempt's plan and outcome.
//! - [`run`]: a run's life (status, record, plan) and the sync's lock and cursor.
//! - [`timestamp`]: timestamps as resync stores and prints them.

pub mod cursor;
pub mod ids;
pub mod ledger;
pub mod merge;
pub mod message;
pub mod outcome;
pub mod rejections;
pub mod replan;
pub mod retry;
pub mod row;
pub mod run;
pub mod source;
pub mod timestamp;
