//! `switchboard-simulation`: runs one seed (`--seed N`) or a sweep
//! (`--seeds N`), prints what each found, and exits non-zero on any
//! violation, printing the command that replays the failing seed.

// A command-line tool reports on stdout, and times its own sweep.
#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use switchboard_simulation::{Backend, Options, Report, run};

/// Prints a line, quietly stopping at a closed pipe (`| head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Debug, Parser)]
#[command(about = "Deterministic simulation of Switchboard clusters under faults")]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds, from `--from`.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of a sweep.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Where the nodes keep their data: the deterministic in-memory
    /// backends, or real ones (not deterministic, same checkers).
    #[arg(long, value_enum, default_value_t = Kind::Memory)]
    backend: Kind,
    /// PostgreSQL for `--backend postgres`.
    #[arg(long, env = "SWITCHBOARD_TEST_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Redis for the real backends.
    #[arg(
        long,
        env = "SWITCHBOARD_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// How long the workload and faults run, in seconds (simulated time
    /// for the memory backend).
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// No faults: the workload alone.
    #[arg(long)]
    calm: bool,
    /// Print the run's whole history (one seed).
    #[arg(long)]
    history: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "switchboard_simulation=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let backend = match args.backend {
        Kind::Memory => Backend::Memory,
        Kind::Sqlite => Backend::Sqlite {
            redis_url: args.redis_url.clone(),
        },
        Kind::Postgres => match &args.postgres_url {
            Some(url) => Backend::Postgres {
                url: url.clone(),
                redis_url: args.redis_url.clone(),
            },
            None => {
                eprintln!(
                    "--backend postgres needs --postgres-url or SWITCHBOARD_TEST_POSTGRES_URL"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let options = |seed| Options {
        backend: backend.clone(),
        duration: Duration::from_secs(args.duration_secs),
        faults: !args.calm,
        ..Options::seed(seed)
    };
    let replay = |seed: u64| {
        let mut command = format!("cargo run -p switchboard-simulation -- --seed {seed}");
        if args.backend != Kind::Memory {
            command.push_str(&format!(" --backend {:?}", args.backend).to_lowercase());
        }
        if args.duration_secs != 20 {
            command.push_str(&format!(" --duration-secs {}", args.duration_secs));
        }
        if args.calm {
            command.push_str(" --calm");
        }
        command
    };
    let seeds: Vec<u64> = match (args.seed, args.seeds) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (args.from..args.from.saturating_add(count)).collect(),
        (None, None) => vec![args.from],
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut totals = [0usize; 3];
    let mut scheduled: BTreeMap<String, usize> = BTreeMap::new();
    let mut feed: BTreeMap<String, usize> = BTreeMap::new();
    for (done, seed) in seeds.iter().enumerate() {
        let report = match run(&options(*seed)) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("seed {seed}: cannot run: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        for (kind, count) in &report.faults {
            *faults.entry(kind.name()).or_default() += count;
        }
        totals[0] += report.stats.operations;
        totals[1] += report.stats.acknowledged;
        totals[2] += report.stats.deliveries;
        for (source, count) in &report.stats.feed {
            *feed.entry(source.clone()).or_default() += count;
        }
        for (how, count) in &report.stats.scheduled {
            *scheduled.entry(how.clone()).or_default() += count;
        }
        if seeds.len() == 1 {
            if args.history {
                for entry in &report.history {
                    out!("{:>7} {:?}", entry.at_ms, entry.record);
                }
                out!("clients' users: {:?}", report.client_users);
                out!("users: {:?}", report.users);
                for (id, log) in &report.logs {
                    out!("log {id}:");
                    for event in log {
                        out!(
                            "  {} {}",
                            event.seq(),
                            serde_json::to_string(event).unwrap_or_default()
                        );
                    }
                }
            }
            print_one(&report);
        } else if (done + 1) % 100 == 0 {
            eprintln!(
                "{} seeds, {} failed, {:.0?}",
                done + 1,
                failed.len(),
                started.elapsed()
            );
        }
        if !report.violations.is_empty() {
            if seeds.len() > 1 {
                out!("seed {seed}: {}", report.violations[0]);
            }
            out!("replay: {}", replay(*seed));
            failed.push(*seed);
        }
    }
    if seeds.len() > 1 {
        out!(
            "{} seeds in {:.1?}: {} failed{}",
            seeds.len(),
            started.elapsed(),
            failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" ({failed:?})")
            }
        );
        out!(
            "operations {}, acknowledged sends {}, deliveries {}",
            totals[0],
            totals[1],
            totals[2]
        );
        out!("scheduled messages ended: {scheduled:?}");
        out!("feed pages by source: {feed:?}");
        out!("faults injected: {faults:?}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_one(report: &Report) {
    let stats = &report.stats;
    out!(
        "seed {}: trace {:016x}; {} nodes, {} users, {} clients, {} conversations; \
         {} operations, {} sends acknowledged, {} events, {} deliveries; quiet after {}",
        report.seed,
        report.trace_hash,
        stats.nodes,
        stats.users,
        stats.clients,
        stats.conversations,
        stats.operations,
        stats.acknowledged,
        stats.events,
        stats.deliveries,
        stats
            .quiet_after_ms
            .map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms")),
    );
    let faults: BTreeMap<&str, u64> = report.faults.iter().map(|(k, v)| (k.name(), *v)).collect();
    out!("scheduled messages ended: {:?}", stats.scheduled);
    out!("feed pages by source: {:?}", stats.feed);
    out!("faults injected: {faults:?}");
    for violation in &report.violations {
        out!("violation: {violation}");
    }
}
