//! S3, or any S3-compatible store: SigV4 presigned `PUT`s (binding the
//! content type and the exact length) and `GET`s, and `HEAD`, `DELETE`,
//! `ListObjectsV2` and `HeadBucket` from the server, through
//! `aws-sdk-s3` with the standard AWS credential chain (environment,
//! profile, web identity, instance or container role).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, timeout::TimeoutConfig};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use chrono::{DateTime, Utc};
use switchboard_storage::{BlobError, BlobHead, BlobListing, Blobs, PresignedRequest};

/// Where the bucket is.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// `S3_BUCKET`.
    pub bucket: String,
    /// `AWS_REGION`.
    pub region: String,
    /// `S3_ENDPOINT`, for an S3-compatible store; addressed path-style.
    pub endpoint: Option<String>,
    /// How long one call to S3 may take, retries included.
    pub timeout: Duration,
    /// An access key and secret to use instead of the standard chain (for
    /// an S3-compatible store with static keys, and tests); `None` reads
    /// the environment, profiles, web identity and instance roles.
    pub static_credentials: Option<(String, String)>,
}

impl S3Options {
    /// Defaults for `bucket` in `region`.
    #[must_use]
    pub fn new(bucket: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: region.into(),
            endpoint: None,
            timeout: Duration::from_secs(5),
            static_credentials: None,
        }
    }
}

/// An S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
}

impl S3Blobs {
    /// A client for the bucket. Nothing is sent yet, so a node starts
    /// while S3 is unreachable.
    pub async fn connect(options: &S3Options) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(options.region.clone()));
        if let Some((key, secret)) = &options.static_credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                key.clone(),
                secret.clone(),
                None,
                None,
                "switchboard",
            ));
        }
        let shared = loader.load().await;
        let timeouts = TimeoutConfig::builder()
            .operation_timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(2)))
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(&shared).timeout_config(timeouts);
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        Self {
            client: Client::from_conf(config.build()),
            bucket: options.bucket.clone(),
        }
    }
}

fn unavailable<E: std::error::Error + 'static>(what: &str, error: &E) -> BlobError {
    // The SDK's display is terse; its source says why.
    let detail = std::error::Error::source(error).map_or_else(String::new, |s| format!(": {s}"));
    BlobError::Unavailable(format!("{what}: {error}{detail}"))
}

fn presigning(expires_in: Duration) -> Result<PresigningConfig, BlobError> {
    PresigningConfig::expires_in(expires_in)
        .map_err(|e| BlobError::Refused(format!("cannot presign for {expires_in:?}: {e}")))
}

fn timestamp(value: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    let value = value?;
    DateTime::from_timestamp(value.secs(), value.subsec_nanos())
}

/// The SDK's request with the headers it signed beside ours.
fn with_signed_headers(
    mut request: PresignedRequest,
    presigned: &aws_sdk_s3::presigning::PresignedRequest,
) -> PresignedRequest {
    for (name, value) in presigned.headers() {
        request
            .headers
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| value.to_owned());
    }
    request
}

#[async_trait]
impl Blobs for S3Blobs {
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size_bytes: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        let length = i64::try_from(size_bytes)
            .map_err(|_| BlobError::Refused("an object past i64 bytes".into()))?;
        let presigned = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length)
            .presigned(presigning(expires_in)?)
            .await
            .map_err(|e| unavailable("cannot presign an upload", &e))?;
        // Signed in, so the uploader must send exactly these.
        let put = PresignedRequest::upload(presigned.uri().to_owned(), content_type, size_bytes);
        Ok(with_signed_headers(put, &presigned))
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest, BlobError> {
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning(expires_in)?)
            .await
            .map_err(|e| unavailable("cannot presign a download", &e))?;
        let get = PresignedRequest::download(presigned.uri().to_owned());
        Ok(with_signed_headers(get, &presigned))
    }

    async fn head(&self, key: &str) -> Result<Option<BlobHead>, BlobError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(BlobHead {
                size_bytes: head
                    .content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
                content_type: head.content_type().map(str::to_owned),
                last_modified: timestamp(head.last_modified()),
            })),
            Err(SdkError::ServiceError(error)) if error.err().is_not_found() => Ok(None),
            Err(error) => Err(unavailable("cannot read an object's head", &error)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(drop)
            .map_err(|e| unavailable("cannot delete an object", &e))
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobListing>, BlobError> {
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(after.map(str::to_owned))
            .max_keys(i32::try_from(limit.min(1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| unavailable("cannot list objects", &e))?;
        Ok(listed
            .contents()
            .iter()
            .filter_map(|object| {
                Some(BlobListing {
                    key: object.key()?.to_owned(),
                    size_bytes: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                    last_modified: timestamp(object.last_modified()),
                })
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), BlobError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(drop)
            .map_err(|e| unavailable("the bucket does not answer", &e))
    }
}
