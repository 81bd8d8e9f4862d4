//! The embedded store: SQLite in WAL mode through sqlx.
//!
//! One writer connection takes every write as `BEGIN IMMEDIATE`, so a write
//! transaction holds SQLite's write lock from its first statement and never
//! fails half-way on an upgrade; a pool of readers serves reads concurrently
//! from the WAL. Allocating a `seq` (`UPDATE conversations SET last_seq = ...
//! RETURNING`) and writing the rows it numbers commit together.
//!
//! A checkpointer on a connection of its own copies the WAL's committed
//! pages into the database file ten times a second, so that work (and its
//! sync of the database file) stays off the writer: with SQLite's default
//! the commit that fills the WAL to 1,000 pages copies them all inline,
//! holding every send queued behind it. The WAL only starts over when a
//! transaction begins with every frame copied, which a checkpointer beside
//! a busy writer never sees, so the writer still checkpoints itself at
//! [`SqliteOptions::wal_pages_max`]: by then only the last tenth of a
//! second's frames are left to copy, and its next transaction rewinds the
//! WAL.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, SqlitePool, Transaction};
use switchboard_protocol::{
    Conversation, ConversationCreated, ConversationSummary, Event, Member, MemberJoined,
    MemberLeft, MemberRoleChanged, Message, MessageDeleted, MessageEdited, MessageRead, Role,
    ScheduledFailure, ScheduledMessage, ScheduledStatus,
};
use switchboard_supervisors::{RestartPolicy, Supervisor, Task, TaskContext};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use switchboard_storage::{
    AuditEntry, BlobDeletion, Claimed, DeleteAttachment, DeletionReason, NewAttachment,
    NewScheduled, Rejection, ScheduleCaps, ScheduleOutcome, ScheduledChange, ScheduledClaim,
    StoreError, StoredAttachment, check_pending, not_pending, to_micros,
};
use switchboard_storage::{
    Committed, CreateConversation, CreateOutcome, DeleteMessage, EditMessage, MessageRange,
    NewMessage, SendOutcome, Store,
};

use crate::error::db;
use crate::rows;

mod feed;

/// How to open the SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; created with its folder if missing.
    pub path: PathBuf,
    /// Reader connections; writes always use one dedicated connection.
    pub readers_max: u32,
    /// `synchronous=FULL` makes every acknowledged write survive power loss;
    /// `NORMAL` survives a process crash only and is faster.
    pub synchronous_full: bool,
    /// How long a connection waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// WAL pages (of 4 KiB) at which the writer finishes a checkpoint
    /// itself so that the WAL starts over (see the module's docs): the WAL
    /// file's bound.
    pub wal_pages_max: u32,
    /// How the group committer and the checkpointer are restarted after a
    /// panic.
    pub restart: RestartPolicy,
}

impl SqliteOptions {
    /// Defaults for a database file at `path`.
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            readers_max: 4,
            synchronous_full: true,
            busy_timeout: Duration::from_secs(5),
            wal_pages_max: 4_096,
            restart: RestartPolicy::default(),
        }
    }
}

/// The SQLite [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The single connection every write goes through.
    writer: SqlitePool,
    /// Read-only connections.
    reader: SqlitePool,
    /// The checkpointer's connection.
    checkpointer: SqlitePool,
    /// Sends (and readiness probes) waiting for the group committer, which
    /// commits them in batches.
    sends: mpsc::Sender<Job>,
    /// Sends per group commit, and how long each held the writer.
    commits: CommitMetrics,
    /// What the checkpointer did.
    checkpoints: CheckpointMetrics,
}

/// The group committer's metrics.
#[derive(Debug, Clone)]
struct CommitMetrics {
    /// Sends committed together.
    sends: Histogram,
    /// Seconds from taking the writer's connection to the batch's outcome;
    /// their sum over a second is how busy the single writer is.
    seconds: Histogram,
}

/// The checkpointer's metrics.
#[derive(Debug, Clone)]
struct CheckpointMetrics {
    /// Seconds each checkpoint that copied pages took.
    seconds: Histogram,
    /// WAL frames not yet copied into the database file, as of the last
    /// checkpoint: the backlog should the checkpointer fall behind.
    frames_behind: IntGauge,
    /// Checkpoints that failed.
    failures: IntCounter,
}

/// How often the checkpointer copies the WAL into the database file; a
/// checkpoint with nothing to copy costs a read of the WAL's header.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Sends the group committer may have queued; a full queue makes callers
/// wait, so the bound holds however many conversations send at once.
const SENDS_QUEUED_MAX: usize = 1024;
/// Conversations one `last_seqs` statement asks for, within SQLite's
/// bound on a statement's parameters.
const LAST_SEQS_PER_QUERY_MAX: usize = 10_000;
/// Sends committed in one transaction at most.
const SENDS_PER_COMMIT_MAX: usize = 128;

