//! One node's supervisor of its long-running tasks.
//!
//! A [`Task`] is a loop a node cannot live without (a group committer, a
//! checkpointer, a bus subscriber, a router) or a dependency [`Worker`]'s
//! loop. The supervisor runs each in a tokio task of its own, catches a
//! panic where it happens, and runs the same task value again after the
//! backoff its [`RestartPolicy`] gives, so what the value holds (its queue's
//! receiver above all) outlives the panic and nothing queued is lost. Past
//! the policy's budget the task stays down and is reported `failed`, which
//! turns the node's readiness off.
//!
//! [`Worker`]: crate::Worker

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use prometheus::core::Collector;
use switchboard_storage::Clock;
use tokio::task::AbortHandle;

use crate::metrics::SupervisionMetrics;
use crate::{BreakerState, RestartPolicy, RestartTracker};

/// A long-running loop under a [`Supervisor`].
///
/// `run` returns when the task has nothing more to do (its input closed,
/// its owner dropped); the task is then `stopped`. A panic inside is caught,
/// and `run` is called again on the same value after a backoff: keep in
/// `self` only what is consistent at every await (a queue's receiver, a
/// connection pool, counters) and build the rest inside `run`.
pub trait Task: Send + 'static {
    /// Runs the loop. `context` names the task and holds its fault points.
    fn run(&mut self, context: &TaskContext) -> impl Future<Output = ()> + Send;
}

/// Where a supervised task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// It runs.
    Running,
    /// It panicked and waits out its backoff.
    Restarting,
    /// It finished: its input closed, or the node shut down.
    Stopped,
    /// It panicked more often than its restart budget allows and is not
    /// restarted: the node cannot heal it and is not ready.
    Failed,
}

impl TaskState {
    /// The lowercase name, for readiness.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Running,
            1 => Self::Restarting,
            2 => Self::Stopped,
            _ => Self::Failed,
        }
    }
}

/// One task's state, for readiness and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskReport {
    /// The task's name (also its `worker` label in metrics).
    pub name: &'static str,
    /// Where it stands.
    pub state: TaskState,
    /// How often it was restarted after a panic.
    pub restarts: u64,
}

/// The payload of a panic armed with [`Supervisor::inject_panic`], so a
/// panic hook can tell an injected fault from a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedPanic {
    /// The task it was armed for.
    pub task: &'static str,
    /// The fault point it fires at.
    pub point: &'static str,
}

impl fmt::Display for InjectedPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected panic in {} at {}", self.task, self.point)
    }
}

/// The supervisor of one node's tasks and workers. Cheap to clone; every
/// clone is the same supervisor.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("tasks", &self.tasks())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    /// Time for backoff decisions and breakers.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: SupervisionMetrics,
    /// Every task ever spawned here, by name.
    tasks: Mutex<BTreeMap<&'static str, Arc<Cell>>>,
    /// Each worker's breaker state, by dependency, for readiness.
    breakers: Mutex<BTreeMap<&'static str, BreakerState>>,
    /// Panics armed by a test or the simulation, each fired once.
    armed: Mutex<Vec<InjectedPanic>>,
    /// How many are armed, so an unarmed fault point costs one load.
    armed_len: AtomicUsize,
    /// The running tokio tasks, aborted on shutdown.
    running: Mutex<Vec<AbortHandle>>,
}

/// A task's state as its loop and its callers see it.
#[derive(Debug)]
pub(crate) struct Cell {
    state: AtomicU8,
    restarts: AtomicU64,
}

