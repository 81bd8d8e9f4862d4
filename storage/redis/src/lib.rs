//! The Redis [`Bus`]: pub/sub for fan-out, one stream per conversation for
//! the replay tail.
//!
//! Each event goes out as `PUBLISH conversation:{id}:messages <json>` (the
//! channel and shape operators watch with `redis-cli PSUBSCRIBE
//! 'conversation:*:messages'`) and `XADD conversation:{id}:events {seq}-0 e
//! <json>`, in one round trip. Stream ids are the seqs, so a reader asks for
//! "after seq N" directly. No trim happens here: trimming belongs to a worker
//! off the send path.
//!
//! Connections are made lazily and re-made after failures, so a node starts
//! and serves while Redis is down.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};
use switchboard_protocol::{Control, Event};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use switchboard_storage::{Bus, BusError, BusSignal, CacheError, FeedCache, Topic};
use switchboard_supervisors::{RestartPolicy, Supervisor, Task, TaskContext};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prepended to every channel and key; empty in production, unique per
    /// test so tests can share a server.
    pub key_prefix: String,
    /// How long connecting and each command may take.
    pub timeout: Duration,
    /// How the subscriber is restarted after a panic.
    pub restart: RestartPolicy,
}

impl RedisOptions {
    /// Defaults for `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: String::new(),
            timeout: Duration::from_secs(1),
            restart: RestartPolicy::default(),
        }
    }
}

/// Publishes as one script so the message and the stream entry leave
/// together; an `XADD` refused because another node already appended a later
/// seq leaves the stream with a gap that readers fill from the store.
const PUBLISH: &str = r"
redis.call('PUBLISH', ARGV[1], ARGV[3])
redis.pcall('XADD', KEYS[1], ARGV[2], 'e', ARGV[3])
return 1
";

/// The Redis bus.
#[derive(Debug, Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    options: RedisOptions,
    /// The command connection, made on first use and after a failure.
    commands: tokio::sync::Mutex<Option<ConnectionManager>>,
    publish: Script,
    /// Topics this node wants to hear about.
    wanted: Mutex<HashSet<Topic>>,
    /// Wakes the subscriber loop when `wanted` changes.
    changed: Notify,
    /// A signal was dropped because the node's queue was full. The node may
    /// have missed events (or a `Lost`), so the subscriber loop owes it a
    /// `Lost` until one gets through.
    overflowed: AtomicBool,
}

impl RedisBus {
    /// A bus for `options`; signals go to `signals`, which the caller bounds.
    /// Nothing connects yet; the subscriber loop starts in the background
    /// under `supervisor`, as [`SUBSCRIBER_TASK`].
    ///
    /// # Errors
    ///
    /// [`BusError::Protocol`] for a URL that is not a Redis URL.
    pub fn new(
        options: RedisOptions,
        signals: mpsc::Sender<BusSignal>,
        supervisor: &Supervisor,
    ) -> Result<Self, BusError> {
        let info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| BusError::Protocol(format!("invalid redis url: {e}")))?;
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(redis))
            .map_err(|e| BusError::Protocol(format!("invalid redis url: {e}")))?;
        let inner = Arc::new(Inner {
            client,
            options,
            commands: tokio::sync::Mutex::new(None),
            publish: Script::new(PUBLISH),
            wanted: Mutex::new(HashSet::new()),
            changed: Notify::new(),
            overflowed: AtomicBool::new(false),
        });
        supervisor.spawn(
            SUBSCRIBER_TASK,
            inner.options.restart,
            Subscriber {
                inner: Arc::downgrade(&inner),
                signals,
            },
        );
        Ok(Self { inner })
    }

    fn channel(&self, conversation_id: Uuid) -> String {
        channel(
            &self.inner.options.key_prefix,
            Topic::Conversation(conversation_id),
        )
    }

    fn stream(&self, conversation_id: Uuid) -> String {
        format!(
            "{}conversation:{conversation_id}:events",
            self.inner.options.key_prefix
        )
    }

    async fn connection(&self) -> Result<ConnectionManager, BusError> {
        let mut slot = self.inner.commands.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = manager(&self.inner, None).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, BusError> {
        let mut connection = self.connection().await?;
        command
            .query_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))
    }
}

fn channel(prefix: &str, topic: Topic) -> String {
    match topic {
        Topic::Conversation(id) => format!("{prefix}conversation:{id}:messages"),
        Topic::User(id) => format!("{prefix}user:{id}:events"),
    }
}

fn unavailable(error: &redis::RedisError) -> BusError {
    BusError::Unavailable(error.to_string())
}

