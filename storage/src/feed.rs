//! The feed's seams: posts and the follow graph in the [`FeedStore`] (the
//! database, the truth), engagement in [`Analytics`] (ClickHouse, when
//! configured: a record of what people did, which may lose events), and the
//! last ranked pages in a [`FeedCache`].
//!
//! Ranking is one formula wherever it runs ([`score`]): a post's
//! engagement of the last [`ENGAGEMENT_WINDOW`] over the square of its age
//! in hours plus two, so engagement lifts a post and time lets it sink. The
//! SQL stores compute it in their ranking query; the ClickHouse path and
//! the memory store compute it here.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use switchboard_protocol::{Attachment, Post};
use uuid::Uuid;

use crate::{AttachmentState, StoreError};

/// How far back engagement counts towards a post's score.
pub const ENGAGEMENT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// What a view weighs against a like.
pub const VIEW_WEIGHT: f64 = 0.1;

/// The ranking score of a post `age` old with `engagement` (likes, and
/// views at [`VIEW_WEIGHT`]) within the window.
#[must_use]
pub fn score(engagement: f64, age: chrono::TimeDelta) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "microseconds of a post's age fit an f64's mantissa for 285 years"
    )]
    let hours = age.num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 3_600_000_000.0;
    let decay = hours + 2.0;
    (1.0 + engagement.max(0.0)) / (decay * decay)
}

/// `posts` best first by [`score`] at `now`, with `engagement` per post,
/// ties newest first.
#[must_use]
pub fn rank(posts: Vec<Post>, engagement: impl Fn(&Post) -> f64, now: DateTime<Utc>) -> Vec<Post> {
    let mut scored: Vec<(f64, Post)> = posts
        .into_iter()
        .map(|p| (score(engagement(&p), now - p.created_at), p))
        .collect();
    scored.sort_by(|(a, p), (b, q)| {
        b.total_cmp(a)
            .then_with(|| q.created_at.cmp(&p.created_at))
            .then_with(|| q.id.cmp(&p.id))
    });
    scored.into_iter().map(|(_, post)| post).collect()
}

/// A post to write.
#[derive(Debug, Clone)]
pub struct NewPost {
    /// Post id.
    pub id: Uuid,
    /// Who writes it.
    pub author_id: Uuid,
    /// Its text, already checked.
    pub text: String,
    /// When.
    pub at: DateTime<Utc>,
    /// An uploaded attachment of the author's to claim in the post's
    /// transaction (`Conflict` when it is no longer pending).
    pub attachment: Option<Attachment>,
    /// Unique per author; a repeat answers the stored post.
    pub idempotency_key: Option<String>,
}

impl NewPost {
    /// The answer when this post's key stored `existing`: the post, unless
    /// the key is being reused for another one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when the text or the attachment differ.
    pub fn replay(&self, existing: Post) -> Result<(Post, bool), StoreError> {
        let attachment = |a: Option<&Attachment>| a.map(|a| a.id);
        if existing.text != self.text
            || attachment(existing.attachment.as_ref()) != attachment(self.attachment.as_ref())
        {
            return Err(StoreError::Conflict(
                "idempotency key already used for another post".into(),
            ));
        }
        Ok((existing, false))
    }
}

/// An upload a post may carry: a row from the moment its URL is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostUpload {
    /// What the post will show of it.
    pub attachment: Attachment,
    /// Who may post it.
    pub author_id: Uuid,
    /// Pending, attached (to `post_id`) or deleted.
    pub state: AttachmentState,
    /// The post that carries it.
    pub post_id: Option<Uuid>,
    /// When its URL was issued.
    pub created_at: DateTime<Utc>,
    /// When its upload URL stops working.
    pub upload_expires_at: DateTime<Utc>,
}

/// What a follow did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowOutcome {
    /// Now following.
    Followed,
    /// Was following already.
    Already,
    /// The follower follows as many as they may; nothing written.
    Full,
}

/// Whose posts a feed is made of, and which of them it ranks.
#[derive(Debug, Clone, Copy)]
pub struct FeedQuery {
    /// Whose feed: their own posts and those of everyone they follow.
    pub user: Uuid,
    /// Posts older than this are not candidates.
    pub since: DateTime<Utc>,
    /// The newest this many posts are the candidates.
    pub candidates_max: u32,
}

/// A keyset position in a newest-first list of posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostPosition {
    /// The last post's time.
    pub created_at: DateTime<Utc>,
    /// The last post's id.
    pub id: Uuid,
}

