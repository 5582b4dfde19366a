//! The per-destination retry policy, all of it: the failure threshold, the backoff
//! (exponential with full jitter, capped by the policy's maximum and by SQS's 12-hour
//! visibility limit, never shorter than what the destination asked for with
//! `Retry-After`), the rate-limit deferrals that do not spend attempts, and the receive
//! count past which a message goes to the dead-letter queue. The decision that applies
//! it to one row is [`crate::domain::outcome::decide`].

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

/// The longest visibility timeout SQS accepts (12 hours).
pub const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// The longest `DelaySeconds` SQS accepts (15 minutes): the most a deferred copy waits.
pub const SQS_MAX_DELAY: Duration = Duration::from_secs(900);

/// Rate-limit deferrals of one row in one run before a rate limit counts as an attempt
/// (so a run always ends, however long a destination keeps limiting).
pub const MAX_RATE_LIMIT_DEFERRALS: u32 = 100;

/// Receives beyond the threshold before SQS moves a message to the dead-letter queue:
/// a row the function settles never gets there, only one that crashes it every time.
pub const DEAD_LETTER_MARGIN: u32 = 2;

/// How a destination's rows are retried inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The failure threshold: attempts of one row in one run, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff before the second attempt (doubled on each further attempt), in seconds.
    #[serde(default = "default_base_delay_secs")]
    pub base_delay_secs: u64,
    /// The largest backoff, in seconds (at most 43,200: SQS's 12 hours).
    #[serde(default = "default_max_delay_secs")]
    pub max_delay_secs: u64,
    /// Consecutive requests failing as a whole (a 5xx, a timeout, a refused connection)
    /// after which the destination's circuit breaker opens: delivery pauses, rows wait
    /// without spending attempts, one probe at a time tries again (0: never pause).
    #[serde(default = "default_pause_after_failed_requests")]
    pub pause_after_failed_requests: u32,
    /// How long the breaker stays open before a probe, in seconds (1..=900: a paused
    /// row waits as a delayed copy, and SQS delays at most 15 minutes).
    #[serde(default = "default_pause_secs")]
    pub pause_secs: u64,
}

fn default_pause_after_failed_requests() -> u32 {
    5
}
fn default_pause_secs() -> u64 {
    30
}

fn default_max_attempts() -> u32 {
    5
}
fn default_base_delay_secs() -> u64 {
    5
}
fn default_max_delay_secs() -> u64 {
    900
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            base_delay_secs: default_base_delay_secs(),
            max_delay_secs: default_max_delay_secs(),
            pause_after_failed_requests: default_pause_after_failed_requests(),
            pause_secs: default_pause_secs(),
        }
    }
}

