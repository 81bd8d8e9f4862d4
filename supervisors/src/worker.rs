//! Dependency workers: one loop per dependency call site, behind a bounded
//! queue and a circuit breaker, under the node's [`Supervisor`].
//!
//! A caller asks with [`WorkerHandle::call`] (an answer within a deadline)
//! or [`WorkerHandle::cast`] (fire and forget). It never waits on a broken
//! dependency: an open breaker, or a worker waiting out its restart, is
//! [`CallError::Unavailable`] at once, so the caller takes its fallback; a
//! full queue is [`CallError::Overloaded`]; an answer later than the
//! deadline is [`CallError::TimedOut`], and the worker drops that call at
//! the same moment, so a hung dependency never holds it. A cast waits in the
//! queue across a restart of its worker and is handled once it is back.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::supervisor::{Cell, Inner, TaskContext, lock};
use crate::{Admission, Breaker, BreakerPolicy, BreakerState, RestartPolicy, Supervisor, Task};
use crate::{TaskState, Transition};

/// The calls one worker makes to its dependency.
pub trait Worker: Send + 'static {
    /// What a caller asks for.
    type Request: Send + 'static;
    /// What the dependency answered.
    type Reply: Send + 'static;
    /// How the dependency failed.
    type Error: fmt::Display + Send + 'static;

    /// Makes the call for one request. `Err` is a failure of the dependency
    /// and counts against the breaker; anything the dependency answered,
    /// "not found" included, is an `Ok` reply.
    fn handle(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Reply, Self::Error>> + Send;

    /// A cheap call that tells whether the dependency is back: the probe a
    /// half-open breaker lets through before the request behind it.
    fn probe(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// A cast that was not handled: the breaker refused it after it was
    /// queued, or its deadline passed. Casts have no caller to tell, so a
    /// worker that counts what it drops does it here.
    fn refused(&mut self, why: Refusal) {
        let _ = why;
    }
}

/// Why a request was not answered by the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The worker's queue was full.
    Overloaded,
    /// The breaker is open, or the worker is not running.
    Unavailable,
    /// The deadline passed first.
    TimedOut,
}

impl Refusal {
    /// The lowercase name, for metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::TimedOut => "timed_out",
        }
    }
}

/// A call's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError<E> {
    /// The worker's queue is full: shed the request.
    Overloaded,
    /// The breaker is open or the worker is restarting: take the fallback
    /// now.
    Unavailable,
    /// No answer within the deadline.
    TimedOut,
    /// The dependency failed.
    Failed(E),
}

impl<E> From<Refusal> for CallError<E> {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Overloaded => Self::Overloaded,
            Refusal::Unavailable => Self::Unavailable,
            Refusal::TimedOut => Self::TimedOut,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overloaded => f.write_str("the worker's queue is full"),
            Self::Unavailable => f.write_str("the dependency is unavailable"),
            Self::TimedOut => f.write_str("the dependency did not answer in time"),
            Self::Failed(error) => write!(f, "the dependency failed: {error}"),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> std::error::Error for CallError<E> {}

impl<E> CallError<E> {
    /// The outcome label in `worker_request_duration_seconds`.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::TimedOut => "timed_out",
            Self::Failed(_) => "failed",
        }
    }
}

/// A worker's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerPolicy {
    /// Requests that may wait for the worker.
    pub queue_len_max: usize,
    /// The most one request may take, queueing included: a cast's deadline,
    /// and the cap on a call's.
    pub call_timeout: Duration,
    /// When the worker's breaker opens.
    pub breaker: BreakerPolicy,
    /// How the worker is restarted after a panic.
    pub restart: RestartPolicy,
}

impl Default for WorkerPolicy {
    fn default() -> Self {
        Self {
            queue_len_max: 1024,
            call_timeout: Duration::from_secs(5),
            breaker: BreakerPolicy::default(),
            restart: RestartPolicy::default(),
        }
    }
}

/// What a call is answered with.
type Outcome<W> = Result<<W as Worker>::Reply, CallError<<W as Worker>::Error>>;

/// One queued request.
struct Job<W: Worker> {
    request: W::Request,
    /// Where a call's outcome goes; `None` for a cast.
    reply: Option<oneshot::Sender<Outcome<W>>>,
    /// When the request stops being worth answering.
    deadline: Instant,
    /// When it arrived, on the supervisor's clock.
    arrived: Duration,
}

/// One dependency's breaker, which every worker calling that dependency
/// shares: a failure seen by one turns the others' callers away too.
struct DependencyBreaker {
    dependency: &'static str,
    breaker: Mutex<Breaker>,
}

/// What a worker's handles and its loop share.
struct Shared {
    worker: &'static str,
    breaker: Arc<DependencyBreaker>,
    call_timeout: Duration,
    /// The worker's loop, for whether it runs.
    cell: Arc<Cell>,
    supervisor: Supervisor,
}

