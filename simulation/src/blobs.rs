//! A blob store wrapper that makes calls slow or fails them, as the run's
//! [`Faults`] decide: S3 timing out or refusing for a while.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_storage::{BlobError, BlobHead, BlobListing, Blobs, MemoryBlobs, PresignedRequest};

use crate::faults::{FaultKind, Faults};

/// The in-memory blob store, with faults.
#[derive(Debug)]
pub struct FaultyBlobs {
    inner: Arc<MemoryBlobs>,
    faults: Arc<Faults>,
}

impl FaultyBlobs {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: Arc<MemoryBlobs>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }

    async fn before(&self) -> Result<(), BlobError> {
        let plan = &self.faults.plan;
        if self.faults.roll(FaultKind::BlobSlow, plan.blob_slow) {
            let delay = self.faults.delay(plan.store_slow_max);
            #[allow(clippy::disallowed_methods)] // A slow store, in the run's time.
            tokio::time::sleep(delay).await;
        }
        if self.faults.roll(FaultKind::BlobFail, plan.blob_fail) {
            return Err(BlobError::Unavailable(
                "injected: blob store unavailable".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Blobs for FaultyBlobs {
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size_bytes: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        self.before().await?;
        self.inner
            .presign_put(key, content_type, size_bytes, expires_in)
            .await
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        self.before().await?;
        self.inner.presign_get(key, expires_in).await
    }

    async fn head(&self, key: &str) -> Result<Option<BlobHead>, BlobError> {
        self.before().await?;
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.before().await?;
        self.inner.delete(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobListing>, BlobError> {
        self.before().await?;
        self.inner.list(prefix, after, limit).await
    }

    async fn ping(&self) -> Result<(), BlobError> {
        self.before().await?;
        self.inner.ping().await
    }
}