/// What the group committer takes from its queue.
#[derive(Debug)]
enum Job {
    /// A send waiting for its batch's commit.
    Send {
        command: NewMessage,
        reply: oneshot::Sender<Result<SendOutcome, StoreError>>,
    },
    /// Readiness asking whether the writer path commits: answered with the
    /// outcome of the batch it rode in, or of an empty write transaction
    /// when it rode alone.
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

/// The group committer's task name, in metrics, readiness and fault points.
pub const GROUP_COMMIT_TASK: &str = "sqlite_group_commit";
/// The checkpointer's task name.
pub const CHECKPOINT_TASK: &str = "sqlite_checkpoint";

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, and starts its
    /// group committer and checkpointer under `supervisor`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the file cannot be opened or migrated.
    pub async fn open(
        options: &SqliteOptions,
        supervisor: &Supervisor,
    ) -> Result<Self, StoreError> {
        if let Some(parent) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone().pragma(
                "wal_autocheckpoint",
                options.wal_pages_max.max(1).to_string(),
            ))
            .await
            .map_err(db)?;
        crate::migrations::sqlite()
            .run(&writer)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        // One node uses the file, so a claim on a scheduled message left
        // from before this open is a dead process's: its entries are due
        // now, not when its lease would have run out.
        sqlx::query(
            "UPDATE scheduled_messages SET leased_until = NULL \
             WHERE status = 'pending' AND leased_until IS NOT NULL",
        )
        .execute(&writer)
        .await
        .map_err(db)?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone())
            .await
            .map_err(db)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.readers_max.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(db)?;
        let (sends, queued) = mpsc::channel(SENDS_QUEUED_MAX);
        let commits = CommitMetrics {
            sends: Histogram::with_opts(
                HistogramOpts::new(
                    "store_group_commit_sends",
                    "Sends committed together in one SQLite transaction",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            )
            .expect("valid histogram"),
            seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "store_group_commit_seconds",
                    "Time one group commit held SQLite's writer connection",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
                ]),
            )
            .expect("valid histogram"),
        };
        let checkpoints = CheckpointMetrics {
            seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "store_wal_checkpoint_seconds",
                    "Time one background checkpoint took to copy WAL pages into the database file",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                ]),
            )
            .expect("valid histogram"),
            frames_behind: IntGauge::new(
                "store_wal_frames_behind",
                "WAL frames not yet copied into the database file after the last checkpoint",
            )
            .expect("valid gauge"),
            failures: IntCounter::new(
                "store_wal_checkpoint_failures_total",
                "Background WAL checkpoints that failed",
            )
            .expect("valid counter"),
        };
        supervisor.spawn(
            GROUP_COMMIT_TASK,
            options.restart,
            GroupCommitter {
                writer: writer.clone(),
                queued,
                metrics: commits.clone(),
            },
        );
        // The send queue's handle tells the checkpointer whether any handle
        // on the store is left, without keeping one alive.
        supervisor.spawn(
            CHECKPOINT_TASK,
            options.restart,
            Checkpointer {
                pool: checkpointer.clone(),
                metrics: checkpoints.clone(),
                store: sends.downgrade(),
            },
        );
        Ok(Self {
            writer,
            reader,
            checkpointer,
            sends,
            commits,
            checkpoints,
        })
    }

    /// The store's metrics, for the caller to register where it keeps
    /// its others.
    #[must_use]
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.commits.sends.clone()),
            Box::new(self.commits.seconds.clone()),
            Box::new(self.checkpoints.seconds.clone()),
            Box::new(self.checkpoints.frames_behind.clone()),
            Box::new(self.checkpoints.failures.clone()),
        ]
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.checkpointer.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }

    /// A send carrying an attachment, in a transaction of its own on the
    /// writer (as an edit is): claims the attachment, takes the seq and
    /// writes the message together. Attachment sends are rare beside text,
    /// so they keep the group commit's statements simple.
    async fn send_attached(&self, command: NewMessage) -> Result<SendOutcome, StoreError> {
        let Some(attachment) = command.attachment.clone() else {
            return Err(StoreError::Backend("no attachment to send".into()));
        };
        let mut tx = self.begin().await?;
        if let Some(key) = &command.idempotency_key {
            let existing = sqlx::query(concat!(
                "SELECT ",
                rows::message_columns!(),
                " FROM messages WHERE conversation_id = ?1 AND sender_id = ?2 \
                  AND idempotency_key = ?3"
            ))
            .bind(command.conversation_id)
            .bind(command.sender_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(row) = existing {
                return command.replay(rows::message(&row)?);
            }
        }
        let member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2)",
        )
        .bind(command.conversation_id)
        .bind(command.sender_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if !member {
            return Err(StoreError::Rejected(Rejection::NotMember));
        }
        let claimed = sqlx::query(
            "UPDATE attachments SET state = 'attached', message_id = ?1, duration_ms = ?2 \
             WHERE id = ?3 AND conversation_id = ?4 AND uploader_id = ?5 AND state = 'pending'",
        )
        .bind(command.id)
        .bind(attachment.duration_ms.map(rows::signed).transpose()?)
        .bind(attachment.id)
        .bind(command.conversation_id)
        .bind(command.sender_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if claimed == 0 {
            let stored = read_attachment(&mut *tx, attachment.id)
                .await?
                .ok_or(StoreError::NotFound)?;
            stored.claimable_by(command.conversation_id, command.sender_id)?;
            return Err(StoreError::Backend(
                "an attachment claim matched no row".into(),
            ));
        }
        let seq = allocate(&mut tx, command.conversation_id, 1, command.at).await?;
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, message_type, \
                 encrypted_content, nonce, idempotency_key, created_at, attachment) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
        .bind(rows::encode_attachment(Some(attachment.as_ref()))?)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let at = command.at;
        let message = command.into_message(seq);
        let event = Event::MessageNew(message.clone());
        append(&mut tx, &event, at).await?;
        tx.commit().await.map_err(db)?;
        Ok(SendOutcome::Created(Committed {
            value: message,
            events: vec![event],
        }))
    }
}

