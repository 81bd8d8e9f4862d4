//! A store wrapper that makes calls slow, fails them, or commits a write and
//! tells the caller it failed, as the run's [`Faults`] decide.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use switchboard_protocol::{
    Conversation, ConversationSummary, Event, Member, Message, Role, ScheduledFailure,
    ScheduledMessage,
};
use switchboard_storage::{
    AuditEntry, BlobDeletion, Claimed, Committed, CreateConversation, CreateOutcome,
    DeleteAttachment, DeleteMessage, EditMessage, MessageRange, NewAttachment, NewMessage,
    NewScheduled, ScheduleCaps, ScheduleOutcome, ScheduledChange, ScheduledClaim, SendOutcome,
    Store, StoreError, StoredAttachment,
};
use uuid::Uuid;

use crate::faults::{FaultKind, Faults};

/// Any store, with faults.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
}

impl FaultyStore {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn Store>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }

    /// Before a call: maybe wait, maybe fail.
    async fn before(&self) -> Result<(), StoreError> {
        let plan = &self.faults.plan;
        if self.faults.roll(FaultKind::StoreSlow, plan.store_slow) {
            let delay = self.faults.delay(plan.store_slow_max);
            #[allow(clippy::disallowed_methods)] // A slow store, in the run's time.
            tokio::time::sleep(delay).await;
        }
        if self.faults.roll(FaultKind::StoreFail, plan.store_fail) {
            return Err(StoreError::Backend("injected: store unavailable".into()));
        }
        Ok(())
    }

    /// After a write: maybe lose its outcome (it stays committed).
    fn after<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        if outcome.is_ok()
            && self
                .faults
                .roll(FaultKind::StoreLost, self.faults.plan.store_lost)
        {
            return Err(StoreError::Backend(
                "injected: connection lost before the commit was acknowledged".into(),
            ));
        }
        outcome
    }
}

/// Reads: slow or failing.
macro_rules! read {
    ($self:ident, $call:ident($($arg:expr),*)) => {{
        $self.before().await?;
        $self.inner.$call($($arg),*).await
    }};
}

/// Writes: slow, failing, or committed with the outcome lost.
macro_rules! write {
    ($self:ident, $call:ident($($arg:expr),*)) => {{
        $self.before().await?;
        let outcome = $self.inner.$call($($arg),*).await;
        $self.after(outcome)
    }};
}

