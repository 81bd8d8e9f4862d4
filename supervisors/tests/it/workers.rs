//! A dependency worker's outcomes: its breaker, its deadlines, its queue
//! and its restarts.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_supervisors::{
    BreakerPolicy, BreakerState, CallError, Refusal, RestartPolicy, TaskState, Worker,
    WorkerHandle, WorkerPolicy,
};
use tokio::time::Instant;

use crate::{MS, metric, settle, supervisor};

/// The dependency the test worker calls: it fails, hangs or answers as the
/// test says, and counts what reached it.
#[derive(Debug, Default)]
struct Dependency {
    failing: AtomicBool,
    hanging: AtomicBool,
    calls: AtomicU32,
    probes: AtomicU32,
    /// Casts the worker reported it dropped, and why.
    refused: Mutex<Vec<Refusal>>,
}

#[derive(Debug)]
struct Echo(Arc<Dependency>);

impl Worker for Echo {
    type Request = u32;
    type Reply = u32;
    type Error = String;

    async fn handle(&mut self, request: u32) -> Result<u32, String> {
        let dependency = &self.0;
        dependency.calls.fetch_add(1, Ordering::SeqCst);
        if dependency.hanging.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if dependency.failing.load(Ordering::SeqCst) {
            return Err("refused".into());
        }
        Ok(request * 2)
    }

    async fn probe(&mut self) -> Result<(), String> {
        let dependency = &self.0;
        dependency.probes.fetch_add(1, Ordering::SeqCst);
        if dependency.failing.load(Ordering::SeqCst) {
            return Err("still down".into());
        }
        Ok(())
    }

    fn refused(&mut self, why: Refusal) {
        self.0.refused.lock().unwrap().push(why);
    }
}

fn policy() -> WorkerPolicy {
    WorkerPolicy {
        queue_len_max: 4,
        call_timeout: Duration::from_secs(1),
        breaker: BreakerPolicy {
            failures_max: 3,
            cool_down_min: 100 * MS,
            cool_down_max: 400 * MS,
        },
        restart: RestartPolicy {
            restarts_max: 3,
            restart_window: Duration::from_secs(10),
            backoff_min: 50 * MS,
            backoff_max: Duration::from_secs(1),
        },
    }
}

fn start() -> (
    switchboard_supervisors::Supervisor,
    WorkerHandle<Echo>,
    Arc<Dependency>,
) {
    let supervisor = supervisor();
    let dependency = Arc::new(Dependency::default());
    let handle = supervisor.start_worker("echo", "echo_store", policy(), Echo(dependency.clone()));
    (supervisor, handle, dependency)
}

