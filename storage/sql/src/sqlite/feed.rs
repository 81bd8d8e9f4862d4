//! SQLite's feed: writes on the writer connection, reads on the readers.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::{Sqlite, Transaction};
use switchboard_protocol::Post;
use switchboard_storage::{
    DeletionReason, ENGAGEMENT_WINDOW, FeedQuery, FeedStore, FollowOutcome, NewPost, PostPosition,
    PostUpload, Rejection, StoreError,
};
use uuid::Uuid;

use super::{SqliteStore, owe_deletion};
use crate::error::db;
use crate::feed_sql::SQLITE;
use crate::rows;

#[async_trait]
impl FeedStore for SqliteStore {
    async fn create_post(&self, post: NewPost) -> Result<(Post, bool), StoreError> {
        let mut tx = self.begin().await?;
        if let Some(key) = &post.idempotency_key {
            let stored = sqlx::query(concat!(
                "SELECT ",
                rows::post_columns!(),
                " FROM posts WHERE author_id = ?1 AND idempotency_key = ?2"
            ))
            .bind(post.author_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(row) = stored {
                return post.replay(rows::post(&row)?);
            }
        }
        if let Some(attachment) = &post.attachment {
            let claimed = sqlx::query(
                "UPDATE post_uploads SET state = 'attached', post_id = ?1 \
                 WHERE id = ?2 AND author_id = ?3 AND state = 'pending'",
            )
            .bind(post.id)
            .bind(attachment.id)
            .bind(post.author_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if claimed.rows_affected() == 0 {
                return Err(StoreError::Conflict(
                    "the attachment is no longer pending".into(),
                ));
            }
        }
        sqlx::query(
            "INSERT INTO posts (id, author_id, text, created_at, attachment, idempotency_key) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(post.id)
        .bind(post.author_id)
        .bind(&post.text)
        .bind(post.at)
        .bind(rows::encode_attachment(post.attachment.as_ref())?)
        .bind(&post.idempotency_key)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let stored = Post {
            id: post.id,
            author_id: post.author_id,
            text: post.text,
            created_at: post.at,
            like_count: 0,
            attachment: post.attachment,
        };
        Ok((stored, true))
    }

    async fn post(&self, id: Uuid) -> Result<Option<Post>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            rows::post_columns!(),
            " FROM posts WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::post)
        .transpose()
    }

    async fn delete_post(&self, id: Uuid, by: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let found: Option<(Uuid, Option<String>)> =
            sqlx::query_as("SELECT author_id, attachment FROM posts WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let attachment = match found {
            None => return Err(StoreError::NotFound),
            Some((author, _)) if author != by => {
                return Err(StoreError::Rejected(Rejection::NotPermitted));
            }
            Some((_, attachment)) => rows::decode_attachment(attachment)?,
        };
        if let Some(attachment) = attachment {
            let reason = DeletionReason::PostDeleted;
            owe(
                &mut tx,
                attachment.id,
                &attachment.s3_key,
                Some(by),
                reason,
                at,
            )
            .await?;
        }
        for sql in [
            "DELETE FROM post_likes WHERE post_id = ?1",
            "DELETE FROM posts WHERE id = ?1",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn create_post_upload(&self, upload: PostUpload) -> Result<(), StoreError> {
        let a = &upload.attachment;
        sqlx::query(
            "INSERT INTO post_uploads (id, author_id, s3_key, content_type, size_bytes, file_name, \
                 state, created_at, upload_expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8)",
        )
        .bind(a.id)
        .bind(upload.author_id)
        .bind(&a.s3_key)
        .bind(&a.content_type)
        .bind(rows::signed(a.size_bytes)?)
        .bind(&a.file_name)
        .bind(upload.created_at)
        .bind(upload.upload_expires_at)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn post_upload(&self, id: Uuid) -> Result<Option<PostUpload>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            rows::post_upload_columns!(),
            " FROM post_uploads WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::post_upload)
        .transpose()
    }

    async fn expire_post_uploads(
        &self,
        before: DateTime<Utc>,
        at: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let expired: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, s3_key FROM post_uploads WHERE state = 'pending' AND created_at < ?1 \
             ORDER BY created_at LIMIT ?2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        for (id, key) in &expired {
            owe(&mut tx, *id, key, None, DeletionReason::Unattached, at).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(u64::try_from(expired.len()).unwrap_or(u64::MAX))
    }

    async fn follow(
        &self,
        follower: Uuid,
        followee: Uuid,
        at: DateTime<Utc>,
        follows_max: u32,
    ) -> Result<FollowOutcome, StoreError> {
        // The writer is one connection: the count and the insert cannot race.
        let mut tx = self.begin().await?;
        let (following, total): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(followee_id = ?2), 0), COUNT(*) FROM follows \
             WHERE follower_id = ?1",
        )
        .bind(follower)
        .bind(followee)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if following > 0 {
            return Ok(FollowOutcome::Already);
        }
        if total >= i64::from(follows_max) {
            return Ok(FollowOutcome::Full);
        }
        sqlx::query(
            "INSERT INTO follows (follower_id, followee_id, created_at) VALUES (?1, ?2, ?3)",
        )
        .bind(follower)
        .bind(followee)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(FollowOutcome::Followed)
    }

    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM follows WHERE follower_id = ?1 AND followee_id = ?2")
            .bind(follower)
            .bind(followee)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn like(&self, user: Uuid, post: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM posts WHERE id = ?1")
            .bind(post)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let added = sqlx::query(
            "INSERT INTO post_likes (post_id, user_id, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(post)
        .bind(user)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected()
            > 0;
        if added {
            sqlx::query("UPDATE posts SET like_count = like_count + 1 WHERE id = ?1")
                .bind(post)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(added)
    }

    async fn unlike(&self, user: Uuid, post: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let removed = sqlx::query("DELETE FROM post_likes WHERE post_id = ?1 AND user_id = ?2")
            .bind(post)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected()
            > 0;
        if removed {
            sqlx::query("UPDATE posts SET like_count = like_count - 1 WHERE id = ?1")
                .bind(post)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(removed)
    }

    async fn ranked(
        &self,
        query: FeedQuery,
        now: DateTime<Utc>,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError> {
        let found = sqlx::query(AssertSqlSafe(SQLITE.ranked.as_str()))
            .bind(query.user)
            .bind(query.since)
            .bind(query.candidates_max)
            .bind(now - ENGAGEMENT_WINDOW)
            .bind(now)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.reader)
            .await
            .map_err(db)?;
        found.iter().map(rows::post).collect()
    }

    async fn candidates(&self, query: FeedQuery) -> Result<Vec<Post>, StoreError> {
        let found = sqlx::query(AssertSqlSafe(SQLITE.candidates.as_str()))
            .bind(query.user)
            .bind(query.since)
            .bind(query.candidates_max)
            .fetch_all(&self.reader)
            .await
            .map_err(db)?;
        found.iter().map(rows::post).collect()
    }

    async fn recent(
        &self,
        user: Uuid,
        after: Option<PostPosition>,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError> {
        let found = match after {
            None => {
                sqlx::query(AssertSqlSafe(SQLITE.recent.as_str()))
                    .bind(user)
                    .bind(limit)
                    .fetch_all(&self.reader)
                    .await
            }
            Some(after) => {
                sqlx::query(AssertSqlSafe(SQLITE.recent_after.as_str()))
                    .bind(user)
                    .bind(after.created_at)
                    .bind(after.id)
                    .bind(limit)
                    .fetch_all(&self.reader)
                    .await
            }
        }
        .map_err(db)?;
        found.iter().map(rows::post).collect()
    }

    async fn posts(&self, ids: &[Uuid]) -> Result<Vec<Post>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            concat!(
                "SELECT ",
                rows::post_columns!(),
                " FROM posts WHERE id IN ({})"
            ),
            vec!["?"; ids.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        let found = query.fetch_all(&self.reader).await.map_err(db)?;
        found.iter().map(rows::post).collect()
    }
}

/// Tombstones upload `id` inside `tx`, owes its object a deletion and
/// audits it.
async fn owe(
    tx: &mut Transaction<'_, Sqlite>,
    id: Uuid,
    s3_key: &str,
    actor: Option<Uuid>,
    reason: DeletionReason,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE post_uploads SET state = 'deleted' WHERE id = ?1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    owe_deletion(tx, id, s3_key, actor, reason, at).await
}