#[async_trait]
impl Store for FaultyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        read!(self, ping())
    }

    async fn create_conversation(
        &self,
        command: CreateConversation,
    ) -> Result<CreateOutcome, StoreError> {
        write!(self, create_conversation(command))
    }

    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        read!(self, conversation(id))
    }

    async fn members(&self, conversation_id: Uuid) -> Result<Vec<Member>, StoreError> {
        read!(self, members(conversation_id))
    }

    async fn role(&self, conversation_id: Uuid, user_id: Uuid) -> Result<Option<Role>, StoreError> {
        read!(self, role(conversation_id, user_id))
    }

    async fn positions_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        read!(self, positions_for(user_id, limit))
    }

    async fn last_seqs(&self, conversations: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
        read!(self, last_seqs(conversations))
    }

    async fn conversations_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        read!(self, conversations_for(user_id, limit))
    }

    async fn send(&self, command: NewMessage) -> Result<SendOutcome, StoreError> {
        write!(self, send(command))
    }

    async fn edit(&self, command: EditMessage) -> Result<Committed<Message>, StoreError> {
        write!(self, edit(command))
    }

    async fn delete(&self, command: DeleteMessage) -> Result<Committed<Message>, StoreError> {
        write!(self, delete(command))
    }

    async fn mark_read(
        &self,
        conversation_id: Uuid,
        user_id: Uuid,
        seq: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        write!(self, mark_read(conversation_id, user_id, seq, at))
    }

    async fn add_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<Member>, StoreError> {
        write!(self, add_member(conversation_id, by, user_id, role, at))
    }

    async fn change_role(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError> {
        write!(self, change_role(conversation_id, by, user_id, role, at))
    }

    async fn remove_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError> {
        write!(self, remove_member(conversation_id, by, user_id, at))
    }

    async fn message(&self, id: Uuid) -> Result<Option<Message>, StoreError> {
        read!(self, message(id))
    }

    async fn messages(
        &self,
        conversation_id: Uuid,
        range: MessageRange,
    ) -> Result<Vec<Message>, StoreError> {
        read!(self, messages(conversation_id, range))
    }

    async fn events(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        read!(self, events(conversation_id, after_seq, limit))
    }

    async fn events_of(&self, from: &[(Uuid, i64)], limit: u32) -> Result<Vec<Event>, StoreError> {
        read!(self, events_of(from, limit))
    }

    async fn create_attachment(
        &self,
        attachment: NewAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        write!(self, create_attachment(attachment))
    }

    async fn attachment(&self, id: Uuid) -> Result<Option<StoredAttachment>, StoreError> {
        read!(self, attachment(id))
    }

    async fn attachments_by_keys(
        &self,
        keys: &[String],
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        read!(self, attachments_by_keys(keys))
    }

    async fn pending_attachments(
        &self,
        expired_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        read!(self, pending_attachments(expired_before, after, limit))
    }

    async fn delete_attachment(
        &self,
        command: DeleteAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        write!(self, delete_attachment(command))
    }

    async fn record_removal(&self, entry: AuditEntry) -> Result<(), StoreError> {
        write!(self, record_removal(entry))
    }

    async fn audit(&self, s3_key: &str) -> Result<Vec<AuditEntry>, StoreError> {
        read!(self, audit(s3_key))
    }

    async fn claim_deletions(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BlobDeletion>, StoreError> {
        write!(self, claim_deletions(now, lease_until, limit))
    }

    async fn finish_deletion(&self, id: Uuid) -> Result<(), StoreError> {
        write!(self, finish_deletion(id))
    }

    async fn defer_deletion(&self, id: Uuid, retry_at: DateTime<Utc>) -> Result<(), StoreError> {
        write!(self, defer_deletion(id, retry_at))
    }

    async fn deletions_owed(&self) -> Result<u64, StoreError> {
        read!(self, deletions_owed())
    }

    async fn schedule(
        &self,
        entry: NewScheduled,
        caps: ScheduleCaps,
    ) -> Result<ScheduleOutcome, StoreError> {
        write!(self, schedule(entry, caps))
    }

    async fn scheduled(&self, id: Uuid) -> Result<Option<ScheduledMessage>, StoreError> {
        read!(self, scheduled(id))
    }

    async fn scheduled_for(
        &self,
        sender: Uuid,
        conversation: Option<Uuid>,
        failed_since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>, StoreError> {
        read!(
            self,
            scheduled_for(sender, conversation, failed_since, limit)
        )
    }

    async fn change_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        change: ScheduledChange,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        write!(self, change_scheduled(id, by, change, at))
    }

    async fn cancel_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        write!(self, cancel_scheduled(id, by, at))
    }

    async fn next_scheduled(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        read!(self, next_scheduled(now))
    }

    async fn claim_scheduled(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        write!(self, claim_scheduled(now, lease_until, limit))
    }

    async fn release_scheduled(
        &self,
        claim: ScheduledClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        write!(self, release_scheduled(claim, retry_at))
    }

    async fn fail_scheduled(
        &self,
        claim: ScheduledClaim,
        reason: ScheduledFailure,
        at: DateTime<Utc>,
    ) -> Result<Option<ScheduledMessage>, StoreError> {
        write!(self, fail_scheduled(claim, reason, at))
    }

    async fn purge_scheduled(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        write!(self, purge_scheduled(before, limit))
    }

    async fn scheduled_pending(&self) -> Result<u64, StoreError> {
        read!(self, scheduled_pending())
    }
}
