//! Scheduled messages: the node's API over the store's queue, and the
//! dispatcher that delivers them.
//!
//! The dispatcher is a supervised task. It sleeps until the earliest entry
//! no node holds is due (at most `poll_every`, to see other nodes' entries
//! and expired leases), woken early when this node schedules an earlier
//! one. A round claims due entries in bounded batches with a lease and
//! delivers each through its conversation actor as any send, the entry's
//! claim riding along so the store turns it `sent` in the send's own
//! transaction. A database failure puts the claimed entries off and the
//! dispatcher backs off, doubling from `retry_min` to `retry_max`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use switchboard_protocol::{
    AttachmentKind, Control, EditScheduled, ScheduleMessage, ScheduledFailed, ScheduledFailure,
    ScheduledMessage, SendMessage,
};
use switchboard_storage::{
    Claimed, NewScheduled, ScheduleCaps, ScheduleOutcome, ScheduledChange, StoreError,
};
use switchboard_supervisors::{RestartPolicy, Task, TaskContext};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::ActorError;
use crate::conversation::Command;
use crate::node::{Node, Shared};

/// The dispatcher's task name.
pub(crate) const DISPATCHER: &str = "scheduled_dispatcher";

/// The bounds of scheduled messages.
#[derive(Debug, Clone, Copy)]
pub struct ScheduledLimits {
    /// Entries one user may have pending.
    pub per_user_max: u32,
    /// Entries pending in all (every node of the deployment counts).
    pub total_max: u64,
    /// How far ahead an entry must be due, at least.
    pub ahead_min: Duration,
    /// How far ahead it may be due, at most.
    pub ahead_max: Duration,
    /// An entry found this long past due (the nodes were down) fails
    /// `too_late` instead of going out stale.
    pub late_max: Duration,
    /// Sent, cancelled and failed entries are purged this long after; a
    /// failure stays listed until then.
    pub retention: Duration,
    /// Entries one list answer holds at most.
    pub list_len_max: u32,
    /// Due entries claimed at once.
    pub batch_len: u32,
    /// Deliveries in flight at once, each a send through its conversation
    /// actor.
    pub deliveries_max: usize,
    /// How long a claim holds an entry before another node may take it.
    pub lease: Duration,
    /// The longest the dispatcher sleeps without looking.
    pub poll_every: Duration,
    /// The first wait after a database failure; doubles per failure.
    pub retry_min: Duration,
    /// The longest wait after failures.
    pub retry_max: Duration,
    /// How often finished entries are purged.
    pub purge_every: Duration,
    /// Entries purged per statement.
    pub purge_batch_len: u32,
    /// How the dispatcher is restarted after a panic.
    pub restart: RestartPolicy,
}

impl Default for ScheduledLimits {
    fn default() -> Self {
        Self {
            per_user_max: 100,
            total_max: 1_000_000,
            ahead_min: Duration::from_secs(1),
            ahead_max: Duration::from_secs(365 * 24 * 3600),
            late_max: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            list_len_max: 500,
            batch_len: 500,
            deliveries_max: 128,
            lease: Duration::from_secs(15),
            poll_every: Duration::from_secs(5),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            purge_every: Duration::from_secs(60),
            purge_batch_len: 1_000,
            restart: RestartPolicy::default(),
        }
    }
}

impl ScheduledLimits {
    /// Checks that the bounds fit together.
    ///
    /// # Errors
    ///
    /// A sentence naming the bounds that do not.
    pub fn check(&self) -> Result<(), String> {
        if self.ahead_min >= self.ahead_max {
            return Err("scheduled ahead_min must be shorter than ahead_max".into());
        }
        if self.batch_len == 0 || self.deliveries_max == 0 || self.purge_batch_len == 0 {
            return Err("scheduled batches and deliveries must not be zero".into());
        }
        if self.lease <= self.poll_every || self.poll_every.is_zero() {
            return Err("scheduled lease must be longer than a non-zero poll_every".into());
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return Err("scheduled retry_min must be non-zero and at most retry_max".into());
        }
        Ok(())
    }
}

