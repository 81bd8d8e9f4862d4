//! The blob store: where voice notes and attachments live, reached by
//! presigned URLs the clients upload to and download from directly.
//!
//! The server never carries an upload's bytes through its own API: it
//! signs a URL that binds the key, the content type and the exact size, the
//! client `PUT`s to it, and the server then checks the object (`head`)
//! before any message may refer to it. A URL's signature is the store's to
//! check, so an upload of another type or size is refused by the store.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A blob store call's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The store cannot be reached, or failed.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request as malformed (a bad key, say).
    #[error("blob store refused the request: {0}")]
    Refused(String),
}

/// Why a request to a presigned URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UploadRefusal {
    /// Not a URL of this store, or its signature does not match.
    #[error("signature does not match")]
    Signature,
    /// Past its expiry.
    #[error("the URL has expired")]
    Expired,
    /// Another content type or size than the URL binds.
    #[error("the request does not match what the URL was signed for")]
    Mismatch,
}

/// A request a client makes itself, signed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedRequest {
    /// `PUT` or `GET`.
    pub method: &'static str,
    /// The whole URL, signature included.
    pub url: String,
    /// Headers the request must carry exactly as they are.
    pub headers: BTreeMap<String, String>,
}

impl PresignedRequest {
    /// A `PUT` to `url` that must carry exactly this content type and
    /// length, as its signature binds them.
    #[must_use]
    pub fn upload(url: String, content_type: &str, size_bytes: u64) -> Self {
        Self {
            method: "PUT",
            url,
            headers: [
                ("content-type".to_owned(), content_type.to_owned()),
                ("content-length".to_owned(), size_bytes.to_string()),
            ]
            .into(),
        }
    }

    /// A `GET` of `url`.
    #[must_use]
    pub fn download(url: String) -> Self {
        Self {
            method: "GET",
            url,
            headers: BTreeMap::new(),
        }
    }
}

/// What the store knows of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHead {
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The content type it was uploaded with.
    pub content_type: Option<String>,
    /// When it was written.
    pub last_modified: Option<DateTime<Utc>>,
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobListing {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// When it was written.
    pub last_modified: Option<DateTime<Utc>>,
}

/// The objects of a store: presigned uploads and downloads, and what the
/// server itself does to them.
///
/// # Errors
///
/// Every call that reaches the store fails with [`BlobError::Unavailable`]
/// when the store does; none of them is on the path of a text message.
#[async_trait]
pub trait Blobs: Send + Sync + Debug + 'static {
    /// A `PUT` of exactly `size_bytes` of `content_type` to `key`, valid
    /// for `expires_in`.
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size_bytes: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError>;

    /// A `GET` of `key`, valid for `expires_in`.
    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError>;

    /// The object at `key`, or `None` when there is none.
    async fn head(&self, key: &str) -> Result<Option<BlobHead>, BlobError>;

    /// Removes the object at `key`; removing a missing one succeeds.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// Up to `limit` objects whose key starts with `prefix`, in key order,
    /// after `after` when given.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobListing>, BlobError>;

    /// A cheap round trip, for readiness and the breaker's probe.
    async fn ping(&self) -> Result<(), BlobError>;
}

/// The HTTP side of a blob store the node serves itself (the embedded
/// default): it checks the URLs it signed and takes or gives the bytes.
/// The transport streams; the store decides.
#[async_trait]
pub trait BlobServer: Send + Sync + Debug + 'static {
    /// Checks a `PUT` of `key` with this query string, declared content
    /// type and length against what the URL was signed for.
    ///
    /// # Errors
    ///
    /// The [`UploadRefusal`] a real store would answer 403 for.
    fn check_put(
        &self,
        key: &str,
        query: &str,
        content_type: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<(), UploadRefusal>;

    /// Begins writing `size_bytes` of `content_type` to `key`; the object
    /// appears whole, or not at all, when the upload finishes.
    ///
    /// # Errors
    ///
    /// [`BlobError`] when the store cannot write.
    async fn begin_put(
        &self,
        key: &str,
        content_type: &str,
        size_bytes: u64,
    ) -> Result<Box<dyn BlobUpload>, BlobError>;

    /// Checks a `GET` of `key` with this query string.
    ///
    /// # Errors
    ///
    /// The [`UploadRefusal`] a real store would answer 403 for.
    fn check_get(&self, key: &str, query: &str) -> Result<(), UploadRefusal>;

    /// The object at `key`, to stream out.
    ///
    /// # Errors
    ///
    /// [`BlobError`] when the store cannot read.
    async fn open(&self, key: &str) -> Result<Option<BlobRead>, BlobError>;
}

/// An upload being written.
#[async_trait]
pub trait BlobUpload: Send {
    /// Appends a chunk of the body.
    ///
    /// # Errors
    ///
    /// [`BlobError::Refused`] past the signed size, or a write failure.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError>;

    /// Makes the object appear, if exactly the signed size arrived.
    ///
    /// # Errors
    ///
    /// [`BlobError::Refused`] for a short body, or a write failure.
    async fn finish(self: Box<Self>) -> Result<(), BlobError>;
}

/// An object opened for download.
pub struct BlobRead {
    /// Its size and type.
    pub head: BlobHead,
    /// Its bytes.
    pub body: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
}

impl Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}
