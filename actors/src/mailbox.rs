//! A bound in front of a ractor mailbox.
//!
//! ractor's mailboxes are unbounded. Every message sent through a [`Mailbox`]
//! carries a [`Permit`] from the actor's semaphore and returns it when the
//! message is dropped after handling, so at most `capacity` messages wait.

use std::sync::Arc;

use ractor::{ActorRef, Message};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a message could not be enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MailboxError {
    /// The actor has `capacity` messages waiting.
    Full,
    /// The actor has stopped or is draining.
    Closed,
}

/// Proof that a message holds one of its actor's mailbox slots.
#[derive(Debug)]
pub(crate) struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

/// An actor reference whose sends are bounded.
#[derive(Debug)]
pub(crate) struct Mailbox<M> {
    /// The actor.
    actor: ActorRef<M>,
    /// One permit per message allowed to wait.
    slots: Arc<Semaphore>,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            slots: Arc::clone(&self.slots),
        }
    }
}

impl<M: Message> Mailbox<M> {
    pub(crate) fn new(actor: ActorRef<M>, slots: Arc<Semaphore>) -> Self {
        Self { actor, slots }
    }

    /// Enqueues the message `build` makes from a slot, unless none is free.
    pub(crate) fn try_send(&self, build: impl FnOnce(Permit) -> M) -> Result<(), MailboxError> {
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| MailboxError::Full)?;
        self.actor
            .send_message(build(Permit(permit)))
            .map_err(|_| MailboxError::Closed)
    }

    pub(crate) fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }
}
