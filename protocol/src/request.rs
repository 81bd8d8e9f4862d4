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

/// `POST /conversations/{id}/messages/audio/presigned-url` and
/// `POST /conversations/{id}/attachments`: what the client will upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRequest {
    /// The MIME type the upload will carry; the signature binds it.
    pub content_type: String,
    /// The exact size the upload will have; the signature binds it.
    pub size_bytes: u64,
    /// The file's name, for attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Where and how to upload: `PUT` the bytes to `presigned_url` with the
/// listed `headers`, exactly, before `expiration` seconds have passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignedUpload {
    /// The URL to `PUT` the bytes to.
    pub presigned_url: String,
    /// Seconds the URL stays valid.
    pub expiration: u64,
    /// The object's key, which the audio message names.
    pub s3_key: String,
    /// The attachment the upload becomes, which an attachment message names.
    pub attachment_id: Uuid,
    /// Always `PUT`.
    pub method: String,
    /// Headers the upload must carry as they are (`content-type`,
    /// `content-length`): the signature covers them.
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `POST /conversations/{id}/messages/audio`: a voice message whose upload
/// has finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAudio {
    /// The key the presigned URL was issued for.
    pub s3_key: String,
    /// The type it was presigned with.
    pub content_type: String,
    /// The size it was presigned with.
    pub size_bytes: u64,
    /// How long it plays.
    pub duration_ms: u64,
    /// Optional base64 ciphertext (a caption, a transcript).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_content: Option<String>,
    /// Base64 nonce of `encrypted_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Makes retries safe, as for `POST /messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `POST /conversations/{id}/messages/attachment`: a message carrying an
/// uploaded attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAttachment {
    /// The attachment, from `POST /conversations/{id}/attachments`.
    pub attachment_id: Uuid,
    /// How long it plays, for audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Optional base64 ciphertext (a caption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_content: Option<String>,
    /// Base64 nonce of `encrypted_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Makes retries safe, as for `POST /messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `POST /conversations/{id}/scheduled-messages`: a message to send later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleMessage {
    /// When to send it: at least a second ahead, at most 365 days.
    pub deliver_at: chrono::DateTime<chrono::Utc>,
    /// Base64 ciphertext.
    pub encrypted_content: String,
    /// Base64 nonce.
    pub nonce: String,
    /// Application-defined type such as `text` (not an attachment type).
    pub message_type: String,
    /// Makes retries safe: a repeat with the same key answers the same entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `PATCH /scheduled-messages/{id}`: a new time, new content, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditScheduled {
    /// The new time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<chrono::DateTime<chrono::Utc>>,
    /// New base64 ciphertext (with `nonce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_content: Option<String>,
    /// Its nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `GET /scheduled-messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledList {
    /// The caller's pending entries, and those that failed recently, by
    /// time due.
    pub scheduled_messages: Vec<crate::ScheduledMessage>,
}
