//! [`table`]: the bench report as a text table, one measured figure a line.

use super::BenchReport;

/// The report as a table.
pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("{name:<48} {value}\n"));
    line(
        "machine",
        format!("{} ({} build)", report.machine, report.profile),
    );
    line("rows", report.rows.to_string());
    line("packing", report.packing.to_string());
    line(
        "ceiling: SQS send+receive+delete (msg/s)",
        format!(
            "{:.0} (mean of {:.0} before, {:.0} after the pipeline)",
            report.ceiling_msgs_per_s,
            report.ceiling_samples_msgs_per_s[0],
            report.ceiling_samples_msgs_per_s[1]
        ),
    );
    line(
        "pipeline: S3 → destination → closed run (rows/s)",
        format!("{:.0}", report.pipeline_rows_per_s),
    );
    line("ratio pipeline / ceiling", format!("{:.2}", report.ratio));
    line(
        "CPU per message / row, all threads (µs)",
        format!(
            "ceiling {:.0} / pipeline {:.0} ({:.1} cores busy)",
            report.ceiling_cpu_us_per_msg,
            report.pipeline_cpu_us_per_row,
            report.pipeline_cores_busy
        ),
    );
    line(
        "pipeline phases (s)",
        report
            .pipeline_phases_s
            .iter()
            .map(|(phase, s)| format!("{} {s:.2}", &phase[2..]))
            .collect::<Vec<_>>()
            .join(", "),
    );
    line(
        "SQS requests per row (billed: per 64 KiB)",
        format!(
            "{:.4} ({:.4})",
            report.sqs_requests_per_row, report.sqs_billed_requests_per_row
        ),
    );
    line(
        "DynamoDB requests per delivered row",
        format!("{:.4}", report.dynamodb_requests_per_delivered_row),
    );
    line(
        "DynamoDB write units per delivered row",
        format!("{:.4}", report.dynamodb_write_units_per_delivered_row),
    );
    line(
        "DynamoDB read units per delivered row",
        format!("{:.4}", report.dynamodb_read_units_per_delivered_row),
    );
    line("S3 requests", report.s3_requests.to_string());
    line(
        "destination calls (ideal)",
        format!(
            "{} ({})",
            report.destination_calls, report.destination_calls_ideal
        ),
    );
    line(
        "retry run: rows sent (ideal)",
        format!(
            "{} ({}) for {} rows, {} failing",
            report.retry_destination_rows_sent,
            report.retry_destination_rows_ideal,
            report.retry_rows,
            report.retry_failing_rows
        ),
    );
    line(
        "next run: rows sent / delivered rows re-sent",
        format!(
            "{} / {}",
            report.next_run_rows_sent, report.next_run_resent_delivered_rows
        ),
    );
    if let Some((rows, keys)) = report.memory_case {
        for (name, figures) in &report.functions {
            if let Some(rss) = figures.peak_rss_mb {
                line(
                    &format!("{name}, {rows} rows + {keys} failed keys: peak RSS / invocations / longest"),
                    format!(
                        "{rss:.1} MB / {} / {:.1} s",
                        figures.invocations, figures.longest_invocation_s
                    ),
                );
            }
        }
    }
    if let (Some(rate), Some((_, keys))) = (report.index_items_per_s, report.memory_case) {
        line(
            &format!("index update: {keys} failed rows written"),
            format!("{rate:.0} items/s"),
        );
    }
    line(
        "resync: USD per million rows",
        format!("{:.3}", report.usd_per_million_rows),
    );
    line(
        "  one Lambda invocation per row",
        format!("{:.3}", report.lambda_per_row_usd_per_million_rows),
    );
    line(
        "  one Step Functions execution per row",
        format!("{:.3}", report.step_functions_per_row_usd_per_million_rows),
    );
    line("prices", report.prices_as_of.to_owned());
    out
}
