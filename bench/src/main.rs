//! `switchboard-bench`: benchmarks that start a real release server and
//! drive it through real sockets with the client library. Every figure is
//! reported against a ceiling or baseline measured in the same run.
//!
//! Scenarios:
//! - `fanout`: C WebSocket clients in conversations of M members, senders
//!   flat out and at half that rate; against Switchboard, a bare tokio
//!   broadcast server (the ceiling) and Socket.IO with its Redis adapter
//!   (the peer).
//! - `durable`: acknowledged sends/s with persistence on SQLite and
//!   PostgreSQL, against a bare batched INSERT on the same database.
//! - `idle`: server memory per idle WebSocket and SSE connection, against
//!   the bare server's.
//! - `resume`: the time to deliver K missed events after a reconnect, from
//!   the session buffer and, in the same run, from the store.
//! - `connections`: memory while thousands of connections open and close,
//!   and whether it comes back.
//! - `scheduled`: 10,000 scheduled messages due in the same second, until
//!   all are committed and delivered, on SQLite and PostgreSQL, against
//!   the same messages sent at once.
//! - `feed`: feed requests per second and latency, ranked by the database,
//!   by ClickHouse, and with ClickHouse stopped (baseline: ClickHouse up).
//! - `all`: fanout, durable, idle, resume, scheduled and feed in turn.

// A benchmark measures the real world: real time and random ids are its job.
#![allow(clippy::disallowed_methods)]
// Its report on standard output is what a benchmark is for.
#![allow(clippy::print_stdout)]

mod bare;
mod connections;
mod durable;
mod fanout;
mod feed;
mod idle;
mod limits;
mod peer;
mod process;
mod report;
mod resume;
mod scheduled;
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
    /// Small sizes and short phases, for a smoke run: `all --quick`
    /// finishes in under a minute. Overrides the sizes given.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Deliveries/s and latency to C WebSocket clients in conversations of
    /// M members, against the bare ceiling and Socket.IO.
    Fanout(fanout::Args),
    /// Acknowledged sends/s with persistence, against a bare batched INSERT.
    Durable(durable::Args),
    /// Server memory per idle WebSocket and SSE connection.
    Idle(idle::Args),
    /// Time to deliver K missed events after a reconnect: from the session
    /// buffer, and from the store.
    Resume(resume::Args),
    /// Server memory while thousands of connections open and close.
    Connections(connections::Args),
    /// Scheduled messages due in the same second: until all are committed
    /// and delivered, against the same messages sent at once.
    Scheduled(scheduled::Args),
    /// Feed requests per second and latency: ranked by the database, by
    /// ClickHouse, and with ClickHouse stopped.
    Feed(feed::Args),
    /// fanout, durable, idle, resume, scheduled and feed with their
    /// default sizes (or `--quick`).
    All(All),
    /// The bare broadcast server the ceilings are measured on (started by
    /// the scenarios themselves).
    #[command(hide = true)]
    BareServer(bare::Args),
}

#[derive(Debug, clap::Args)]
struct All {
    /// Write the fanout latency plot (SVG) here.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// PostgreSQL for `durable`.
    #[arg(long, env = "SWITCHBOARD_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Skip the Socket.IO peer.
    #[arg(long)]
    no_peer: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Scenario::BareServer(args) = &cli.scenario {
        return runtime.block_on(bare::serve(args));
    }
    let server = match cli.server {
        Some(path) => path,
        None => server::sibling_binary()?,
    };
    let (json, quick) = (cli.json, cli.quick);
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Fanout(mut args) => {
                if quick {
                    quick_fanout(&mut args);
                }
                fanout::run(&server, &args, json).await
            }
            Scenario::Durable(mut args) => {
                if quick {
                    quick_durable(&mut args);
                }
                durable::run(&server, &args, json).await
            }
            Scenario::Idle(mut args) => {
                if quick {
                    quick_idle(&mut args);
                }
                idle::run(&server, &args, json).await
            }
            Scenario::Resume(mut args) => {
                if quick {
                    args.events = 2_000;
                }
                resume::run(&server, &args, json).await
            }
            Scenario::Connections(args) => connections::run(&server, &args, json).await,
            Scenario::Scheduled(mut args) => {
                if quick {
                    quick_scheduled(&mut args);
                }
                scheduled::run(&server, &args, json).await
            }
            Scenario::Feed(mut args) => {
                if quick {
                    quick_feed(&mut args);
                }
                feed::run(&server, &args, json).await
            }
            Scenario::All(all) => {
                let mut fanout = defaults::<fanout::Args>();
                fanout.plot = all.plot;
                fanout.no_peer = all.no_peer;
                let mut durable = defaults::<durable::Args>();
                durable.postgres_url = all.postgres_url;
                let mut idle = defaults::<idle::Args>();
                let mut resume = defaults::<resume::Args>();
                let mut scheduled = defaults::<scheduled::Args>();
                let mut feed = defaults::<feed::Args>();
                scheduled.postgres_url.clone_from(&durable.postgres_url);
                if quick {
                    quick_fanout(&mut fanout);
                    quick_durable(&mut durable);
                    quick_idle(&mut idle);
                    resume.events = 2_000;
                    quick_scheduled(&mut scheduled);
                    quick_feed(&mut feed);
                }
                fanout::run(&server, &fanout, json).await?;
                durable::run(&server, &durable, json).await?;
                idle::run(&server, &idle, json).await?;
                resume::run(&server, &resume, json).await?;
                scheduled::run(&server, &scheduled, json).await?;
                feed::run(&server, &feed, json).await
            }
            Scenario::BareServer(_) => unreachable!("handled above"),
        }
    })
}

/// A scenario's arguments as if given none.
fn defaults<T: clap::Args>() -> T {
    #[derive(Parser)]
    struct Wrapped<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    Wrapped::<T>::parse_from(["switchboard-bench"]).args
}

fn quick_fanout(args: &mut fanout::Args) {
    args.clients = 100;
    args.members = 10;
    args.secs = 1;
}

fn quick_durable(args: &mut durable::Args) {
    args.conversations = 8;
    args.secs = 1;
}

fn quick_scheduled(args: &mut scheduled::Args) {
    args.entries = 500;
    args.conversations = 10;
    args.lead_secs = 5;
}

fn quick_feed(args: &mut feed::Args) {
    args.authors = 10;
    args.posts = 3;
    args.readers = 10;
    args.follows = 5;
    args.secs = 1;
}

fn quick_idle(args: &mut idle::Args) {
    args.websockets = 300;
    args.sse = 300;
}
