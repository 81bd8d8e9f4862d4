//! The bus between nodes: fan-out of committed events and a bounded replay
//! tail per conversation.
//!
//! The bus is a cache, never the truth: an event missing from it is still in
//! the store's log, and every consumer checks `seq` contiguity and fills gaps
//! from the store.

use std::fmt::Debug;

use async_trait::async_trait;
use switchboard_protocol::{Control, Event};
use uuid::Uuid;

/// A bus call's failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached or timed out.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus answered with something unexpected.
    #[error("bus protocol error: {0}")]
    Protocol(String),
}

/// What a node can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    /// Every event of one conversation.
    Conversation(Uuid),
    /// Membership events about one user, so the node serving them learns of
    /// conversations they join on another node.
    User(Uuid),
}

/// What a node hears from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusSignal {
    /// An event some node committed and published.
    Event(Event),
    /// The subscription was down for a while: events may have been missed,
    /// so every subscribed conversation should catch up from the store.
    Lost,
    /// These conversations' subscriptions now stand; anything committed
    /// before must be caught up from the store.
    Subscribed(Vec<Uuid>),
    /// A frame for one user's sessions on this node (such as
    /// `scheduled.failed`); lost with the link like any pub/sub message.
    Notice {
        /// Whose sessions.
        user: Uuid,
        /// The frame.
        control: Control,
    },
}

/// Publishes events, keeps the replay tail, and manages this node's
/// subscriptions (whose events arrive as [`BusSignal`]s on the channel the
/// implementation was built with).
///
/// # Errors
///
/// Calls that reach the bus fail with [`BusError`]; none of them is ever on
/// the path that acknowledges a send.
#[async_trait]
pub trait Bus: Send + Sync + Debug + 'static {
    /// Publishes `frame` (the event's `{"type","data"}` JSON) on the
    /// conversation's channel and appends it to the conversation's stream.
    async fn publish(&self, event: &Event, frame: &[u8]) -> Result<(), BusError>;

    /// Publishes `frame` (a membership event) on `user`'s channel.
    async fn publish_to_user(&self, user: Uuid, frame: &[u8]) -> Result<(), BusError>;

    /// Publishes a frame for `user`'s sessions on `user`'s channel, heard
    /// as [`BusSignal::Notice`] by the node serving them.
    async fn notify_user(&self, user: Uuid, control: &Control) -> Result<(), BusError>;

    /// Events in the conversation's stream after `after_seq`, oldest first,
    /// at most `limit`. The stream is trimmed, so the answer may start later
    /// than `after_seq + 1`; callers check.
    async fn tail(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Event>, BusError>;

    /// How many entries the conversation's stream holds.
    async fn stream_len(&self, conversation_id: Uuid) -> Result<u64, BusError>;

    /// Trims the conversation's stream to about `len_max` entries; returns
    /// how many were removed.
    async fn trim(&self, conversation_id: Uuid, len_max: usize) -> Result<u64, BusError>;

    /// A cheap round trip, for health and breaker probes.
    async fn ping(&self) -> Result<(), BusError>;

    /// Adds a topic to this node's subscriptions. Takes effect in the
    /// background (confirmed by [`BusSignal::Subscribed`]) and survives
    /// reconnects.
    fn subscribe(&self, topic: Topic);

    /// Removes a topic from this node's subscriptions.
    fn unsubscribe(&self, topic: Topic);
}
