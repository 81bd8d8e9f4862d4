//! Messages reach members live, in order, and nothing reaches anyone else.

use std::time::Duration;

use switchboard_actors::Limits;
use switchboard_client::EventStream;
use switchboard_http::HttpLimits;
use switchboard_protocol::{Control, ErrorCode, Event, ServerFrame};

use crate::support::{TestServer, connect, events, group, next, text};

#[tokio::test]
async fn members_see_each_others_messages_live_in_seq_order() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await;
    let mut alice_ws = connect(&alice).await;
    let mut bob_ws = connect(&bob).await;

    // Both send at once, so the actor has to order interleaved writes.
    let send_all = |user: &crate::support::User, who: &'static str| {
        let client = user.client.clone();
        let id = conversation.id;
        async move {
            let mut acked = Vec::new();
            for i in 0..20 {
                let sent = client
                    .send(&text(id, &format!("{who} {i}")))
                    .await
                    .expect("send");
                acked.push(sent.message);
            }
            acked
        }
    };
    let (from_alice, from_bob) = tokio::join!(send_all(&alice, "alice"), send_all(&bob, "bob"));
    let mut acked: Vec<_> = from_alice.into_iter().chain(from_bob).collect();
    acked.sort_by_key(|m| m.seq);

    for stream in [&mut alice_ws, &mut bob_ws] {
        let received = events(stream, acked.len()).await;
        let messages: Vec<_> = received
            .into_iter()
            .map(|e| match e {
                Event::MessageNew(m) => m,
                other => panic!("unexpected event {other:?}"),
            })
            .collect();
        assert_eq!(
            messages, acked,
            "every acknowledged message, once, in seq order"
        );
        assert!(next(stream).await.is_none(), "nothing more arrives");
    }
    // seq is gap-free: conversation.created took 1, the messages 2..=41.
    let seqs: Vec<i64> = acked.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (2..=41).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_non_member_can_neither_read_nor_send_nor_learn_the_conversation_exists() {
    let server = TestServer::start().await;
    let (alice, bob, mallory) = (server.user(), server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await;
    let sent = alice
        .client
        .send(&text(conversation.id, "secret"))
        .await
        .expect("send");
    let mut mallory_ws = connect(&mallory).await;

    let missing = uuid::Uuid::new_v4();
    let m = &mallory.client;
    let attempts = [
        m.conversation(conversation.id).await.map(|_| ()),
        m.messages(conversation.id, None, None, None)
            .await
            .map(|_| ()),
        m.events(conversation.id, 0, 10).await.map(|_| ()),
        m.send(&text(conversation.id, "let me in"))
            .await
            .map(|_| ()),
        m.edit(
            sent.message.id,
            &switchboard_protocol::EditMessage {
                encrypted_content: "aGk=".into(),
                nonce: "bm9uY2U=".into(),
            },
        )
        .await
        .map(|_| ()),
        m.delete(sent.message.id).await,
        m.mark_read(conversation.id, 1).await,
        m.add_member(
            conversation.id,
            &switchboard_protocol::AddMember {
                user_id: mallory.id,
                role: None,
            },
        )
        .await
        .map(|_| ()),
    ];
    for attempt in attempts {
        let error = attempt.expect_err("a non-member is refused");
        assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
        assert!(!error.to_string().contains("secret"));
    }
    // The answer for a conversation that exists equals the one for one that does not.
    let real = m
        .conversation(conversation.id)
        .await
        .unwrap_err()
        .to_string();
    let fake = m.conversation(missing).await.unwrap_err().to_string();
    assert_eq!(real, fake);
    // Nothing of it shows up in the caller's list or on their socket.
    assert!(m.conversations().await.unwrap().conversations.is_empty());
    alice
        .client
        .send(&text(conversation.id, "still secret"))
        .await
        .unwrap();
    assert!(next(&mut mallory_ws).await.is_none());
    // And nothing was written: the log has the creation and Alice's two sends.
    let log = crate::support::log(&alice, conversation.id).await;
    assert_eq!(log.len(), 3);
}

#[tokio::test]
async fn the_first_frame_is_hello_and_pings_are_answered() {
    let server = TestServer::start().await;
    let alice = server.user();
    let mut stream = alice.client.connect().await.unwrap();
    let Some(ServerFrame::Control(switchboard_protocol::Control::Hello(hello))) =
        next(&mut stream).await
    else {
        panic!("hello first");
    };
    assert_eq!(hello.cursor, 0);
    stream.send_text(r#"{"type":"ping"}"#).await.unwrap();
    let pong = next(&mut stream).await;
    assert_eq!(
        pong,
        Some(ServerFrame::Control(switchboard_protocol::Control::Pong))
    );
    stream.send_text("not json").await.unwrap();
    let error = next(&mut stream).await;
    assert!(
        matches!(error, Some(ServerFrame::Control(switchboard_protocol::Control::Error(ref e))) if e.code == ErrorCode::BadRequest),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_websocket_without_a_valid_token_is_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    let stranger = switchboard_client::Client::new(&server.base, "not-a-token");
    let error = stranger.connect().await.expect_err("refused");
    assert_eq!(error.status(), Some(401));
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized));
}

/// A server that pings every 50 ms and closes a client silent for 300 ms,
/// and a connection to it past its `hello`.
async fn impatient_server() -> (TestServer, EventStream) {
    let limits = HttpLimits {
        websocket_ping_interval: Duration::from_millis(50),
        websocket_idle_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let server = TestServer::with_config(Limits::default(), limits).await;
    let mut stream = server.user().client.connect().await.unwrap();
    assert!(matches!(
        next(&mut stream).await,
        Some(ServerFrame::Control(Control::Hello(_)))
    ));
    (server, stream)
}

#[tokio::test]
async fn a_client_that_answers_nothing_is_closed_as_stale() {
    let (server, _stream) = impatient_server().await;
    // Not reading leaves the server's pings unanswered. (Reading the close
    // would answer them, into a socket the server has shut.)
    let mut metrics = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = server.metrics().await;
        if metrics.contains("websocket_stale_closes_total 1") {
            return;
        }
    }
    panic!("no stale close: {metrics}");
}

#[tokio::test]
async fn a_client_that_keeps_answering_stays_open_past_the_idle_timeout() {
    let (server, mut stream) = impatient_server().await;
    // A second and a half, four idle timeouts, of a frame every 100 ms.
    for _ in 0..15 {
        stream.send_text(r#"{"type":"ping"}"#).await.unwrap();
        assert_eq!(
            stream.next_or_close().await.unwrap(),
            Ok(ServerFrame::Control(Control::Pong))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("websocket_stale_closes_total 0"),
        "{metrics}"
    );
}
