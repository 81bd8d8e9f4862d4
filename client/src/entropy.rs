//! Randomness for the transport, from the operating system: jitter samples
//! and idempotency keys. The sans-IO core takes these as arguments instead.

use uuid::Uuid;

/// A uniform draw from `[0, 1)`.
pub(crate) fn sample() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// A random idempotency key (UUID v4).
pub(crate) fn new_key() -> Uuid {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}
