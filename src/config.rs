//! Configuration: built-in defaults, overridden by an optional TOML file
//! (`--config`), overridden by `SWITCHBOARD_*` environment variables,
//! overridden by flags.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use switchboard_storage_sql::{PostgresOptions, SqliteOptions};

use crate::logging::LogFormat;

/// Settings every command shares; each can come from a flag, the environment
/// or the config file.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<String>,
    /// Folder for the embedded database and the generated token secret [default: ./data].
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB` [default: sqlite in the data folder].
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL")]
    database_url: Option<String>,
    /// Redis URL for fan-out between nodes, e.g. `redis://127.0.0.1:6379` [default: none, one node].
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    redis_url: Option<String>,
    /// HS256 secret for bearer tokens [default: generated once into the data folder].
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The `iss` a token must carry [default: any, or none].
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// An `aud` a token must carry [default: any, or none].
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// A JWKS file of an identity provider: RS256 and ES256 tokens signed
    /// by its keys are taken too; re-read when it changes [default: none].
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS_FILE")]
    jwt_jwks_file: Option<PathBuf>,
    /// URL of a JWKS (an identity provider's `jwks_uri`): RS256/ES256
    /// tokens signed by its keys are taken too; fetched at start and every
    /// minute [default: none].
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS_URL")]
    jwt_jwks_url: Option<String>,
    /// Log filter, e.g. `info` or `switchboard=debug` [default: info].
    #[arg(long, env = "SWITCHBOARD_LOG")]
    log: Option<String>,
    /// Log lines as `text` or `json` (one object per line) [default: text].
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Seconds to let connections and queued work drain on shutdown [default: 10].
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT_SECS")]
    drain_timeout_secs: Option<u64>,
    /// Seconds a session outlives its connection, buffering for a resume [default: 120].
    #[arg(long, env = "SWITCHBOARD_SESSION_GRACE_SECS")]
    session_grace_secs: Option<u64>,
    /// Events a session buffers for a resume [default: 2048].
    #[arg(long, env = "SWITCHBOARD_SESSION_BUFFER_EVENTS")]
    session_buffer_events: Option<usize>,
    /// Bytes of events a session buffers for a resume [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_SESSION_BUFFER_BYTES")]
    session_buffer_bytes: Option<usize>,
    /// Seconds between heartbeat comments on an SSE stream [default: 15].
    #[arg(long, env = "SWITCHBOARD_SSE_HEARTBEAT_SECS")]
    sse_heartbeat_secs: Option<u64>,
    /// WebSocket and SSE connections this node accepts [default: 50000].
    #[arg(long, env = "SWITCHBOARD_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// Connections one user may hold on this node [default: 16].
    #[arg(long, env = "SWITCHBOARD_CONNECTIONS_PER_USER_MAX")]
    connections_per_user_max: Option<usize>,
    /// Connections one client address may hold [default: 256].
    #[arg(long, env = "SWITCHBOARD_CONNECTIONS_PER_IP_MAX")]
    connections_per_ip_max: Option<usize>,
    /// Behind a proxy: the header holding the client's address, e.g.
    /// `x-forwarded-for` (its last entry counts) [default: the peer address].
    #[arg(long, env = "SWITCHBOARD_CLIENT_IP_HEADER")]
    client_ip_header: Option<String>,
    /// The URL clients reach this node at; the embedded blob store's upload
    /// and download URLs start with it [default: http://LISTEN].
    #[arg(long, env = "SWITCHBOARD_PUBLIC_URL")]
    public_url: Option<String>,
    /// Folder for voice notes and attachments when no S3 bucket is set
    /// [default: blobs in the data folder].
    #[arg(long, env = "SWITCHBOARD_BLOB_DIR")]
    blob_dir: Option<PathBuf>,
    /// S3 bucket for voice notes and attachments [default: none, the blob folder].
    #[arg(long, env = "S3_BUCKET")]
    s3_bucket: Option<String>,
    /// The bucket's region [default: us-east-1].
    #[arg(long, env = "AWS_REGION")]
    aws_region: Option<String>,
    /// An S3-compatible endpoint, addressed path-style, e.g. `http://minio:9000`.
    #[arg(long, env = "S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The largest voice message, in bytes [default: 10485760].
    #[arg(long, env = "SWITCHBOARD_AUDIO_SIZE_MAX_BYTES")]
    audio_size_max_bytes: Option<u64>,
    /// The largest other attachment, in bytes [default: 26214400].
    #[arg(long, env = "SWITCHBOARD_ATTACHMENT_SIZE_MAX_BYTES")]
    attachment_size_max_bytes: Option<u64>,
    /// Scheduled messages one user may have pending [default: 100].
    #[arg(long, env = "SWITCHBOARD_SCHEDULED_PER_USER_MAX")]
    scheduled_per_user_max: Option<u32>,
    /// Scheduled messages pending in all, across nodes [default: 1000000].
    #[arg(long, env = "SWITCHBOARD_SCHEDULED_TOTAL_MAX")]
    scheduled_total_max: Option<u64>,
    /// Seconds past due after which a scheduled message fails `too_late`
    /// instead of going out [default: 86400].
    #[arg(long, env = "SWITCHBOARD_SCHEDULED_LATE_MAX_SECS")]
    scheduled_late_max_secs: Option<u64>,
    /// Seconds sent, cancelled and failed scheduled messages are kept
    /// [default: 604800].
    #[arg(long, env = "SWITCHBOARD_SCHEDULED_RETENTION_SECS")]
    scheduled_retention_secs: Option<u64>,
    /// ClickHouse HTTP URL for feed engagement and ranking, e.g.
    /// `http://127.0.0.1:8123` [default: none, the database ranks].
    #[arg(long, env = "SWITCHBOARD_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    /// Milliseconds a feed ranking may take before the fallback answers
    /// [default: 150].
    #[arg(long, env = "SWITCHBOARD_FEED_RANK_DEADLINE_MS")]
    feed_rank_deadline_ms: Option<u64>,
    /// Seconds a ranked feed page stays cached for the fallback [default: 300].
    #[arg(long, env = "SWITCHBOARD_FEED_CACHE_TTL_SECS")]
    feed_cache_ttl_secs: Option<u64>,
    /// Whether the per-user and per-address rate limits apply (`false`
    /// where a gateway in front limits rates, and for benchmarks) [default: true].
    #[arg(long, env = "SWITCHBOARD_RATE_LIMITS")]
    rate_limits: Option<bool>,
    /// Mutations (POST, PUT, PATCH, DELETE) one user may make per second, refilled steadily [default: 50].
    #[arg(long, env = "SWITCHBOARD_RATE_USER_PER_SEC")]
    rate_user_per_sec: Option<u32>,
    /// Mutations one user may make at once before the per-second rate applies [default: 200].
    #[arg(long, env = "SWITCHBOARD_RATE_USER_BURST")]
    rate_user_burst: Option<u32>,
    /// Mutations one client address may make per second [default: 500].
    #[arg(long, env = "SWITCHBOARD_RATE_IP_PER_SEC")]
    rate_ip_per_sec: Option<u32>,
    /// Mutations one client address may make at once [default: 2000].
    #[arg(long, env = "SWITCHBOARD_RATE_IP_BURST")]
    rate_ip_burst: Option<u32>,
    /// Seconds a request may take before it is answered 503 [default: 30].
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// Requests handled at once; more are answered 503 [default: 2048].
    #[arg(long, env = "SWITCHBOARD_REQUESTS_IN_FLIGHT_MAX")]
    requests_in_flight_max: Option<usize>,
    /// TCP connections open at once; past it the listener waits [default: 60000].
    #[arg(long, env = "SWITCHBOARD_TCP_CONNECTIONS_MAX")]
    tcp_connections_max: Option<usize>,
}

