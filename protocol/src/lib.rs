//! Wire types shared by the server and its clients: resources, request bodies,
//! events and WebSocket frames.
//!
//! Everything here is plain data with serde derives; no I/O. Every event names
//! its conversation and its `seq`, the event's gap-free position in that
//! conversation's log, so a client can detect a gap and catch up.

mod error;
mod event;
mod feed;
mod frame;
mod request;
mod resource;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use event::{
    ConversationCreated, Event, MemberJoined, MemberLeft, MemberRoleChanged, MessageDeleted,
    MessageEdited, MessageRead,
};
pub use feed::{CreatePost, FeedPage, FeedSource, Post};
pub use frame::{
    ClientFrame, CloseReason, Control, EventFrame, Hello, Resume, ResumeFailed, ResumeRefusal,
    ScheduledFailed, ServerFrame, Sync, Synced,
};
pub use request::{
    AddMember, ChangeRole, CreateConversation, EditMessage, EditScheduled, EventPage, MarkRead,
    MessagePage, PresignedUpload, ScheduleMessage, ScheduledList, SendAttachment, SendAudio,
    SendMessage, UploadRequest,
};
pub use resource::{
    Attachment, AttachmentKind, Conversation, ConversationKind, ConversationList,
    ConversationSummary, Member, Message, Role, ScheduledFailure, ScheduledMessage,
    ScheduledStatus,
};
