//! Voice messages and attachments through the API, over real sockets, on
//! the embedded blob store the node serves itself: the whole flow, every
//! refusal, deletion that leaves no orphan, and the sweeper.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_actors::{Limits, MediaLimits};
use switchboard_client::Upload;
use switchboard_protocol::{
    Event, PresignedUpload, SendAttachment, SendAudio, ServerFrame, UploadRequest,
};
use uuid::Uuid;

use crate::support::{TestServer, User, connect, eventually, group, next, text};

const VOICE: &[u8] = b"a few seconds of someone speaking, as AAC in an MP4 box";

fn audio(size: usize) -> UploadRequest {
    UploadRequest {
        content_type: "audio/mp4".into(),
        size_bytes: size as u64,
        file_name: None,
    }
}

fn send_audio(upload: &PresignedUpload, size: usize) -> SendAudio {
    SendAudio {
        s3_key: upload.s3_key.clone(),
        content_type: "audio/mp4".into(),
        size_bytes: size as u64,
        duration_ms: 2_500,
        encrypted_content: None,
        nonce: None,
        idempotency_key: None,
    }
}

/// A raw call, for what the typed client would not send.
async fn call(
    server: &TestServer,
    user: &User,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            server.url(&format!("/api/v1{path}")),
        )
        .bearer_auth(server.token(user.id))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A `PUT` to an upload URL with the given headers and body.
