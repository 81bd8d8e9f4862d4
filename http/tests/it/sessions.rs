//! Sessions over real WebSockets: resume from the buffer, resume refused
//! (overflowed, expired) and `sync` from the store, slow consumers, and the
//! reconnect chaos test.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchboard_actors::Limits;
use switchboard_client::EventStream;
use switchboard_http::HttpLimits;
use switchboard_protocol::{
    ClientFrame, Control, Conversation, Event, EventFrame, Message, Resume, ResumeRefusal,
    ServerFrame, Sync,
};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::support::{Rng, TestServer, User, group, next, roomy_sessions, send_texts, text};

/// A client that keeps its place: the session and cursor it last saw, and
/// per conversation the last `seq` and every message it received.
pub(crate) struct Follower {
    /// The same user through each node; `node` picks the next connection's.
    users: Vec<User>,
    pub(crate) node: usize,
    session: Option<(Uuid, u64)>,
    positions: BTreeMap<Uuid, i64>,
    messages: HashMap<Uuid, Vec<(i64, Uuid)>>,
    /// How each connection started: `resumed`, `synced`, `fresh`.
    starts: Vec<&'static str>,
}

impl Follower {
    pub(crate) fn new(user: User) -> Self {
        Self::on_nodes(vec![user])
    }

    /// A follower that can connect through any of `users`' nodes.
    pub(crate) fn on_nodes(users: Vec<User>) -> Self {
        Self {
            users,
            node: 0,
            session: None,
            positions: BTreeMap::new(),
            messages: HashMap::new(),
            starts: Vec::new(),
        }
    }

    async fn frame(stream: &mut EventStream) -> ServerFrame {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream")
            .expect("stream open")
    }

    /// Connects: resumes its session if it has one, else (or when the
    /// resume is refused) syncs from its positions. Returns with live
    /// delivery started.
    async fn open(&mut self) -> EventStream {
        let mut stream = self.users[self.node]
            .client
            .connect()
            .await
            .expect("connect");
        let ServerFrame::Control(Control::Hello(hello)) = Self::frame(&mut stream).await else {
            panic!("hello first");
        };
        if let Some((session_id, cursor)) = self.session {
            stream
                .send(&ClientFrame::Resume(Resume { session_id, cursor }))
                .await
                .expect("resume");
            match Self::frame(&mut stream).await {
                ServerFrame::Control(Control::Resumed(resumed)) => {
                    assert_eq!((resumed.session_id, resumed.cursor), (session_id, cursor));
                    self.starts.push("resumed");
                    return stream;
                }
                ServerFrame::Control(Control::ResumeFailed(failed)) => {
                    assert_eq!(failed.session_id, Some(session_id));
                    self.starts.push(match failed.reason {
                        ResumeRefusal::NotFound => "expired",
                        ResumeRefusal::Overflowed => "overflowed",
                        ResumeRefusal::InvalidCursor => panic!("cursor {cursor} is valid"),
                    });
                }
                other => panic!("expected resumed or resume_failed, got {other:?}"),
            }
        } else {
            self.starts.push("fresh");
        }
        self.session = Some((hello.session_id, hello.cursor));
        self.sync(&mut stream).await;
        stream
    }

    /// Sends `sync` with every known position and applies what comes until
    /// `synced`, syncing again while anything is incomplete.
    async fn sync(&mut self, stream: &mut EventStream) {
        let mut positions = self.positions.clone();
        loop {
            stream
                .send(&ClientFrame::Sync(Sync {
                    positions: positions.clone(),
                }))
                .await
                .expect("sync");
            let synced = loop {
                match Self::frame(stream).await {
                    ServerFrame::Control(Control::Synced(synced)) => break synced,
                    ServerFrame::Event(frame) => self.apply(frame),
                    other => panic!("unexpected {other:?} during sync"),
                }
            };
            assert!(synced.not_member.is_empty(), "{synced:?}");
            for (conversation, seq) in &synced.positions {
                let mine = self.positions.entry(*conversation).or_insert(*seq);
                assert_eq!(mine, seq, "synced position of {conversation}");
            }
            if synced.incomplete.is_empty() {
                return;
            }
            positions = synced
                .incomplete
                .iter()
                .map(|c| (*c, self.positions[c]))
                .collect();
        }
    }

    /// Applies one event: it must be the next of its conversation.
    fn apply(&mut self, frame: EventFrame) {
        let event = frame.event;
        let conversation = event.conversation_id();
        let last = self
            .positions
            .get_mut(&conversation)
            .unwrap_or_else(|| panic!("an event of unknown {conversation}"));
        assert_eq!(
            event.seq(),
            *last + 1,
            "{conversation}: after seq {last} came {} (a gap, duplicate or reorder)",
            event.seq()
        );
        *last = event.seq();
        let (session, cursor) = self.session.as_mut().expect("a session");
        assert!(
            frame.cursor > *cursor,
            "cursors ascend in session {session}"
        );
        *cursor = frame.cursor;
        if let Event::MessageNew(message) = event {
            self.messages
                .entry(conversation)
                .or_default()
                .push((message.seq, message.id));
        }
    }

