//! A circuit breaker: after enough consecutive failures a dependency is left
//! alone for a cool-down, then tried with a single probe; each failed probe
//! doubles the cool-down up to a cap.
//!
//! ```text
//!            failures_max consecutive failures
//!   Closed ──────────────────────────────────▶ Open { until }
//!     ▲                                          │ now ≥ until: admit() → Probe
//!     │ probe succeeds                           ▼
//!     └──────────────────────────────────── HalfOpen ── probe fails ──▶ Open (cool-down × 2)
//! ```

use std::time::Duration;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open a closed breaker.
    pub failures_max: u32,
    /// The first cool-down after opening.
    pub cool_down_min: Duration,
    /// The longest cool-down, however often probes fail.
    pub cool_down_max: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures_max: 5,
            cool_down_min: Duration::from_millis(500),
            cool_down_max: Duration::from_secs(30),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe is out; everything else is refused until it reports.
    HalfOpen,
}

impl BreakerState {
    /// The lowercase name, for metrics and readiness.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// A number for a gauge: 0 closed, 1 half-open, 2 open.
    #[must_use]
    pub fn level(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// What the caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Make the call and report how it went.
    Call,
    /// Make one cheap probe (a `PING`, say) and report how it went.
    Probe,
    /// Do not touch the dependency; take the fallback.
    Reject,
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// One dependency's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: BreakerState,
    /// Failures in a row while closed.
    failures: u32,
    /// The cool-down the next opening uses.
    cool_down: Duration,
    /// When an open breaker lets a probe through.
    open_until: Duration,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(policy: BreakerPolicy) -> Self {
        assert!(policy.failures_max > 0, "failures_max must be at least 1");
        assert!(policy.cool_down_min <= policy.cool_down_max);
        Self {
            policy,
            state: BreakerState::Closed,
            failures: 0,
            cool_down: policy.cool_down_min,
            open_until: Duration::ZERO,
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a caller should take its fallback at `now` without asking:
    /// open with the cool-down still running, or half-open with its probe
    /// out. Changes nothing; [`Breaker::admit`] decides for the worker.
    #[must_use]
    pub fn refuses(&self, now: Duration) -> bool {
        match self.state {
            BreakerState::Closed => false,
            BreakerState::HalfOpen => true,
            BreakerState::Open => now < self.open_until,
        }
    }

    /// Whether a call may go ahead at `now`. An open breaker whose cool-down
    /// has ended turns half-open and admits exactly one probe.
    pub fn admit(&mut self, now: Duration) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Admission::Call, None),
            BreakerState::HalfOpen => (Admission::Reject, None),
            BreakerState::Open if now >= self.open_until => {
                let transition = self.go(BreakerState::HalfOpen);
                (Admission::Probe, transition)
            }
            BreakerState::Open => (Admission::Reject, None),
        }
    }

    /// Reports a successful call or probe.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.failures = 0;
        match self.state {
            BreakerState::Closed => None,
            BreakerState::HalfOpen | BreakerState::Open => {
                self.cool_down = self.policy.cool_down_min;
                self.go(BreakerState::Closed)
            }
        }
    }

    /// Reports a failed call or probe at `now`.
    pub fn on_failure(&mut self, now: Duration) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures < self.policy.failures_max {
                    return None;
                }
                self.open(now)
            }
            BreakerState::HalfOpen => {
                self.cool_down = self
                    .cool_down
                    .saturating_mul(2)
                    .min(self.policy.cool_down_max);
                self.open(now)
            }
            // A call admitted before the breaker opened reports late.
            BreakerState::Open => None,
        }
    }

    fn open(&mut self, now: Duration) -> Option<Transition> {
        self.failures = 0;
        self.open_until = now + self.cool_down;
        self.go(BreakerState::Open)
    }

    fn go(&mut self, to: BreakerState) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerPolicy {
            failures_max: 3,
            cool_down_min: 100 * MS,
            cool_down_max: 350 * MS,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = breaker();
        b.on_failure(Duration::ZERO);
        b.on_failure(Duration::ZERO);
        b.on_success();
        b.on_failure(Duration::ZERO);
        b.on_failure(Duration::ZERO);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        let t = b.on_failure(Duration::ZERO);
        assert_eq!(
            t,
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.admit(99 * MS).0, Admission::Reject);
        assert!(b.refuses(99 * MS));
        assert!(
            !b.refuses(100 * MS),
            "the cool-down is over: the worker probes"
        );
    }

    #[test]
    fn one_probe_after_the_cool_down_then_closed_on_success() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(Duration::ZERO);
        }
        assert_eq!(b.admit(100 * MS).0, Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.admit(100 * MS).0,
            Admission::Reject,
            "one probe at a time"
        );
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(100 * MS).0, Admission::Call);
    }

    #[test]
    fn each_failed_probe_doubles_the_cool_down_up_to_the_cap() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(Duration::ZERO);
        }
        let mut now = Duration::ZERO;
        let mut cool_downs = Vec::new();
        for _ in 0..4 {
            // Find when the next probe is admitted.
            let opened = now;
            while b.admit(now).0 != Admission::Probe {
                now += MS;
            }
            cool_downs.push(now - opened);
            b.on_failure(now);
        }
        assert_eq!(cool_downs, vec![100 * MS, 200 * MS, 350 * MS, 350 * MS]);
        // A success resets the cool-down to its minimum.
        while b.admit(now).0 != Admission::Probe {
            now += MS;
        }
        b.on_success();
        for _ in 0..3 {
            b.on_failure(now);
        }
        assert_eq!(b.admit(now + 99 * MS).0, Admission::Reject);
        assert_eq!(b.admit(now + 100 * MS).0, Admission::Probe);
    }
}
