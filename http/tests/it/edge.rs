//! The edge's limits on a real server: a user's flood is refused 429 with
//! `Retry-After` while another user's sends go through; an address's flood
//! likewise; a request past its deadline, or past the requests in flight,
//! is 503; past the TCP connection cap the listener waits for one to close.

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::StatusCode;
use switchboard_actors::Limits;
use switchboard_http::{EdgeLimits, HttpLimits, Rate};

use crate::support::{TestServer, eventually, group, text};

fn with_edge(edge: EdgeLimits) -> HttpLimits {
    HttpLimits {
        edge,
        ..HttpLimits::default()
    }
}

async fn send_status(
    server: &TestServer,
    token: &str,
    body: &switchboard_protocol::SendMessage,
) -> (StatusCode, Option<String>) {
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/messages"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), retry)
}

#[tokio::test]
async fn a_flood_from_one_user_is_refused_while_another_users_sends_go_through() {
    let edge = EdgeLimits {
        per_user: Rate {
            per_sec: 2,
            burst: 20,
        },
        ..EdgeLimits::default()
    };
    let server = TestServer::with_config(Limits::default(), with_edge(edge)).await;
    let (flooder, other) = (server.user(), server.user());
    let room = group(&other, &[&flooder]).await;
    let (flood_token, other_token) = (server.token(flooder.id), server.token(other.id));
    let mut refused = Vec::new();
    for n in 0..40 {
        let (status, retry) =
            send_status(&server, &flood_token, &text(room.id, &format!("f{n}"))).await;
        match status {
            StatusCode::CREATED => {}
            StatusCode::TOO_MANY_REQUESTS => refused.push(retry),
            other => panic!("a flood answered {other}"),
        }
        if n % 4 == 0 {
            let (status, _) =
                send_status(&server, &other_token, &text(room.id, &format!("o{n}"))).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "another user's send goes through"
            );
        }
    }
    assert!(refused.len() >= 15, "only {} of 40 refused", refused.len());
    for retry in &refused {
        let seconds: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
        assert!(seconds >= 1, "Retry-After {seconds}");
    }
    // Reads are not mutations: the flooder still reads.
    let response = reqwest::Client::new()
        .get(server.url("/api/v1/conversations"))
        .bearer_auth(&flood_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("http_rate_limited_total{key=\"user\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_flood_from_one_address_is_refused() {
    let edge = EdgeLimits {
        per_ip: Rate {
            per_sec: 2,
            burst: 10,
        },
        ..EdgeLimits::default()
    };
    let server = TestServer::with_config(Limits::default(), with_edge(edge)).await;
    let users: Vec<_> = (0..4).map(|_| server.user()).collect();
    let room = group(&users[0], &[&users[1], &users[2], &users[3]]).await;
    let mut refused = 0;
    for n in 0..40 {
        let user = &users[n % users.len()];
        let (status, retry) = send_status(
            &server,
            &server.token(user.id),
            &text(room.id, &format!("m{n}")),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry.is_some());
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} of 40 refused");
    assert!(
        server
            .metrics()
            .await
            .contains("http_rate_limited_total{key=\"ip\"}")
    );
}

/// A raw request whose body never comes: it holds its handler waiting.
fn stalled_request(server: &TestServer, token: &str) -> std::net::TcpStream {
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    let request = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    socket.write_all(request.as_bytes()).unwrap();
    socket
}

#[tokio::test]
async fn a_request_past_its_deadline_or_past_the_requests_in_flight_is_503() {
    let edge = EdgeLimits {
        request_timeout: Duration::from_millis(300),
        in_flight_max: 1,
        ..EdgeLimits::default()
    };
    let server = TestServer::with_config(Limits::default(), with_edge(edge)).await;
    let user = server.user();
    let token = server.token(user.id);
    let mut stalled = stalled_request(&server, &token);
    // While it holds the only slot, the next request is shed.
    let shed = tokio::task::spawn_blocking(move || {
        let mut answer = String::new();
        stalled.read_to_string(&mut answer).unwrap();
        answer
    });
    let mut seen_busy = false;
    for _ in 0..50 {
        let response = reqwest::Client::new()
            .get(server.url("/api/v1/conversations"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()["retry-after"], "1");
            seen_busy = true;
            break;
        }
    }
    assert!(
        seen_busy,
        "no request was shed while the only slot was held"
    );
    // The stalled one is cut off at its deadline with a 503.
    let answer = shed.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Probes are never shed.
    let live = reqwest::get(server.url("/health/live")).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let metrics = server.metrics().await;
    for reason in ["in_flight", "timeout"] {
        assert!(
            metrics.contains(&format!("http_requests_shed_total{{reason=\"{reason}\"}}")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn past_the_tcp_connection_cap_the_listener_waits_for_one_to_close() {
    let edge = EdgeLimits {
        tcp_connections_max: 2,
        ..EdgeLimits::default()
    };
    let server = TestServer::with_config(Limits::default(), with_edge(edge)).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    // The third connects (the kernel's backlog) but is not served yet.
    let mut third = std::net::TcpStream::connect(&address).unwrap();
    third
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The node cannot be reached by HTTP now: read its metrics directly.
    let node = server.node.clone();
    eventually("the listener pauses at the cap", || {
        node.metrics()
            .encode()
            .contains("tcp_accept_paused_total 1")
    })
    .await;
    drop(held);
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = String::new();
        third.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
