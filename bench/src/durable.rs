//! `durable`: the most acknowledged sends per second the server sustains
//! with every message persisted, on SQLite and on PostgreSQL, and the
//! send-acknowledgement latency at half that rate. The ceiling, measured
//! in the same run, is a bare batched INSERT of message rows into the same
//! schema on the same database engine with the same durability settings.
//! A second reference, also measured in the run, is the same senders
//! against the bare server, which answers each send over the same HTTP
//! stack and stores nothing: what HTTP alone allows on this machine.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Connection, Executor, QueryBuilder};
use switchboard_client::Client;
use switchboard_protocol::{ConversationKind, CreateConversation};
use switchboard_storage::{CreateConversation as StoreCreate, CreateOutcome, Store, SystemClock};
use switchboard_storage_sql::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use switchboard_supervisors::Supervisor;
use uuid::Uuid;

use crate::fanout::{self, Phase};
use crate::report::{Latency, round};
use crate::server::{OPEN_LIMITS, Server};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Conversations the sends go to.
    #[arg(long, default_value_t = 16)]
    pub(crate) conversations: usize,
    /// Concurrent senders per conversation (all members of it).
    #[arg(long, default_value_t = 4)]
    pub(crate) senders_per_conversation: usize,
    /// Seconds each measured phase lasts (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub(crate) secs: u64,
    /// Rows per transaction in the bare INSERT ceiling.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// PostgreSQL to measure on (a fresh database is created in it and
    /// dropped afterwards); without it only SQLite is measured.
    #[arg(long, env = "SWITCHBOARD_BENCH_POSTGRES_URL")]
    pub(crate) postgres_url: Option<String>,
}

/// One database's figures.
#[derive(Debug)]
struct Run {
    database: &'static str,
    /// Flat out with the rate limits turned off (SQLite only): the cost of
    /// checking them is `max` against this.
    limits_off: Option<Phase>,
    max: Phase,
    half: Phase,
    ceiling_rows_per_sec: f64,
    server_rss_bytes: u64,
}

impl Run {
    fn ratio(&self) -> f64 {
        self.max.sends_per_sec() / self.ceiling_rows_per_sec
    }

    /// Against `http_only`: the same senders, flat out, at the bare
    /// server, which stores nothing.
    fn ratio_to(&self, http_only: &Phase) -> f64 {
        self.max.sends_per_sec() / http_only.sends_per_sec()
    }
}

