//! The blob worker: every call the node makes to its blob store (S3, or
//! the embedded folder), behind the store's breaker. Two run, sharing that
//! breaker: one for the request path (presigning, checking an upload), one
//! for cleanup (deleting, listing), so a long sweep never queues a client's
//! call behind it.

use std::sync::Arc;
use std::time::Duration;

use switchboard_storage::{BlobError, BlobHead, BlobListing, Blobs, Clock, PresignedRequest};
use switchboard_supervisors::Worker;

use crate::Metrics;

/// The request path's worker, in metrics, readiness and fault points.
pub(crate) const MEDIA: &str = "media";
/// Their breaker's dependency.
pub(crate) const BLOBS: &str = "blobs";
/// The cleanup worker.
pub(crate) const BLOB_CLEANUP: &str = "blob_cleanup";

/// One call to the blob store.
#[derive(Debug)]
pub(crate) enum BlobCall {
    PresignPut {
        key: String,
        content_type: String,
        size_bytes: u64,
        expires_in: Duration,
    },
    PresignGet {
        key: String,
        expires_in: Duration,
    },
    Head(String),
    Delete(String),
    List {
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
}

impl BlobCall {
    fn op(&self) -> &'static str {
        match self {
            Self::PresignPut { .. } => "presign_put",
            Self::PresignGet { .. } => "presign_get",
            Self::Head(_) => "head",
            Self::Delete(_) => "delete",
            Self::List { .. } => "list",
        }
    }
}

/// What the store answered.
#[derive(Debug)]
pub(crate) enum BlobAnswer {
    Presigned(PresignedRequest),
    Head(Option<BlobHead>),
    Deleted,
    Listed(Vec<BlobListing>),
    /// The store refused the request as malformed (a bad key).
    Refused(String),
}

/// Makes the calls, counting each in `s3_requests_total{op,outcome}` and
/// timing it in `s3_request_duration_seconds{op}`.
pub(crate) struct BlobWorker {
    pub(crate) blobs: Arc<dyn Blobs>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Metrics,
}

impl Worker for BlobWorker {
    type Request = BlobCall;
    type Reply = BlobAnswer;
    type Error = BlobError;

    async fn handle(&mut self, call: BlobCall) -> Result<BlobAnswer, BlobError> {
        let op = call.op();
        let started = self.clock.monotonic();
        let blobs = self.blobs.as_ref();
        let answer = match call {
            BlobCall::PresignPut {
                key,
                content_type,
                size_bytes,
                expires_in,
            } => blobs
                .presign_put(&key, &content_type, size_bytes, expires_in)
                .await
                .map(BlobAnswer::Presigned),
            BlobCall::PresignGet { key, expires_in } => blobs
                .presign_get(&key, expires_in)
                .await
                .map(BlobAnswer::Presigned),
            BlobCall::Head(key) => blobs.head(&key).await.map(BlobAnswer::Head),
            BlobCall::Delete(key) => blobs.delete(&key).await.map(|()| BlobAnswer::Deleted),
            BlobCall::List {
                prefix,
                after,
                limit,
            } => blobs
                .list(&prefix, after.as_deref(), limit)
                .await
                .map(BlobAnswer::Listed),
        };
        self.metrics
            .s3_request_duration_seconds
            .with_label_values(&[op])
            .observe(self.clock.monotonic().saturating_sub(started).as_secs_f64());
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(BlobError::Refused(_)) => "refused",
            Err(BlobError::Unavailable(_)) => "error",
        };
        self.metrics
            .s3_requests_total
            .with_label_values(&[op, outcome])
            .inc();
        match answer {
            // A refusal is the store's answer, not a failure of it.
            Err(BlobError::Refused(reason)) => Ok(BlobAnswer::Refused(reason)),
            other => other,
        }
    }

    async fn probe(&mut self) -> Result<(), BlobError> {
        self.blobs.ping().await
    }
}
