//! The media path on a real S3-protocol server that checks SigV4
//! (`s3s-fs`, started here on a free port): presigned uploads refused as S3
//! refuses them, the whole voice flow, and S3 stopping under a live node.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use switchboard_actors::Limits;
use switchboard_protocol::{SendAudio, UploadRequest};
use switchboard_storage::Blobs;
use switchboard_storage_blobs::{S3Blobs, S3Options};

use crate::support::{TestServer, connect, events, eventually, group, text};

const ACCESS_KEY: &str = "switchboard-test";
const SECRET_KEY: &str = "switchboard-test-secret";
const BUCKET: &str = "media";
const VOICE: &[u8] = b"someone speaking, in Ogg Opus, for a couple of seconds";

/// A private `s3s-fs` over a temporary folder, with one bucket.
struct S3Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl S3Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.restart();
        server
    }

    fn restart(&mut self) {
        let binary = std::env::var("SWITCHBOARD_TEST_S3S_FS")
            .expect("the s3-tests feature needs SWITCHBOARD_TEST_S3S_FS, the s3s-fs binary");
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(crate::support::listening(child, self.port, "s3s-fs"));
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn options(&self) -> S3Options {
        let mut options = S3Options::new(BUCKET, "us-east-1");
        options.endpoint = Some(format!("http://127.0.0.1:{}", self.port));
        options.static_credentials = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
        options.timeout = Duration::from_secs(2);
        options
    }

    fn object(&self, key: &str) -> std::path::PathBuf {
        self.dir.path().join(BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn put(url: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut request = reqwest::Client::new().put(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refuses_tampered_expired_mistyped_and_resized_presigned_uploads() {
    let s3 = S3Server::start();
    let blobs = S3Blobs::connect(&s3.options()).await;
    blobs.ping().await.unwrap();
    let key = "conversations/a/voice";
    let size = VOICE.len().to_string();
    let signed = [
        ("content-type", "audio/ogg"),
        ("content-length", size.as_str()),
    ];
    let upload = blobs
        .presign_put(
            key,
            "audio/ogg",
            VOICE.len() as u64,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(upload.headers["content-type"], "audio/ogg");
    assert_eq!(upload.headers["content-length"], size);

    // One hex digit of the signature flipped.
    let at = upload.url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let digit = if &upload.url[at..=at] == "0" {
        "1"
    } else {
        "0"
    };
    let tampered = format!("{}{digit}{}", &upload.url[..at], &upload.url[at + 1..]);
    assert_eq!(
        put(&tampered, &signed, VOICE).await,
        403,
        "a tampered signature"
    );
    assert_eq!(
        put(
            &upload.url,
            &[("content-type", "audio/mpeg"), ("content-length", &size)],
            VOICE
        )
        .await,
        403,
        "another content type"
    );
    assert_eq!(
        put(&upload.url, &[("content-type", "audio/ogg")], &VOICE[1..]).await,
        403,
        "another size"
    );
    let unsigned = upload.url.split('?').next().unwrap();
    assert_eq!(put(unsigned, &signed, VOICE).await, 403, "no signature");
    assert!(
        blobs.head(key).await.unwrap().is_none(),
        "nothing was stored"
    );

    let expired = blobs
        .presign_put(key, "audio/ogg", VOICE.len() as u64, Duration::from_secs(1))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while put(&expired.url, &signed, VOICE).await != 403 {
        blobs.delete(key).await.unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the URL never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    blobs.delete(key).await.unwrap();

    assert_eq!(
        put(&upload.url, &signed, VOICE).await,
        200,
        "the upload as signed"
    );
    let head = blobs.head(key).await.unwrap().unwrap();
    assert_eq!(
        (head.size_bytes, head.content_type.as_deref()),
        (VOICE.len() as u64, Some("audio/ogg"))
    );
    let listed = blobs.list("conversations/", None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
        [key]
    );
    let get = blobs
        .presign_get(key, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        &reqwest::get(&get.url).await.unwrap().bytes().await.unwrap()[..],
        VOICE
    );
    blobs.delete(key).await.unwrap();
    assert!(blobs.head(key).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_message_through_s3_reaches_a_member_and_downloads_the_same_bytes() {
    let s3 = S3Server::start();
    let server = TestServer::with_s3(Limits::default(), s3.options()).await;
    let (alice, bob) = (server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await.id;
    let mut stream = connect(&bob).await;
    let upload = alice
        .client
        .presign_audio(
            conversation,
            &UploadRequest {
                content_type: "audio/ogg".into(),
                size_bytes: VOICE.len() as u64,
                file_name: None,
            },
        )
        .await
        .unwrap();
    assert!(upload.presigned_url.contains("X-Amz-Signature="));
    alice.client.upload(&upload, VOICE.into()).await.unwrap();
    let sent = alice
        .client
        .send_audio(
            conversation,
            &SendAudio {
                s3_key: upload.s3_key.clone(),
                content_type: "audio/ogg".into(),
                size_bytes: VOICE.len() as u64,
                duration_ms: 1_800,
                encrypted_content: None,
                nonce: None,
                idempotency_key: Some("s3-voice".into()),
            },
        )
        .await
        .unwrap();
    let delivered = events(&mut stream, 1).await;
    let switchboard_protocol::Event::MessageNew(message) = &delivered[0] else {
        panic!("expected message.new, got {delivered:?}");
    };
    assert_eq!(message.attachment, sent.message.attachment);
    let attachment = message.attachment.as_ref().unwrap();
    assert_eq!(
        &bob.client.download(attachment.id).await.unwrap()[..],
        VOICE
    );
    let ready: Value = reqwest::get(server.url("/health/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["dependencies"]["blobs"]["store"], "s3");
    assert_eq!(ready["dependencies"]["blobs"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_stopped_text_flows_media_answers_503_and_deletions_wait_for_it() {
    let mut s3 = S3Server::start();
    let mut limits = Limits::default();
    limits.media.delete_poll_every = Duration::from_millis(100);
    limits.media.delete_retry_min = Duration::from_millis(100);
    limits.media.delete_retry_max = Duration::from_millis(500);
    for worker in [&mut limits.media.worker, &mut limits.media.cleanup_worker] {
        worker.breaker.cool_down_min = Duration::from_millis(200);
        worker.breaker.cool_down_max = Duration::from_millis(500);
    }
    let server = TestServer::with_s3(limits, s3.options()).await;
    let (alice, bob) = (server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await.id;
    let mut stream = connect(&bob).await;
    let request = UploadRequest {
        content_type: "audio/ogg".into(),
        size_bytes: VOICE.len() as u64,
        file_name: None,
    };
    // A voice message, sent while S3 is up, to be deleted while it is down.
    let upload = alice
        .client
        .presign_audio(conversation, &request)
        .await
        .unwrap();
    alice.client.upload(&upload, VOICE.into()).await.unwrap();
    let voice = SendAudio {
        s3_key: upload.s3_key.clone(),
        content_type: "audio/ogg".into(),
        size_bytes: VOICE.len() as u64,
        duration_ms: 1_000,
        encrypted_content: None,
        nonce: None,
        idempotency_key: None,
    };
    let sent = alice.client.send_audio(conversation, &voice).await.unwrap();
    events(&mut stream, 1).await;
    assert!(s3.object(&upload.s3_key).exists());

    s3.stop();
    // Text is untouched.
    for i in 0..3 {
        let message = alice
            .client
            .send(&text(conversation, &format!("still here {i}")))
            .await
            .unwrap();
        assert!(message.created);
    }
    assert_eq!(events(&mut stream, 3).await.len(), 3);
    // Media answers 503 with Retry-After within its deadline, never hangs.
    for _ in 0..6 {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            reqwest::Client::new()
                .post(server.url(&format!(
                    "/api/v1/conversations/{conversation}/messages/audio/presigned-url"
                )))
                .bearer_auth(server.token(alice.id))
                .json(&request)
                .send(),
        )
        .await
        .expect("media answers within its deadline")
        .unwrap();
        if answer.status() == 503 {
            assert!(answer.headers().contains_key("retry-after"));
        } else {
            // Presigning needs no network: until the breaker has seen
            // failures a URL may still be issued.
            assert_eq!(answer.status(), 200);
        }
        let head = alice.client.send_audio(conversation, &voice).await;
        assert!(matches!(
            head.map_err(|e| e.status()),
            Err(Some(503)) | Err(Some(409)) | Ok(_)
        ));
    }
    // The deletion is owed while S3 is down (its failures open the
    // store's breaker), and done once it is back.
    alice.client.delete(sent.message.id).await.unwrap();
    eventually("the breaker opens", || {
        server.node.breakers().get("blobs") == Some(&"open")
    })
    .await;
    assert!(s3.object(&upload.s3_key).exists());
    let refused = reqwest::Client::new()
        .post(server.url(&format!(
            "/api/v1/conversations/{conversation}/messages/audio/presigned-url"
        )))
        .bearer_auth(server.token(alice.id))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        503,
        "refused at once while the breaker is open"
    );

    s3.restart();
    let path = s3.object(&upload.s3_key);
    eventually("the owed deletion completes", || !path.exists()).await;
    eventually("the breaker closes", || {
        server.node.breakers().get("blobs") == Some(&"closed")
    })
    .await;
    // And media works again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alice
        .client
        .presign_audio(conversation, &request)
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "media never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.node.breakers().get("blobs"), Some(&"closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_and_serves_text_with_s3_unreachable() {
    // Nothing listens here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = S3Options::new(BUCKET, "us-east-1");
    options.endpoint = Some(format!("http://127.0.0.1:{port}"));
    options.static_credentials = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
    options.timeout = Duration::from_millis(500);
    let server = TestServer::with_s3(Limits::default(), options).await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    let mut stream = connect(&alice).await;
    assert!(
        alice
            .client
            .send(&text(conversation, "no s3 needed"))
            .await
            .unwrap()
            .created
    );
    assert_eq!(events(&mut stream, 1).await.len(), 1);
    let ready = reqwest::get(server.url("/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200, "S3 only affects media");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["dependencies"]["blobs"]["ok"], false);
}
