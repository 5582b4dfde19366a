//! Logging of the deployed functions.

use tracing_subscriber::filter::LevelFilter;

/// Installs the functions' log subscriber. It writes what lambda_runtime's default
/// subscriber writes (stdout, no timestamp — CloudWatch stamps each line — no target,
/// JSON lines when `AWS_LAMBDA_LOG_FORMAT=JSON`, as the templates' `LoggingConfig`
/// sets) with one level for every target ([`log_level`]) instead of its regex-based
/// `EnvFilter`, which would add the regex engine to each bootstrap.
pub fn init_lambda_logging() {
    let level = log_level(|name| std::env::var(name).ok());
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT")
        .is_ok_and(|format| format.trim().eq_ignore_ascii_case("json"));
    let subscriber = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_max_level(level);
    if json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
}

/// The level of the functions' logs: `AWS_LAMBDA_LOG_LEVEL` (Lambda's advanced logging
/// controls; `FATAL` counts as `ERROR`), else `RUST_LOG`, else `INFO`. `RUST_LOG` is read
/// as a level only: of a directive list such as `info,resync=debug` the bare level
/// (`info`) counts, per-target directives are ignored.
pub fn log_level(env: impl Fn(&str) -> Option<String>) -> LevelFilter {
    let parse = |value: &str| -> Option<LevelFilter> {
        let value = value.trim();
        if value.is_empty() {
            // tracing reads an empty string as ERROR; Lambda means "not set".
            return None;
        }
        if value.eq_ignore_ascii_case("fatal") {
            return Some(LevelFilter::ERROR);
        }
        value.parse().ok()
    };
    if let Some(level) = env("AWS_LAMBDA_LOG_LEVEL").as_deref().and_then(parse) {
        return level;
    }
    env("RUST_LOG")
        .and_then(|directives| {
            directives
                .split(',')
                .rev()
                .filter(|directive| !directive.contains('='))
                .find_map(parse)
        })
        .unwrap_or(LevelFilter::INFO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(vars: &[(&str, &str)]) -> LevelFilter {
        log_level(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn lambda_log_level_wins_over_rust_log() {
        assert_eq!(
            level(&[("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("RUST_LOG", "debug")]),
            LevelFilter::WARN
        );
        assert_eq!(
            level(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")]),
            LevelFilter::ERROR
        );
    }

    #[test]
    fn rust_log_counts_by_its_bare_level() {
        assert_eq!(level(&[("RUST_LOG", "debug")]), LevelFilter::DEBUG);
        assert_eq!(
            level(&[("RUST_LOG", "resync=trace,warn")]),
            LevelFilter::WARN
        );
        assert_eq!(level(&[("RUST_LOG", "resync=trace")]), LevelFilter::INFO);
    }

    #[test]
    fn info_when_nothing_or_nonsense_is_set() {
        assert_eq!(level(&[]), LevelFilter::INFO);
        assert_eq!(
            level(&[("AWS_LAMBDA_LOG_LEVEL", "loud"), ("RUST_LOG", "")]),
            LevelFilter::INFO
        );
    }
}
