//! What happened in a run, as the clients and the bounds monitor saw it:
//! the record the checkers judge, and whose hash is the run's trace.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// One thing that happened, at a time since the run began.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Milliseconds since the run began.
    pub at_ms: u64,
    /// What happened.
    pub record: Record,
}

/// The kinds of thing a history holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Record {
    /// A workload operation and how the node answered it.
    Op {
        /// The user who acted.
        user: usize,
        /// What they did.
        op: String,
        /// `ok`, or the error's kind.
        outcome: String,
    },
    /// A send was acknowledged: stored as `message` at `seq`.
    Acked {
        /// The conversation.
        conversation: Uuid,
        /// The send's idempotency key (also its content).
        key: String,
        /// The stored message.
        message: Uuid,
        /// Its `seq`.
        seq: i64,
    },
    /// A client applied an event (its `Place` said deliver).
    Delivered {
        /// Which client.
        client: usize,
        /// The event's conversation.
        conversation: Uuid,
        /// The event's `seq`.
        seq: i64,
        /// The client's position in the conversation before this event.
        prev: Option<i64>,
        /// Whether the event starts the client's view of the conversation:
        /// its creation, or this client's user joining it.
        opens: bool,
    },
    /// A control frame a client received (`hello`, `resumed`, `synced`…),
    /// summarized.
    Control {
        /// Which client.
        client: usize,
        /// The frame, in short.
        frame: String,
    },
    /// A client connected to a node.
    Connected {
        /// Which client.
        client: usize,
        /// Which node.
        node: usize,
    },
    /// A client's connection ended.
    Disconnected {
        /// Which client.
        client: usize,
        /// Why: a close code, or what the client or the run did.
        reason: String,
    },
    /// A fault the run injected at a point in time (store and bus faults
    /// are only counted).
    Fault {
        /// What.
        kind: String,
        /// Which node or client.
        target: usize,
    },
    /// A frame the client could not read.
    Undecodable {
        /// Which client.
        client: usize,
    },
    /// What the bounds monitor read off one node.
    Bounds {
        /// Which node.
        node: usize,
        /// Sessions on it.
        sessions: usize,
        /// Connections on it.
        connections: usize,
        /// The node's session limit.
        sessions_max: usize,
        /// The node's connection limit.
        connections_max: usize,
        /// The most events and bytes any session on it has buffered.
        buffer_peak: (usize, usize),
        /// The session buffer's bounds (events, bytes).
        buffer_max: (usize, usize),
        /// Its supervised tasks that spent their restart budget.
        failed_tasks: Vec<&'static str>,
    },
    /// A post was acknowledged.
    Posted {
        /// The post.
        post: Uuid,
        /// Its author.
        author: usize,
    },
    /// A post's deletion was acknowledged.
    PostDeleted {
        /// The post.
        post: Uuid,
    },
    /// A follow was asked for (it may take effect whatever the answer).
    FollowAsked {
        /// Who follows.
        user: usize,
        /// Whom.
        followee: usize,
    },
    /// A feed page a user was served.
    FeedRead {
        /// Whose.
        user: usize,
        /// When the request began.
        started_ms: u64,
        /// `ranked`, `cache` or `recent`.
        source: String,
        /// Each post and its author.
        posts: Vec<(Uuid, usize)>,
    },
    /// The longest replay stream on the bus, and how long it may be.
    Stream {
        /// Its length.
        len: usize,
        /// The bound.
        len_max: usize,
    },
}

/// A run's history, appended to by every task of the run.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl History {
    /// Appends `record` at `at_ms`.
    pub fn push(&self, at_ms: u64, record: Record) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Entry { at_ms, record });
    }

    /// Everything recorded so far.
    #[must_use]
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The trace hash: equal for two runs exactly when they recorded the
    /// same things at the same times in the same order.
    #[must_use]
    pub fn hash(&self) -> u64 {
        // `DefaultHasher::new` has fixed keys: the same on every run.
        let mut hasher = DefaultHasher::new();
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .hash(&mut hasher);
        hasher.finish()
    }
}
