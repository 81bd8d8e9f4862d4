//! The cluster store: PostgreSQL through sqlx.
//!
//! Every write transaction starts by locking its conversation's row
//! (`SELECT … FOR UPDATE`), so writes to one conversation are serialized
//! across every node, and each later statement (under READ COMMITTED) sees
//! everything committed before the lock was granted. The conditional
//! statements are the same as SQLite's: the permission check is part of the
//! write. `seq` comes from `UPDATE conversations SET last_seq = last_seq + 1
//! … RETURNING` in the same transaction as the rows it numbers.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Acquire, AssertSqlSafe, Postgres, Row, Transaction};
use switchboard_protocol::{
    Attachment, Conversation, ConversationCreated, ConversationSummary, Event, Member,
    MemberJoined, MemberLeft, MemberRoleChanged, Message, MessageDeleted, MessageEdited,
    MessageRead, Role, ScheduledFailure, ScheduledMessage, ScheduledStatus,
};
use uuid::Uuid;

use switchboard_storage::{
    AuditEntry, BlobDeletion, Claimed, DeleteAttachment, DeletionReason, NewAttachment,
    NewScheduled, Rejection, ScheduleCaps, ScheduleOutcome, ScheduledChange, ScheduledClaim,
    StoreError, StoredAttachment, check_pending, not_pending, to_micros,
};
use switchboard_storage::{
    Committed, CreateConversation, CreateOutcome, DeleteMessage, EditMessage, MessageRange,
    NewMessage, SendOutcome, Store, send_each,
};

use crate::error::db;
use crate::rows;

mod feed;

/// How to connect to PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// Connections in the pool.
    pub connections_max: u32,
    /// How long a caller waits for a free connection.
    pub acquire_timeout: Duration,
    /// A schema to create and use instead of `public`; lets tests and
    /// separate deployments share one database.
    pub schema: Option<String>,
}

impl PostgresOptions {
    /// Defaults for `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connections_max: 16,
            acquire_timeout: Duration::from_secs(5),
            schema: None,
        }
    }
}

/// The PostgreSQL [`Store`].
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects and migrates.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the server is unreachable, the schema name
    /// is not `[a-z0-9_]+`, or migration fails.
    pub async fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| StoreError::Backend(format!("invalid database url: {e}")))?;
        if let Some(schema) = &options.schema {
            let valid = !schema.is_empty()
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(StoreError::Backend(format!(
                    "invalid schema name {schema:?}"
                )));
            }
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect.clone())
                .await
                .map_err(db)?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&admin)
            .await
            .map_err(db)?;
            admin.close().await;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.connections_max.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(db)?;
        crate::migrations::postgres()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        Ok(Self { pool })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a write to one conversation: takes its row lock first.
    async fn begin(
        &self,
        conversation_id: Uuid,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
            .bind(conversation_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Ok(tx)
    }
}

/// Writes one send inside `tx` (its conversation's row already locked)
/// without committing it.
async fn send_in(
    tx: &mut Transaction<'_, Postgres>,
    command: NewMessage,
) -> Result<SendOutcome, StoreError> {
    if let Some(key) = &command.idempotency_key {
        let existing = sqlx::query(concat!(
            "SELECT ",
            rows::message_columns!(),
            " FROM messages WHERE conversation_id = $1 AND sender_id = $2 \
              AND idempotency_key = $3"
        ))
        .bind(command.conversation_id)
        .bind(command.sender_id)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
        if let Some(row) = existing {
            return command.replay(rows::message(&row)?);
        }
    }
    let seq: i64 = sqlx::query_scalar(
        "UPDATE conversations SET last_seq = last_seq + 1, updated_at = $2 \
         WHERE id = $1 AND EXISTS \
             (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $3) \
         RETURNING last_seq",
    )
    .bind(command.conversation_id)
    .bind(command.at)
    .bind(command.sender_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?
    .ok_or(StoreError::Rejected(Rejection::NotMember))?;
    if let Some(attachment) = &command.attachment {
        claim(tx, &command, attachment).await?;
    }
    if let Some(scheduled) = command.scheduled {
        let sent = sqlx::query(
            "UPDATE scheduled_messages SET status = 'sent', message_id = $1, finished_at = $2, \
                 leased_until = NULL \
             WHERE id = $3 AND status = 'pending' AND leased_until = $4",
        )
        .bind(command.id)
        .bind(command.at)
        .bind(scheduled.id)
        .bind(scheduled.lease)
        .execute(&mut **tx)
        .await
        .map_err(db)?
        .rows_affected();
        if sent == 0 {
            return Err(not_pending());
        }
    }
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, sender_id, message_type, \
             encrypted_content, nonce, idempotency_key, created_at, attachment) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(command.id)
    .bind(command.conversation_id)
    .bind(seq)
    .bind(command.sender_id)
    .bind(&command.message_type)
    .bind(&command.encrypted_content)
    .bind(&command.nonce)
    .bind(&command.idempotency_key)
    .bind(command.at)
    .bind(rows::encode_attachment(command.attachment.as_deref())?)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    let at = command.at;
    let message = command.into_message(seq);
    let event = Event::MessageNew(message.clone());
    append(tx, &event, at).await?;
    Ok(SendOutcome::Created(Committed {
        value: message,
        events: vec![event],
    }))
}

