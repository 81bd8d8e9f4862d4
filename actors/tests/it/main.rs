//! Supervision of conversation actors, through the `Node` API: started on
//! demand, stopped when idle, restarted after a panic within bounds, and
//! behind a bounded mailbox.
//!
//! The store is the in-memory store wrapped to inject faults (a panic on one
//! chosen send, a gate that holds sends back); time is a manual clock.

// Tests drive the system from outside: real time and random ids are fine here.
#![allow(clippy::disallowed_methods)]

mod faults;

use std::sync::Arc;
use std::time::Duration;

use faults::{FaultyStore, ManualClock, QuietBus};
use switchboard_actors::{
    ActorError, BusLimits, ConnectRequest, ConnectionLink, Dependencies, Limits, Node, Supervisor,
    Transport,
};
use switchboard_protocol::{
    AddMember, ConversationKind, CreateConversation, Message, Role, SendMessage, Sync,
};
use switchboard_storage::{Bus, BusSignal, Clock, OsRandom, Store};
use switchboard_supervisors::RestartPolicy;
use tokio::sync::mpsc;
use uuid::Uuid;

struct Fixture {
    node: Node,
    store: Arc<FaultyStore>,
    clock: Arc<ManualClock>,
    owner: Uuid,
    conversation: Uuid,
}

async fn fixture(limits: Limits) -> Fixture {
    fixture_with_bus(limits, None).await
}

async fn fixture_with_bus(
    limits: Limits,
    bus: Option<(Arc<dyn Bus>, mpsc::Receiver<BusSignal>)>,
) -> Fixture {
    let store = Arc::new(FaultyStore::new());
    let clock = Arc::new(ManualClock::default());
    let node = Node::start(
        Dependencies {
            store: store.clone(),
            clock: clock.clone(),
            random: Arc::new(OsRandom),
            bus,
            blobs: None,
            feed: Arc::new(switchboard_storage::MemoryStore::new()),
            analytics: None,
            feed_cache: None,
            supervisor: Supervisor::new(clock.clone()),
        },
        limits,
    )
    .await
    .unwrap();
    let owner = Uuid::new_v4();
    let (conversation, _) = node
        .create_conversation(
            owner,
            CreateConversation {
                kind: ConversationKind::Group,
                title: None,
                member_ids: vec![],
            },
        )
        .await
        .unwrap();
    Fixture {
        node,
        store,
        clock,
        owner,
        conversation: conversation.id,
    }
}

fn message(conversation_id: Uuid, content: &str) -> SendMessage {
    SendMessage {
        conversation_id,
        encrypted_content: content.into(),
        nonce: "bm9uY2U=".into(),
        message_type: "text".into(),
        idempotency_key: None,
    }
}

