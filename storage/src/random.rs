//! Randomness as a dependency: production asks the operating system, the
//! simulation draws from its seed.

use std::fmt::Debug;

/// Where the actors get random bits from (the random part of every id).
pub trait Random: Send + Sync + Debug + 'static {
    /// Fills `bytes` with random bytes.
    fn fill(&self, bytes: &mut [u8]);
}

/// The operating system's random source.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&self, bytes: &mut [u8]) {
        // The OS source only fails on platforms without one, where nothing
        // else could stand in for it either.
        if let Err(error) = getrandom::fill(bytes) {
            panic!("the operating system's random source failed: {error}");
        }
    }
}
