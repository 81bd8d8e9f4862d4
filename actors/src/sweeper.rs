//! The attachment sweeper: a pass every `sweep_every`, each bounded by
//! `sweep_batch_len` rows and as many objects, that deletes what the normal
//! path leaves behind:
//!
//! - a pending row past its URL's expiry (and the grace after it) whose
//!   object never arrived (`never_uploaded`), or one uploaded but not sent
//!   within `unattached_ttl` (`unattached`): tombstoned with a deletion
//!   owed, as any delete;
//! - an object older than the grace with no row at all (`orphan`), or
//!   still there a grace after its row was deleted (`late_upload`: the
//!   deletion owed ran before it landed): removed at once and audited.
//!
//! Each pass goes on where the last stopped, round-robin, so every row and
//! object is looked at within `total / sweep_batch_len` passes. Several
//! nodes may sweep at once: every step is conditional and idempotent.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use chrono::{DateTime, TimeDelta, Utc};
use switchboard_storage::{
    AttachmentState, AuditEntry, DeleteAttachment, DeletionReason, StoreError, StoredAttachment,
};
use switchboard_supervisors::{Task, TaskContext};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::blob_worker::{BlobAnswer, BlobCall};
use crate::media::Janitor;

/// The sweeper's task name.
pub(crate) const SWEEPER: &str = "attachment_sweeper";

/// Where every attachment's object lives.
const PREFIX: &str = "conversations/";

pub(crate) struct Sweeper {
    janitor: Janitor,
    /// Wakes the deleter after the sweeper owed it deletions; weak, so the
    /// sweeper ends with the node.
    deleter: Weak<Notify>,
    /// The last pending row looked at.
    rows_after: Option<Uuid>,
    /// The last object looked at.
    objects_after: Option<String>,
}

impl Sweeper {
    pub(crate) fn new(janitor: Janitor, deleter: &Arc<Notify>) -> Self {
        Self {
            janitor,
            deleter: Arc::downgrade(deleter),
            rows_after: None,
            objects_after: None,
        }
    }

    fn removed(&self, reason: DeletionReason) {
        self.janitor
            .metrics
            .attachment_orphans_removed_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Pending rows past their URL's expiry and the grace.
    async fn rows(
        &mut self,
        context: &TaskContext,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let j = &self.janitor;
        let grace = delta(j.limits.orphan_grace);
        let ttl = delta(j.limits.unattached_ttl);
        let limit = u32::try_from(j.limits.sweep_batch_len).unwrap_or(u32::MAX);
        let page = j
            .store
            .pending_attachments(now - grace, self.rows_after, limit)
            .await?;
        self.rows_after = if page.len() < j.limits.sweep_batch_len {
            None
        } else {
            page.last().map(|a| a.attachment.id)
        };
        let mut owed = false;
        for stored in page {
            context.fault_point("row");
            let reason = if stored.created_at < now - ttl {
                DeletionReason::Unattached
            } else {
                match j
                    .call(BlobCall::Head(stored.attachment.s3_key.clone()))
                    .await
                {
                    Ok(BlobAnswer::Head(None)) => DeletionReason::NeverUploaded,
                    // Uploaded: it has until the TTL to be sent.
                    Ok(_) => continue,
                    // The blob store is down: the next pass tries again.
                    Err(_) => return Ok(owed),
                }
            };
            let tombstoned = j
                .store
                .delete_attachment(DeleteAttachment {
                    id: stored.attachment.id,
                    by: None,
                    reason,
                    at: now,
                })
                .await;
            match tombstoned {
                Ok(_) => {
                    owed = true;
                    self.removed(reason);
                }
                // Sent or deleted meanwhile: nothing to sweep.
                Err(StoreError::Conflict(_) | StoreError::NotFound) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(owed)
    }

    /// Uploads for posts never posted within `unattached_ttl`: tombstoned,
    /// their objects owed a deletion (objects under `posts/` arrive only
    /// through a URL issued with a row, and it expires long before).
    async fn post_uploads(&self, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let j = &self.janitor;
        let limit = u32::try_from(j.limits.sweep_batch_len).unwrap_or(u32::MAX);
        let before = now - delta(j.limits.unattached_ttl);
        let expired = j.feed.expire_post_uploads(before, now, limit).await?;
        j.metrics
            .attachment_orphans_removed_total
            .with_label_values(&[DeletionReason::Unattached.as_str()])
            .inc_by(expired);
        Ok(expired > 0)
    }

    /// Objects with no live row, older than the grace.
    async fn objects(
        &mut self,
        context: &TaskContext,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let j = &self.janitor;
        let listed = j
            .call(BlobCall::List {
                prefix: PREFIX.to_owned(),
                after: self.objects_after.clone(),
                limit: j.limits.sweep_batch_len,
            })
            .await;
        let Ok(BlobAnswer::Listed(listed)) = listed else {
            // The blob store is down: the next pass tries again.
            return Ok(());
        };
        self.objects_after = if listed.len() < j.limits.sweep_batch_len {
            None
        } else {
            listed.last().map(|o| o.key.clone())
        };
        let old_enough = now - delta(j.limits.orphan_grace);
        let keys: Vec<String> = listed
            .iter()
            .filter(|o| o.last_modified.is_some_and(|at| at < old_enough))
            .map(|o| o.key.clone())
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let rows: BTreeMap<String, StoredAttachment> = j
            .store
            .attachments_by_keys(&keys)
            .await?
            .into_iter()
            .map(|a| (a.attachment.s3_key.clone(), a))
            .collect();
        for key in keys {
            context.fault_point("object");
            let (attachment_id, reason) = match rows.get(&key) {
                None => (None, DeletionReason::Orphan),
                // Still here a grace after its row was deleted: the
                // deletion owed ran before it landed (or is failing, and
                // this removal fails alike). Sooner, it is the deleter's.
                Some(row)
                    if row.state == AttachmentState::Deleted
                        && row.deleted_at.is_some_and(|at| at < old_enough) =>
                {
                    (Some(row.attachment.id), DeletionReason::LateUpload)
                }
                Some(_) => continue,
            };
            if !matches!(
                j.call(BlobCall::Delete(key.clone())).await,
                Ok(BlobAnswer::Deleted)
            ) {
                return Ok(());
            }
            j.store
                .record_removal(AuditEntry {
                    attachment_id,
                    s3_key: key,
                    actor: None,
                    reason,
                    at: now,
                })
                .await?;
            self.removed(reason);
        }
        Ok(())
    }
}

fn delta(duration: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

impl Task for Sweeper {
    async fn run(&mut self, context: &TaskContext) {
        let every = self.janitor.limits.sweep_every;
        let mut pass = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            pass.tick().await;
            let Some(deleter) = self.deleter.upgrade() else {
                return;
            };
            let now = self.janitor.clock.now();
            match self.rows(context, now).await {
                Ok(true) => deleter.notify_one(),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "the sweeper cannot read pending attachments"),
            }
            match self.post_uploads(now).await {
                Ok(true) => deleter.notify_one(),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "the sweeper cannot expire post uploads"),
            }
            if let Err(error) = self.objects(context, now).await {
                tracing::warn!(%error, "the sweeper cannot read the objects' rows");
            }
        }
    }
}
