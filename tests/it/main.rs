//! End-to-end tests over real `switchboard` processes on loopback ports.
//!
//! - `browser` (feature `browser-tests`): a real Chromium's `EventSource`
//!   through a dropped stream, resumed by `Last-Event-ID` alone.
//! - `cli`: the client library and the CLI against a server that is
//!   stopped and started again (embedded SQLite).
//! - `cluster` (feature `cluster-tests`): three processes sharing
//!   PostgreSQL and a `redis-server` this test starts and stops.
//! - `logs`: what the node's log holds (no token at any level, request
//!   ids, JSON lines, no colour off a terminal).
//! - `queries`: the database queries of one feed request (at two page
//!   sizes and two graph sizes) and of one sync of many conversations,
//!   counted from sqlx's statement log.
//! - `rolling` (feature `cluster-tests`): three nodes restarted one at a
//!   time with SIGTERM behind a balancer, under load.
//! - `scheduled`: scheduled messages across a stop, a SIGKILL and (with
//!   `cluster-tests`) two nodes on PostgreSQL.

// The tests drive processes from outside with real time and random ids.
#![allow(clippy::disallowed_methods)]

#[cfg(feature = "browser-tests")]
mod browser;
mod cli;
#[cfg(feature = "cluster-tests")]
mod cluster;
mod logs;
mod queries;
#[cfg(feature = "cluster-tests")]
mod rolling;
mod scheduled;

use std::process::Child;
use std::time::Duration;

use uuid::Uuid;

pub(crate) const SECRET: &str = "cluster process test secret, long enough for hs256";
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

pub(crate) fn token(user: Uuid) -> String {
    let output = std::process::Command::new(BIN)
        .args(["token", "--user", &user.to_string(), "--jwt-secret", SECRET])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The sum of a node's `/metrics` samples whose line starts with `name`
/// (a name, or a name and labels); 0 when the node does not answer.
pub(crate) fn metric(port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut body = String::new();
    if socket.write_all(request).is_err() || socket.read_to_string(&mut body).is_err() {
        return 0;
    }
    body.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
