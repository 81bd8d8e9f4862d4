//! The in-memory store with injectable faults, and a clock tests move by hand.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use switchboard_protocol::{
    Conversation, ConversationSummary, Event, Member, Message, Role, ScheduledFailure,
    ScheduledMessage,
};
use switchboard_storage::{
    AuditEntry, BlobDeletion, Claimed, Clock, Committed, CreateConversation, CreateOutcome,
    DeleteAttachment, DeleteMessage, EditMessage, MemoryStore, MessageRange, NewAttachment,
    NewMessage, NewScheduled, ScheduleCaps, ScheduleOutcome, ScheduledChange, ScheduledClaim,
    SendOutcome, Store, StoreError, StoredAttachment, send_each,
};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Time that moves only when a test says so.
#[derive(Debug, Default)]
pub(crate) struct ManualClock {
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub(crate) fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        base + *self.elapsed.lock().unwrap()
    }

    fn monotonic(&self) -> Duration {
        *self.elapsed.lock().unwrap()
    }
}

/// [`MemoryStore`] that can panic on one chosen send and hold sends at a gate.
#[derive(Debug)]
pub(crate) struct FaultyStore {
    inner: MemoryStore,
    /// Content whose send panics once.
    panic_on: Mutex<Option<String>>,
    /// Whether sends wait at the gate.
    gated: AtomicBool,
    gate: Semaphore,
    /// Sends currently waiting at the gate.
    waiting: AtomicUsize,
    /// The size of each `send_batch` call, in order.
    batches: Mutex<Vec<usize>>,
    /// Whether `positions_for` holds its answer, read already, at a gate of
    /// its own: an answer that arrives after what it read has changed.
    late_positions: AtomicBool,
    positions_gate: Semaphore,
    /// Answers of `positions_for` held at that gate.
    positions_held: AtomicUsize,
}

