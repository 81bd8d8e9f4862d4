//! Decoding rows into protocol types, shared by every SQL store.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};
use switchboard_protocol::{
    Attachment, AttachmentKind, ConversationKind, ConversationSummary, Member, Message, Role,
    ScheduledFailure, ScheduledMessage, ScheduledStatus,
};
use uuid::Uuid;

use switchboard_storage::{AttachmentState, Claimed, ScheduledClaim, StoreError, StoredAttachment};

use crate::error::db;

/// The columns [`message`] reads, in a form `concat!` accepts.
macro_rules! message_columns {
    () => {
        "id, conversation_id, seq, sender_id, encrypted_content, nonce, message_type, \
         created_at, edited_at, deleted_at, attachment"
    };
}
pub(crate) use message_columns;

/// A message from a row with the [`message_columns`].
pub(crate) fn message<'r, R>(row: &'r R) -> Result<Message, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Message {
        id: row.try_get("id").map_err(db)?,
        conversation_id: row.try_get("conversation_id").map_err(db)?,
        seq: row.try_get("seq").map_err(db)?,
        sender_id: row.try_get("sender_id").map_err(db)?,
        encrypted_content: row.try_get("encrypted_content").map_err(db)?,
        nonce: row.try_get("nonce").map_err(db)?,
        message_type: row.try_get("message_type").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        edited_at: row.try_get("edited_at").map_err(db)?,
        deleted_at: row.try_get("deleted_at").map_err(db)?,
        attachment: decode_attachment(row.try_get("attachment").map_err(db)?)?,
    })
}

/// A message's attachment as the `attachment` column stores it.
pub(crate) fn encode_attachment(
    attachment: Option<&Attachment>,
) -> Result<Option<String>, StoreError> {
    attachment
        .map(|a| {
            serde_json::to_string(a)
                .map_err(|e| StoreError::Backend(format!("cannot encode attachment: {e}")))
        })
        .transpose()
}

pub(crate) fn decode_attachment(
    stored: Option<String>,
) -> Result<Option<Box<Attachment>>, StoreError> {
    stored
        .map(|json| {
            serde_json::from_str(&json)
                .map_err(|e| StoreError::Backend(format!("cannot decode stored attachment: {e}")))
        })
        .transpose()
}

/// The columns [`attachment`] reads.
macro_rules! attachment_columns {
    () => {
        "id, conversation_id, uploader_id, kind, s3_key, content_type, size_bytes, duration_ms, \
         file_name, state, message_id, created_at, upload_expires_at, deleted_at"
    };
}
pub(crate) use attachment_columns;

/// An attachment from a row with the [`attachment_columns`].
pub(crate) fn attachment<'r, R>(row: &'r R) -> Result<StoredAttachment, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let unsigned = |column: &'static str, value: i64| {
        u64::try_from(value).map_err(|_| StoreError::Backend(format!("negative {column} stored")))
    };
    let kind: &str = row.try_get("kind").map_err(db)?;
    let state: &str = row.try_get("state").map_err(db)?;
    let duration: Option<i64> = row.try_get("duration_ms").map_err(db)?;
    Ok(StoredAttachment {
        attachment: Attachment {
            id: row.try_get("id").map_err(db)?,
            s3_key: row.try_get("s3_key").map_err(db)?,
            content_type: row.try_get("content_type").map_err(db)?,
            size_bytes: unsigned("size_bytes", row.try_get("size_bytes").map_err(db)?)?,
            duration_ms: duration.map(|d| unsigned("duration_ms", d)).transpose()?,
            file_name: row.try_get("file_name").map_err(db)?,
        },
        kind: AttachmentKind::parse(kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown attachment kind {kind:?}")))?,
        conversation_id: row.try_get("conversation_id").map_err(db)?,
        uploader_id: row.try_get("uploader_id").map_err(db)?,
        state: AttachmentState::parse(state)
            .ok_or_else(|| StoreError::Backend(format!("unknown attachment state {state:?}")))?,
        message_id: row.try_get("message_id").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        upload_expires_at: row.try_get("upload_expires_at").map_err(db)?,
        deleted_at: row.try_get("deleted_at").map_err(db)?,
    })
}

/// The columns [`scheduled`] reads.
macro_rules! scheduled_columns {
    () => {
        "id, conversation_id, sender_id, deliver_at, status, created_at, encrypted_content, \
         nonce, message_type, failure_reason, message_id"
    };
}
pub(crate) use scheduled_columns;