/// What wakes the dispatcher early, and when it plans to wake anyway.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    notify: Notify,
    /// Milliseconds since the epoch of the dispatcher's next look.
    planned_ms: AtomicI64,
}

impl Wake {
    /// An entry is due at `at`: wakes the dispatcher if it would look
    /// later.
    pub(crate) fn due(&self, at: DateTime<Utc>) {
        if at.timestamp_millis() < self.planned_ms.load(Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }
}

/// The dispatcher. Ends with the node.
pub(crate) struct Dispatcher {
    shared: Weak<Shared>,
    wake: Arc<Wake>,
    /// Rounds that failed in a row, for the backoff.
    failures: u32,
    /// When finished entries were last purged, on the monotonic clock.
    purged_at: Option<Duration>,
}

/// How one delivery went.
enum Delivery {
    Sent,
    /// Failed for good, told to the sender.
    Failed,
    /// Cancelled, changed or taken over since the claim: nothing to do.
    Superseded,
    /// The database or the conversation was unavailable: put off.
    Retry,
}

impl Dispatcher {
    pub(crate) fn new(shared: &Arc<Shared>, wake: Arc<Wake>) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            wake,
            failures: 0,
            purged_at: None,
        }
    }

    /// The wait after the `failures`th failure in a row.
    fn backoff(&self, limits: &ScheduledLimits) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        limits
            .retry_min
            .saturating_mul(1 << doublings)
            .min(limits.retry_max)
    }

    /// Delivers what is due; returns how long to sleep.
    async fn round(&mut self, shared: &Arc<Shared>, context: &TaskContext) -> Duration {
        let limits = shared.limits.scheduled;
        self.purge(shared, &limits).await;
        loop {
            let now = shared.clock.now();
            let lease = now + delta(limits.lease);
            let batch = match shared
                .store
                .claim_scheduled(now, lease, limits.batch_len)
                .await
            {
                Ok(batch) => batch,
                Err(error) => return self.failed(&limits, &error),
            };
            let full = batch.len() == limits.batch_len as usize;
            context.fault_point("deliver");
            if !self.deliver_all(shared, &limits, batch).await {
                self.failures += 1;
                return self.backoff(&limits);
            }
            self.failures = 0;
            if !full {
                break;
            }
        }
        if let Ok(pending) = shared.store.scheduled_pending().await {
            shared
                .metrics
                .scheduled_messages_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
        let now = shared.clock.now();
        match shared.store.next_scheduled(now).await {
            Ok(next) => next.map_or(limits.poll_every, |at| {
                (at - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(limits.poll_every)
            }),
            Err(error) => self.failed(&limits, &error),
        }
    }

    fn failed(&mut self, limits: &ScheduledLimits, error: &StoreError) -> Duration {
        self.failures += 1;
        tracing::warn!(%error, failures = self.failures, "the scheduled dispatcher cannot read its queue");
        self.backoff(limits)
    }

    /// Delivers a claimed batch, `deliveries_max` in flight at once; false
    /// when any had to be put off.
    async fn deliver_all(
        &self,
        shared: &Arc<Shared>,
        limits: &ScheduledLimits,
        batch: Vec<Claimed>,
    ) -> bool {
        use futures_util::StreamExt;
        let mut all_went = true;
        let mut outcomes = futures_util::stream::iter(batch)
            .map(|claimed| deliver(shared, claimed))
            .buffer_unordered(limits.deliveries_max);
        while let Some(outcome) = outcomes.next().await {
            let label = match outcome {
                Delivery::Sent => "sent",
                Delivery::Failed => "failed",
                Delivery::Superseded => continue,
                Delivery::Retry => {
                    all_went = false;
                    continue;
                }
            };
            shared
                .metrics
                .scheduled_messages_total
                .with_label_values(&[label])
                .inc();
        }
        all_went
    }

    /// Purges finished entries past their retention, once per
    /// `purge_every`, in bounded batches.
    async fn purge(&mut self, shared: &Arc<Shared>, limits: &ScheduledLimits) {
        let now = shared.clock.monotonic();
        if self
            .purged_at
            .is_some_and(|at| now.saturating_sub(at) < limits.purge_every)
        {
            return;
        }
        self.purged_at = Some(now);
        let before = shared.clock.now() - delta(limits.retention);
        // A round's purge is bounded too; the rest waits for the next.
        for _ in 0..10 {
            match shared
                .store
                .purge_scheduled(before, limits.purge_batch_len)
                .await
            {
                Ok(purged) if purged == u64::from(limits.purge_batch_len) => {}
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot purge finished scheduled messages");
                    return;
                }
            }
        }
    }
}