pub(crate) async fn run(binary: &Path, args: &Args, json: bool) -> anyhow::Result<()> {
    let http_only = {
        let bare = Server::start_bare().await?;
        let senders = senders(&bare, args).await?;
        fanout::send_phase(&senders, &[bare.pid()], None, args.secs).await?
    };
    let mut runs = Vec::new();
    {
        let limits_off = {
            let mut flags = OPEN_LIMITS.to_vec();
            flags.extend(["--rate-limits", "false"]);
            let server = Server::start(binary, &flags).await?;
            let senders = senders(&server, args).await?;
            fanout::send_phase(&senders, &[server.pid()], None, args.secs).await?
        };
        let server = Server::start(binary, &OPEN_LIMITS).await?;
        let (max, half) = measure(&server, args).await?;
        let dir = tempfile::tempdir()?;
        let ceiling = bare_sqlite(&dir.path().join("bare.db"), args).await?;
        runs.push(Run {
            database: "sqlite",
            limits_off: Some(limits_off),
            max,
            half,
            ceiling_rows_per_sec: ceiling,
            server_rss_bytes: server.peak_rss()?,
        });
    }
    if let Some(url) = &args.postgres_url {
        let database = Scratch::create(url).await?;
        let result = async {
            let mut flags = OPEN_LIMITS.to_vec();
            flags.extend(["--database-url", database.url.as_str()]);
            let server = Server::start(binary, &flags).await?;
            let (max, half) = measure(&server, args).await?;
            let rss = server.peak_rss()?;
            drop(server);
            let ceiling = bare_postgres(&database.url, args).await?;
            anyhow::Ok(Run {
                database: "postgres",
                limits_off: None,
                max,
                half,
                ceiling_rows_per_sec: ceiling,
                server_rss_bytes: rss,
            })
        }
        .await;
        database.drop_it().await;
        runs.push(result?);
    }
    for r in &runs {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "durable",
                    "database": r.database,
                    "conversations": args.conversations,
                    "senders": args.conversations * args.senders_per_conversation,
                    "sends_per_sec": round(r.max.sends_per_sec()),
                    "ceiling": {
                        "name": format!("bare batched INSERT ({} rows per transaction)", args.batch),
                        "rows_per_sec": round(r.ceiling_rows_per_sec),
                    },
                    "ratio_to_ceiling": round(r.ratio()),
                    "http_only": {
                        "name": "bare server, same senders, nothing stored",
                        "sends_per_sec": round(http_only.sends_per_sec()),
                        "server_cpu_cores": round(http_only.server_cores),
                        "bench_cpu_cores": round(http_only.bench_cores),
                        "ratio": round(r.ratio_to(&http_only)),
                    },
                    "latency_ms": Latency::of(&r.half.ack).json(),
                    "latency_rate": round(r.half.sends_per_sec()),
                    "max_rate_latency_ms": Latency::of(&r.max.ack).json(),
                    "server_rss_bytes": r.server_rss_bytes,
                    "server_cpu_cores": round(r.max.server_cores),
                    "bench_cpu_cores": round(r.max.bench_cores),
                    "rate_limits_off": r.limits_off.as_ref().map(|off| serde_json::json!({
                        "sends_per_sec": round(off.sends_per_sec()),
                        "ratio_on_to_off": round(r.max.sends_per_sec() / off.sends_per_sec()),
                    })),
                })
            );
        } else {
            println!(
                "durable ({}): {} conversations × {} senders, {} s per phase",
                r.database, args.conversations, args.senders_per_conversation, args.secs
            );
            println!(
                "  flat out:  {:>8.0} acknowledged sends/s, ack {}, server {:.2} cores, bench {:.2}",
                r.max.sends_per_sec(),
                Latency::of(&r.max.ack).text(),
                r.max.server_cores,
                r.max.bench_cores
            );
            println!(
                "  half rate: {:>8.0} sends/s, ack {}",
                r.half.sends_per_sec(),
                Latency::of(&r.half.ack).text()
            );
            println!(
                "  ceiling:   {:>8.0} rows/s (bare INSERT, {} rows per transaction); ratio {:.3}",
                r.ceiling_rows_per_sec,
                args.batch,
                r.ratio()
            );
            if let Some(off) = &r.limits_off {
                println!(
                    "  rate limits off: {:>8.0} sends/s; limits on / off {:.3}",
                    off.sends_per_sec(),
                    r.max.sends_per_sec() / off.sends_per_sec()
                );
            }
            println!(
                "  HTTP only: {:>8.0} sends/s (bare server, nothing stored; server {:.2} cores, bench {:.2}); ratio {:.3}",
                http_only.sends_per_sec(),
                http_only.server_cores,
                http_only.bench_cores,
                r.ratio_to(&http_only)
            );
        }
    }
    Ok(())
}

/// Flat out, then at half that rate.
async fn measure(server: &Server, args: &Args) -> anyhow::Result<(Phase, Phase)> {
    let senders = senders(server, args).await?;
    let pids = [server.pid()];
    let max = fanout::send_phase(&senders, &pids, None, args.secs).await?;
    let half =
        fanout::send_phase(&senders, &pids, Some(max.sends_per_sec() / 2.0), args.secs).await?;
    Ok((max, half))
}

/// The conversations, each with its members as senders.
async fn senders(server: &Server, args: &Args) -> anyhow::Result<Vec<(Client, Uuid)>> {
    let mut senders = Vec::new();
    for _ in 0..args.conversations {
        let members: Vec<(Uuid, String)> = (0..args.senders_per_conversation.max(1))
            .map(|_| server.user())
            .collect();
        let owner = Client::new(&server.base, &members[0].1);
        let room = owner
            .create_conversation(&CreateConversation {
                kind: ConversationKind::Group,
                title: Some("durable".into()),
                member_ids: members[1..].iter().map(|m| m.0).collect(),
            })
            .await?
            .id;
        senders.extend(
            members
                .iter()
                .map(|m| (Client::new(&server.base, &m.1), room)),
        );
    }
    Ok(senders)
}

