//! Time as a dependency: production reads the system clock, the simulation
//! drives its own.

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
