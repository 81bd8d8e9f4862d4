//! Fault injection: what can go wrong in a run, drawn from its seed, and a
//! count of what did. The checkers never look here; they judge the history.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::rng::{Rng, SharedRng};

/// How hostile a run is. Every field is drawn from the seed, so some runs
/// are calm and others are storms.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Chance that the bus drops one delivery of an event to one node.
    pub bus_drop: f64,
    /// The longest a bus delivery is delayed (deliveries overtake each
    /// other when their delays differ).
    pub bus_delay_max: Duration,
    /// Chance that a store call fails before it runs.
    pub store_fail: f64,
    /// Chance that a store call is slow.
    pub store_slow: f64,
    /// How slow a slow store call is, at most.
    pub store_slow_max: Duration,
    /// Chance that a store write commits but its caller is told it failed.
    pub store_lost: f64,
    /// Node crashes (each followed by a restart).
    pub crashes: u32,
    /// Times one node is cut off from the bus, then healed.
    pub partitions: u32,
    /// Chance, per workload step, that a client drops its connection.
    pub disconnect: f64,
    /// Chance that a send is sent twice at once with the same key.
    pub duplicate_send: f64,
    /// Panics injected into a node's supervised tasks and workers (the
    /// router, the publisher, the trimmer), each restarted by its
    /// supervisor. Fewer than a restart budget, so none stays down.
    pub worker_crashes: u32,
    /// Chance that a blob store call fails before it runs.
    pub blob_fail: f64,
    /// Chance that a blob store call is slow (up to `store_slow_max`).
    pub blob_slow: f64,
}

impl FaultPlan {
    /// The plan for a run.
    #[must_use]
    pub fn draw(rng: &mut Rng) -> Self {
        // A quarter of the runs leave each fault out entirely.
        let maybe = |rng: &mut Rng, max: f64| {
            if rng.chance(0.25) {
                0.0
            } else {
                max * rng.unit()
            }
        };
        let bus_drop = maybe(rng, 0.1);
        let store_fail = maybe(rng, 0.05);
        let store_slow = maybe(rng, 0.2);
        let store_lost = maybe(rng, 0.03);
        let disconnect = maybe(rng, 0.05);
        let duplicate_send = maybe(rng, 0.1);
        Self {
            bus_drop,
            bus_delay_max: rng.millis(0, 200),
            store_fail,
            store_slow,
            store_slow_max: rng.millis(1, 500),
            store_lost,
            crashes: u32::try_from(rng.below(3)).unwrap_or(0),
            partitions: u32::try_from(rng.below(3)).unwrap_or(0),
            disconnect,
            duplicate_send,
            // Drawn last, so the draws before them stay what they were.
            worker_crashes: u32::try_from(rng.below(4)).unwrap_or(0),
            blob_fail: maybe(rng, 0.1),
            blob_slow: maybe(rng, 0.2),
        }
    }

    /// A plan that injects nothing.
    #[must_use]
    pub fn calm() -> Self {
        Self {
            bus_drop: 0.0,
            bus_delay_max: Duration::ZERO,
            store_fail: 0.0,
            store_slow: 0.0,
            store_slow_max: Duration::ZERO,
            store_lost: 0.0,
            crashes: 0,
            partitions: 0,
            disconnect: 0.0,
            duplicate_send: 0.0,
            worker_crashes: 0,
            blob_fail: 0.0,
            blob_slow: 0.0,
        }
    }
}

/// The kinds of fault, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A bus delivery dropped.
    BusDrop,
    /// A bus delivery delayed.
    BusDelay,
    /// A node cut off from the bus.
    Partition,
    /// A store call failed before running.
    StoreFail,
    /// A store call made slow.
    StoreSlow,
    /// A store write committed, its caller told it failed.
    StoreLost,
    /// A node crashed and restarted.
    Crash,
    /// A client dropped its connection and came back within the grace
    /// period.
    DisconnectShort,
    /// A client dropped its connection and came back after it.
    DisconnectLong,
    /// A send sent twice at once with the same key.
    DuplicateSend,
    /// A client's retry of a send whose answer it never got.
    Retry,
    /// A panic in a node's supervised task or worker.
    WorkerCrash,
    /// A blob store call failed before running.
    BlobFail,
    /// A blob store call made slow.
    BlobSlow,
}

impl FaultKind {
    /// The name reports use.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::BusDrop => "bus_drop",
            Self::BusDelay => "bus_delay",
            Self::Partition => "bus_partition",
            Self::StoreFail => "store_fail",
            Self::StoreSlow => "store_slow",
            Self::StoreLost => "store_outcome_lost",
            Self::Crash => "node_crash",
            Self::DisconnectShort => "disconnect_within_grace",
            Self::DisconnectLong => "disconnect_past_grace",
            Self::DuplicateSend => "duplicate_send",
            Self::Retry => "client_retry",
            Self::WorkerCrash => "worker_crash",
            Self::BlobFail => "blob_fail",
            Self::BlobSlow => "blob_slow",
        }
    }
}

/// The live switchboard of faults: the plan, whether faults are on, the
/// generator they draw from, and the count of what was injected.
#[derive(Debug)]
pub struct Faults {
    /// The run's plan.
    pub plan: FaultPlan,
    active: AtomicBool,
    rng: SharedRng,
    counts: Mutex<BTreeMap<FaultKind, u64>>,
}

impl Faults {
    /// Faults per `plan`, drawing from `rng`, on until [`Faults::stop`].
    #[must_use]
    pub fn new(plan: FaultPlan, rng: SharedRng) -> Self {
        Self {
            plan,
            active: AtomicBool::new(true),
            rng,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether faults are still being injected.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Ends the fault phase: from now on nothing more is injected.
    pub fn stop(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    /// Whether to inject a fault of `kind`, with probability `p` while
    /// faults are on; counts it if so.
    pub fn roll(&self, kind: FaultKind, p: f64) -> bool {
        let hit = self.chance(p);
        if hit {
            self.count(kind);
        }
        hit
    }

    /// `true` with probability `p` while faults are on, counting nothing
    /// (for a fault whose kind, or whether it happens at all, is decided
    /// after).
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.active() && self.rng.with(|rng| rng.chance(p))
    }

    /// A delay up to `max`, drawn while faults are on.
    pub fn delay(&self, max: Duration) -> Duration {
        if max.is_zero() || !self.active() {
            return Duration::ZERO;
        }
        let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        self.rng.with(|rng| rng.millis(0, millis))
    }

    /// Counts one fault of `kind` injected elsewhere.
    pub fn count(&self, kind: FaultKind) {
        *self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }

    /// What was injected, by kind.
    pub fn counts(&self) -> BTreeMap<FaultKind, u64> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
