//! The live event stream that reconnects by itself: a task that connects,
//! resumes or syncs through a [`Place`], hands each new event to the app in
//! order, and on any disconnect waits (backoff with jitter, bounded) and
//! connects again.

use std::time::Duration;

use switchboard_protocol::{Control, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Client;
use crate::entropy::sample;
use crate::place::{Place, Step};
use crate::retry::RetryPolicy;

/// What the live stream reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A new event, in order, never twice.
    Event(Event),
    /// A connection is up and its session resumed or synced.
    Connected,
    /// The connection dropped; the next try is in `retry_in`.
    Disconnected {
        /// Why, for people.
        reason: String,
        /// When the next connection attempt is made.
        retry_in: Duration,
    },
    /// Reconnecting failed `attempts` times in a row; the stream gave up.
    GaveUp {
        /// Connection attempts made since the last success.
        attempts: u32,
        /// The last failure, for people.
        reason: String,
    },
}

/// How the live stream reconnects.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Attempts per outage, and the waits between them.
    pub reconnect: RetryPolicy,
    /// Events buffered for a slow app before the stream stops reading.
    pub buffer_len: usize,
}

impl Default for LiveOptions {
    /// Waits of 0.5 s doubling to 30 s, up to 120 attempts per outage (about
    /// an hour), then give up; 1,024 events buffered.
    fn default() -> Self {
        Self {
            reconnect: RetryPolicy {
                attempts_max: 120,
                delay_min: Duration::from_millis(500),
                delay_max: Duration::from_secs(30),
                jitter: 0.2,
            },
            buffer_len: 1024,
        }
    }
}

/// A running live stream; dropping it stops the task.
#[derive(Debug)]
pub struct Live {
    events: mpsc::Receiver<LiveEvent>,
    task: JoinHandle<()>,
}

impl Live {
    /// Starts following `client`'s user from `place`.
    #[must_use]
    pub fn start(client: Client, place: Place, options: LiveOptions) -> Self {
        let (sender, events) = mpsc::channel(options.buffer_len.max(1));
        let task = tokio::spawn(follow(client, place, options, sender));
        Self { events, task }
    }

    /// The next report; `None` once the stream gave up (after
    /// [`LiveEvent::GaveUp`]).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        self.events.recv().await
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(
    client: Client,
    mut place: Place,
    options: LiveOptions,
    events: mpsc::Sender<LiveEvent>,
) {
    let mut failures = 0u32;
    loop {
        let reason = match connection(&client, &mut place, &events, &mut failures).await {
            // The app dropped the stream.
            Ok(()) => return,
            Err(reason) => reason,
        };
        failures += 1;
        let Some(wait) = options.reconnect.delay(failures, sample(), None) else {
            let _ = events
                .send(LiveEvent::GaveUp {
                    attempts: failures,
                    reason,
                })
                .await;
            return;
        };
        let report = LiveEvent::Disconnected {
            reason,
            retry_in: wait,
        };
        if events.send(report).await.is_err() {
            return;
        }
        // The transport is where the client meets real time.
        #[allow(clippy::disallowed_methods)]
        tokio::time::sleep(wait).await;
    }
}

/// How long to wait before asking again for a `sync` the server could not
/// serve.
const SYNC_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// One connection, until it ends: `Ok` when the app went away, else why it
/// dropped. A connection that got as far as `hello` resets `failures`.
async fn connection(
    client: &Client,
    place: &mut Place,
    events: &mpsc::Sender<LiveEvent>,
    failures: &mut u32,
) -> Result<(), String> {
    let mut stream = client.connect().await.map_err(|e| e.to_string())?;
    let mut announced = false;
    loop {
        let frame = match stream.next_or_close().await {
            Ok(Ok(frame)) => frame,
            Ok(Err(closed)) => {
                return Err(match closed.code {
                    Some(code) => format!("closed by the server ({code}: {})", closed.reason),
                    None => "connection closed".into(),
                });
            }
            Err(error) => return Err(error.to_string()),
        };
        let synced_or_resumed = matches!(
            &frame,
            switchboard_protocol::ServerFrame::Control(Control::Resumed(_) | Control::Synced(_))
        );
        match place.apply(frame) {
            Step::Deliver(event) => {
                if events.send(LiveEvent::Event(event)).await.is_err() {
                    return Ok(());
                }
            }
            Step::Reply(frame) => stream.send(&frame).await.map_err(|e| e.to_string())?,
            Step::RetryLater(frame) => {
                // The server is short of its store for a moment.
                #[allow(clippy::disallowed_methods)]
                tokio::time::sleep(SYNC_RETRY_DELAY).await;
                stream.send(&frame).await.map_err(|e| e.to_string())?;
            }
            Step::Duplicate | Step::Control(_) | Step::Nothing => {}
        }
        if synced_or_resumed && !announced {
            announced = true;
            *failures = 0;
            if events.send(LiveEvent::Connected).await.is_err() {
                return Ok(());
            }
        }
    }
}
