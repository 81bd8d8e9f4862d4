//! Rust client for the Switchboard API: typed REST calls and the live event
//! stream over WebSocket.
//!
//! The sans-IO core reads no clock and opens no socket: [`classify`] sorts
//! errors into retryable (network, 5xx, 429) and permanent (the other 4xx);
//! [`RetryPolicy`] bounds the attempts and spaces them; [`Outbox`] holds
//! sends until they are acknowledged or given up; [`Place`] keeps the
//! session cursor and per-conversation positions a reconnect resumes from.
//! On top, the tokio transport: [`Sender`] drives the outbox over HTTP and
//! [`Live`] is the event stream that reconnects, resumes and catches up by
//! itself.

mod entropy;
mod error;
mod events;
mod feed;
mod live;
mod media;
mod outbox;
mod place;
mod retry;
mod scheduled;
mod sender;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use switchboard_protocol::{
    AddMember, ChangeRole, Conversation, ConversationList, CreateConversation, EditMessage,
    EventPage, MarkRead, Member, Message, MessagePage, SendMessage,
};
use uuid::Uuid;

pub use error::ClientError;
pub use events::{Closed, EventStream};
pub use live::{Live, LiveEvent, LiveOptions};
pub use media::Upload;
pub use outbox::{GiveUp, Outbox, OutboxError, Settled};
pub use place::{Place, Step};
pub use retry::{Class, Failure, RetryPolicy, classify};
pub use scheduled::Scheduled;
pub use sender::{SendReport, Sender};

/// A client bound to one server and one user's token.
#[derive(Debug, Clone)]
pub struct Client {
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The bearer token.
    token: String,
    /// Pooled HTTP connections.
    http: reqwest::Client,
}

/// A stored message and whether this call stored it (`false` when the
/// idempotency key had stored it before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message as stored.
    pub message: Message,
    /// Whether this call created it.
    pub created: bool,
}

impl Client {
    /// A client for the server at `base` (such as `http://127.0.0.1:8080`).
    #[must_use]
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = request.send().await.map_err(ClientError::transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ClientError::from_response(response).await);
        }
        response.json().await.map_err(ClientError::decode)
    }

    async fn call_empty(&self, request: RequestBuilder) -> Result<(), ClientError> {
        let response = request.send().await.map_err(ClientError::transport)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ClientError::from_response(response).await)
        }
    }

    /// Creates a conversation (or finds the direct one with the same person).
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn create_conversation(
        &self,
        body: &CreateConversation,
    ) -> Result<Conversation, ClientError> {
        self.call(self.request(Method::POST, "/conversations").json(body))
            .await
    }

    /// The caller's conversations, newest activity first.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn conversations(&self) -> Result<ConversationList, ClientError> {
        self.call(self.request(Method::GET, "/conversations")).await
    }

    /// One conversation.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `not_found` for a conversation the caller is not in.
    pub async fn conversation(&self, id: Uuid) -> Result<Conversation, ClientError> {
        self.call(self.request(Method::GET, &format!("/conversations/{id}")))
            .await
    }

    /// Adds a member.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn add_member(&self, id: Uuid, body: &AddMember) -> Result<Member, ClientError> {
        self.call(
            self.request(Method::POST, &format!("/conversations/{id}/members"))
                .json(body),
        )
        .await
    }

    /// Changes a member's role.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn change_role(
        &self,
        id: Uuid,
        user: Uuid,
        body: &ChangeRole,
    ) -> Result<Conversation, ClientError> {
        self.call(
            self.request(
                Method::PATCH,
                &format!("/conversations/{id}/members/{user}"),
            )
            .json(body),
        )
        .await
    }

    /// Removes a member, or leaves when `user` is the caller.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn remove_member(&self, id: Uuid, user: Uuid) -> Result<(), ClientError> {
        self.call_empty(self.request(
            Method::DELETE,
            &format!("/conversations/{id}/members/{user}"),
        ))
        .await
    }

    /// Sends a message.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn send(&self, body: &SendMessage) -> Result<Sent, ClientError> {
        self.call_sent(self.request(Method::POST, "/messages").json(body))
            .await
    }

    /// A send's answer: 201 a new message, 200 the one its key stored.
    async fn call_sent(&self, request: RequestBuilder) -> Result<Sent, ClientError> {
        let response = request.send().await.map_err(ClientError::transport)?;
        let created = match response.status() {
            StatusCode::CREATED => true,
            StatusCode::OK => false,
            _ => return Err(ClientError::from_response(response).await),
        };
        let message = response.json().await.map_err(ClientError::decode)?;
        Ok(Sent { message, created })
    }

    /// A page of messages; see the API for how the bounds combine.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn messages(
        &self,
        id: Uuid,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: Option<u32>,
    ) -> Result<MessagePage, ClientError> {
        let mut query = Vec::new();
        if let Some(v) = after_seq {
            query.push(format!("after_seq={v}"));
        }
        if let Some(v) = before_seq {
            query.push(format!("before_seq={v}"));
        }
        if let Some(v) = limit {
            query.push(format!("limit={v}"));
        }
        let path = format!("/conversations/{id}/messages?{}", query.join("&"));
        self.call(self.request(Method::GET, &path)).await
    }

    /// Events after `after_seq`, ascending and gap-free.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn events(
        &self,
        id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<EventPage, ClientError> {
        let path = format!("/conversations/{id}/events?after_seq={after_seq}&limit={limit}");
        self.call(self.request(Method::GET, &path)).await
    }

    /// Edits a message the caller sent.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn edit(&self, message_id: Uuid, body: &EditMessage) -> Result<Message, ClientError> {
        self.call(
            self.request(Method::PATCH, &format!("/messages/{message_id}"))
                .json(body),
        )
        .await
    }

    /// Deletes a message.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn delete(&self, message_id: Uuid) -> Result<(), ClientError> {
        self.call_empty(self.request(Method::DELETE, &format!("/messages/{message_id}")))
            .await
    }

    /// Marks everything up to `seq` read.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn mark_read(&self, id: Uuid, seq: i64) -> Result<(), ClientError> {
        self.call_empty(
            self.request(Method::POST, &format!("/conversations/{id}/read"))
                .json(&MarkRead { seq }),
        )
        .await
    }

    /// Opens the live event stream; the first frame is `hello`.
    ///
    /// # Errors
    ///
    /// [`ClientError`] when the connection or the upgrade fails.
    pub async fn connect(&self) -> Result<EventStream, ClientError> {
        let url = format!(
            "{}/api/v1/ws?access_token={}",
            self.base.replacen("http", "ws", 1),
            self.token
        );
        EventStream::connect(&url).await
    }
}
