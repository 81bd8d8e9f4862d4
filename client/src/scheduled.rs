//! Scheduled messages: schedule, list, change and cancel a message to be
//! sent later.

use reqwest::{Method, StatusCode};
use switchboard_protocol::{EditScheduled, ScheduleMessage, ScheduledList, ScheduledMessage};
use uuid::Uuid;

use crate::retry::retried;
use crate::{Client, ClientError, RetryPolicy, entropy};

/// A schedule's answer.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// The entry.
    pub entry: ScheduledMessage,
    /// False when the idempotency key had stored it before.
    pub created: bool,
}

impl Client {
    /// Schedules a message.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `unprocessable` for a time out of bounds,
    /// `rate_limited` (with `Retry-After`) past a cap.
    pub async fn schedule(
        &self,
        conversation: Uuid,
        body: &ScheduleMessage,
    ) -> Result<Scheduled, ClientError> {
        let path = format!("/conversations/{conversation}/scheduled-messages");
        let response = self
            .request(Method::POST, &path)
            .json(body)
            .send()
            .await
            .map_err(ClientError::transport)?;
        let created = match response.status() {
            StatusCode::CREATED => true,
            StatusCode::OK => false,
            _ => return Err(ClientError::from_response(response).await),
        };
        let entry = response.json().await.map_err(ClientError::decode)?;
        Ok(Scheduled { entry, created })
    }

    /// Schedules a message, retried as `policy` allows under one
    /// idempotency key (made here unless `body` has one), so it is stored
    /// once however often an answer is lost.
    ///
    /// # Errors
    ///
    /// The last [`ClientError`] once a try fails permanently or the
    /// attempts run out.
    pub async fn schedule_retried(
        &self,
        conversation: Uuid,
        body: ScheduleMessage,
        policy: RetryPolicy,
    ) -> Result<Scheduled, ClientError> {
        let body = ScheduleMessage {
            idempotency_key: body
                .idempotency_key
                .or_else(|| Some(entropy::new_key().to_string())),
            ..body
        };
        retried(policy, || self.schedule(conversation, &body)).await
    }

    /// The caller's pending entries and recent failures, in one
    /// conversation or all.
    ///
    /// # Errors
    ///
    /// [`ClientError`] for transport failures and error answers.
    pub async fn scheduled(
        &self,
        conversation: Option<Uuid>,
    ) -> Result<ScheduledList, ClientError> {
        let path = match conversation {
            Some(id) => format!("/scheduled-messages?conversation_id={id}"),
            None => "/scheduled-messages".to_owned(),
        };
        self.call(self.request(Method::GET, &path)).await
    }

    /// Changes a pending entry's time or content.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `conflict` once it is sent, cancelled or failed.
    pub async fn edit_scheduled(
        &self,
        id: Uuid,
        body: &EditScheduled,
    ) -> Result<ScheduledMessage, ClientError> {
        self.call(
            self.request(Method::PATCH, &format!("/scheduled-messages/{id}"))
                .json(body),
        )
        .await
    }

    /// Cancels a pending entry.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; `conflict` once it is sent, cancelled or failed.
    pub async fn cancel_scheduled(&self, id: Uuid) -> Result<(), ClientError> {
        self.call_empty(self.request(Method::DELETE, &format!("/scheduled-messages/{id}")))
            .await
    }
}
