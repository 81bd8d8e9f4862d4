//! Server-Sent Events with a real HTTP client reading the stream: cursors as
//! event ids, `Last-Event-ID` resume, `sync` over HTTP, heartbeats, limits,
//! reaping and shutdown.

use std::time::Duration;

use switchboard_actors::Limits;
use switchboard_http::HttpLimits;
use switchboard_protocol::{Control, Event, Message, ResumeRefusal, ServerFrame, Sync, Synced};
use uuid::Uuid;

use crate::support::{TestServer, User, connect, group, roomy_sessions, send_texts, text};

/// One block of an event stream.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    /// A heartbeat (comment line).
    Comment,
    /// An event: its `id:` and its `data:`, decoded.
    Event(Option<String>, Box<ServerFrame>),
}

/// A Server-Sent Events response being read.
struct SseStream {
    response: reqwest::Response,
    buffer: String,
    /// The id of the last message event read.
    last_id: Option<String>,
}

/// How a refused subscribe was answered.
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<String>,
}

impl SseStream {
    async fn open(
        server: &TestServer,
        user: &User,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, Refused> {
        Self::open_from(server, user, query, last_event_id, None).await
    }

    /// As [`SseStream::open`], through a proxy that says the client is
    /// `forwarded_for`.
    async fn open_from(
        server: &TestServer,
        user: &User,
        query: &str,
        last_event_id: Option<&str>,
        forwarded_for: Option<&str>,
    ) -> Result<Self, Refused> {
        let mut request = reqwest::Client::new()
            .get(server.url(&format!("/api/v1/subscribe?{query}")))
            .bearer_auth(server.token(user.id));
        if let Some(chain) = forwarded_for {
            request = request.header("x-forwarded-for", chain);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("request");
        if !response.status().is_success() {
            return Err(Refused {
                status: response.status().as_u16(),
                retry_after: response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned()),
            });
        }
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        Ok(Self {
            response,
            buffer: String::new(),
            last_id: None,
        })
    }

    /// The next block, or `None` when the stream ended; fails after 5 s.
    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                let mut comment = false;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(value.trim().to_owned());
                    } else if line.starts_with(':') {
                        comment = true;
                    }
                }
                return Some(match data {
                    Some(data) => {
                        Item::Event(id, Box::new(serde_json::from_str(&data).expect("json")))
                    }
                    None if comment => Item::Comment,
                    None => panic!("an empty block: {block:?}"),
                });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("a chunk within 5 s");
            // The end of the stream, or the server dropped the connection.
            let Ok(Some(chunk)) = chunk else {
                return None;
            };
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }

    /// The next frame, skipping heartbeats.
    async fn frame(&mut self) -> Option<(Option<String>, ServerFrame)> {
        loop {
            match self.next().await? {
                Item::Comment => {}
                Item::Event(id, frame) => return Some((id, *frame)),
            }
        }
    }

    /// The next `count` messages, checking that each event's id is its cursor.
    async fn messages(&mut self, count: usize) -> Vec<Message> {
        let mut messages = Vec::new();
        while messages.len() < count {
            match self.frame().await.expect("open") {
                (Some(id), ServerFrame::Event(frame)) => {
                    let (session, cursor) = id.split_once(':').expect("{session}:{cursor}");
                    Uuid::parse_str(session).expect("a session id");
                    assert_eq!(
                        cursor,
                        frame.cursor.to_string(),
                        "the id ends in the cursor"
                    );
                    self.last_id = Some(id);
                    if let Event::MessageNew(message) = frame.event {
                        messages.push(message);
                    }
                }
                other => panic!("expected an event, got {other:?}"),
            }
        }
        messages
    }
}

#[tokio::test]
async fn events_carry_their_cursor_as_id_and_last_event_id_resumes() {
    let server = TestServer::start().await;
    let alice = server.user();
    let bob = server.user();
    let conversation = group(&alice, &[&bob]).await;
    let mut stream = SseStream::open(&server, &bob, "device=tab-1", None)
        .await
        .expect("subscribed");
    let Some((None, ServerFrame::Control(Control::Hello(hello)))) = stream.frame().await else {
        panic!("hello first");
    };
    let first = send_texts(&alice, conversation.id, 3).await;
    assert_eq!(stream.messages(3).await, first);
    drop(stream);
    let missed = send_texts(&alice, conversation.id, 2).await;
    // A browser reconnects to the same URL with the last id it saw.
    let mut stream = SseStream::open(&server, &bob, "device=tab-1", Some("3"))
        .await
        .expect("resubscribed");
    let Some((None, ServerFrame::Control(Control::Hello(again)))) = stream.frame().await else {
        panic!("hello first");
    };
    assert_eq!((again.session_id, again.cursor), (hello.session_id, 3));
    assert_eq!(stream.messages(2).await, missed);
    let live = send_texts(&alice, conversation.id, 1).await;
    assert_eq!(stream.messages(1).await, live);
}