/// Marks the pending attachment `command` carries as sent in it, inside
/// the send's transaction; refuses as [`StoredAttachment::claimable_by`]
/// says when it is not claimable.
async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    command: &NewMessage,
    attachment: &Attachment,
) -> Result<(), StoreError> {
    let claimed = sqlx::query(
        "UPDATE attachments SET state = 'attached', message_id = $1, duration_ms = $2 \
         WHERE id = $3 AND conversation_id = $4 AND uploader_id = $5 AND state = 'pending'",
    )
    .bind(command.id)
    .bind(attachment.duration_ms.map(rows::signed).transpose()?)
    .bind(attachment.id)
    .bind(command.conversation_id)
    .bind(command.sender_id)
    .execute(&mut **tx)
    .await
    .map_err(db)?
    .rows_affected();
    if claimed == 1 {
        return Ok(());
    }
    let stored = read_attachment(&mut **tx, attachment.id)
        .await?
        .ok_or(StoreError::NotFound)?;
    stored.claimable_by(command.conversation_id, command.sender_id)?;
    Err(StoreError::Backend(
        "an attachment claim matched no row".into(),
    ))
}

async fn read_scheduled<'e, E>(
    executor: E,
    id: Uuid,
) -> Result<Option<ScheduledMessage>, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let row = sqlx::query(concat!(
        "SELECT ",
        rows::scheduled_columns!(),
        " FROM scheduled_messages WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::scheduled).transpose()
}

/// Reads entry `id` and locks its row until `tx` ends, so a change and a
/// delivery of it take turns.
async fn read_scheduled_for_update(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<Option<ScheduledMessage>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        rows::scheduled_columns!(),
        " FROM scheduled_messages WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::scheduled).transpose()
}

async fn read_attachment<'e, E>(
    executor: E,
    id: Uuid,
) -> Result<Option<StoredAttachment>, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let row = sqlx::query(concat!(
        "SELECT ",
        rows::attachment_columns!(),
        " FROM attachments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::attachment).transpose()
}

/// Tombstones attachment `id` (already checked deletable) inside `tx`,
/// owes its object a deletion and audits it.
async fn tombstone(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    s3_key: &str,
    actor: Option<Uuid>,
    reason: DeletionReason,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE attachments SET state = 'deleted', deleted_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    owe_deletion(tx, id, s3_key, actor, reason, at).await
}

/// Owes object `s3_key` (of attachment or post upload `id`) a deletion
/// inside `tx` and audits it.
pub(crate) async fn owe_deletion(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    s3_key: &str,
    actor: Option<Uuid>,
    reason: DeletionReason,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO blob_deletions (attachment_id, s3_key, due_at) VALUES ($1, $2, $3) \
         ON CONFLICT (attachment_id) DO NOTHING",
    )
    .bind(id)
    .bind(s3_key)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    audit_in(&mut **tx, Some(id), s3_key, actor, reason, at).await
}

async fn audit_in<'e, E>(
    executor: E,
    attachment_id: Option<Uuid>,
    s3_key: &str,
    actor: Option<Uuid>,
    reason: DeletionReason,
    at: DateTime<Utc>,
) -> Result<(), StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO attachment_audit (attachment_id, s3_key, actor, reason, at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(attachment_id)
    .bind(s3_key)
    .bind(actor)
    .bind(reason.as_str())
    .bind(at)
    .execute(executor)
    .await
    .map_err(db)?;
    Ok(())
}

