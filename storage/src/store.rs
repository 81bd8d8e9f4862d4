//! The [`Store`] trait and the commands it takes.
//!
//! Writes take the full command, including the acting user, and re-check the
//! permission in the same transaction as the write. Every write that changes
//! what members see appends its events to the conversation's log with the
//! next gap-free `seq`, and returns them only once committed.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use switchboard_protocol::{
    Attachment, Conversation, ConversationKind, ConversationSummary, Event, Member, Message, Role,
    ScheduledFailure, ScheduledMessage,
};
use uuid::Uuid;

use crate::StoreError;
use crate::attachment::{
    AuditEntry, BlobDeletion, DeleteAttachment, NewAttachment, StoredAttachment,
};
use crate::scheduled::{
    Claimed, NewScheduled, ScheduleCaps, ScheduleOutcome, ScheduledChange, ScheduledClaim,
};

/// A committed write: its result and the events it appended, in `seq` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<T> {
    /// What the write produced.
    pub value: T,
    /// The events it appended to the conversation's log.
    pub events: Vec<Event>,
}

/// Creates a conversation with its first members.
#[derive(Debug, Clone)]
pub struct CreateConversation {
    /// The id to give it.
    pub id: Uuid,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Optional title.
    pub title: Option<String>,
    /// The creator, who becomes the owner.
    pub creator: Uuid,
    /// The other members, without the creator and without duplicates.
    pub members: Vec<Uuid>,
    /// The creation time.
    pub at: DateTime<Utc>,
}

impl CreateConversation {
    /// The key a direct conversation is unique by (one per pair of
    /// people), checked to have exactly two members; none for a group.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] for a direct conversation without exactly
    /// one other member.
    pub fn pair_key(&self) -> Result<Option<String>, StoreError> {
        match self.kind {
            ConversationKind::Direct => {
                let [other] = self.members.as_slice() else {
                    return Err(StoreError::Conflict(
                        "a direct conversation has exactly two members".into(),
                    ));
                };
                let (low, high) = if self.creator < *other {
                    (self.creator, *other)
                } else {
                    (*other, self.creator)
                };
                Ok(Some(format!("{low}:{high}")))
            }
            ConversationKind::Group => Ok(None),
        }
    }

    /// The members it starts with: the creator as owner, the rest as
    /// members, in the order every later read returns them.
    #[must_use]
    pub fn initial_members(&self) -> Vec<Member> {
        let mut members = Vec::with_capacity(self.members.len() + 1);
        members.push(Member {
            user_id: self.creator,
            role: Role::Owner,
            last_read_seq: 0,
            joined_at: self.at,
        });
        members.extend(self.members.iter().map(|&user_id| Member {
            user_id,
            role: Role::Member,
            last_read_seq: 0,
            joined_at: self.at,
        }));
        members.sort_by_key(|m| (m.joined_at, m.user_id));
        members
    }
}

/// The result of creating a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new conversation, with its `conversation.created` event.
    Created(Committed<Conversation>),
    /// The direct conversation between these two people that already existed.
    Existing(Conversation),
}

/// Appends a message.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// UUID v7 id for the message.
    pub id: Uuid,
    /// Where it goes.
    pub conversation_id: Uuid,
    /// Who sends it; must be a member when the write runs.
    pub sender_id: Uuid,
    /// Opaque base64 ciphertext.
    pub encrypted_content: String,
    /// Opaque base64 nonce.
    pub nonce: String,
    /// Application-defined type.
    pub message_type: String,
    /// Unique per sender and conversation; a repeat returns the stored message.
    pub idempotency_key: Option<String>,
    /// The attachment it carries, already checked against the blob store:
    /// the send claims its pending row in the same transaction, or fails.
    pub attachment: Option<Box<Attachment>>,
    /// The scheduled entry this send delivers: the send turns it `sent` in
    /// the same transaction, or writes nothing when it is no longer
    /// pending under this claim (`Conflict`).
    pub scheduled: Option<ScheduledClaim>,
    /// The send time.
    pub at: DateTime<Utc>,
}

impl NewMessage {
    /// The message this send stores, numbered `seq`.
    #[must_use]
    pub fn into_message(self, seq: i64) -> Message {
        Message {
            id: self.id,
            conversation_id: self.conversation_id,
            seq,
            sender_id: self.sender_id,
            encrypted_content: self.encrypted_content,
            nonce: self.nonce,
            message_type: self.message_type,
            created_at: self.at,
            edited_at: None,
            deleted_at: None,
            attachment: self.attachment,
        }
    }
}

impl NewMessage {
    /// The answer to this send when its idempotency key already stored
    /// `stored`: the stored message, unless the key is being reused for a
    /// different one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when the content differs from the stored
    /// message's (still unedited) content.
    pub fn replay(&self, stored: Message) -> Result<SendOutcome, StoreError> {
        let unchanged = stored.edited_at.is_none() && stored.deleted_at.is_none();
        if unchanged
            && (stored.encrypted_content != self.encrypted_content
                || stored.nonce != self.nonce
                || stored.message_type != self.message_type)
        {
            return Err(StoreError::Conflict(
                "idempotency key already used for a different message".into(),
            ));
        }
        Ok(SendOutcome::Duplicate(stored))
    }
}