#[tokio::test]
async fn last_event_id_alone_resumes_a_stream_opened_without_a_device() {
    let server = TestServer::start().await;
    let alice = server.user();
    let bob = server.user();
    let conversation = group(&alice, &[&bob]).await;
    // What a browser's `new EventSource(url)` does: the same URL each time,
    // with no device, and the last id it saw in `Last-Event-ID`.
    let mut stream = SseStream::open(&server, &bob, "", None)
        .await
        .expect("subscribed");
    let Some((None, ServerFrame::Control(Control::Hello(hello)))) = stream.frame().await else {
        panic!("hello first");
    };
    let first = send_texts(&alice, conversation.id, 3).await;
    assert_eq!(stream.messages(3).await, first);
    let last = stream.last_id.clone().expect("events carry ids");
    assert_eq!(last, format!("{}:3", hello.session_id));
    drop(stream);
    let missed = send_texts(&alice, conversation.id, 2).await;
    let mut stream = SseStream::open(&server, &bob, "", Some(&last))
        .await
        .expect("resubscribed");
    let Some((None, ServerFrame::Control(Control::Hello(again)))) = stream.frame().await else {
        panic!("hello first");
    };
    assert_eq!((again.session_id, again.cursor), (hello.session_id, 3));
    assert_eq!(stream.messages(2).await, missed, "exactly the missed ones");
    let live = send_texts(&alice, conversation.id, 1).await;
    assert_eq!(stream.messages(1).await, live);
    // An id that is not one of ours is refused, not taken as a fresh start.
    let refused = SseStream::open(&server, &bob, "", Some("not-an-id")).await;
    assert_eq!(refused.err().map(|r| r.status), Some(422));
}

