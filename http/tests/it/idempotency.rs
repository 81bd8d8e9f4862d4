//! A retried send is stored once and answers the same message.

use switchboard_protocol::{ErrorCode, Event};

use crate::support::{TestServer, group, log, text};

#[tokio::test]
async fn a_retried_send_is_stored_once_and_returns_the_same_message() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user(), server.user());
    let conversation = group(&alice, &[&bob]).await;
    let mut request = text(conversation.id, "hello");
    request.idempotency_key = Some("client-msg-1".into());

    let first = alice.client.send(&request).await.unwrap();
    let retry = alice.client.send(&request).await.unwrap();
    assert!(first.created);
    assert!(!retry.created, "the retry is answered as a replay");
    assert_eq!(first.message, retry.message);

    // Concurrent retries of another message race each other; one wins.
    request.idempotency_key = Some("client-msg-2".into());
    let attempts = (0..8).map(|_| {
        let client = alice.client.clone();
        let request = request.clone();
        async move { client.send(&request).await.unwrap() }
    });
    let answers = futures_util::future::join_all(attempts).await;
    assert_eq!(answers.iter().filter(|a| a.created).count(), 1);
    assert!(answers.iter().all(|a| a.message == answers[0].message));

    let news = log(&alice, conversation.id)
        .await
        .into_iter()
        .filter(|e| matches!(e, Event::MessageNew(_)))
        .count();
    assert_eq!(news, 2, "two keys, two messages");

    // The same key from another sender is another message.
    let other = bob.client.send(&request).await.unwrap();
    assert!(other.created);
    assert_ne!(other.message.id, answers[0].message.id);
}

#[tokio::test]
async fn a_key_reused_for_a_different_message_is_a_conflict() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await;
    let mut request = text(conversation.id, "one");
    request.idempotency_key = Some("k".into());
    alice.client.send(&request).await.unwrap();
    let mut different = text(conversation.id, "two");
    different.idempotency_key = Some("k".into());
    let error = alice.client.send(&different).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict));
    assert!(!error.is_retryable());
}
