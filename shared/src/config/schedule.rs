//! Schedule expressions as EventBridge takes them: `rate(...)` and `cron(...)`.
//!
//! Checked as EventBridge checks them, so a schedule that loads is one the stack can
//! create:
//! - `rate(value unit)`: `value` a positive integer (digits only), `unit` one of
//!   `minute | hour | day` when the value is 1 and `minutes | hours | days` otherwise;
//!   the period may be at most [`MAX_RATE_DAYS`] days (`rate(1000000 days)` is refused
//!   instead of overflowing).
//! - `cron(minutes hours day-of-month month day-of-week year)`: six fields; minutes
//!   0-59, hours 0-23, day-of-month 1-31 (also `?`, `L`, `nW`), month 1-12 or JAN-DEC,
//!   day-of-week 1-7 or SUN-SAT (also `?`, `L`, `nL`, `n#k`), year 1970-2199; each field
//!   a list of `,`-separated values, `a-b` ranges, `*`, and `/` increments (not in
//!   day-of-week). Exactly one of day-of-month and day-of-week is `?`; a `#` stands
//!   alone in its field.

use std::time::Duration;

/// The longest period a `rate(...)` may have (a year): far beyond any useful sync
/// schedule, and well inside what every duration computed from it can hold.
pub const MAX_RATE_DAYS: u64 = 365;

/// Parses the period of a valid `rate(...)` expression; `None` for `cron(...)` and for
/// anything [`check_schedule`] refuses.
pub fn rate_period(schedule: &str) -> Option<Duration> {
    parse_rate(schedule).ok()
}

fn parse_rate(schedule: &str) -> Result<Duration, String> {
    let inner = schedule
        .strip_prefix("rate(")
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| "a rate expression is written 'rate(value unit)'".to_owned())?;
    let mut parts = inner.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("a rate expression has two fields, a value and a unit".into());
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the value '{value}' is not a positive integer"));
    }
    let Ok(count) = value.parse::<u64>() else {
        return Err(format!(
            "the value '{value}' is too large (at most {MAX_RATE_DAYS} days)"
        ));
    };
    if count == 0 {
        return Err("the value must be positive".into());
    }
    let (singular, secs) = match unit {
        "minute" | "minutes" => ("minute", 60),
        "hour" | "hours" => ("hour", 3600),
        "day" | "days" => ("day", 86_400),
        other => {
            return Err(format!(
                "the unit '{other}' is not one of minute(s), hour(s), day(s)"
            ))
        }
    };
    let plural = unit.len() != singular.len();
    if (count == 1) == plural {
        return Err(if count == 1 {
            format!("a value of 1 takes the singular unit: 'rate(1 {singular})'")
        } else {
            format!("a value above 1 takes the plural unit: 'rate({count} {singular}s)'")
        });
    }
    match count.checked_mul(secs) {
        Some(total) if total <= MAX_RATE_DAYS * 86_400 => Ok(Duration::from_secs(total)),
        _ => Err(format!("the period is longer than {MAX_RATE_DAYS} days")),
    }
}

/// Checks a schedule expression; the error says what EventBridge expects.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    if schedule.starts_with("rate(") {
        parse_rate(schedule)
            .map(|_| ())
            .map_err(|why| format!("'{schedule}' is not a valid rate expression: {why}"))
    } else if let Some(inner) = schedule
        .strip_prefix("cron(")
        .and_then(|s| s.strip_suffix(')'))
    {
        check_cron(inner)
            .map_err(|why| format!("'{schedule}' is not a valid cron expression: {why}"))
    } else {
        Err(format!(
            "'{schedule}' must be an EventBridge schedule expression: rate(...) or cron(...)"
        ))
    }
}

/// One cron field's rules.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    slash: bool,
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const MINUTES: Field = Field {
    name: "minutes",
    min: 0,
    max: 59,
    names: &[],
    slash: true,
};
const HOURS: Field = Field {
    name: "hours",
    min: 0,
    max: 23,
    names: &[],
    slash: true,
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    slash: true,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: MONTHS,
    slash: true,
};
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 1,
    max: 7,
    names: DAYS,
    slash: false,
};
const YEAR: Field = Field {
    name: "year",
    min: 1970,
    max: 2199,
    names: &[],
    slash: true,
};

