//! End-to-end tests over real `switchboard` processes on loopback ports.
//!
//! - `cli`: the client library and the CLI against a server that is
//!   stopped and started again (embedded SQLite).
//! - `cluster` (feature `cluster-tests`): three processes sharing
//!   PostgreSQL and a `redis-server` this test starts and stops.

// The tests drive processes from outside with real time and random ids.
#![allow(clippy::disallowed_methods)]

mod cli;
#[cfg(feature = "cluster-tests")]
mod cluster;

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