#[tokio::test(start_paused = true)]
async fn a_call_gets_the_dependencys_answer() {
    let (supervisor, echo, dependency) = start();
    assert_eq!(echo.call(21, Duration::from_secs(1)).await, Ok(42));
    assert_eq!(dependency.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric(
            &supervisor,
            r#"worker_request_duration_seconds_count{outcome="ok",worker="echo"}"#
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_failures_and_refuses_at_once_while_open() {
    let (supervisor, echo, dependency) = start();
    dependency.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            echo.call(1, Duration::from_secs(1)).await,
            Err(CallError::Failed("refused".into()))
        );
    }
    assert_eq!(echo.breaker(), BreakerState::Open);
    assert_eq!(
        supervisor.breakers().get("echo_store"),
        Some(&BreakerState::Open)
    );

    // Open: refused without waiting and without touching the dependency.
    let asked = Instant::now();
    assert_eq!(
        echo.call(1, Duration::from_secs(1)).await,
        Err(CallError::Unavailable)
    );
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert_eq!(echo.cast(1), Err(Refusal::Unavailable));
    assert_eq!(dependency.calls.load(Ordering::SeqCst), 3);
    assert_eq!(dependency.probes.load(Ordering::SeqCst), 0);
    assert_eq!(
        metric(&supervisor, r#"breaker_state{dependency="echo_store"}"#),
        2.0
    );
    assert_eq!(
        metric(
            &supervisor,
            r#"breaker_transitions_total{dependency="echo_store",to="open"}"#
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_half_open_probe_closes_the_breaker_when_the_dependency_is_back() {
    let (supervisor, echo, dependency) = start();
    dependency.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let _ = echo.call(1, Duration::from_secs(1)).await;
    }
    assert_eq!(echo.breaker(), BreakerState::Open);

    // Still down after the cool-down: the probe fails and the breaker
    // opens again, for twice as long.
    tokio::time::advance(100 * MS).await;
    assert_eq!(
        echo.call(1, Duration::from_secs(1)).await,
        Err(CallError::Unavailable)
    );
    assert_eq!(dependency.probes.load(Ordering::SeqCst), 1);
    assert_eq!(
        dependency.calls.load(Ordering::SeqCst),
        3,
        "no call after a failed probe"
    );
    assert_eq!(echo.breaker(), BreakerState::Open);
    tokio::time::advance(100 * MS).await;
    assert_eq!(
        echo.call(1, Duration::from_secs(1)).await,
        Err(CallError::Unavailable),
        "the second cool-down is 200 ms"
    );

    // Back: one probe, then the request behind it goes through.
    dependency.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(100 * MS).await;
    assert_eq!(echo.call(5, Duration::from_secs(1)).await, Ok(10));
    assert_eq!(dependency.probes.load(Ordering::SeqCst), 2);
    assert_eq!(echo.breaker(), BreakerState::Closed);
    assert_eq!(
        metric(
            &supervisor,
            r#"breaker_transitions_total{dependency="echo_store",to="closed"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &supervisor,
            r#"breaker_transitions_total{dependency="echo_store",to="half_open"}"#
        ),
        2.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_answers_timed_out_and_leaves_the_worker_free() {
    let (supervisor, echo, dependency) = start();
    dependency.hanging.store(true, Ordering::SeqCst);
    let asked = Instant::now();
    assert_eq!(echo.call(1, 150 * MS).await, Err(CallError::TimedOut));
    assert_eq!(asked.elapsed(), 150 * MS);

    // The hung call was dropped at its deadline: the next request is
    // answered as soon as the dependency answers.
    dependency.hanging.store(false, Ordering::SeqCst);
    let asked = Instant::now();
    assert_eq!(echo.call(2, 150 * MS).await, Ok(4));
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert_eq!(
        metric(
            &supervisor,
            r#"worker_request_duration_seconds_count{outcome="timed_out",worker="echo"}"#
        ),
        1.0
    );

    // A hung cast is dropped at the policy's call timeout, and said so.
    dependency.hanging.store(true, Ordering::SeqCst);
    echo.cast(3).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(*dependency.refused.lock().unwrap(), vec![Refusal::TimedOut]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_overloaded() {
    let (supervisor, echo, dependency) = start();
    dependency.hanging.store(true, Ordering::SeqCst);
    // One in the worker's hands, four waiting.
    echo.cast(0).unwrap();
    settle().await;
    for i in 1..=4 {
        echo.cast(i).unwrap();
    }
    assert_eq!(
        metric(&supervisor, r#"worker_queue_depth{worker="echo"}"#),
        4.0
    );
    assert_eq!(echo.cast(5), Err(Refusal::Overloaded));
    assert_eq!(
        echo.call(6, Duration::from_secs(1)).await,
        Err(CallError::Overloaded)
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worker_restarts_and_its_queued_casts_survive() {
    let (supervisor, echo, dependency) = start();
    supervisor.inject_panic("echo", "request");
    // The first cast is in the worker's hands when it panics; the two
    // behind it wait in the queue through the restart.
    for i in 0..3 {
        echo.cast(i).unwrap();
    }
    settle().await;
    let report = |s: &switchboard_supervisors::Supervisor| s.tasks()[0];
    assert_eq!(report(&supervisor).state, TaskState::Restarting);
    assert_eq!(
        echo.call(9, Duration::from_secs(1)).await,
        Err(CallError::Unavailable),
        "a call does not wait out a restart"
    );
    tokio::time::sleep(50 * MS).await;
    settle().await;
    assert_eq!(report(&supervisor).state, TaskState::Running);
    assert_eq!(report(&supervisor).restarts, 1);
    assert_eq!(dependency.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        metric(&supervisor, r#"worker_restarts_total{worker="echo"}"#),
        1.0
    );
    assert_eq!(echo.call(4, Duration::from_secs(1)).await, Ok(8));
}
