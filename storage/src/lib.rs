//! Every dependency of the actors sits behind a trait here: the [`Store`] of
//! conversations, members, messages and events, the [`Bus`] between nodes,
//! the [`Clock`] and the [`Random`] source.
//!
//! The SQLite implementation is the embedded default; [`MemoryStore`] is the
//! simulation's. Each write is one transaction that re-checks the condition
//! the calling actor already checked, so a second node or a stale cache can
//! never slip an unauthorized change through.

mod bus;
mod clock;
mod error;
mod memory;
mod postgres;
mod random;
mod redis;
mod rows;
mod sqlite;
mod store;

pub use bus::{Bus, BusError, BusSignal, Topic};
pub use clock::{Clock, SystemClock};
pub use error::{Rejection, StoreError};
pub use memory::MemoryStore;
pub use postgres::{PostgresOptions, PostgresStore};
pub use random::{OsRandom, Random};
pub use redis::{RedisBus, RedisOptions};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use store::{
    Committed, CreateConversation, CreateOutcome, DeleteMessage, EditMessage, MessageRange,
    NewMessage, SendOutcome, Store, send_each,
};