async fn put(url: &str, content_type: &str, body: &[u8]) -> u16 {
    reqwest::Client::new()
        .put(url)
        .header("content-type", content_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn media_metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_message_goes_from_presign_to_every_member_and_back_as_bytes() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await.id;
    let mut stream = connect(&bob).await;

    let upload = alice
        .client
        .presign_audio(conversation, &audio(VOICE.len()))
        .await
        .unwrap();
    assert_eq!(upload.expiration, 3600);
    assert!(
        upload
            .s3_key
            .starts_with(&format!("conversations/{conversation}/")),
        "{}",
        upload.s3_key
    );
    assert_eq!(upload.method, "PUT");
    assert_eq!(upload.headers["content-type"], "audio/mp4");
    assert_eq!(upload.headers["content-length"], VOICE.len().to_string());
    alice.client.upload(&upload, VOICE.into()).await.unwrap();
    assert!(server.blob_path(&upload.s3_key).exists());

    let sent = alice
        .client
        .send_audio(conversation, &send_audio(&upload, VOICE.len()))
        .await
        .unwrap();
    assert!(sent.created);
    assert_eq!(sent.message.message_type, "audio");
    let attachment = sent.message.attachment.clone().unwrap();
    assert_eq!(attachment.id, upload.attachment_id);
    assert_eq!(attachment.s3_key, upload.s3_key);
    assert_eq!(
        (attachment.size_bytes, attachment.duration_ms),
        (VOICE.len() as u64, Some(2_500))
    );

    // Bob hears of it live, attachment and all, and fetches the same bytes.
    let delivered = loop {
        match next(&mut stream).await.expect("message.new arrives") {
            ServerFrame::Event(frame) => break frame.event,
            ServerFrame::Control(_) => {}
        }
    };
    let Event::MessageNew(message) = delivered else {
        panic!("expected message.new, got {delivered:?}");
    };
    assert_eq!(message.attachment.as_deref(), Some(&*attachment));
    assert_eq!(
        &bob.client.download(attachment.id).await.unwrap()[..],
        VOICE
    );

    // The plain GET redirects to a short-lived URL.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.url(&format!("/api/v1/attachments/{}", attachment.id)))
        .bearer_auth(server.token(bob.id))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    assert!(
        redirect.headers()["location"]
            .to_str()
            .unwrap()
            .contains("signature=")
    );
    // A stranger sees nothing.
    let stranger = server.user();
    assert_eq!(
        stranger
            .client
            .download(attachment.id)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_url_is_issued_to_members_for_audio_within_its_size_only() {
    let server = TestServer::start().await;
    let (alice, stranger) = (server.user(), server.user());
    let conversation = group(&alice, &[]).await.id;
    let path = format!("/conversations/{conversation}/messages/audio/presigned-url");
    let presign = |user: &User, body: Value| {
        let (user, path) = (
            User {
                id: user.id,
                client: user.client.clone(),
            },
            path.clone(),
        );
        let server = &server;
        async move { call(server, &user, "POST", &path, body).await }
    };

    let (status, body) = presign(
        &stranger,
        json!({"content_type": "audio/mp4", "size_bytes": 10}),
    )
    .await;
    let (missing, missing_body) = call(
        &server,
        &stranger,
        "POST",
        &format!(
            "/conversations/{}/messages/audio/presigned-url",
            Uuid::new_v4()
        ),
        json!({"content_type": "audio/mp4", "size_bytes": 10}),
    )
    .await;
    assert_eq!((status, missing), (404, 404));
    assert_eq!(
        body, missing_body,
        "a stranger learns nothing of the conversation"
    );

    for content_type in ["text/plain", "image/png", "video/mp4", "audio/x-unknown"] {
        let (status, body) = presign(
            &alice,
            json!({"content_type": content_type, "size_bytes": 10}),
        )
        .await;
        assert_eq!(status, 415, "{content_type}: {body}");
    }
    for content_type in [
        "audio/mp4",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/webm",
        "audio/wav",
    ] {
        let (status, body) = presign(
            &alice,
            json!({"content_type": content_type, "size_bytes": 10}),
        )
        .await;
        assert_eq!(status, 200, "{content_type}: {body}");
    }
    let cap = MediaLimits::default().audio_size_max;
    let (status, _) = presign(
        &alice,
        json!({"content_type": "audio/mp4", "size_bytes": cap}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = presign(
        &alice,
        json!({"content_type": "audio/mp4", "size_bytes": cap + 1}),
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = presign(
        &alice,
        json!({"content_type": "audio/mp4", "size_bytes": 0}),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_message_exists_only_for_its_upload_as_presigned() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await.id;
    let upload = alice
        .client
        .presign_audio(conversation, &audio(VOICE.len()))
        .await
        .unwrap();
    let path = format!("/conversations/{conversation}/messages/audio");
    let body = |upload: &PresignedUpload, size: usize, content_type: &str| {
        json!({
            "s3_key": upload.s3_key, "content_type": content_type, "size_bytes": size,
            "duration_ms": 1200, "idempotency_key": "voice-1",
        })
    };

    // Not uploaded yet.
    let (status, reply) = call(
        &server,
        &alice,
        "POST",
        &path,
        body(&upload, VOICE.len(), "audio/mp4"),
    )
    .await;
    assert_eq!(status, 409, "{reply}");
    alice.client.upload(&upload, VOICE.into()).await.unwrap();
    // Not what was presigned.
    for (size, content_type) in [(VOICE.len() + 1, "audio/mp4"), (VOICE.len(), "audio/ogg")] {
        let (status, reply) = call(
            &server,
            &alice,
            "POST",
            &path,
            body(&upload, size, content_type),
        )
        .await;
        assert_eq!(status, 422, "{reply}");
    }
    // Issued for another conversation, or to someone else.
    let other = group(&alice, &[]).await.id;
    let (status, _) = call(
        &server,
        &alice,
        "POST",
        &format!("/conversations/{other}/messages/audio"),
        body(&upload, VOICE.len(), "audio/mp4"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &server,
        &bob,
        "POST",
        &path,
        body(&upload, VOICE.len(), "audio/mp4"),
    )
    .await;
    assert_eq!(status, 404);
    let unknown = PresignedUpload {
        s3_key: format!("conversations/{conversation}/{}", Uuid::new_v4()),
        ..upload.clone()
    };
    let (status, _) = call(
        &server,
        &alice,
        "POST",
        &path,
        body(&unknown, VOICE.len(), "audio/mp4"),
    )
    .await;
    assert_eq!(status, 404);

    // An attachment type never goes through the plain send.
    for message_type in ["audio", "image", "file"] {
        let (status, reply) = call(
            &server,
            &alice,
            "POST",
            "/messages",
            json!({
                "conversation_id": conversation, "encrypted_content": "aGk=", "nonce": "bm9uY2U=",
                "message_type": message_type,
            }),
        )
        .await;
        assert_eq!(status, 422, "{message_type}: {reply}");
    }

    // Sent once; a retry with its key is the same message; another send of
    // the same attachment is refused.
    let (status, first) = call(
        &server,
        &alice,
        "POST",
        &path,
        body(&upload, VOICE.len(), "audio/mp4"),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = call(
        &server,
        &alice,
        "POST",
        &path,
        body(&upload, VOICE.len(), "audio/mp4"),
    )
    .await;
    assert_eq!((status, &again["id"]), (200, &first["id"]));
    let mut other_key = body(&upload, VOICE.len(), "audio/mp4");
    other_key["idempotency_key"] = json!("voice-2");
    let (status, _) = call(&server, &alice, "POST", &path, other_key).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_refuses_tampered_expired_mistyped_and_resized_uploads() {
    let mut limits = Limits::default();
    limits.media.upload_url_ttl = Duration::from_secs(1);
    limits.media.unattached_ttl = limits.media.upload_url_ttl + limits.media.orphan_grace * 2;
    let server = TestServer::with_limits(limits).await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    let upload = alice
        .client
        .presign_audio(conversation, &audio(VOICE.len()))
        .await
        .unwrap();
    let url = &upload.presigned_url;

    let tampered = url.replace("size=", "size=1");
    assert_eq!(
        put(&tampered, "audio/mp4", VOICE).await,
        403,
        "a tampered URL"
    );
    assert_eq!(
        put(url, "audio/ogg", VOICE).await,
        403,
        "another content type"
    );
    assert_eq!(
        put(url, "audio/mp4", &VOICE[1..]).await,
        403,
        "another size"
    );
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(put(unsigned, "audio/mp4", VOICE).await, 403, "no signature");
    assert!(
        !server.blob_path(&upload.s3_key).exists(),
        "nothing was stored"
    );

    // Once its second has passed, the URL is refused as expired.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = put(url, "audio/mp4", VOICE).await;
        if status == 403 {
            break;
        }
        // Accepted while still valid: take the object away and try again.
        assert_eq!(status, 200);
        std::fs::remove_file(server.blob_path(&upload.s3_key)).unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the URL never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!server.blob_path(&upload.s3_key).exists());
    let download = format!(
        "{}/api/v1/blobs/{}?expires=9999999999&signature=00",
        server.base, upload.s3_key
    );
    assert_eq!(
        reqwest::get(&download).await.unwrap().status(),
        403,
        "a forged download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deletes_of_an_attachment_answer_once_and_remove_its_object() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await.id;
    let file = UploadRequest {
        content_type: "application/pdf".into(),
        size_bytes: 4,
        file_name: Some("plan.pdf".into()),
    };
    let upload = alice
        .client
        .create_attachment(conversation, &file)
        .await
        .unwrap();
    alice
        .client
        .upload(&upload, b"%PDF"[..].into())
        .await
        .unwrap();
    assert_eq!(
        bob.client
            .delete_attachment(upload.attachment_id)
            .await
            .unwrap_err()
            .status(),
        Some(403),
        "a member who neither uploaded it nor moderates"
    );
    let deletes: Vec<_> = (0..5)
        .map(|_| {
            let client = alice.client.clone();
            let id = upload.attachment_id;
            tokio::spawn(async move { client.delete_attachment(id).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for delete in deletes {
        statuses.push(match delete.await.unwrap() {
            Ok(()) => 204,
            Err(error) => error.status().unwrap(),
        });
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 404, 404, 404, 404]);
    let path = server.blob_path(&upload.s3_key);
    eventually("the object is removed", || !path.exists()).await;
    let audit = server.store.audit(&upload.s3_key).await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].actor, Some(alice.id));
    // A deleted attachment is never sent.
    let send = SendAttachment {
        attachment_id: upload.attachment_id,
        duration_ms: None,
        encrypted_content: None,
        nonce: None,
        idempotency_key: None,
    };
    assert_eq!(
        alice
            .client
            .send_attachment(conversation, &send)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_takes_its_attachment_with_it() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    let upload = Upload {
        bytes: VOICE.into(),
        content_type: "audio/ogg".into(),
        file_name: None,
    };
    let sent = alice
        .client
        .send_file(
            conversation,
            &upload,
            Some(900),
            switchboard_client::RetryPolicy::default(),
        )
        .await
        .unwrap();
    let attachment = sent.message.attachment.clone().unwrap();
    let path = server.blob_path(&attachment.s3_key);
    assert!(path.exists());
    alice.client.delete(sent.message.id).await.unwrap();
    eventually("the object is removed", || !path.exists()).await;
    assert_eq!(
        alice
            .client
            .download(attachment.id)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    let history = alice
        .client
        .messages(conversation, None, None, None)
        .await
        .unwrap();
    assert!(history.messages.iter().all(|m| m.attachment.is_none()));
    assert!(
        media_metric(
            &server.metrics().await,
            r#"attachment_deletes_total{outcome="deleted"}"#
        ) >= 1.0
    );
}

/// Small enough that a test sees the sweeper work.
fn sweeping() -> Limits {
    let mut limits = Limits::default();
    let media = &mut limits.media;
    media.upload_url_ttl = Duration::from_secs(1);
    media.orphan_grace = Duration::from_millis(200);
    media.unattached_ttl = Duration::from_secs(3);
    media.sweep_every = Duration::from_millis(100);
    limits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_lands_after_its_deletion_is_swept_and_never_sent() {
    let server = TestServer::with_limits(sweeping()).await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    let upload = alice
        .client
        .presign_audio(conversation, &audio(VOICE.len()))
        .await
        .unwrap();
    // Deleted while the client is still uploading; its upload lands after.
    alice
        .client
        .delete_attachment(upload.attachment_id)
        .await
        .unwrap();
    alice.client.upload(&upload, VOICE.into()).await.unwrap();
    assert_eq!(
        alice
            .client
            .send_audio(conversation, &send_audio(&upload, VOICE.len()))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    let path = server.blob_path(&upload.s3_key);
    eventually("the late upload is swept", || !path.exists()).await;
    let reasons: Vec<_> = server
        .store
        .audit(&upload.s3_key)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.reason.as_str())
        .collect();
    assert!(reasons.contains(&"user"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_uploads_never_sent_and_rows_never_uploaded() {
    let server = TestServer::with_limits(sweeping()).await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    let uploaded = alice
        .client
        .presign_audio(conversation, &audio(VOICE.len()))
        .await
        .unwrap();
    alice.client.upload(&uploaded, VOICE.into()).await.unwrap();
    let never = alice
        .client
        .presign_audio(conversation, &audio(VOICE.len()))
        .await
        .unwrap();
    let path = server.blob_path(&uploaded.s3_key);
    eventually("the unsent upload is swept", || !path.exists()).await;
    let store = &server.store;
    for (upload, reason) in [(&uploaded, "unattached"), (&never, "never_uploaded")] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let audit = store.audit(&upload.s3_key).await.unwrap();
            if let Some(entry) = audit.first() {
                assert_eq!((entry.reason.as_str(), entry.actor), (reason, None));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reason} never swept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let metrics = server.metrics().await;
    for kind in ["unattached", "never_uploaded"] {
        assert_eq!(
            media_metric(
                &metrics,
                &format!("attachment_orphans_removed_total{{kind=\"{kind}\"}}")
            ),
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_lists_the_blob_store_and_its_breakers() {
    let server = TestServer::start().await;
    let ready: Value = reqwest::get(server.url("/health/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let blobs = &ready["dependencies"]["blobs"];
    assert_eq!(blobs["ok"], true, "{ready}");
    assert_eq!(blobs["store"], "local");
    assert_eq!(blobs["breaker"], "closed");
    assert_eq!(ready["tasks"]["blob_deleter"]["state"], "running");
    assert_eq!(ready["tasks"]["attachment_sweeper"]["state"], "running");
    // Text still flows with media in place.
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    alice.client.send(&text(conversation, "hi")).await.unwrap();
}