async fn manager(
    inner: &Inner,
    push: Option<Box<dyn Fn(PushInfo) + Send + Sync>>,
) -> Result<ConnectionManager, BusError> {
    let timeout = inner.options.timeout;
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    if let Some(push) = push {
        config = config
            .set_push_sender(move |info: PushInfo| -> Result<(), ()> {
                push(info);
                Ok(())
            })
            .set_automatic_resubscription();
    }
    tokio::time::timeout(
        timeout * 3,
        inner.client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| BusError::Unavailable("connect timed out".into()))?
    .map_err(|e| unavailable(&e))
}

/// The subscriber's task name, in metrics and readiness.
pub const SUBSCRIBER_TASK: &str = "redis_subscriber";

/// Keeps this node's subscriptions equal to `wanted`, reconnecting as
/// needed, and turns what arrives into [`BusSignal`]s. A restart after a
/// panic starts from a new connection, and so with a `Lost`: the node
/// catches up on whatever the old one was about to say.
struct Subscriber {
    /// Weak, so dropping the bus ends the task.
    inner: std::sync::Weak<Inner>,
    signals: mpsc::Sender<BusSignal>,
}

impl Task for Subscriber {
    // The reconnect backoff is the adapter's own I/O pacing, not actor logic.
    #[allow(clippy::disallowed_methods)]
    async fn run(&mut self, context: &TaskContext) {
        let mut connection: Option<ConnectionManager> = None;
        let mut subscribed: HashSet<Topic> = HashSet::new();
        let mut delay = Duration::from_millis(50);
        // Catch-ups still owed after the link came back: one at once, one a
        // round later, after the automatic resubscription has surely landed.
        let mut owed_catch_ups = 0u8;
        let mut link_down = false;
        loop {
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            context.fault_point("listen");
            if connection.is_none() {
                let push_signals = self.signals.clone();
                let push_inner = Arc::downgrade(&inner);
                let push = Box::new(move |info: PushInfo| {
                    let signal = match info.kind {
                        PushKind::Disconnection => Some(BusSignal::Lost),
                        PushKind::Message => decode(&info.data),
                        _ => None,
                    };
                    if let Some(signal) = signal
                        && push_signals.try_send(signal).is_err()
                        && let Some(inner) = push_inner.upgrade()
                    {
                        inner.overflowed.store(true, Ordering::Relaxed);
                    }
                });
                match manager(&inner, Some(push)).await {
                    Ok(made) => {
                        connection = Some(made);
                        subscribed.clear();
                        delay = Duration::from_millis(50);
                        // Whatever happened while we were not listening is unknown.
                        let _ = self.signals.try_send(BusSignal::Lost);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "redis subscriber cannot connect yet");
                        drop(inner);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let wanted = inner.wanted.lock().expect("wanted lock").clone();
            let added: Vec<Topic> = wanted.difference(&subscribed).copied().collect();
            let add: Vec<String> = added
                .iter()
                .map(|topic| channel(&inner.options.key_prefix, *topic))
                .collect();
            let remove: Vec<String> = subscribed
                .difference(&wanted)
                .map(|topic| channel(&inner.options.key_prefix, *topic))
                .collect();
            let conn = connection.as_mut().expect("connected above");
            let mut ok = true;
            if !add.is_empty() {
                ok &= conn.subscribe(&add).await.is_ok();
            }
            if ok && !remove.is_empty() {
                ok &= conn.unsubscribe(&remove).await.is_ok();
            }
            if ok {
                subscribed = wanted;
                let conversations: Vec<Uuid> = added
                    .iter()
                    .filter_map(|topic| match topic {
                        Topic::Conversation(id) => Some(*id),
                        Topic::User(_) => None,
                    })
                    .collect();
                if !conversations.is_empty()
                    && self
                        .signals
                        .try_send(BusSignal::Subscribed(conversations))
                        .is_err()
                {
                    inner.overflowed.store(true, Ordering::Relaxed);
                }
            } else {
                tracing::debug!("redis subscribe failed; retrying");
                connection = None;
                continue;
            }
            // A subscriber sends no commands of its own, so ping to notice a dead
            // link (which makes the manager reconnect and resubscribe).
            let pinged: Result<String, _> = redis::cmd("PING").query_async(conn).await;
            if pinged.is_err() {
                link_down = true;
            } else if link_down {
                link_down = false;
                owed_catch_ups = 2;
            }
            if inner.overflowed.swap(false, Ordering::Relaxed) {
                tracing::warn!("the node's bus queue overflowed; asking it to catch up");
                owed_catch_ups = owed_catch_ups.max(1);
            }
            if owed_catch_ups > 0 && !link_down {
                owed_catch_ups -= 1;
                if self.signals.try_send(BusSignal::Lost).is_err() {
                    inner.overflowed.store(true, Ordering::Relaxed);
                }
            }
            // Re-check now and then even without a change, to notice a dead
            // link, and to stop within a second once the bus is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.changed.notified()).await;
        }
    }
}

/// A pub/sub message's payload: an event, or a notice for one user
/// (`{"notice": {"user_id", "frame"}}`, see [`RedisBus::notify_user`]).
fn decode(data: &[Value]) -> Option<BusSignal> {
    // `message` pushes carry [channel, payload].
    let payload = match data.get(1)? {
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        _ => return None,
    };
    let decoded = serde_json::from_slice::<serde_json::Value>(payload)
        .map_err(|e| e.to_string())
        .and_then(
            |mut value| match value.get_mut("notice").map(serde_json::Value::take) {
                Some(mut notice) => {
                    let user = serde_json::from_value(notice["user_id"].take());
                    let control = serde_json::from_value(notice["frame"].take());
                    match (user, control) {
                        (Ok(user), Ok(control)) => Ok(BusSignal::Notice { user, control }),
                        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
                    }
                }
                None => serde_json::from_value(value)
                    .map(BusSignal::Event)
                    .map_err(|e| e.to_string()),
            },
        );
    match decoded {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "undecodable message on the bus");
            None
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, event: &Event, frame: &[u8]) -> Result<(), BusError> {
        let conversation_id = event.conversation_id();
        let mut connection = self.connection().await?;
        self.inner
            .publish
            .key(self.stream(conversation_id))
            .arg(self.channel(conversation_id))
            .arg(format!("{}-0", event.seq()))
            .arg(frame)
            .invoke_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| unavailable(&e))
    }

