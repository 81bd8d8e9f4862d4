//! Supervised tasks: restarted after a panic with what they hold intact,
//! stopped when done, failed past their budget.

use std::time::Duration;

use switchboard_supervisors::{RestartPolicy, Supervisor, Task, TaskContext, TaskState};
use tokio::sync::mpsc;

use crate::{MS, metric, settle, supervisor};

/// Sums what arrives on its queue into `totals`, and panics at its fault
/// point before each item.
struct Summer {
    queue: mpsc::Receiver<u32>,
    totals: mpsc::UnboundedSender<u32>,
    sum: u32,
}

impl Task for Summer {
    async fn run(&mut self, context: &TaskContext) {
        while let Some(n) = self.queue.recv().await {
            context.fault_point("item");
            self.sum += n;
            let _ = self.totals.send(self.sum);
        }
    }
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        restarts_max: 2,
        restart_window: Duration::from_secs(60),
        backoff_min: 10 * MS,
        backoff_max: Duration::from_secs(1),
    }
}

fn start(supervisor: &Supervisor) -> (mpsc::Sender<u32>, mpsc::UnboundedReceiver<u32>) {
    let (queue, queued) = mpsc::channel(16);
    let (totals, sums) = mpsc::unbounded_channel();
    supervisor.spawn(
        "summer",
        policy(),
        Summer {
            queue: queued,
            totals,
            sum: 0,
        },
    );
    (queue, sums)
}

fn state(supervisor: &Supervisor) -> TaskState {
    supervisor.tasks()[0].state
}

#[tokio::test(start_paused = true)]
async fn a_task_restarts_after_a_panic_with_its_queue_and_state_intact() {
    let supervisor = supervisor();
    let (queue, mut sums) = start(&supervisor);
    queue.send(1).await.unwrap();
    assert_eq!(sums.recv().await, Some(1));

    supervisor.inject_panic("summer", "item");
    // The item in hand when it panics is lost; the ones queued are not.
    for n in [10, 100, 1000] {
        queue.send(n).await.unwrap();
    }
    settle().await;
    assert_eq!(state(&supervisor), TaskState::Restarting);
    assert_eq!(sums.recv().await, Some(101));
    assert_eq!(sums.recv().await, Some(1101));
    assert_eq!(state(&supervisor), TaskState::Running);
    assert_eq!(supervisor.tasks()[0].restarts, 1);
    assert_eq!(
        metric(&supervisor, r#"worker_restarts_total{worker="summer"}"#),
        1.0
    );
    assert!(supervisor.failed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_backoff_doubles_between_restarts() {
    let supervisor = supervisor();
    let (queue, mut sums) = start(&supervisor);
    let mut restarted_after = Vec::new();
    for _ in 0..2 {
        supervisor.inject_panic("summer", "item");
        queue.send(0).await.unwrap();
        settle().await;
        let panicked = tokio::time::Instant::now();
        queue.send(1).await.unwrap();
        sums.recv().await.unwrap();
        restarted_after.push(panicked.elapsed());
    }
    assert_eq!(restarted_after, vec![10 * MS, 20 * MS]);
}

#[tokio::test(start_paused = true)]
async fn a_task_past_its_budget_stays_down_and_is_named() {
    let supervisor = supervisor();
    let (queue, _sums) = start(&supervisor);
    for _ in 0..3 {
        supervisor.inject_panic("summer", "item");
        queue.send(1).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(state(&supervisor), TaskState::Failed);
    assert_eq!(supervisor.failed(), vec!["summer"]);
    assert_eq!(metric(&supervisor, r#"worker_up{worker="summer"}"#), 0.0);
    // Nothing takes what is queued now: a sender learns so once the queue
    // fills, never by a silent success.
    assert!(
        queue.send(1).await.is_err(),
        "the queue closed with the task"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_whose_input_closes_is_stopped() {
    let supervisor = supervisor();
    let (queue, _sums) = start(&supervisor);
    drop(queue);
    settle().await;
    assert_eq!(state(&supervisor), TaskState::Stopped);
    assert!(supervisor.failed().is_empty());
}