    /// Reads live frames until `until`; `false` if the server closed.
    async fn read_until(&mut self, stream: &mut EventStream, until: tokio::time::Instant) -> bool {
        loop {
            match tokio::time::timeout_at(until, stream.next_or_close()).await {
                Err(_) => return true,
                Ok(Ok(Ok(ServerFrame::Event(frame)))) => self.apply(frame),
                Ok(Ok(Ok(ServerFrame::Control(Control::Pong)))) => {}
                Ok(Ok(Ok(other))) => panic!("unexpected {other:?}"),
                Ok(Ok(Err(_)) | Err(_)) => return false,
            }
        }
    }

    fn holds(&self, conversation: Uuid) -> usize {
        self.messages.get(&conversation).map_or(0, Vec::len)
    }
}

/// The acknowledged messages of `conversation`, by seq.
fn acknowledged(sent: &[Message], conversation: Uuid) -> Vec<(i64, Uuid)> {
    let mut messages: Vec<(i64, Uuid)> = sent
        .iter()
        .filter(|m| m.conversation_id == conversation)
        .map(|m| (m.seq, m.id))
        .collect();
    messages.sort_unstable();
    messages
}

#[tokio::test]
async fn a_client_that_resumes_within_the_grace_period_gets_exactly_what_it_missed() {
    let server = TestServer::start().await;
    let alice = server.user();
    let mut bob = Follower::new(server.user());
    let conversation = group(&alice, &[&bob.users[0]]).await;
    let mut stream = bob.open().await;
    let before = send_texts(&alice, conversation.id, 3).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    assert!(bob.read_until(&mut stream, until).await);
    assert_eq!(bob.holds(conversation.id), 3);
    drop(stream);
    let missed = send_texts(&alice, conversation.id, 5).await;
    let mut stream = bob.open().await;
    assert_eq!(bob.starts, ["fresh", "resumed"]);
    let after = send_texts(&alice, conversation.id, 2).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    assert!(bob.read_until(&mut stream, until).await);
    let all: Vec<Message> = [before, missed, after].concat();
    assert_eq!(
        bob.messages[&conversation.id],
        acknowledged(&all, conversation.id)
    );
}

#[tokio::test]
async fn a_resume_the_buffer_cannot_cover_is_refused_and_sync_fills_the_gap() {
    let mut limits = Limits::default();
    limits.sessions.buffer_len_max = 4;
    let server = TestServer::with_limits(limits).await;
    let alice = server.user();
    let mut bob = Follower::new(server.user());
    let conversation = group(&alice, &[&bob.users[0]]).await;
    let stream = bob.open().await;
    drop(stream);
    let missed = send_texts(&alice, conversation.id, 10).await;
    let mut stream = bob.open().await;
    assert_eq!(bob.starts, ["fresh", "overflowed"]);
    assert_eq!(
        bob.messages[&conversation.id],
        acknowledged(&missed, conversation.id),
        "sync served all ten from the store"
    );
    let live = send_texts(&alice, conversation.id, 2).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    assert!(bob.read_until(&mut stream, until).await);
    assert_eq!(
        bob.messages[&conversation.id],
        acknowledged(&[missed, live].concat(), conversation.id)
    );
}

#[tokio::test]
async fn a_session_past_its_grace_period_is_gone_and_the_client_is_told() {
    let mut limits = Limits::default();
    limits.sessions.grace = Duration::from_millis(100);
    let server = TestServer::with_limits(limits).await;
    let alice = server.user();
    let mut bob = Follower::new(server.user());
    let conversation = group(&alice, &[&bob.users[0]]).await;
    drop(bob.open().await);
    let missed = send_texts(&alice, conversation.id, 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.node.session_count(), 0, "the session expired");
    let _stream = bob.open().await;
    assert_eq!(bob.starts, ["fresh", "expired"]);
    assert_eq!(
        bob.messages[&conversation.id],
        acknowledged(&missed, conversation.id)
    );
    let metrics = server.node.metrics().encode();
    assert!(metrics.contains("sessions_expired_total 1"), "{metrics}");
}