impl FaultyStore {
    pub(crate) fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            panic_on: Mutex::new(None),
            gated: AtomicBool::new(false),
            gate: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            batches: Mutex::new(Vec::new()),
            late_positions: AtomicBool::new(false),
            positions_gate: Semaphore::new(0),
            positions_held: AtomicUsize::new(0),
        }
    }

    pub(crate) fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }

    pub(crate) fn panic_on(&self, content: &str) {
        *self.panic_on.lock().unwrap() = Some(content.to_owned());
    }

    pub(crate) fn close_gate(&self) {
        self.gated.store(true, Ordering::SeqCst);
    }

    pub(crate) fn open_gate(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Holds every `positions_for` answer after its read until
    /// [`Self::release_positions`].
    pub(crate) fn hold_positions(&self) {
        self.late_positions.store(true, Ordering::SeqCst);
    }

    pub(crate) fn release_positions(&self) {
        self.late_positions.store(false, Ordering::SeqCst);
        self.positions_gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub(crate) fn positions_held(&self) -> usize {
        self.positions_held.load(Ordering::SeqCst)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn create_conversation(
        &self,
        command: CreateConversation,
    ) -> Result<CreateOutcome, StoreError> {
        self.inner.create_conversation(command).await
    }

    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        self.inner.conversation(id).await
    }

    async fn members(&self, conversation_id: Uuid) -> Result<Vec<Member>, StoreError> {
        self.inner.members(conversation_id).await
    }

    async fn role(&self, conversation_id: Uuid, user_id: Uuid) -> Result<Option<Role>, StoreError> {
        self.inner.role(conversation_id, user_id).await
    }

    async fn positions_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let positions = self.inner.positions_for(user_id, limit).await;
        if self.late_positions.load(Ordering::SeqCst) {
            self.positions_held.fetch_add(1, Ordering::SeqCst);
            let _permit = self.positions_gate.acquire().await.unwrap();
            self.positions_held.fetch_sub(1, Ordering::SeqCst);
        }
        positions
    }

    async fn last_seqs(&self, conversations: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
        self.inner.last_seqs(conversations).await
    }

    async fn conversations_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.inner.conversations_for(user_id, limit).await
    }

    async fn send_batch(&self, commands: Vec<NewMessage>) -> Vec<Result<SendOutcome, StoreError>> {
        self.batches.lock().unwrap().push(commands.len());
        send_each(self, commands).await
    }

    async fn send(&self, command: NewMessage) -> Result<SendOutcome, StoreError> {
        let trigger = self
            .panic_on
            .lock()
            .unwrap()
            .take_if(|c| *c == command.encrypted_content);
        assert!(trigger.is_none(), "injected panic");
        if self.gated.load(Ordering::SeqCst) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.unwrap();
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.send(command).await
    }

    async fn edit(&self, command: EditMessage) -> Result<Committed<Message>, StoreError> {
        self.inner.edit(command).await
    }

    async fn delete(&self, command: DeleteMessage) -> Result<Committed<Message>, StoreError> {
        self.inner.delete(command).await
    }

    async fn mark_read(
        &self,
        conversation_id: Uuid,
        user_id: Uuid,
        seq: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.inner
            .mark_read(conversation_id, user_id, seq, at)
            .await
    }

    async fn add_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<Member>, StoreError> {
        self.inner
            .add_member(conversation_id, by, user_id, role, at)
            .await
    }

    async fn change_role(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError> {
        self.inner
            .change_role(conversation_id, by, user_id, role, at)
            .await
    }

    async fn remove_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError> {
        self.inner
            .remove_member(conversation_id, by, user_id, at)
            .await
    }

    async fn message(&self, id: Uuid) -> Result<Option<Message>, StoreError> {
        self.inner.message(id).await
    }

    async fn messages(
        &self,
        conversation_id: Uuid,
        range: MessageRange,
    ) -> Result<Vec<Message>, StoreError> {
        self.inner.messages(conversation_id, range).await
    }

    async fn events(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events(conversation_id, after_seq, limit).await
    }

    async fn create_attachment(
        &self,
        attachment: NewAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        self.inner.create_attachment(attachment).await
    }

    async fn attachment(&self, id: Uuid) -> Result<Option<StoredAttachment>, StoreError> {
        self.inner.attachment(id).await
    }

    async fn attachments_by_keys(
        &self,
        keys: &[String],
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        self.inner.attachments_by_keys(keys).await
    }

    async fn pending_attachments(
        &self,
        expired_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        self.inner
            .pending_attachments(expired_before, after, limit)
            .await
    }

    async fn delete_attachment(
        &self,
        command: DeleteAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        self.inner.delete_attachment(command).await
    }

    async fn record_removal(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.inner.record_removal(entry).await
    }

    async fn audit(&self, s3_key: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(s3_key).await
    }

    async fn claim_deletions(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BlobDeletion>, StoreError> {
        self.inner.claim_deletions(now, lease_until, limit).await
    }

    async fn finish_deletion(&self, id: Uuid) -> Result<(), StoreError> {
        self.inner.finish_deletion(id).await
    }

    async fn defer_deletion(&self, id: Uuid, retry_at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.defer_deletion(id, retry_at).await
    }

    async fn deletions_owed(&self) -> Result<u64, StoreError> {
        self.inner.deletions_owed().await
    }

    async fn schedule(
        &self,
        entry: NewScheduled,
        caps: ScheduleCaps,
    ) -> Result<ScheduleOutcome, StoreError> {
        self.inner.schedule(entry, caps).await
    }

    async fn scheduled(&self, id: Uuid) -> Result<Option<ScheduledMessage>, StoreError> {
        self.inner.scheduled(id).await
    }

    async fn scheduled_for(
        &self,
        sender: Uuid,
        conversation: Option<Uuid>,
        failed_since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>, StoreError> {
        self.inner
            .scheduled_for(sender, conversation, failed_since, limit)
            .await
    }

    async fn change_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        change: ScheduledChange,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        self.inner.change_scheduled(id, by, change, at).await
    }

    async fn cancel_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        self.inner.cancel_scheduled(id, by, at).await
    }

    async fn next_scheduled(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_scheduled(now).await
    }

    async fn claim_scheduled(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.inner.claim_scheduled(now, lease_until, limit).await
    }

    async fn release_scheduled(
        &self,
        claim: ScheduledClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.release_scheduled(claim, retry_at).await
    }

    async fn fail_scheduled(
        &self,
        claim: ScheduledClaim,
        reason: ScheduledFailure,
        at: DateTime<Utc>,
    ) -> Result<Option<ScheduledMessage>, StoreError> {
        self.inner.fail_scheduled(claim, reason, at).await
    }

    async fn purge_scheduled(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.inner.purge_scheduled(before, limit).await
    }

    async fn scheduled_pending(&self) -> Result<u64, StoreError> {
        self.inner.scheduled_pending().await
    }
}

/// A bus that publishes nowhere and hears nothing: the test plays its
/// signals itself.
#[derive(Debug)]
pub(crate) struct QuietBus;

#[async_trait]
impl switchboard_storage::Bus for QuietBus {
    async fn publish(
        &self,
        _event: &Event,
        _frame: &[u8],
    ) -> Result<(), switchboard_storage::BusError> {
        Ok(())
    }

    async fn publish_to_user(
        &self,
        _user: Uuid,
        _frame: &[u8],
    ) -> Result<(), switchboard_storage::BusError> {
        Ok(())
    }

    async fn notify_user(
        &self,
        _user: Uuid,
        _control: &switchboard_protocol::Control,
    ) -> Result<(), switchboard_storage::BusError> {
        Ok(())
    }

    async fn tail(
        &self,
        _conversation_id: Uuid,
        _after_seq: i64,
        _limit: usize,
    ) -> Result<Vec<Event>, switchboard_storage::BusError> {
        Ok(Vec::new())
    }

    async fn stream_len(
        &self,
        _conversation_id: Uuid,
    ) -> Result<u64, switchboard_storage::BusError> {
        Ok(0)
    }

    async fn trim(
        &self,
        _conversation_id: Uuid,
        _len_max: usize,
    ) -> Result<u64, switchboard_storage::BusError> {
        Ok(0)
    }

    async fn ping(&self) -> Result<(), switchboard_storage::BusError> {
        Ok(())
    }

    fn subscribe(&self, _topic: switchboard_storage::Topic) {}

    fn unsubscribe(&self, _topic: switchboard_storage::Topic) {}
}
