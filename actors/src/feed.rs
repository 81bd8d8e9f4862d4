//! The feed: posts, likes and follows, and a ranked feed that falls back
//! instead of failing.
//!
//! A feed page is ranked by workers under one breaker (`feed_ranker_*`,
//! dependency [`CLICKHOUSE`] with analytics, [`FEED_SQL`] without), each
//! call within `rank_deadline`. With ClickHouse the candidates come from the
//! database in the request (one query) and a worker asks ClickHouse for
//! their engagement (one query), scored here by [`switchboard_storage::rank`];
//! without it a worker runs the database's ranking query. When the ranking
//! fails, times out or its breaker is open, the page is the caller's last
//! ranked one from the [`FeedCache`], re-read from the database (one query,
//! so deleted posts drop out), or else their newest posts (one query).
//!
//! Posts served are told to ClickHouse as views, through a bounded buffer
//! that a task flushes in batches to the `engagement` worker; what does not
//! fit, and what ClickHouse refuses, is dropped and counted: analytics, not
//! the truth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{
    Attachment, AttachmentKind, CreatePost, FeedPage, FeedSource, Post, PresignedUpload,
    UploadRequest,
};
use switchboard_storage::AttachmentState;
use switchboard_storage::{
    Analytics, AnalyticsError, Clock, ENGAGEMENT_WINDOW, EngagementEvent, EngagementKind,
    FeedCache, FeedQuery, FeedStore, FollowOutcome, MemoryFeedCache, NewPost, PostEngagement,
    PostPosition, PostUpload, PresignedRequest, StoreError, rank,
};
use switchboard_supervisors::{
    BreakerPolicy, CallError, RestartPolicy, Supervisor, Task, TaskContext, Worker, WorkerHandle,
    WorkerPolicy,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::media::kind_of;
use crate::{ActorError, Metrics, Node};

/// The ranking workers, in metrics and readiness.
pub(crate) const RANKERS: [&str; 8] = [
    "feed_ranker_0",
    "feed_ranker_1",
    "feed_ranker_2",
    "feed_ranker_3",
    "feed_ranker_4",
    "feed_ranker_5",
    "feed_ranker_6",
    "feed_ranker_7",
];
/// The engagement writer.
pub(crate) const ENGAGEMENT: &str = "engagement";
/// The task that hands engagement to it in batches.
pub(crate) const ENGAGEMENT_FLUSHER: &str = "engagement_flusher";
/// The ranking's breaker with ClickHouse.
pub const CLICKHOUSE: &str = "clickhouse";
/// The ranking's breaker without it.
pub const FEED_SQL: &str = "feed_ranking";

/// The feed's bounds.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    /// A post's text, in characters.
    pub text_len_max: usize,
    /// People one user may follow.
    pub follows_max: u32,
    /// Posts per page when the caller does not say.
    pub page_len_default: u32,
    /// Posts per page at most.
    pub page_len_max: u32,
    /// The newest this many posts of a feed are ranked.
    pub candidates_max: u32,
    /// Posts older than this are not ranked (they still page in `recent`).
    pub candidate_age_max: Duration,
    /// How long a ranking may take before the fallback answers.
    pub rank_deadline: Duration,
    /// How long a ranked page stays in the cache.
    pub cache_ttl: Duration,
    /// Pages the in-process cache holds.
    pub cache_entries_max: usize,
    /// How long a cache lookup or store may take.
    pub cache_timeout: Duration,
    /// Each ranking worker's queue, breaker and restarts (its
    /// `call_timeout` caps `rank_deadline`).
    pub ranker: WorkerPolicy,
    /// Engagement events waiting for the next batch; more are dropped.
    pub engagement_buffer_max: usize,
    /// Events per batch at most.
    pub engagement_batch_max: usize,
    /// How often a batch goes when it is not full.
    pub engagement_flush_every: Duration,
    /// The engagement writer's queue (of batches), breaker and restarts.
    pub engagement: WorkerPolicy,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            text_len_max: 2_000,
            follows_max: 5_000,
            page_len_default: 20,
            page_len_max: 100,
            candidates_max: 500,
            candidate_age_max: Duration::from_secs(30 * 24 * 3600),
            rank_deadline: Duration::from_millis(150),
            cache_ttl: Duration::from_secs(300),
            cache_entries_max: 10_000,
            cache_timeout: Duration::from_millis(50),
            ranker: WorkerPolicy {
                queue_len_max: 64,
                call_timeout: Duration::from_secs(1),
                breaker: BreakerPolicy {
                    failures_max: 3,
                    cool_down_min: Duration::from_secs(1),
                    cool_down_max: Duration::from_secs(30),
                },
                restart: RestartPolicy::default(),
            },
            engagement_buffer_max: 10_000,
            engagement_batch_max: 1_000,
            engagement_flush_every: Duration::from_secs(1),
            engagement: WorkerPolicy {
                queue_len_max: 4,
                call_timeout: Duration::from_secs(5),
                ..WorkerPolicy::default()
            },
        }
    }
}

