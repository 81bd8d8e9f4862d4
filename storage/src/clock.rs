//! Time as a dependency: production reads the system clock; the simulation
//! and tests read tokio's, which they pause and move.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// Where the actors get the time from.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Wall-clock time for timestamps, truncated to milliseconds so it
    /// round-trips through every store unchanged.
    fn now(&self) -> DateTime<Utc>;

    /// Monotonic time since an arbitrary origin, for timeouts and backoff.
    fn monotonic(&self) -> Duration;
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    /// The origin of [`Clock::monotonic`].
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    #[must_use]
    #[allow(clippy::disallowed_methods)] // This is the real clock the seam hides.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // This is the real clock the seam hides.
    fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        now.duration_trunc(TimeDelta::milliseconds(1))
            .unwrap_or(now)
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Time as tokio's timer tells it: paused and jumping from timer to timer
/// under `start_paused` (the simulation, tests of timeouts), real otherwise.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    /// Where [`Clock::monotonic`] counts from.
    origin: tokio::time::Instant,
    /// The wall-clock time at `origin`.
    epoch: DateTime<Utc>,
}

impl TokioClock {
    /// A clock whose wall time is `epoch` now.
    #[must_use]
    pub fn new(epoch: DateTime<Utc>) -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            epoch,
        }
    }

    /// Time since the clock started.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let millis = i64::try_from(self.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.epoch + TimeDelta::milliseconds(millis)
    }

    fn monotonic(&self) -> Duration {
        self.elapsed()
    }
}