/// Rows per second a bare batched INSERT reaches on SQLite with the
/// server's settings (WAL, `synchronous=FULL`, one writer).
async fn bare_sqlite(path: &Path, args: &Args) -> anyhow::Result<f64> {
    // Only to create the schema and one conversation; the rows go in bare.
    let supervisor = Supervisor::new(std::sync::Arc::new(SystemClock::new()));
    let store = SqliteStore::open(&SqliteOptions::new(path.to_path_buf()), &supervisor).await?;
    let conversation = conversation(&store).await?;
    store.close().await;
    let connect = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(connect)
        .await?;
    let seq = AtomicU64::new(1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let mut rows = 0;
    while Instant::now() < deadline {
        let mut insert = bare_rows::<sqlx::Sqlite>(args.batch, conversation, &seq);
        let mut tx = pool.begin().await?;
        insert.build().execute(&mut *tx).await?;
        tx.commit().await?;
        rows += args.batch;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(rate)
}

/// Rows per second bare batched INSERTs reach on PostgreSQL from as many
/// connections as the server's pool holds by default.
async fn bare_postgres(url: &str, args: &Args) -> anyhow::Result<f64> {
    const SCHEMA: &str = "bare_insert";
    let mut options = PostgresOptions::new(url);
    options.schema = Some(SCHEMA.into());
    let store = PostgresStore::open(&options).await?;
    let conversation = conversation(&store).await?;
    let connections = options.connections_max.max(1);
    store.close().await;
    let connect = PgConnectOptions::from_str(url)?.options([("search_path", SCHEMA)]);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(connect)
        .await?;
    let seq = Arc::new(AtomicU64::new(1));
    let rows = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (pool, seq, rows, batch) = (
            pool.clone(),
            Arc::clone(&seq),
            Arc::clone(&rows),
            args.batch,
        );
        writers.spawn(async move {
            while Instant::now() < deadline {
                let mut insert = bare_rows::<sqlx::Postgres>(batch, conversation, &seq);
                let mut tx = pool.begin().await?;
                insert.build().execute(&mut *tx).await?;
                tx.commit().await?;
                rows.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let rate = rows.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(rate)
}

const INSERT: &str = "INSERT INTO messages (id, conversation_id, seq, sender_id, message_type, \
                      encrypted_content, nonce, created_at) ";
/// One multi-row INSERT of `batch` message rows, numbered from `seq`.
fn bare_rows<DB>(batch: usize, conversation: Uuid, seq: &AtomicU64) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    DB::Arguments: Default,
    for<'q> Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'static str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> chrono::DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut insert = QueryBuilder::<DB>::new(INSERT);
    insert.push_values(0..batch, |mut row, _| {
        row.push_bind(Uuid::now_v7())
            .push_bind(conversation)
            .push_bind(seq.fetch_add(1, Ordering::Relaxed) as i64 + 1)
            .push_bind(Uuid::nil())
            .push_bind("text")
            .push_bind(CONTENT)
            .push_bind(NONCE)
            .push_bind(Utc::now());
    });
    insert
}

/// The same sizes the benchmark's sends carry.
const CONTENT: &str = "AAAAAAAAAAA=";
const NONCE: &str = "bm9uY2UtMDEyMzQ1Njc4OQ==";

/// A conversation for the bare rows to belong to.
async fn conversation(store: &dyn Store) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    match store
        .create_conversation(StoreCreate {
            id,
            kind: ConversationKind::Group,
            title: None,
            creator: Uuid::nil(),
            members: Vec::new(),
            at: Utc::now(),
        })
        .await?
    {
        CreateOutcome::Created(_) => Ok(id),
        CreateOutcome::Existing(c) => Ok(c.id),
    }
}

/// A database created for one run and dropped after it.
pub(crate) struct Scratch {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl Scratch {
    pub(crate) async fn create(admin: &str) -> anyhow::Result<Self> {
        let name = format!("switchboard_bench_{}", Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(admin)
            .await
            .context("cannot connect to --postgres-url")?;
        connection
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        connection.close().await?;
        let mut url = url_without_database(admin);
        url.push('/');
        url.push_str(&name);
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
        })
    }

    pub(crate) async fn drop_it(self) {
        if let Ok(mut connection) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = connection
                .execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await;
            let _ = connection.close().await;
        }
    }
}

/// `postgres://user@host:port/db?x` → `postgres://user@host:port`.
fn url_without_database(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}