impl FeedLimits {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.page_len_default == 0 || self.page_len_default > self.page_len_max {
            return Err("the feed's default page length must be within 1..=page_len_max".into());
        }
        if self.rank_deadline.is_zero() || self.candidates_max == 0 {
            return Err("the feed's rank deadline and candidates must be above zero".into());
        }
        Ok(())
    }
}

/// A ranking worker's call.
#[derive(Debug)]
pub(crate) enum RankCall {
    /// The database's ranking of a page.
    Sql {
        query: FeedQuery,
        now: DateTime<Utc>,
        offset: u32,
        limit: u32,
    },
    /// ClickHouse's engagement of candidates.
    Engagement {
        posts: Vec<Uuid>,
        since: DateTime<Utc>,
    },
}

/// What it answered.
#[derive(Debug)]
pub(crate) enum RankAnswer {
    Ranked(Vec<Post>),
    Engagement(Vec<PostEngagement>),
}

/// Ranks, through the database or ClickHouse.
pub(crate) struct Ranker {
    store: Arc<dyn FeedStore>,
    analytics: Option<Arc<dyn Analytics>>,
}

impl Worker for Ranker {
    type Request = RankCall;
    type Reply = RankAnswer;
    type Error = String;

    async fn handle(&mut self, call: RankCall) -> Result<RankAnswer, String> {
        match call {
            RankCall::Sql {
                query,
                now,
                offset,
                limit,
            } => self
                .store
                .ranked(query, now, offset, limit)
                .await
                .map(RankAnswer::Ranked)
                .map_err(|e| e.to_string()),
            RankCall::Engagement { posts, since } => match &self.analytics {
                Some(analytics) => analytics
                    .engagement(&posts, since)
                    .await
                    .map(RankAnswer::Engagement)
                    .map_err(|e| e.to_string()),
                None => Err("no analytics store".into()),
            },
        }
    }

