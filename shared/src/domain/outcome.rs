//! What a destination said about one row, and what the delivery function does about
//! it: [`decide`] is the whole retry decision (threshold, backoff, rate-limit
//! deferral), pure, with the policy's numbers from [`crate::domain::retry`].

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::domain::retry::RetryPolicy;

/// How an error must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Transient (a lock, a 5xx, a timeout): retry with backoff.
    Retryable,
    /// The destination's rate limit: retry no sooner than it says.
    RateLimited,
    /// The destination refused the row's data (validation): retrying the same values
    /// in this run cannot help; the next run retries it, with the source's newer values.
    Permanent,
    /// The row never reached the queue (malformed line, missing or non-unique key, too large).
    Rejected,
    /// The message crashed the delivery function until it reached the dead-letter queue.
    DeadLettered,
}

impl ErrorClass {
    /// Whether a retry inside the same run may succeed.
    pub fn retry_in_run(self) -> bool {
        matches!(self, Self::Retryable | Self::RateLimited)
    }

    /// The class as stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::RateLimited => "rate_limited",
            Self::Permanent => "permanent",
            Self::Rejected => "rejected",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// A row-level error: class, a machine-readable code and a human message.
///
/// Messages come from the destination and describe the problem; destinations must not
/// echo row values into them (they are stored in the failed-row index, never logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// How to handle it.
    pub class: ErrorClass,
    /// e.g. `UNABLE_TO_LOCK_ROW`, `HTTP_503`, `TIMEOUT`.
    pub code: String,
    /// Human-readable reason.
    pub message: String,
    /// The destination's `Retry-After`, if any.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// The request got no answer about its rows — no connection, a timeout, a body cut
    /// off, a 5xx or a 408 — so the error says the destination may be down, nothing
    /// about this row ([`RowError::unanswered`]). A destination's answer that
    /// refuses or defers rows one by one (each `retry`, say, for a lock) is an answer.
    /// The circuit breaker counts only these. Not stored.
    #[serde(skip)]
    pub without_answer: bool,
}

/// The longest error code kept, in bytes.
pub const MAX_ERROR_CODE_BYTES: usize = 128;
/// The longest error message kept, in bytes: enough to say what is wrong, and bounded
/// so a failed row (its payload smaller than a queue message) always fits one DynamoDB
/// item, in the ledger and in the failed-row index, whatever a destination answers.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes, on a character boundary.
fn bounded(text: impl Into<String>, max: usize) -> String {
    let mut text = text.into();
    cut(&mut text, max);
    text
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// A message cut to at most `max` bytes that says so: the kept start, then
/// `… [truncated from N bytes]` with the original length.
fn bounded_message(text: impl Into<String>, max: usize) -> String {
    let mut text = text.into();
    if text.len() <= max {
        return text;
    }
    let note = format!(" … [truncated from {} bytes]", text.len());
    cut(&mut text, max.saturating_sub(note.len()));
    text.push_str(&note);
    cut(&mut text, max);
    text
}

/// The code of [`RowError::attempts_spent`].
pub const ATTEMPTS_SPENT: &str = "ATTEMPTS_SPENT";

impl RowError {
    /// An error of `class`; the code and message are cut to [`MAX_ERROR_CODE_BYTES`]
    /// and [`MAX_ERROR_MESSAGE_BYTES`] (they come from the destination's answer); a
    /// message cut says so and keeps its original length.
    fn bounded(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: bounded(code, MAX_ERROR_CODE_BYTES),
            message: bounded_message(message, MAX_ERROR_MESSAGE_BYTES),
            retry_after: None,
            without_answer: false,
        }
    }

    /// A transient error of a request that got no answer about its rows
    /// ([`RowError::without_answer`]: a transport error, a cut body, a 5xx or a 408).
    pub fn unanswered(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            without_answer: true,
            ..Self::retryable(code, message)
        }
    }

    /// A transient error.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::bounded(ErrorClass::Retryable, code, message)
    }

    /// The failure of a row whose sends in the run already reached the destination's
    /// threshold of `max_attempts`, counted across its messages and planning attempts:
    /// settled without another send (I4), retryable in the next run.
    pub fn attempts_spent(max_attempts: u32) -> Self {
        Self::retryable(
            ATTEMPTS_SPENT,
            format!("the row's {max_attempts} attempts in this run were spent"),
        )
    }

    /// A refusal of the row's data.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::bounded(ErrorClass::Permanent, code, message)
    }

    /// A rate limit, with the destination's wait if it gave one.
    pub fn rate_limited(
        code: impl Into<String>,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Self::bounded(ErrorClass::RateLimited, code, message).with_retry_after(retry_after)
    }

    /// A row rejected before it was queued.
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::bounded(ErrorClass::Rejected, code, message)
    }

    /// Adds a `Retry-After`.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
}