/// The result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// A new message with its `message.new` event.
    Created(Committed<Message>),
    /// The message this idempotency key already stored; nothing was written.
    Duplicate(Message),
}

/// Replaces a message's content; only its sender, while a member, may.
#[derive(Debug, Clone)]
pub struct EditMessage {
    /// The conversation the message belongs to.
    pub conversation_id: Uuid,
    /// The message.
    pub message_id: Uuid,
    /// Who edits; must be the sender.
    pub editor: Uuid,
    /// New ciphertext.
    pub encrypted_content: String,
    /// New nonce.
    pub nonce: String,
    /// The edit time.
    pub at: DateTime<Utc>,
}

/// Turns a message into a tombstone; its sender or a moderator may.
#[derive(Debug, Clone)]
pub struct DeleteMessage {
    /// The conversation the message belongs to.
    pub conversation_id: Uuid,
    /// The message.
    pub message_id: Uuid,
    /// Who deletes.
    pub by: Uuid,
    /// The deletion time.
    pub at: DateTime<Utc>,
}

/// Which messages of a conversation to read, by `seq`, both bounds exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRange {
    /// Only messages after this `seq`; the page starts right after it.
    pub after_seq: Option<i64>,
    /// Only messages before this `seq`; without `after_seq` the page ends right
    /// before it.
    pub before_seq: Option<i64>,
    /// The most messages to return.
    pub limit: u32,
}