#[tokio::test]
async fn live_events_wait_for_the_first_frame_and_resume_is_only_accepted_first() {
    let server = TestServer::start().await;
    let alice = server.user();
    let bob = server.user();
    let conversation = group(&alice, &[&bob]).await;
    let mut stream = bob.client.connect().await.unwrap();
    let Some(ServerFrame::Control(Control::Hello(hello))) = next(&mut stream).await else {
        panic!("hello first");
    };
    let sent = send_texts(&alice, conversation.id, 1).await;
    // Held: nothing arrives before the client's first frame...
    let early = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(early.is_err(), "held, got {early:?}");
    stream.send(&ClientFrame::Ping).await.unwrap();
    // ...and then the held event follows the pong.
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next(&mut stream).await.expect("a frame"));
    }
    assert!(
        got.contains(&ServerFrame::Control(Control::Pong)),
        "{got:?}"
    );
    assert!(
        got.iter().any(|f| matches!(f, ServerFrame::Event(e)
            if e.event == Event::MessageNew(sent[0].clone()) && e.cursor == hello.cursor + 1)),
        "{got:?}"
    );
    stream
        .send(&ClientFrame::Resume(Resume {
            session_id: hello.session_id,
            cursor: 0,
        }))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut stream).await,
        Some(ServerFrame::Control(Control::Error(_)))
    ));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_resumes_without_loss() {
    let http = HttpLimits {
        websocket_outbound_len_max: 4,
        close_write_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let server = TestServer::with_config(roomy_sessions(), http).await;
    let alice = server.user();
    let mut bob = Follower::new(server.user());
    let conversation = group(&alice, &[&bob.users[0]]).await;
    let mut stream = bob.open().await;
    // Bob stops reading while large messages pile up: the kernel buffers
    // fill, then his four-frame queue, and the server lets go of him.
    let body = "x".repeat(40 * 1024);
    let mut sent = Vec::new();
    for _ in 0..400 {
        sent.push(
            alice
                .client
                .send(&text(conversation.id, &body))
                .await
                .expect("send")
                .message,
        );
        if server
            .node
            .metrics()
            .encode()
            .contains("slow_consumer_disconnects_total 1")
        {
            break;
        }
    }
    assert!(
        sent.len() < 400,
        "no slow-consumer close after 400 messages"
    );
    // The close frame cannot get through a full socket; after the close
    // write timeout the server drops the connection anyway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.node.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.node.connection_count(), 0, "disconnected");
    assert_eq!(server.node.session_count(), 1, "the session waits for him");
    // What was already in flight still reads; then the stream ends.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    assert!(!bob.read_until(&mut stream, until).await, "closed");
    drop(stream);
    let mut stream = bob.open().await;
    assert_eq!(bob.starts, ["fresh", "resumed"]);
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    bob.read_until(&mut stream, until).await;
    assert_eq!(
        bob.messages[&conversation.id],
        acknowledged(&sent, conversation.id)
    );
    let metrics = server.node.metrics().encode();
    assert!(
        metrics.contains("slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
}

/// Many clients in a few conversations, a steady send load, and clients
/// dropping at random moments: some come back within the grace period
/// (resume from the buffer), some after it (sync from the store), some
/// after their buffer overflowed. At the end every client holds exactly the
/// acknowledged messages of its conversations, in seq order, once each;
/// every event on the way was the next of its conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_drop_and_reconnect_hold_every_acknowledged_event_once_in_order() {
    let mut limits = Limits::default();
    limits.sessions.grace = Duration::from_millis(300);
    limits.sessions.buffer_len_max = 16;
    let server = TestServer::with_limits(limits).await;
    let users: Vec<User> = (0..12).map(|_| server.user()).collect();
    let conversations = three_groups(&users).await;
    let senders = conversations
        .iter()
        .map(|c| server.user_as(c.members[0].user_id))
        .collect();
    let followers = users
        .iter()
        .map(|u| Follower::new(server.user_as(u.id)))
        .collect();
    chaos(Chaos {
        seed: chaos_seed(),
        conversations,
        followers,
        senders,
        expect: &["resumed", "expired", "overflowed"],
    })
    .await;
}

/// The seed of a chaos run: `CHAOS_SEED`, else a fixed one.
pub(crate) fn chaos_seed() -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0004);
    eprintln!("chaos seed {seed} (rerun with CHAOS_SEED={seed})");
    seed
}

/// Three groups of five among twelve users; users 0, 4 and 8 are in two.
pub(crate) async fn three_groups(users: &[User]) -> Vec<Conversation> {
    let mut conversations = Vec::new();
    for g in 0..3 {
        let members: Vec<&User> = (1..5).map(|k| &users[(g * 4 + k) % 12]).collect();
        conversations.push(group(&users[g * 4], &members).await);
    }
    conversations
}