/// The destination's answer for one row.
pub type RowResult = Result<(), RowError>;

/// What the delivery function does with one row after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The destination has it.
    Delivered,
    /// Hide the message for `visibility` and report it in `batchItemFailures`.
    RetryLater {
        /// The new visibility timeout.
        visibility: Duration,
        /// Why.
        error: RowError,
    },
    /// Rate limited: re-enqueue a copy delayed by `delay` that carries the attempts
    /// spent so far (a rate limit spends none) and delete the original. If SQS refuses
    /// the copy, the original is kept and `if_refused` applies instead (this receive
    /// then counts as an attempt).
    Defer {
        /// The copy's `DelaySeconds`.
        delay: Duration,
        /// Why.
        error: RowError,
        /// What to do when the copy cannot be sent: `RetryLater` or `TerminalFailure`.
        if_refused: Box<Decision>,
    },
    /// No more attempts in this run: recorded with its last error for the finalizer.
    TerminalFailure(RowError),
}

/// Where a row is in its run when it is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt that just ended, 1-based: the copy's `ApproximateReceiveCount` plus
    /// the attempts earlier copies spent.
    pub number: u32,
    /// How often the row was deferred for a rate limit in this run.
    pub rate_limit_deferrals: u32,
    /// The time left until the run's deadline (`None`: the run has none, as runs
    /// recorded before deadlines were kept). No wait is set to end after it, and a row
    /// decided with less than a whole second left is not retried in this run.
    pub until_deadline: Option<Duration>,
}

impl Attempt {
    /// The longest wait that still ends by the run's deadline, in whole seconds (as SQS
    /// takes them); `None` without a deadline.
    fn longest_wait(&self) -> Option<Duration> {
        self.until_deadline
            .map(|left| Duration::from_secs(left.as_secs()))
    }

    /// Whether the run's deadline has come (less than a whole second left).
    pub fn at_deadline(&self) -> bool {
        self.longest_wait().is_some_and(|wait| wait.is_zero())
    }
}