impl Shared {
    fn inner(&self) -> &Inner {
        self.supervisor.inner()
    }

    fn now(&self) -> Duration {
        self.inner().clock.monotonic()
    }

    fn observe(&self, outcome: &str, arrived: Duration) {
        self.inner()
            .metrics
            .worker_request_duration_seconds
            .with_label_values(&[self.worker, outcome])
            .observe(self.now().saturating_sub(arrived).as_secs_f64());
    }

    fn set_depth(&self, depth: usize) {
        self.inner()
            .metrics
            .worker_queue_depth
            .with_label_values(&[self.worker])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    fn dependency(&self) -> &'static str {
        self.breaker.dependency
    }

    fn record(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        tracing::warn!(
            dependency = self.dependency(),
            worker = self.worker,
            from = t.from.as_str(),
            to = t.to.as_str(),
            "breaker"
        );
        self.supervisor.show_breaker(self.dependency(), t.to);
        self.inner()
            .metrics
            .breaker_transitions_total
            .with_label_values(&[self.dependency(), t.to.as_str()])
            .inc();
    }

    fn admit(&self) -> Admission {
        let now = self.now();
        let (admission, transition) = lock(&self.breaker.breaker).admit(now);
        self.record(transition);
        admission
    }

    fn report(&self, succeeded: bool) {
        let now = self.now();
        let transition = {
            let mut breaker = lock(&self.breaker.breaker);
            if succeeded {
                breaker.on_success()
            } else {
                breaker.on_failure(now)
            }
        };
        self.record(transition);
    }
}

/// How callers reach one worker. Cheap to clone.
pub struct WorkerHandle<W: Worker> {
    queue: mpsc::Sender<Job<W>>,
    shared: Arc<Shared>,
}

impl<W: Worker> Clone for WorkerHandle<W> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<W: Worker> fmt::Debug for WorkerHandle<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("worker", &self.shared.worker)
            .field("dependency", &self.shared.dependency())
            .field("breaker", &self.breaker())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Starts `worker` as `name`, calling `dependency` (its breaker's
    /// label), within `policy`.
    ///
    /// # Panics
    ///
    /// As [`Supervisor::spawn`].
    pub fn start_worker<W: Worker>(
        &self,
        name: &'static str,
        dependency: &'static str,
        policy: WorkerPolicy,
        worker: W,
    ) -> WorkerHandle<W> {
        let breaker = Arc::new(DependencyBreaker {
            dependency,
            breaker: Mutex::new(Breaker::new(policy.breaker)),
        });
        self.show_breaker(dependency, BreakerState::Closed);
        self.start_with(name, breaker, policy, worker)
    }

    /// Starts `worker` as `name` beside `other`, calling the same dependency
    /// through the same breaker (the `breaker` of `policy` is `other`'s).
    ///
    /// # Panics
    ///
    /// As [`Supervisor::spawn`].
    pub fn start_worker_beside<W: Worker, O: Worker>(
        &self,
        name: &'static str,
        other: &WorkerHandle<O>,
        policy: WorkerPolicy,
        worker: W,
    ) -> WorkerHandle<W> {
        self.start_with(name, Arc::clone(&other.shared.breaker), policy, worker)
    }

    fn start_with<W: Worker>(
        &self,
        name: &'static str,
        breaker: Arc<DependencyBreaker>,
        policy: WorkerPolicy,
        worker: W,
    ) -> WorkerHandle<W> {
        let (queue, queued) = mpsc::channel(policy.queue_len_max.max(1));
        let shared = Arc::new(Shared {
            worker: name,
            breaker,
            call_timeout: policy.call_timeout,
            cell: self.register(name),
            supervisor: self.clone(),
        });
        shared.set_depth(0);
        let task = WorkerTask {
            worker,
            queued,
            shared: Arc::clone(&shared),
        };
        self.run(name, Arc::clone(&shared.cell), policy.restart, task);
        WorkerHandle { queue, shared }
    }
}

impl<W: Worker> WorkerHandle<W> {
    /// The worker's breaker, as of now.
    #[must_use]
    pub fn breaker(&self) -> BreakerState {
        lock(&self.shared.breaker.breaker).state()
    }

    /// Whether a call now would be refused at once (the breaker open
    /// within its cool-down, or the worker not running), so a caller can
    /// skip the work that only feeds the call; a refusal is counted as a
    /// call refused. A breaker past its cool-down admits, so its probe
    /// still goes out.
    #[must_use]
    pub fn refuses_calls(&self) -> bool {
        let arrived = self.shared.now();
        let refusal = self.refusal(true);
        if let Some(refusal) = refusal {
            self.shared.observe(refusal.as_str(), arrived);
        }
        refusal.is_some()
    }

    /// Why a request must be refused before it is queued, if it must.
    fn refusal(&self, call: bool) -> Option<Refusal> {
        let shared = &self.shared;
        // A call waits for nobody; a cast waits out a restart in the queue.
        let running = shared.cell.state() == TaskState::Running;
        if (call && !running) || lock(&shared.breaker.breaker).refuses(shared.now()) {
            return Some(Refusal::Unavailable);
        }
        None
    }

