//! The feed: post, follow, like, and read the ranked feed.

use reqwest::Method;
use switchboard_protocol::{CreatePost, FeedPage, Post, PresignedUpload, UploadRequest};
use uuid::Uuid;

use crate::retry::retried;
use crate::{Client, ClientError, RetryPolicy, Upload, entropy};

impl Client {
    /// Posts `body`: the stored post (the same one for a repeated
    /// idempotency key).
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `unprocessable` for empty or too long text,
    /// `conflict` for an upload not done or a key used for another post.
    pub async fn create_post(&self, body: &CreatePost) -> Result<Post, ClientError> {
        self.call(self.request(Method::POST, "/posts").json(body))
            .await
    }

    /// Posts `text` (with the upload `attachment_id`), retried as `policy`
    /// allows under one idempotency key, so it is posted once however
    /// often an answer is lost.
    ///
    /// # Errors
    ///
    /// The last [`ClientError`] once a try fails permanently or the
    /// attempts run out.
    pub async fn create_post_retried(
        &self,
        text: &str,
        attachment_id: Option<Uuid>,
        policy: RetryPolicy,
    ) -> Result<Post, ClientError> {
        let body = CreatePost {
            text: text.to_owned(),
            attachment_id,
            idempotency_key: Some(entropy::new_key().to_string()),
        };
        retried(policy, || self.create_post(&body)).await
    }

    /// An upload URL for an image or file to post.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `unsupported_media_type`, `payload_too_large`.
    pub async fn presign_post_attachment(
        &self,
        body: &UploadRequest,
    ) -> Result<PresignedUpload, ClientError> {
        self.call(self.request(Method::POST, "/posts/attachments").json(body))
            .await
    }

    /// Posts `text` with `upload`: presigned, uploaded and posted, each
    /// step retried as `policy` allows (the post only once the upload is
    /// done, so it is never posted without it).
    ///
    /// # Errors
    ///
    /// The last [`ClientError`] once a step fails permanently or its
    /// attempts run out.
    pub async fn create_post_with(
        &self,
        text: &str,
        upload: &Upload,
        policy: RetryPolicy,
    ) -> Result<Post, ClientError> {
        let request = UploadRequest {
            content_type: upload.content_type.clone(),
            size_bytes: upload.bytes.len() as u64,
            file_name: upload.file_name.clone(),
        };
        let presigned = retried(policy, || self.presign_post_attachment(&request)).await?;
        retried(policy, || self.upload(&presigned, upload.bytes.clone())).await?;
        self.create_post_retried(text, Some(presigned.attachment_id), policy)
            .await
    }

    /// Deletes one of the caller's posts.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `not_found`, or `forbidden` for someone else's.
    pub async fn delete_post(&self, id: Uuid) -> Result<(), ClientError> {
        self.call_empty(self.request(Method::DELETE, &format!("/posts/{id}")))
            .await
    }

    /// Follows `user`, or (`follow` false) stops.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `unprocessable` for oneself, `conflict` past the
    /// follow limit.
    pub async fn follow(&self, user: Uuid, follow: bool) -> Result<(), ClientError> {
        let method = if follow { Method::PUT } else { Method::DELETE };
        self.call_empty(self.request(method, &format!("/users/{user}/follow")))
            .await
    }

    /// Likes a post (answering it), or takes the like back.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `not_found` for a post that does not exist.
    pub async fn like(&self, post: Uuid, like: bool) -> Result<Option<Post>, ClientError> {
        let path = format!("/posts/{post}/like");
        if like {
            self.call(self.request(Method::PUT, &path)).await.map(Some)
        } else {
            self.call_empty(self.request(Method::DELETE, &path))
                .await
                .map(|()| None)
        }
    }

    /// A page of the caller's feed.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `unprocessable` for a bad limit or cursor.
    pub async fn feed(
        &self,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<FeedPage, ClientError> {
        // Cursors are made of `[A-Za-z0-9_]`: nothing to escape.
        let mut path = String::from("/feed");
        let mut separator = '?';
        if let Some(limit) = limit {
            path.push_str(&format!("{separator}limit={limit}"));
            separator = '&';
        }
        if let Some(cursor) = cursor {
            path.push_str(&format!("{separator}cursor={cursor}"));
        }
        let request = self.request(Method::GET, &path);
        self.call(request).await
    }
}
