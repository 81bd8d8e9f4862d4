//! The memory store's feed, and the in-process feed cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use switchboard_protocol::Post;
use uuid::Uuid;

use crate::feed::PostUpload;
use crate::feed::{
    CacheError, ENGAGEMENT_WINDOW, FeedCache, FeedQuery, FeedStore, FollowOutcome, NewPost,
    PostPosition, rank,
};
use crate::{AttachmentState, Clock, DeletionReason, MemoryStore, Rejection, StoreError};

/// What the memory store keeps of the feed.
#[derive(Debug, Default)]
pub(crate) struct FeedState {
    posts: BTreeMap<Uuid, Post>,
    /// Each post's likes: who, when.
    likes: HashMap<Uuid, BTreeMap<Uuid, DateTime<Utc>>>,
    /// Whom each user follows.
    follows: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Uploads for posts, by id.
    uploads: BTreeMap<Uuid, PostUpload>,
    /// Posts by `(author, idempotency key)`.
    keys: HashMap<(Uuid, String), Uuid>,
}

impl FeedState {
    /// `user`'s candidates, newest first.
    fn newest(&self, user: Uuid, since: Option<DateTime<Utc>>) -> Vec<Post> {
        let followed = self.follows.get(&user);
        let mut posts: Vec<Post> = self
            .posts
            .values()
            .filter(|p| p.author_id == user || followed.is_some_and(|f| f.contains(&p.author_id)))
            .filter(|p| since.is_none_or(|since| p.created_at >= since))
            .cloned()
            .collect();
        posts.sort_by_key(|p| std::cmp::Reverse((p.created_at, p.id)));
        posts
    }
}

impl MemoryStore {
    fn feed(&self) -> MutexGuard<'_, FeedState> {
        self.feed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn index(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[async_trait]
impl FeedStore for MemoryStore {
    async fn create_post(&self, post: NewPost) -> Result<(Post, bool), StoreError> {
        let mut feed = self.feed();
        if let Some(key) = &post.idempotency_key
            && let Some(existing) = feed
                .keys
                .get(&(post.author_id, key.clone()))
                .and_then(|id| feed.posts.get(id))
        {
            return post.replay(existing.clone());
        }
        if let Some(attachment) = &post.attachment {
            let upload = feed
                .uploads
                .get_mut(&attachment.id)
                .filter(|u| u.author_id == post.author_id && u.state == AttachmentState::Pending)
                .ok_or_else(|| {
                    StoreError::Conflict("the attachment is no longer pending".into())
                })?;
            upload.state = AttachmentState::Attached;
            upload.post_id = Some(post.id);
        }
        if let Some(key) = &post.idempotency_key {
            feed.keys.insert((post.author_id, key.clone()), post.id);
        }
        let post = Post {
            id: post.id,
            author_id: post.author_id,
            text: post.text,
            created_at: post.at,
            like_count: 0,
            attachment: post.attachment,
        };
        feed.posts.insert(post.id, post.clone());
        Ok((post, true))
    }

    async fn post(&self, id: Uuid) -> Result<Option<Post>, StoreError> {
        Ok(self.feed().posts.get(&id).cloned())
    }

    async fn delete_post(&self, id: Uuid, by: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut feed = self.feed();
        match feed.posts.get(&id) {
            None => Err(StoreError::NotFound),
            Some(post) if post.author_id != by => {
                Err(StoreError::Rejected(Rejection::NotPermitted))
            }
            Some(_) => {
                let post = feed.posts.remove(&id);
                feed.likes.remove(&id);
                if let Some(attachment) = post.and_then(|p| p.attachment) {
                    if let Some(upload) = feed.uploads.get_mut(&attachment.id) {
                        upload.state = AttachmentState::Deleted;
                    }
                    self.state().owe_deletion(
                        attachment.id,
                        attachment.s3_key,
                        Some(by),
                        DeletionReason::PostDeleted,
                        at,
                    );
                }
                Ok(())
            }
        }
    }

    async fn create_post_upload(&self, upload: PostUpload) -> Result<(), StoreError> {
        let mut feed = self.feed();
        if feed
            .uploads
            .values()
            .any(|u| u.attachment.s3_key == upload.attachment.s3_key)
        {
            return Err(StoreError::Conflict("the key is taken".into()));
        }
        feed.uploads.insert(upload.attachment.id, upload);
        Ok(())
    }

    async fn post_upload(&self, id: Uuid) -> Result<Option<PostUpload>, StoreError> {
        Ok(self.feed().uploads.get(&id).cloned())
    }

    async fn expire_post_uploads(
        &self,
        before: DateTime<Utc>,
        at: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut feed = self.feed();
        let mut expired = 0;
        for upload in feed
            .uploads
            .values_mut()
            .filter(|u| u.state == AttachmentState::Pending && u.created_at < before)
            .take(index(limit))
        {
            upload.state = AttachmentState::Deleted;
            self.state().owe_deletion(
                upload.attachment.id,
                upload.attachment.s3_key.clone(),
                None,
                DeletionReason::Unattached,
                at,
            );
            expired += 1;
        }
        Ok(expired)
    }

    async fn follow(
        &self,
        follower: Uuid,
        followee: Uuid,
        _at: DateTime<Utc>,
        follows_max: u32,
    ) -> Result<FollowOutcome, StoreError> {
        let mut feed = self.feed();
        let followed = feed.follows.entry(follower).or_default();
        if followed.contains(&followee) {
            return Ok(FollowOutcome::Already);
        }
        if followed.len() >= index(follows_max) {
            return Ok(FollowOutcome::Full);
        }
        followed.insert(followee);
        Ok(FollowOutcome::Followed)
    }

    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .feed()
            .follows
            .get_mut(&follower)
            .is_some_and(|f| f.remove(&followee)))
    }