#[tokio::test]
async fn a_refused_resume_is_said_and_sync_over_http_fills_the_stream() {
    let server = TestServer::start().await;
    let alice = server.user();
    let bob = server.user();
    let conversation = group(&alice, &[&bob]).await;
    let sent = send_texts(&alice, conversation.id, 4).await;
    let unknown = Uuid::new_v4();
    let mut stream = SseStream::open(&server, &bob, &format!("session_id={unknown}"), Some("9"))
        .await
        .expect("subscribed");
    let Some((None, ServerFrame::Control(Control::Hello(hello)))) = stream.frame().await else {
        panic!("hello first");
    };
    let Some((None, ServerFrame::Control(Control::ResumeFailed(failed)))) = stream.frame().await
    else {
        panic!("resume_failed next");
    };
    assert_eq!(failed.session_id, Some(unknown));
    assert_eq!(failed.reason, ResumeRefusal::NotFound);
    // Bob had seen up to the first message (seq 2).
    let response = reqwest::Client::new()
        .post(server.url(&format!("/api/v1/sessions/{}/sync", hello.session_id)))
        .bearer_auth(server.token(bob.id))
        .json(&Sync {
            positions: [(conversation.id, 2)].into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let synced: Synced = response.json().await.unwrap();
    assert_eq!(synced.positions[&conversation.id], 5);
    assert_eq!(stream.messages(3).await, sent[1..]);
    let Some((None, ServerFrame::Control(Control::Synced(on_stream)))) = stream.frame().await
    else {
        panic!("synced after the events");
    };
    assert_eq!(on_stream, synced);
    // Someone else's session is not found.
    let response = reqwest::Client::new()
        .post(server.url(&format!("/api/v1/sessions/{}/sync", hello.session_id)))
        .bearer_auth(server.token(alice.id))
        .json(&Sync::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn connections_are_limited_per_address_and_per_node_and_reaped_when_clients_leave() {
    let per_ip = HttpLimits {
        connections_per_ip_max: 2,
        ..HttpLimits::default()
    };
    let server = TestServer::with_config(Limits::default(), per_ip).await;
    let bob = server.user();
    let first = SseStream::open(&server, &bob, "", None).await.unwrap();
    let ws = connect(&bob).await;
    let refused = SseStream::open(&server, &bob, "", None)
        .await
        .err()
        .expect("third from one address");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.retry_after.as_deref(), Some("5"));
    let metrics = server.node.metrics().encode();
    assert!(metrics.contains("sse_active_connections 1"), "{metrics}");
    assert!(
        metrics.contains("websocket_active_connections 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"connections_refused_total{limit="ip",transport="sse"} 1"#),
        "{metrics}"
    );
    // Leaving gives the slots back.
    drop(first);
    ws.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.node.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.node.connection_count(), 0, "reaped");
    let metrics = server.node.metrics().encode();
    assert!(metrics.contains("sse_active_connections 0"), "{metrics}");
    let _again = SseStream::open(&server, &bob, "", None).await.unwrap();

    let node_full = Limits {
        connections_max: 1,
        ..Limits::default()
    };
    let server = TestServer::with_config(node_full, HttpLimits::default()).await;
    let carol = server.user();
    let dave = server.user();
    let _held = SseStream::open(&server, &carol, "", None).await.unwrap();
    let refused = SseStream::open(&server, &dave, "", None)
        .await
        .err()
        .expect("node full");
    assert_eq!(refused.status, 503);
    assert!(refused.retry_after.is_some());

    let one_each = Limits {
        connections_per_user_max: 1,
        ..Limits::default()
    };
    let server = TestServer::with_config(one_each, HttpLimits::default()).await;
    let erin = server.user();
    let _held = connect(&erin).await;
    let error = erin
        .client
        .connect()
        .await
        .expect_err("second for one user");
    assert_eq!(error.status(), Some(429));
}

#[tokio::test]
async fn heartbeats_keep_the_stream_warm_and_shutdown_ends_it_with_a_reason() {
    let http = HttpLimits {
        sse_heartbeat_interval: Duration::from_millis(100),
        ..HttpLimits::default()
    };
    let mut server = TestServer::with_config(Limits::default(), http).await;
    let bob = server.user();
    let mut stream = SseStream::open(&server, &bob, "", None).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Item::Event(None, frame)) if matches!(*frame, ServerFrame::Control(Control::Hello(_)))
    ));
    assert_eq!(stream.next().await, Some(Item::Comment), "a heartbeat");
    let mut ws = connect(&bob).await;
    server.begin_shutdown();
    // Heartbeats may come first; then the close event.
    let closing = match stream.frame().await {
        Some((None, ServerFrame::Control(Control::Close(close)))) => close,
        other => panic!("expected the close event, got {other:?}"),
    };
    assert_eq!(closing.code, 1012);
    assert!(stream.next().await.is_none(), "the stream ends after close");
    let closed = ws.next_or_close().await.unwrap().expect_err("closed");
    assert_eq!(closed.code, Some(1012));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_reaped_and_resumes_with_last_event_id() {
    let http = HttpLimits {
        websocket_outbound_len_max: 4,
        write_stall_max: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let server = TestServer::with_config(roomy_sessions(), http).await;
    let alice = server.user();
    let bob = server.user();
    let conversation = group(&alice, &[&bob]).await;
    let mut stream = SseStream::open(&server, &bob, "device=phone", None)
        .await
        .unwrap();
    assert!(matches!(
        stream.frame().await,
        Some((None, ServerFrame::Control(Control::Hello(_))))
    ));
    // Bob stops reading while large messages pile up: his writes stall and
    // his queue fills; whichever comes first lets the connection go (the
    // stream is not being written, so no close event can go out).
    let body = "x".repeat(40 * 1024);
    let mut sent = Vec::new();
    while sent.len() < 400 && server.node.connection_count() > 0 {
        let request = text(conversation.id, &body);
        sent.push(alice.client.send(&request).await.unwrap().message);
    }
    assert_eq!(server.node.connection_count(), 0, "reaped");
    assert_eq!(server.node.session_count(), 1, "the session waits");
    // Bob reads what reached him, then resumes from the last id he saw.
    let mut got = Vec::new();
    let mut last_id = None;
    while let Some(item) = stream.next().await {
        if let Item::Event(Some(id), frame) = item
            && let ServerFrame::Event(frame) = *frame
        {
            if let Event::MessageNew(message) = frame.event {
                got.push(message);
            }
            last_id = Some(id);
        }
    }
    let last_id = last_id.unwrap_or_else(|| "0".into());
    let mut stream = SseStream::open(&server, &bob, "device=phone", Some(&last_id))
        .await
        .unwrap();
    let Some((None, ServerFrame::Control(Control::Hello(hello)))) = stream.frame().await else {
        panic!("hello first");
    };
    assert_eq!(
        format!("{}:{}", hello.session_id, hello.cursor),
        last_id,
        "resumed where he was"
    );
    let rest = sent.len() - got.len();
    got.extend(stream.messages(rest).await);
    assert_eq!(got, sent, "every message once, in order");
}

#[tokio::test]
async fn behind_a_proxy_the_limit_counts_the_address_the_proxy_saw() {
    let one_each = HttpLimits {
        connections_per_ip_max: 1,
        ..HttpLimits::default()
    };
    let server = TestServer::with_state(Limits::default(), one_each, |state| {
        state.with_client_ip_header(Some("x-forwarded-for".parse().unwrap()))
    })
    .await;
    let bob = server.user();
    // Two clients behind one proxy: one socket address, two client ones.
    let _first = SseStream::open_from(&server, &bob, "", None, Some("10.0.0.1"))
        .await
        .unwrap();
    let _second = SseStream::open_from(&server, &bob, "", None, Some("6.6.6.6, 10.0.0.2"))
        .await
        .unwrap();
    // The first entry is the client's to write; only the last one counts.
    let refused = SseStream::open_from(&server, &bob, "", None, Some("9.9.9.9, 10.0.0.1"))
        .await
        .err()
        .expect("10.0.0.1 already holds its one connection");
    assert_eq!(refused.status, 429);
}