    fn enqueue(&self, job: Job<W>) -> Result<(), Refusal> {
        let arrived = job.arrived;
        let refusal = match self.queue.try_send(job) {
            Ok(()) => {
                let depth = self.queue.max_capacity() - self.queue.capacity();
                self.shared.set_depth(depth);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Full(_)) => Refusal::Overloaded,
            Err(mpsc::error::TrySendError::Closed(_)) => Refusal::Unavailable,
        };
        self.shared.observe(refusal.as_str(), arrived);
        Err(refusal)
    }

    /// Asks the worker and waits at most `deadline` (capped at the
    /// policy's `call_timeout`) for the dependency's answer.
    ///
    /// # Errors
    ///
    /// [`CallError::Unavailable`] at once while the breaker is open or the
    /// worker is not running, [`CallError::Overloaded`] when its queue is
    /// full, [`CallError::TimedOut`] past the deadline,
    /// [`CallError::Failed`] when the dependency failed.
    pub async fn call(
        &self,
        request: W::Request,
        deadline: Duration,
    ) -> Result<W::Reply, CallError<W::Error>> {
        let arrived = self.shared.now();
        if let Some(refusal) = self.refusal(true) {
            self.shared.observe(refusal.as_str(), arrived);
            return Err(refusal.into());
        }
        let deadline = Instant::now() + deadline.min(self.shared.call_timeout);
        let (reply, answer) = oneshot::channel();
        self.enqueue(Job {
            request,
            reply: Some(reply),
            deadline,
            arrived,
        })?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            // The worker panicked while it held the request.
            Ok(Err(_)) => Err(CallError::Unavailable),
            Err(_) => Err(CallError::TimedOut),
        }
    }

    /// Queues `request` without waiting for its outcome.
    ///
    /// # Errors
    ///
    /// [`Refusal::Unavailable`] while the breaker is open or once the
    /// worker has stopped, [`Refusal::Overloaded`] when its queue is full.
    pub fn cast(&self, request: W::Request) -> Result<(), Refusal> {
        let arrived = self.shared.now();
        if let Some(refusal) = self.refusal(false) {
            self.shared.observe(refusal.as_str(), arrived);
            return Err(refusal);
        }
        self.enqueue(Job {
            request,
            reply: None,
            deadline: Instant::now() + self.shared.call_timeout,
            arrived,
        })
    }
}

/// A worker's loop: takes each request in turn, through the breaker, within
/// its deadline.
struct WorkerTask<W: Worker> {
    worker: W,
    /// Outlives a panic of the loop, so nothing queued is lost.
    queued: mpsc::Receiver<Job<W>>,
    /// Not the queue's sender: the handles going away closes the queue and
    /// ends the loop.
    shared: Arc<Shared>,
}

impl<W: Worker> Task for WorkerTask<W> {
    async fn run(&mut self, context: &TaskContext) {
        while let Some(job) = self.queued.recv().await {
            let shared = &self.shared;
            shared.set_depth(self.queued.len());
            context.fault_point("request");
            let Job {
                request,
                reply,
                deadline,
                arrived,
            } = job;
            let outcome = serve(&mut self.worker, shared, request, deadline).await;
            shared.observe(
                outcome.as_ref().map_or_else(CallError::outcome, |_| "ok"),
                arrived,
            );
            match (reply, outcome) {
                (Some(reply), outcome) => {
                    // A caller that gave up does not undo the call.
                    let _ = reply.send(outcome);
                }
                (None, Err(CallError::Unavailable)) => self.worker.refused(Refusal::Unavailable),
                (None, Err(CallError::TimedOut)) => self.worker.refused(Refusal::TimedOut),
                (None, _) => {}
            }
        }
    }
}

/// One request through the breaker, probing first when it is half-open.
async fn serve<W: Worker>(
    worker: &mut W,
    shared: &Shared,
    request: W::Request,
    deadline: Instant,
) -> Outcome<W> {
    if Instant::now() >= deadline {
        return Err(CallError::TimedOut);
    }
    match shared.admit() {
        Admission::Reject => return Err(CallError::Unavailable),
        Admission::Probe => {
            let probed = tokio::time::timeout_at(deadline, worker.probe()).await;
            let back = matches!(probed, Ok(Ok(())));
            shared.report(back);
            if !back {
                return Err(CallError::Unavailable);
            }
        }
        Admission::Call => {}
    }
    match tokio::time::timeout_at(deadline, worker.handle(request)).await {
        Ok(Ok(reply)) => {
            shared.report(true);
            Ok(reply)
        }
        Ok(Err(error)) => {
            shared.report(false);
            Err(CallError::Failed(error))
        }
        Err(_) => {
            shared.report(false);
            Err(CallError::TimedOut)
        }
    }
}
