//! The OpenAPI document describes only endpoints that exist: every path and
//! method in `docs/openapi.yaml` reaches a handler of the real router.

use crate::support::TestServer;

const DOCUMENT: &str = include_str!("../../../docs/openapi.yaml");

/// `(method, path)` pairs under `paths:`, read by indentation.
fn operations() -> Vec<(String, String)> {
    let mut operations = Vec::new();
    let mut in_paths = false;
    let mut path = None;
    for line in DOCUMENT.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && key.starts_with('/')
        {
            path = Some(key.to_owned());
        } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && ["get", "post", "patch", "delete", "put"].contains(&method)
        {
            operations.push((
                method.to_owned(),
                path.clone().expect("a method under a path"),
            ));
        }
    }
    operations
}

#[tokio::test]
async fn every_documented_operation_reaches_a_handler() {
    let server = TestServer::start().await;
    let alice = server.user();
    let token = server.token(alice.id);
    let http = reqwest::Client::new();
    let operations = operations();
    assert!(
        operations.len() >= 16,
        "the document lists {} operations",
        operations.len()
    );
    for (method, path) in operations {
        // Any UUID will do: an unknown id answers a handler's 404, not the fallback's.
        let concrete = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let response = http
            .request(
                method.to_uppercase().parse().unwrap(),
                server.url(&concrete),
            )
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let streaming = response
            .headers()
            .get("content-type")
            .is_some_and(|t| t == "text/event-stream");
        // An event stream never ends; its 200 says it was routed.
        let body = if streaming {
            String::new()
        } else {
            response.text().await.unwrap()
        };
        assert_ne!(status, 405, "{method} {path} is documented but not served");
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path} is documented but not routed"
        );
    }
}
