//! The bench's prices and what a run costs at them: resync's cost per million rows,
//! broken down by service, beside one Lambda invocation or one Step Functions execution
//! per row.

use std::collections::BTreeMap;

use crate::aws::RequestCounts;

/// AWS list prices used for the cost figures (us-east-1, on-demand, as published in
/// the providers' 2025 price lists; check the current pages before relying on them).
pub mod prices {
    /// SQS standard queue, per request (64 KB chunk).
    pub const SQS_REQUEST: f64 = 0.40 / 1e6;
    /// DynamoDB on-demand write request unit.
    pub const DYNAMODB_WRITE_UNIT: f64 = 0.625 / 1e6;
    /// DynamoDB on-demand read request unit.
    pub const DYNAMODB_READ_UNIT: f64 = 0.125 / 1e6;
    /// S3 GET/HEAD.
    pub const S3_GET: f64 = 0.0004 / 1e3;
    /// S3 PUT/LIST.
    pub const S3_LIST: f64 = 0.005 / 1e3;
    /// Lambda request.
    pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
    /// Lambda arm64 GB-second.
    pub const LAMBDA_GB_SECOND: f64 = 0.000_013_333_4;
    /// EventBridge custom event / SNS publish (per event).
    pub const EVENT: f64 = 1.00 / 1e6;
    /// Step Functions Standard state transition.
    pub const SFN_TRANSITION: f64 = 0.025 / 1e3;
    /// The date these prices were taken from the published price lists.
    pub const AS_OF: &str = "2025 public price lists (us-east-1)";
}

/// Memory of each function, GB (what a deployment configures).
const SYNC_START_GB: f64 = 0.128;
const DELIVERY_GB: f64 = 0.128;
const FINALIZER_GB: f64 = 0.128;

/// What the clean run cost at [`prices`], per million rows.
pub(super) struct Cost {
    /// resync's cost per million rows.
    pub(super) usd_per_million_rows: f64,
    /// That cost by service.
    pub(super) breakdown: BTreeMap<&'static str, f64>,
    /// One Step Functions Standard execution per row (4 transitions) + its Lambda task.
    pub(super) step_functions_per_row_usd_per_million_rows: f64,
    /// One Lambda invocation per row (same handler time per row as measured).
    pub(super) lambda_per_row_usd_per_million_rows: f64,
}

/// The cost of a run of `rows` rows (at least 1) that made `requests` and spent
/// `handler_seconds` (invocations, seconds) in each function's handler.
pub(super) fn per_million_rows(
    requests: &RequestCounts,
    handler_seconds: &BTreeMap<&'static str, (u64, f64)>,
    rows: f64,
) -> Cost {
    let per_row = |n: u64| n as f64 / rows;
    let gb_seconds = |name: &str, gb: f64| handler_seconds.get(name).map_or(0.0, |(_, s)| s * gb);
    let invocations: u64 = handler_seconds.values().map(|(n, _)| n).sum();
    let s3_gets = requests.by_operation.get("s3.GET").copied().unwrap_or(0);
    let s3_requests = requests.service("s3");
    let mut breakdown = BTreeMap::new();
    breakdown.insert(
        "sqs",
        per_row(requests.sqs_billed_requests) * prices::SQS_REQUEST * 1e6,
    );
    breakdown.insert(
        "dynamodb",
        (per_row(requests.dynamodb_write_units) * prices::DYNAMODB_WRITE_UNIT
            + per_row(requests.dynamodb_read_units) * prices::DYNAMODB_READ_UNIT)
            * 1e6,
    );
    breakdown.insert(
        "s3",
        (per_row(s3_gets) * prices::S3_GET + per_row(s3_requests - s3_gets) * prices::S3_LIST)
            * 1e6,
    );
    breakdown.insert(
        "lambda",
        (per_row(invocations) * prices::LAMBDA_REQUEST
            + (gb_seconds("sync-start", SYNC_START_GB)
                + gb_seconds("delivery", DELIVERY_GB)
                + gb_seconds("finalizer", FINALIZER_GB))
                / rows
                * prices::LAMBDA_GB_SECOND)
            * 1e6,
    );
    breakdown.insert(
        "events",
        per_row(requests.service("events") + requests.service("sns")) * prices::EVENT * 1e6,
    );
    let usd_per_million_rows = breakdown.values().sum();
    let delivery_seconds_per_row = handler_seconds
        .get("delivery")
        .map_or(0.0, |(_, s)| s / rows);
    // One invocation per row: the same per-row handler time, billed in 1 ms steps.
    let lambda_per_row = prices::LAMBDA_REQUEST
        + (delivery_seconds_per_row.max(0.001)) * DELIVERY_GB * prices::LAMBDA_GB_SECOND;
    let lambda_per_row_usd_per_million_rows = (lambda_per_row + 3.0 * prices::SQS_REQUEST) * 1e6;
    let step_functions_per_row_usd_per_million_rows =
        (4.0 * prices::SFN_TRANSITION + lambda_per_row) * 1e6;
    Cost {
        usd_per_million_rows,
        breakdown,
        step_functions_per_row_usd_per_million_rows,
        lambda_per_row_usd_per_million_rows,
    }
}
