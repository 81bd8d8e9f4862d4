//! Whole Switchboard clusters in one process, from a seed: real nodes
//! (conversation, session and connection actors) on an in-memory store and
//! bus, clients that drop and come back, a workload of racing operations,
//! and injected faults; then checkers over what was recorded.
//!
//! Seed → [`Options`] → [`run`] → [`Report`]. The fault injection
//! ([`faults`], and the [`store`] and [`bus`] wrappers that apply it) and the
//! checkers ([`check`], [`check_log`]) are separate: the checkers judge only
//! the history, the final logs and the clients' final places. The same seed
//! gives the same history, whose hash is [`Report::trace_hash`].

pub mod blobs;
pub mod bus;
pub mod check;
pub mod faults;
pub mod history;
mod log;
pub mod rng;
mod run;
pub mod store;

pub use log::{Violation, check_log};
pub use run::{Backend, Options, Report, Stats, run};
