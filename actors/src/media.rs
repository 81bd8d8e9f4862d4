//! Voice messages and attachments: upload URLs issued to members only,
//! messages that exist only once their object is checked, downloads, and
//! deletion that no interleaving can turn into an orphan.
//!
//! The flow: a member asks for an upload URL (a pending attachment row is
//! written first, so every object is promised by a row), uploads straight
//! to the blob store, then sends the message naming the key; the node
//! `HEAD`s the object (absent → 409, another size or type → 422) and the
//! store claims the row in the send's transaction, so a delete racing the
//! send either wins (the send is refused) or loses (the message carries
//! it). Deleting writes a tombstone and a deletion job together; the
//! deleter (`deleter.rs`) removes the object, and the sweeper
//! (`sweeper.rs`) removes what arrives late or is never sent.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use switchboard_protocol::{
    Attachment, AttachmentKind, Message, PresignedUpload, SendAttachment, SendAudio, SendMessage,
    UploadRequest,
};
use switchboard_storage::{
    AttachmentState, BlobError, Blobs, Clock, DeleteAttachment, DeletionReason, FeedStore,
    NewAttachment, PresignedRequest, Rejection, Store, StoreError, StoredAttachment,
};
use switchboard_supervisors::{
    BreakerState, CallError, RestartPolicy, Supervisor, WorkerHandle, WorkerPolicy,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::blob_worker::{BLOB_CLEANUP, BLOBS, BlobAnswer, BlobCall, BlobWorker, MEDIA};
use crate::conversation::Command;
use crate::deleter::{DELETER, Deleter};
use crate::node::Node;
use crate::sweeper::{SWEEPER, Sweeper};
use crate::{ActorError, Metrics};

/// Content types a voice message may have.
pub const AUDIO_TYPES: &[&str] = &[
    "audio/mp4",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/webm",
    "audio/wav",
    "audio/x-wav",
    "audio/x-m4a",
    "audio/3gpp",
    "audio/amr",
    "audio/opus",
    "audio/flac",
];

/// Content types an attachment may have besides audio.
pub const ATTACHMENT_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/heic",
    "image/heif",
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "application/pdf",
    "application/zip",
    "application/json",
    "application/octet-stream",
    "text/plain",
    "text/csv",
];

/// Bounds of the media path.
#[derive(Debug, Clone, Copy)]
pub struct MediaLimits {
    /// The largest voice message.
    pub audio_size_max: u64,
    /// The largest other attachment.
    pub attachment_size_max: u64,
    /// The longest voice message.
    pub audio_duration_max: Duration,
    /// The longest file name kept.
    pub file_name_len_max: usize,
    /// How long an upload URL works.
    pub upload_url_ttl: Duration,
    /// How long a download URL works.
    pub download_url_ttl: Duration,
    /// An upload never sent in a message is deleted after this.
    pub unattached_ttl: Duration,
    /// The sweeper leaves objects younger than this alone, and looks at a
    /// pending row only this long after its URL expired: an upload still in
    /// flight when the URL expired lands meanwhile.
    pub orphan_grace: Duration,
    /// How often the sweeper runs.
    pub sweep_every: Duration,
    /// Rows and objects the sweeper looks at per pass, each.
    pub sweep_batch_len: usize,
    /// Deletions the deleter takes at once.
    pub delete_batch_len: u32,
    /// How long a node holds a deletion it took before another may.
    pub delete_lease: Duration,
    /// How often the deleter looks for due deletions without being woken.
    pub delete_poll_every: Duration,
    /// The first retry of a failed deletion; doubles per attempt.
    pub delete_retry_min: Duration,
    /// The longest wait between retries of a deletion.
    pub delete_retry_max: Duration,
    /// The request path's worker: queue, deadline, breaker, restarts.
    pub worker: WorkerPolicy,
    /// The cleanup worker's.
    pub cleanup_worker: WorkerPolicy,
    /// How the deleter and the sweeper are restarted.
    pub restart: RestartPolicy,
}

