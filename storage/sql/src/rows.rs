//! Decoding rows into protocol types, shared by every SQL store.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};
use switchboard_protocol::{ConversationKind, ConversationSummary, Member, Message, Role};
use uuid::Uuid;

use crate::StoreError;

/// The columns [`message`] reads, in a form `concat!` accepts.
macro_rules! message_columns {
    () => {
        "id, conversation_id, seq, sender_id, encrypted_content, nonce, message_type, \
         created_at, edited_at, deleted_at"
    };
}
pub(crate) use message_columns;

/// A message from a row with the [`message_columns`].
pub(crate) fn message<'r, R>(row: &'r R) -> Result<Message, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Message {
        id: row.try_get("id")?,
        conversation_id: row.try_get("conversation_id")?,
        seq: row.try_get("seq")?,
        sender_id: row.try_get("sender_id")?,
        encrypted_content: row.try_get("encrypted_content")?,
        nonce: row.try_get("nonce")?,
        message_type: row.try_get("message_type")?,
        created_at: row.try_get("created_at")?,
        edited_at: row.try_get("edited_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
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
        user_id: row.try_get("user_id")?,
        role: role(row.try_get("role")?)?,
        last_read_seq: row.try_get("last_read_seq")?,
        joined_at: row.try_get("joined_at")?,
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
         lm.edited_at AS lm_edited_at, lm.deleted_at AS lm_deleted_at \
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
    let id: Uuid = row.try_get("id")?;
    let last_message = match row.try_get::<Option<Uuid>, _>("lm_id")? {
        None => None,
        Some(message_id) => Some(Message {
            id: message_id,
            conversation_id: id,
            seq: row.try_get("lm_seq")?,
            sender_id: row.try_get("lm_sender_id")?,
            encrypted_content: row.try_get("lm_encrypted_content")?,
            nonce: row.try_get("lm_nonce")?,
            message_type: row.try_get("lm_message_type")?,
            created_at: row.try_get("lm_created_at")?,
            edited_at: row.try_get("lm_edited_at")?,
            deleted_at: row.try_get("lm_deleted_at")?,
        }),
    };
    Ok(ConversationSummary {
        id,
        kind: kind(row.try_get("kind")?)?,
        title: row.try_get("title")?,
        last_seq: row.try_get("last_seq")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        role: role(row.try_get("role")?)?,
        last_read_seq: row.try_get("last_read_seq")?,
        last_message,
        unread_count: row.try_get("unread_count")?,
        member_count: row.try_get("member_count")?,
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

/// The key that makes a direct conversation unique per pair.
pub(crate) fn direct_key(a: Uuid, b: Uuid) -> String {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

/// The pair key a new conversation is unique by: a direct one's, checked
/// to have exactly two members; none for a group.
pub(crate) fn pair_key(command: &crate::CreateConversation) -> Result<Option<String>, StoreError> {
    match command.kind {
        ConversationKind::Direct => {
            let [other] = command.members.as_slice() else {
                return Err(StoreError::Conflict(
                    "a direct conversation has exactly two members".into(),
                ));
            };
            Ok(Some(direct_key(command.creator, *other)))
        }
        ConversationKind::Group => Ok(None),
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

/// The members a new conversation starts with: the creator as owner, the
/// rest as members, in the order every later read returns them.
pub(crate) fn initial_members(command: &crate::CreateConversation) -> Vec<Member> {
    let mut members = Vec::with_capacity(command.members.len() + 1);
    members.push(Member {
        user_id: command.creator,
        role: Role::Owner,
        last_read_seq: 0,
        joined_at: command.at,
    });
    members.extend(command.members.iter().map(|&user_id| Member {
        user_id,
        role: Role::Member,
        last_read_seq: 0,
        joined_at: command.at,
    }));
    members.sort_by_key(|m| (m.joined_at, m.user_id));
    members
}

/// The answer to a send whose idempotency key already stored `stored`: the
/// stored message, unless the key is being reused for a different one.
pub(crate) fn replay(
    stored: Message,
    command: &crate::NewMessage,
) -> Result<crate::SendOutcome, StoreError> {
    let unchanged = stored.edited_at.is_none() && stored.deleted_at.is_none();
    if unchanged
        && (stored.encrypted_content != command.encrypted_content
            || stored.nonce != command.nonce
            || stored.message_type != command.message_type)
    {
        return Err(StoreError::Conflict(
            "idempotency key already used for a different message".into(),
        ));
    }
    Ok(crate::SendOutcome::Duplicate(stored))
}
