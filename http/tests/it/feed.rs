//! The feed over HTTP on the embedded default: SQLite ranks it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard_actors::Limits;
use uuid::Uuid;

use crate::support::TestServer;

/// The API as one user: `(status, headers, JSON body)` for each call.
pub(crate) struct Api<'a> {
    server: &'a TestServer,
    token: String,
}

impl<'a> Api<'a> {
    pub(crate) fn new(server: &'a TestServer, user: uuid::Uuid) -> Self {
        Self {
            server,
            token: server.token(user),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = reqwest::Client::new()
            .request(method, self.server.url(&format!("/api/v1{path}")))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, value)
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.call(Method::GET, path, None).await;
        (status, body)
    }

    pub(crate) async fn put(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.call(Method::PUT, path, None).await;
        (status, body)
    }

    pub(crate) async fn delete(&self, path: &str) -> StatusCode {
        self.call(Method::DELETE, path, None).await.0
    }

    pub(crate) async fn post(&self, text: &str) -> (StatusCode, Value) {
        let body = serde_json::json!({ "text": text });
        let (status, _, post) = self.call(Method::POST, "/posts", Some(body)).await;
        (status, post)
    }
}

#[tokio::test]
async fn the_embedded_feed_is_ranked_by_the_database() {
    let server = TestServer::start().await;
    let (me, author, stranger) = (server.user(), server.user(), server.user());
    let (t, a, s) = (
        Api::new(&server, me.id),
        Api::new(&server, author.id),
        Api::new(&server, stranger.id),
    );
    let (status, first) = a.post("first").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let keyed = json!({"text": "second", "idempotency_key": "k-1"});
    let (status, _, second) = a.call(Method::POST, "/posts", Some(keyed.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, headers, again) = a.call(Method::POST, "/posts", Some(keyed)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a repeated key answers the stored post"
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["id"], second["id"]);
    let reused = json!({"text": "other", "idempotency_key": "k-1"});
    let (status, _, _) = a.call(Method::POST, "/posts", Some(reused)).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a key reused for another post"
    );
    s.post("not followed").await;
    let follow = format!("/users/{}/follow", author.id);
    assert_eq!(t.put(&follow).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        t.put(&follow).await.0,
        StatusCode::NO_CONTENT,
        "following twice is following"
    );

    // Likes lift the older post above the newer one.
    let first_id = first["id"].as_str().unwrap().to_owned();
    let like = format!("/posts/{first_id}/like");
    for liker in [&t, &s, &t] {
        let (status, post) = liker.put(&like).await;
        assert_eq!(status, StatusCode::OK, "{post}");
    }
    let (_, liked) = t.get(&format!("/posts/{first_id}")).await;
    assert_eq!(liked["like_count"], 2, "liking twice is one like");

    let (status, headers, page) = t.call(Method::GET, "/feed?limit=1", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(headers["feed-source"], "ranked");
    assert_eq!(page["source"], "ranked");
    assert_eq!(page["posts"][0]["id"], first["id"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = t.get(&format!("/feed?limit=5&cursor={cursor}")).await;
    assert_eq!(rest["posts"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["posts"][0]["id"], second["id"]);
    assert!(rest.get("next_cursor").is_none(), "{rest}");

    // Bounds and refusals.
    for path in ["/feed?limit=0", "/feed?limit=101", "/feed?cursor=nonsense"] {
        let (status, body) = t.get(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
    }
    for text in ["x".repeat(2_001), "  ".into()] {
        assert_eq!(t.post(&text).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let (status, _) = t.put(&format!("/users/{}/follow", me.id)).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "following oneself"
    );
    let post = format!("/posts/{first_id}");
    assert_eq!(
        t.delete(&post).await,
        StatusCode::FORBIDDEN,
        "someone else's post"
    );
    assert_eq!(a.delete(&post).await, StatusCode::NO_CONTENT);
    assert_eq!(t.put(&like).await.0, StatusCode::NOT_FOUND);
    let (_, page) = t.get("/feed").await;
    assert_eq!(
        page["posts"].as_array().unwrap().len(),
        1,
        "the deleted post is gone: {page}"
    );

    assert_eq!(t.delete(&follow).await, StatusCode::NO_CONTENT);
    let (_, page) = t.get("/feed").await;
    assert_eq!(page["posts"].as_array().unwrap().len(), 0, "{page}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("feed_request_duration_seconds_count{source=\"ranked\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_follow_past_the_limit_is_refused() {
    let mut limits = Limits::default();
    limits.feed.follows_max = 2;
    let server = TestServer::with_limits(limits).await;
    let me = Api::new(&server, server.user().id);
    for n in 0..3 {
        let (status, body) = me.put(&format!("/users/{}/follow", server.user().id)).await;
        let expected = if n < 2 {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(status, expected, "{body}");
    }
}

#[tokio::test]
async fn a_post_carries_an_upload_once_and_its_deletion_removes_the_object() {
    let server = TestServer::start().await;
    let (author, reader) = (server.user(), server.user());
    let a = Api::new(&server, author.id);
    let png = bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\n a summit at dawn");
    let request =
        json!({"content_type": "image/png", "size_bytes": png.len(), "file_name": "summit.png"});
    let (status, _, presigned) = a
        .call(Method::POST, "/posts/attachments", Some(request))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{presigned}");
    let presigned: switchboard_protocol::PresignedUpload =
        serde_json::from_value(presigned).unwrap();
    assert!(
        presigned
            .s3_key
            .starts_with(&format!("posts/{}/", author.id))
    );
    let body = json!({"text": "look", "attachment_id": presigned.attachment_id});
    let (status, _, refused) = a.call(Method::POST, "/posts", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT, "not uploaded yet: {refused}");

    author.client.upload(&presigned, png.clone()).await.unwrap();
    let (status, _, theirs) = Api::new(&server, reader.id)
        .call(Method::POST, "/posts", Some(body.clone()))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "someone else's upload: {theirs}"
    );
    let (status, _, post) = a.call(Method::POST, "/posts", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{post}");
    assert_eq!(post["attachment"]["s3_key"], presigned.s3_key.as_str());
    assert_eq!(post["attachment"]["file_name"], "summit.png");
    let (status, _, again) = a.call(Method::POST, "/posts", Some(body)).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an upload is posted once: {again}"
    );

    // Any signed-in user downloads it.
    let id = post["id"].as_str().unwrap().to_owned();
    let (status, link) = Api::new(&server, reader.id)
        .get(&format!("/posts/{id}/attachment?redirect=false"))
        .await;
    assert_eq!(status, StatusCode::OK, "{link}");
    let downloaded = reqwest::get(link["url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(downloaded, png);
    let (status, _) = a
        .get(&format!("/posts/{}/attachment", Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Voice notes belong to conversations.
    let voice = json!({"content_type": "audio/ogg", "size_bytes": 10});
    let (status, _, _) = a
        .call(Method::POST, "/posts/attachments", Some(voice))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // The post's deletion owes its object a deletion, which the deleter does.
    let object = server.blob_path(&presigned.s3_key);
    assert!(object.exists());
    assert_eq!(
        a.delete(&format!("/posts/{id}")).await,
        StatusCode::NO_CONTENT
    );
    crate::support::eventually("the object is deleted", || !object.exists()).await;
}
