//! Resources as the API returns them: conversations, members and messages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether a conversation is between exactly two people or a named group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Direct,
    Group,
}

impl ConversationKind {
    /// The lowercase name used on the wire and in storage.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }
}

/// A member's role. The creator is the one `owner`; `admin`s moderate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    /// The lowercase name used on the wire and in storage.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// Parses the lowercase name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }

    /// Owners and admins moderate: they add, remove and re-role members and
    /// delete other people's messages.
    #[must_use]
    pub fn moderates(self) -> bool {
        matches!(self, Self::Admin | Self::Owner)
    }
}

/// One member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's user id (the JWT `sub`).
    pub user_id: Uuid,
    /// What the member may do.
    pub role: Role,
    /// The highest `seq` this member has marked read.
    pub last_read_seq: i64,
    /// When the member joined.
    pub joined_at: DateTime<Utc>,
}

/// A conversation with its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Conversation id.
    pub id: Uuid,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Optional group title.
    pub title: Option<String>,
    /// Everyone who belongs to the conversation now.
    pub members: Vec<Member>,
    /// The `seq` of the latest event in this conversation's log.
    pub last_seq: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its latest event happened.
    pub updated_at: DateTime<Utc>,
}

/// One row of the caller's conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// Conversation id.
    pub id: Uuid,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Optional group title.
    pub title: Option<String>,
    /// The `seq` of the latest event.
    pub last_seq: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its latest event happened; the list is ordered by this, newest first.
    pub updated_at: DateTime<Utc>,
    /// The caller's role.
    pub role: Role,
    /// The highest `seq` the caller marked read.
    pub last_read_seq: i64,
    /// The newest message, tombstoned or not.
    pub last_message: Option<Message>,
    /// Messages from others after `last_read_seq` that are not deleted.
    pub unread_count: i64,
    /// How many members the conversation has.
    pub member_count: i64,
}

/// `GET /conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    /// Newest activity first.
    pub conversations: Vec<ConversationSummary>,
}

/// A message. Content and nonce are base64 ciphertext the server never decrypts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// UUID v7, so ids sort by creation time.
    pub id: Uuid,
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// The position of its `message.new` event in the conversation's log.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: Uuid,
    /// Opaque ciphertext, base64; empty once deleted.
    pub encrypted_content: String,
    /// Opaque nonce, base64; empty once deleted.
    pub nonce: String,
    /// Application-defined type such as `text`.
    pub message_type: String,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
    /// When it was last edited.
    pub edited_at: Option<DateTime<Utc>>,
    /// Set once deleted; the row stays as a tombstone.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The voice note, image or file the message carries; gone once the
    /// message is deleted. Boxed: most messages carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Box<Attachment>>,
}

/// A file a message carries. Its bytes live in the blob store under
/// `s3_key`; a member downloads them through `GET /attachments/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Attachment id.
    pub id: Uuid,
    /// Where the object is: `conversations/{conversation_id}/{uuid}`.
    pub s3_key: String,
    /// The MIME type it was uploaded with.
    pub content_type: String,
    /// Its exact size.
    pub size_bytes: u64,
    /// How long a voice note plays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The file's name, as its uploader gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// What an attachment is for, which decides its allowed types, its size cap
/// and its message's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentKind {
    /// A voice message: `audio/*` only, message type `audio`.
    Audio,
    /// An image: message type `image`.
    Image,
    /// Any other file: message type `file`.
    File,
}

impl AttachmentKind {
    /// The lowercase name, also the type of the message that carries it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Image => "image",
            Self::File => "file",
        }
    }

    /// Parses the lowercase name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "audio" => Some(Self::Audio),
            "image" => Some(Self::Image),
            "file" => Some(Self::File),
            _ => None,
        }
    }

    /// Whether `message_type` is one only an attachment message may have.
    #[must_use]
    pub fn reserves(message_type: &str) -> bool {
        Self::parse(message_type).is_some()
    }
}

/// Where a scheduled message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduledStatus {
    /// Waiting for its time.
    Pending,
    /// Sent: `message_id` names the message.
    Sent,
    /// Cancelled by its sender.
    Cancelled,
    /// Could not be sent: `failure_reason` says why.
    Failed,
}

impl ScheduledStatus {
    /// The lowercase name used on the wire and in storage.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// Parses the lowercase name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Sent, Self::Cancelled, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// Why a scheduled message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduledFailure {
    /// Its sender was not a member of the conversation when it was due.
    NotMember,
    /// The conversation no longer exists.
    ConversationGone,
    /// Found more than `scheduled_late_max` past due (the node was down),
    /// so not sent stale.
    TooLate,
}

impl ScheduledFailure {
    /// The snake_case name used on the wire and in storage.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotMember => "not_member",
            Self::ConversationGone => "conversation_gone",
            Self::TooLate => "too_late",
        }
    }

    /// Parses the stored name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [Self::NotMember, Self::ConversationGone, Self::TooLate]
            .into_iter()
            .find(|f| f.as_str() == name)
    }
}

/// A message to be sent later, as the API shows it to its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    /// Entry id.
    pub id: Uuid,
    /// Where it goes.
    pub conversation_id: Uuid,
    /// Who sends it.
    pub sender_id: Uuid,
    /// When it is due.
    pub deliver_at: DateTime<Utc>,
    /// Where it stands.
    pub status: ScheduledStatus,
    /// When it was scheduled.
    pub created_at: DateTime<Utc>,
    /// Base64 ciphertext.
    pub encrypted_content: String,
    /// Base64 nonce.
    pub nonce: String,
    /// Application-defined type.
    pub message_type: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<ScheduledFailure>,
    /// The message it became, once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
}