impl RetryPolicy {
    /// Checks bounds; on error returns (field, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err(("max_attempts", "must be between 1 and 100".into()));
        }
        if self.max_delay_secs > SQS_MAX_VISIBILITY.as_secs() {
            return Err((
                "max_delay_secs",
                format!(
                    "must be at most {} (SQS's 12-hour visibility limit)",
                    SQS_MAX_VISIBILITY.as_secs()
                ),
            ));
        }
        if self.pause_secs == 0 || self.pause_secs > SQS_MAX_DELAY.as_secs() {
            return Err((
                "pause_secs",
                format!(
                    "must be between 1 and {} (a paused row waits as a delayed copy: SQS's 15 minutes)",
                    SQS_MAX_DELAY.as_secs()
                ),
            ));
        }
        if self.base_delay_secs > self.max_delay_secs {
            return Err((
                "base_delay_secs",
                "must not be larger than max_delay_secs".into(),
            ));
        }
        Ok(())
    }

    /// The delivery queue's `maxReceiveCount`: above the threshold, so only messages
    /// that crash the delivery function land in the dead-letter queue.
    pub fn dead_letter_receive_count(&self) -> u32 {
        self.max_attempts.saturating_add(DEAD_LETTER_MARGIN)
    }

    /// Whether a rate-limited row that was deferred `deferrals` times may be deferred
    /// again (re-enqueued without spending an attempt).
    pub fn may_defer(&self, deferrals: u32) -> bool {
        deferrals < MAX_RATE_LIMIT_DEFERRALS
    }

    /// The delay of a rate-limited row's deferred copy after `deferrals` deferrals: a
    /// full-jitter backoff that grows with the deferrals, at least the limit's own wait,
    /// at most SQS's 15-minute `DelaySeconds`.
    pub fn deferral_delay(
        &self,
        deferrals: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        self.visibility_backoff(deferrals.saturating_add(1), retry_after, rng)
            .min(SQS_MAX_DELAY)
    }

    /// Whether attempt `attempt` would go past the threshold: a copy that comes back
    /// after the row's last attempt (a lost delete, an invocation that died at the
    /// threshold) is not sent again (I4).
    pub fn past_threshold(&self, attempt: u32) -> bool {
        attempt > self.max_attempts
    }

    /// True when a row that failed on attempt `attempt` (1-based) has reached the threshold.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }

    /// The ceiling of the jitter window after attempt `attempt` failed:
    /// `min(max_delay, base × 2^(attempt−1))`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let ceiling = self
            .base_delay_secs
            .saturating_mul(1u64 << exponent)
            .min(self.max_delay_secs);
        Duration::from_secs(ceiling)
    }

    /// The visibility timeout after attempt `attempt` failed: a uniformly random delay in
    /// `[0, ceiling]` (full jitter), raised to `retry_after` when the destination asked
    /// for one, and never beyond SQS's 12 hours. Whole seconds, as SQS takes them.
    pub fn visibility_backoff(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.backoff_ceiling(attempt).as_secs();
        let jittered = if ceiling == 0 {
            0
        } else {
            rng.gen_range(0..=ceiling)
        };
        let floor = retry_after.map_or(0, |d| {
            d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
        });
        Duration::from_secs(jittered.max(floor)).min(SQS_MAX_VISIBILITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay_secs: 2,
            max_delay_secs: 60,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_stays_within_the_exponential_ceiling() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let ceiling = policy.backoff_ceiling(attempt);
            assert_eq!(
                ceiling.as_secs(),
                (2u64 << (attempt - 1)).min(60),
                "attempt {attempt}"
            );
            for _ in 0..200 {
                let delay = policy.visibility_backoff(attempt, None, &mut rng);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_window() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<u64> = (0..2000)
            .map(|_| policy.visibility_backoff(6, None, &mut rng).as_secs())
            .collect();
        assert!(delays.iter().any(|&d| d <= 5), "never near zero");
        assert!(delays.iter().any(|&d| d >= 55), "never near the cap");
        let mean = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
        assert!((25.0..35.0).contains(&mean), "mean {mean} not ~30");
    }

    #[test]
    fn retry_after_is_a_floor_and_twelve_hours_a_ceiling() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let delay = policy.visibility_backoff(1, Some(Duration::from_millis(30_500)), &mut rng);
            assert!(delay >= Duration::from_secs(31), "{delay:?}");
        }
        let delay = policy.visibility_backoff(1, Some(Duration::from_secs(90_000)), &mut rng);
        assert_eq!(delay, SQS_MAX_VISIBILITY);
    }

    #[test]
    fn the_threshold_counts_the_first_attempt() {
        let policy = policy();
        assert!(!policy.exhausted(4));
        assert!(policy.exhausted(5));
        assert!(policy.exhausted(6));
    }

    #[test]
    fn dead_letters_start_above_the_threshold() {
        assert_eq!(policy().dead_letter_receive_count(), 7);
    }

    #[test]
    fn deferred_copies_wait_at_least_the_limit_and_at_most_fifteen_minutes() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay_secs: 5,
            max_delay_secs: 43_200,
            ..RetryPolicy::default()
        };
        let mut rng = StdRng::seed_from_u64(5);
        for deferrals in [0, 3, 20, 99] {
            let delay = policy.deferral_delay(deferrals, Some(Duration::from_secs(7)), &mut rng);
            assert!(delay >= Duration::from_secs(7), "{delay:?}");
            assert!(delay <= SQS_MAX_DELAY, "{delay:?}");
        }
        assert!(policy.may_defer(MAX_RATE_LIMIT_DEFERRALS - 1));
        assert!(!policy.may_defer(MAX_RATE_LIMIT_DEFERRALS));
    }

    #[test]
    fn a_pause_must_fit_one_sqs_delay() {
        let with = |pause_secs| RetryPolicy {
            pause_secs,
            ..RetryPolicy::default()
        };
        assert_eq!(with(0).validate().unwrap_err().0, "pause_secs");
        assert_eq!(with(901).validate().unwrap_err().0, "pause_secs");
        assert!(with(900).validate().is_ok());
        assert_eq!(RetryPolicy::default().pause_after_failed_requests, 5);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let policy = policy();
        assert_eq!(policy.backoff_ceiling(u32::MAX).as_secs(), 60);
    }
}
