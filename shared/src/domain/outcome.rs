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
        }
    }

    /// A transient error.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::bounded(ErrorClass::Retryable, code, message)
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
}

/// Decides a row's fate after an attempt: delivered; a rate limit below the deferral
/// bound is deferred without spending the attempt; a retryable error (or a rate limit
/// past the bound) is retried after a backoff until the threshold; a permanent error,
/// or the threshold, is a terminal failure with the last error.
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
    if error.class == ErrorClass::RateLimited && policy.may_defer(attempt.rate_limit_deferrals) {
        let delay = policy.deferral_delay(attempt.rate_limit_deferrals, error.retry_after, rng);
        let if_refused = Box::new(spend_attempt(error.clone(), attempt.number, policy, rng));
        return Decision::Defer {
            delay,
            error,
            if_refused,
        };
    }
    spend_attempt(error, attempt.number, policy, rng)
}

/// An error that counts as attempt `attempt`: retried after a backoff, or terminal.
fn spend_attempt(
    error: RowError,
    attempt: u32,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Decision {
    if !error.class.retry_in_run() || policy.exhausted(attempt) {
        return Decision::TerminalFailure(error);
    }
    Decision::RetryLater {
        visibility: policy.visibility_backoff(attempt, error.retry_after, rng),
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
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay_secs: 1,
            max_delay_secs: 10,
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

    #[test]
    fn delivered_is_delivered() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            decide(Ok(()), attempt(3), &policy(), &mut rng),
            Decision::Delivered
        );
    }
}
