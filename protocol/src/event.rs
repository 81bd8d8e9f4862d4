//! Events: what happened in a conversation, as delivered over WebSocket and the
//! bus and as stored in the conversation's log.
//!
//! Serialized as `{"type":"message.new","data":{...}}`. Every `data` carries
//! `conversation_id` and `seq`, the event's position in the conversation log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Conversation, Message, Role};

/// One entry of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "conversation.created")]
    ConversationCreated(ConversationCreated),
    #[serde(rename = "message.new")]
    MessageNew(Message),
    #[serde(rename = "message.edited")]
    MessageEdited(MessageEdited),
    #[serde(rename = "message.deleted")]
    MessageDeleted(MessageDeleted),
    #[serde(rename = "message.read")]
    MessageRead(MessageRead),
    #[serde(rename = "member.joined")]
    MemberJoined(MemberJoined),
    #[serde(rename = "member.left")]
    MemberLeft(MemberLeft),
    #[serde(rename = "member.role_changed")]
    MemberRoleChanged(MemberRoleChanged),
}

impl Event {
    /// The conversation whose log holds this event.
    #[must_use]
    pub fn conversation_id(&self) -> Uuid {
        match self {
            Self::ConversationCreated(e) => e.conversation_id,
            Self::MessageNew(m) => m.conversation_id,
            Self::MessageEdited(e) => e.conversation_id,
            Self::MessageDeleted(e) => e.conversation_id,
            Self::MessageRead(e) => e.conversation_id,
            Self::MemberJoined(e) => e.conversation_id,
            Self::MemberLeft(e) => e.conversation_id,
            Self::MemberRoleChanged(e) => e.conversation_id,
        }
    }

    /// The event's gap-free position in its conversation's log.
    #[must_use]
    pub fn seq(&self) -> i64 {
        match self {
            Self::ConversationCreated(e) => e.seq,
            Self::MessageNew(m) => m.seq,
            Self::MessageEdited(e) => e.seq,
            Self::MessageDeleted(e) => e.seq,
            Self::MessageRead(e) => e.seq,
            Self::MemberJoined(e) => e.seq,
            Self::MemberLeft(e) => e.seq,
            Self::MemberRoleChanged(e) => e.seq,
        }
    }

    /// The `type` tag, as on the wire.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConversationCreated(_) => "conversation.created",
            Self::MessageNew(_) => "message.new",
            Self::MessageEdited(_) => "message.edited",
            Self::MessageDeleted(_) => "message.deleted",
            Self::MessageRead(_) => "message.read",
            Self::MemberJoined(_) => "member.joined",
            Self::MemberLeft(_) => "member.left",
            Self::MemberRoleChanged(_) => "member.role_changed",
        }
    }
}

/// The first event of every conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationCreated {
    pub conversation_id: Uuid,
    pub seq: i64,
    /// The conversation as created, with its first members.
    pub conversation: Conversation,
}

/// A message's content was replaced by its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEdited {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub message_id: Uuid,
    /// The `seq` of the edited message.
    pub message_seq: i64,
    pub sender_id: Uuid,
    pub encrypted_content: String,
    pub nonce: String,
    pub edited_at: DateTime<Utc>,
}

/// A message became a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub message_id: Uuid,
    /// The `seq` of the deleted message.
    pub message_seq: i64,
    /// The sender, or the admin or owner who removed it.
    pub deleted_by: Uuid,
    pub deleted_at: DateTime<Utc>,
}

/// A member's read position advanced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRead {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub user_id: Uuid,
    /// Everything up to and including this `seq` is read.
    pub read_seq: i64,
}

/// Someone was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJoined {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub user_id: Uuid,
    pub role: Role,
    pub added_by: Uuid,
}

/// Someone left or was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLeft {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub user_id: Uuid,
    /// The member themself when they left, otherwise the moderator.
    pub removed_by: Uuid,
}

/// Someone's role changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRoleChanged {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub user_id: Uuid,
    pub role: Role,
    pub changed_by: Uuid,
}
