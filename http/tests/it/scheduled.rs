//! Scheduled messages over a real server: delivered once, at their time,
//! as the next `seq`; cancelled ones never; edited ones as edited; a
//! removed sender's never, told to them; every bound refused.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use switchboard_actors::Limits;
use switchboard_client::{ClientError, EventStream};
use switchboard_protocol::{
    Control, EditScheduled, ErrorCode, Event, ScheduleMessage, ScheduledFailure, ScheduledMessage,
    ScheduledStatus, ServerFrame,
};
use uuid::Uuid;

use crate::support::{TestServer, User, connect, group, log, text};

fn later(body: &str, deliver_at: DateTime<Utc>) -> ScheduleMessage {
    ScheduleMessage {
        deliver_at,
        encrypted_content: STANDARD.encode(body),
        nonce: STANDARD.encode("nonce-0123456789"),
        message_type: "text".into(),
        idempotency_key: None,
    }
}

fn in_secs(seconds: i64) -> DateTime<Utc> {
    Utc::now() + TimeDelta::seconds(seconds)
}

async fn schedule(user: &User, conversation: Uuid, body: &ScheduleMessage) -> ScheduledMessage {
    let scheduled = user
        .client
        .schedule(conversation, body)
        .await
        .expect("schedule");
    assert!(scheduled.created);
    scheduled.entry
}