impl Task for Dispatcher {
    async fn run(&mut self, context: &TaskContext) {
        loop {
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            // During a round every new entry wakes the next wait at once:
            // the round may have read the queue before it was added.
            self.wake.planned_ms.store(i64::MAX, Ordering::Relaxed);
            let wait = self.round(&shared, context).await;
            let wake_at = shared.clock.now() + delta(wait);
            self.wake
                .planned_ms
                .store(wake_at.timestamp_millis(), Ordering::Relaxed);
            drop(shared);
            // Woken by an earlier entry, or when the next one is due.
            let _ = tokio::time::timeout(wait, self.wake.notify.notified()).await;
        }
    }
}

/// Sends one claimed entry through its conversation actor, or fails it.
async fn deliver(shared: &Arc<Shared>, claimed: Claimed) -> Delivery {
    let Claimed { entry, claim } = claimed;
    let limits = &shared.limits.scheduled;
    let late = (shared.clock.now() - entry.deliver_at)
        .to_std()
        .unwrap_or_default();
    if late > limits.late_max {
        return fail(shared, &entry, claim, ScheduledFailure::TooLate).await;
    }
    let input = SendMessage {
        conversation_id: entry.conversation_id,
        encrypted_content: entry.encrypted_content.clone(),
        nonce: entry.nonce.clone(),
        message_type: entry.message_type.clone(),
        // A retry after a lost answer finds the message it stored.
        idempotency_key: Some(format!("scheduled:{}", entry.id)),
    };
    let sent = shared
        .conversations
        .call(shared, entry.conversation_id, |reply| Command::Send {
            user: entry.sender_id,
            input: input.clone(),
            attachment: None,
            scheduled: Some(claim),
            reply,
        })
        .await;
    match sent {
        Ok(_) => {
            let lag = (shared.clock.now() - entry.deliver_at)
                .to_std()
                .unwrap_or_default();
            shared
                .metrics
                .scheduled_delivery_lag_seconds
                .observe(lag.as_secs_f64());
            Delivery::Sent
        }
        Err(ActorError::NotFound(_)) => {
            let reason = match shared.store.conversation(entry.conversation_id).await {
                Ok(Some(_)) => ScheduledFailure::NotMember,
                Ok(None) => ScheduledFailure::ConversationGone,
                Err(error) => return put_off(shared, claim, &error.into()).await,
            };
            fail(shared, &entry, claim, reason).await
        }
        Err(ActorError::Conflict(_)) => Delivery::Superseded,
        Err(error) => put_off(shared, claim, &error).await,
    }
}

async fn fail(
    shared: &Arc<Shared>,
    entry: &ScheduledMessage,
    claim: switchboard_storage::ScheduledClaim,
    reason: ScheduledFailure,
) -> Delivery {
    match shared
        .store
        .fail_scheduled(claim, reason, shared.clock.now())
        .await
    {
        Ok(Some(failed)) => {
            tracing::info!(id = %failed.id, reason = reason.as_str(), "a scheduled message failed");
            tell(
                shared,
                entry.sender_id,
                Control::ScheduledFailed(ScheduledFailed {
                    id: entry.id,
                    conversation_id: entry.conversation_id,
                    reason,
                }),
            );
            Delivery::Failed
        }
        Ok(None) => Delivery::Superseded,
        Err(error) => put_off(shared, claim, &error.into()).await,
    }
}