async fn read_attachment<'e, E>(
    executor: E,
    id: Uuid,
) -> Result<Option<StoredAttachment>, StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let row = sqlx::query(concat!(
        "SELECT ",
        rows::attachment_columns!(),
        " FROM attachments WHERE id = ?1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::attachment).transpose()
}

async fn read_scheduled<'e, E>(
    executor: E,
    id: Uuid,
) -> Result<Option<ScheduledMessage>, StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let row = sqlx::query(concat!(
        "SELECT ",
        rows::scheduled_columns!(),
        " FROM scheduled_messages WHERE id = ?1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
    .map_err(db)?;
    row.as_ref().map(rows::scheduled).transpose()
}

/// Tombstones attachment `id` (already checked deletable) inside `tx`,
/// owes its object a deletion and audits it.
async fn tombstone(
    tx: &mut Transaction<'_, Sqlite>,
    id: Uuid,
    s3_key: &str,
    actor: Option<Uuid>,
    reason: DeletionReason,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE attachments SET state = 'deleted', deleted_at = ?1 WHERE id = ?2")
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
    tx: &mut Transaction<'_, Sqlite>,
    id: Uuid,
    s3_key: &str,
    actor: Option<Uuid>,
    reason: DeletionReason,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO blob_deletions (attachment_id, s3_key, due_at) VALUES (?1, ?2, ?3) \
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
    E: sqlx::SqliteExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO attachment_audit (attachment_id, s3_key, actor, reason, at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
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

/// A send handed to the committer: its outcome to come, or the send back
/// when the committer has gone.
type Queued =
    Result<oneshot::Receiver<Result<SendOutcome, StoreError>>, mpsc::error::SendError<Job>>;

/// Waits for the queued sends' outcomes, in order.
async fn settle(waiting: &mut Vec<Queued>, outcomes: &mut Vec<Result<SendOutcome, StoreError>>) {
    for waiting in waiting.drain(..) {
        outcomes.push(match waiting {
            Ok(outcome) => outcome.await.unwrap_or(Err(StoreError::Interrupted)),
            Err(_) => Err(closed()),
        });
    }
}

/// A send after the committer has gone (the store closed, or the
/// committer spent its restart budget): nothing was written.
fn closed() -> StoreError {
    StoreError::Backend("the store's writer has stopped".into())
}

/// Commits queued sends in batches: one `BEGIN IMMEDIATE`, one `COMMIT`,
/// one sync to disk for all of them, and a fixed number of statements
/// whatever the batch's size (each a round trip to sqlx's SQLite thread,
/// though the sync and the pages it writes cost more: BENCHMARKS.md
/// measures both). Under
/// the write lock the batch reads which senders are members and which
/// idempotency keys are already stored (each looked up in its index: see
/// [`members_sql`]), decides each send in queue order,
/// takes each conversation's seqs with one `UPDATE … FROM (VALUES …)`, and
/// writes the rows with one multi-row INSERT per table. A send refused by
/// its checks writes nothing and the others still commit; a backend
/// failure fails the whole batch; each caller gets its own outcome only
/// once the batch is durable. Sends to one conversation are queued in the
/// order its actor took them, so a batch never reorders its messages.
///
/// A panic loses only the batch in hand: its callers are told
/// [`StoreError::Interrupted`] (their reply channels close), never a
/// success, whether or not it committed, and retry with their idempotency
/// keys; what is still queued waits in the queue, which outlives the panic.
struct GroupCommitter {
    writer: SqlitePool,
    queued: mpsc::Receiver<Job>,
    metrics: CommitMetrics,
}

impl Task for GroupCommitter {
    async fn run(&mut self, context: &TaskContext) {
        let mut jobs = Vec::with_capacity(SENDS_PER_COMMIT_MAX);
        while self.queued.recv_many(&mut jobs, SENDS_PER_COMMIT_MAX).await > 0 {
            let mut commands = Vec::with_capacity(jobs.len());
            let mut replies = Vec::with_capacity(jobs.len());
            let mut probes = Vec::new();
            for job in jobs.drain(..) {
                match job {
                    Job::Send { command, reply } => {
                        commands.push(command);
                        replies.push(reply);
                    }
                    Job::Probe(reply) => probes.push(reply),
                }
            }
            context.fault_point("batch");
            let timer = self.metrics.seconds.start_timer();
            let committed = if commands.is_empty() {
                // A probe alone: an empty write transaction takes the write
                // lock and commits, as a batch would.
                empty_commit(&self.writer).await.map(|()| Vec::new())
            } else {
                self.metrics.sends.observe(commands.len() as f64);
                commit_batch(&self.writer, commands).await
            };
            if replies.is_empty() {
                timer.stop_and_discard();
            } else {
                timer.observe_duration();
            }
            context.fault_point("committed");
            let failure = committed.as_ref().err().map(ToString::to_string);
            for probe in probes {
                let _ = probe.send(
                    failure
                        .clone()
                        .map_or(Ok(()), |e| Err(StoreError::Backend(e))),
                );
            }
            let outcomes = committed.unwrap_or_else(|error| {
                replies
                    .iter()
                    .map(|_| Err(StoreError::Backend(error.to_string())))
                    .collect()
            });
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up does not undo the commit.
                let _ = reply.send(outcome);
            }
        }
    }
}

/// A write transaction with nothing in it: proof that the writer takes the
/// write lock and commits.
async fn empty_commit(writer: &SqlitePool) -> Result<(), StoreError> {
    let tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
    tx.commit().await.map_err(db)
}

/// Copies the WAL's committed pages into the database file every
/// [`CHECKPOINT_EVERY`] with a passive checkpoint, which neither waits for
/// nor blocks the writer or the readers (it copies what no reader still
/// needs, and the rest next time). The writer still rewinds the WAL (see
/// the module's docs). Stops once the last handle on the store is dropped
/// or the store is closed.
struct Checkpointer {
    pool: SqlitePool,
    metrics: CheckpointMetrics,
    store: mpsc::WeakSender<Job>,
}

impl Task for Checkpointer {
    async fn run(&mut self, context: &TaskContext) {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // (frames in the WAL, frames copied) after the last checkpoint.
        let mut last = (0, 0);
        loop {
            every.tick().await;
            if self.store.strong_count() == 0 {
                return;
            }
            context.fault_point("checkpoint");
            let timer = self.metrics.seconds.start_timer();
            let done: Result<(i64, i64, i64), sqlx::Error> =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(&self.pool)
                    .await;
            match done {
                Ok((_, frames, copied)) => {
                    // A checkpoint that found nothing new to copy is not timed.
                    if copied > 0 && (frames, copied) != last {
                        timer.observe_duration();
                    } else {
                        timer.stop_and_discard();
                    }
                    self.metrics.frames_behind.set((frames - copied).max(0));
                    last = (frames, copied);
                }
                Err(error) => {
                    timer.stop_and_discard();
                    if matches!(error, sqlx::Error::PoolClosed) {
                        return;
                    }
                    self.metrics.failures.inc();
                    tracing::warn!(%error, "WAL checkpoint failed; the writer still bounds the WAL");
                }
            }
        }
    }
}

/// How one send of a batch is decided before its seq is known.
enum Decision {
    /// Its key already stored this message.
    Stored(Result<SendOutcome, StoreError>),
    /// Its key was first used by send `i` of this batch.
    SameKeyAs(usize),
    /// Written, as the `n`th new message of its conversation in the batch.
    New(u32),
}

/// Which of `pairs` (conversation, user) pairs are members. The SQLite
/// sqlx bundles looks each pair up in the primary key; older versions
/// (3.40, a common system library) plan this row value `IN (VALUES …)` as
/// a scan of the whole table, which under the single writer would be a pass
/// over every member on every commit. A test checks the plan.
fn members_sql(pairs: usize) -> String {
    format!(
        "SELECT conversation_id, user_id FROM members \
         WHERE (conversation_id, user_id) IN (VALUES {})",
        placeholders(pairs, 2)
    )
}

/// The messages `keys` (conversation, sender, idempotency key) triples
/// already stored, each looked up in the idempotency index (the plan is
/// checked as [`members_sql`]'s is).
fn stored_keys_sql(keys: usize) -> String {
    format!(
        concat!(
            "SELECT ",
            rows::message_columns!(),
            ", idempotency_key FROM messages \
             WHERE (conversation_id, sender_id, idempotency_key) IN (VALUES {})"
        ),
        placeholders(keys, 3)
    )
}

/// The leases of those of `claims` entries still pending, each looked up
/// by primary key (the plan is checked as
/// [`members_sql`]'s is).
fn held_sql(claims: usize) -> String {
    format!(
        "SELECT id, leased_until FROM scheduled_messages \
         WHERE id IN (VALUES {}) AND status = 'pending'",
        placeholders(claims, 1)
    )
}

/// `(?, ?), (?, ?), …`: `rows` tuples of `width` placeholders.
fn placeholders(rows: usize, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    vec![row; rows].join(", ")
}

async fn commit_batch(
    writer: &SqlitePool,
    batch: Vec<NewMessage>,
) -> Result<Vec<Result<SendOutcome, StoreError>>, StoreError> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;

    // Which senders are members, read under the write lock.
    let pairs: BTreeSet<(Uuid, Uuid)> = batch
        .iter()
        .map(|c| (c.conversation_id, c.sender_id))
        .collect();
    let mut query = sqlx::query(AssertSqlSafe(members_sql(pairs.len())));
    for (conversation, user) in &pairs {
        query = query.bind(conversation).bind(user);
    }
    let mut members = HashSet::new();
    for row in query.fetch_all(&mut *tx).await.map_err(db)? {
        members.insert((
            row.try_get::<Uuid, _>(0).map_err(db)?,
            row.try_get::<Uuid, _>(1).map_err(db)?,
        ));
    }

    // Which keys already stored a message.
    let keyed: Vec<(&NewMessage, &str)> = batch
        .iter()
        .filter_map(|c| Some((c, c.idempotency_key.as_deref()?)))
        .collect();
    let mut stored: HashMap<(Uuid, Uuid, String), Message> = HashMap::new();
    if !keyed.is_empty() {
        let mut query = sqlx::query(AssertSqlSafe(stored_keys_sql(keyed.len())));
        for (command, key) in &keyed {
            query = query
                .bind(command.conversation_id)
                .bind(command.sender_id)
                .bind(*key);
        }
        for row in query.fetch_all(&mut *tx).await.map_err(db)? {
            let message = rows::message(&row)?;
            let key: String = row.try_get("idempotency_key").map_err(db)?;
            stored.insert((message.conversation_id, message.sender_id, key), message);
        }
    }

    // Which scheduled entries the sends deliver are still held by their
    // claims.
    let claims: Vec<ScheduledClaim> = batch.iter().filter_map(|c| c.scheduled).collect();
    let mut held: HashSet<Uuid> = HashSet::new();
    if !claims.is_empty() {
        let mut query = sqlx::query_as::<_, (Uuid, Option<DateTime<Utc>>)>(AssertSqlSafe(
            held_sql(claims.len()),
        ));
        for claim in &claims {
            query = query.bind(claim.id);
        }
        let leases: HashMap<Uuid, Option<DateTime<Utc>>> = query
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
        held.extend(
            claims
                .iter()
                .filter(|c| leases.get(&c.id) == Some(&Some(c.lease)))
                .map(|c| c.id),
        );
    }

    // Each send in queue order.
    let mut first_use: HashMap<(Uuid, Uuid, &str), usize> = HashMap::new();
    let mut new_per_conversation: BTreeMap<Uuid, (u32, DateTime<Utc>)> = BTreeMap::new();
    let mut decisions = Vec::with_capacity(batch.len());
    for (i, command) in batch.iter().enumerate() {
        let (conversation, sender) = (command.conversation_id, command.sender_id);
        if let Some(key) = command.idempotency_key.as_deref() {
            if let Some(message) = stored.get(&(conversation, sender, key.to_owned())) {
                decisions.push(Decision::Stored(command.replay(message.clone())));
                continue;
            }
            if let Some(&first) = first_use.get(&(conversation, sender, key)) {
                decisions.push(Decision::SameKeyAs(first));
                continue;
            }
        }
        if !members.contains(&(conversation, sender)) {
            decisions.push(Decision::Stored(Err(StoreError::Rejected(
                Rejection::NotMember,
            ))));
            continue;
        }
        // Taken from `held` so a second send of one entry finds it gone.
        if let Some(claim) = command.scheduled
            && !held.remove(&claim.id)
        {
            decisions.push(Decision::Stored(Err(not_pending())));
            continue;
        }
        if let Some(key) = command.idempotency_key.as_deref() {
            first_use.insert((conversation, sender, key), i);
        }
        let count = new_per_conversation
            .entry(conversation)
            .or_insert((0, command.at));
        decisions.push(Decision::New(count.0));
        count.0 += 1;
        count.1 = count.1.max(command.at);
    }

    // Every conversation's seqs in one statement.
    let mut last_seqs: HashMap<Uuid, i64> = HashMap::new();
    if !new_per_conversation.is_empty() {
        let sql = format!(
            "UPDATE conversations SET last_seq = last_seq + v.column2, updated_at = v.column3 \
             FROM (VALUES {}) AS v WHERE conversations.id = v.column1 \
             RETURNING conversations.id, conversations.last_seq",
            placeholders(new_per_conversation.len(), 3)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (conversation, (count, at)) in &new_per_conversation {
            query = query.bind(conversation).bind(i64::from(*count)).bind(*at);
        }
        for row in query.fetch_all(&mut *tx).await.map_err(db)? {
            last_seqs.insert(row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
        }
    }

    // The outcomes, now that the seqs are known; each new message takes its
    // command's strings rather than a copy of them.
    let mut outcomes: Vec<Result<SendOutcome, StoreError>> = Vec::with_capacity(batch.len());
    // The new messages: their outcome, idempotency key and encoded event.
    let mut created = Vec::new();
    // The scheduled entries delivered: entry, message, when.
    let mut sent: Vec<(Uuid, Uuid, DateTime<Utc>)> = Vec::new();
    for (command, decision) in batch.into_iter().zip(decisions) {
        let outcome = match decision {
            Decision::Stored(outcome) => outcome,
            Decision::SameKeyAs(first) => match &outcomes[first] {
                Ok(SendOutcome::Created(c)) => command.replay(c.value.clone()),
                _ => Err(StoreError::Backend(
                    "a batch lost a send's first use".into(),
                )),
            },
            Decision::New(n) => {
                let (count, _) = new_per_conversation[&command.conversation_id];
                let last = *last_seqs.get(&command.conversation_id).ok_or_else(|| {
                    StoreError::Backend("a member's conversation vanished".into())
                })?;
                let seq = last - i64::from(count) + 1 + i64::from(n);
                let key = command.idempotency_key.clone();
                if let Some(claim) = command.scheduled {
                    sent.push((claim.id, command.id, command.at));
                }
                let message = command.into_message(seq);
                let event = Event::MessageNew(message.clone());
                created.push((outcomes.len(), key, rows::encode_event(&event)?));
                Ok(SendOutcome::Created(Committed {
                    value: message,
                    events: vec![event],
                }))
            }
        };
        outcomes.push(outcome);
    }

    if !created.is_empty() {
        let committed = |i: usize| match &outcomes[i] {
            Ok(SendOutcome::Created(c)) => c,
            _ => unreachable!("created sends have created outcomes"),
        };
        let mut messages = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, message_type, \
             encrypted_content, nonce, idempotency_key, created_at) ",
        );
        messages.push_values(&created, |mut row, (i, key, _)| {
            let m = &committed(*i).value;
            row.push_bind(m.id)
                .push_bind(m.conversation_id)
                .push_bind(m.seq)
                .push_bind(m.sender_id)
                .push_bind(&m.message_type)
                .push_bind(&m.encrypted_content)
                .push_bind(&m.nonce)
                .push_bind(key)
                .push_bind(m.created_at);
        });
        messages.build().execute(&mut *tx).await.map_err(db)?;
        let mut events = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (conversation_id, seq, type, payload, created_at) ",
        );
        events.push_values(&created, |mut row, (i, _, payload)| {
            let c = committed(*i);
            let m = &c.value;
            row.push_bind(m.conversation_id)
                .push_bind(m.seq)
                .push_bind(c.events[0].kind())
                .push_bind(payload)
                .push_bind(m.created_at);
        });
        events.build().execute(&mut *tx).await.map_err(db)?;
    }
    if !sent.is_empty() {
        let sql = format!(
            "UPDATE scheduled_messages SET status = 'sent', message_id = v.column2, \
                 finished_at = v.column3, leased_until = NULL \
             FROM (VALUES {}) AS v WHERE scheduled_messages.id = v.column1",
            placeholders(sent.len(), 3)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (scheduled, message, at) in &sent {
            query = query.bind(scheduled).bind(message).bind(at);
        }
        query.execute(&mut *tx).await.map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(outcomes)
}

/// Takes the next `count` seqs of a conversation; returns the first.
async fn allocate(
    tx: &mut Transaction<'static, Sqlite>,
    conversation_id: Uuid,
    count: i64,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let last: i64 = sqlx::query_scalar(
        "UPDATE conversations SET last_seq = last_seq + ?1, updated_at = ?2 WHERE id = ?3 \
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

/// Appends one event to the log; its `seq` must come from [`allocate`].
async fn append(
    tx: &mut Transaction<'_, Sqlite>,
    event: &Event,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let payload = rows::encode_event(event)?;
    sqlx::query(
        "INSERT INTO events (conversation_id, seq, type, payload, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(event.conversation_id())
    .bind(event.seq())
    .bind(event.kind())
    .bind(payload)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Numbers a write's single event, appends it and commits the transaction.
async fn commit_one<T>(
    mut tx: Transaction<'static, Sqlite>,
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

/// Explains why a conditional write on a message matched no row.
async fn why_not(
    tx: &mut Transaction<'static, Sqlite>,
    conversation_id: Uuid,
    message_id: Uuid,
    user_id: Uuid,
) -> Result<StoreError, StoreError> {
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2)",
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
        "SELECT deleted_at FROM messages WHERE id = ?1 AND conversation_id = ?2",
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

async fn read_members(pool: &SqlitePool, conversation_id: Uuid) -> Result<Vec<Member>, StoreError> {
    let rows = sqlx::query(
        "SELECT user_id, role, last_read_seq, joined_at FROM members \
         WHERE conversation_id = ?1 ORDER BY joined_at, user_id",
    )
    .bind(conversation_id)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(rows::member).collect()
}

async fn read_conversation(
    pool: &SqlitePool,
    id: Uuid,
) -> Result<Option<Conversation>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, kind, title, last_seq, created_at, updated_at FROM conversations WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db)?
    else {
        return Ok(None);
    };
    Ok(Some(Conversation {
        id: row.try_get("id").map_err(db)?,
        kind: rows::kind(row.try_get("kind").map_err(db)?)?,
        title: row.try_get("title").map_err(db)?,
        members: read_members(pool, id).await?,
        last_seq: row.try_get("last_seq").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        updated_at: row.try_get("updated_at").map_err(db)?,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    /// Through the group committer: answered once a write transaction has
    /// committed, so readiness sees the writer path, not a reader.
    async fn ping(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sends
            .send(Job::Probe(reply))
            .await
            .map_err(|_| StoreError::Backend("the group committer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Interrupted)??;
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn create_conversation(
        &self,
        command: CreateConversation,
    ) -> Result<CreateOutcome, StoreError> {
        let key = command.pair_key()?;
        let mut tx = self.begin().await?;
        if let Some(key) = &key {
            let existing: Option<Uuid> =
                sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = ?1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
            if let Some(id) = existing {
                drop(tx);
                let conversation = read_conversation(&self.writer, id)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                return Ok(CreateOutcome::Existing(conversation));
            }
        }
        sqlx::query(
            "INSERT INTO conversations (id, kind, title, direct_key, last_seq, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
        )
        .bind(command.id)
        .bind(command.kind.as_str())
        .bind(&command.title)
        .bind(&key)
        .bind(command.at)
        .execute(&mut *tx)
        .await.map_err(db)?;
        let members = command.initial_members();
        for member in &members {
            sqlx::query(
                "INSERT INTO members (conversation_id, user_id, role, last_read_seq, joined_at) \
                 VALUES (?1, ?2, ?3, 0, ?4)",
            )
            .bind(command.id)
            .bind(member.user_id)
            .bind(member.role.as_str())
            .bind(command.at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let seq = allocate(&mut tx, command.id, 1, command.at).await?;
        let conversation = Conversation {
            id: command.id,
            kind: command.kind,
            title: command.title,
            members,
            last_seq: seq,
            created_at: command.at,
            updated_at: command.at,
        };
        let event = Event::ConversationCreated(ConversationCreated {
            conversation_id: command.id,
            seq,
            conversation: conversation.clone(),
        });
        append(&mut tx, &event, command.at).await?;
        tx.commit().await.map_err(db)?;
        Ok(CreateOutcome::Created(Committed {
            value: conversation,
            events: vec![event],
        }))
    }

    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        read_conversation(&self.reader, id).await
    }

    async fn members(&self, conversation_id: Uuid) -> Result<Vec<Member>, StoreError> {
        read_members(&self.reader, conversation_id).await
    }

    async fn role(&self, conversation_id: Uuid, user_id: Uuid) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = sqlx::query_scalar(
            "SELECT role FROM members WHERE conversation_id = ?1 AND user_id = ?2",
        )
        .bind(conversation_id)
        .bind(user_id)
        .fetch_optional(&self.reader)
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
             WHERE m.user_id = ?1 LIMIT ?2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await.map_err(db)?)
    }

    async fn last_seqs(&self, conversations: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let mut found = Vec::with_capacity(conversations.len());
        // SQLite binds at most 32,766 parameters per statement.
        for chunk in conversations.chunks(LAST_SEQS_PER_QUERY_MAX) {
            let sql = format!(
                "SELECT id, last_seq FROM conversations WHERE id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query_as::<_, (Uuid, i64)>(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            found.extend(query.fetch_all(&self.reader).await.map_err(db)?);
        }
        Ok(found)
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
            " WHERE m.user_id = ?1 ORDER BY c.updated_at DESC, c.id LIMIT ?2"
        ))
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        found.iter().map(rows::summary).collect()
    }

    /// Queues them back to back, so the committer takes them in order and,
    /// as far as its batch bound allows, in one commit. A send carrying an
    /// attachment commits on its own (see [`SqliteStore::send_attached`]),
    /// after everything queued before it, so the batch keeps its order.
    async fn send_batch(&self, commands: Vec<NewMessage>) -> Vec<Result<SendOutcome, StoreError>> {
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut waiting = Vec::with_capacity(commands.len());
        for command in commands {
            if command.attachment.is_some() {
                settle(&mut waiting, &mut outcomes).await;
                outcomes.push(self.send_attached(command).await);
                continue;
            }
            let (reply, outcome) = oneshot::channel();
            let queued = self.sends.send(Job::Send { command, reply }).await;
            waiting.push(queued.map(|()| outcome));
        }
        settle(&mut waiting, &mut outcomes).await;
        outcomes
    }

    async fn send(&self, command: NewMessage) -> Result<SendOutcome, StoreError> {
        if command.attachment.is_some() {
            return self.send_attached(command).await;
        }
        let (reply, outcome) = oneshot::channel();
        self.sends
            .send(Job::Send { command, reply })
            .await
            .map_err(|_| closed())?;
        // The committer dropped the reply: it panicked with this send in
        // hand, committed or not.
        outcome.await.map_err(|_| StoreError::Interrupted)?
    }

    async fn edit(&self, command: EditMessage) -> Result<Committed<Message>, StoreError> {
        let mut tx = self.begin().await?;
        // Sender only, still a member, not deleted: all in the statement itself.
        let row = sqlx::query(concat!(
            "UPDATE messages SET encrypted_content = ?1, nonce = ?2, edited_at = ?3 \
             WHERE id = ?4 AND conversation_id = ?5 AND sender_id = ?6 AND deleted_at IS NULL \
               AND EXISTS (SELECT 1 FROM members WHERE conversation_id = ?5 AND user_id = ?6) \
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
        let mut tx = self.begin().await?;
        // The sender or a moderator, either still a member, and not yet deleted.
        let row = sqlx::query(concat!(
            "UPDATE messages SET encrypted_content = '', nonce = '', deleted_at = ?1, \
                 deleted_by = ?2, attachment = NULL \
             WHERE id = ?3 AND conversation_id = ?4 AND deleted_at IS NULL \
               AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = ?4 \
                   AND m.user_id = ?2 \
                   AND (m.role IN ('owner', 'admin') OR messages.sender_id = ?2)) \
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
            "SELECT id, s3_key FROM attachments WHERE message_id = ?1 AND state = 'attached'",
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
        let mut tx = self.begin().await?;
        let advanced = sqlx::query(
            "UPDATE members SET last_read_seq = ?1 \
             WHERE conversation_id = ?2 AND user_id = ?3 AND last_read_seq < ?1 \
               AND ?1 <= (SELECT last_seq FROM conversations WHERE id = ?2)",
        )
        .bind(seq)
        .bind(conversation_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if advanced == 0 {
            let role: Option<String> = sqlx::query_scalar(
                "SELECT role FROM members WHERE conversation_id = ?1 AND user_id = ?2",
            )
            .bind(conversation_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            return match role {
                None => Err(StoreError::Rejected(Rejection::NotMember)),
                Some(_) => Ok(None),
            };
        }
        let event_seq = allocate(&mut tx, conversation_id, 1, at).await?;
        let event = Event::MessageRead(MessageRead {
            conversation_id,
            seq: event_seq,
            user_id,
            read_seq: seq,
        });
        append(&mut tx, &event, at).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(event))
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
        let mut tx = self.begin().await?;
        let added = sqlx::query(
            "INSERT INTO members (conversation_id, user_id, role, last_read_seq, joined_at) \
             SELECT c.id, ?2, ?3, c.last_seq, ?4 FROM conversations c \
             WHERE c.id = ?1 AND c.kind = 'group' \
               AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = ?1 \
                   AND m.user_id = ?5 AND m.role IN ('owner', 'admin'))",
        )
        .bind(conversation_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(at)
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => StoreError::Conflict("already a member".into()),
            other => other,
        })?
        .rows_affected();
        if added == 0 {
            return Err(StoreError::Rejected(Rejection::NotPermitted));
        }
        let row = sqlx::query(
            "SELECT user_id, role, last_read_seq, joined_at FROM members \
             WHERE conversation_id = ?1 AND user_id = ?2",
        )
        .bind(conversation_id)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
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
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE members SET role = ?1 \
             WHERE conversation_id = ?2 AND user_id = ?3 AND role <> 'owner' AND role <> ?1 \
               AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = ?2 \
                   AND m.user_id = ?4 AND m.role IN ('owner', 'admin'))",
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
        let mut tx = self.begin().await?;
        let removed: Option<String> = sqlx::query_scalar(
            "DELETE FROM members \
             WHERE conversation_id = ?1 AND user_id = ?2 \
               AND (SELECT kind FROM conversations WHERE id = ?1) = 'group' \
               AND (user_id = ?3 OR (role <> 'owner' AND EXISTS \
                   (SELECT 1 FROM members m WHERE m.conversation_id = ?1 \
                       AND m.user_id = ?3 AND m.role IN ('owner', 'admin')))) \
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
                 WHERE conversation_id = ?1 AND user_id = \
                     (SELECT user_id FROM members WHERE conversation_id = ?1 \
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
            " FROM messages WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
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
                " FROM messages WHERE conversation_id = ?1 AND seq > ?2 \
                  AND (?3 IS NULL OR seq < ?3) ORDER BY seq ASC LIMIT ?4"
            )
        } else {
            // The newest page before `before_seq`, returned ascending.
            concat!(
                "SELECT * FROM (SELECT ",
                rows::message_columns!(),
                " FROM messages WHERE conversation_id = ?1 AND seq > ?2 \
                  AND (?3 IS NULL OR seq < ?3) ORDER BY seq DESC LIMIT ?4) ORDER BY seq ASC"
            )
        };
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(conversation_id)
            .bind(range.after_seq.unwrap_or(0))
            .bind(range.before_seq)
            .bind(range.limit)
            .fetch_all(&self.reader)
            .await
            .map_err(db)?;
        Ok(rows.iter().map(rows::message).collect::<Result<_, _>>()?)
    }

    async fn events(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let payloads: Vec<String> = sqlx::query_scalar(
            "SELECT payload FROM events WHERE conversation_id = ?1 AND seq > ?2 \
             ORDER BY seq ASC LIMIT ?3",
        )
        .bind(conversation_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows::decode_events(&payloads)
    }

    async fn events_of(&self, from: &[(Uuid, i64)], limit: u32) -> Result<Vec<Event>, StoreError> {
        if from.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Sqlite>::new("WITH p (c, after) AS (");
        query.push_values(from, |mut row, (conversation, after)| {
            row.push_bind(*conversation).push_bind(*after);
        });
        query.push(
            ") SELECT e.payload FROM p JOIN events e ON e.conversation_id = p.c AND e.seq > p.after \
             ORDER BY e.conversation_id, e.seq LIMIT ",
        );
        query.push_bind(limit);
        let payloads: Vec<String> = query
            .build_query_scalar()
            .fetch_all(&self.reader)
            .await
            .map_err(db)?;
        rows::decode_events(&payloads)
    }

    async fn create_attachment(
        &self,
        attachment: NewAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        let mut tx = self.begin().await?;
        let written = sqlx::query(
            "INSERT INTO attachments (id, conversation_id, uploader_id, kind, s3_key, \
                 content_type, size_bytes, file_name, state, created_at, upload_expires_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10 \
             WHERE EXISTS (SELECT 1 FROM members WHERE conversation_id = ?2 AND user_id = ?3)",
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
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if written == 0 {
            return Err(StoreError::Rejected(Rejection::NotMember));
        }
        tx.commit().await.map_err(db)?;
        Ok(attachment.into_stored())
    }

    async fn attachment(&self, id: Uuid) -> Result<Option<StoredAttachment>, StoreError> {
        read_attachment(&self.reader, id).await
    }

    async fn attachments_by_keys(
        &self,
        keys: &[String],
    ) -> Result<Vec<StoredAttachment>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(LAST_SEQS_PER_QUERY_MAX) {
            let sql = format!(
                concat!(
                    "SELECT ",
                    rows::attachment_columns!(),
                    " FROM attachments WHERE s3_key IN ({})"
                ),
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for key in chunk {
                query = query.bind(key);
            }
            for row in query.fetch_all(&self.reader).await.map_err(db)? {
                found.push(rows::attachment(&row)?);
            }
        }
        Ok(found)
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
            " FROM attachments WHERE state = 'pending' AND id > ?1 AND upload_expires_at < ?2 \
              ORDER BY id LIMIT ?3"
        ))
        .bind(after.unwrap_or_else(Uuid::nil))
        .bind(expired_before)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        found.iter().map(rows::attachment).collect()
    }

    async fn delete_attachment(
        &self,
        command: DeleteAttachment,
    ) -> Result<StoredAttachment, StoreError> {
        // Under the write lock, so two deletes (or a delete and a send's
        // claim) of one attachment serialize and exactly one wins.
        let mut tx = self.begin().await?;
        let stored = read_attachment(&mut *tx, command.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let role = match command.by {
            Some(by) => {
                let role: Option<String> = sqlx::query_scalar(
                    "SELECT role FROM members WHERE conversation_id = ?1 AND user_id = ?2",
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
        let mut tx = self.begin().await?;
        audit_in(
            &mut *tx,
            entry.attachment_id,
            &entry.s3_key,
            entry.actor,
            entry.reason,
            entry.at,
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    async fn audit(&self, s3_key: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let found: Vec<(Option<Uuid>, String, Option<Uuid>, String, DateTime<Utc>)> =
            sqlx::query_as(
                "SELECT attachment_id, s3_key, actor, reason, at FROM attachment_audit \
                 WHERE s3_key = ?1 ORDER BY at, reason",
            )
            .bind(s3_key)
            .fetch_all(&self.reader)
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
        let mut tx = self.begin().await?;
        let claimed: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "UPDATE blob_deletions SET leased_until = ?2, attempts = attempts + 1 \
             WHERE attachment_id IN (SELECT attachment_id FROM blob_deletions \
                 WHERE due_at <= ?1 AND (leased_until IS NULL OR leased_until < ?1) \
                 ORDER BY due_at LIMIT ?3) \
             RETURNING attachment_id, s3_key, attempts",
        )
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
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
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM blob_deletions WHERE attachment_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn defer_deletion(&self, id: Uuid, retry_at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE blob_deletions SET due_at = ?1, leased_until = NULL WHERE attachment_id = ?2",
        )
        .bind(retry_at)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn deletions_owed(&self) -> Result<u64, StoreError> {
        let owed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_deletions")
            .fetch_one(&self.reader)
            .await
            .map_err(db)?;
        Ok(u64::try_from(owed).unwrap_or(0))
    }

    async fn schedule(
        &self,
        entry: NewScheduled,
        caps: ScheduleCaps,
    ) -> Result<ScheduleOutcome, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(key) = &entry.idempotency_key {
            let existing = sqlx::query(concat!(
                "SELECT ",
                rows::scheduled_columns!(),
                " FROM scheduled_messages WHERE conversation_id = ?1 AND sender_id = ?2 \
                  AND idempotency_key = ?3"
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
        // Membership and both counts under the write lock, so no other
        // schedule slips between the check and the insert.
        let (member, mine, total, mine_next, next): (
            bool,
            i64,
            i64,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        ) = sqlx::query_as(
            "SELECT \
                 EXISTS (SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2), \
                 (SELECT COUNT(*) FROM scheduled_messages \
                     WHERE sender_id = ?2 AND status = 'pending'), \
                 (SELECT COUNT(*) FROM scheduled_messages WHERE status = 'pending'), \
                 (SELECT MIN(deliver_at) FROM scheduled_messages \
                     WHERE sender_id = ?2 AND status = 'pending'), \
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9)",
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
        read_scheduled(&self.reader, id).await
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
            " FROM scheduled_messages WHERE sender_id = ?1 \
                  AND (?2 IS NULL OR conversation_id = ?2) \
                  AND (status = 'pending' OR (status = 'failed' AND finished_at >= ?3)) \
              ORDER BY deliver_at, id LIMIT ?4"
        ))
        .bind(sender)
        .bind(conversation)
        .bind(failed_since)
        .bind(limit)
        .fetch_all(&self.reader)
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
        let mut tx = self.begin().await?;
        let mut entry = read_scheduled(&mut *tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_pending(&entry, by)?;
        change.apply(&mut entry);
        // A changed entry is a new one to deliver: whoever held it lets it go.
        sqlx::query(
            "UPDATE scheduled_messages SET deliver_at = ?1, encrypted_content = ?2, nonce = ?3, \
                 leased_until = NULL WHERE id = ?4",
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
        let mut tx = self.begin().await?;
        let mut entry = read_scheduled(&mut *tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_pending(&entry, by)?;
        sqlx::query(
            "UPDATE scheduled_messages SET status = 'cancelled', finished_at = ?1, \
                 leased_until = NULL WHERE id = ?2",
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
             WHERE status = 'pending' AND (leased_until IS NULL OR leased_until < ?1) \
             ORDER BY deliver_at LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.reader)
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
        let mut tx = self.begin().await?;
        let found = sqlx::query(concat!(
            "UPDATE scheduled_messages SET leased_until = ?2 \
             WHERE id IN (SELECT id FROM scheduled_messages \
                 WHERE status = 'pending' AND deliver_at <= ?1 \
                     AND (leased_until IS NULL OR leased_until < ?1) \
                 ORDER BY deliver_at LIMIT ?3) \
             RETURNING ",
            rows::scheduled_columns!()
        ))
        .bind(now)
        .bind(lease)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows::claimed(&found, lease)
    }

    async fn release_scheduled(
        &self,
        claim: ScheduledClaim,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE scheduled_messages SET leased_until = ?1 \
             WHERE id = ?2 AND status = 'pending' AND leased_until = ?3",
        )
        .bind(to_micros(retry_at))
        .bind(claim.id)
        .bind(claim.lease)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn fail_scheduled(
        &self,
        claim: ScheduledClaim,
        reason: ScheduledFailure,
        at: DateTime<Utc>,
    ) -> Result<Option<ScheduledMessage>, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE scheduled_messages SET status = 'failed', failure_reason = ?1, \
                 finished_at = ?2, leased_until = NULL \
             WHERE id = ?3 AND status = 'pending' AND leased_until = ?4 \
             RETURNING ",
            rows::scheduled_columns!()
        ))
        .bind(reason.as_str())
        .bind(at)
        .bind(claim.id)
        .bind(claim.lease)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        row.as_ref().map(rows::scheduled).transpose()
    }

    async fn purge_scheduled(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let purged = sqlx::query(
            "DELETE FROM scheduled_messages WHERE id IN (SELECT id FROM scheduled_messages \
                 WHERE finished_at IS NOT NULL AND finished_at < ?1 LIMIT ?2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(purged)
    }

    async fn scheduled_pending(&self) -> Result<u64, StoreError> {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM scheduled_messages WHERE status = 'pending'")
                .fetch_one(&self.reader)
                .await
                .map_err(db)?;
        Ok(u64::try_from(pending).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a folder of its own, deleted with the folder.
    async fn scratch() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let supervisor =
            Supervisor::new(std::sync::Arc::new(switchboard_storage::SystemClock::new()));
        let store = SqliteStore::open(
            &SqliteOptions::new(dir.path().join("store.db")),
            &supervisor,
        )
        .await
        .unwrap();
        (dir, store)
    }

    /// SQLite's plan for `sql`, one line per step.
    async fn plan(store: &SqliteStore, sql: &str) -> Vec<String> {
        let mut query = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for _ in 0..sql.matches('?').count() {
            query = query.bind(Uuid::nil());
        }
        query
            .fetch_all(&store.reader)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
    }

    /// The writer leaves checkpoints to the checkpointer up to
    /// `wal_pages_max`, instead of SQLite's default of 1,000 pages.
    #[tokio::test]
    async fn the_writer_checkpoints_only_at_the_wal_bound() {
        let (_dir, store) = scratch().await;
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(pages, 4_096);
        store.close().await;
    }

    /// The group commit's reads look each sender and each key up in an
    /// index, whatever the batch's size: a scan would cost the writer a
    /// pass over every member or every message on every commit.
    #[tokio::test]
    async fn the_group_commit_reads_search_their_indexes() {
        let (_dir, store) = scratch().await;
        for size in [1, 2, 64] {
            for (sql, table) in [
                (members_sql(size), "members"),
                (stored_keys_sql(size), "messages"),
                (held_sql(size), "scheduled_messages"),
            ] {
                let plan = plan(&store, &sql).await;
                assert!(
                    plan.iter()
                        .any(|step| step.starts_with(&format!("SEARCH {table}"))),
                    "{size} rows: {plan:?}"
                );
                assert!(
                    !plan
                        .iter()
                        .any(|step| step.starts_with(&format!("SCAN {table}"))),
                    "{size} rows: {plan:?}"
                );
            }
        }
        store.close().await;
    }
}