/// A scheduled message from a row with the [`scheduled_columns`].
pub(crate) fn scheduled<'r, R>(row: &'r R) -> Result<ScheduledMessage, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: &str = row.try_get("status").map_err(db)?;
    let reason: Option<&str> = row.try_get("failure_reason").map_err(db)?;
    Ok(ScheduledMessage {
        id: row.try_get("id").map_err(db)?,
        conversation_id: row.try_get("conversation_id").map_err(db)?,
        sender_id: row.try_get("sender_id").map_err(db)?,
        deliver_at: row.try_get("deliver_at").map_err(db)?,
        status: ScheduledStatus::parse(status)
            .ok_or_else(|| StoreError::Backend(format!("unknown scheduled status {status:?}")))?,
        created_at: row.try_get("created_at").map_err(db)?,
        encrypted_content: row.try_get("encrypted_content").map_err(db)?,
        nonce: row.try_get("nonce").map_err(db)?,
        message_type: row.try_get("message_type").map_err(db)?,
        failure_reason: reason
            .map(|r| {
                ScheduledFailure::parse(r)
                    .ok_or_else(|| StoreError::Backend(format!("unknown failure reason {r:?}")))
            })
            .transpose()?,
        message_id: row.try_get("message_id").map_err(db)?,
    })
}

/// The entries a claim returned, earliest due first, each with its claim.
pub(crate) fn claimed<R>(found: &[R], lease: DateTime<Utc>) -> Result<Vec<Claimed>, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> Uuid: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut claimed = found
        .iter()
        .map(|row| {
            let entry = scheduled(row)?;
            let claim = ScheduledClaim {
                id: entry.id,
                lease,
            };
            Ok(Claimed { entry, claim })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    claimed.sort_by_key(|c| (c.entry.deliver_at, c.entry.id));
    Ok(claimed)
}

/// An audit entry from `attachment_id, s3_key, actor, reason, at`.
pub(crate) fn audit_entry(
    (attachment_id, s3_key, actor, reason, at): (
        Option<Uuid>,
        String,
        Option<Uuid>,
        String,
        DateTime<Utc>,
    ),
) -> Result<switchboard_storage::AuditEntry, StoreError> {
    Ok(switchboard_storage::AuditEntry {
        attachment_id,
        s3_key,
        actor,
        reason: switchboard_storage::DeletionReason::parse(&reason)
            .ok_or_else(|| StoreError::Backend(format!("unknown deletion reason {reason:?}")))?,
        at,
    })
}

/// A size or duration as the SQL stores keep it.
pub(crate) fn signed(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Backend("a size past i64".into()))
}

/// A member from a row with `user_id, role, last_read_seq, joined_at`.
pub(crate) fn member<'r, R>(row: &'r R) -> Result<Member, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Member {
        user_id: row.try_get("user_id").map_err(db)?,
        role: role(row.try_get("role").map_err(db)?)?,
        last_read_seq: row.try_get("last_read_seq").map_err(db)?,
        joined_at: row.try_get("joined_at").map_err(db)?,
    })
}

/// The select list of the conversation-list query, shared by every SQL store:
/// the conversation, the caller's membership, both counts as correlated
/// subqueries and the last message (`lm_*`) joined on the top seq.
macro_rules! summary_columns {
    () => {
        "c.id, c.kind, c.title, c.last_seq, c.created_at, c.updated_at, \
         m.role, m.last_read_seq, \
         (SELECT COUNT(*) FROM members x WHERE x.conversation_id = c.id) AS member_count, \
         (SELECT COUNT(*) FROM messages x WHERE x.conversation_id = c.id \
             AND x.seq > m.last_read_seq AND x.sender_id <> m.user_id \
             AND x.deleted_at IS NULL) AS unread_count, \
         lm.id AS lm_id, lm.seq AS lm_seq, lm.sender_id AS lm_sender_id, \
         lm.encrypted_content AS lm_encrypted_content, lm.nonce AS lm_nonce, \
         lm.message_type AS lm_message_type, lm.created_at AS lm_created_at, \
         lm.edited_at AS lm_edited_at, lm.deleted_at AS lm_deleted_at, \
         lm.attachment AS lm_attachment \
         FROM members m \
         JOIN conversations c ON c.id = m.conversation_id \
         LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = \
             (SELECT MAX(y.seq) FROM messages y WHERE y.conversation_id = c.id)"
    };
}
pub(crate) use summary_columns;

