//! Schedule expressions as EventBridge takes them: `rate(...)` and `cron(...)`.

use std::time::Duration;

/// Parses the period of a `rate(...)` expression; `None` for `cron(...)`.
pub fn rate_period(schedule: &str) -> Option<Duration> {
    let inner = schedule.strip_prefix("rate(")?.strip_suffix(')')?;
    let (count, unit) = inner.trim().split_once(' ')?;
    let count: u64 = count.parse().ok()?;
    let secs = match unit.trim() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(count * secs))
}

/// Checks a schedule expression; the error says what EventBridge expects.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    if schedule.starts_with("rate(") {
        match rate_period(schedule) {
            Some(p) if !p.is_zero() => Ok(()),
            _ => Err(format!(
                "'{schedule}' is not a valid rate expression; expected e.g. 'rate(15 minutes)'"
            )),
        }
    } else if let Some(inner) = schedule
        .strip_prefix("cron(")
        .and_then(|s| s.strip_suffix(')'))
    {
        if inner.split_whitespace().count() == 6 {
            Ok(())
        } else {
            Err(format!(
                "'{schedule}' is not a valid cron expression; EventBridge cron has six fields"
            ))
        }
    } else {
        Err(format!(
            "'{schedule}' must be an EventBridge schedule expression: rate(...) or cron(...)"
        ))
    }
}