impl Default for MediaLimits {
    fn default() -> Self {
        let worker = WorkerPolicy {
            queue_len_max: 1024,
            call_timeout: Duration::from_secs(5),
            ..WorkerPolicy::default()
        };
        Self {
            audio_size_max: 10 * 1024 * 1024,
            attachment_size_max: 25 * 1024 * 1024,
            audio_duration_max: Duration::from_secs(60 * 60),
            file_name_len_max: 255,
            upload_url_ttl: Duration::from_secs(3600),
            download_url_ttl: Duration::from_secs(300),
            unattached_ttl: Duration::from_secs(24 * 3600),
            orphan_grace: Duration::from_secs(3600),
            sweep_every: Duration::from_secs(60),
            sweep_batch_len: 500,
            delete_batch_len: 100,
            delete_lease: Duration::from_secs(60),
            delete_poll_every: Duration::from_secs(5),
            delete_retry_min: Duration::from_secs(1),
            delete_retry_max: Duration::from_secs(300),
            worker,
            cleanup_worker: WorkerPolicy {
                queue_len_max: 256,
                ..worker
            },
            restart: RestartPolicy::default(),
        }
    }
}

impl MediaLimits {
    /// Checks that the bounds fit together.
    ///
    /// # Errors
    ///
    /// A sentence naming the bounds that do not.
    pub fn check(&self) -> Result<(), String> {
        if self.unattached_ttl <= self.upload_url_ttl + self.orphan_grace {
            return Err(
                "unattached_ttl must be longer than upload_url_ttl plus orphan_grace".into(),
            );
        }
        if self.worker.call_timeout.is_zero() || self.sweep_batch_len == 0 {
            return Err("media call timeouts and sweep batches must not be zero".into());
        }
        Ok(())
    }
}

/// The node's media: its workers, and the deleter's wake-up.
#[derive(Debug)]
pub(crate) struct Media {
    request: WorkerHandle<BlobWorker>,
    pub(crate) limits: MediaLimits,
    /// Wakes the deleter as soon as a deletion is owed.
    deleter: Arc<Notify>,
}

impl Media {
    /// Starts the two blob workers, the deleter and the sweeper.
    pub(crate) fn start(
        supervisor: &Supervisor,
        blobs: &Arc<dyn Blobs>,
        stores: (&Arc<dyn Store>, &Arc<dyn FeedStore>),
        clock: &Arc<dyn Clock>,
        limits: MediaLimits,
        metrics: &Metrics,
    ) -> Self {
        let (store, feed) = stores;
        let worker = || BlobWorker {
            blobs: Arc::clone(blobs),
            clock: Arc::clone(clock),
            metrics: metrics.clone(),
        };
        let request = supervisor.start_worker(MEDIA, BLOBS, limits.worker, worker());
        // One store, one breaker: a failure the cleanup sees turns clients'
        // media calls away at once too, and the other way round.
        let cleanup =
            supervisor.start_worker_beside(BLOB_CLEANUP, &request, limits.cleanup_worker, worker());
        let deleter = Arc::new(Notify::new());
        let janitor = Janitor {
            store: Arc::clone(store),
            feed: Arc::clone(feed),
            clock: Arc::clone(clock),
            blobs: cleanup,
            limits,
            metrics: metrics.clone(),
        };
        supervisor.spawn(
            DELETER,
            limits.restart,
            Deleter::new(janitor.clone(), &deleter),
        );
        supervisor.spawn(SWEEPER, limits.restart, Sweeper::new(janitor, &deleter));
        Self {
            request,
            limits,
            deleter,
        }
    }

    /// Whether the blob store is refusing calls (its breaker is open).
    pub(crate) fn is_healthy(&self) -> bool {
        self.request.breaker() == BreakerState::Closed
    }

    /// Whether `request` may be presigned: a size within `size_max`, a
    /// sane file name, and a blob store not known to be down (checked
    /// before any row is written).
    pub(crate) fn check_upload(
        &self,
        request: &UploadRequest,
        size_max: u64,
    ) -> Result<(), ActorError> {
        if request.size_bytes == 0 {
            return Err(ActorError::Invalid("size_bytes must be at least 1".into()));
        }
        if request.size_bytes > size_max {
            return Err(ActorError::TooLarge(format!(
                "an upload of this kind is at most {size_max} bytes"
            )));
        }
        let name_max = self.limits.file_name_len_max;
        if let Some(name) = &request.file_name
            && (name.is_empty()
                || name.chars().count() > name_max
                || name.chars().any(char::is_control))
        {
            return Err(ActorError::Invalid(format!(
                "file_name must be 1 to {name_max} characters, none of them control characters"
            )));
        }
        if !self.is_healthy() {
            return Err(ActorError::Unavailable(
                "the media store is unavailable: retry".into(),
            ));
        }
        Ok(())
    }

