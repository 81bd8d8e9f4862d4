//! An in-memory [`Store`], for the simulation and for tests that must not
//! touch a disk.
//!
//! It keeps the same contract as the SQL stores (the suite in
//! `storage/tests/it` runs against all three): every write re-checks its
//! condition and takes its `seq`s under one lock, which plays the part of
//! the SQL transaction. Nothing in it awaits, so a call never yields to the
//! runtime halfway through: under the simulation's paused clock a store call
//! takes no time unless a fault wrapper makes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use switchboard_protocol::{
    Conversation, ConversationCreated, ConversationKind, ConversationSummary, Event, Member,
    MemberJoined, MemberLeft, MemberRoleChanged, Message, MessageDeleted, MessageEdited,
    MessageRead, Role, ScheduledFailure, ScheduledMessage, ScheduledStatus,
};
use uuid::Uuid;

use crate::attachment::{
    AttachmentState, AuditEntry, BlobDeletion, DeleteAttachment, DeletionReason, NewAttachment,
    StoredAttachment,
};
use crate::scheduled::{
    Claimed, NewScheduled, ScheduleCaps, ScheduleOutcome, ScheduledChange, ScheduledClaim,
    check_pending, failed, not_pending, to_micros,
};
use crate::store::{
    Committed, CreateConversation, CreateOutcome, DeleteMessage, EditMessage, MessageRange,
    NewMessage, SendOutcome, Store,
};
use crate::{Rejection, StoreError};

/// Conversations, members, messages and the event log, in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Posts, likes and follows (`memory_feed.rs`).
    pub(crate) feed: Mutex<crate::memory_feed::FeedState>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    conversations: HashMap<Uuid, Row>,
    /// Direct conversations by their pair key.
    direct: HashMap<String, Uuid>,
    /// Every message by id, with the conversation it is in.
    messages: HashMap<Uuid, Message>,
    /// Messages by `(conversation, sender, idempotency key)`.
    keys: HashMap<(Uuid, Uuid, String), Uuid>,
    /// Attachments by id, and their ids by object key.
    attachments: BTreeMap<Uuid, StoredAttachment>,
    attachment_keys: HashMap<String, Uuid>,
    /// Deletions owed, by attachment id.
    deletions: BTreeMap<Uuid, Deletion>,
    /// The audit log, oldest first.
    audit: Vec<AuditEntry>,
    /// Scheduled messages by id, and their ids by key.
    scheduled: BTreeMap<Uuid, Scheduled>,
    scheduled_keys: HashMap<(Uuid, Uuid, String), Uuid>,
}

/// A scheduled message with what only the store keeps of it.
#[derive(Debug, Clone)]
struct Scheduled {
    entry: ScheduledMessage,
    key: Option<String>,
    /// Held by a node until then.
    leased_until: Option<DateTime<Utc>>,
    /// When it was sent, cancelled or failed.
    finished_at: Option<DateTime<Utc>>,
}

impl Scheduled {
    /// Whether `claim` still holds this entry.
    fn holds(&self, claim: ScheduledClaim) -> bool {
        self.entry.status == ScheduledStatus::Pending && self.leased_until == Some(claim.lease)
    }
}

/// A deletion owed to the blob store.
#[derive(Debug)]
struct Deletion {
    s3_key: String,
    attempts: u32,
    due: DateTime<Utc>,
    /// Held by a node until then.
    leased_until: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Row {
    kind: ConversationKind,
    title: Option<String>,
    last_seq: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// In `(joined_at, user_id)` order, the order every read returns.
    members: Vec<Member>,
    /// Message ids by `seq`.
    messages: BTreeMap<i64, Uuid>,
    /// The log; `events[i].seq() == i + 1`.
    events: Vec<Event>,
}

impl Row {
    fn member(&self, user: Uuid) -> Option<&Member> {
        self.members.iter().find(|m| m.user_id == user)
    }

