//! The actors of one Switchboard node and the [`Node`] context that owns them.
//!
//! A conversation actor serializes every mutation of its conversation: the
//! permission check and the write happen in one handler, in order, so there is
//! no window between them. A session actor is a client's place in the live
//! stream and outlives its connections; a connection actor owns one client
//! connection. All sit behind bounded mailboxes and under supervisors.
//!
//! Architecture invariant: this crate knows nothing of axum, sqlx or sockets.
//! It talks to storage through `switchboard_storage::Store` and to a client
//! connection through a [`ConnectionLink`], and keeps no process-global state:
//! several nodes can live in one process.

mod blob_worker;
mod connection;
mod conversation;
mod deleter;
mod error;
mod feed;
mod hub;
mod mailbox;
mod media;
mod metrics;
mod node;
mod publisher;
mod router;
mod scheduler;
mod session;
mod subscriptions;
mod sweeper;
mod trimmer;

pub use connection::{
    ClientFrameError, Close, Connection, ConnectionLink, Frame, LinkReceivers, Transport,
};
pub use error::ActorError;
pub use feed::{CLICKHOUSE, FEED_SQL, FeedLimits};
pub use hub::EncodedEvent;
pub use media::{ATTACHMENT_TYPES, AUDIO_TYPES, MediaLimits};
pub use metrics::Metrics;
pub use node::{BusLimits, ConnectRequest, Dependencies, Limits, Node, ResumeAt};
pub use scheduler::ScheduledLimits;
pub use session::SessionLimits;
/// The policies `Limits` and `BusLimits` are made of, and the supervisor a
/// node runs under.
pub use switchboard_supervisors::{
    BreakerPolicy, RestartPolicy, Supervisor, TaskReport, TaskState, WorkerPolicy,
};
