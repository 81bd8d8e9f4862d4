//! Request and page bodies of the HTTP API.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ConversationKind, Event, Message, Role};

/// `POST /conversations`. The caller becomes the owner and need not be listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConversation {
    /// Direct (exactly one other member) or group.
    pub kind: ConversationKind,
    /// Optional title, groups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The other members.
    pub member_ids: Vec<Uuid>,
}

/// `POST /messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Where to send.
    pub conversation_id: Uuid,
    /// Base64 ciphertext.
    pub encrypted_content: String,
    /// Base64 nonce.
    pub nonce: String,
    /// Application-defined type such as `text`.
    pub message_type: String,
    /// Makes retries safe: a repeat with the same key answers the stored message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `PATCH /messages/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditMessage {
    /// New base64 ciphertext.
    pub encrypted_content: String,
    /// New base64 nonce.
    pub nonce: String,
}

/// `POST /conversations/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMember {
    /// Who to add.
    pub user_id: Uuid,
    /// `member` unless given; `owner` is never granted this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// `PATCH /conversations/{id}/members/{user_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRole {
    /// `admin` or `member`.
    pub role: Role,
}

/// `POST /conversations/{id}/read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkRead {
    /// Everything up to and including this `seq` is read.
    pub seq: i64,
}

/// `GET /conversations/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    /// Ascending by `seq`.
    pub messages: Vec<Message>,
}

/// `GET /conversations/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// Ascending by `seq`, without gaps.
    pub events: Vec<Event>,
}
