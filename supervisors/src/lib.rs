//! Supervision policies as pure state machines on injected time.
//!
//! Nothing here reads a clock or spawns a task: callers pass `now` as a
//! [`std::time::Duration`] since an origin of their choosing (the node's
//! monotonic clock in production, simulated time in the simulation), so the
//! same logic runs identically under a test, a simulation or an actor.

mod breaker;
mod restart;

pub use breaker::{Admission, Breaker, BreakerPolicy, BreakerState, Transition};
pub use restart::{RestartDecision, RestartPolicy, RestartTracker};
