//! Runs of the simulation that CI keeps: the trace is reproducible, a sweep
//! of seeds holds every invariant, the seeds that once found bugs stay
//! fixed, and (with `real-backends`) the same workload holds on SQLite,
//! PostgreSQL and Redis.

use switchboard_simulation::{Options, Report, run};

fn failures(report: &Report) -> String {
    format!(
        "seed {} broke {} invariant(s), first: {}\nreplay: cargo run -p switchboard-simulation -- --seed {}",
        report.seed,
        report.violations.len(),
        report.violations[0],
        report.seed
    )
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let first = run(&Options::seed(7)).unwrap();
    let second = run(&Options::seed(7)).unwrap();
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.stats, second.stats);
    assert!(first.stats.deliveries > 0 && first.stats.acknowledged > 0);
    let other = run(&Options::seed(8)).unwrap();
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "the hash reflects the run"
    );
}

/// The same seed in two processes (each runtime seeds tokio's own
/// generator afresh, so this is the stronger check).
#[test]
fn a_seed_replays_to_the_same_trace_in_another_process() {
    let trace = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-simulation"))
            .args(["--seed", "42"])
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout
            .split_whitespace()
            .skip_while(|w| *w != "trace")
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no trace in {stdout:?}"))
    };
    assert_eq!(trace(), trace());
}

/// Seeds CI runs on every change (more with `SIMULATION_SEEDS`; a long
/// sweep is `cargo run --release -p switchboard-simulation -- --seeds N`).
#[test]
fn seeds_hold_every_invariant() {
    let count: u64 = std::env::var("SIMULATION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let failed: Vec<String> = (1_000..1_000 + count)
        .map(|seed| run(&Options::seed(seed)).unwrap())
        .filter(|r| !r.violations.is_empty())
        .map(|r| failures(&r))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Each seed that found a bug, with what it found. They run as they did
/// then (`faults: false` for the calm runs that found the first two).
#[rustfmt::skip]
const REGRESSIONS: &[(u64, bool, &str)] = &[
    (1, false, "conversation.created never reached members on other nodes"),
    (5, false, "a client told not_member still got its own member.left"),
    (0, true, "a local commit overtook the news of the member's joining"),
    (1, true, "older events went to the members of the actor's snapshot"),
    (2, true, "a failed sync let later events overtake the gap"),
    (5, true, "an event whose publish the breaker refused was never announced"),
    (8, true, "an actor loaded before its node held the conversation"),
    (13, true, "a join delivered by a gap fill did not hold the new member"),
    (30, true, "a membership change whose bus message was lost"),
    (675, true, "a rejoined member stayed muted; an unfilled gap was skipped"),
    (692, true, "a catch-up ran on a snapshot behind the node's watermark"),
    (750, true, "a late sync was followed by a departure the client never knew"),
    (150, true, "a sync assumed a conversation it did not list was at the present"),
    (1362, true, "a failed sync let a conversation the client never knew flow"),
    (3009, true, "an old join held from before a departure unmuted it"),
    (4334, true, "a client kept a stale position the server reported past"),
    (5414, true, "a join whose news was lost left the user's clients unaware"),
    (7375, true, "a rejoined conversation the client had forgotten was never synced"),
    (2062, true, "a resume skipped the synced its first connection never received"),
    (3666, true, "a member again after a departure the session recorded stayed muted"),
    (19909, true, "a resync asked right after a replay overflowed the client's queue, every time"),
    (20682, true, "a join the node had already delivered before it held the conversation for the member"),
    (10005521, true, "a sync skipped up to a last seq read after its membership read, hiding a rejoin"),
    (10013931, true, "the same stale-read sync, with two conversations gone"),
    (10041129, true, "the same stale-read sync, after a node crash"),
    (1138, true, "a sync's not_member kept the session's position, so the user's own leave reached a client that had dropped the conversation"),
    (20010649, true, "a failed sync forgot a conversation the client held; after a rejoin its live events went past the client's gap"),
];

#[test]
fn seeds_that_found_bugs_stay_fixed() {
    let failed: Vec<String> = REGRESSIONS
        .iter()
        .filter_map(|&(seed, faults, what)| {
            let report = run(&Options {
                faults,
                ..Options::seed(seed)
            })
            .unwrap();
            (!report.violations.is_empty()).then(|| format!("{what}: {}", failures(&report)))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The same workload and checkers against real backends: not
/// deterministic, but proof that the in-memory store and bus behave like
/// the real ones where it matters.
#[cfg(feature = "real-backends")]
mod real {
    use std::time::Duration;

    use switchboard_simulation::Backend;

    use super::*;

    fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("the real-backends feature needs {name}"))
    }

    fn real(seed: u64, backend: Backend) -> Report {
        run(&Options {
            backend,
            duration: Duration::from_secs(8),
            ..Options::seed(seed)
        })
        .unwrap_or_else(|e| panic!("seed {seed} could not run: {e:#}"))
    }

    #[test]
    fn sqlite_and_redis_hold_every_invariant() {
        let redis_url = env("SWITCHBOARD_TEST_REDIS_URL");
        for seed in 1..=3 {
            let report = real(
                seed,
                Backend::Sqlite {
                    redis_url: redis_url.clone(),
                },
            );
            assert!(report.violations.is_empty(), "{}", failures(&report));
            assert!(report.stats.acknowledged > 0 && report.stats.deliveries > 0);
        }
    }

    #[test]
    fn postgres_and_redis_hold_every_invariant() {
        let (url, redis_url) = (
            env("SWITCHBOARD_TEST_POSTGRES_URL"),
            env("SWITCHBOARD_TEST_REDIS_URL"),
        );
        for seed in 1..=3 {
            let report = real(
                seed,
                Backend::Postgres {
                    url: url.clone(),
                    redis_url: redis_url.clone(),
                },
            );
            assert!(report.violations.is_empty(), "{}", failures(&report));
            assert!(report.stats.acknowledged > 0 && report.stats.deliveries > 0);
        }
    }
}