    async fn probe(&mut self) -> Result<(), String> {
        match &self.analytics {
            Some(analytics) => analytics.ping().await.map_err(|e| e.to_string()),
            None => self
                .store
                .post(Uuid::nil())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Writes batches of engagement to ClickHouse.
pub(crate) struct EngagementWriter {
    analytics: Arc<dyn Analytics>,
}

impl Worker for EngagementWriter {
    type Request = Vec<EngagementEvent>;
    type Reply = ();
    type Error = AnalyticsError;

    async fn handle(&mut self, events: Vec<EngagementEvent>) -> Result<(), AnalyticsError> {
        self.analytics.record(&events).await
    }

    async fn probe(&mut self) -> Result<(), AnalyticsError> {
        self.analytics.ping().await
    }
}

/// Engagement waiting for its batch.
#[derive(Debug, Default)]
struct Buffer {
    events: Mutex<Vec<EngagementEvent>>,
    /// A batch is full.
    full: Notify,
}

/// Hands the buffer to the engagement writer, a batch at a time.
struct Flusher {
    buffer: Arc<Buffer>,
    writer: WorkerHandle<EngagementWriter>,
    limits: FeedLimits,
    metrics: Metrics,
}

impl Task for Flusher {
    async fn run(&mut self, context: &TaskContext) {
        loop {
            let _ = tokio::time::timeout(
                self.limits.engagement_flush_every,
                self.buffer.full.notified(),
            )
            .await;
            context.fault_point("flush");
            loop {
                let batch: Vec<EngagementEvent> = {
                    let mut events = lock(&self.buffer.events);
                    let n = events.len().min(self.limits.engagement_batch_max);
                    events.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let n = batch.len();
                let deadline = self.limits.engagement.call_timeout;
                if let Err(error) = self.writer.call(batch, deadline).await {
                    tracing::debug!(%error, events = n, "engagement dropped");
                    self.metrics
                        .feed_engagement_dropped_total
                        .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
                    if !matches!(error, CallError::Overloaded) {
                        break;
                    }
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a page of the feed starts. Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// That many posts into the ranking.
    Ranked(u32),
    /// After that post in the newest-first list.
    Recent(PostPosition),
}

impl Cursor {
    fn encode(self) -> String {
        match self {
            Self::Ranked(offset) => format!("r{offset}"),
            Self::Recent(p) => format!("t{}_{}", p.created_at.timestamp_micros(), p.id.simple()),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        if let Some(offset) = text.strip_prefix('r') {
            return offset.parse().ok().map(Self::Ranked);
        }
        let (micros, id) = text.strip_prefix('t')?.split_once('_')?;
        Some(Self::Recent(PostPosition {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::try_parse(id).ok()?,
        }))
    }
}

/// A ranked page as the cache keeps it: the ids, re-read when served.
#[derive(Debug, Serialize, Deserialize)]
struct CachedPage {
    ids: Vec<Uuid>,
    next_cursor: Option<String>,
}

/// The node's feed.
#[derive(Debug)]
pub(crate) struct Feed {
    store: Arc<dyn FeedStore>,
    clock: Arc<dyn Clock>,
    rankers: Vec<WorkerHandle<Ranker>>,
    next_ranker: AtomicUsize,
    /// The ranking breaker's dependency: [`CLICKHOUSE`] or [`FEED_SQL`].
    dependency: &'static str,
    /// With ClickHouse: what the rankers ask, and readiness pings.
    analytics: Option<Arc<dyn Analytics>>,
    cache: Arc<dyn FeedCache>,
    buffer: Option<Arc<Buffer>>,
    metrics: Metrics,
    limits: FeedLimits,
}

/// What a feed is built on.
#[derive(Debug)]
pub(crate) struct FeedParts {
    pub(crate) store: Arc<dyn FeedStore>,
    pub(crate) analytics: Option<Arc<dyn Analytics>>,
    pub(crate) cache: Option<Arc<dyn FeedCache>>,
}

impl Feed {
    pub(crate) fn start(
        supervisor: &Supervisor,
        parts: FeedParts,
        clock: &Arc<dyn Clock>,
        limits: FeedLimits,
        metrics: &Metrics,
    ) -> Self {
        let FeedParts {
            store,
            analytics,
            cache,
        } = parts;
        let dependency = if analytics.is_some() {
            CLICKHOUSE
        } else {
            FEED_SQL
        };
        let ranker = || Ranker {
            store: Arc::clone(&store),
            analytics: analytics.clone(),
        };
        let first = supervisor.start_worker(RANKERS[0], dependency, limits.ranker, ranker());
        let mut rankers = vec![first.clone()];
        for name in &RANKERS[1..] {
            rankers.push(supervisor.start_worker_beside(name, &first, limits.ranker, ranker()));
        }
        let buffer = analytics.as_ref().map(|analytics| {
            let writer = supervisor.start_worker_beside(
                ENGAGEMENT,
                &first,
                limits.engagement,
                EngagementWriter {
                    analytics: Arc::clone(analytics),
                },
            );
            let buffer = Arc::new(Buffer::default());
            supervisor.spawn(
                ENGAGEMENT_FLUSHER,
                limits.engagement.restart,
                Flusher {
                    buffer: Arc::clone(&buffer),
                    writer,
                    limits,
                    metrics: metrics.clone(),
                },
            );
            buffer
        });
        let cache = cache.unwrap_or_else(|| {
            Arc::new(MemoryFeedCache::new(
                limits.cache_entries_max,
                Arc::clone(clock),
            ))
        });
        Self {
            store,
            clock: Arc::clone(clock),
            rankers,
            next_ranker: AtomicUsize::new(0),
            dependency,
            analytics,
            cache,
            buffer,
            metrics: metrics.clone(),
            limits,
        }
    }

    fn ranker(&self) -> &WorkerHandle<Ranker> {
        let i = self.next_ranker.fetch_add(1, Ordering::Relaxed);
        &self.rankers[i % self.rankers.len()]
    }

    /// The ranking's breaker: `closed`, `half_open` or `open`.
    pub(crate) fn breaker(&self) -> &'static str {
        self.rankers[0].breaker().as_str()
    }

    /// Records engagement, or counts it dropped; never waits.
    fn engage(&self, events: impl IntoIterator<Item = EngagementEvent>) {
        let Some(buffer) = &self.buffer else { return };
        let mut dropped = 0u64;
        let full = {
            let mut queued = lock(&buffer.events);
            for event in events {
                if queued.len() < self.limits.engagement_buffer_max {
                    queued.push(event);
                } else {
                    dropped += 1;
                }
            }
            queued.len() >= self.limits.engagement_batch_max
        };
        if dropped > 0 {
            self.metrics.feed_engagement_dropped_total.inc_by(dropped);
        }
        if full {
            buffer.full.notify_one();
        }
    }

    /// One ranked page (`limit + 1` posts, to tell whether there is more),
    /// or why not.
    async fn ranked(
        &self,
        user: Uuid,
        now: DateTime<Utc>,
        offset: u32,
        limit: u32,
    ) -> Result<Result<Vec<Post>, String>, ActorError> {
        let since = now
            - chrono::TimeDelta::from_std(self.limits.candidate_age_max)
                .unwrap_or(chrono::TimeDelta::MAX);
        let query = FeedQuery {
            user,
            since,
            candidates_max: self.limits.candidates_max,
        };
        let deadline = self.limits.rank_deadline;
        if self.analytics.is_none() {
            let call = RankCall::Sql {
                query,
                now,
                offset,
                limit: limit + 1,
            };
            return Ok(match self.ranker().call(call, deadline).await {
                Ok(RankAnswer::Ranked(posts)) => Ok(posts),
                Ok(RankAnswer::Engagement(_)) => Err("unexpected answer".into()),
                Err(error) => Err(error.to_string()),
            });
        }
        // An open breaker refuses the call: skip the query that feeds it.
        if self.rankers[0].refuses_calls() {
            return Ok(Err("the ranking's breaker is open".into()));
        }
        let candidates = self.store.candidates(query).await?;
        self.metrics.feed_candidate_count.observe(f64::from(
            u32::try_from(candidates.len()).unwrap_or(u32::MAX),
        ));
        let call = RankCall::Engagement {
            posts: candidates.iter().map(|p| p.id).collect(),
            since: now - ENGAGEMENT_WINDOW,
        };
        let engagement = match self.ranker().call(call, deadline).await {
            Ok(RankAnswer::Engagement(found)) => found,
            Ok(RankAnswer::Ranked(_)) => return Ok(Err("unexpected answer".into())),
            Err(error) => return Ok(Err(error.to_string())),
        };
        let weights: HashMap<Uuid, f64> =
            engagement.iter().map(|e| (e.post_id, e.weight())).collect();
        let ranked = rank(
            candidates,
            |p| weights.get(&p.id).copied().unwrap_or(0.0),
            now,
        );
        Ok(Ok(ranked
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit + 1).unwrap_or(usize::MAX))
            .collect()))
    }

    async fn cached(&self, key: &str) -> Option<CachedPage> {
        let found = tokio::time::timeout(self.limits.cache_timeout, self.cache.get(key)).await;
        let page = match found {
            Ok(Ok(Some(bytes))) => serde_json::from_slice(&bytes).ok(),
            Ok(Err(error)) => {
                tracing::debug!(%error, "feed cache lookup failed");
                None
            }
            _ => None,
        };
        let event = if page.is_some() { "hit" } else { "miss" };
        self.metrics
            .feed_cache_events_total
            .with_label_values(&[event])
            .inc();
        page
    }

    async fn remember(&self, key: &str, page: &FeedPage) {
        let cached = CachedPage {
            ids: page.posts.iter().map(|p| p.id).collect(),
            next_cursor: page.next_cursor.clone(),
        };
        let Ok(bytes) = serde_json::to_vec(&cached) else {
            return;
        };
        let put = self.cache.put(key, bytes, self.limits.cache_ttl);
        match tokio::time::timeout(self.limits.cache_timeout, put).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "feed cache store failed"),
            Err(_) => tracing::debug!("feed cache store timed out"),
        }
    }
}

/// Splits `limit + 1` posts into a page and whether more follow.
fn page_of(mut posts: Vec<Post>, limit: u32) -> (Vec<Post>, bool) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = posts.len() > limit;
    posts.truncate(limit);
    (posts, more)
}

impl Node {
    fn feed_part(&self) -> &Feed {
        &self.shared().feed
    }

    /// Issues an upload URL for an image or file to post
    /// (`posts/{user}/{id}`); the row comes first.
    ///
    /// # Errors
    ///
    /// `UnsupportedType` for a type not in [`crate::ATTACHMENT_TYPES`],
    /// `TooLarge` past `attachment_size_max`, `Unavailable` while the blob
    /// store fails or the node has none.
    pub async fn presign_post_attachment(
        &self,
        user: Uuid,
        request: UploadRequest,
    ) -> Result<PresignedUpload, ActorError> {
        let media = self.media()?;
        let kind = kind_of(&request.content_type, false)?;
        if kind == AttachmentKind::Audio {
            return Err(ActorError::UnsupportedType(
                "a post carries an image or a file; voice messages go to conversations".into(),
            ));
        }
        media.check_upload(&request, media.limits.attachment_size_max)?;
        let shared = self.shared();
        let id = shared.new_id();
        let at = shared.clock.now();
        let ttl = chrono::TimeDelta::from_std(media.limits.upload_url_ttl)
            .unwrap_or(chrono::TimeDelta::MAX);
        let key = format!("posts/{user}/{id}");
        let content_type = request.content_type.to_ascii_lowercase();
        self.feed_part()
            .store
            .create_post_upload(PostUpload {
                attachment: Attachment {
                    id,
                    s3_key: key.clone(),
                    content_type: content_type.clone(),
                    size_bytes: request.size_bytes,
                    duration_ms: None,
                    file_name: request.file_name,
                },
                author_id: user,
                state: AttachmentState::Pending,
                post_id: None,
                created_at: at,
                upload_expires_at: at + ttl,
            })
            .await?;
        media
            .issue_upload(id, key, content_type, request.size_bytes)
            .await
    }

    /// Posts `request.text` as `user`, with the upload `attachment_id` when
    /// given (claimed in the post's transaction, once); `false` with the
    /// stored post when its idempotency key stored it before.
    ///
    /// # Errors
    ///
    /// [`ActorError::Invalid`] for empty or too long text or an object not
    /// as presigned, `NotFound` for an upload not the caller's, `Conflict`
    /// for one not uploaded yet or posted already, or a key reused for
    /// another post.
    pub async fn create_post(
        &self,
        user: Uuid,
        request: CreatePost,
    ) -> Result<(Post, bool), ActorError> {
        const MISSING: ActorError = ActorError::NotFound("attachment not found");
        let CreatePost {
            text,
            attachment_id,
            idempotency_key,
        } = request;
        let feed = self.feed_part();
        let length = text.chars().count();
        if text.trim().is_empty() || length > feed.limits.text_len_max {
            return Err(ActorError::Invalid(format!(
                "text must be 1 to {} characters",
                feed.limits.text_len_max
            )));
        }
        let attachment = match attachment_id {
            None => None,
            Some(id) => {
                let upload = feed.store.post_upload(id).await?.ok_or(MISSING)?;
                if upload.author_id != user || upload.state == AttachmentState::Deleted {
                    return Err(MISSING);
                }
                // A posted one goes to the store unchecked: a retry with its
                // key is answered the stored post, anything else refused.
                if upload.state == AttachmentState::Pending {
                    self.media()?.check_uploaded(&upload.attachment).await?;
                }
                Some(upload.attachment)
            }
        };
        let post = NewPost {
            id: self.shared().new_id(),
            author_id: user,
            text,
            at: feed.clock.now(),
            attachment,
            idempotency_key,
        };
        Ok(feed.store.create_post(post).await?)
    }

    /// A short-lived download URL of a post's attachment; every signed-in
    /// user may read every post.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a post without one, `Unavailable`
    /// while the blob store fails.
    pub async fn post_attachment_url(&self, post: Uuid) -> Result<PresignedRequest, ActorError> {
        let attachment = self
            .post(post)
            .await?
            .attachment
            .ok_or(ActorError::NotFound("the post has no attachment"))?;
        self.media()?.download(attachment.s3_key).await
    }

    /// One post; every signed-in user may read every post.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] when it does not exist.
    pub async fn post(&self, id: Uuid) -> Result<Post, ActorError> {
        self.feed_part()
            .store
            .post(id)
            .await?
            .ok_or(ActorError::NotFound("post not found"))
    }

    /// Deletes `user`'s post.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] when it does not exist,
    /// [`ActorError::Forbidden`] when it is someone else's.
    pub async fn delete_post(&self, user: Uuid, id: Uuid) -> Result<(), ActorError> {
        let at = self.feed_part().clock.now();
        match self.feed_part().store.delete_post(id, user, at).await {
            Err(StoreError::NotFound) => Err(ActorError::NotFound("post not found")),
            Err(StoreError::Rejected(_)) => Err(ActorError::Forbidden("only its author may")),
            Err(other) => Err(other.into()),
            Ok(()) => {
                if let Ok(media) = self.media() {
                    media.wake_deleter();
                }
                Ok(())
            }
        }
    }

    /// `user` follows `followee`; following twice is following once.
    ///
    /// # Errors
    ///
    /// [`ActorError::Invalid`] for oneself, [`ActorError::Conflict`] past
    /// the follow limit.
    pub async fn follow(&self, user: Uuid, followee: Uuid) -> Result<(), ActorError> {
        if user == followee {
            return Err(ActorError::Invalid(
                "one's own posts are always in one's feed".into(),
            ));
        }
        let feed = self.feed_part();
        let at = feed.clock.now();
        match feed
            .store
            .follow(user, followee, at, feed.limits.follows_max)
            .await?
        {
            FollowOutcome::Followed | FollowOutcome::Already => Ok(()),
            FollowOutcome::Full => Err(ActorError::Conflict(format!(
                "already following {} people, the most one may: unfollow someone first",
                feed.limits.follows_max
            ))),
        }
    }

    /// `user` stops following `followee`; not following is fine.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn unfollow(&self, user: Uuid, followee: Uuid) -> Result<(), ActorError> {
        self.feed_part().store.unfollow(user, followee).await?;
        Ok(())
    }

    /// `user` likes a post; liking twice is one like. Returns the post.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] when the post does not exist.
    pub async fn like(&self, user: Uuid, post: Uuid) -> Result<Post, ActorError> {
        let feed = self.feed_part();
        let at = feed.clock.now();
        let added = match feed.store.like(user, post, at).await {
            Err(StoreError::NotFound) => return Err(ActorError::NotFound("post not found")),
            other => other?,
        };
        if added {
            feed.engage([EngagementEvent {
                post_id: post,
                user_id: user,
                kind: EngagementKind::Like,
                at,
            }]);
        }
        self.post(post).await
    }

    /// `user` takes back a like; no like is fine.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn unlike(&self, user: Uuid, post: Uuid) -> Result<(), ActorError> {
        let feed = self.feed_part();
        if feed.store.unlike(user, post).await? {
            let at = feed.clock.now();
            feed.engage([EngagementEvent {
                post_id: post,
                user_id: user,
                kind: EngagementKind::Unlike,
                at,
            }]);
        }
        Ok(())
    }

    /// A page of `user`'s feed: ranked when the ranking answers in time,
    /// else the last ranked page cached, else the newest posts. Costs a
    /// fixed number of database queries whatever `limit` or the number of
    /// people followed.
    ///
    /// # Errors
    ///
    /// [`ActorError::Invalid`] for a limit out of bounds or a cursor this
    /// node did not make; a failure of the database.
    pub async fn feed(
        &self,
        user: Uuid,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<FeedPage, ActorError> {
        let feed = self.feed_part();
        let limit = limit.unwrap_or(feed.limits.page_len_default);
        if limit == 0 || limit > feed.limits.page_len_max {
            return Err(ActorError::Invalid(format!(
                "limit must be 1 to {}",
                feed.limits.page_len_max
            )));
        }
        // A ranking holds `candidates_max` posts: an offset past them is no
        // cursor this node made.
        let cursor = cursor
            .map(|text| {
                Cursor::parse(text)
                    .filter(|c| !matches!(c, Cursor::Ranked(o) if *o > feed.limits.candidates_max))
                    .ok_or_else(|| ActorError::Invalid("invalid cursor".into()))
            })
            .transpose()?;
        let started = feed.clock.monotonic();
        let now = feed.clock.now();
        let page = match cursor {
            Some(Cursor::Recent(after)) => self.recent_page(user, Some(after), limit).await?,
            Some(Cursor::Ranked(offset)) => self.ranked_page(user, now, offset, limit).await?,
            None => self.ranked_page(user, now, 0, limit).await?,
        };
        feed.metrics
            .feed_request_duration_seconds
            .with_label_values(&[page.source.as_str()])
            .observe(feed.clock.monotonic().saturating_sub(started).as_secs_f64());
        feed.engage(page.posts.iter().map(|p| EngagementEvent {
            post_id: p.id,
            user_id: user,
            kind: EngagementKind::View,
            at: now,
        }));
        Ok(page)
    }

    async fn ranked_page(
        &self,
        user: Uuid,
        now: DateTime<Utc>,
        offset: u32,
        limit: u32,
    ) -> Result<FeedPage, ActorError> {
        let feed = self.feed_part();
        let key = format!("{user}:{offset}:{limit}");
        match feed.ranked(user, now, offset, limit).await? {
            Ok(posts) => {
                let (posts, more) = page_of(posts, limit);
                let page = FeedPage {
                    posts,
                    source: FeedSource::Ranked,
                    next_cursor: more.then(|| Cursor::Ranked(offset + limit).encode()),
                };
                feed.remember(&key, &page).await;
                Ok(page)
            }
            Err(why) => {
                tracing::debug!(%why, "feed ranking unavailable: falling back");
                if let Some(cached) = feed.cached(&key).await {
                    let mut found: HashMap<Uuid, Post> = feed
                        .store
                        .posts(&cached.ids)
                        .await?
                        .into_iter()
                        .map(|p| (p.id, p))
                        .collect();
                    return Ok(FeedPage {
                        posts: cached
                            .ids
                            .iter()
                            .filter_map(|id| found.remove(id))
                            .collect(),
                        source: FeedSource::Cache,
                        next_cursor: cached.next_cursor,
                    });
                }
                self.recent_page(user, None, limit).await
            }
        }
    }

    async fn recent_page(
        &self,
        user: Uuid,
        after: Option<PostPosition>,
        limit: u32,
    ) -> Result<FeedPage, ActorError> {
        let feed = self.feed_part();
        let (posts, more) = page_of(feed.store.recent(user, after, limit + 1).await?, limit);
        let next_cursor = more.then(|| posts.last()).flatten().map(|last| {
            Cursor::Recent(PostPosition {
                created_at: last.created_at,
                id: last.id,
            })
            .encode()
        });
        Ok(FeedPage {
            posts,
            source: FeedSource::Recent,
            next_cursor,
        })
    }

    /// Asks ClickHouse whether it answers; `None` without it.
    pub async fn ping_analytics(&self) -> Option<Result<(), AnalyticsError>> {
        let analytics = self.feed_part().analytics.as_ref()?;
        Some(analytics.ping().await)
    }

    /// The feed ranking's breaker and whether it ranks with ClickHouse.
    #[must_use]
    pub fn feed_ranking(&self) -> (&'static str, &'static str) {
        let feed = self.feed_part();
        (feed.dependency, feed.breaker())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let recent = Cursor::Recent(PostPosition {
            created_at: DateTime::from_timestamp_micros(1_764_601_200_123_456).unwrap(),
            id: Uuid::from_u128(7),
        });
        for cursor in [Cursor::Ranked(0), Cursor::Ranked(40), recent] {
            assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
        }
        for stranger in [
            "",
            "r",
            "r-1",
            "x1",
            "t1",
            "t1_zz",
            "tx_00000000000000000000000000000007",
        ] {
            assert_eq!(Cursor::parse(stranger), None, "{stranger}");
        }
    }
}
