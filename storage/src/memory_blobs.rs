//! An in-memory [`Blobs`] store, for the simulation and for tests: objects
//! in a map, and presigned URLs that [`MemoryBlobs::upload`] checks as a
//! real store checks its signatures (expiry, key, type, size), so a client
//! of it can be refused the same ways.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use crate::Clock;
use crate::blobs::{BlobError, BlobHead, BlobListing, Blobs, PresignedRequest, UploadRefusal};

/// Objects in memory.
#[derive(Debug)]
pub struct MemoryBlobs {
    clock: Arc<dyn Clock>,
    /// What signatures are keyed with, so URLs of one store do not work on
    /// another.
    secret: u64,
    objects: Mutex<BTreeMap<String, Stored>>,
}

#[derive(Debug, Clone)]
struct Stored {
    content_type: String,
    size_bytes: u64,
    written_at: DateTime<Utc>,
}

const SCHEME: &str = "memory://";

impl MemoryBlobs {
    /// An empty store whose URLs expire on `clock`.
    #[must_use]
    pub fn new(clock: Arc<dyn Clock>, secret: u64) -> Self {
        Self {
            clock,
            secret,
            objects: Mutex::new(BTreeMap::new()),
        }
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Stored>> {
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn signature(&self, parts: &[&str]) -> String {
        let mut hasher = DefaultHasher::new();
        self.secret.hash(&mut hasher);
        parts.hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// `PUT`s an object of `content_type` and `size_bytes` to `url`, as a
    /// client would.
    ///
    /// # Errors
    ///
    /// An [`UploadRefusal`] for a URL that is not this store's or whose
    /// signature, expiry, type or size does not match.
    pub fn upload(
        &self,
        url: &str,
        content_type: &str,
        size_bytes: u64,
    ) -> Result<(), UploadRefusal> {
        let rest = url.strip_prefix(SCHEME).ok_or(UploadRefusal::Signature)?;
        let (key, query) = rest.split_once('?').ok_or(UploadRefusal::Signature)?;
        let field = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .ok_or(UploadRefusal::Signature)
        };
        let (signed_type, signed_size, expires, signature) = (
            field("type")?,
            field("size")?,
            field("expires")?,
            field("signature")?,
        );
        if self.signature(&["PUT", key, signed_type, signed_size, expires]) != signature {
            return Err(UploadRefusal::Signature);
        }
        let expires: i64 = expires.parse().map_err(|_| UploadRefusal::Signature)?;
        let now = self.clock.now();
        if now.timestamp_millis() > expires {
            return Err(UploadRefusal::Expired);
        }
        if signed_type != content_type || signed_size != size_bytes.to_string() {
            return Err(UploadRefusal::Mismatch);
        }
        self.objects().insert(
            key.to_owned(),
            Stored {
                content_type: content_type.to_owned(),
                size_bytes,
                written_at: now,
            },
        );
        Ok(())
    }

    /// Every key held, for checkers.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        self.objects().keys().cloned().collect()
    }

    fn expiry(&self, expires_in: Duration) -> String {
        let expires_in = TimeDelta::from_std(expires_in).unwrap_or(TimeDelta::MAX);
        (self.clock.now() + expires_in)
            .timestamp_millis()
            .to_string()
    }
}

#[async_trait]
impl Blobs for MemoryBlobs {
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size_bytes: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        let (size, expires) = (size_bytes.to_string(), self.expiry(expires_in));
        let signature = self.signature(&["PUT", key, content_type, &size, &expires]);
        Ok(PresignedRequest::upload(
            format!(
                "{SCHEME}{key}?type={content_type}&size={size}&expires={expires}&signature={signature}"
            ),
            content_type,
            size_bytes,
        ))
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        let expires = self.expiry(expires_in);
        let signature = self.signature(&["GET", key, &expires]);
        Ok(PresignedRequest::download(format!(
            "{SCHEME}{key}?expires={expires}&signature={signature}"
        )))
    }

    async fn head(&self, key: &str) -> Result<Option<BlobHead>, BlobError> {
        Ok(self.objects().get(key).map(|stored| BlobHead {
            size_bytes: stored.size_bytes,
            content_type: Some(stored.content_type.clone()),
            last_modified: Some(stored.written_at),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.objects().remove(key);
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobListing>, BlobError> {
        Ok(self
            .objects()
            .iter()
            .filter(|(key, _)| key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a))
            .take(limit)
            .map(|(key, stored)| BlobListing {
                key: key.clone(),
                size_bytes: stored.size_bytes,
                last_modified: Some(stored.written_at),
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), BlobError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemClock;

    #[tokio::test]
    async fn an_upload_must_match_what_its_url_binds() {
        let blobs = MemoryBlobs::new(Arc::new(SystemClock::new()), 7);
        let put = blobs
            .presign_put(
                "conversations/a/b",
                "audio/mp4",
                10,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(
            blobs.upload(&put.url, "audio/ogg", 10),
            Err(UploadRefusal::Mismatch)
        );
        assert_eq!(
            blobs.upload(&put.url, "audio/mp4", 11),
            Err(UploadRefusal::Mismatch)
        );
        let tampered = put.url.replace("size=10", "size=11");
        assert_eq!(
            blobs.upload(&tampered, "audio/mp4", 11),
            Err(UploadRefusal::Signature)
        );
        let other = MemoryBlobs::new(Arc::new(SystemClock::new()), 8);
        assert_eq!(
            other.upload(&put.url, "audio/mp4", 10),
            Err(UploadRefusal::Signature)
        );
        assert!(blobs.head("conversations/a/b").await.unwrap().is_none());
        blobs.upload(&put.url, "audio/mp4", 10).unwrap();
        assert_eq!(
            blobs
                .head("conversations/a/b")
                .await
                .unwrap()
                .unwrap()
                .size_bytes,
            10
        );

        let expired = blobs
            .presign_put("conversations/a/c", "audio/mp4", 10, Duration::ZERO)
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            blobs.upload(&expired.url, "audio/mp4", 10),
            Err(UploadRefusal::Expired)
        );
    }
}