/// The config file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    redis_url: Option<String>,
    jwt_secret: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_jwks_file: Option<PathBuf>,
    jwt_jwks_url: Option<String>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    drain_timeout_secs: Option<u64>,
    session_grace_secs: Option<u64>,
    session_buffer_events: Option<usize>,
    session_buffer_bytes: Option<usize>,
    sse_heartbeat_secs: Option<u64>,
    connections_max: Option<usize>,
    connections_per_user_max: Option<usize>,
    connections_per_ip_max: Option<usize>,
    client_ip_header: Option<String>,
    public_url: Option<String>,
    blob_dir: Option<PathBuf>,
    s3_bucket: Option<String>,
    aws_region: Option<String>,
    s3_endpoint: Option<String>,
    audio_size_max_bytes: Option<u64>,
    attachment_size_max_bytes: Option<u64>,
    scheduled_per_user_max: Option<u32>,
    scheduled_total_max: Option<u64>,
    scheduled_late_max_secs: Option<u64>,
    scheduled_retention_secs: Option<u64>,
    clickhouse_url: Option<String>,
    feed_rank_deadline_ms: Option<u64>,
    feed_cache_ttl_secs: Option<u64>,
    rate_limits: Option<bool>,
    rate_user_per_sec: Option<u32>,
    rate_user_burst: Option<u32>,
    rate_ip_per_sec: Option<u32>,
    rate_ip_burst: Option<u32>,
    request_timeout_secs: Option<u64>,
    requests_in_flight_max: Option<usize>,
    tcp_connections_max: Option<usize>,
}

