//! Supervision for one node: restart policies and circuit breakers as pure
//! state machines on injected time, and the [`Supervisor`] that runs a
//! node's long-running [`Task`]s and dependency [`Worker`]s with them.
//!
//! The state machines read no clock and spawn nothing: callers pass `now`
//! as a [`std::time::Duration`] since an origin of their choosing (the
//! node's monotonic clock in production, simulated time in the simulation),
//! so the same logic runs identically under a test, a simulation or an
//! actor. The supervisor reads the node's `Clock` and waits on tokio's
//! timers, which the simulation pauses.

mod breaker;
mod metrics;
mod restart;
mod supervisor;
mod worker;

pub use breaker::{Admission, Breaker, BreakerPolicy, BreakerState, Transition};
pub use restart::{RestartDecision, RestartPolicy, RestartTracker};
pub use supervisor::{InjectedPanic, Supervisor, Task, TaskContext, TaskReport, TaskState};
pub use worker::{CallError, Refusal, Worker, WorkerHandle, WorkerPolicy};
