//! Runs of the simulation that CI keeps: the trace is reproducible, a sweep
//! of seeds holds every invariant, and the seeds that once found bugs stay
//! fixed.

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

/// Seeds CI runs on every change (more with `SIMULATION_SEEDS`).
#[test]
fn seeds_hold_every_invariant() {
    let count: u64 = std::env::var("SIMULATION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let failed: Vec<String> = (1_000..1_000 + count)
        .map(|seed| run(&Options::seed(seed)).unwrap())
        .filter(|r| !r.violations.is_empty())
        .map(|r| failures(&r))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