/// Where voice notes and attachments live.
#[derive(Debug)]
pub(crate) enum BlobStore {
    /// A folder the node serves itself.
    Local {
        /// The folder.
        root: PathBuf,
        /// What its URLs start with.
        public_url: String,
    },
    /// An S3 bucket.
    S3(switchboard_storage_blobs::S3Options),
}

/// The database the node stores everything in.
#[derive(Debug)]
pub(crate) enum Database {
    /// Embedded, one file.
    Sqlite(SqliteOptions),
    /// Shared by every node of a cluster.
    Postgres(PostgresOptions),
}

/// Resolved settings.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) listen: String,
    pub(crate) data_dir: PathBuf,
    database_url: Option<String>,
    pub(crate) redis_url: Option<String>,
    jwt_secret: Option<String>,
    pub(crate) jwt_issuer: Option<String>,
    pub(crate) jwt_audience: Option<String>,
    pub(crate) jwt_jwks_file: Option<PathBuf>,
    pub(crate) jwt_jwks_url: Option<String>,
    pub(crate) log: String,
    pub(crate) log_format: LogFormat,
    pub(crate) drain_timeout: Duration,
    pub(crate) session_grace: Duration,
    pub(crate) session_buffer_events: usize,
    pub(crate) session_buffer_bytes: usize,
    pub(crate) sse_heartbeat: Duration,
    pub(crate) connections_max: usize,
    pub(crate) connections_per_user_max: usize,
    pub(crate) connections_per_ip_max: usize,
    pub(crate) client_ip_header: Option<String>,
    public_url: Option<String>,
    blob_dir: Option<PathBuf>,
    s3_bucket: Option<String>,
    aws_region: Option<String>,
    s3_endpoint: Option<String>,
    pub(crate) audio_size_max: u64,
    pub(crate) attachment_size_max: u64,
    pub(crate) scheduled_per_user_max: u32,
    pub(crate) scheduled_total_max: u64,
    pub(crate) scheduled_late_max: Duration,
    pub(crate) scheduled_retention: Duration,
    pub(crate) clickhouse_url: Option<String>,
    pub(crate) feed_rank_deadline: Duration,
    pub(crate) feed_cache_ttl: Duration,
    pub(crate) rate_user_per_sec: u32,
    pub(crate) rate_limits: bool,
    pub(crate) rate_user_burst: u32,
    pub(crate) rate_ip_per_sec: u32,
    pub(crate) rate_ip_burst: u32,
    pub(crate) request_timeout_secs: u64,
    pub(crate) requests_in_flight_max: usize,
    pub(crate) tcp_connections_max: usize,
}