    async fn publish_to_user(&self, user: Uuid, frame: &[u8]) -> Result<(), BusError> {
        self.run(
            redis::cmd("PUBLISH")
                .arg(channel(&self.inner.options.key_prefix, Topic::User(user)))
                .arg(frame),
        )
        .await
        .map(|_receivers: i64| ())
    }

    async fn notify_user(&self, user: Uuid, control: &Control) -> Result<(), BusError> {
        let payload = serde_json::json!({ "notice": { "user_id": user, "frame": control } });
        self.run(
            redis::cmd("PUBLISH")
                .arg(channel(&self.inner.options.key_prefix, Topic::User(user)))
                .arg(payload.to_string()),
        )
        .await
        .map(|_receivers: i64| ())
    }

    async fn tail(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Event>, BusError> {
        let entries: Vec<(String, Vec<(String, Vec<u8>)>)> = self
            .run(
                redis::cmd("XRANGE")
                    .arg(self.stream(conversation_id))
                    .arg(format!("({after_seq}-0"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        entries
            .iter()
            .map(|(_, fields)| {
                let (_, frame) = fields
                    .iter()
                    .find(|(name, _)| name == "e")
                    .ok_or_else(|| BusError::Protocol("stream entry without an event".into()))?;
                serde_json::from_slice(frame)
                    .map_err(|e| BusError::Protocol(format!("undecodable stream entry: {e}")))
            })
            .collect()
    }

    async fn stream_len(&self, conversation_id: Uuid) -> Result<u64, BusError> {
        self.run(redis::cmd("XLEN").arg(self.stream(conversation_id)))
            .await
    }

    async fn trim(&self, conversation_id: Uuid, len_max: usize) -> Result<u64, BusError> {
        self.run(
            redis::cmd("XTRIM")
                .arg(self.stream(conversation_id))
                .arg("MAXLEN")
                .arg("~")
                .arg(len_max),
        )
        .await
    }

    async fn ping(&self) -> Result<(), BusError> {
        let answer: String = self.run(&redis::cmd("PING")).await?;
        if answer == "PONG" {
            Ok(())
        } else {
            Err(BusError::Protocol(format!("PING answered {answer:?}")))
        }
    }

    fn subscribe(&self, topic: Topic) {
        if self.inner.wanted.lock().expect("wanted lock").insert(topic) {
            self.inner.changed.notify_one();
        }
    }

    fn unsubscribe(&self, topic: Topic) {
        if self
            .inner
            .wanted
            .lock()
            .expect("wanted lock")
            .remove(&topic)
        {
            self.inner.changed.notify_one();
        }
    }
}

/// The feed's last ranked pages, shared by every node: `SET {prefix}feed:{key}
/// EX ttl` on the bus's command connection, within its timeout.
#[async_trait]
impl FeedCache for RedisBus {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let key = format!("{}feed:{key}", self.inner.options.key_prefix);
        self.run(redis::cmd("GET").arg(key))
            .await
            .map_err(|e| CacheError(e.to_string()))
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        let key = format!("{}feed:{key}", self.inner.options.key_prefix);
        self.run(
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)),
        )
        .await
        .map_err(|e| CacheError(e.to_string()))
    }
}