/// Conversations, members, messages and the event log.
///
/// # Errors
///
/// Every method fails with [`StoreError::Backend`] when the backend does;
/// writes fail with [`StoreError::Rejected`] when their condition does not
/// hold at commit time, and change nothing then.
#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates a conversation, or finds the direct one between two people.
    async fn create_conversation(
        &self,
        command: CreateConversation,
    ) -> Result<CreateOutcome, StoreError>;

    /// A conversation with its members.
    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError>;

    /// The members of a conversation (empty if it does not exist).
    async fn members(&self, conversation_id: Uuid) -> Result<Vec<Member>, StoreError>;

    /// A user's role in a conversation, `None` if not a member.
    async fn role(&self, conversation_id: Uuid, user_id: Uuid) -> Result<Option<Role>, StoreError>;

    /// Every conversation of the user with its `last_seq`, at most `limit`.
    async fn positions_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<(Uuid, i64)>, StoreError>;

    /// The `last_seq` of each of `conversations` that exists, in one
    /// query whatever their number.
    async fn last_seqs(&self, conversations: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError>;

    /// The user's conversations, newest activity first, with last message,
    /// unread and member counts, in a constant number of queries.
    async fn conversations_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError>;

    /// Appends a message unless its idempotency key already stored one.
    async fn send(&self, command: NewMessage) -> Result<SendOutcome, StoreError>;

    /// Appends several messages, in order, each with its own outcome, as
    /// if sent one after the other; a store may commit them together. The
    /// default sends them one at a time.
    async fn send_batch(&self, commands: Vec<NewMessage>) -> Vec<Result<SendOutcome, StoreError>> {
        send_each(self, commands).await
    }

    /// Edits a message.
    async fn edit(&self, command: EditMessage) -> Result<Committed<Message>, StoreError>;

    /// Deletes a message, keeping a tombstone.
    async fn delete(&self, command: DeleteMessage) -> Result<Committed<Message>, StoreError>;

    /// Advances a member's read position; `None` when it was already there.
    async fn mark_read(
        &self,
        conversation_id: Uuid,
        user_id: Uuid,
        seq: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError>;

    /// Adds a member to a group; `by` must moderate it.
    async fn add_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<Member>, StoreError>;

    /// Sets a non-owner member's role to `admin` or `member`; `by` must moderate.
    async fn change_role(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError>;

    /// Removes a member from a group: a moderator removes a non-owner, or a
    /// member leaves. An owner who leaves hands ownership to the longest-standing
    /// admin, else the longest-standing member.
    async fn remove_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError>;

    /// One message by id, from any conversation.
    async fn message(&self, id: Uuid) -> Result<Option<Message>, StoreError>;

    /// A page of a conversation's messages, ascending by `seq`.
    async fn messages(
        &self,
        conversation_id: Uuid,
        range: MessageRange,
    ) -> Result<Vec<Message>, StoreError>;

    /// Events after `after_seq`, ascending and gap-free, at most `limit`.
    async fn events(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;

    /// The events of several conversations, each after its own seq, by
    /// conversation id and then seq, at most `limit` in all: a sync's read,
    /// one query for the SQL stores whatever the number of conversations
    /// (callers pass at most [`EVENTS_OF_MAX`]).
    async fn events_of(&self, from: &[(Uuid, i64)], limit: u32) -> Result<Vec<Event>, StoreError> {
        let mut from = from.to_vec();
        from.sort_unstable();
        let mut found = Vec::new();
        for (conversation, after) in from {
            let left = limit.saturating_sub(u32::try_from(found.len()).unwrap_or(u32::MAX));
            if left == 0 {
                break;
            }
            found.extend(self.events(conversation, after, left).await?);
        }
        Ok(found)
    }

    /// Writes the row of an upload URL about to be issued. The uploader
    /// must be a member of the conversation (`Rejected(NotMember)`).
    async fn create_attachment(
        &self,
        attachment: NewAttachment,
    ) -> Result<StoredAttachment, StoreError>;

    /// One attachment by id, tombstone or not.
    async fn attachment(&self, id: Uuid) -> Result<Option<StoredAttachment>, StoreError>;

    /// The attachments of these object keys, in one query.
    async fn attachments_by_keys(
        &self,
        keys: &[String],
    ) -> Result<Vec<StoredAttachment>, StoreError>;

    /// Pending attachments whose upload URL expired before `expired_before`,
    /// by id after `after`, at most `limit`: the sweeper's round.
    async fn pending_attachments(
        &self,
        expired_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<StoredAttachment>, StoreError>;

    /// Tombstones a pending attachment and, in the same transaction, owes
    /// its object a deletion and writes the audit entry. `NotFound` when it
    /// is missing or already deleted, `Conflict` once it was sent (its
    /// message is what to delete), `Rejected` unless `by` uploaded it or
    /// moderates its conversation.
    async fn delete_attachment(
        &self,
        command: DeleteAttachment,
    ) -> Result<StoredAttachment, StoreError>;

    /// Records an object removed that no live row claimed.
    async fn record_removal(&self, entry: AuditEntry) -> Result<(), StoreError>;

    /// Every audit entry of one object, oldest first.
    async fn audit(&self, s3_key: &str) -> Result<Vec<AuditEntry>, StoreError>;

    /// Takes up to `limit` deletions due at `now` that no other node holds,
    /// and holds them until `lease_until`.
    async fn claim_deletions(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BlobDeletion>, StoreError>;

    /// A deletion is done.
    async fn finish_deletion(&self, id: Uuid) -> Result<(), StoreError>;

    /// A deletion failed; it is due again at `retry_at`.
    async fn defer_deletion(&self, id: Uuid, retry_at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Deletions still owed.
    async fn deletions_owed(&self) -> Result<u64, StoreError>;

    /// Schedules a message. The sender must be a member
    /// (`Rejected(NotMember)`); past a cap nothing is written and the
    /// answer says which cap and when the user's next entry is due.
    async fn schedule(
        &self,
        entry: NewScheduled,
        caps: ScheduleCaps,
    ) -> Result<ScheduleOutcome, StoreError>;

    /// One entry by id.
    async fn scheduled(&self, id: Uuid) -> Result<Option<ScheduledMessage>, StoreError>;

    /// A sender's pending entries, and those that failed since
    /// `failed_since`, in one conversation or all, by time due.
    async fn scheduled_for(
        &self,
        sender: Uuid,
        conversation: Option<Uuid>,
        failed_since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>, StoreError>;

    /// Changes a pending entry of `by`'s.
    async fn change_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        change: ScheduledChange,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError>;

    /// Cancels a pending entry of `by`'s.
    async fn cancel_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError>;

    /// When the earliest pending entry no node holds at `now` is due.
    async fn next_scheduled(&self, now: DateTime<Utc>)
    -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Takes up to `limit` pending entries due by `now` that no node holds,
    /// earliest first, and holds them until `lease_until`.
    async fn claim_scheduled(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Lets a held entry go, not to be taken again before `retry_at`
    /// (nothing when the claim is no longer the entry's).
    async fn release_scheduled(
        &self,
        claim: ScheduledClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Fails a held entry; `None` when it was no longer pending under
    /// this claim.
    async fn fail_scheduled(
        &self,
        claim: ScheduledClaim,
        reason: ScheduledFailure,
        at: DateTime<Utc>,
    ) -> Result<Option<ScheduledMessage>, StoreError>;

    /// Removes up to `limit` entries sent, cancelled or failed before
    /// `before`; returns how many.
    async fn purge_scheduled(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Entries pending in all.
    async fn scheduled_pending(&self) -> Result<u64, StoreError>;
}

/// The most conversations one [`Store::events_of`] is asked about.
pub const EVENTS_OF_MAX: usize = 256;

/// Sends `commands` one after the other through `store.send`: the default
/// [`Store::send_batch`], for stores (and wrappers) that add nothing to it.
pub async fn send_each<S: Store + ?Sized>(
    store: &S,
    commands: Vec<NewMessage>,
) -> Vec<Result<SendOutcome, StoreError>> {
    let mut outcomes = Vec::with_capacity(commands.len());
    for command in commands {
        outcomes.push(store.send(command).await);
    }
    outcomes
}