/// Decides a row's fate after an attempt: delivered; a rate limit below the deferral
/// bound is deferred without spending the attempt; a retryable error (or a rate limit
/// past the bound) is retried after a backoff until the threshold; a permanent error,
/// or the threshold, is a terminal failure with the last error. Every wait ends by the
/// run's deadline; at the deadline a row not delivered is a terminal failure (I7), its
/// class `rate_limited` when it was waiting on a limit (see [`at_deadline`]).
pub fn decide(
    result: RowResult,
    attempt: Attempt,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Decision {
    let error = match result {
        Ok(()) => return Decision::Delivered,
        Err(error) => error,
    };
    if attempt.at_deadline() {
        return Decision::TerminalFailure(at_deadline(error, attempt.rate_limit_deferrals));
    }
    let longest = attempt.longest_wait().unwrap_or(Duration::MAX);
    if error.class == ErrorClass::RateLimited && policy.may_defer(attempt.rate_limit_deferrals) {
        let delay = policy
            .deferral_delay(attempt.rate_limit_deferrals, error.retry_after, rng)
            .min(longest);
        let if_refused = Box::new(spend_attempt(
            error.clone(),
            attempt.number,
            longest,
            policy,
            rng,
        ));
        return Decision::Defer {
            delay,
            error,
            if_refused,
        };
    }
    spend_attempt(error, attempt.number, longest, policy, rng)
}

/// The error a row not delivered by its run's deadline is closed with: its last error,
/// classed `rate_limited` when the row was waiting on a limit (deferred for one in this
/// run, or refused by one now) unless the destination refused its data (`permanent`),
/// so the index says why the row is carried to the next run.
pub fn at_deadline(mut error: RowError, rate_limit_deferrals: u32) -> RowError {
    if rate_limit_deferrals > 0 && error.class.retry_in_run() {
        error.class = ErrorClass::RateLimited;
    }
    error
}

/// An error that counts as attempt `attempt`: retried after a backoff that ends within
/// `longest`, or terminal.
fn spend_attempt(
    error: RowError,
    attempt: u32,
    longest: Duration,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Decision {
    if !error.class.retry_in_run() || policy.exhausted(attempt) {
        return Decision::TerminalFailure(error);
    }
    Decision::RetryLater {
        visibility: policy
            .visibility_backoff(attempt, error.retry_after, rng)
            .min(longest),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::retry::MAX_RATE_LIMIT_DEFERRALS;
    use rand::{rngs::StdRng, SeedableRng};

    /// Issue 12, defect 4: a destination's error text is stored with the failed row; it
    /// is bounded where it is made, so a failed row always fits one DynamoDB item.
    #[test]
    fn a_destinations_error_text_is_bounded_on_a_character_boundary() {
        let error = RowError::permanent("C".repeat(1000), "é".repeat(100_000));
        assert_eq!(error.code.len(), MAX_ERROR_CODE_BYTES);
        assert!(error.message.len() <= MAX_ERROR_MESSAGE_BYTES);
        let odd = RowError::retryable("X", format!("a{}", "é".repeat(1000)));
        assert!(odd.message.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(odd.message.starts_with("aé"));
        let short = RowError::rate_limited("HTTP_429", "slow down", None);
        assert_eq!(
            (short.code.as_str(), short.message.as_str()),
            ("HTTP_429", "slow down")
        );
    }

    /// Issue 13, item 11: a message cut to its bound did not say it was cut, nor how
    /// long the destination's text was.
    #[test]
    fn a_cut_message_notes_its_original_length() {
        let error = RowError::permanent("BAD", "x".repeat(200_000));
        assert!(error.message.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(
            error.message.ends_with(" … [truncated from 200000 bytes]"),
            "{}",
            &error.message[900..]
        );
        assert!(error.message.starts_with("xxxx"));
        let exact = RowError::permanent("BAD", "y".repeat(MAX_ERROR_MESSAGE_BYTES));
        assert_eq!(exact.message, "y".repeat(MAX_ERROR_MESSAGE_BYTES));
    }

    fn attempt(number: u32) -> Attempt {
        Attempt {
            number,
            rate_limit_deferrals: MAX_RATE_LIMIT_DEFERRALS,
            until_deadline: None,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay_secs: 1,
            max_delay_secs: 10,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn retryable_rows_below_threshold_are_hidden_for_backoff() {
        let mut rng = StdRng::seed_from_u64(0);
        let error = RowError::retryable("UNABLE_TO_LOCK_ROW", "locked");
        match decide(Err(error.clone()), attempt(2), &policy(), &mut rng) {
            Decision::RetryLater {
                visibility,
                error: e,
            } => {
                assert!(visibility <= Duration::from_secs(2));
                assert_eq!(e, error);
            }
            other => panic!("expected retry, got {other:?}"),
        }
    }

    #[test]
    fn retryable_rows_at_threshold_fail_with_their_last_error() {
        let mut rng = StdRng::seed_from_u64(0);
        let error = RowError::retryable("HTTP_503", "unavailable");
        assert_eq!(
            decide(Err(error.clone()), attempt(3), &policy(), &mut rng),
            Decision::TerminalFailure(error)
        );
    }

    #[test]
    fn permanent_errors_are_not_retried_in_the_run() {
        let mut rng = StdRng::seed_from_u64(0);
        let error = RowError::permanent("REQUIRED_FIELD_MISSING", "email is required");
        assert_eq!(
            decide(Err(error.clone()), attempt(1), &policy(), &mut rng),
            Decision::TerminalFailure(error)
        );
    }

    #[test]
    fn rate_limits_wait_at_least_retry_after() {
        let mut rng = StdRng::seed_from_u64(0);
        let error = RowError::rate_limited("HTTP_429", "slow down", Some(Duration::from_secs(7)));
        match decide(Err(error), attempt(1), &policy(), &mut rng) {
            Decision::RetryLater { visibility, .. } => {
                assert!(visibility >= Duration::from_secs(7))
            }
            other => panic!("expected retry, got {other:?}"),
        }
    }

    #[test]
    fn rate_limits_below_the_deferral_bound_are_deferred_without_an_attempt() {
        let mut rng = StdRng::seed_from_u64(0);
        let error = RowError::rate_limited("HTTP_429", "slow down", Some(Duration::from_secs(7)));
        let fresh = Attempt {
            number: 3,
            rate_limit_deferrals: 4,
            until_deadline: None,
        };
        match decide(Err(error.clone()), fresh, &policy(), &mut rng) {
            Decision::Defer {
                delay,
                error: e,
                if_refused,
            } => {
                assert!(delay >= Duration::from_secs(7));
                assert!(delay <= crate::domain::retry::SQS_MAX_DELAY);
                assert_eq!(e, error);
                // Refused copy: this receive counts, and attempt 3 is the threshold.
                assert_eq!(*if_refused, Decision::TerminalFailure(error));
            }
            other => panic!("expected a deferral, got {other:?}"),
        }
    }

    #[test]
    fn rate_limits_past_the_deferral_bound_spend_attempts() {
        let mut rng = StdRng::seed_from_u64(0);
        let error = RowError::rate_limited("HTTP_429", "slow down", None);
        assert!(matches!(
            decide(Err(error.clone()), attempt(1), &policy(), &mut rng),
            Decision::RetryLater { .. }
        ));
        assert_eq!(
            decide(Err(error.clone()), attempt(3), &policy(), &mut rng),
            Decision::TerminalFailure(error)
        );
    }

    /// Issue 13, item 15: a rate-limited row waited up to 15 minutes per deferral, 100
    /// deferrals before its limit counted as an attempt (≥ 8 hours), and a backoff up to
    /// the policy's maximum, whatever the run's schedule: a run against a limited
    /// destination never closed. Every wait now ends by the run's deadline.
    #[test]
    fn no_wait_ends_after_the_runs_deadline() {
        let mut rng = StdRng::seed_from_u64(0);
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay_secs: 600,
            max_delay_secs: 3600,
            ..RetryPolicy::default()
        };
        let left = Attempt {
            number: 1,
            rate_limit_deferrals: 0,
            until_deadline: Some(Duration::from_millis(42_700)),
        };
        let limited = RowError::rate_limited(
            "API_BUDGET_RESERVED",
            "waiting",
            Some(Duration::from_secs(300)),
        );
        match decide(Err(limited), left, &policy, &mut rng) {
            Decision::Defer {
                delay, if_refused, ..
            } => {
                assert_eq!(delay, Duration::from_secs(42));
                assert!(matches!(
                    *if_refused,
                    Decision::RetryLater { visibility, .. } if visibility <= Duration::from_secs(42)
                ));
            }
            other => panic!("expected a deferral, got {other:?}"),
        }
        let locked = RowError::retryable("UNABLE_TO_LOCK_ROW", "locked")
            .with_retry_after(Some(Duration::from_secs(7200)));
        for _ in 0..50 {
            match decide(Err(locked.clone()), left, &policy, &mut rng) {
                Decision::RetryLater { visibility, .. } => {
                    assert!(visibility <= Duration::from_secs(42), "{visibility:?}")
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
    }

    /// Issue 13, item 15: at the run's deadline a row not delivered is closed as failed
    /// (and carried to the next run): `rate_limited` when it was waiting on a limit,
    /// else with its last error's class.
    #[test]
    fn at_the_deadline_a_row_not_delivered_fails_with_why_it_waited() {
        let mut rng = StdRng::seed_from_u64(0);
        let at = |deferrals| Attempt {
            number: 1,
            rate_limit_deferrals: deferrals,
            until_deadline: Some(Duration::from_millis(400)),
        };
        let limited = RowError::rate_limited("HTTP_429", "slow down", None);
        assert_eq!(
            decide(Err(limited.clone()), at(0), &policy(), &mut rng),
            Decision::TerminalFailure(limited)
        );
        // Waiting on a limit, then a lock on this last try: still rate-limited.
        let locked = RowError::retryable("UNABLE_TO_LOCK_ROW", "locked");
        match decide(Err(locked.clone()), at(3), &policy(), &mut rng) {
            Decision::TerminalFailure(error) => {
                assert_eq!(error.class, ErrorClass::RateLimited);
                assert_eq!(error.code, "UNABLE_TO_LOCK_ROW");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(
            decide(Err(locked.clone()), at(0), &policy(), &mut rng),
            Decision::TerminalFailure(locked)
        );
        let refused = RowError::permanent("REQUIRED_FIELD_MISSING", "email");
        assert_eq!(
            decide(Err(refused.clone()), at(3), &policy(), &mut rng),
            Decision::TerminalFailure(refused)
        );
        assert_eq!(
            decide(Ok(()), at(3), &policy(), &mut rng),
            Decision::Delivered
        );
    }

    #[test]
    fn delivered_is_delivered() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            decide(Ok(()), attempt(3), &policy(), &mut rng),
            Decision::Delivered
        );
    }
}
