//! `switchboard`: the server binary. It parses configuration, builds a node
//! and runs it; everything else lives in the workspace crates.

// A command-line program's output is its stdout; the libraries never print.
#![allow(clippy::print_stdout)]

mod cli;
mod config;
mod logging;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard_actors::{Dependencies, Limits, Node, Supervisor};
use switchboard_http::{AppState, Auth, EdgeLimits, HttpLimits, Rate};
use switchboard_storage::{
    Analytics, BlobServer, Blobs, Bus, Clock, FeedCache, FeedStore, OsRandom, Store, SystemClock,
};
use switchboard_storage_blobs::{LocalBlobs, S3Blobs};
use switchboard_storage_clickhouse::{ClickHouse, ClickHouseOptions};
use switchboard_storage_redis::{RedisBus, RedisOptions};
use switchboard_storage_sql::{PostgresStore, SqliteStore};
use uuid::Uuid;

use crate::cli::{Conversations, ServerArgs};
use crate::config::{BlobStore, ConfigArgs, Database, Settings};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Real-time messaging backend.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded SQLite under --data-dir unless configured otherwise).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print a bearer token for a user, signed with the configured secret.
    Token {
        /// The user id the token names (its `sub` claim).
        #[arg(long)]
        user: Uuid,
        /// How long the token stays valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List or create your conversations.
    Conversations {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: Option<Conversations>,
    },
    /// Send a text message, retrying (at most 5 attempts) while the server
    /// is unreachable or busy; prints the stored message as JSON.
    Send {
        #[command(flatten)]
        server: ServerArgs,
        /// The conversation's id.
        conversation: Uuid,
        /// The text; it travels as the message's opaque payload.
        text: String,
        /// Makes a repeated `send` store the message once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Send a voice message: presign, upload, send, each retried (at most 5
    /// attempts) with one idempotency key; prints the stored message.
    SendAudio {
        #[command(flatten)]
        server: ServerArgs,
        /// The conversation's id.
        conversation: Uuid,
        /// The recording.
        file: std::path::PathBuf,
        /// How long it plays, in milliseconds.
        #[arg(long)]
        duration_ms: u64,
        /// Its MIME type [default: from the file's extension].
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Send a file (an image, a document) as an attachment message, as
    /// `send-audio` does.
    SendFile {
        #[command(flatten)]
        server: ServerArgs,
        /// The conversation's id.
        conversation: Uuid,
        /// The file.
        file: std::path::PathBuf,
        /// Its MIME type [default: from the file's extension].
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Schedule a text message to be sent later; prints the pending entry
    /// as JSON.
    Schedule {
        #[command(flatten)]
        server: ServerArgs,
        /// The conversation's id.
        conversation: Uuid,
        /// When: an RFC 3339 time (`2026-12-24T18:00:00+01:00`) or a time
        /// from now (`+90s`, `+15m`, `+2h`, `+1d`).
        #[arg(long)]
        at: String,
        /// The text; it travels as the message's opaque payload.
        text: String,
    },
    /// List your pending scheduled messages and recent failures.
    Scheduled {
        #[command(flatten)]
        server: ServerArgs,
        /// Only this conversation's [default: every conversation].
        #[arg(long)]
        conversation: Option<Uuid>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pending scheduled message.
    Unschedule {
        #[command(flatten)]
        server: ServerArgs,
        /// The scheduled message's id.
        id: Uuid,
    },
    /// Post `text` to your followers' feeds, with an image or file if
    /// given; prints the post as JSON.
    Post {
        #[command(flatten)]
        server: ServerArgs,
        /// What the post says (up to 2,000 characters).
        text: String,
        /// An image or file to post with it (uploaded first).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Its MIME type [default: from the file's extension].
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Follow a user, so their posts come into your feed.
    Follow {
        #[command(flatten)]
        server: ServerArgs,
        /// The user's id.
        user: Uuid,
        /// Stop following them instead.
        #[arg(long)]
        undo: bool,
    },
    /// Like a post (or, with `--undo`, take the like back).
    Like {
        #[command(flatten)]
        server: ServerArgs,
        /// The post's id.
        post: Uuid,
        /// Take the like back instead.
        #[arg(long)]
        undo: bool,
    },
    /// Print a page of your feed, best first, and where it came from.
    Feed {
        #[command(flatten)]
        server: ServerArgs,
        /// Posts per page.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The `next_cursor` of the page before.
        #[arg(long)]
        cursor: Option<String>,
        /// Print the page as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a conversation's latest messages, oldest first.
    History {
        #[command(flatten)]
        server: ServerArgs,
        /// The conversation's id.
        conversation: Uuid,
        /// How many messages.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print live events as JSON lines; reconnects and resumes by itself, so
    /// nothing is missed or shown twice across a disconnect.
    Tail {
        #[command(flatten)]
        server: ServerArgs,
        /// Only this conversation's events [default: every conversation].
        conversation: Option<Uuid>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line per cause, without a backtrace: this is for operators.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let settings = Settings::load(&config)?;
            logging::init(&settings.log, settings.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(serve(settings))
        }
        Command::Token {
            user,
            ttl_secs,
            config,
        } => {
            let settings = Settings::load(&config)?;
            let secret = settings.jwt_secret()?;
            let token = Auth::new(&secret)
                .with_issuer(settings.jwt_issuer.as_deref())
                .with_audience(settings.jwt_audience.as_deref())
                .mint(user, Duration::from_secs(ttl_secs))
                .context("cannot sign the token")?;
            println!("{token}");
            Ok(())
        }
        Command::Conversations { server, command } => {
            client_runtime()?.block_on(cli::conversations(
                &server,
                command.unwrap_or(Conversations::List { json: false }),
            ))
        }
        Command::Send {
            server,
            conversation,
            text,
            idempotency_key,
        } => client_runtime()?.block_on(cli::send(&server, conversation, &text, idempotency_key)),
        Command::SendAudio {
            server,
            conversation,
            file,
            duration_ms,
            content_type,
        } => client_runtime()?.block_on(cli::send_file(
            &server,
            conversation,
            &file,
            content_type,
            Some(duration_ms),
        )),
        Command::SendFile {
            server,
            conversation,
            file,
            content_type,
        } => client_runtime()?.block_on(cli::send_file(
            &server,
            conversation,
            &file,
            content_type,
            None,
        )),
        Command::Schedule {
            server,
            conversation,
            at,
            text,
        } => client_runtime()?.block_on(cli::schedule(&server, conversation, &at, &text)),
        Command::Scheduled {
            server,
            conversation,
            json,
        } => client_runtime()?.block_on(cli::scheduled(&server, conversation, json)),
        Command::Unschedule { server, id } => {
            client_runtime()?.block_on(cli::unschedule(&server, id))
        }
        Command::Post {
            server,
            text,
            file,
            content_type,
        } => client_runtime()?.block_on(cli::post(&server, &text, file.as_deref(), content_type)),
        Command::Follow { server, user, undo } => {
            client_runtime()?.block_on(cli::follow(&server, user, !undo))
        }
        Command::Like { server, post, undo } => {
            client_runtime()?.block_on(cli::like(&server, post, !undo))
        }
        Command::Feed {
            server,
            limit,
            cursor,
            json,
        } => client_runtime()?.block_on(cli::feed(&server, limit, cursor.as_deref(), json)),
        Command::History {
            server,
            conversation,
            limit,
            json,
        } => client_runtime()?.block_on(cli::history(&server, conversation, limit, json)),
        Command::Tail {
            server,
            conversation,
        } => client_runtime()?.block_on(cli::tail(&server, conversation)),
    }
}

/// A small runtime for the client commands.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let secret = settings.jwt_secret()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // One supervisor for the node's tasks: the store's and the bus's too,
    // so readiness and /metrics see them all.
    let supervisor = Supervisor::new(Arc::clone(&clock));
    let store = open_store(settings.database()?, &supervisor).await?;
    // Signals from the bus (events of other nodes) are bounded; the node
    // catches up from the store on whatever it had to drop.
    // With Redis, the feed's cache is shared there too.
    let (link, feed_cache) = match &settings.redis_url {
        Some(url) => {
            let (sender, receiver) = tokio::sync::mpsc::channel(4096);
            let bus = RedisBus::new(RedisOptions::new(url.clone()), sender, &supervisor)
                .context("invalid redis url")?;
            let cache: Arc<dyn FeedCache> = Arc::new(bus.clone());
            (Some((Arc::new(bus) as Arc<dyn Bus>, receiver)), Some(cache))
        }
        None => (None, None),
    };
    let analytics = match &settings.clickhouse_url {
        Some(url) => Some(Arc::new(
            ClickHouse::new(&ClickHouseOptions::new(url.clone()))
                .context("invalid clickhouse url")?,
        ) as Arc<dyn Analytics>),
        None => None,
    };
    let bus = link.as_ref().map(|(bus, _)| Arc::clone(bus));
    let blobs = open_blobs(settings.blob_store()?, &secret, &clock).await?;
    let node = Node::start(
        Dependencies {
            store: store.shared(),
            clock,
            random: Arc::new(OsRandom),
            bus: link,
            blobs: Some(Arc::clone(&blobs.store)),
            feed: store.feed(),
            analytics,
            feed_cache,
            supervisor,
        },
        limits(&settings),
    )
    .await
    .context("cannot start the node")?;
    for collector in store.collectors() {
        node.metrics()
            .registry()
            .register(collector)
            .context("cannot register the store's metrics")?;
    }
    let state = AppState::new(
        node.clone(),
        store.shared(),
        Auth::new(&secret)
            .with_issuer(settings.jwt_issuer.as_deref())
            .with_audience(settings.jwt_audience.as_deref())
            .with_jwks_file(settings.jwt_jwks_file.clone())
            .context("cannot use the key set")?
            .with_jwks_url(settings.jwt_jwks_url.clone())
            .await
            .context("cannot use the key set")?,
        HttpLimits {
            sse_heartbeat_interval: settings.sse_heartbeat,
            connections_per_ip_max: settings.connections_per_ip_max,
            edge: EdgeLimits {
                rate_limits: settings.rate_limits,
                per_user: Rate {
                    per_sec: settings.rate_user_per_sec,
                    burst: settings.rate_user_burst,
                },
                per_ip: Rate {
                    per_sec: settings.rate_ip_per_sec,
                    burst: settings.rate_ip_burst,
                },
                request_timeout: Duration::from_secs(settings.request_timeout_secs),
                in_flight_max: settings.requests_in_flight_max,
                tcp_connections_max: settings.tcp_connections_max,
                ..EdgeLimits::default()
            },
            ..HttpLimits::default()
        },
    )
    .with_bus(bus)
    .with_blobs(Some((blobs.store, blobs.kind)), blobs.server)
    .with_client_ip_header(settings.client_ip_header()?);
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %settings.data_dir.display(),
        "switchboard is serving"
    );
    let drain_timeout = settings.drain_timeout;
    switchboard_http::serve(listener, state, shutdown_signal(), drain_timeout)
        .await
        .context("server failed")?;
    node.shutdown(drain_timeout).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The node's limits, with what the settings change.
fn limits(settings: &Settings) -> Limits {
    let mut limits = Limits {
        connections_max: settings.connections_max,
        connections_per_user_max: settings.connections_per_user_max,
        ..Limits::default()
    };
    limits.sessions.grace = settings.session_grace;
    limits.sessions.buffer_len_max = settings.session_buffer_events;
    limits.sessions.buffer_bytes_max = settings.session_buffer_bytes;
    limits.media.audio_size_max = settings.audio_size_max;
    limits.media.attachment_size_max = settings.attachment_size_max;
    limits.scheduled.per_user_max = settings.scheduled_per_user_max;
    limits.scheduled.total_max = settings.scheduled_total_max;
    limits.scheduled.late_max = settings.scheduled_late_max;
    limits.scheduled.retention = settings.scheduled_retention;
    limits.feed.rank_deadline = settings.feed_rank_deadline;
    limits.feed.cache_ttl = settings.feed_cache_ttl;
    limits
}

/// An open blob store: what the node calls, what readiness names it, and
/// the side of it the node serves, if it serves one.
struct OpenBlobs {
    store: Arc<dyn Blobs>,
    kind: &'static str,
    server: Option<Arc<dyn BlobServer>>,
}

async fn open_blobs(
    store: BlobStore,
    secret: &[u8],
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<OpenBlobs> {
    Ok(match store {
        BlobStore::Local { root, public_url } => {
            let local = Arc::new(
                LocalBlobs::open(root.clone(), &public_url, secret, Arc::clone(clock))
                    .with_context(|| format!("cannot open the blob folder {}", root.display()))?,
            );
            tracing::info!(folder = %root.display(), %public_url, "voice notes and attachments in a local folder");
            OpenBlobs {
                store: local.clone(),
                kind: "local",
                server: Some(local),
            }
        }
        BlobStore::S3(options) => {
            tracing::info!(bucket = %options.bucket, endpoint = ?options.endpoint, "voice notes and attachments in S3");
            OpenBlobs {
                store: Arc::new(S3Blobs::connect(&options).await),
                kind: "s3",
                server: None,
            }
        }
    })
}

/// An open database, whichever kind.
enum OpenStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl OpenStore {
    fn shared(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    fn feed(&self) -> Arc<dyn FeedStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// The store's own metrics (SQLite's group commits).
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        match self {
            Self::Sqlite(store) => store.collectors(),
            Self::Postgres(_) => Vec::new(),
        }
    }

    async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

async fn open_store(database: Database, supervisor: &Supervisor) -> anyhow::Result<OpenStore> {
    Ok(match database {
        Database::Sqlite(options) => OpenStore::Sqlite(
            SqliteStore::open(&options, supervisor)
                .await
                .with_context(|| format!("cannot open {}", options.path.display()))?,
        ),
        Database::Postgres(options) => OpenStore::Postgres(
            PostgresStore::open(&options)
                .await
                .context("cannot open the postgres database")?,
        ),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
