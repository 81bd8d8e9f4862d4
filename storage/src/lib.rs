//! Every dependency of the actors sits behind a trait here: the [`Store`] of
//! conversations, members, messages, events and attachments, the
//! [`FeedStore`] of posts and follows, [`Analytics`], the [`Bus`]
//! between nodes, the [`Blobs`] store of uploads, the [`Clock`] and the
//! [`Random`] source.
//!
//! The real backends live in crates of their own (`switchboard-storage-sql`
//! for SQLite and PostgreSQL, `switchboard-storage-redis` for the bus), so
//! the actors and the simulation compile against these traits without
//! sqlx or redis. [`MemoryStore`] is the simulation's store; the contract
//! suite runs against it and every real store alike.
//!
//! Architecture invariant: this crate does no I/O of its own beyond the
//! operating system's clock and random source.

mod attachment;
mod blobs;
mod bus;
mod clock;
mod error;
mod feed;
mod memory;
mod memory_blobs;
mod memory_feed;
mod random;
mod scheduled;
mod store;

pub use attachment::{
    AttachmentState, AuditEntry, BlobDeletion, DeleteAttachment, DeletionReason, NewAttachment,
    StoredAttachment,
};
pub use blobs::{
    BlobError, BlobHead, BlobListing, BlobRead, BlobServer, BlobUpload, Blobs, PresignedRequest,
    UploadRefusal,
};
pub use bus::{Bus, BusError, BusSignal, Topic};
pub use clock::{Clock, SystemClock, TokioClock};
pub use error::{Rejection, StoreError};
pub use feed::{
    Analytics, AnalyticsError, CacheError, ENGAGEMENT_WINDOW, EngagementEvent, EngagementKind,
    FeedCache, FeedQuery, FeedStore, FollowOutcome, NewPost, PostEngagement, PostPosition,
    PostUpload, VIEW_WEIGHT, rank, score,
};
pub use memory::MemoryStore;
pub use memory_blobs::MemoryBlobs;
pub use memory_feed::MemoryFeedCache;
pub use random::{OsRandom, Random};
pub use scheduled::{
    Claimed, NewScheduled, ScheduleCaps, ScheduleOutcome, ScheduledChange, ScheduledClaim,
    check_pending, failed, not_pending, to_micros,
};
pub use store::{
    Committed, CreateConversation, CreateOutcome, DeleteMessage, EVENTS_OF_MAX, EditMessage,
    MessageRange, NewMessage, SendOutcome, Store, send_each,
};
