//! Bad input gets the JSON error shape with the right status.

use serde_json::Value;

use crate::support::{TestServer, group};

async fn error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json error body");
    let code = body["error"]["code"].as_str().expect("code").to_owned();
    assert!(body["error"]["message"].is_string());
    (status, code)
}

#[tokio::test]
async fn bad_requests_are_answered_with_clear_json_errors() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await;
    let token = server.token(alice.id);
    let http = reqwest::Client::new();
    let post = |path: &str| {
        http.post(server.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
    };
    let message = |content: &str, nonce: &str| {
        format!(
            r#"{{"conversation_id":"{}","encrypted_content":"{content}","nonce":"{nonce}","message_type":"text"}}"#,
            conversation.id
        )
    };

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.get(server.url("/api/v1/conversations")),
            401,
            "unauthorized",
        ),
        (
            http.get(server.url("/api/v1/conversations"))
                .bearer_auth("forged"),
            401,
            "unauthorized",
        ),
        (
            post("/api/v1/messages").body("{not json"),
            400,
            "bad_request",
        ),
        (post("/api/v1/messages").body("{}"), 422, "unprocessable"),
        (
            post("/api/v1/messages").body(message("not base64!", "bm9uY2U=")),
            422,
            "unprocessable",
        ),
        (
            post("/api/v1/messages").body(message(&"QUFB".repeat(20_000), "bm9uY2U=")),
            413,
            "payload_too_large",
        ),
        (
            post("/api/v1/messages").body(format!(r#"{{"pad":"{}"}}"#, "x".repeat(300_000))),
            413,
            "payload_too_large",
        ),
        (
            http.post(server.url("/api/v1/messages"))
                .bearer_auth(&token)
                .body(message("aGk=", "bm9uY2U=")),
            415,
            "unsupported_media_type",
        ),
        (
            http.get(server.url("/api/v1/conversations/not-a-uuid"))
                .bearer_auth(&token),
            400,
            "bad_request",
        ),
        (
            http.get(server.url("/api/v1/conversations?limit=0"))
                .bearer_auth(&token),
            422,
            "unprocessable",
        ),
        (http.get(server.url("/api/v1/nowhere")), 404, "not_found"),
    ];
    for (i, (request, status, code)) in cases.into_iter().enumerate() {
        let response = request.send().await.expect("answer");
        assert_eq!(error(response).await, (status, code.to_owned()), "case {i}");
    }
    // None of it was stored.
    let log = crate::support::log(&alice, conversation.id).await;
    assert_eq!(log.len(), 1);
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await;
    alice
        .client
        .send(&crate::support::text(conversation.id, "counted"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let ready: Value = http
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["dependencies"]["database"]["ok"], true);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"events_committed_total{type="message.new"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("websocket_active_connections 0"));
    assert!(metrics.contains(r#"message_delivery_latency_seconds_count{stage="commit"} 1"#));
    assert!(metrics.contains("http_request_duration_seconds"));
}