/// Lets an entry go until the dispatcher's next try; if even that fails,
/// its lease runs out and it is taken again.
async fn put_off(
    shared: &Arc<Shared>,
    claim: switchboard_storage::ScheduledClaim,
    error: &ActorError,
) -> Delivery {
    tracing::debug!(%error, id = %claim.id, "a scheduled message is put off");
    let retry_at = shared.clock.now() + delta(shared.limits.scheduled.retry_min);
    if let Err(error) = shared.store.release_scheduled(claim, retry_at).await {
        tracing::debug!(%error, "cannot put a scheduled message off");
    }
    Delivery::Retry
}

/// Hands `control` to `user`'s sessions wherever they are connected: over
/// the bus (this node hears its own), else here.
fn tell(shared: &Shared, user: Uuid, control: Control) {
    let control = match &shared.publishing {
        Some(publishing) => match publishing.notify(user, control) {
            Ok(()) => return,
            Err(control) => control,
        },
        None => control,
    };
    shared.hub.tell(user, &control);
}

/// A time to the millisecond, as every other time the API shows, and
/// within what every store keeps exactly (so a retry's time compares equal
/// to the stored one).
fn to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound;
    at.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(at)
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// Why a schedule or change was refused, as the caller sees it.
fn refused(error: StoreError) -> ActorError {
    match error {
        StoreError::NotFound => ActorError::NotFound("scheduled message not found"),
        StoreError::Rejected(_) => ActorError::NotFound("conversation not found"),
        other => other.into(),
    }
}

impl Node {
    /// Checks that `at` is far enough ahead and not too far.
    fn check_due(&self, at: DateTime<Utc>) -> Result<(), ActorError> {
        let limits = &self.shared().limits.scheduled;
        let now = self.shared().clock.now();
        if at < now + delta(limits.ahead_min) {
            return Err(ActorError::Invalid(format!(
                "deliver_at must be at least {} s ahead",
                limits.ahead_min.as_secs_f64()
            )));
        }
        if at > now + delta(limits.ahead_max) {
            return Err(ActorError::Invalid(format!(
                "deliver_at must be at most {} days ahead",
                limits.ahead_max.as_secs() / 86_400
            )));
        }
        Ok(())
    }