impl Settings {
    pub(crate) fn load(args: &ConfigArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Ok(Self {
            listen: args
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            database_url: args.database_url.clone().or(file.database_url),
            redis_url: args.redis_url.clone().or(file.redis_url),
            jwt_secret: args.jwt_secret.clone().or(file.jwt_secret),
            jwt_issuer: args.jwt_issuer.clone().or(file.jwt_issuer),
            jwt_audience: args.jwt_audience.clone().or(file.jwt_audience),
            jwt_jwks_file: args.jwt_jwks_file.clone().or(file.jwt_jwks_file),
            jwt_jwks_url: args.jwt_jwks_url.clone().or(file.jwt_jwks_url),
            log: args
                .log
                .clone()
                .or(file.log)
                .unwrap_or_else(|| "info".into()),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            drain_timeout: Duration::from_secs(
                args.drain_timeout_secs
                    .or(file.drain_timeout_secs)
                    .unwrap_or(10),
            ),
            session_grace: Duration::from_secs(
                args.session_grace_secs
                    .or(file.session_grace_secs)
                    .unwrap_or(120),
            ),
            session_buffer_events: positive(
                "session_buffer_events",
                args.session_buffer_events.or(file.session_buffer_events),
                2048,
            )?,
            session_buffer_bytes: positive(
                "session_buffer_bytes",
                args.session_buffer_bytes.or(file.session_buffer_bytes),
                1024 * 1024,
            )?,
            sse_heartbeat: Duration::from_secs(positive(
                "sse_heartbeat_secs",
                args.sse_heartbeat_secs.or(file.sse_heartbeat_secs),
                15,
            )?),
            connections_max: positive(
                "connections_max",
                args.connections_max.or(file.connections_max),
                50_000,
            )?,
            connections_per_user_max: positive(
                "connections_per_user_max",
                args.connections_per_user_max
                    .or(file.connections_per_user_max),
                16,
            )?,
            connections_per_ip_max: positive(
                "connections_per_ip_max",
                args.connections_per_ip_max.or(file.connections_per_ip_max),
                256,
            )?,
            client_ip_header: args.client_ip_header.clone().or(file.client_ip_header),
            public_url: args.public_url.clone().or(file.public_url),
            blob_dir: args.blob_dir.clone().or(file.blob_dir),
            s3_bucket: args.s3_bucket.clone().or(file.s3_bucket),
            aws_region: args.aws_region.clone().or(file.aws_region),
            s3_endpoint: args.s3_endpoint.clone().or(file.s3_endpoint),
            audio_size_max: positive(
                "audio_size_max_bytes",
                args.audio_size_max_bytes.or(file.audio_size_max_bytes),
                10 * 1024 * 1024,
            )?,
            attachment_size_max: positive(
                "attachment_size_max_bytes",
                args.attachment_size_max_bytes
                    .or(file.attachment_size_max_bytes),
                25 * 1024 * 1024,
            )?,
            scheduled_per_user_max: positive(
                "scheduled_per_user_max",
                args.scheduled_per_user_max.or(file.scheduled_per_user_max),
                100,
            )?,
            scheduled_total_max: positive(
                "scheduled_total_max",
                args.scheduled_total_max.or(file.scheduled_total_max),
                1_000_000,
            )?,
            scheduled_late_max: Duration::from_secs(positive(
                "scheduled_late_max_secs",
                args.scheduled_late_max_secs
                    .or(file.scheduled_late_max_secs),
                24 * 3600,
            )?),
            scheduled_retention: Duration::from_secs(positive(
                "scheduled_retention_secs",
                args.scheduled_retention_secs
                    .or(file.scheduled_retention_secs),
                7 * 24 * 3600,
            )?),
            clickhouse_url: args.clickhouse_url.clone().or(file.clickhouse_url),
            feed_rank_deadline: Duration::from_millis(positive(
                "feed_rank_deadline_ms",
                args.feed_rank_deadline_ms.or(file.feed_rank_deadline_ms),
                150,
            )?),
            feed_cache_ttl: Duration::from_secs(positive(
                "feed_cache_ttl_secs",
                args.feed_cache_ttl_secs.or(file.feed_cache_ttl_secs),
                300,
            )?),
            rate_limits: args.rate_limits.or(file.rate_limits).unwrap_or(true),
            rate_user_per_sec: positive(
                "rate_user_per_sec",
                args.rate_user_per_sec.or(file.rate_user_per_sec),
                50,
            )?,
            rate_user_burst: positive(
                "rate_user_burst",
                args.rate_user_burst.or(file.rate_user_burst),
                200,
            )?,
            rate_ip_per_sec: positive(
                "rate_ip_per_sec",
                args.rate_ip_per_sec.or(file.rate_ip_per_sec),
                500,
            )?,
            rate_ip_burst: positive(
                "rate_ip_burst",
                args.rate_ip_burst.or(file.rate_ip_burst),
                2000,
            )?,
            request_timeout_secs: positive(
                "request_timeout_secs",
                args.request_timeout_secs.or(file.request_timeout_secs),
                30,
            )?,
            requests_in_flight_max: positive(
                "requests_in_flight_max",
                args.requests_in_flight_max.or(file.requests_in_flight_max),
                2048,
            )?,
            tcp_connections_max: positive(
                "tcp_connections_max",
                args.tcp_connections_max.or(file.tcp_connections_max),
                60000,
            )?,
        })
    }

