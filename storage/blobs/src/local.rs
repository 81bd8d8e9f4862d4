//! The embedded blob store: a folder under the data directory, and URLs
//! the node serves itself (`/api/v1/blobs/{key}`), signed with HMAC-SHA256
//! over the method, the key, the expiry and, for an upload, the content
//! type and exact size. So the embedded node takes voice notes with no S3
//! at all, and refuses a tampered, expired, wrong-type or wrong-size
//! upload as S3 does.
//!
//! Layout: `objects/{key}` holds an object's bytes and `types/{key}` its
//! content type; an upload is written under `incoming/` and renamed into
//! place whole, type first, so a reader never sees half an object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchboard_storage::{
    BlobError, BlobHead, BlobListing, BlobRead, BlobServer, BlobUpload, Blobs, Clock,
    PresignedRequest, UploadRefusal,
};
use tokio::io::AsyncWriteExt;

type HmacSha256 = Hmac<Sha256>;

/// Where the node serves its blob URLs, below its public base URL.
pub const BLOB_PATH: &str = "/api/v1/blobs/";

/// The folder store.
#[derive(Debug)]
pub struct LocalBlobs {
    root: PathBuf,
    /// `https://chat.example.com`: what the node's URLs start with, as
    /// clients reach it.
    public_url: String,
    /// The HMAC key, derived from the node's secret.
    key: Vec<u8>,
    clock: Arc<dyn Clock>,
    /// Names uploads in progress.
    uploads: AtomicU64,
}

impl LocalBlobs {
    /// A store in `root` (created if missing), whose URLs start with
    /// `public_url` and are signed with a key derived from `secret`.
    ///
    /// # Errors
    ///
    /// [`BlobError::Unavailable`] when the folders cannot be created.
    pub fn open(
        root: PathBuf,
        public_url: &str,
        secret: &[u8],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BlobError> {
        for folder in ["objects", "types", "incoming"] {
            std::fs::create_dir_all(root.join(folder)).map_err(|e| {
                BlobError::Unavailable(format!("cannot create {}: {e}", root.display()))
            })?;
        }
        // A separate key for URLs, so a URL signature never doubles as a
        // token signature.
        let mut derive =
            HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
        derive.update(b"switchboard blob urls v1");
        Ok(Self {
            root,
            public_url: public_url.trim_end_matches('/').to_owned(),
            key: derive.finalize().into_bytes().to_vec(),
            clock,
            uploads: AtomicU64::new(0),
        })
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    fn sign(&self, parts: &[&str]) -> String {
        hex(&self.mac(parts).finalize().into_bytes())
    }

    fn verify(&self, parts: &[&str], signature: &str) -> Result<(), UploadRefusal> {
        let signature = unhex(signature).ok_or(UploadRefusal::Signature)?;
        self.mac(parts)
            .verify_slice(&signature)
            .map_err(|_| UploadRefusal::Signature)
    }

    fn expires(&self, expires_in: Duration) -> String {
        let expires_in = TimeDelta::from_std(expires_in).unwrap_or(TimeDelta::MAX);
        (self.clock.now() + expires_in).timestamp().to_string()
    }

    fn check_expiry(&self, expires: &str) -> Result<(), UploadRefusal> {
        let expires: i64 = expires.parse().map_err(|_| UploadRefusal::Signature)?;
        if self.clock.now().timestamp() > expires {
            return Err(UploadRefusal::Expired);
        }
        Ok(())
    }

    fn object(&self, key: &str) -> Result<PathBuf, BlobError> {
        Ok(self.root.join("objects").join(checked(key)?))
    }

    fn type_file(&self, key: &str) -> Result<PathBuf, BlobError> {
        Ok(self.root.join("types").join(checked(key)?))
    }

    fn url(&self, key: &str, query: &str) -> String {
        format!("{}{BLOB_PATH}{key}?{query}", self.public_url)
    }
}

/// A key as a relative path: segments of `A-Z a-z 0-9 . _ -`, none of them
/// `.` or `..`, so no key reaches outside the store.
fn checked(key: &str) -> Result<&Path, BlobError> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(Path::new(key))
    } else {
        Err(BlobError::Refused(format!("invalid key {key:?}")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query string's fields, decoded.
fn fields(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((decode(name)?, decode(value)?))
        })
        .collect()
}

fn field<'a>(fields: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, UploadRefusal> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or(UploadRefusal::Signature)
}

fn unavailable(what: &str, error: &std::io::Error) -> BlobError {
    BlobError::Unavailable(format!("{what}: {error}"))
}

fn modified(metadata: &std::fs::Metadata) -> Option<DateTime<Utc>> {
    metadata.modified().ok().map(DateTime::<Utc>::from)
}

#[async_trait]
impl Blobs for LocalBlobs {
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size_bytes: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        checked(key)?;
        let (size, expires) = (size_bytes.to_string(), self.expires(expires_in));
        let signature = self.sign(&["PUT", key, content_type, &size, &expires]);
        let query = format!(
            "expires={expires}&type={}&size={size}&signature={signature}",
            encode(content_type)
        );
        Ok(PresignedRequest::upload(
            self.url(key, &query),
            content_type,
            size_bytes,
        ))
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        checked(key)?;
        let expires = self.expires(expires_in);
        let signature = self.sign(&["GET", key, &expires]);
        Ok(PresignedRequest::download(self.url(
            key,
            &format!("expires={expires}&signature={signature}"),
        )))
    }