    /// Schedules a message from `user`, a member of `conversation`;
    /// `true` when it is new, `false` when its idempotency key had
    /// scheduled it already.
    ///
    /// # Errors
    ///
    /// `Invalid` for a time out of bounds or an attachment type,
    /// `NotFound` for a non-member, `Conflict` for a key reused with
    /// another message, `Full` past a cap.
    pub async fn schedule(
        &self,
        user: Uuid,
        conversation: Uuid,
        request: ScheduleMessage,
    ) -> Result<(ScheduledMessage, bool), ActorError> {
        let shared = self.shared();
        let limits = &shared.limits.scheduled;
        if AttachmentKind::reserves(&request.message_type) {
            return Err(ActorError::Invalid(
                "a scheduled message carries no attachment".into(),
            ));
        }
        let deliver_at = to_millis(request.deliver_at);
        let entry = NewScheduled {
            id: shared.new_id(),
            conversation_id: conversation,
            sender_id: user,
            deliver_at,
            encrypted_content: request.encrypted_content,
            nonce: request.nonce,
            message_type: request.message_type,
            idempotency_key: request.idempotency_key,
            at: shared.clock.now(),
        };
        let caps = ScheduleCaps {
            per_user_max: limits.per_user_max,
            total_max: limits.total_max,
        };
        if let Err(bounds) = self.check_due(deliver_at) {
            // A retry of an entry whose time has come close is still
            // answered with it: with no room at all, the store answers a
            // stored key and writes nothing else.
            if entry.idempotency_key.is_none() {
                return Err(bounds);
            }
            let no_room = ScheduleCaps {
                per_user_max: 0,
                total_max: 0,
            };
            return match shared
                .store
                .schedule(entry, no_room)
                .await
                .map_err(refused)?
            {
                ScheduleOutcome::Existing(entry) => Ok((entry, false)),
                _ => Err(bounds),
            };
        }
        let outcome = shared.store.schedule(entry, caps).await.map_err(refused)?;
        match outcome {
            ScheduleOutcome::Created(entry) => {
                shared.scheduled.due(entry.deliver_at);
                Ok((entry, true))
            }
            ScheduleOutcome::Existing(entry) => Ok((entry, false)),
            ScheduleOutcome::Full { user, next_due } => {
                let now = shared.clock.now();
                let retry_after = next_due
                    .and_then(|at| (at - now).to_std().ok())
                    .unwrap_or(limits.poll_every)
                    .max(Duration::from_secs(1));
                Err(ActorError::Full {
                    message: if user {
                        format!(
                            "at most {} scheduled messages may be pending per user",
                            limits.per_user_max
                        )
                    } else {
                        "the server holds as many scheduled messages as it may".into()
                    },
                    retry_after,
                })
            }
        }
    }

    /// `user`'s pending entries, and those that failed within the
    /// retention, in one conversation or all, by time due.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn scheduled_messages(
        &self,
        user: Uuid,
        conversation: Option<Uuid>,
    ) -> Result<Vec<ScheduledMessage>, ActorError> {
        let shared = self.shared();
        let limits = &shared.limits.scheduled;
        let since = shared.clock.now() - delta(limits.retention);
        Ok(shared
            .store
            .scheduled_for(user, conversation, since, limits.list_len_max)
            .await?)
    }

    /// Changes the time or content of one of `user`'s pending entries.
    ///
    /// # Errors
    ///
    /// `Invalid` for an empty change or a time out of bounds, `NotFound`
    /// for another's entry, `Conflict` once it is not pending.
    pub async fn edit_scheduled(
        &self,
        user: Uuid,
        id: Uuid,
        request: EditScheduled,
    ) -> Result<ScheduledMessage, ActorError> {
        let content = match (request.encrypted_content, request.nonce) {
            (Some(content), Some(nonce)) => Some((content, nonce)),
            (None, None) => None,
            _ => {
                return Err(ActorError::Invalid(
                    "encrypted_content and nonce change together".into(),
                ));
            }
        };
        if content.is_none() && request.deliver_at.is_none() {
            return Err(ActorError::Invalid(
                "give deliver_at, or encrypted_content and nonce".into(),
            ));
        }
        let deliver_at = request.deliver_at.map(to_millis);
        if let Some(at) = deliver_at {
            self.check_due(at)?;
        }
        let shared = self.shared();
        let change = ScheduledChange {
            deliver_at,
            content,
        };
        let changed = shared
            .store
            .change_scheduled(id, user, change, shared.clock.now())
            .await
            .map_err(refused)?;
        shared.scheduled.due(changed.deliver_at);
        Ok(changed)
    }

    /// Cancels one of `user`'s pending entries.
    ///
    /// # Errors
    ///
    /// `NotFound` for another's entry, `Conflict` once it is not pending.
    pub async fn cancel_scheduled(&self, user: Uuid, id: Uuid) -> Result<(), ActorError> {
        let shared = self.shared();
        shared
            .store
            .cancel_scheduled(id, user, shared.clock.now())
            .await
            .map_err(refused)?;
        shared
            .metrics
            .scheduled_messages_total
            .with_label_values(&["cancelled"])
            .inc();
        Ok(())
    }
}
