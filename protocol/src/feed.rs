//! The feed's resources: posts, and a page of the ranked feed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A post: public text by one author, shown on their followers' feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// Post id.
    pub id: Uuid,
    /// Who wrote it.
    pub author_id: Uuid,
    /// What it says.
    pub text: String,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// Likes it has now.
    pub like_count: u64,
    /// An image or file posted with it (download it with
    /// `GET /posts/{id}/attachment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<crate::Attachment>,
}

/// `POST /posts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePost {
    /// 1 to 2,000 characters.
    pub text: String,
    /// An upload from `POST /posts/attachments`, done, to post with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_id: Option<Uuid>,
    /// Makes retries safe: a repeat with the same key answers the stored
    /// post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Where a feed page came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedSource {
    /// Ranked now, by engagement and recency.
    Ranked,
    /// The ranking was unavailable: the caller's last ranked page.
    Cache,
    /// The ranking was unavailable and nothing was cached: newest first.
    Recent,
}

impl FeedSource {
    /// The lowercase name, on the wire, in the `Feed-Source` header and in
    /// metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ranked => "ranked",
            Self::Cache => "cache",
            Self::Recent => "recent",
        }
    }
}

/// `GET /feed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    /// Posts of the people the caller follows, and the caller's own.
    pub posts: Vec<Post>,
    /// How this page was made.
    pub source: FeedSource,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