    async fn like(&self, user: Uuid, post: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut feed = self.feed();
        if !feed.posts.contains_key(&post) {
            return Err(StoreError::NotFound);
        }
        let likes = feed.likes.entry(post).or_default();
        if likes.contains_key(&user) {
            return Ok(false);
        }
        likes.insert(user, at);
        let n = count(likes.len());
        if let Some(p) = feed.posts.get_mut(&post) {
            p.like_count = n;
        }
        Ok(true)
    }

    async fn unlike(&self, user: Uuid, post: Uuid) -> Result<bool, StoreError> {
        let mut feed = self.feed();
        let Some(likes) = feed.likes.get_mut(&post) else {
            return Ok(false);
        };
        let removed = likes.remove(&user).is_some();
        let n = count(likes.len());
        if let Some(p) = feed.posts.get_mut(&post) {
            p.like_count = n;
        }
        Ok(removed)
    }

    async fn ranked(
        &self,
        query: FeedQuery,
        now: DateTime<Utc>,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError> {
        let feed = self.feed();
        let mut candidates = feed.newest(query.user, Some(query.since));
        candidates.truncate(index(query.candidates_max));
        let window = now - ENGAGEMENT_WINDOW;
        let recent_likes = |p: &Post| {
            let n = feed
                .likes
                .get(&p.id)
                .map_or(0, |l| l.values().filter(|at| **at > window).count());
            #[expect(clippy::cast_precision_loss, reason = "a count of likes")]
            let n = n as f64;
            n
        };
        Ok(rank(candidates, recent_likes, now)
            .into_iter()
            .skip(index(offset))
            .take(index(limit))
            .collect())
    }

    async fn candidates(&self, query: FeedQuery) -> Result<Vec<Post>, StoreError> {
        let mut candidates = self.feed().newest(query.user, Some(query.since));
        candidates.truncate(index(query.candidates_max));
        Ok(candidates)
    }

    async fn recent(
        &self,
        user: Uuid,
        after: Option<PostPosition>,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError> {
        Ok(self
            .feed()
            .newest(user, None)
            .into_iter()
            .filter(|p| after.is_none_or(|a| (p.created_at, p.id) < (a.created_at, a.id)))
            .take(index(limit))
            .collect())
    }

    async fn posts(&self, ids: &[Uuid]) -> Result<Vec<Post>, StoreError> {
        let feed = self.feed();
        Ok(ids
            .iter()
            .filter_map(|id| feed.posts.get(id).cloned())
            .collect())
    }
}

/// The feed cache of one node: at most `entries_max` pages, each until its
/// TTL runs out on the node's clock, the least recently used going first
/// when full.
#[derive(Debug)]
pub struct MemoryFeedCache {
    entries: quick_cache::sync::Cache<String, (Duration, Arc<[u8]>)>,
    clock: Arc<dyn Clock>,
}

impl MemoryFeedCache {
    /// A cache of at most `entries_max` pages.
    #[must_use]
    pub fn new(entries_max: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(entries_max.max(1)),
            clock,
        }
    }
}

#[async_trait]
impl FeedCache for MemoryFeedCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let now = self.clock.monotonic();
        Ok(match self.entries.get(key) {
            Some((expires, value)) if expires > now => Some(value.to_vec()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        let expires = self.clock.monotonic() + ttl;
        self.entries.insert(key.to_owned(), (expires, value.into()));
        Ok(())
    }
}