/// A row of the conversation list selected with [`summary_columns`].
pub(crate) fn summary<'r, R>(row: &'r R) -> Result<ConversationSummary, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: Uuid = row.try_get("id").map_err(db)?;
    let last_message = match row.try_get::<Option<Uuid>, _>("lm_id").map_err(db)? {
        None => None,
        Some(message_id) => Some(Message {
            id: message_id,
            conversation_id: id,
            seq: row.try_get("lm_seq").map_err(db)?,
            sender_id: row.try_get("lm_sender_id").map_err(db)?,
            encrypted_content: row.try_get("lm_encrypted_content").map_err(db)?,
            nonce: row.try_get("lm_nonce").map_err(db)?,
            message_type: row.try_get("lm_message_type").map_err(db)?,
            created_at: row.try_get("lm_created_at").map_err(db)?,
            edited_at: row.try_get("lm_edited_at").map_err(db)?,
            deleted_at: row.try_get("lm_deleted_at").map_err(db)?,
            attachment: decode_attachment(row.try_get("lm_attachment").map_err(db)?)?,
        }),
    };
    Ok(ConversationSummary {
        id,
        kind: kind(row.try_get("kind").map_err(db)?)?,
        title: row.try_get("title").map_err(db)?,
        last_seq: row.try_get("last_seq").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        updated_at: row.try_get("updated_at").map_err(db)?,
        role: role(row.try_get("role").map_err(db)?)?,
        last_read_seq: row.try_get("last_read_seq").map_err(db)?,
        last_message,
        unread_count: row.try_get("unread_count").map_err(db)?,
        member_count: row.try_get("member_count").map_err(db)?,
    })
}

pub(crate) fn role(name: &str) -> Result<Role, StoreError> {
    Role::parse(name).ok_or_else(|| StoreError::Backend(format!("unknown role {name:?} stored")))
}

pub(crate) fn kind(name: &str) -> Result<ConversationKind, StoreError> {
    match name {
        "direct" => Ok(ConversationKind::Direct),
        "group" => Ok(ConversationKind::Group),
        _ => Err(StoreError::Backend(format!("unknown kind {name:?} stored"))),
    }
}

/// An event as stored in the log's `payload` column.
pub(crate) fn encode_event(event: &switchboard_protocol::Event) -> Result<String, StoreError> {
    serde_json::to_string(event)
        .map_err(|e| StoreError::Backend(format!("cannot encode event: {e}")))
}

/// Events from their stored payloads.
pub(crate) fn decode_events(
    payloads: &[String],
) -> Result<Vec<switchboard_protocol::Event>, StoreError> {
    payloads
        .iter()
        .map(|p| {
            serde_json::from_str(p)
                .map_err(|e| StoreError::Backend(format!("cannot decode stored event: {e}")))
        })
        .collect()
}

/// The columns [`post`] reads, in a form `concat!` accepts.
macro_rules! post_columns {
    () => {
        "id, author_id, text, created_at, like_count, attachment"
    };
}
pub(crate) use post_columns;

/// A post from a row with the [`post_columns`].
pub(crate) fn post<'r, R>(row: &'r R) -> Result<switchboard_protocol::Post, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let likes: i64 = row.try_get("like_count").map_err(db)?;
    Ok(switchboard_protocol::Post {
        id: row.try_get("id").map_err(db)?,
        author_id: row.try_get("author_id").map_err(db)?,
        text: row.try_get("text").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        like_count: u64::try_from(likes).unwrap_or(0),
        attachment: decode_attachment(row.try_get("attachment").map_err(db)?)?.map(|a| *a),
    })
}

/// The columns [`post_upload`] reads, in a form `concat!` accepts.
macro_rules! post_upload_columns {
    () => {
        "id, author_id, s3_key, content_type, size_bytes, file_name, state, post_id, \
         created_at, upload_expires_at"
    };
}
pub(crate) use post_upload_columns;

/// An upload from a row with the [`post_upload_columns`].
pub(crate) fn post_upload<'r, R>(row: &'r R) -> Result<switchboard_storage::PostUpload, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    Option<Uuid>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let size: i64 = row.try_get("size_bytes").map_err(db)?;
    let state: String = row.try_get("state").map_err(db)?;
    Ok(switchboard_storage::PostUpload {
        attachment: Attachment {
            id: row.try_get("id").map_err(db)?,
            s3_key: row.try_get("s3_key").map_err(db)?,
            content_type: row.try_get("content_type").map_err(db)?,
            size_bytes: u64::try_from(size).unwrap_or(0),
            duration_ms: None,
            file_name: row.try_get("file_name").map_err(db)?,
        },
        author_id: row.try_get("author_id").map_err(db)?,
        state: AttachmentState::parse(&state)
            .ok_or_else(|| StoreError::Backend(format!("unknown upload state {state:?}")))?,
        post_id: row.try_get("post_id").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        upload_expires_at: row.try_get("upload_expires_at").map_err(db)?,
    })
}