    /// The presigned upload of object `key` (of attachment `id`), whose
    /// row is written.
    pub(crate) async fn issue_upload(
        &self,
        id: Uuid,
        key: String,
        content_type: String,
        size_bytes: u64,
    ) -> Result<PresignedUpload, ActorError> {
        let ttl = self.limits.upload_url_ttl;
        let answer = self
            .call(BlobCall::PresignPut {
                key: key.clone(),
                content_type,
                size_bytes,
                expires_in: ttl,
            })
            .await?;
        let BlobAnswer::Presigned(put) = answer else {
            return Err(ActorError::Internal(
                "the blob store answered out of turn".into(),
            ));
        };
        Ok(PresignedUpload {
            presigned_url: put.url,
            expiration: ttl.as_secs(),
            s3_key: key,
            attachment_id: id,
            method: put.method.to_owned(),
            headers: put.headers,
        })
    }

    /// Whether the object of `attachment` is uploaded as presigned.
    ///
    /// # Errors
    ///
    /// `Conflict` when it is not there yet, `Invalid` when its size or
    /// type differ, `Unavailable` while the blob store fails.
    pub(crate) async fn check_uploaded(&self, attachment: &Attachment) -> Result<(), ActorError> {
        let answer = self.call(BlobCall::Head(attachment.s3_key.clone())).await?;
        let BlobAnswer::Head(head) = answer else {
            return Err(ActorError::Internal(
                "the blob store answered out of turn".into(),
            ));
        };
        let head =
            head.ok_or_else(|| ActorError::Conflict("the attachment is not uploaded yet".into()))?;
        let same_type = head
            .content_type
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case(&attachment.content_type));
        if head.size_bytes != attachment.size_bytes || !same_type {
            return Err(ActorError::Invalid(
                "the uploaded object is not what was presigned".into(),
            ));
        }
        Ok(())
    }

    /// A download URL of object `key`, valid `download_url_ttl`.
    pub(crate) async fn download(&self, key: String) -> Result<PresignedRequest, ActorError> {
        let answer = self
            .call(BlobCall::PresignGet {
                key,
                expires_in: self.limits.download_url_ttl,
            })
            .await?;
        match answer {
            BlobAnswer::Presigned(get) => Ok(get),
            _ => Err(ActorError::Internal(
                "the blob store answered out of turn".into(),
            )),
        }
    }

    /// Tells the deleter a deletion may be owed.
    pub(crate) fn wake_deleter(&self) {
        self.deleter.notify_one();
    }

    pub(crate) async fn call(&self, call: BlobCall) -> Result<BlobAnswer, ActorError> {
        match self
            .request
            .call(call, self.limits.worker.call_timeout)
            .await
        {
            Ok(BlobAnswer::Refused(reason)) => Err(ActorError::Invalid(reason)),
            Ok(answer) => Ok(answer),
            Err(error) => Err(unavailable(&error)),
        }
    }
}

/// What the deleter and the sweeper work with.
#[derive(Debug, Clone)]
pub(crate) struct Janitor {
    pub(crate) store: Arc<dyn Store>,
    /// Posts' uploads, which the sweeper expires too.
    pub(crate) feed: Arc<dyn FeedStore>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The cleanup worker.
    pub(crate) blobs: WorkerHandle<BlobWorker>,
    pub(crate) limits: MediaLimits,
    pub(crate) metrics: Metrics,
}

impl Janitor {
    /// One call through the cleanup worker, within its deadline.
    pub(crate) async fn call(&self, call: BlobCall) -> Result<BlobAnswer, CallError<BlobError>> {
        self.blobs
            .call(call, self.limits.cleanup_worker.call_timeout)
            .await
    }
}

/// A blob store that did not answer, as callers see it: 503, retry soon.
pub(crate) fn unavailable<E: std::fmt::Display>(error: &CallError<E>) -> ActorError {
    tracing::debug!(%error, "blob store call failed");
    ActorError::Unavailable(match error {
        CallError::Overloaded => "the media store is busy: retry".into(),
        _ => "the media store is unavailable: retry".into(),
    })
}

/// What an attachment's content type makes it, if the call takes it.
pub(crate) fn kind_of(content_type: &str, audio_only: bool) -> Result<AttachmentKind, ActorError> {
    let content_type = content_type.to_ascii_lowercase();
    if AUDIO_TYPES.contains(&content_type.as_str()) {
        return Ok(AttachmentKind::Audio);
    }
    if audio_only {
        return Err(ActorError::UnsupportedType(format!(
            "a voice message is one of {}",
            AUDIO_TYPES.join(", ")
        )));
    }
    if !ATTACHMENT_TYPES.contains(&content_type.as_str()) {
        return Err(ActorError::UnsupportedType(format!(
            "content_type {content_type:?} is not accepted"
        )));
    }
    Ok(if content_type.starts_with("image/") {
        AttachmentKind::Image
    } else {
        AttachmentKind::File
    })
}