    /// Where voice notes and attachments live: the S3 bucket when one is
    /// set, else the blob folder.
    pub(crate) fn blob_store(&self) -> anyhow::Result<BlobStore> {
        if let Some(bucket) = &self.s3_bucket {
            let region = self
                .aws_region
                .clone()
                .unwrap_or_else(|| "us-east-1".into());
            let mut options = switchboard_storage_blobs::S3Options::new(bucket.clone(), region);
            options.endpoint = self.s3_endpoint.clone();
            return Ok(BlobStore::S3(options));
        }
        let public_url = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            bail!("the public url must start with http:// or https://, not {public_url:?}");
        }
        Ok(BlobStore::Local {
            root: self
                .blob_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("blobs")),
            public_url,
        })
    }

    /// The header naming the client's address behind a proxy, checked.
    pub(crate) fn client_ip_header(&self) -> anyhow::Result<Option<axum::http::HeaderName>> {
        self.client_ip_header
            .as_deref()
            .map(|name| {
                axum::http::HeaderName::from_bytes(name.trim().as_bytes())
                    .with_context(|| format!("invalid client ip header {name:?}"))
            })
            .transpose()
    }

    /// Which database to open, and how.
    pub(crate) fn database(&self) -> anyhow::Result<Database> {
        let Some(url) = &self.database_url else {
            return Ok(Database::Sqlite(SqliteOptions::new(
                self.data_dir.join("switchboard.db"),
            )));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(PostgresOptions::new(url.clone())));
        }
        let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        else {
            bail!("unsupported database url {url:?}: use sqlite:PATH or postgres://…");
        };
        Ok(Database::Sqlite(SqliteOptions::new(PathBuf::from(path))))
    }

    /// The configured token secret, or the one generated into the data folder
    /// on first use, so `serve` and `token` agree without configuration.
    pub(crate) fn jwt_secret(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(secret) = &self.jwt_secret {
            if secret.len() < 32 {
                bail!("the jwt secret must be at least 32 bytes");
            }
            return Ok(secret.as_bytes().to_vec());
        }
        secret_file(&self.data_dir.join("jwt-secret"))
    }
}

/// `value`, or `default`; zero is refused (it would refuse everything).
fn positive<T: Default + PartialEq + Copy>(
    name: &str,
    value: Option<T>,
    default: T,
) -> anyhow::Result<T> {
    match value {
        Some(v) if v == T::default() => bail!("{name} must be greater than zero"),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(secret) => return Ok(secret.trim().as_bytes().to_vec()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).context("no randomness for the jwt secret")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().as_bytes().to_vec())
        }
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}
