//! The deleter: takes the deletions the store owes the blob store, with a
//! lease so no two nodes work one at once, and removes each object through
//! the cleanup worker (so behind its breaker). A failure puts the deletion
//! off with a doubling delay; nothing is ever dropped, so once the store is
//! back every owed object goes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::TimeDelta;
use switchboard_storage::BlobDeletion;
use switchboard_supervisors::{CallError, Task, TaskContext};
use tokio::sync::Notify;

use crate::blob_worker::{BlobAnswer, BlobCall};
use crate::media::Janitor;

/// The deleter's task name.
pub(crate) const DELETER: &str = "blob_deleter";

pub(crate) struct Deleter {
    janitor: Janitor,
    /// Woken when a deletion is owed here; it also looks every
    /// `delete_poll_every`, for those owed by other nodes and for retries.
    /// Weak: the node holds it, so the deleter ends with the node.
    wake: Weak<Notify>,
}

impl Deleter {
    pub(crate) fn new(janitor: Janitor, wake: &Arc<Notify>) -> Self {
        Self {
            janitor,
            wake: Arc::downgrade(wake),
        }
    }

    /// How long after its `attempts`th failure a deletion is tried again.
    fn retry_after(&self, attempts: u32) -> Duration {
        let limits = &self.janitor.limits;
        let doublings = attempts.saturating_sub(1).min(16);
        limits
            .delete_retry_min
            .saturating_mul(1 << doublings)
            .min(limits.delete_retry_max)
    }

    /// Takes and works due deletions until none is left or the blob store
    /// fails.
    async fn round(&self, context: &TaskContext) {
        let j = &self.janitor;
        loop {
            let now = j.clock.now();
            let lease = TimeDelta::from_std(j.limits.delete_lease).unwrap_or(TimeDelta::MAX);
            let batch = match j
                .store
                .claim_deletions(now, now + lease, j.limits.delete_batch_len)
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "cannot take owed deletions");
                    return;
                }
            };
            if batch.is_empty() {
                if let Ok(owed) = j.store.deletions_owed().await {
                    j.metrics
                        .blob_deletions_owed
                        .set(i64::try_from(owed).unwrap_or(i64::MAX));
                }
                return;
            }
            let mut failed = false;
            for deletion in batch {
                context.fault_point("delete");
                // Once the store fails, the rest of the batch waits too
                // rather than each trying on its own.
                if failed || !self.delete(&deletion).await {
                    failed = true;
                    self.defer(&deletion).await;
                }
            }
            if failed {
                return;
            }
        }
    }

    async fn delete(&self, deletion: &BlobDeletion) -> bool {
        let j = &self.janitor;
        match j.call(BlobCall::Delete(deletion.s3_key.clone())).await {
            Ok(BlobAnswer::Deleted) => {
                if let Err(error) = j.store.finish_deletion(deletion.id).await {
                    // Removed but not marked: done again later, harmlessly.
                    tracing::warn!(%error, "cannot mark a deletion done");
                }
                j.metrics
                    .attachment_deletes_total
                    .with_label_values(&["deleted"])
                    .inc();
                true
            }
            Ok(other) => {
                tracing::error!(key = %deletion.s3_key, ?other, "the blob store refused a deletion");
                false
            }
            Err(CallError::Failed(error)) => {
                tracing::debug!(%error, key = %deletion.s3_key, "deletion failed");
                false
            }
            Err(error) => {
                tracing::debug!(%error, "the blob store is not taking deletions");
                false
            }
        }
    }

    async fn defer(&self, deletion: &BlobDeletion) {
        let j = &self.janitor;
        let retry =
            TimeDelta::from_std(self.retry_after(deletion.attempts)).unwrap_or(TimeDelta::MAX);
        if let Err(error) = j
            .store
            .defer_deletion(deletion.id, j.clock.now() + retry)
            .await
        {
            // Its lease runs out and it is taken again.
            tracing::warn!(%error, "cannot put a deletion off");
        }
        j.metrics
            .attachment_deletes_total
            .with_label_values(&["deferred"])
            .inc();
    }
}

impl Task for Deleter {
    async fn run(&mut self, context: &TaskContext) {
        let poll = self.janitor.limits.delete_poll_every;
        loop {
            self.round(context).await;
            let Some(wake) = self.wake.upgrade() else {
                return;
            };
            // Woken by a new deletion, or after the poll interval for
            // retries and other nodes' deletions.
            let _ = tokio::time::timeout(poll, wake.notified()).await;
        }
    }
}
