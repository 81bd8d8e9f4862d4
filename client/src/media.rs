//! Voice messages and attachments: each step of the flow a mobile client
//! follows (presign, upload straight to the blob store, send), and the
//! whole flow retried by a [`RetryPolicy`] with one idempotency key, so a
//! flaky network costs attempts, never a second message.

use reqwest::Method;
use switchboard_protocol::{PresignedUpload, SendAttachment, SendAudio, UploadRequest};
use uuid::Uuid;

use crate::retry::retried;
use crate::{Client, ClientError, RetryPolicy, Sent, entropy};

/// A file to send.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Its bytes.
    pub bytes: bytes::Bytes,
    /// Its MIME type.
    pub content_type: String,
    /// Its name, for attachments.
    pub file_name: Option<String>,
}

impl Client {
    /// An upload URL for a voice message.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `unsupported_media_type` for a non-audio type,
    /// `payload_too_large` past the server's cap.
    pub async fn presign_audio(
        &self,
        conversation: Uuid,
        body: &UploadRequest,
    ) -> Result<PresignedUpload, ClientError> {
        let path = format!("/conversations/{conversation}/messages/audio/presigned-url");
        self.call(self.request(Method::POST, &path).json(body))
            .await
    }

    /// An attachment and its upload URL.
    ///
    /// # Errors
    ///
    /// As [`Client::presign_audio`].
    pub async fn create_attachment(
        &self,
        conversation: Uuid,
        body: &UploadRequest,
    ) -> Result<PresignedUpload, ClientError> {
        let path = format!("/conversations/{conversation}/attachments");
        self.call(self.request(Method::POST, &path).json(body))
            .await
    }

    /// `PUT`s `bytes` to an upload URL with the headers it was signed with.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; a refused signature, an expired URL or bytes of
    /// another size or type answer 403.
    pub async fn upload(
        &self,
        to: &PresignedUpload,
        bytes: bytes::Bytes,
    ) -> Result<(), ClientError> {
        let mut request = self.http.put(&to.presigned_url);
        for (name, value) in &to.headers {
            request = request.header(name, value);
        }
        let response = request
            .body(bytes)
            .send()
            .await
            .map_err(ClientError::transport)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ClientError::from_response(response).await)
        }
    }

    /// Sends a voice message whose upload is done.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `conflict` when the object is not uploaded yet,
    /// `unprocessable` when it is not what was presigned.
    pub async fn send_audio(
        &self,
        conversation: Uuid,
        body: &SendAudio,
    ) -> Result<Sent, ClientError> {
        let path = format!("/conversations/{conversation}/messages/audio");
        self.call_sent(self.request(Method::POST, &path).json(body))
            .await
    }

    /// Sends a message carrying an uploaded attachment.
    ///
    /// # Errors
    ///
    /// As [`Client::send_audio`].
    pub async fn send_attachment(
        &self,
        conversation: Uuid,
        body: &SendAttachment,
    ) -> Result<Sent, ClientError> {
        let path = format!("/conversations/{conversation}/messages/attachment");
        self.call_sent(self.request(Method::POST, &path).json(body))
            .await
    }

    /// An attachment's bytes, through its short-lived download URL.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `not_found` for one the caller may not see.
    pub async fn download(&self, attachment: Uuid) -> Result<bytes::Bytes, ClientError> {
        #[derive(serde::Deserialize)]
        struct Url {
            url: String,
        }
        let path = format!("/attachments/{attachment}?redirect=false");
        let Url { url } = self.call(self.request(Method::GET, &path)).await?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(ClientError::transport)?;
        if !response.status().is_success() {
            return Err(ClientError::from_response(response).await);
        }
        response.bytes().await.map_err(ClientError::transport)
    }

    /// Deletes an attachment not yet sent.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `conflict` once it was sent.
    pub async fn delete_attachment(&self, attachment: Uuid) -> Result<(), ClientError> {
        self.call_empty(self.request(Method::DELETE, &format!("/attachments/{attachment}")))
            .await
    }

    /// Presigns, uploads and sends `upload` as a voice message (with
    /// `duration_ms`) or an attachment message, each step retried as
    /// `policy` allows. One idempotency key covers every attempt to send,
    /// so the message is stored once however often the answer is lost.
    ///
    /// # Errors
    ///
    /// The last [`ClientError`] once a step fails permanently or its
    /// attempts run out.
    pub async fn send_file(
        &self,
        conversation: Uuid,
        upload: &Upload,
        duration_ms: Option<u64>,
        policy: RetryPolicy,
    ) -> Result<Sent, ClientError> {
        let request = UploadRequest {
            content_type: upload.content_type.clone(),
            size_bytes: upload.bytes.len() as u64,
            file_name: upload.file_name.clone(),
        };
        let presigned = retried(policy, || async {
            match duration_ms {
                Some(_) => self.presign_audio(conversation, &request).await,
                None => self.create_attachment(conversation, &request).await,
            }
        })
        .await?;
        retried(policy, || self.upload(&presigned, upload.bytes.clone())).await?;
        let key = entropy::new_key().to_string();
        retried(policy, || async {
            match duration_ms {
                Some(duration_ms) => {
                    let body = SendAudio {
                        s3_key: presigned.s3_key.clone(),
                        content_type: upload.content_type.clone(),
                        size_bytes: upload.bytes.len() as u64,
                        duration_ms,
                        encrypted_content: None,
                        nonce: None,
                        idempotency_key: Some(key.clone()),
                    };
                    self.send_audio(conversation, &body).await
                }
                None => {
                    let body = SendAttachment {
                        attachment_id: presigned.attachment_id,
                        duration_ms: None,
                        encrypted_content: None,
                        nonce: None,
                        idempotency_key: Some(key.clone()),
                    };
                    self.send_attachment(conversation, &body).await
                }
            }
        })
        .await
    }
}
