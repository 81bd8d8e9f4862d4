//! End-to-end tests over a real server on an ephemeral port, with real HTTP
//! and WebSocket clients. One binary for the whole crate keeps link times down.

mod authz;
mod errors;
mod idempotency;
mod live;
mod membership;
mod race;
mod support;
