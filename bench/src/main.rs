//! `switchboard-bench`: benchmarks that start a real release server and
//! drive it through real sockets. Figures are reported against a baseline
//! measured in the same run.
//!
//! Scenarios:
//! - `connections`: opens and closes thousands of WebSocket and SSE
//!   connections and reports the server's memory before, at peak, after the
//!   connections close, and after their sessions' grace period, per
//!   connection and per transport.
//! - `resume`: the time to deliver K missed events after a reconnect, from
//!   the session buffer and, in the same run, from the store.

// A benchmark measures the real world: real time and random ids are its job.
#![allow(clippy::disallowed_methods)]
// Its report on standard output is what a benchmark is for.
#![allow(clippy::print_stdout)]

mod connections;
mod resume;
mod server;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "switchboard-bench", about = "Switchboard benchmarks")]
struct Cli {
    /// The server binary [default: `switchboard` next to this one].
    #[arg(long, global = true)]
    server: Option<std::path::PathBuf>,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Server memory while thousands of connections open and close.
    Connections(connections::Args),
    /// Time to deliver K missed events after a reconnect: from the session
    /// buffer, and from the store.
    Resume(resume::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let server = match cli.server {
        Some(path) => path,
        None => server::sibling_binary()?,
    };
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Connections(args) => connections::run(&server, &args, cli.json).await,
            Scenario::Resume(args) => resume::run(&server, &args, cli.json).await,
        }
    })
}
