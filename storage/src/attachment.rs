//! Attachments as the store keeps them, and the deletions owed to the blob
//! store.
//!
//! A row exists from the moment an upload URL is issued, so every object
//! the store will ever hold was promised by a row first. A row is
//! `pending` until a message claims it (`attached`), and a tombstone
//! (`deleted`) after: deleting one writes, in the same transaction, a
//! deletion job for its object and an audit entry, so no interleaving of
//! deletes, uploads and sends leaves an object without a live row for long
//! (the sweeper removes what arrives late) or a live row without a job.

use chrono::{DateTime, Utc};
use switchboard_protocol::{Attachment, AttachmentKind, Role};
use uuid::Uuid;

use crate::{Rejection, StoreError};

/// Where an attachment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachmentState {
    /// Issued an upload URL, not yet sent in a message.
    Pending,
    /// Sent in a message.
    Attached,
    /// Deleted: a tombstone, its object owed a deletion.
    Deleted,
}

impl AttachmentState {
    /// The lowercase name stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Attached => "attached",
            Self::Deleted => "deleted",
        }
    }

    /// Parses the stored name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(Self::Pending),
            "attached" => Some(Self::Attached),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// An attachment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttachment {
    /// What a message shows of it.
    pub attachment: Attachment,
    /// Voice note, image or file.
    pub kind: AttachmentKind,
    /// The conversation its key was issued for.
    pub conversation_id: Uuid,
    /// Who asked for the upload URL.
    pub uploader_id: Uuid,
    /// Where it stands.
    pub state: AttachmentState,
    /// The message that carries it, once sent.
    pub message_id: Option<Uuid>,
    /// When the upload URL was issued.
    pub created_at: DateTime<Utc>,
    /// When the upload URL stops working.
    pub upload_expires_at: DateTime<Utc>,
    /// When it was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl StoredAttachment {
    /// Whether `sender` may send it in `conversation` now: the rule every
    /// store applies to the claim that sends it.
    ///
    /// # Errors
    ///
    /// `NotFound` for a tombstone, another conversation's or another
    /// uploader's attachment; `Conflict` once it was sent.
    pub fn claimable_by(&self, conversation: Uuid, sender: Uuid) -> Result<(), StoreError> {
        if self.state == AttachmentState::Deleted
            || self.conversation_id != conversation
            || self.uploader_id != sender
        {
            return Err(StoreError::NotFound);
        }
        if self.state == AttachmentState::Attached {
            return Err(StoreError::Conflict(
                "the attachment was already sent".into(),
            ));
        }
        Ok(())
    }

    /// Whether `by` (`None`: the sweeper), whose role in the conversation
    /// is `role`, may delete it now: the rule every store applies.
    ///
    /// # Errors
    ///
    /// `NotFound` for a tombstone; `Conflict` once sent (delete its
    /// message); `Rejected` for someone neither its uploader nor a
    /// moderator (`NotMember` for a non-member, who may not know it exists).
    pub fn deletable_by(&self, by: Option<Uuid>, role: Option<Role>) -> Result<(), StoreError> {
        match self.state {
            AttachmentState::Deleted => return Err(StoreError::NotFound),
            AttachmentState::Attached => {
                return Err(StoreError::Conflict(
                    "the attachment was sent: delete its message instead".into(),
                ));
            }
            AttachmentState::Pending => {}
        }
        let Some(by) = by else { return Ok(()) };
        if by == self.uploader_id || role.is_some_and(Role::moderates) {
            return Ok(());
        }
        Err(StoreError::Rejected(if role.is_some() {
            Rejection::NotPermitted
        } else {
            Rejection::NotMember
        }))
    }

    /// The tombstone after a deletion at `at`.
    #[must_use]
    pub fn tombstoned(mut self, at: DateTime<Utc>) -> Self {
        self.state = AttachmentState::Deleted;
        self.deleted_at = Some(at);
        self
    }
}

/// A row for an upload URL about to be issued.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    /// Attachment id.
    pub id: Uuid,
    /// The conversation; the uploader must be a member when the row is
    /// written.
    pub conversation_id: Uuid,
    /// Who uploads.
    pub uploader_id: Uuid,
    /// Voice note, image or file.
    pub kind: AttachmentKind,
    /// `conversations/{conversation_id}/{uuid}`.
    pub s3_key: String,
    /// The type the URL binds.
    pub content_type: String,
    /// The size the URL binds.
    pub size_bytes: u64,
    /// The file's name, if given.
    pub file_name: Option<String>,
    /// When the URL is issued.
    pub at: DateTime<Utc>,
    /// When it expires.
    pub upload_expires_at: DateTime<Utc>,
}

impl NewAttachment {
    /// The row as stored, still pending.
    #[must_use]
    pub fn into_stored(self) -> StoredAttachment {
        StoredAttachment {
            attachment: Attachment {
                id: self.id,
                s3_key: self.s3_key,
                content_type: self.content_type,
                size_bytes: self.size_bytes,
                duration_ms: None,
                file_name: self.file_name,
            },
            kind: self.kind,
            conversation_id: self.conversation_id,
            uploader_id: self.uploader_id,
            state: AttachmentState::Pending,
            message_id: None,
            created_at: self.at,
            upload_expires_at: self.upload_expires_at,
            deleted_at: None,
        }
    }
}

/// Why an attachment or an object went, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeletionReason {
    /// Its uploader or a moderator deleted it before it was sent.
    User,
    /// Its message was deleted.
    MessageDeleted,
    /// The sweeper: uploaded but never sent within the TTL.
    Unattached,
    /// The sweeper: its URL expired and nothing was uploaded.
    NeverUploaded,
    /// The sweeper: an object with no row at all.
    Orphan,
    /// The sweeper: an object that arrived after its row was deleted.
    LateUpload,
    /// The post that carried it was deleted.
    PostDeleted,
}

impl DeletionReason {
    /// The lowercase name stored and counted.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::MessageDeleted => "message_deleted",
            Self::Unattached => "unattached",
            Self::NeverUploaded => "never_uploaded",
            Self::Orphan => "orphan",
            Self::LateUpload => "late_upload",
            Self::PostDeleted => "post_deleted",
        }
    }

    /// Parses the stored name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::User,
            Self::MessageDeleted,
            Self::Unattached,
            Self::NeverUploaded,
            Self::Orphan,
            Self::LateUpload,
            Self::PostDeleted,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

/// Deletes an attachment that was not sent.
#[derive(Debug, Clone)]
pub struct DeleteAttachment {
    /// The attachment.
    pub id: Uuid,
    /// Who deletes: its uploader or a moderator of its conversation (`None`
    /// for the sweeper, which may delete any pending one).
    pub by: Option<Uuid>,
    /// Why.
    pub reason: DeletionReason,
    /// When.
    pub at: DateTime<Utc>,
}

/// An object the blob store still holds that must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDeletion {
    /// The job's id.
    pub id: Uuid,
    /// The object.
    pub s3_key: String,
    /// Tries so far, this one included.
    pub attempts: u32,
}

/// One line of the attachment audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The attachment, when the object had a row.
    pub attachment_id: Option<Uuid>,
    /// The object.
    pub s3_key: String,
    /// Who: a user, or `None` for the sweeper.
    pub actor: Option<Uuid>,
    /// Why.
    pub reason: DeletionReason,
    /// When.
    pub at: DateTime<Utc>,
}
