//! End-to-end tests over a real server on an ephemeral port, with real HTTP
//! and WebSocket clients. One binary for the whole crate keeps link times down.

// Tests drive the system from outside: real time and random ids are fine here.
#![allow(clippy::disallowed_methods)]

mod authz;
#[cfg(feature = "clickhouse-tests")]
mod clickhouse;
#[cfg(feature = "redis-tests")]
mod cluster;
mod edge;
mod errors;
mod feed;
mod idempotency;
mod live;
mod media;
mod membership;
mod openapi;
mod race;
#[cfg(feature = "s3-tests")]
mod s3;
mod scheduled;
mod sessions;
mod sse;
mod supervision;
mod support;
