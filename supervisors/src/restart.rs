//! Restart intensity: how often a child may fail before it must wait, and how
//! long it waits.

use std::collections::VecDeque;
use std::time::Duration;

/// Bounds on restarts, in the manner of Erlang's restart intensity: at most
/// `restarts_max` failures within `restart_window`, each restart delayed by a
/// backoff that doubles from `backoff_min` up to `backoff_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Failures tolerated within one window before the child is held back for
    /// `backoff_max`.
    pub restarts_max: u32,
    /// The sliding window failures are counted in.
    pub restart_window: Duration,
    /// Delay before the first restart in a window.
    pub backoff_min: Duration,
    /// The cap on the delay, and the hold-back once `restarts_max` is exceeded.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            restarts_max: 5,
            restart_window: Duration::from_secs(60),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartDecision {
    /// The earliest moment the child may run again.
    pub restart_at: Duration,
    /// True once the failures in the window exceed `restarts_max`: the child is
    /// held back for the full `backoff_max` and the failure deserves an alert.
    pub exhausted: bool,
}

/// The failure history of one child.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    /// The policy this tracker enforces.
    policy: RestartPolicy,
    /// Failure times within the current window, oldest first; never longer
    /// than `restarts_max + 1`.
    failures: VecDeque<Duration>,
    /// The earliest moment the child may run again.
    restart_at: Duration,
}

impl RestartTracker {
    /// A tracker with no failures.
    #[must_use]
    pub fn new(policy: RestartPolicy) -> Self {
        assert!(
            policy.restarts_max > 0,
            "restarts_max must allow one restart"
        );
        assert!(policy.backoff_min <= policy.backoff_max);
        Self {
            policy,
            failures: VecDeque::with_capacity(policy.restarts_max as usize + 1),
            restart_at: Duration::ZERO,
        }
    }

    /// Records a failure at `now` and decides when the child may restart.
    pub fn on_failure(&mut self, now: Duration) -> RestartDecision {
        self.forget_before(now);
        self.failures.push_back(now);
        let count = self.failures.len() as u32;
        let exhausted = count > self.policy.restarts_max;
        let delay = if exhausted {
            self.policy.backoff_max
        } else {
            let doublings = (count - 1).min(31);
            self.policy
                .backoff_min
                .saturating_mul(1u32 << doublings)
                .min(self.policy.backoff_max)
        };
        if exhausted {
            // Keep the window's history bounded: the oldest failure no longer
            // changes any decision once the child is held back.
            self.failures.pop_front();
        }
        self.restart_at = now + delay;
        debug_assert!(self.failures.len() <= self.policy.restarts_max as usize);
        RestartDecision {
            restart_at: self.restart_at,
            exhausted,
        }
    }

    /// Whether the child may run at `now`.
    #[must_use]
    pub fn may_run(&self, now: Duration) -> bool {
        now >= self.restart_at
    }

    /// Whether the tracker has nothing left to remember at `now`, so its owner
    /// may drop it.
    #[must_use]
    pub fn is_quiet(&self, now: Duration) -> bool {
        self.may_run(now)
            && self
                .failures
                .back()
                .is_none_or(|last| now.saturating_sub(*last) >= self.policy.restart_window)
    }

    fn forget_before(&mut self, now: Duration) {
        while let Some(first) = self.failures.front() {
            if now.saturating_sub(*first) >= self.policy.restart_window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            restarts_max: 3,
            restart_window: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_doubles_then_holds_back_when_exhausted() {
        let mut tracker = RestartTracker::new(policy());
        let t = Duration::from_secs(1);
        let delays: Vec<(Duration, bool)> = (0..5)
            .map(|_| {
                let d = tracker.on_failure(t);
                (d.restart_at - t, d.exhausted)
            })
            .collect();
        assert_eq!(
            delays,
            vec![
                (Duration::from_millis(100), false),
                (Duration::from_millis(200), false),
                (Duration::from_millis(400), false),
                (Duration::from_secs(2), true),
                (Duration::from_secs(2), true),
            ]
        );
        assert!(!tracker.may_run(t + Duration::from_secs(1)));
        assert!(tracker.may_run(t + Duration::from_secs(2)));
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut tracker = RestartTracker::new(policy());
        for _ in 0..3 {
            tracker.on_failure(Duration::ZERO);
        }
        let later = Duration::from_secs(11);
        assert!(tracker.is_quiet(later));
        let d = tracker.on_failure(later);
        assert!(!d.exhausted);
        assert_eq!(d.restart_at, later + Duration::from_millis(100));
    }
}
