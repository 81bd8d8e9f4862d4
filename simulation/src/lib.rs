//! Checkers over recorded histories, separate from whatever produced them.
//!
//! This crate will run whole clusters from a seed; it starts with the oracle
//! every run is judged by. [`check_log`] replays one conversation's event log
//! and reports the first event that breaks an invariant: `seq` must run
//! 1, 2, 3, … without a gap, and no event may be the act of a principal who
//! lacked the right to it at that point in the log.

mod log;

pub use log::{Violation, check_log};