fn metric(node: &Node, name: &str) -> f64 {
    node.metrics()
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type SendTask = tokio::task::JoinHandle<Result<(Message, bool), ActorError>>;

/// Fills a conversation mailbox of two: one send held inside the store at
/// its gate, one waiting behind it. Open the gate to let both finish.
async fn fill_mailbox_of_two(f: &Fixture) -> (SendTask, SendTask) {
    f.store.close_gate();
    let spawn_send = || {
        let (node, owner, id) = (f.node.clone(), f.owner, f.conversation);
        tokio::spawn(async move { node.send(owner, message(id, "aGk=")).await })
    };
    let held = spawn_send();
    eventually("the first send reaches the store", || {
        f.store.waiting() == 1
    })
    .await;
    let queued = spawn_send();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (held, queued)
}

/// Sends that queue behind a commit go to the store together, in the
/// order the actor took them, and each caller gets its own message.
#[tokio::test]
async fn sends_queued_behind_a_commit_are_committed_together() {
    let f = fixture(Limits::default()).await;
    f.store.close_gate();
    let send = |content: &'static str| {
        let (node, owner, id) = (f.node.clone(), f.owner, f.conversation);
        tokio::spawn(async move { node.send(owner, message(id, content)).await })
    };
    let first = send("MA==");
    eventually("the first send reaches the store", || {
        f.store.waiting() == 1
    })
    .await;
    let queued: Vec<_> = ["MQ==", "Mg==", "Mw==", "NA==", "NQ=="]
        .into_iter()
        .map(send)
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.store.open_gate();
    assert_eq!(first.await.unwrap().unwrap().0.seq, 2);
    let mut seqs = Vec::new();
    for task in queued {
        let (message, created) = task.await.unwrap().unwrap();
        assert!(created);
        seqs.push(message.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [3, 4, 5, 6, 7]);
    assert_eq!(f.store.batches(), [1, 5], "one store call for the five");
}

#[tokio::test]
async fn a_panicking_actor_is_restarted_after_its_backoff_and_loses_nothing() {
    let restart = RestartPolicy {
        restarts_max: 3,
        restart_window: Duration::from_secs(60),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(10),
    };
    let f = fixture(Limits {
        restart,
        ..Limits::default()
    })
    .await;
    f.store.panic_on("Ym9vbQ==");
    let first = f
        .node
        .send(f.owner, message(f.conversation, "aGk="))
        .await
        .unwrap();
    assert_eq!(first.0.seq, 2);

    let error = f
        .node
        .send(f.owner, message(f.conversation, "Ym9vbQ=="))
        .await
        .unwrap_err();
    assert!(matches!(error, ActorError::Unavailable(_)), "{error:?}");
    eventually("the failure is recorded", || {
        metric(&f.node, "conversation_actor_failures_total") == 1.0
            && metric(&f.node, "conversation_actors_active") == 0.0
    })
    .await;

    // Within the backoff the conversation is held back...
    let error = f
        .node
        .send(f.owner, message(f.conversation, "aGk="))
        .await
        .unwrap_err();
    assert!(matches!(error, ActorError::Unavailable(_)), "{error:?}");
    // ...and after it a fresh actor takes over, with the log intact.
    f.clock.advance(Duration::from_secs(1));
    let (after, _) = f
        .node
        .send(f.owner, message(f.conversation, "aGk="))
        .await
        .unwrap();
    assert_eq!(after.seq, 3, "the panicked send took no seq");
    let seqs: Vec<i64> = f
        .node
        .events(f.owner, f.conversation, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(switchboard_protocol::Event::seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[tokio::test]
async fn an_idle_actor_stops_and_the_next_command_starts_another() {
    let f = fixture(Limits {
        conversation_idle_timeout: Duration::from_millis(40),
        ..Limits::default()
    })
    .await;
    f.node
        .send(f.owner, message(f.conversation, "aGk="))
        .await
        .unwrap();
    assert_eq!(metric(&f.node, "conversation_actors_active"), 1.0);
    f.clock.advance(Duration::from_secs(1));
    eventually("the idle actor stops", || {
        metric(&f.node, "conversation_actors_active") == 0.0
    })
    .await;
    let (again, _) = f
        .node
        .send(f.owner, message(f.conversation, "aGk="))
        .await
        .unwrap();
    assert_eq!(again.seq, 3);
    assert_eq!(metric(&f.node, "conversation_actors_active"), 1.0);
    assert_eq!(metric(&f.node, "conversation_actor_failures_total"), 0.0);
}

#[tokio::test]
async fn a_full_mailbox_refuses_instead_of_growing() {
    let f = fixture(Limits {
        conversation_mailbox_len_max: 2,
        ..Limits::default()
    })
    .await;
    // One send is inside the store, one waits in the mailbox: that is two.
    let (held, queued) = fill_mailbox_of_two(&f).await;
    let error = f
        .node
        .send(f.owner, message(f.conversation, "aGk="))
        .await
        .unwrap_err();
    assert!(matches!(error, ActorError::Overloaded(_)), "{error:?}");

    f.store.open_gate();
    let seqs = [
        held.await.unwrap().unwrap().0.seq,
        queued.await.unwrap().unwrap().0.seq,
    ];
    assert_eq!(seqs, [2, 3], "queued work completes in order once released");
    assert_eq!(
        metric(&f.node, "mailbox_full_total{actor=\"conversation\"}"),
        1.0
    );
}

/// A catch-up the bus asks for while the conversation actor's mailbox is full
/// is not lost: it is owed, and retried until the actor takes it, so an
/// event another node wrote (and whose bus message never came) still
/// reaches this node's clients, with nothing after it to reveal the gap.
#[tokio::test]
async fn a_catch_up_dropped_on_a_full_mailbox_is_retried_until_taken() {
    let (signals, receiver) = mpsc::channel(16);
    let bus: Arc<dyn Bus> = Arc::new(QuietBus);
    let f = fixture_with_bus(
        Limits {
            conversation_mailbox_len_max: 2,
            // The sweep would also catch up, and take a mailbox slot: this
            // test is about the owed catch-up alone.
            bus: BusLimits {
                sweep_every: Duration::from_secs(3600),
                ..BusLimits::default()
            },
            ..Limits::default()
        },
        Some((bus, receiver)),
    )
    .await;
    let (link, mut receivers) = ConnectionLink::new(64);
    let _connection = f
        .node
        .connect(ConnectRequest {
            user: f.owner,
            link,
            transport: Transport::Sse,
            device: None,
            resume: None,
        })
        .await
        .unwrap();
    let (held, queued) = fill_mailbox_of_two(&f).await;
    signals
        .send(BusSignal::Subscribed(vec![f.conversation]))
        .await
        .unwrap();
    eventually("the catch-up is dropped", || {
        metric(&f.node, "bus_notes_dropped_total") >= 1.0
    })
    .await;
    f.store.open_gate();
    held.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    // Another node adds a member; its bus message never arrives here.
    let stranger = Uuid::new_v4();
    f.store
        .add_member(
            f.conversation,
            f.owner,
            stranger,
            Role::Member,
            f.clock.now(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let frame = tokio::time::timeout_at(deadline, receivers.frames.recv())
            .await
            .expect("the member.joined event arrives")
            .expect("link open");
        let text = String::from_utf8(frame.json.to_vec()).unwrap();
        if text.contains("member.joined") {
            assert!(text.contains(&stranger.to_string()), "{text}");
            break;
        }
    }
}

/// A member removed and added back while their client's `sync` is being
/// answered still gets the join and what follows, though the sync's read of
/// their conversations (taken before the join) says they are not a member.
#[tokio::test]
async fn a_join_after_a_syncs_membership_read_still_reaches_the_client() {
    let f = fixture(Limits::default()).await;
    let bob = Uuid::new_v4();
    let add_bob = || {
        f.node.add_member(
            f.owner,
            f.conversation,
            AddMember {
                user_id: bob,
                role: None,
            },
        )
    };
    add_bob().await.unwrap();
    let (link, mut receivers) = ConnectionLink::new(64);
    let connection = f
        .node
        .connect(ConnectRequest {
            user: bob,
            link,
            transport: Transport::Sse,
            device: None,
            resume: None,
        })
        .await
        .unwrap();
    f.node
        .remove_member(f.owner, f.conversation, bob)
        .await
        .unwrap();
    let left_at = 3;

    f.store.hold_positions();
    let sync = tokio::spawn({
        let (node, session, conversation) =
            (f.node.clone(), connection.session_id(), f.conversation);
        async move {
            node.sync(
                bob,
                session,
                Sync {
                    positions: [(conversation, left_at)].into(),
                },
            )
            .await
        }
    });
    eventually("the sync reads bob's conversations", || {
        f.store.positions_held() == 1
    })
    .await;
    add_bob().await.unwrap();
    let (sent, _) = f
        .node
        .send(f.owner, message(f.conversation, "YWdhaW4="))
        .await
        .unwrap();
    f.store.release_positions();
    let synced = sync.await.unwrap().unwrap();
    assert_eq!(synced.not_member, vec![f.conversation]);

    // Whatever else came first, the join (seq 4) and the message (seq 5)
    // follow the `synced` that said bob had gone.
    let mut after_synced = Vec::new();
    let mut synced_seen = false;
    while after_synced.len() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), receivers.frames.recv())
            .await
            .expect("the join and the message arrive")
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&frame.json).unwrap();
        let kind = json["type"].as_str().unwrap().to_owned();
        if kind == "synced" {
            synced_seen = true;
        } else if synced_seen && frame.cursor.is_some() {
            after_synced.push((kind, json["data"]["seq"].as_i64().unwrap()));
        }
    }
    assert_eq!(
        after_synced,
        vec![
            ("member.joined".to_owned(), 4),
            ("message.new".to_owned(), sent.seq)
        ]
    );
}