/// Posts, likes and who follows whom. Every read of a feed is one query,
/// whatever the page size or the number of people followed.
#[async_trait]
pub trait FeedStore: Send + Sync + Debug + 'static {
    /// Writes a post; `false` with the stored one when its idempotency key
    /// stored it before.
    async fn create_post(&self, post: NewPost) -> Result<(Post, bool), StoreError>;

    /// One post.
    async fn post(&self, id: Uuid) -> Result<Option<Post>, StoreError>;

    /// Deletes a post and its likes, and tombstones its attachment, owing
    /// the object a deletion, in one transaction; only its author may
    /// (`Rejected(NotPermitted)`), and a post that does not exist is
    /// `NotFound`.
    async fn delete_post(&self, id: Uuid, by: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Writes an upload's row (pending), before its URL is issued.
    async fn create_post_upload(&self, upload: PostUpload) -> Result<(), StoreError>;

    /// One upload.
    async fn post_upload(&self, id: Uuid) -> Result<Option<PostUpload>, StoreError>;

    /// Tombstones up to `limit` pending uploads created before `before`
    /// (never posted), owing their objects a deletion; how many.
    async fn expire_post_uploads(
        &self,
        before: DateTime<Utc>,
        at: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// `follower` follows `followee`, unless they follow `follows_max`
    /// already (counted in the insert's transaction).
    async fn follow(
        &self,
        follower: Uuid,
        followee: Uuid,
        at: DateTime<Utc>,
        follows_max: u32,
    ) -> Result<FollowOutcome, StoreError>;

    /// Stops following; whether they followed.
    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> Result<bool, StoreError>;

    /// Likes a post once (`NotFound` when it does not exist); whether this
    /// like is new.
    async fn like(&self, user: Uuid, post: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Takes a like back; whether there was one.
    async fn unlike(&self, user: Uuid, post: Uuid) -> Result<bool, StoreError>;

    /// The candidates of `query` ranked at `now` by [`score`] with their
    /// likes since `now - ENGAGEMENT_WINDOW`, `limit` of them from
    /// `offset`: the ranking itself, one query.
    async fn ranked(
        &self,
        query: FeedQuery,
        now: DateTime<Utc>,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError>;

    /// The candidates of `query`, newest first, for a ranking made
    /// elsewhere.
    async fn candidates(&self, query: FeedQuery) -> Result<Vec<Post>, StoreError>;

    /// `user`'s feed newest first, after `after`.
    async fn recent(
        &self,
        user: Uuid,
        after: Option<PostPosition>,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError>;

    /// The posts of `ids` that still exist, in any order.
    async fn posts(&self, ids: &[Uuid]) -> Result<Vec<Post>, StoreError>;
}

/// One thing a person did with a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngagementEvent {
    /// The post.
    pub post_id: Uuid,
    /// Who.
    pub user_id: Uuid,
    /// What.
    pub kind: EngagementKind,
    /// When.
    pub at: DateTime<Utc>,
}

/// What a person did with a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngagementKind {
    /// It was on a feed page they were served.
    View,
    /// They liked it.
    Like,
    /// They took their like back.
    Unlike,
}

impl EngagementKind {
    /// The code stored.
    #[must_use]
    pub fn code(self) -> i8 {
        match self {
            Self::View => 0,
            Self::Like => 1,
            Self::Unlike => -1,
        }
    }
}

/// A post's engagement within the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostEngagement {
    /// The post.
    pub post_id: Uuid,
    /// Likes less unlikes.
    pub likes: i64,
    /// Views.
    pub views: u64,
}

impl PostEngagement {
    /// What [`score`] takes.
    #[must_use]
    pub fn weight(&self) -> f64 {
        #[expect(
            clippy::cast_precision_loss,
            reason = "counts far below 2^52 in a day's window"
        )]
        let (likes, views) = (self.likes as f64, self.views as f64);
        likes + VIEW_WEIGHT * views
    }
}

/// An analytics store failed or could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("analytics: {0}")]
pub struct AnalyticsError(pub String);

/// Where engagement is recorded and aggregated.
#[async_trait]
pub trait Analytics: Send + Sync + Debug + 'static {
    /// Records a batch.
    async fn record(&self, events: &[EngagementEvent]) -> Result<(), AnalyticsError>;

    /// The engagement of `posts` since `since`; posts with none are absent.
    async fn engagement(
        &self,
        posts: &[Uuid],
        since: DateTime<Utc>,
    ) -> Result<Vec<PostEngagement>, AnalyticsError>;

    /// The cheapest round trip.
    async fn ping(&self) -> Result<(), AnalyticsError>;
}

/// A feed cache failed or could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("feed cache: {0}")]
pub struct CacheError(pub String);

/// Each user's last ranked pages, by key, for a while.
#[async_trait]
pub trait FeedCache: Send + Sync + Debug + 'static {
    /// The value stored at `key`, unless it expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores `value` at `key` for `ttl`.
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError>;
}
