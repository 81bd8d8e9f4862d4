//! The outbox driven over HTTP: a task that attempts each queued send when
//! it falls due, feeds every outcome back into the [`Outbox`], and reports
//! attempts, retries and settled sends.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_protocol::SendMessage;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::entropy::{new_key, sample};
use crate::outbox::{Outbox, OutboxError, Settled};
use crate::retry::{Failure, RetryPolicy};
use crate::{Client, Sent};

/// What the sender reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendReport {
    /// Attempt number `attempt` (from 1) of the send with `key` went out.
    Attempt {
        /// The send's idempotency key.
        key: String,
        /// Which attempt.
        attempt: u32,
    },
    /// An attempt failed in a way worth retrying; the next is in `retry_in`.
    Retrying {
        /// The send's idempotency key.
        key: String,
        /// What went wrong.
        failure: Failure,
        /// What went wrong, in the error's words.
        reason: String,
        /// When the next attempt goes out.
        retry_in: Duration,
    },
    /// The send left the outbox: stored, or given up.
    Settled(Box<Settled>),
}

#[derive(Debug)]
enum Command {
    Push(SendMessage, oneshot::Sender<Result<String, OutboxError>>),
}

/// Sends messages with the retry policy; dropping it stops the task (sends
/// still waiting are abandoned).
#[derive(Debug)]
pub struct Sender {
    commands: mpsc::Sender<Command>,
    reports: mpsc::Receiver<SendReport>,
    task: JoinHandle<()>,
}

impl Sender {
    /// Starts a sender over `client` holding at most `len_max` sends.
    #[must_use]
    pub fn start(client: Client, policy: RetryPolicy, len_max: usize) -> Self {
        let (commands, receiver) = mpsc::channel(16);
        let (reporter, reports) = mpsc::channel(256);
        let task = tokio::spawn(drive(
            client,
            Outbox::new(policy, len_max),
            receiver,
            reporter,
        ));
        Self {
            commands,
            reports,
            task,
        }
    }

    /// Queues a send and returns its idempotency key.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Full`] when `len_max` sends are waiting.
    pub async fn send(&self, request: SendMessage) -> Result<String, OutboxError> {
        let (reply, answer) = oneshot::channel();
        let full = OutboxError::Full(0);
        self.commands
            .send(Command::Push(request, reply))
            .await
            .map_err(|_| full.clone())?;
        answer.await.map_err(|_| full)?
    }

    /// The next report.
    pub async fn next(&mut self) -> Option<SendReport> {
        self.reports.recv().await
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Attempted = (String, Result<Sent, crate::ClientError>);

async fn drive(
    client: Client,
    mut outbox: Outbox,
    mut commands: mpsc::Receiver<Command>,
    reports: mpsc::Sender<SendReport>,
) {
    let started = tokio::time::Instant::now();
    let mut in_flight: JoinSet<Attempted> = JoinSet::new();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut open = true;
    loop {
        let now = started.elapsed();
        while let Some(request) = outbox.next_attempt(now) {
            let key = request.idempotency_key.clone().unwrap_or_default();
            let attempt = attempts.entry(key.clone()).or_default();
            *attempt += 1;
            let report = SendReport::Attempt {
                key: key.clone(),
                attempt: *attempt,
            };
            if reports.send(report).await.is_err() {
                return;
            }
            let client = client.clone();
            in_flight.spawn(async move {
                let outcome = client.send(&request).await;
                (key, outcome)
            });
        }
        if !open && outbox.is_empty() {
            return;
        }
        let due = outbox.next_due().map(|d| started + d);
        tokio::select! {
            command = commands.recv(), if open => match command {
                Some(Command::Push(request, reply)) => {
                    let _ = reply.send(outbox.push(request, new_key(), started.elapsed()));
                }
                None => open = false,
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let Ok((key, outcome)) = done else { continue };
                let now = started.elapsed();
                let settled = match outcome {
                    Ok(sent) => outbox.succeeded(&key, sent.message),
                    Err(error) => {
                        // A body that did not decode still came from the
                        // server; the same key makes a retry safe.
                        let failure = error.failure().unwrap_or(Failure::Network);
                        let settled = outbox.failed(&key, failure, now, sample());
                        if settled.is_none() {
                            let retry_in = outbox
                                .due_of(&key)
                                .map_or(Duration::ZERO, |due| due.saturating_sub(now));
                            let report = SendReport::Retrying {
                                key: key.clone(),
                                failure,
                                reason: error.to_string(),
                                retry_in,
                            };
                            if reports.send(report).await.is_err() {
                                return;
                            }
                        }
                        settled
                    }
                };
                if let Some(settled) = settled {
                    attempts.remove(&key);
                    if reports
                        .send(SendReport::Settled(Box::new(settled)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            () = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}