/// A chaos run.
pub(crate) struct Chaos {
    pub(crate) seed: u64,
    pub(crate) conversations: Vec<Conversation>,
    /// One per user; each reconnects through a node of its choosing.
    pub(crate) followers: Vec<Follower>,
    /// One member of each conversation, sending to it.
    pub(crate) senders: Vec<User>,
    /// The ways back to a session the run must have exercised.
    pub(crate) expect: &'static [&'static str],
}

pub(crate) async fn chaos(run: Chaos) {
    let Chaos {
        seed,
        conversations,
        followers,
        senders: sending,
        expect,
    } = run;
    let membership = |user: Uuid| -> Vec<Uuid> {
        conversations
            .iter()
            .filter(|c| c.members.iter().any(|m| m.user_id == user))
            .map(|c| c.id)
            .collect()
    };
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<Message>::new()));
    // Everyone is connected before the first send.
    let mut opened = Vec::new();
    for mut follower in followers {
        let stream = follower.open().await;
        opened.push((follower, stream));
    }
    let mut senders = Vec::new();
    for (s, (sender, conversation)) in sending.into_iter().zip(&conversations).enumerate() {
        let sent = Arc::clone(&sent);
        let conversation = conversation.id;
        let mut rng = Rng::new(seed ^ (s as u64 + 1));
        senders.push(tokio::spawn(async move {
            for i in 0..120 {
                let message = sender
                    .client
                    .send(&text(conversation, &format!("s{s}-{i}")))
                    .await
                    .expect("send")
                    .message;
                sent.lock().await.push(message);
                tokio::time::sleep(Duration::from_millis(rng.below(12))).await;
            }
        }));
    }
    let mut clients = Vec::new();
    for (i, (mut follower, mut stream)) in opened.into_iter().enumerate() {
        let done = Arc::clone(&done);
        let mut rng = Rng::new(seed.wrapping_mul(31) ^ i as u64);
        clients.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let until =
                    tokio::time::Instant::now() + Duration::from_millis(20 + rng.below(250));
                let open = follower.read_until(&mut stream, until).await;
                // Drop the socket: sometimes politely, mostly not.
                if open && rng.below(4) == 0 {
                    stream.close().await;
                } else {
                    drop(stream);
                }
                let away = match rng.below(10) {
                    0..=4 => rng.below(60),        // resumes from the buffer
                    5..=6 => 150 + rng.below(100), // in grace; may overflow
                    7..=8 => 450 + rng.below(200), // after the grace period
                    _ => 0,
                };
                tokio::time::sleep(Duration::from_millis(away)).await;
                // Half the time, back through another node (if there is one).
                if rng.below(2) == 0 {
                    follower.node = rng.below(follower.users.len() as u64) as usize;
                }
                stream = follower.open().await;
            }
            (follower, stream)
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    done.store(true, Ordering::SeqCst);
    let sent = sent.lock().await.clone();
    let mut starts: BTreeMap<&str, usize> = BTreeMap::new();
    for client in clients {
        let (mut follower, mut stream) = client.await.expect("client");
        let mine = membership(follower.users[0].id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while mine
            .iter()
            .any(|c| follower.holds(*c) < acknowledged(&sent, *c).len())
            && tokio::time::Instant::now() < deadline
        {
            let until = tokio::time::Instant::now() + Duration::from_millis(100);
            assert!(follower.read_until(&mut stream, until).await, "closed");
        }
        for conversation in &mine {
            assert_eq!(
                follower
                    .messages
                    .get(conversation)
                    .cloned()
                    .unwrap_or_default(),
                acknowledged(&sent, *conversation),
                "user {} in {conversation}",
                follower.users[0].id
            );
        }
        for start in &follower.starts {
            *starts.entry(start).or_default() += 1;
        }
    }
    eprintln!("connection starts: {starts:?}");
    for way in expect {
        assert!(
            starts.get(way).copied().unwrap_or(0) > 0,
            "no {way}: {starts:?}"
        );
    }
}

#[tokio::test]
async fn a_large_sync_frame_is_read_whole_and_strangers_conversations_are_not_members() {
    let server = TestServer::start().await;
    let bob = server.user();
    let mut stream = bob.client.connect().await.unwrap();
    assert!(matches!(
        next(&mut stream).await,
        Some(ServerFrame::Control(Control::Hello(_)))
    ));
    // About 50 KB of JSON, far past the socket's 1 KiB read buffer.
    let positions: BTreeMap<Uuid, i64> = (0..1000).map(|_| (Uuid::new_v4(), 0)).collect();
    stream
        .send(&ClientFrame::Sync(Sync {
            positions: positions.clone(),
        }))
        .await
        .unwrap();
    let Some(ServerFrame::Control(Control::Synced(synced))) = next(&mut stream).await else {
        panic!("synced");
    };
    assert_eq!(synced.not_member.len(), 1000);
    assert!(synced.positions.is_empty());
}
