//! The feed over HTTP on the embedded default: SQLite ranks it.

use reqwest::StatusCode;
use serde_json::Value;
use switchboard_actors::Limits;

use crate::support::TestServer;

/// `method path` as `token`'s holder, with an optional JSON body.
pub(crate) async fn call(
    server: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .request(method, server.url(&format!("/api/v1{path}")))
        .bearer_auth(token);
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

#[tokio::test]
async fn the_embedded_feed_is_ranked_by_the_database() {
    use reqwest::Method;
    let server = TestServer::start().await;
    let (me, author, stranger) = (server.user(), server.user(), server.user());
    let (t, a, s) = (
        server.token(me.id),
        server.token(author.id),
        server.token(stranger.id),
    );
    let (status, _, first) = call(
        &server,
        &a,
        Method::POST,
        "/posts",
        Some(serde_json::json!({"text": "first"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (_, _, second) = call(
        &server,
        &a,
        Method::POST,
        "/posts",
        Some(serde_json::json!({"text": "second"})),
    )
    .await;
    call(
        &server,
        &s,
        Method::POST,
        "/posts",
        Some(serde_json::json!({"text": "not followed"})),
    )
    .await;
    let (status, _, _) = call(
        &server,
        &t,
        Method::PUT,
        &format!("/users/{}/follow", author.id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(
        &server,
        &t,
        Method::PUT,
        &format!("/users/{}/follow", author.id),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "following twice is following"
    );

    // Likes lift the older post above the newer one.
    let first_id = first["id"].as_str().unwrap().to_owned();
    for liker in [&t, &s, &t] {
        let (status, _, post) = call(
            &server,
            liker,
            Method::PUT,
            &format!("/posts/{first_id}/like"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{post}");
    }
    let (_, _, liked) = call(
        &server,
        &t,
        Method::GET,
        &format!("/posts/{first_id}"),
        None,
    )
    .await;
    assert_eq!(liked["like_count"], 2, "liking twice is one like");

    let (status, headers, page) = call(&server, &t, Method::GET, "/feed?limit=1", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(headers["feed-source"], "ranked");
    assert_eq!(page["source"], "ranked");
    assert_eq!(page["posts"][0]["id"], first["id"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, _, rest) = call(
        &server,
        &t,
        Method::GET,
        &format!("/feed?limit=5&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(rest["posts"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["posts"][0]["id"], second["id"]);
    assert!(rest.get("next_cursor").is_none(), "{rest}");

    // Bounds and refusals.
    for (path, expected) in [
        ("/feed?limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("/feed?limit=101", StatusCode::UNPROCESSABLE_ENTITY),
        ("/feed?cursor=nonsense", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, _, body) = call(&server, &t, Method::GET, path, None).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
    let long = "x".repeat(2_001);
    for body in [
        serde_json::json!({"text": long}),
        serde_json::json!({"text": "  "}),
    ] {
        let (status, _, _) = call(&server, &t, Method::POST, "/posts", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let (status, _, _) = call(
        &server,
        &t,
        Method::PUT,
        &format!("/users/{}/follow", me.id),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "following oneself"
    );
    let (status, _, _) = call(
        &server,
        &t,
        Method::DELETE,
        &format!("/posts/{first_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "someone else's post");
    let (status, _, _) = call(
        &server,
        &a,
        Method::DELETE,
        &format!("/posts/{first_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(
        &server,
        &t,
        Method::PUT,
        &format!("/posts/{first_id}/like"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, page) = call(&server, &t, Method::GET, "/feed", None).await;
    assert_eq!(
        page["posts"].as_array().unwrap().len(),
        1,
        "the deleted post is gone: {page}"
    );

    let (status, _, _) = call(
        &server,
        &t,
        Method::DELETE,
        &format!("/users/{}/follow", author.id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, page) = call(&server, &t, Method::GET, "/feed", None).await;
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
    let me = server.user();
    let token = server.token(me.id);
    for n in 0..3 {
        let other = server.user();
        let (status, _, body) = call(
            &server,
            &token,
            reqwest::Method::PUT,
            &format!("/users/{}/follow", other.id),
            None,
        )
        .await;
        let expected = if n < 2 {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(status, expected, "{body}");
    }
}