fn check_cron(inner: &str) -> Result<(), String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    let [minutes, hours, dom, month, dow, year] = fields[..] else {
        return Err(format!(
            "EventBridge cron has six fields (minutes hours day-of-month month day-of-week year), found {}",
            fields.len()
        ));
    };
    check_field(&MINUTES, minutes)?;
    check_field(&HOURS, hours)?;
    match (dom == "?", dow == "?") {
        (true, true) => {
            return Err("only one of day-of-month and day-of-week may be '?'".into());
        }
        (false, false) => {
            return Err(
                "one of day-of-month and day-of-week must be '?' (they cannot both be set, nor both be '*')"
                    .into(),
            );
        }
        _ => {}
    }
    if dom != "?" {
        check_day_of_month(dom)?;
    }
    check_field(&MONTH, month)?;
    if dow != "?" {
        check_day_of_week(dow)?;
    }
    check_field(&YEAR, year)
}

fn check_day_of_month(field: &str) -> Result<(), String> {
    if field == "L" || field == "LW" {
        return Ok(());
    }
    if let Some(day) = field.strip_suffix('W') {
        return value(&DAY_OF_MONTH, day).map(|_| ());
    }
    check_field(&DAY_OF_MONTH, field)
}

fn check_day_of_week(field: &str) -> Result<(), String> {
    if field == "L" {
        return Ok(());
    }
    if let Some((day, nth)) = field.split_once('#') {
        value(&DAY_OF_WEEK, day)?;
        return match nth.parse::<u32>() {
            Ok(1..=5) => Ok(()),
            _ => Err(format!(
                "day-of-week '{field}': '#' takes a day and its instance in the month, 1-5 (e.g. 3#2), alone in the field"
            )),
        };
    }
    if let Some(day) = field.strip_suffix('L') {
        return value(&DAY_OF_WEEK, day).map(|_| ());
    }
    check_field(&DAY_OF_WEEK, field)
}

/// A list of values, ranges, `*` and increments.
fn check_field(field: &Field, text: &str) -> Result<(), String> {
    for item in text.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            if !field.slash {
                return Err(format!("{} '{text}': '/' is not allowed here", field.name));
            }
            match step.parse::<u32>() {
                Ok(step) if (1..=field.max.max(1)).contains(&step) => {}
                _ => {
                    return Err(format!(
                        "{} '{text}': the increment '{step}' must be a positive number up to {}",
                        field.name, field.max
                    ))
                }
            }
        }
        if base == "*" {
            continue;
        }
        match base.split_once('-') {
            Some((from, to)) => {
                value(field, from)?;
                value(field, to)?;
            }
            None => {
                value(field, base)?;
            }
        }
    }
    Ok(())
}

/// One value of a field: a number in its range, or a name (months, days).
fn value(field: &Field, text: &str) -> Result<u32, String> {
    if let Some(at) = field
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        return Ok(field.min + at as u32);
    }
    match text.parse::<u32>() {
        Ok(n)
            if text.bytes().all(|b| b.is_ascii_digit()) && (field.min..=field.max).contains(&n) =>
        {
            Ok(n)
        }
        _ => Err(format!(
            "{} '{text}' is not a value from {} to {}{}",
            field.name,
            field.min,
            field.max,
            match (field.names.first(), field.names.last()) {
                (Some(first), Some(last)) => format!(" or {first}-{last}"),
                _ => String::new(),
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_periods_saturate_into_refusals() {
        assert_eq!(
            rate_period("rate(2 hours)"),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(rate_period("rate(1 minutes)"), None);
        assert_eq!(rate_period("rate(18446744073709551615 minutes)"), None);
        assert_eq!(rate_period("cron(0 * * * ? *)"), None);
    }
}