impl Cell {
    pub(crate) fn state(&self) -> TaskState {
        TaskState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set(&self, state: TaskState) {
        self.state.store(state as u8, Ordering::Release);
    }
}

/// A lock that a panicking holder does not poison for everyone else: every
/// value behind these locks is replaced whole, never left half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor with no tasks, deciding backoff on `clock`.
    #[must_use]
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                metrics: SupervisionMetrics::new(),
                tasks: Mutex::new(BTreeMap::new()),
                breakers: Mutex::new(BTreeMap::new()),
                armed: Mutex::new(Vec::new()),
                armed_len: AtomicUsize::new(0),
                running: Mutex::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The metrics of every task and worker here, for the caller to
    /// register in the node's registry.
    #[must_use]
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        self.inner.metrics.collectors()
    }

    /// Runs `task` under supervision as `name`, restarted after a panic as
    /// `policy` allows.
    ///
    /// # Panics
    ///
    /// If a task of that name is already running here: names label the
    /// metrics and readiness, so each must be one task. Needs a tokio
    /// runtime.
    pub fn spawn<T: Task>(&self, name: &'static str, policy: RestartPolicy, task: T) {
        let cell = self.register(name);
        self.run(name, cell, policy, task);
    }

    /// Names a task about to start, and returns the cell its state lives in.
    pub(crate) fn register(&self, name: &'static str) -> Arc<Cell> {
        let cell = Arc::new(Cell {
            state: AtomicU8::new(TaskState::Running as u8),
            restarts: AtomicU64::new(0),
        });
        let mut tasks = lock(&self.inner.tasks);
        if let Some(existing) = tasks.get(name) {
            assert!(
                matches!(existing.state(), TaskState::Stopped | TaskState::Failed),
                "a task named {name} already runs under this supervisor"
            );
        }
        tasks.insert(name, Arc::clone(&cell));
        // Register the series at once, so a dashboard sees every task
        // before anything happens to it.
        self.inner
            .metrics
            .worker_restarts_total
            .with_label_values(&[name]);
        cell
    }

    /// Runs a registered task.
    pub(crate) fn run<T: Task>(
        &self,
        name: &'static str,
        cell: Arc<Cell>,
        policy: RestartPolicy,
        task: T,
    ) {
        let handle = tokio::spawn(supervise(Arc::clone(&self.inner), name, cell, policy, task));
        let mut running = lock(&self.inner.running);
        running.retain(|h| !h.is_finished());
        running.push(handle.abort_handle());
    }

    /// Every task's state, by name.
    #[must_use]
    pub fn tasks(&self) -> Vec<TaskReport> {
        lock(&self.inner.tasks)
            .iter()
            .map(|(name, cell)| TaskReport {
                name,
                state: cell.state(),
                restarts: cell.restarts.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The tasks that spent their restart budget and stay down.
    #[must_use]
    pub fn failed(&self) -> Vec<&'static str> {
        self.tasks()
            .into_iter()
            .filter(|t| t.state == TaskState::Failed)
            .map(|t| t.name)
            .collect()
    }

    /// Each worker's breaker state, by dependency.
    #[must_use]
    pub fn breakers(&self) -> BTreeMap<&'static str, BreakerState> {
        lock(&self.inner.breakers).clone()
    }

    pub(crate) fn show_breaker(&self, dependency: &'static str, state: BreakerState) {
        self.inner
            .metrics
            .breaker_state
            .with_label_values(&[dependency])
            .set(state.level());
        lock(&self.inner.breakers).insert(dependency, state);
    }

    /// Arms a panic that `task` fires, once, the next time it passes its
    /// fault point `point` ([`TaskContext::fault_point`]). For tests and the
    /// simulation's faults; the payload is an [`InjectedPanic`].
    pub fn inject_panic(&self, task: &'static str, point: &'static str) {
        lock(&self.inner.armed).push(InjectedPanic { task, point });
        self.inner.armed_len.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops every task here at its next await, for good.
    pub fn shutdown(&self) {
        for handle in lock(&self.inner.running).drain(..) {
            handle.abort();
        }
        for cell in lock(&self.inner.tasks).values() {
            if cell.state() != TaskState::Failed {
                cell.set(TaskState::Stopped);
            }
        }
    }
}

/// What a running task knows of its supervision.
#[derive(Clone)]
pub struct TaskContext {
    name: &'static str,
    inner: Arc<Inner>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// The task's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A place where a test or the simulation may make this task panic
    /// ([`Supervisor::inject_panic`]). Costs one atomic load when nothing
    /// is armed.
    pub fn fault_point(&self, point: &'static str) {
        if self.inner.armed_len.load(Ordering::Acquire) == 0 {
            return;
        }
        let fault = {
            let mut armed = lock(&self.inner.armed);
            let Some(at) = armed
                .iter()
                .position(|a| a.task == self.name && a.point == point)
            else {
                return;
            };
            self.inner.armed_len.fetch_sub(1, Ordering::AcqRel);
            armed.remove(at)
        };
        std::panic::panic_any(fault);
    }
}

/// Runs `task` until it finishes, restarting it after each panic within
/// `policy`'s budget.
async fn supervise<T: Task>(
    inner: Arc<Inner>,
    name: &'static str,
    cell: Arc<Cell>,
    policy: RestartPolicy,
    mut task: T,
) {
    let context = TaskContext {
        name,
        inner: Arc::clone(&inner),
    };
    let up = inner.metrics.worker_up.with_label_values(&[name]);
    let restarts_total = inner
        .metrics
        .worker_restarts_total
        .with_label_values(&[name]);
    let mut restarts = RestartTracker::new(policy);
    loop {
        cell.set(TaskState::Running);
        up.set(1);
        let ran = AssertUnwindSafe(task.run(&context)).catch_unwind().await;
        up.set(0);
        let Err(panic) = ran else {
            cell.set(TaskState::Stopped);
            tracing::debug!(task = name, "task finished");
            return;
        };
        let panic = describe(panic.as_ref());
        let now = inner.clock.monotonic();
        let decision = restarts.on_failure(now);
        if decision.exhausted {
            cell.set(TaskState::Failed);
            tracing::error!(
                task = name,
                %panic,
                "task panicked past its restart budget; it stays down and the node is not ready"
            );
            return;
        }
        cell.set(TaskState::Restarting);
        let delay = decision.restart_at.saturating_sub(now);
        tracing::error!(task = name, %panic, ?delay, "task panicked; restarting");
        // Backoff on tokio's clock, which the simulation pauses.
        #[allow(clippy::disallowed_methods)]
        tokio::time::sleep(delay).await;
        cell.restarts.fetch_add(1, Ordering::Relaxed);
        restarts_total.inc();
    }
}

/// A panic's payload in words.
fn describe(panic: &(dyn Any + Send)) -> String {
    if let Some(fault) = panic.downcast_ref::<InjectedPanic>() {
        fault.to_string()
    } else if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