async fn allocate(
    tx: &mut Transaction<'static, Postgres>,
    conversation_id: Uuid,
    count: i64,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let last: i64 = sqlx::query_scalar(
        "UPDATE conversations SET last_seq = last_seq + $1, updated_at = $2 WHERE id = $3 \
         RETURNING last_seq",
    )
    .bind(count)
    .bind(at)
    .bind(conversation_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?
    .ok_or(StoreError::NotFound)?;
    Ok(last - count + 1)
}

async fn append(
    tx: &mut Transaction<'_, Postgres>,
    event: &Event,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (conversation_id, seq, type, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event.conversation_id())
    .bind(event.seq())
    .bind(event.kind())
    .bind(rows::encode_event(event)?)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

async fn commit_one<T>(
    mut tx: Transaction<'static, Postgres>,
    conversation_id: Uuid,
    at: DateTime<Utc>,
    value: T,
    event: impl FnOnce(i64) -> Event,
) -> Result<Committed<T>, StoreError> {
    let seq = allocate(&mut tx, conversation_id, 1, at).await?;
    let event = event(seq);
    append(&mut tx, &event, at).await?;
    tx.commit().await.map_err(db)?;
    Ok(Committed {
        value,
        events: vec![event],
    })
}

async fn why_not(
    tx: &mut Transaction<'static, Postgres>,
    conversation_id: Uuid,
    message_id: Uuid,
    user_id: Uuid,
) -> Result<StoreError, StoreError> {
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2)",
    )
    .bind(conversation_id)
    .bind(user_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    if !member {
        return Ok(StoreError::Rejected(Rejection::NotMember));
    }
    let deleted: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT deleted_at FROM messages WHERE id = $1 AND conversation_id = $2",
    )
    .bind(message_id)
    .bind(conversation_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    Ok(match deleted {
        None => StoreError::NotFound,
        Some(Some(_)) => StoreError::Rejected(Rejection::Deleted),
        Some(None) => StoreError::Rejected(Rejection::NotPermitted),
    })
}

impl PostgresStore {
    async fn read_members(&self, conversation_id: Uuid) -> Result<Vec<Member>, StoreError> {
        let found = sqlx::query(
            "SELECT user_id, role, last_read_seq, joined_at FROM members \
             WHERE conversation_id = $1 ORDER BY joined_at, user_id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        found.iter().map(rows::member).collect()
    }
}

#[async_trait]
impl Store for PostgresStore {
    /// A round trip that also says whether the server takes writes: a
    /// standby (after a failover left this node pointed at one) answers
    /// reads but refuses every send, so it is not ready.
    async fn ping(&self) -> Result<(), StoreError> {
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        if standby {
            return Err(StoreError::Backend(
                "the database is a read-only standby".into(),
            ));
        }
        Ok(())
    }

    async fn create_conversation(
        &self,
        command: CreateConversation,
    ) -> Result<CreateOutcome, StoreError> {
        let key = command.pair_key()?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Two nodes may create the same direct pair at once: the unique key
        // lets one insert win and the other find it.
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO conversations (id, kind, title, direct_key, last_seq, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5) ON CONFLICT (direct_key) DO NOTHING RETURNING id",
        )
        .bind(command.id)
        .bind(command.kind.as_str())
        .bind(&command.title)
        .bind(&key)
        .bind(command.at)
        .fetch_optional(&mut *tx)
        .await.map_err(db)?;
        if inserted.is_none() {
            drop(tx);
            let id: Uuid = sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = $1")
                .bind(&key)
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
            let conversation = self.conversation(id).await?.ok_or(StoreError::NotFound)?;
            return Ok(CreateOutcome::Existing(conversation));
        }
        sqlx::query(
            "INSERT INTO members (conversation_id, user_id, role, last_read_seq, joined_at) \
             VALUES ($1, $2, 'owner', 0, $3)",
        )
        .bind(command.id)
        .bind(command.creator)
        .bind(command.at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO members (conversation_id, user_id, role, last_read_seq, joined_at) \
             SELECT $1, u, 'member', 0, $2 FROM UNNEST($3::uuid[]) AS u",
        )
        .bind(command.id)
        .bind(command.at)
        .bind(&command.members)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let members = command.initial_members();
        let conversation = Conversation {
            id: command.id,
            kind: command.kind,
            title: command.title,
            members,
            last_seq: 1,
            created_at: command.at,
            updated_at: command.at,
        };
        let created = conversation.clone();
        let committed = commit_one(tx, command.id, command.at, conversation, |seq| {
            Event::ConversationCreated(ConversationCreated {
                conversation_id: command.id,
                seq,
                conversation: created,
            })
        })
        .await?;
        Ok(CreateOutcome::Created(committed))
    }

    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, kind, title, last_seq, created_at, updated_at FROM conversations \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        else {
            return Ok(None);
        };
        Ok(Some(Conversation {
            id: row.try_get("id").map_err(db)?,
            kind: rows::kind(row.try_get("kind").map_err(db)?)?,
            title: row.try_get("title").map_err(db)?,
            members: self.read_members(id).await?,
            last_seq: row.try_get("last_seq").map_err(db)?,
            created_at: row.try_get("created_at").map_err(db)?,
            updated_at: row.try_get("updated_at").map_err(db)?,
        }))
    }

    async fn members(&self, conversation_id: Uuid) -> Result<Vec<Member>, StoreError> {
        self.read_members(conversation_id).await
    }

    async fn role(&self, conversation_id: Uuid, user_id: Uuid) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = sqlx::query_scalar(
            "SELECT role FROM members WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conversation_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        role.as_deref().map(rows::role).transpose()
    }

    async fn positions_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.id, c.last_seq FROM members m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.user_id = $1 LIMIT $2",
        )
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await.map_err(db)?)
    }

    async fn last_seqs(&self, conversations: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT id, last_seq FROM conversations WHERE id = ANY($1)")
                .bind(conversations)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?,
        )
    }

    async fn conversations_for(
        &self,
        user_id: Uuid,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        // One statement, whatever the number of conversations.
        let found = sqlx::query(concat!(
            "SELECT ",
            rows::summary_columns!(),
            " WHERE m.user_id = $1 ORDER BY c.updated_at DESC, c.id LIMIT $2"
        ))
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        found.iter().map(rows::summary).collect()
    }

    async fn send(&self, command: NewMessage) -> Result<SendOutcome, StoreError> {
        let mut tx = self.begin(command.conversation_id).await?;
        let outcome = send_in(&mut tx, command).await?;
        if matches!(outcome, SendOutcome::Created(_)) {
            tx.commit().await.map_err(db)?;
        }
        Ok(outcome)
    }

    /// One conversation's sends (a conversation actor's batch) commit in
    /// one transaction under one lock of its row, each in a savepoint so a
    /// refused one writes nothing and the rest still commit; sends to
    /// several conversations go one at a time.
    async fn send_batch(&self, commands: Vec<NewMessage>) -> Vec<Result<SendOutcome, StoreError>> {
        let Some(first) = commands.first() else {
            return Vec::new();
        };
        let conversation = first.conversation_id;
        if commands.iter().any(|c| c.conversation_id != conversation) {
            return send_each(self, commands).await;
        }
        let count = commands.len();
        let failed = |error: &StoreError| {
            (0..count)
                .map(|_| Err(StoreError::Backend(error.to_string())))
                .collect()
        };
        let mut tx = match self.begin(conversation).await {
            Ok(tx) => tx,
            Err(error) => return failed(&error),
        };
        let mut outcomes = Vec::with_capacity(count);
        for command in commands {
            let outcome = match Acquire::begin(&mut tx).await {
                Ok(mut savepoint) => match send_in(&mut savepoint, command).await {
                    Ok(outcome) => match savepoint.commit().await {
                        Ok(()) => Ok(outcome),
                        Err(error) => return failed(&db(error)),
                    },
                    Err(error) => {
                        if let Err(rollback) = savepoint.rollback().await {
                            return failed(&db(rollback));
                        }
                        Err(error)
                    }
                },
                Err(error) => return failed(&db(error)),
            };
            outcomes.push(outcome);
        }
        match tx.commit().await {
            Ok(()) => outcomes,
            Err(error) => failed(&db(error)),
        }
    }

    async fn edit(&self, command: EditMessage) -> Result<Committed<Message>, StoreError> {
        let mut tx = self.begin(command.conversation_id).await?;
        let row = sqlx::query(concat!(
            "UPDATE messages SET encrypted_content = $1, nonce = $2, edited_at = $3 \
             WHERE id = $4 AND conversation_id = $5 AND sender_id = $6 AND deleted_at IS NULL \
               AND EXISTS (SELECT 1 FROM members WHERE conversation_id = $5 AND user_id = $6) \
             RETURNING ",
            rows::message_columns!()
        ))
        .bind(&command.encrypted_content)
        .bind(&command.nonce)
        .bind(command.at)
        .bind(command.message_id)
        .bind(command.conversation_id)
        .bind(command.editor)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(why_not(
                &mut tx,
                command.conversation_id,
                command.message_id,
                command.editor,
            )
            .await?);
        };
        let message = rows::message(&row)?;
        let (content, nonce) = (message.encrypted_content.clone(), message.nonce.clone());
        let (message_id, message_seq, sender_id) = (message.id, message.seq, message.sender_id);
        commit_one(tx, command.conversation_id, command.at, message, |seq| {
            Event::MessageEdited(MessageEdited {
                conversation_id: command.conversation_id,
                seq,
                message_id,
                message_seq,
                sender_id,
                encrypted_content: content,
                nonce,
                edited_at: command.at,
            })
        })
        .await
    }

    async fn delete(&self, command: DeleteMessage) -> Result<Committed<Message>, StoreError> {
        let mut tx = self.begin(command.conversation_id).await?;
        let row = sqlx::query(concat!(
            "UPDATE messages SET encrypted_content = '', nonce = '', deleted_at = $1, \
                 deleted_by = $2, attachment = NULL \
             WHERE id = $3 AND conversation_id = $4 AND deleted_at IS NULL \
               AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = $4 \
                   AND m.user_id = $2 \
                   AND (m.role IN ('owner', 'admin') OR messages.sender_id = $2)) \
             RETURNING ",
            rows::message_columns!()
        ))
        .bind(command.at)
        .bind(command.by)
        .bind(command.message_id)
        .bind(command.conversation_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(why_not(
                &mut tx,
                command.conversation_id,
                command.message_id,
                command.by,
            )
            .await?);
        };
        let message = rows::message(&row)?;
        let (message_id, message_seq) = (message.id, message.seq);
        // Its attachment goes with it, in the same transaction.
        let sent: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, s3_key FROM attachments WHERE message_id = $1 AND state = 'attached'",
        )
        .bind(message_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        for (id, s3_key) in sent {
            let reason = DeletionReason::MessageDeleted;
            tombstone(&mut tx, id, &s3_key, Some(command.by), reason, command.at).await?;
        }
        commit_one(tx, command.conversation_id, command.at, message, |seq| {
            Event::MessageDeleted(MessageDeleted {
                conversation_id: command.conversation_id,
                seq,
                message_id,
                message_seq,
                deleted_by: command.by,
                deleted_at: command.at,
            })
        })
        .await
    }

    async fn mark_read(
        &self,
        conversation_id: Uuid,
        user_id: Uuid,
        seq: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        let mut tx = self.begin(conversation_id).await?;
        let advanced = sqlx::query(
            "UPDATE members SET last_read_seq = $1 \
             WHERE conversation_id = $2 AND user_id = $3 AND last_read_seq < $1 \
               AND $1 <= (SELECT last_seq FROM conversations WHERE id = $2)",
        )
        .bind(seq)
        .bind(conversation_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if advanced == 0 {
            let member: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2)",
            )
            .bind(conversation_id)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            return if member {
                Ok(None)
            } else {
                Err(StoreError::Rejected(Rejection::NotMember))
            };
        }
        let committed = commit_one(tx, conversation_id, at, (), |event_seq| {
            Event::MessageRead(MessageRead {
                conversation_id,
                seq: event_seq,
                user_id,
                read_seq: seq,
            })
        })
        .await?;
        Ok(committed.events.into_iter().next())
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
        let mut tx = self.begin(conversation_id).await?;
        let added = sqlx::query(
            "INSERT INTO members (conversation_id, user_id, role, last_read_seq, joined_at) \
             SELECT c.id, $2, $3, c.last_seq, $4 FROM conversations c \
             WHERE c.id = $1 AND c.kind = 'group' \
               AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = $1 \
                   AND m.user_id = $5 AND m.role IN ('owner', 'admin')) \
             RETURNING user_id, role, last_read_seq, joined_at",
        )
        .bind(conversation_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(at)
        .bind(by)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => StoreError::Conflict("already a member".into()),
            other => other,
        })?;
        let Some(row) = added else {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        };
        let member = rows::member(&row)?;
        commit_one(tx, conversation_id, at, member, |seq| {
            Event::MemberJoined(MemberJoined {
                conversation_id,
                seq,
                user_id,
                role,
                added_by: by,
            })
        })
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
        if role == Role::Owner {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        }
        let mut tx = self.begin(conversation_id).await?;
        let changed = sqlx::query(
            "UPDATE members SET role = $1 \
             WHERE conversation_id = $2 AND user_id = $3 AND role <> 'owner' AND role <> $1 \
               AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = $2 \
                   AND m.user_id = $4 AND m.role IN ('owner', 'admin'))",
        )
        .bind(role.as_str())
        .bind(conversation_id)
        .bind(user_id)
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        }
        commit_one(tx, conversation_id, at, (), |seq| {
            Event::MemberRoleChanged(MemberRoleChanged {
                conversation_id,
                seq,
                user_id,
                role,
                changed_by: by,
            })
        })
        .await
    }

    async fn remove_member(
        &self,
        conversation_id: Uuid,
        by: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Committed<()>, StoreError> {
        let mut tx = self.begin(conversation_id).await?;
        let removed: Option<String> = sqlx::query_scalar(
            "DELETE FROM members \
             WHERE conversation_id = $1 AND user_id = $2 \
               AND (SELECT kind FROM conversations WHERE id = $1) = 'group' \
               AND (user_id = $3 OR (role <> 'owner' AND EXISTS \
                   (SELECT 1 FROM members m WHERE m.conversation_id = $1 \
                       AND m.user_id = $3 AND m.role IN ('owner', 'admin')))) \
             RETURNING role",
        )
        .bind(conversation_id)
        .bind(user_id)
        .bind(by)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(removed_role) = removed else {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        };
        let mut events = Vec::with_capacity(2);
        let seq = allocate(&mut tx, conversation_id, 1, at).await?;
        events.push(Event::MemberLeft(MemberLeft {
            conversation_id,
            seq,
            user_id,
            removed_by: by,
        }));
        if rows::role(&removed_role)? == Role::Owner {
            let successor: Option<Uuid> = sqlx::query_scalar(
                "UPDATE members SET role = 'owner' \
                 WHERE conversation_id = $1 AND user_id = \
                     (SELECT user_id FROM members WHERE conversation_id = $1 \
                      ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_at, user_id \
                      LIMIT 1) \
                 RETURNING user_id",
            )
            .bind(conversation_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(successor) = successor {
                let seq = allocate(&mut tx, conversation_id, 1, at).await?;
                events.push(Event::MemberRoleChanged(MemberRoleChanged {
                    conversation_id,
                    seq,
                    user_id: successor,
                    role: Role::Owner,
                    changed_by: by,
                }));
            }
        }
        for event in &events {
            append(&mut tx, event, at).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Committed { value: (), events })
    }

    async fn message(&self, id: Uuid) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            rows::message_columns!(),
            " FROM messages WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(rows::message).transpose()
    }

    async fn messages(
        &self,
        conversation_id: Uuid,
        range: MessageRange,
    ) -> Result<Vec<Message>, StoreError> {
        let sql = if range.after_seq.is_some() {
            concat!(
                "SELECT ",
                rows::message_columns!(),
                " FROM messages WHERE conversation_id = $1 AND seq > $2 \
                  AND ($3::BIGINT IS NULL OR seq < $3) ORDER BY seq ASC LIMIT $4"
            )
        } else {
            concat!(
                "SELECT * FROM (SELECT ",
                rows::message_columns!(),
                " FROM messages WHERE conversation_id = $1 AND seq > $2 \
                  AND ($3::BIGINT IS NULL OR seq < $3) ORDER BY seq DESC LIMIT $4) page \
                  ORDER BY seq ASC"
            )
        };
        let found = sqlx::query(AssertSqlSafe(sql))
            .bind(conversation_id)
            .bind(range.after_seq.unwrap_or(0))
            .bind(range.before_seq)
            .bind(i64::from(range.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(found.iter().map(rows::message).collect::<Result<_, _>>()?)
    }

    async fn events(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let payloads: Vec<String> = sqlx::query_scalar(
            "SELECT payload FROM events WHERE conversation_id = $1 AND seq > $2 \
             ORDER BY seq ASC LIMIT $3",
        )
        .bind(conversation_id)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows::decode_events(&payloads)
    }

    async fn events_of(&self, from: &[(Uuid, i64)], limit: u32) -> Result<Vec<Event>, StoreError> {
        let (conversations, afters): (Vec<Uuid>, Vec<i64>) = from.iter().copied().unzip();
        let payloads: Vec<String> = sqlx::query_scalar(
            "SELECT e.payload FROM UNNEST($1::uuid[], $2::bigint[]) AS p (c, after) \
             JOIN events e ON e.conversation_id = p.c AND e.seq > p.after \
             ORDER BY e.conversation_id, e.seq LIMIT $3",
        )
        .bind(conversations)
        .bind(afters)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows::decode_events(&payloads)
    }

    async fn create_attachment(
        &self,
        attachment: NewAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        let written = sqlx::query(
            "INSERT INTO attachments (id, conversation_id, uploader_id, kind, s3_key, \
                 content_type, size_bytes, file_name, state, created_at, upload_expires_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10 \
             WHERE EXISTS (SELECT 1 FROM members WHERE conversation_id = $2 AND user_id = $3)",
        )
        .bind(attachment.id)
        .bind(attachment.conversation_id)
        .bind(attachment.uploader_id)
        .bind(attachment.kind.as_str())
        .bind(&attachment.s3_key)
        .bind(&attachment.content_type)
        .bind(rows::signed(attachment.size_bytes)?)
        .bind(&attachment.file_name)
        .bind(attachment.at)
        .bind(attachment.upload_expires_at)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        if written == 0 {
            return Err(StoreError::Rejected(Rejection::NotMember));
        }
        Ok(attachment.into_stored())
    }

    async fn attachment(&self, id: Uuid) -> Result<Option<StoredAttachment>, StoreError> {
        read_attachment(&self.pool, id).await
    }

    async fn attachments_by_keys(
        &self,
        keys: &[String],
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        let found = sqlx::query(concat!(
            "SELECT ",
            rows::attachment_columns!(),
            " FROM attachments WHERE s3_key = ANY($1)"
        ))
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        found.iter().map(rows::attachment).collect()
    }

    async fn pending_attachments(
        &self,
        expired_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        let found = sqlx::query(concat!(
            "SELECT ",
            rows::attachment_columns!(),
            " FROM attachments WHERE state = 'pending' AND id > $1 AND upload_expires_at < $2 \
              ORDER BY id LIMIT $3"
        ))
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(expired_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        found.iter().map(rows::attachment).collect()
    }

    async fn delete_attachment(
        &self,
        command: DeleteAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Locked, so two deletes (or a delete and a send's claim) of one
        // attachment serialize and exactly one wins.
        let row = sqlx::query(concat!(
            "SELECT ",
            rows::attachment_columns!(),
            " FROM attachments WHERE id = $1 FOR UPDATE"
        ))
        .bind(command.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        let stored = rows::attachment(&row)?;
        let role = match command.by {
            Some(by) => {
                let role: Option<String> = sqlx::query_scalar(
                    "SELECT role FROM members WHERE conversation_id = $1 AND user_id = $2",
                )
                .bind(stored.conversation_id)
                .bind(by)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
                role.as_deref().map(rows::role).transpose()?
            }
            None => None,
        };
        stored.deletable_by(command.by, role)?;
        let key = stored.attachment.s3_key.clone();
        tombstone(
            &mut tx,
            command.id,
            &key,
            command.by,
            command.reason,
            command.at,
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(stored.tombstoned(command.at))
    }

    async fn record_removal(&self, entry: AuditEntry) -> Result<(), StoreError> {
        audit_in(
            &self.pool,
            entry.attachment_id,
            &entry.s3_key,
            entry.actor,
            entry.reason,
            entry.at,
        )
        .await
    }

    async fn audit(&self, s3_key: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let found: Vec<(Option<Uuid>, String, Option<Uuid>, String, DateTime<Utc>)> =
            sqlx::query_as(
                "SELECT attachment_id, s3_key, actor, reason, at FROM attachment_audit \
                 WHERE s3_key = $1 ORDER BY at, reason",
            )
            .bind(s3_key)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        found.into_iter().map(rows::audit_entry).collect()
    }

    async fn claim_deletions(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BlobDeletion>, StoreError> {
        let claimed: Vec<(Uuid, String, i32)> = sqlx::query_as(
            "UPDATE blob_deletions SET leased_until = $2, attempts = attempts + 1 \
             WHERE attachment_id IN (SELECT attachment_id FROM blob_deletions \
                 WHERE due_at <= $1 AND (leased_until IS NULL OR leased_until < $1) \
                 ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING attachment_id, s3_key, attempts",
        )
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(claimed
            .into_iter()
            .map(|(id, s3_key, attempts)| BlobDeletion {
                id,
                s3_key,
                attempts: u32::try_from(attempts).unwrap_or(0),
            })
            .collect())
    }

    async fn finish_deletion(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM blob_deletions WHERE attachment_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn defer_deletion(&self, id: Uuid, retry_at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE blob_deletions SET due_at = $1, leased_until = NULL WHERE attachment_id = $2",
        )
        .bind(retry_at)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn deletions_owed(&self) -> Result<u64, StoreError> {
        let owed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_deletions")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(u64::try_from(owed).unwrap_or(0))
    }

    async fn schedule(
        &self,
        entry: NewScheduled,
        caps: ScheduleCaps,
    ) -> Result<ScheduleOutcome, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // One schedule of a sender's at a time, across nodes, so the key
        // check and the count below hold until the insert commits. (The
        // node-wide cap is counted without a lock: concurrent schedules by
        // different senders may pass it by at most the pool's connections.)
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
            .bind(entry.sender_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if let Some(key) = &entry.idempotency_key {
            let existing = sqlx::query(concat!(
                "SELECT ",
                rows::scheduled_columns!(),
                " FROM scheduled_messages WHERE conversation_id = $1 AND sender_id = $2 \
                  AND idempotency_key = $3"
            ))
            .bind(entry.conversation_id)
            .bind(entry.sender_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(row) = existing {
                return entry.replay(rows::scheduled(&row)?);
            }
        }
        let (member, mine, total, mine_next, next): (
            bool,
            i64,
            i64,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        ) = sqlx::query_as(
            "SELECT \
                 EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2), \
                 (SELECT COUNT(*) FROM scheduled_messages \
                     WHERE sender_id = $2 AND status = 'pending'), \
                 (SELECT COUNT(*) FROM scheduled_messages WHERE status = 'pending'), \
                 (SELECT MIN(deliver_at) FROM scheduled_messages \
                     WHERE sender_id = $2 AND status = 'pending'), \
                 (SELECT MIN(deliver_at) FROM scheduled_messages WHERE status = 'pending')",
        )
        .bind(entry.conversation_id)
        .bind(entry.sender_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if !member {
            return Err(StoreError::Rejected(Rejection::NotMember));
        }
        let user = mine >= i64::from(caps.per_user_max);
        if user || total >= rows::signed(caps.total_max)? {
            return Ok(ScheduleOutcome::Full {
                user,
                next_due: mine_next.or(next),
            });
        }
        sqlx::query(
            "INSERT INTO scheduled_messages (id, conversation_id, sender_id, deliver_at, \
                 encrypted_content, nonce, message_type, idempotency_key, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)",
        )
        .bind(entry.id)
        .bind(entry.conversation_id)
        .bind(entry.sender_id)
        .bind(entry.deliver_at)
        .bind(&entry.encrypted_content)
        .bind(&entry.nonce)
        .bind(&entry.message_type)
        .bind(&entry.idempotency_key)
        .bind(entry.at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(ScheduleOutcome::Created(entry.into_entry()))
    }

    async fn scheduled(&self, id: Uuid) -> Result<Option<ScheduledMessage>, StoreError> {
        read_scheduled(&self.pool, id).await
    }

    async fn scheduled_for(
        &self,
        sender: Uuid,
        conversation: Option<Uuid>,
        failed_since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>, StoreError> {
        let found = sqlx::query(concat!(
            "SELECT ",
            rows::scheduled_columns!(),
            " FROM scheduled_messages WHERE sender_id = $1 \
                  AND ($2::uuid IS NULL OR conversation_id = $2) \
                  AND (status = 'pending' OR (status = 'failed' AND finished_at >= $3)) \
              ORDER BY deliver_at, id LIMIT $4"
        ))
        .bind(sender)
        .bind(conversation)
        .bind(failed_since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        found.iter().map(rows::scheduled).collect()
    }

    async fn change_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        change: ScheduledChange,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        let _ = at;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let mut entry = read_scheduled_for_update(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_pending(&entry, by)?;
        change.apply(&mut entry);
        // A changed entry is a new one to deliver: whoever held it lets it go.
        sqlx::query(
            "UPDATE scheduled_messages SET deliver_at = $1, encrypted_content = $2, nonce = $3, \
                 leased_until = NULL WHERE id = $4",
        )
        .bind(entry.deliver_at)
        .bind(&entry.encrypted_content)
        .bind(&entry.nonce)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(entry)
    }

    async fn cancel_scheduled(
        &self,
        id: Uuid,
        by: Uuid,
        at: DateTime<Utc>,
    ) -> Result<ScheduledMessage, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let mut entry = read_scheduled_for_update(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_pending(&entry, by)?;
        sqlx::query(
            "UPDATE scheduled_messages SET status = 'cancelled', finished_at = $1, \
                 leased_until = NULL WHERE id = $2",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        entry.status = ScheduledStatus::Cancelled;
        Ok(entry)
    }

    async fn next_scheduled(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query_scalar(
            "SELECT deliver_at FROM scheduled_messages \
             WHERE status = 'pending' AND (leased_until IS NULL OR leased_until < $1) \
             ORDER BY deliver_at LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    async fn claim_scheduled(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let lease = to_micros(lease_until);
        let found = sqlx::query(concat!(
            "UPDATE scheduled_messages SET leased_until = $2 \
             WHERE id IN (SELECT id FROM scheduled_messages \
                 WHERE status = 'pending' AND deliver_at <= $1 \
                     AND (leased_until IS NULL OR leased_until < $1) \
                 ORDER BY deliver_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING ",
            rows::scheduled_columns!()
        ))
        .bind(now)
        .bind(lease)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows::claimed(&found, lease)
    }

    async fn release_scheduled(
        &self,
        claim: ScheduledClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE scheduled_messages SET leased_until = $1 \
             WHERE id = $2 AND status = 'pending' AND leased_until = $3",
        )
        .bind(to_micros(retry_at))
        .bind(claim.id)
        .bind(claim.lease)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn fail_scheduled(
        &self,
        claim: ScheduledClaim,
        reason: ScheduledFailure,
        at: DateTime<Utc>,
    ) -> Result<Option<ScheduledMessage>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE scheduled_messages SET status = 'failed', failure_reason = $1, \
                 finished_at = $2, leased_until = NULL \
             WHERE id = $3 AND status = 'pending' AND leased_until = $4 \
             RETURNING ",
            rows::scheduled_columns!()
        ))
        .bind(reason.as_str())
        .bind(at)
        .bind(claim.id)
        .bind(claim.lease)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(rows::scheduled).transpose()
    }

    async fn purge_scheduled(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let purged = sqlx::query(
            "DELETE FROM scheduled_messages WHERE id IN (SELECT id FROM scheduled_messages \
                 WHERE finished_at IS NOT NULL AND finished_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(purged)
    }

    async fn scheduled_pending(&self) -> Result<u64, StoreError> {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM scheduled_messages WHERE status = 'pending'")
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
        Ok(u64::try_from(pending).unwrap_or(0))
    }
}
