//! Which failures are worth retrying, and when: the policy whose absence
//! once let an app retry forever.
//!
//! Pure functions of their inputs; the caller supplies the jitter sample.

use std::time::Duration;

use crate::ClientError;

/// How a call failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer: refused, reset, unreachable.
    Network,
    /// No answer in time.
    Timeout,
    /// An answer with an error status.
    Status {
        /// The HTTP status.
        code: u16,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Trying again may work (network, timeout, 5xx, 429).
    Retryable {
        /// The server asked for this wait.
        retry_after: Option<Duration>,
    },
    /// Trying again repeats the failure (400, 401, 403, 404, 409, 413, 422,
    /// and any other status that is not 429 or 5xx).
    Permanent,
}

/// Sorts a failure into retryable or permanent.
#[must_use]
pub fn classify(failure: Failure) -> Class {
    match failure {
        Failure::Network | Failure::Timeout => Class::Retryable { retry_after: None },
        Failure::Status { code, retry_after } if code == 429 || (500..600).contains(&code) => {
            Class::Retryable { retry_after }
        }
        Failure::Status { .. } => Class::Permanent,
    }
}

/// Bounds on retrying one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts_max: u32,
    /// The wait after the first failure; it doubles after each one.
    pub delay_min: Duration,
    /// The longest wait, whatever the attempt or `Retry-After` says.
    pub delay_max: Duration,
    /// How far a wait may be moved, as a fraction of it (0 to 1).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// At most 5 attempts; waits of 2, 4, 8, 16 s (2^n s, capped at 60 s),
    /// each moved by up to ±20%.
    fn default() -> Self {
        Self {
            attempts_max: 5,
            delay_min: Duration::from_secs(2),
            delay_max: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt after `failures` failed ones, or
    /// `None` when no attempt is left. `sample` is a uniform draw from
    /// `[0, 1)` that places the wait within its jitter; `retry_after`, when
    /// the server sent one, replaces the computed wait (still capped).
    #[must_use]
    pub fn delay(
        &self,
        failures: u32,
        sample: f64,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if failures == 0 || failures >= self.attempts_max {
            return None;
        }
        if let Some(wait) = retry_after {
            return Some(wait.min(self.delay_max));
        }
        let doublings = (failures - 1).min(31);
        let base = self
            .delay_min
            .saturating_mul(1u32 << doublings)
            .min(self.delay_max);
        let sample = sample.clamp(0.0, 1.0);
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * sample;
        Some(base.mul_f64(factor).min(self.delay_max))
    }
}

/// Runs `call` until it succeeds, fails permanently, or `policy` runs out.
pub(crate) async fn retried<T, F, Fut>(policy: RetryPolicy, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut failures = 0;
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        failures += 1;
        let Some(Class::Retryable { retry_after }) = error.failure().map(classify) else {
            return Err(error);
        };
        let Some(wait) = policy.delay(failures, crate::entropy::sample(), retry_after) else {
            return Err(error);
        };
        sleep(wait).await;
    }
}

// The transport's own pacing between attempts.
#[allow(clippy::disallowed_methods)]
async fn sleep(wait: Duration) {
    tokio::time::sleep(wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn status(code: u16) -> Failure {
        Failure::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn classification_table() {
        let retryable = Class::Retryable { retry_after: None };
        let table = [
            (Failure::Network, retryable),
            (Failure::Timeout, retryable),
            (status(500), retryable),
            (status(502), retryable),
            (status(503), retryable),
            (status(504), retryable),
            (status(429), retryable),
            (status(400), Class::Permanent),
            (status(401), Class::Permanent),
            (status(403), Class::Permanent),
            (status(404), Class::Permanent),
            (status(409), Class::Permanent),
            (status(413), Class::Permanent),
            (status(415), Class::Permanent),
            (status(422), Class::Permanent),
        ];
        for (failure, class) in table {
            assert_eq!(classify(failure), class, "{failure:?}");
        }
        let throttled = Failure::Status {
            code: 429,
            retry_after: Some(7 * S),
        };
        assert_eq!(
            classify(throttled),
            Class::Retryable {
                retry_after: Some(7 * S)
            }
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_stops_after_five_attempts() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let waits: Vec<Option<Duration>> = (1..=6).map(|n| policy.delay(n, 0.5, None)).collect();
        assert_eq!(
            waits,
            vec![
                Some(2 * S),
                Some(4 * S),
                Some(8 * S),
                Some(16 * S),
                None,
                None
            ]
        );
        let long = RetryPolicy {
            attempts_max: 10,
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(long.delay(5, 0.5, None), Some(32 * S));
        assert_eq!(long.delay(6, 0.5, None), Some(60 * S), "capped at 60 s");
        assert_eq!(long.delay(9, 0.5, None), Some(60 * S));
    }

    #[test]
    fn retry_after_replaces_the_wait_within_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(1, 0.9, Some(30 * S)), Some(30 * S));
        assert_eq!(policy.delay(1, 0.9, Some(600 * S)), Some(60 * S));
        assert_eq!(policy.delay(5, 0.9, Some(S)), None, "no attempt left");
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(2, 0.0, None),
            Some(4 * S).map(|d| d.mul_f64(0.8))
        );
        assert_eq!(policy.delay(2, 0.5, None), Some(4 * S));
        let top = policy.delay(2, 0.999_999, None).unwrap();
        assert!(top < (4 * S).mul_f64(1.2) && top > (4 * S).mul_f64(1.19));
    }
}