/// A store refusal of an attachment call as the caller sees it: a
/// non-member's refusal is the same 404 as a missing conversation.
fn refused(error: StoreError, missing: &'static str) -> ActorError {
    match error {
        StoreError::NotFound | StoreError::Rejected(Rejection::NotMember) => {
            ActorError::NotFound(missing)
        }
        StoreError::Rejected(_) => ActorError::Forbidden("not permitted"),
        other => other.into(),
    }
}

impl Node {
    pub(crate) fn media(&self) -> Result<&Media, ActorError> {
        self.shared()
            .media
            .as_ref()
            .ok_or_else(|| ActorError::Unavailable("this node has no media store".into()))
    }

    /// Issues an upload URL for a voice message in `conversation`.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member, `UnsupportedType` for a
    /// type not in [`AUDIO_TYPES`], `TooLarge` past `audio_size_max`,
    /// `Unavailable` while the blob store fails.
    pub async fn presign_audio(
        &self,
        user: Uuid,
        conversation: Uuid,
        request: UploadRequest,
    ) -> Result<PresignedUpload, ActorError> {
        let kind = kind_of(&request.content_type, true)?;
        let cap = self.media()?.limits.audio_size_max;
        self.presign(user, conversation, request, kind, cap).await
    }

    /// Issues an upload URL for an attachment (image, file or audio) in
    /// `conversation`.
    ///
    /// # Errors
    ///
    /// As [`Node::presign_audio`], with the attachment allow-list and
    /// `attachment_size_max`.
    pub async fn create_attachment(
        &self,
        user: Uuid,
        conversation: Uuid,
        request: UploadRequest,
    ) -> Result<PresignedUpload, ActorError> {
        let kind = kind_of(&request.content_type, false)?;
        let limits = self.media()?.limits;
        let cap = if kind == AttachmentKind::Audio {
            limits.audio_size_max
        } else {
            limits.attachment_size_max
        };
        self.presign(user, conversation, request, kind, cap).await
    }

    async fn presign(
        &self,
        user: Uuid,
        conversation: Uuid,
        request: UploadRequest,
        kind: AttachmentKind,
        size_max: u64,
    ) -> Result<PresignedUpload, ActorError> {
        let media = self.media()?;
        let limits = media.limits;
        media.check_upload(&request, size_max)?;
        let shared = self.shared();
        let id = shared.new_id();
        let at = shared.clock.now();
        let ttl = TimeDelta::from_std(limits.upload_url_ttl).unwrap_or(TimeDelta::MAX);
        let key = format!("conversations/{conversation}/{id}");
        let content_type = request.content_type.to_ascii_lowercase();
        shared
            .store
            .create_attachment(NewAttachment {
                id,
                conversation_id: conversation,
                uploader_id: user,
                kind,
                s3_key: key.clone(),
                content_type: content_type.clone(),
                size_bytes: request.size_bytes,
                file_name: request.file_name,
                at,
                upload_expires_at: at + ttl,
            })
            .await
            .map_err(|e| refused(e, "conversation not found"))?;
        media
            .issue_upload(id, key, content_type, request.size_bytes)
            .await
    }

    /// Sends a voice message whose upload is done.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a key not issued to `user` in
    /// `conversation` (or deleted), `Invalid` when the type or size differs
    /// from what was presigned or the object's does, `Conflict` when the
    /// object is not uploaded yet or the attachment was already sent, and
    /// the errors of [`Node::send`].
    pub async fn send_audio(
        &self,
        user: Uuid,
        conversation: Uuid,
        request: SendAudio,
    ) -> Result<(Message, bool), ActorError> {
        let limits = self.media()?.limits;
        if request.duration_ms == 0
            || u128::from(request.duration_ms) > limits.audio_duration_max.as_millis()
        {
            return Err(ActorError::Invalid(format!(
                "duration_ms must be between 1 and {}",
                limits.audio_duration_max.as_millis()
            )));
        }
        let stored = self
            .shared()
            .store
            .attachments_by_keys(std::slice::from_ref(&request.s3_key))
            .await?
            .into_iter()
            .next()
            .ok_or(ActorError::NotFound("attachment not found"))?;
        if stored.kind != AttachmentKind::Audio {
            return Err(ActorError::Invalid(
                "the key was issued for an attachment, not a voice message".into(),
            ));
        }
        if stored.attachment.content_type != request.content_type.to_ascii_lowercase()
            || stored.attachment.size_bytes != request.size_bytes
        {
            return Err(ActorError::Invalid(format!(
                "the upload was presigned as {} bytes of {}",
                stored.attachment.size_bytes, stored.attachment.content_type
            )));
        }
        let message = SendMessage {
            conversation_id: conversation,
            encrypted_content: request.encrypted_content.unwrap_or_default(),
            nonce: request.nonce.unwrap_or_default(),
            message_type: AttachmentKind::Audio.as_str().to_owned(),
            idempotency_key: request.idempotency_key,
        };
        self.send_attached(user, stored, Some(request.duration_ms), message)
            .await
    }