fn status(result: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    refusal(result).0
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, Option<u64>) {
    match result {
        Err(ClientError::Api {
            status,
            retry_after,
            ..
        }) => (status, retry_after),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Messages that arrive on `stream` within `wait`.
async fn arrivals(stream: &mut EventStream, count: usize, wait: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while events.len() < count {
        let Ok(frame) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        if let Some(ServerFrame::Event(frame)) = frame.expect("stream") {
            events.push(frame.event);
        }
    }
    events
}

fn body_of(event: &Event) -> String {
    match event {
        Event::MessageNew(m) => {
            String::from_utf8(STANDARD.decode(&m.encrypted_content).unwrap()).unwrap()
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_arrives_once_at_its_time_as_the_next_seq() {
    let server = TestServer::start().await;
    let (owner, member) = (server.user(), server.user());
    let conversation = group(&owner, &[&member]).await.id;
    owner
        .client
        .send(&text(conversation, "now"))
        .await
        .expect("send");
    let mut stream = connect(&member).await;

    let soon = schedule(&owner, conversation, &later("later", in_secs(2))).await;
    assert_eq!(soon.status, ScheduledStatus::Pending);
    let cancelled = schedule(&owner, conversation, &later("never", in_secs(2))).await;
    let edited = schedule(&owner, conversation, &later("draft", in_secs(2))).await;
    owner
        .client
        .cancel_scheduled(cancelled.id)
        .await
        .expect("cancel");
    let new_time = in_secs(3);
    let changed = owner
        .client
        .edit_scheduled(
            edited.id,
            &EditScheduled {
                deliver_at: Some(new_time),
                encrypted_content: Some(STANDARD.encode("final")),
                nonce: Some(STANDARD.encode("nonce-abcdefghij")),
            },
        )
        .await
        .expect("edit");
    assert_eq!(changed.deliver_at, new_time.trunc_ms());
    let listed: Vec<Uuid> = owner
        .client
        .scheduled(Some(conversation))
        .await
        .expect("list")
        .scheduled_messages
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        listed,
        vec![soon.id, edited.id],
        "by time due, cancelled gone"
    );

    let got = arrivals(&mut stream, 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "both arrived: {got:?}");
    assert_eq!(body_of(&got[0]), "later");
    assert_eq!(body_of(&got[1]), "final");
    for (event, due) in got.iter().zip([soon.deliver_at, changed.deliver_at]) {
        let Event::MessageNew(message) = event else {
            unreachable!()
        };
        assert_eq!(message.sender_id, owner.id);
        assert!(message.created_at >= due, "not before its time");
        // About its time: the dispatcher wakes for it, it does not poll.
        assert!(
            message.created_at - due < TimeDelta::seconds(2),
            "{message:?}"
        );
    }
    assert_eq!(
        got.iter().map(Event::seq).collect::<Vec<_>>(),
        vec![3, 4],
        "the next seqs after the conversation's two events"
    );
    // Nothing more: the cancelled one never goes, nor either twice.
    assert!(
        arrivals(&mut stream, 1, Duration::from_secs(2))
            .await
            .is_empty()
    );
    let messages = log(&owner, conversation)
        .await
        .iter()
        .filter(|e| matches!(e, Event::MessageNew(_)))
        .count();
    assert_eq!(messages, 3);

    let sent = server.store.scheduled(soon.id).await.unwrap().unwrap();
    assert_eq!(sent.status, ScheduledStatus::Sent);
    let Event::MessageNew(first) = &got[0] else {
        unreachable!()
    };
    assert_eq!(sent.message_id, Some(first.id));
    assert!(
        owner
            .client
            .scheduled(None)
            .await
            .unwrap()
            .scheduled_messages
            .is_empty(),
        "sent ones are not listed"
    );
    // Once sent or cancelled, neither changes nor cancels.
    for id in [soon.id, cancelled.id] {
        assert_eq!(
            refusal(owner.client.cancel_scheduled(id).await).0,
            409,
            "cancel"
        );
        let edit = EditScheduled {
            deliver_at: Some(in_secs(60)),
            ..EditScheduled::default()
        };
        assert_eq!(
            refusal(owner.client.edit_scheduled(id, &edit).await).0,
            409,
            "edit"
        );
    }
    let metrics = server.metrics().await;
    for line in [
        "scheduled_messages_total{outcome=\"sent\"} 2",
        "scheduled_messages_total{outcome=\"cancelled\"} 1",
        "scheduled_messages_pending 0",
        "scheduled_delivery_lag_seconds_count 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_sender_gets_nothing_sent_and_is_told() {
    let server = TestServer::start().await;
    let (owner, member) = (server.user(), server.user());
    let conversation = group(&owner, &[&member]).await.id;
    let mut stream = connect(&member).await;
    let entry = schedule(&member, conversation, &later("gone by then", in_secs(2))).await;
    owner
        .client
        .remove_member(conversation, member.id)
        .await
        .expect("remove");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let told = loop {
        let frame = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("scheduled.failed within 20 s")
            .expect("stream")
            .expect("open");
        if let ServerFrame::Control(Control::ScheduledFailed(failed)) = frame {
            break failed;
        }
    };
    assert_eq!(told.id, entry.id);
    assert_eq!(told.conversation_id, conversation);
    assert_eq!(told.reason, ScheduledFailure::NotMember);

    let listed = member
        .client
        .scheduled(None)
        .await
        .unwrap()
        .scheduled_messages;
    assert_eq!(listed.len(), 1, "the failure is listed");
    assert_eq!(listed[0].status, ScheduledStatus::Failed);
    assert_eq!(listed[0].failure_reason, Some(ScheduledFailure::NotMember));
    assert!(
        log(&owner, conversation)
            .await
            .iter()
            .all(|e| !matches!(e, Event::MessageNew(_))),
        "nothing was sent"
    );
    assert!(
        server
            .metrics()
            .await
            .contains("scheduled_messages_total{outcome=\"failed\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_is_refused_with_a_reason() {
    let mut limits = Limits::default();
    limits.scheduled.per_user_max = 2;
    limits.scheduled.total_max = 3;
    let server = TestServer::with_limits(limits).await;
    let (owner, member, stranger) = (server.user(), server.user(), server.user());
    let conversation = group(&owner, &[&member]).await.id;

    // Times.
    for (at, why) in [
        (in_secs(-10), "in the past"),
        (
            Utc::now() + TimeDelta::milliseconds(300),
            "under a second ahead",
        ),
        (in_secs(366 * 86_400), "past 365 days"),
    ] {
        let result = owner.client.schedule(conversation, &later("x", at)).await;
        assert_eq!(status(result), 422, "{why}");
    }
    // Content as for POST /messages, no attachment, members only.
    let mut bad = later("x", in_secs(60));
    bad.encrypted_content = "not base64!".into();
    assert_eq!(status(owner.client.schedule(conversation, &bad).await), 422);
    let mut big = later("x", in_secs(60));
    big.encrypted_content = STANDARD.encode(vec![b'a'; 64 * 1024]);
    assert_eq!(status(owner.client.schedule(conversation, &big).await), 413);
    let mut audio = later("x", in_secs(60));
    audio.message_type = "audio".into();
    assert_eq!(
        status(owner.client.schedule(conversation, &audio).await),
        422
    );
    let result = stranger
        .client
        .schedule(conversation, &later("x", in_secs(60)))
        .await;
    assert_eq!(status(result), 404);

    // A repeated key answers the entry; reused for another, a conflict.
    let keyed = ScheduleMessage {
        idempotency_key: Some("once".into()),
        ..later("keyed", in_secs(100))
    };
    let first = schedule(&owner, conversation, &keyed).await;
    let again = owner.client.schedule(conversation, &keyed).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.entry, first);
    let reused = ScheduleMessage {
        idempotency_key: Some("once".into()),
        ..later("other", in_secs(100))
    };
    assert_eq!(
        status(owner.client.schedule(conversation, &reused).await),
        409
    );

    // The user's cap: the answer says when their next entry is due.
    schedule(&owner, conversation, &later("second", in_secs(200))).await;
    let (code, retry_after) = refusal(
        owner
            .client
            .schedule(conversation, &later("third", in_secs(50)))
            .await,
    );
    assert_eq!(code, 429);
    let retry_after = retry_after.expect("Retry-After");
    assert!((95..=101).contains(&retry_after), "{retry_after}");
    // The node's cap, for a user with room of their own.
    schedule(&member, conversation, &later("m1", in_secs(30))).await;
    let (code, retry_after) = refusal(
        member
            .client
            .schedule(conversation, &later("m2", in_secs(60)))
            .await,
    );
    assert_eq!((code, retry_after.is_some()), (429, true));

    // Changes: something to change, content with its nonce, one's own.
    let client = &owner.client;
    let change = |edit: EditScheduled| async move { client.edit_scheduled(first.id, &edit).await };
    assert_eq!(status(change(EditScheduled::default()).await), 422);
    let half = EditScheduled {
        encrypted_content: Some(STANDARD.encode("x")),
        ..EditScheduled::default()
    };
    assert_eq!(status(change(half).await), 422);
    let past = EditScheduled {
        deliver_at: Some(in_secs(-1)),
        ..EditScheduled::default()
    };
    assert_eq!(status(change(past).await), 422);
    let theirs = member
        .client
        .edit_scheduled(
            first.id,
            &EditScheduled {
                deliver_at: Some(in_secs(90)),
                ..EditScheduled::default()
            },
        )
        .await;
    assert_eq!(status(theirs), 404);
    assert_eq!(status(member.client.cancel_scheduled(first.id).await), 404);
    assert_eq!(
        status(owner.client.cancel_scheduled(Uuid::now_v7()).await),
        404
    );
    // Nobody else's entries are listed.
    let listed = member
        .client
        .scheduled(Some(conversation))
        .await
        .unwrap()
        .scheduled_messages;
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|e| e.sender_id == member.id));
    // And a refused request wrote nothing.
    assert_eq!(server.store.scheduled_pending().await.unwrap(), 3);
    match owner.client.schedule(conversation, &bad).await {
        Err(ClientError::Api { code, .. }) => assert_eq!(code, Some(ErrorCode::Unprocessable)),
        other => panic!("{other:?}"),
    }
}

trait TruncMs {
    fn trunc_ms(self) -> Self;
}

impl TruncMs for DateTime<Utc> {
    fn trunc_ms(self) -> Self {
        use chrono::DurationRound;
        self.duration_trunc(TimeDelta::milliseconds(1)).unwrap()
    }
}
