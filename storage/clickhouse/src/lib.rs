//! [`Analytics`] in ClickHouse: engagement events appended in batches to one
//! `MergeTree` table and aggregated per post at query time, over the HTTP
//! interface with `JSONEachRow`.
//!
//! Written against ClickHouse 18.16 and later: no query parameters (ids are
//! UUIDs and times integers, written by us, never text from a client), and
//! 64-bit counts asked for unquoted with
//! `output_format_json_quote_64bit_integers=0`. The table is created on the
//! first call that reaches the server, so a node starts with ClickHouse
//! down. Plain HTTP only (the client is built without TLS): reach it inside
//! the cluster.

#[cfg(feature = "local-server")]
mod local;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use switchboard_storage::{Analytics, AnalyticsError, EngagementEvent, PostEngagement};
use uuid::Uuid;

#[cfg(feature = "local-server")]
pub use local::LocalServer;

/// The table's name.
pub const TABLE: &str = "switchboard_engagement";

/// How to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct ClickHouseOptions {
    /// `http://host:8123`, optionally with `?database=` and a user and
    /// password in the URL's authority.
    pub url: String,
    /// How long connecting may take; each call's deadline is its worker's.
    pub connect_timeout: Duration,
    /// The most any one request may take.
    pub request_timeout: Duration,
}

impl ClickHouseOptions {
    /// Defaults for `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A ClickHouse server's engagement table.
#[derive(Debug)]
pub struct ClickHouse {
    http: reqwest::Client,
    /// The server's URL with no query, and the database, user and password
    /// taken from it.
    base: reqwest::Url,
    database: Option<String>,
    credentials: Option<(String, String)>,
    /// The table is known to exist.
    ready: AtomicBool,
}

impl ClickHouse {
    /// A client for `options`; nothing connects yet.
    ///
    /// # Errors
    ///
    /// When the URL is not an `http` URL.
    pub fn new(options: &ClickHouseOptions) -> Result<Self, AnalyticsError> {
        let mut base = reqwest::Url::parse(&options.url)
            .map_err(|e| AnalyticsError(format!("invalid ClickHouse URL: {e}")))?;
        if base.scheme() != "http" {
            return Err(AnalyticsError(
                "invalid ClickHouse URL: only http:// is supported".into(),
            ));
        }
        let database = base
            .query_pairs()
            .find(|(k, _)| k == "database")
            .map(|(_, v)| v.into_owned());
        let credentials = (!base.username().is_empty()).then(|| {
            (
                base.username().to_owned(),
                base.password().unwrap_or_default().to_owned(),
            )
        });
        base.set_query(None);
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .build()
            .map_err(|e| AnalyticsError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            database,
            credentials,
            ready: AtomicBool::new(false),
        })
    }

    /// Runs `sql` (with `body` after it, for an insert) and returns the
    /// answer's text.
    async fn query(&self, sql: &str, body: Option<String>) -> Result<String, AnalyticsError> {
        let mut url = self.base.clone();
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(database) = &self.database {
                pairs.append_pair("database", database);
            }
            pairs.append_pair("output_format_json_quote_64bit_integers", "0");
            if body.is_some() {
                pairs.append_pair("query", sql);
            }
        }
        let mut request = self
            .http
            .post(url)
            .body(body.unwrap_or_else(|| sql.to_owned()));
        if let Some((user, password)) = &self.credentials {
            request = request
                .header("X-ClickHouse-User", user)
                .header("X-ClickHouse-Key", password);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| AnalyticsError(format!("unreachable: {e}")))?;
        let status = answer.status();
        let text = answer
            .text()
            .await
            .map_err(|e| AnalyticsError(format!("answer cut off: {e}")))?;
        if !status.is_success() {
            let excerpt: String = text.chars().take(300).collect();
            return Err(AnalyticsError(format!("{status}: {}", excerpt.trim())));
        }
        Ok(text)
    }

    /// Creates the table unless this client has seen it.
    async fn ensure_table(&self) -> Result<(), AnalyticsError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.query(
            &format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} \
                 (post_id UUID, user_id UUID, kind Int8, at DateTime) \
                 ENGINE = MergeTree PARTITION BY toYYYYMMDD(at) ORDER BY (post_id, at)"
            ),
            None,
        )
        .await?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }
}

#[derive(Deserialize)]
struct Row {
    post_id: Uuid,
    likes: i64,
    views: u64,
}

#[async_trait]
impl Analytics for ClickHouse {
    async fn record(&self, events: &[EngagementEvent]) -> Result<(), AnalyticsError> {
        if events.is_empty() {
            return Ok(());
        }
        self.ensure_table().await?;
        let mut body = String::with_capacity(events.len() * 110);
        for event in events {
            let _ = writeln!(
                body,
                r#"{{"post_id":"{}","user_id":"{}","kind":{},"at":{}}}"#,
                event.post_id,
                event.user_id,
                event.kind.code(),
                event.at.timestamp().max(0)
            );
        }
        self.query(
            &format!("INSERT INTO {TABLE} FORMAT JSONEachRow"),
            Some(body),
        )
        .await
        .map(drop)
    }

    async fn engagement(
        &self,
        posts: &[Uuid],
        since: DateTime<Utc>,
    ) -> Result<Vec<PostEngagement>, AnalyticsError> {
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_table().await?;
        let mut ids = String::with_capacity(posts.len() * 39);
        for (i, id) in posts.iter().enumerate() {
            let _ = write!(ids, "{}'{id}'", if i == 0 { "" } else { "," });
        }
        let sql = format!(
            "SELECT toString(post_id) AS post_id, sumIf(kind, kind != 0) AS likes, \
                 countIf(kind = 0) AS views \
             FROM {TABLE} WHERE post_id IN ({ids}) AND at > toDateTime({}) \
             GROUP BY post_id FORMAT JSONEachRow",
            since.timestamp().max(0)
        );
        let text = self.query(&sql, None).await?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let row: Row = serde_json::from_str(line)
                    .map_err(|e| AnalyticsError(format!("unexpected row {line:?}: {e}")))?;
                Ok(PostEngagement {
                    post_id: row.post_id,
                    likes: row.likes,
                    views: row.views,
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), AnalyticsError> {
        self.query("SELECT 1", None).await.map(drop)
    }
}