    /// Sends a message carrying an uploaded attachment.
    ///
    /// # Errors
    ///
    /// As [`Node::send_audio`].
    pub async fn send_attachment(
        &self,
        user: Uuid,
        conversation: Uuid,
        request: SendAttachment,
    ) -> Result<(Message, bool), ActorError> {
        let limits = self.media()?.limits;
        let stored = self
            .shared()
            .store
            .attachment(request.attachment_id)
            .await?
            .ok_or(ActorError::NotFound("attachment not found"))?;
        if let Some(duration) = request.duration_ms
            && (stored.kind != AttachmentKind::Audio
                || duration == 0
                || u128::from(duration) > limits.audio_duration_max.as_millis())
        {
            return Err(ActorError::Invalid(
                "duration_ms is for audio, between 1 ms and the longest voice message".into(),
            ));
        }
        let message = SendMessage {
            conversation_id: conversation,
            encrypted_content: request.encrypted_content.unwrap_or_default(),
            nonce: request.nonce.unwrap_or_default(),
            message_type: stored.kind.as_str().to_owned(),
            idempotency_key: request.idempotency_key,
        };
        self.send_attached(user, stored, request.duration_ms, message)
            .await
    }

    /// Checks the object of a pending attachment and sends it through the
    /// conversation actor, whose store call claims it.
    async fn send_attached(
        &self,
        user: Uuid,
        stored: StoredAttachment,
        duration_ms: Option<u64>,
        message: SendMessage,
    ) -> Result<(Message, bool), ActorError> {
        let conversation = message.conversation_id;
        if stored.conversation_id != conversation
            || stored.uploader_id != user
            || stored.state == AttachmentState::Deleted
        {
            return Err(ActorError::NotFound("attachment not found"));
        }
        // A sent one goes to the store unchecked: a retry with its key is
        // answered the stored message, anything else is refused there.
        if stored.state == AttachmentState::Pending {
            self.media()?.check_uploaded(&stored.attachment).await?;
        }
        let attachment = Box::new(Attachment {
            duration_ms,
            ..stored.attachment
        });
        let shared = self.shared();
        shared
            .conversations
            .call(shared, conversation, |reply| Command::Send {
                user,
                input: message.clone(),
                attachment: Some(attachment.clone()),
                scheduled: None,
                reply,
            })
            .await
    }

    /// A short-lived download URL of an attachment: any member's once it
    /// was sent, its uploader's before.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for an attachment the caller may not see,
    /// `Unavailable` while the blob store fails.
    pub async fn attachment_url(
        &self,
        user: Uuid,
        id: Uuid,
    ) -> Result<PresignedRequest, ActorError> {
        const MISSING: ActorError = ActorError::NotFound("attachment not found");
        let media = self.media()?;
        let store = &self.shared().store;
        let stored = store.attachment(id).await?.ok_or(MISSING)?;
        let visible = match stored.state {
            AttachmentState::Attached => store.role(stored.conversation_id, user).await?.is_some(),
            AttachmentState::Pending => stored.uploader_id == user,
            AttachmentState::Deleted => false,
        };
        if !visible {
            return Err(MISSING);
        }
        media.download(stored.attachment.s3_key).await
    }

    /// Deletes an attachment not yet sent (its uploader, or a moderator of
    /// its conversation); its object goes soon after.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] when it is missing, deleted or not the
    /// caller's to see, `Forbidden` for a member who may not, `Conflict`
    /// once it was sent.
    pub async fn delete_attachment(&self, user: Uuid, id: Uuid) -> Result<(), ActorError> {
        let media = self.media()?;
        self.shared()
            .store
            .delete_attachment(DeleteAttachment {
                id,
                by: Some(user),
                reason: DeletionReason::User,
                at: self.shared().clock.now(),
            })
            .await
            .map_err(|e| refused(e, "attachment not found"))?;
        media.wake_deleter();
        Ok(())
    }
}
