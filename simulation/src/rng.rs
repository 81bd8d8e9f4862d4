//! The run's only sources of chance and time: a seeded generator, and a
//! clock read off tokio's (paused) timer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_storage::Random;

/// SplitMix64: small, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`, on the stream named `stream`, so that drawing
    /// more in one part of the run does not shift the draws of another.
    #[must_use]
    pub fn new(seed: u64, stream: &str) -> Self {
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        for byte in stream.bytes() {
            state = (state ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
        }
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is `0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// An index into a slice of `len` items.
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low) + 1)
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A duration in `low..=high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }

    /// One item of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.index(items.len()))
        }
    }
}

/// A generator several tasks draw from, in the order the runtime runs them.
#[derive(Debug, Clone)]
pub struct SharedRng(Arc<Mutex<Rng>>);

impl SharedRng {
    /// A shared generator on `stream` of `seed`.
    #[must_use]
    pub fn new(seed: u64, stream: &str) -> Self {
        Self(Arc::new(Mutex::new(Rng::new(seed, stream))))
    }

    /// Runs `draw` with the generator.
    pub fn with<T>(&self, draw: impl FnOnce(&mut Rng) -> T) -> T {
        let mut rng = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        draw(&mut rng)
    }
}

impl Random for SharedRng {
    fn fill(&self, bytes: &mut [u8]) {
        self.with(|rng| {
            for chunk in bytes.chunks_mut(8) {
                let word = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_of_one_seed_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, "a").next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "same seed, same draw");
        let mut x = Rng::new(7, "a");
        let mut y = Rng::new(7, "b");
        assert_ne!(x.next_u64(), y.next_u64());
        let mut z = Rng::new(8, "a");
        assert_ne!(Rng::new(7, "a").next_u64(), z.next_u64());
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = Rng::new(1, "range");
        for _ in 0..1000 {
            let n = rng.between(3, 5);
            assert!((3..=5).contains(&n));
            assert!(rng.unit() < 1.0);
        }
        assert_eq!(rng.below(0), 0);
    }
}