    fn member_mut(&mut self, user: Uuid) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.user_id == user)
    }

    fn moderates(&self, user: Uuid) -> bool {
        self.member(user).is_some_and(|m| m.role.moderates())
    }

    /// Takes the next `seq` and appends the event it numbers.
    fn append(&mut self, at: DateTime<Utc>, event: impl FnOnce(i64) -> Event) -> Event {
        self.last_seq += 1;
        self.updated_at = at;
        let event = event(self.last_seq);
        self.events.push(event.clone());
        event
    }

    fn conversation(&self, id: Uuid) -> Conversation {
        Conversation {
            id,
            kind: self.kind,
            title: self.title.clone(),
            members: self.members.clone(),
            last_seq: self.last_seq,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-written state behind
        // (every write checks before it changes anything), so carry on.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Owes object `s3_key` (of attachment or upload `id`) a deletion and
    /// audits it.
    pub(crate) fn owe_deletion(
        &mut self,
        id: Uuid,
        s3_key: String,
        actor: Option<Uuid>,
        reason: DeletionReason,
        at: DateTime<Utc>,
    ) {
        self.deletions.entry(id).or_insert(Deletion {
            s3_key: s3_key.clone(),
            attempts: 0,
            due: at,
            leased_until: None,
        });
        self.audit.push(AuditEntry {
            attachment_id: Some(id),
            s3_key,
            actor,
            reason,
            at,
        });
    }

    /// Tombstones an attachment, owes its object a deletion and audits it:
    /// one step, as one transaction is in the SQL stores.
    fn tombstone(
        &mut self,
        id: Uuid,
        actor: Option<Uuid>,
        reason: DeletionReason,
        at: DateTime<Utc>,
    ) -> Option<StoredAttachment> {
        let stored = self.attachments.get_mut(&id)?;
        stored.state = AttachmentState::Deleted;
        stored.deleted_at = Some(at);
        let s3_key = stored.attachment.s3_key.clone();
        let tombstone = stored.clone();
        self.owe_deletion(id, s3_key, actor, reason, at);
        Some(tombstone)
    }

    fn row(&self, id: Uuid) -> Result<&Row, StoreError> {
        self.conversations.get(&id).ok_or(StoreError::NotFound)
    }

    /// A message and its conversation's row, both to change.
    fn message_in(
        &mut self,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> Result<(&mut Message, &mut Row), StoreError> {
        let message = self
            .messages
            .get_mut(&message_id)
            .ok_or(StoreError::NotFound)?;
        let row = self
            .conversations
            .get_mut(&conversation_id)
            .ok_or(StoreError::NotFound)?;
        Ok((message, row))
    }

    /// Why a write on a message by `user` matched nothing, as the SQL
    /// stores explain it.
    fn why_not(&self, conversation_id: Uuid, message_id: Uuid, user: Uuid) -> StoreError {
        let member = self
            .conversations
            .get(&conversation_id)
            .is_some_and(|c| c.member(user).is_some());
        if !member {
            return StoreError::Rejected(Rejection::NotMember);
        }
        match self
            .messages
            .get(&message_id)
            .filter(|m| m.conversation_id == conversation_id)
        {
            None => StoreError::NotFound,
            Some(m) if m.deleted_at.is_some() => StoreError::Rejected(Rejection::Deleted),
            Some(_) => StoreError::Rejected(Rejection::NotPermitted),
        }
    }

    fn summary(&self, id: Uuid, row: &Row, member: &Member) -> ConversationSummary {
        let messages = row.messages.values().filter_map(|m| self.messages.get(m));
        let unread = messages
            .filter(|m| {
                m.seq > member.last_read_seq
                    && m.sender_id != member.user_id
                    && m.deleted_at.is_none()
            })
            .count();
        ConversationSummary {
            id,
            kind: row.kind,
            title: row.title.clone(),
            last_seq: row.last_seq,
            created_at: row.created_at,
            updated_at: row.updated_at,
            role: member.role,
            last_read_seq: member.last_read_seq,
            last_message: row
                .messages
                .values()
                .next_back()
                .and_then(|m| self.messages.get(m))
                .cloned(),
            unread_count: i64::try_from(unread).unwrap_or(i64::MAX),
            member_count: i64::try_from(row.members.len()).unwrap_or(i64::MAX),
        }
    }
}

fn limit(limit: u32) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_conversation(
        &self,
        command: CreateConversation,
    ) -> Result<CreateOutcome, StoreError> {
        let key = command.pair_key()?;
        let mut state = self.state();
        if let Some(existing) = key.as_ref().and_then(|k| state.direct.get(k)) {
            let existing = *existing;
            return Ok(CreateOutcome::Existing(
                state.row(existing)?.conversation(existing),
            ));
        }
        if state.conversations.contains_key(&command.id) {
            return Err(StoreError::Conflict("conversation id already used".into()));
        }
        let mut row = Row {
            kind: command.kind,
            title: command.title.clone(),
            last_seq: 0,
            created_at: command.at,
            updated_at: command.at,
            members: command.initial_members(),
            messages: BTreeMap::new(),
            events: Vec::new(),
        };
        let mut conversation = row.conversation(command.id);
        conversation.last_seq = 1;
        let event = row.append(command.at, |seq| {
            Event::ConversationCreated(ConversationCreated {
                conversation_id: command.id,
                seq,
                conversation: conversation.clone(),
            })
        });
        state.conversations.insert(command.id, row);
        if let Some(key) = key {
            state.direct.insert(key, command.id);
        }
        Ok(CreateOutcome::Created(Committed {
            value: conversation,
            events: vec![event],
        }))
    }

    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        Ok(self
            .state()
            .conversations
            .get(&id)
            .map(|r| r.conversation(id)))
    }

    async fn members(&self, conversation_id: Uuid) -> Result<Vec<Member>, StoreError> {
        Ok(self
            .state()
            .conversations
            .get(&conversation_id)
            .map(|r| r.members.clone())
            .unwrap_or_default())
    }

    async fn role(&self, conversation_id: Uuid, user_id: Uuid) -> Result<Option<Role>, StoreError> {
        Ok(self
            .state()
            .conversations
            .get(&conversation_id)
            .and_then(|r| r.member(user_id))
            .map(|m| m.role))
    }

    async fn positions_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let state = self.state();
        let mut positions: Vec<(Uuid, i64)> = state
            .conversations
            .iter()
            .filter(|(_, r)| r.member(user_id).is_some())
            .map(|(id, r)| (*id, r.last_seq))
            .collect();
        positions.sort_unstable();
        positions.truncate(self::limit(limit));
        Ok(positions)
    }

    async fn last_seqs(&self, conversations: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let state = self.state();
        Ok(conversations
            .iter()
            .filter_map(|id| Some((*id, state.conversations.get(id)?.last_seq)))
            .collect())
    }

    async fn conversations_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let state = self.state();
        let mut list: Vec<ConversationSummary> = state
            .conversations
            .iter()
            .filter_map(|(id, row)| Some(state.summary(*id, row, row.member(user_id)?)))
            .collect();
        list.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.id.cmp(&b.id)));
        list.truncate(self::limit(limit));
        Ok(list)
    }

    async fn send(&self, command: NewMessage) -> Result<SendOutcome, StoreError> {
        let mut state = self.state();
        if let Some(key) = &command.idempotency_key {
            let stored = state
                .keys
                .get(&(command.conversation_id, command.sender_id, key.clone()))
                .and_then(|id| state.messages.get(id));
            if let Some(stored) = stored {
                return command.replay(stored.clone());
            }
        }
        let member = state
            .conversations
            .get(&command.conversation_id)
            .is_some_and(|r| r.member(command.sender_id).is_some());
        if !member {
            return Err(StoreError::Rejected(Rejection::NotMember));
        }
        if state.messages.contains_key(&command.id) {
            return Err(StoreError::Conflict("message id already used".into()));
        }
        if let Some(claim) = command.scheduled
            && !state
                .scheduled
                .get(&claim.id)
                .is_some_and(|s| s.holds(claim))
        {
            return Err(not_pending());
        }
        if let Some(attachment) = &command.attachment {
            let stored = state
                .attachments
                .get_mut(&attachment.id)
                .ok_or(StoreError::NotFound)?;
            stored.claimable_by(command.conversation_id, command.sender_id)?;
            stored.state = AttachmentState::Attached;
            stored.message_id = Some(command.id);
            stored.attachment.duration_ms = attachment.duration_ms;
        }
        if let Some(scheduled) = command
            .scheduled
            .and_then(|claim| state.scheduled.get_mut(&claim.id))
        {
            scheduled.entry.status = ScheduledStatus::Sent;
            scheduled.entry.message_id = Some(command.id);
            scheduled.finished_at = Some(command.at);
            scheduled.leased_until = None;
        }
        let row = state
            .conversations
            .get_mut(&command.conversation_id)
            .ok_or(StoreError::NotFound)?;
        let (at, key) = (command.at, command.idempotency_key.clone());
        let mut message = command.into_message(0);
        let event = row.append(at, |seq| {
            message.seq = seq;
            Event::MessageNew(message.clone())
        });
        row.messages.insert(message.seq, message.id);
        if let Some(key) = key {
            state.keys.insert(
                (message.conversation_id, message.sender_id, key),
                message.id,
            );
        }
        state.messages.insert(message.id, message.clone());
        Ok(SendOutcome::Created(Committed {
            value: message,
            events: vec![event],
        }))
    }

    async fn edit(&self, command: EditMessage) -> Result<Committed<Message>, StoreError> {
        let mut state = self.state();
        let allowed = state.messages.get(&command.message_id).is_some_and(|m| {
            m.conversation_id == command.conversation_id
                && m.sender_id == command.editor
                && m.deleted_at.is_none()
        }) && state
            .conversations
            .get(&command.conversation_id)
            .is_some_and(|r| r.member(command.editor).is_some());
        if !allowed {
            return Err(state.why_not(command.conversation_id, command.message_id, command.editor));
        }
        let (message, row) = state.message_in(command.conversation_id, command.message_id)?;
        message.encrypted_content = command.encrypted_content;
        message.nonce = command.nonce;
        message.edited_at = Some(command.at);
        let event = row.append(command.at, |seq| {
            Event::MessageEdited(MessageEdited {
                conversation_id: command.conversation_id,
                seq,
                message_id: message.id,
                message_seq: message.seq,
                sender_id: message.sender_id,
                encrypted_content: message.encrypted_content.clone(),
                nonce: message.nonce.clone(),
                edited_at: command.at,
            })
        });
        Ok(Committed {
            value: message.clone(),
            events: vec![event],
        })
    }

    async fn delete(&self, command: DeleteMessage) -> Result<Committed<Message>, StoreError> {
        let mut state = self.state();
        let allowed = state.messages.get(&command.message_id).is_some_and(|m| {
            m.conversation_id == command.conversation_id
                && m.deleted_at.is_none()
                && state
                    .conversations
                    .get(&command.conversation_id)
                    .and_then(|r| r.member(command.by))
                    .is_some_and(|by| by.role.moderates() || m.sender_id == command.by)
        });
        if !allowed {
            return Err(state.why_not(command.conversation_id, command.message_id, command.by));
        }
        let (message, row) = state.message_in(command.conversation_id, command.message_id)?;
        message.encrypted_content.clear();
        message.nonce.clear();
        message.deleted_at = Some(command.at);
        let attachment = message.attachment.take();
        let event = row.append(command.at, |seq| {
            Event::MessageDeleted(MessageDeleted {
                conversation_id: command.conversation_id,
                seq,
                message_id: message.id,
                message_seq: message.seq,
                deleted_by: command.by,
                deleted_at: command.at,
            })
        });
        let value = message.clone();
        if let Some(attachment) = attachment {
            state.tombstone(
                attachment.id,
                Some(command.by),
                DeletionReason::MessageDeleted,
                command.at,
            );
        }
        Ok(Committed {
            value,
            events: vec![event],
        })
    }

    async fn mark_read(
        &self,
        conversation_id: Uuid,
        user_id: Uuid,
        seq: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        let mut state = self.state();
        let Some(row) = state.conversations.get_mut(&conversation_id) else {
            return Err(StoreError::Rejected(Rejection::NotMember));
        };
        let last_seq = row.last_seq;
        let Some(member) = row.member_mut(user_id) else {
            return Err(StoreError::Rejected(Rejection::NotMember));
        };
        if member.last_read_seq >= seq || seq > last_seq {
            return Ok(None);
        }
        member.last_read_seq = seq;
        Ok(Some(row.append(at, |event_seq| {
            Event::MessageRead(MessageRead {
                conversation_id,
                seq: event_seq,
                user_id,
                read_seq: seq,
            })
        })))
    }

    async fn add_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<Member>, StoreError> {
        if role == Role::Owner {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        }
        let mut state = self.state();
        let Some(row) = state
            .conversations
            .get_mut(&conversation_id)
            .filter(|r| r.kind == ConversationKind::Group && r.moderates(by))
        else {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        };
        if row.member(user_id).is_some() {
            return Err(StoreError::Conflict("already a member".into()));
        }
        let member = Member {
            user_id,
            role,
            last_read_seq: row.last_seq,
            joined_at: at,
        };
        let place = row
            .members
            .partition_point(|m| (m.joined_at, m.user_id) < (at, user_id));
        row.members.insert(place, member.clone());
        let event = row.append(at, |seq| {
            Event::MemberJoined(MemberJoined {
                conversation_id,
                seq,
                user_id,
                role,
                added_by: by,
            })
        });
        Ok(Committed {
            value: member,
            events: vec![event],
        })
    }

    async fn change_role(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError> {
        if role == Role::Owner {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        }
        let mut state = self.state();
        let Some(row) = state
            .conversations
            .get_mut(&conversation_id)
            .filter(|r| r.moderates(by))
        else {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        };
        match row.member_mut(user_id) {
            Some(member) if member.role != Role::Owner && member.role != role => {
                member.role = role;
            }
            _ => return Err(StoreError::Rejected(Rejection::NotPermitted)),
        }
        let event = row.append(at, |seq| {
            Event::MemberRoleChanged(MemberRoleChanged {
                conversation_id,
                seq,
                user_id,
                role,
                changed_by: by,
            })
        });
        Ok(Committed {
            value: (),
            events: vec![event],
        })
    }

    async fn remove_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError> {
        let mut state = self.state();
        let Some(row) = state
            .conversations
            .get_mut(&conversation_id)
            .filter(|r| r.kind == ConversationKind::Group)
        else {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        };
        let removable = row
            .member(user_id)
            .is_some_and(|m| user_id == by || (m.role != Role::Owner && row.moderates(by)));
        let Some(place) = row
            .members
            .iter()
            .position(|m| m.user_id == user_id)
            .filter(|_| removable)
        else {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        };
        let removed = row.members.remove(place);
        let mut events = vec![row.append(at, |seq| {
            Event::MemberLeft(MemberLeft {
                conversation_id,
                seq,
                user_id,
                removed_by: by,
            })
        })];
        if removed.role == Role::Owner {
            // The longest-standing admin, else the longest-standing member.
            let successor = row
                .members
                .iter_mut()
                .min_by_key(|m| (m.role != Role::Admin, m.joined_at, m.user_id));
            if let Some(successor) = successor {
                successor.role = Role::Owner;
                let successor = successor.user_id;
                events.push(row.append(at, |seq| {
                    Event::MemberRoleChanged(MemberRoleChanged {
                        conversation_id,
                        seq,
                        user_id: successor,
                        role: Role::Owner,
                        changed_by: by,
                    })
                }));
            }
        }
        Ok(Committed { value: (), events })
    }

    async fn message(&self, id: Uuid) -> Result<Option<Message>, StoreError> {
        Ok(self.state().messages.get(&id).cloned())
    }

    async fn messages(
        &self,
        conversation_id: Uuid,
        range: MessageRange,
    ) -> Result<Vec<Message>, StoreError> {
        let state = self.state();
        let Some(row) = state.conversations.get(&conversation_id) else {
            return Ok(Vec::new());
        };
        let after = range.after_seq.unwrap_or(0);
        let before = range.before_seq.unwrap_or(i64::MAX);
        if after.saturating_add(1) >= before {
            return Ok(Vec::new());
        }
        let in_range = row.messages.range(after + 1..before);
        let ids: Vec<Uuid> = if range.after_seq.is_some() {
            in_range
                .take(limit(range.limit))
                .map(|(_, id)| *id)
                .collect()
        } else {
            // The newest page before `before_seq`, returned ascending.
            let mut newest: Vec<Uuid> = in_range
                .rev()
                .take(limit(range.limit))
                .map(|(_, id)| *id)
                .collect();
            newest.reverse();
            newest
        };
        Ok(ids
            .iter()
            .filter_map(|id| state.messages.get(id).cloned())
            .collect())
    }

    async fn events(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let state = self.state();
        let Some(row) = state.conversations.get(&conversation_id) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(after_seq.max(0)).unwrap_or(usize::MAX);
        Ok(row
            .events
            .iter()
            .skip(start)
            .take(self::limit(limit))
            .cloned()
            .collect())
    }

    async fn create_attachment(
        &self,
        attachment: NewAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        let mut state = self.state();
        let member = state
            .conversations
            .get(&attachment.conversation_id)
            .is_some_and(|r| r.member(attachment.uploader_id).is_some());
        if !member {
            return Err(StoreError::Rejected(Rejection::NotMember));
        }
        if state.attachments.contains_key(&attachment.id)
            || state.attachment_keys.contains_key(&attachment.s3_key)
        {
            return Err(StoreError::Conflict("attachment already exists".into()));
        }
        let stored = attachment.into_stored();
        state
            .attachment_keys
            .insert(stored.attachment.s3_key.clone(), stored.attachment.id);
        state
            .attachments
            .insert(stored.attachment.id, stored.clone());
        Ok(stored)
    }

    async fn attachment(&self, id: Uuid) -> Result<Option<StoredAttachment>, StoreError> {
        Ok(self.state().attachments.get(&id).cloned())
    }

    async fn attachments_by_keys(
        &self,
        keys: &[String],
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        let state = self.state();
        Ok(keys
            .iter()
            .filter_map(|key| state.attachment_keys.get(key))
            .filter_map(|id| state.attachments.get(id).cloned())
            .collect())
    }

    async fn pending_attachments(
        &self,
        expired_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        let state = self.state();
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        Ok(state
            .attachments
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, a)| a)
            .filter(|a| a.state == AttachmentState::Pending && a.upload_expires_at < expired_before)
            .take(self::limit(limit))
            .cloned()
            .collect())
    }

    async fn delete_attachment(
        &self,
        command: DeleteAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        let mut state = self.state();
        let stored = state
            .attachments
            .get(&command.id)
            .ok_or(StoreError::NotFound)?;
        let role = command.by.and_then(|by| {
            state
                .conversations
                .get(&stored.conversation_id)
                .and_then(|r| r.member(by))
                .map(|m| m.role)
        });
        stored.deletable_by(command.by, role)?;
        state
            .tombstone(command.id, command.by, command.reason, command.at)
            .ok_or(StoreError::NotFound)
    }

    async fn record_removal(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.state().audit.push(entry);
        Ok(())
    }

    async fn audit(&self, s3_key: &str) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self
            .state()
            .audit
            .iter()
            .filter(|e| e.s3_key == s3_key)
            .cloned()
            .collect())
    }

    async fn claim_deletions(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BlobDeletion>, StoreError> {
        let mut state = self.state();
        let mut due: Vec<(DateTime<Utc>, Uuid)> = state
            .deletions
            .iter()
            .filter(|(_, d)| d.due <= now && d.leased_until.is_none_or(|l| l < now))
            .map(|(id, d)| (d.due, *id))
            .collect();
        due.sort_unstable();
        due.truncate(self::limit(limit));
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| {
                let deletion = state.deletions.get_mut(&id)?;
                deletion.attempts += 1;
                deletion.leased_until = Some(lease_until);
                Some(BlobDeletion {
                    id,
                    s3_key: deletion.s3_key.clone(),
                    attempts: deletion.attempts,
                })
            })
            .collect())
    }

    async fn finish_deletion(&self, id: Uuid) -> Result<(), StoreError> {
        self.state().deletions.remove(&id);
        Ok(())
    }

    async fn defer_deletion(&self, id: Uuid, retry_at: DateTime<Utc>) -> Result<(), StoreError> {
        if let Some(deletion) = self.state().deletions.get_mut(&id) {
            deletion.due = retry_at;
            deletion.leased_until = None;
        }
        Ok(())
    }

    async fn deletions_owed(&self) -> Result<u64, StoreError> {
        Ok(self.state().deletions.len() as u64)
    }

    async fn schedule(
        &self,
        entry: NewScheduled,
        caps: ScheduleCaps,
    ) -> Result<ScheduleOutcome, StoreError> {
        let mut state = self.state();
        if let Some(key) = &entry.idempotency_key
            && let Some(existing) = state
                .scheduled_keys
                .get(&(entry.conversation_id, entry.sender_id, key.clone()))
                .and_then(|id| state.scheduled.get(id))
        {
            return entry.replay(existing.entry.clone());
        }
        let member = state
            .conversations
            .get(&entry.conversation_id)
            .is_some_and(|r| r.member(entry.sender_id).is_some());
        if !member {
            return Err(StoreError::Rejected(Rejection::NotMember));
        }
        let pending = || {
            state
                .scheduled
                .values()
                .filter(|s| s.entry.status == ScheduledStatus::Pending)
        };
        let mine: Vec<&Scheduled> = pending()
            .filter(|s| s.entry.sender_id == entry.sender_id)
            .collect();
        let user = mine.len() as u64 >= u64::from(caps.per_user_max);
        if user || pending().count() as u64 >= caps.total_max {
            let next_due = mine
                .iter()
                .map(|s| s.entry.deliver_at)
                .min()
                .or_else(|| pending().map(|s| s.entry.deliver_at).min());
            return Ok(ScheduleOutcome::Full { user, next_due });
        }
        let key = entry.idempotency_key.clone();
        let stored = entry.into_entry();
        if let Some(key) = &key {
            state.scheduled_keys.insert(
                (stored.conversation_id, stored.sender_id, key.clone()),
                stored.id,
            );
        }
        state.scheduled.insert(
            stored.id,
            Scheduled {
                entry: stored.clone(),
                key,
                leased_until: None,
                finished_at: None,
            },
        );
        Ok(ScheduleOutcome::Created(stored))
    }

    async fn scheduled(&self, id: Uuid) -> Result<Option<ScheduledMessage>, StoreError> {
        Ok(self.state().scheduled.get(&id).map(|s| s.entry.clone()))
    }

    async fn scheduled_for(
        &self,
        sender: Uuid,
        conversation: Option<Uuid>,
        failed_since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>, StoreError> {
        let state = self.state();
        let mut found: Vec<ScheduledMessage> = state
            .scheduled
            .values()
            .filter(|s| {
                s.entry.sender_id == sender
                    && conversation.is_none_or(|c| s.entry.conversation_id == c)
                    && match s.entry.status {
                        ScheduledStatus::Pending => true,
                        ScheduledStatus::Failed => {
                            s.finished_at.is_some_and(|at| at >= failed_since)
                        }
                        _ => false,
                    }
            })
            .map(|s| s.entry.clone())
            .collect();
        found.sort_by_key(|e| (e.deliver_at, e.id));
        found.truncate(self::limit(limit));
        Ok(found)
    }

    async fn change_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        change: ScheduledChange,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        let _ = at;
        let mut state = self.state();
        let scheduled = state.scheduled.get_mut(&id).ok_or(StoreError::NotFound)?;
        check_pending(&scheduled.entry, by)?;
        // A changed entry is a new one to deliver: whoever held it lets it go.
        scheduled.leased_until = None;
        change.apply(&mut scheduled.entry);
        Ok(scheduled.entry.clone())
    }

    async fn cancel_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        let mut state = self.state();
        let scheduled = state.scheduled.get_mut(&id).ok_or(StoreError::NotFound)?;
        check_pending(&scheduled.entry, by)?;
        scheduled.entry.status = ScheduledStatus::Cancelled;
        scheduled.finished_at = Some(at);
        Ok(scheduled.entry.clone())
    }

    async fn next_scheduled(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .state()
            .scheduled
            .values()
            .filter(|s| {
                s.entry.status == ScheduledStatus::Pending && s.leased_until.is_none_or(|l| l < now)
            })
            .map(|s| s.entry.deliver_at)
            .min())
    }

    async fn claim_scheduled(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let lease = to_micros(lease_until);
        let mut state = self.state();
        let mut due: Vec<(DateTime<Utc>, Uuid)> = state
            .scheduled
            .values()
            .filter(|s| {
                s.entry.status == ScheduledStatus::Pending
                    && s.entry.deliver_at <= now
                    && s.leased_until.is_none_or(|l| l < now)
            })
            .map(|s| (s.entry.deliver_at, s.entry.id))
            .collect();
        due.sort_unstable();
        due.truncate(self::limit(limit));
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| {
                let scheduled = state.scheduled.get_mut(&id)?;
                scheduled.leased_until = Some(lease);
                Some(Claimed {
                    entry: scheduled.entry.clone(),
                    claim: ScheduledClaim { id, lease },
                })
            })
            .collect())
    }

    async fn release_scheduled(
        &self,
        claim: ScheduledClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(scheduled) = self.state().scheduled.get_mut(&claim.id)
            && scheduled.holds(claim)
        {
            scheduled.leased_until = Some(to_micros(retry_at));
        }
        Ok(())
    }

    async fn fail_scheduled(
        &self,
        claim: ScheduledClaim,
        reason: ScheduledFailure,
        at: DateTime<Utc>,
    ) -> Result<Option<ScheduledMessage>, StoreError> {
        let mut state = self.state();
        let Some(scheduled) = state
            .scheduled
            .get_mut(&claim.id)
            .filter(|s| s.holds(claim))
        else {
            return Ok(None);
        };
        scheduled.entry = failed(scheduled.entry.clone(), reason);
        scheduled.finished_at = Some(at);
        scheduled.leased_until = None;
        Ok(Some(scheduled.entry.clone()))
    }

    async fn purge_scheduled(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut state = self.state();
        let gone: Vec<Uuid> = state
            .scheduled
            .values()
            .filter(|s| s.finished_at.is_some_and(|at| at < before))
            .map(|s| s.entry.id)
            .take(self::limit(limit))
            .collect();
        for id in &gone {
            if let Some(scheduled) = state.scheduled.remove(id)
                && let Some(key) = scheduled.key
            {
                state.scheduled_keys.remove(&(
                    scheduled.entry.conversation_id,
                    scheduled.entry.sender_id,
                    key,
                ));
            }
        }
        Ok(gone.len() as u64)
    }

    async fn scheduled_pending(&self) -> Result<u64, StoreError> {
        Ok(self
            .state()
            .scheduled
            .values()
            .filter(|s| s.entry.status == ScheduledStatus::Pending)
            .count() as u64)
    }
}