    async fn head(&self, key: &str) -> Result<Option<BlobHead>, BlobError> {
        let metadata = match tokio::fs::metadata(self.object(key)?).await {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(unavailable("cannot read an object", &error)),
        };
        let content_type = tokio::fs::read_to_string(self.type_file(key)?).await.ok();
        Ok(Some(BlobHead {
            size_bytes: metadata.len(),
            content_type,
            last_modified: modified(&metadata),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        for path in [self.object(key)?, self.type_file(key)?] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(unavailable("cannot delete an object", &error)),
            }
        }
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobListing>, BlobError> {
        let root = self.root.join("objects");
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            walk(&root, "", &prefix, after.as_deref(), limit, &mut found)
                .map_err(|e| unavailable("cannot list objects", &e))?;
            Ok(found)
        })
        .await
        .map_err(|e| BlobError::Unavailable(format!("listing stopped: {e}")))?
    }

    async fn ping(&self) -> Result<(), BlobError> {
        tokio::fs::metadata(self.root.join("objects"))
            .await
            .map(drop)
            .map_err(|e| unavailable("the blob folder is gone", &e))
    }
}

/// Keys under `dir` (itself the key prefix `base`) in key order, those
/// starting with `prefix` and past `after`, until `found` holds `limit`.
/// Entries sort as their keys do: a folder as its name and a `/`.
fn walk(
    dir: &Path,
    base: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    found: &mut Vec<BlobListing>,
) -> std::io::Result<()> {
    let mut entries: Vec<(String, std::fs::DirEntry)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let folder = entry.file_type().ok()?.is_dir();
            Some((
                format!("{base}{name}{}", if folder { "/" } else { "" }),
                entry,
            ))
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, entry) in entries {
        if found.len() >= limit {
            return Ok(());
        }
        // Nothing under it can start with `prefix`, or come after `after`.
        let reaches_prefix = key.starts_with(prefix) || prefix.starts_with(&key);
        let reaches_after = after.is_none_or(|a| key.as_str() > a || a.starts_with(&key));
        if !reaches_prefix || !reaches_after {
            continue;
        }
        if key.ends_with('/') {
            walk(&entry.path(), &key, prefix, after, limit, found)?;
        } else if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
            let metadata = entry.metadata()?;
            found.push(BlobListing {
                key,
                size_bytes: metadata.len(),
                last_modified: modified(&metadata),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl BlobServer for LocalBlobs {
    fn check_put(
        &self,
        key: &str,
        query: &str,
        content_type: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<(), UploadRefusal> {
        let fields = fields(query);
        let (expires, signed_type, size) = (
            field(&fields, "expires")?,
            field(&fields, "type")?,
            field(&fields, "size")?,
        );
        self.verify(
            &["PUT", key, signed_type, size, expires],
            field(&fields, "signature")?,
        )?;
        self.check_expiry(expires)?;
        let size: u64 = size.parse().map_err(|_| UploadRefusal::Signature)?;
        if content_type != Some(signed_type) || content_length != Some(size) {
            return Err(UploadRefusal::Mismatch);
        }
        Ok(())
    }

    async fn begin_put(
        &self,
        key: &str,
        content_type: &str,
        size_bytes: u64,
    ) -> Result<Box<dyn BlobUpload>, BlobError> {
        let (object, type_file) = (self.object(key)?, self.type_file(key)?);
        let number = self.uploads.fetch_add(1, Ordering::Relaxed);
        let incoming = self
            .root
            .join("incoming")
            .join(format!("{}-{number}", std::process::id()));
        let file = tokio::fs::File::create(&incoming)
            .await
            .map_err(|e| unavailable("cannot start an upload", &e))?;
        Ok(Box::new(LocalUpload {
            file,
            incoming,
            object,
            type_file,
            content_type: content_type.to_owned(),
            size_bytes,
            written: 0,
        }))
    }

    fn check_get(&self, key: &str, query: &str) -> Result<(), UploadRefusal> {
        let fields = fields(query);
        let expires = field(&fields, "expires")?;
        self.verify(&["GET", key, expires], field(&fields, "signature")?)?;
        self.check_expiry(expires)
    }

    async fn open(&self, key: &str) -> Result<Option<BlobRead>, BlobError> {
        let Some(head) = self.head(key).await? else {
            return Ok(None);
        };
        match tokio::fs::File::open(self.object(key)?).await {
            Ok(file) => Ok(Some(BlobRead {
                head,
                body: Box::new(file),
            })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(unavailable("cannot open an object", &error)),
        }
    }
}

/// An upload in progress under `incoming/`.
struct LocalUpload {
    file: tokio::fs::File,
    incoming: PathBuf,
    object: PathBuf,
    type_file: PathBuf,
    content_type: String,
    size_bytes: u64,
    written: u64,
}

impl LocalUpload {
    async fn discard(&self) {
        let _ = tokio::fs::remove_file(&self.incoming).await;
    }
}

#[async_trait]
impl BlobUpload for LocalUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.written += chunk.len() as u64;
        if self.written > self.size_bytes {
            self.discard().await;
            return Err(BlobError::Refused("the body is longer than signed".into()));
        }
        if let Err(error) = self.file.write_all(chunk).await {
            self.discard().await;
            return Err(unavailable("cannot write an upload", &error));
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), BlobError> {
        if self.written != self.size_bytes {
            self.discard().await;
            return Err(BlobError::Refused("the body is shorter than signed".into()));
        }
        let done = async {
            self.file.sync_all().await?;
            for path in [&self.object, &self.type_file] {
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
            }
            let typed = self.incoming.with_extension("type");
            tokio::fs::write(&typed, self.content_type.as_bytes()).await?;
            tokio::fs::rename(&typed, &self.type_file).await?;
            tokio::fs::rename(&self.incoming, &self.object).await
        };
        match done.await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.discard().await;
                Err(unavailable("cannot store an upload", &error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_storage::TokioClock;

    fn clock() -> Arc<TokioClock> {
        Arc::new(TokioClock::new(
            DateTime::UNIX_EPOCH + TimeDelta::days(20_000),
        ))
    }

    fn store(dir: &tempfile::TempDir) -> LocalBlobs {
        LocalBlobs::open(
            dir.path().to_path_buf(),
            "http://node.test",
            b"secret",
            clock(),
        )
        .unwrap()
    }

    fn query(url: &str) -> &str {
        url.split_once('?').unwrap().1
    }

    #[tokio::test(start_paused = true)]
    async fn a_put_must_match_its_signature_expiry_type_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = store(&dir);
        let key = "conversations/a/b";
        let put = blobs
            .presign_put(key, "audio/mp4", 5, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            put.url
                .starts_with("http://node.test/api/v1/blobs/conversations/a/b?")
        );
        let q = query(&put.url);
        assert_eq!(blobs.check_put(key, q, Some("audio/mp4"), Some(5)), Ok(()));
        assert_eq!(
            blobs.check_put(key, q, Some("audio/ogg"), Some(5)),
            Err(UploadRefusal::Mismatch)
        );
        assert_eq!(
            blobs.check_put(key, q, Some("audio/mp4"), Some(6)),
            Err(UploadRefusal::Mismatch)
        );
        assert_eq!(
            blobs.check_put("conversations/a/c", q, Some("audio/mp4"), Some(5)),
            Err(UploadRefusal::Signature)
        );
        let tampered = q.replace("size=5", "size=6");
        assert_eq!(
            blobs.check_put(key, &tampered, Some("audio/mp4"), Some(6)),
            Err(UploadRefusal::Signature)
        );
        let other = LocalBlobs::open(
            dir.path().join("other"),
            "http://node.test",
            b"another secret",
            clock(),
        )
        .unwrap();
        assert_eq!(
            other.check_put(key, q, Some("audio/mp4"), Some(5)),
            Err(UploadRefusal::Signature)
        );
        let expired = blobs
            .presign_put(key, "audio/mp4", 5, Duration::ZERO)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(
            blobs.check_put(key, query(&expired.url), Some("audio/mp4"), Some(5)),
            Err(UploadRefusal::Expired)
        );
    }

    #[tokio::test]
    async fn an_object_appears_whole_and_lists_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = store(&dir);
        let mut short = blobs
            .begin_put("conversations/a/1", "audio/mp4", 4)
            .await
            .unwrap();
        short.write(b"abc").await.unwrap();
        assert!(short.finish().await.is_err(), "three of four bytes");
        assert!(blobs.head("conversations/a/1").await.unwrap().is_none());
        let mut long = blobs
            .begin_put("conversations/a/1", "audio/mp4", 2)
            .await
            .unwrap();
        assert!(long.write(b"abc").await.is_err(), "past the signed size");

        for key in [
            "conversations/b/2",
            "conversations/a/1",
            "conversations/a/3",
            "other/x",
        ] {
            let mut upload = blobs.begin_put(key, "audio/mp4", 3).await.unwrap();
            upload.write(b"abc").await.unwrap();
            upload.finish().await.unwrap();
        }
        let head = blobs.head("conversations/a/1").await.unwrap().unwrap();
        assert_eq!(
            (head.size_bytes, head.content_type.as_deref()),
            (3, Some("audio/mp4"))
        );
        let keys = |listed: Vec<BlobListing>| listed.into_iter().map(|l| l.key).collect::<Vec<_>>();
        assert_eq!(
            keys(blobs.list("conversations/", None, 10).await.unwrap()),
            [
                "conversations/a/1",
                "conversations/a/3",
                "conversations/b/2"
            ]
        );
        assert_eq!(
            keys(
                blobs
                    .list("conversations/", Some("conversations/a/1"), 1)
                    .await
                    .unwrap()
            ),
            ["conversations/a/3"]
        );
        blobs.delete("conversations/a/1").await.unwrap();
        blobs.delete("conversations/a/1").await.unwrap();
        assert!(blobs.head("conversations/a/1").await.unwrap().is_none());
        assert!(blobs.head("../../etc/passwd").await.is_err());
    }
}
