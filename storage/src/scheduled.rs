//! Scheduled messages as the store keeps them: the database is the queue.
//!
//! An entry is `pending` until the dispatcher delivers it; delivering is a
//! send (`NewMessage::scheduled`) whose transaction also turns the entry
//! `sent`, and does nothing if it is no longer pending, so no crash and no
//! second node can send it twice or mark it sent without sending. A
//! dispatcher takes due entries with a lease, so a crashed node's claims
//! come free and another node delivers them.

use chrono::{DateTime, Utc};
use switchboard_protocol::{ScheduledFailure, ScheduledMessage, ScheduledStatus};
use uuid::Uuid;

use crate::StoreError;

/// A message to schedule.
#[derive(Debug, Clone)]
pub struct NewScheduled {
    /// Entry id.
    pub id: Uuid,
    /// Where it goes; the sender must be a member now (and again when due).
    pub conversation_id: Uuid,
    /// Who sends it.
    pub sender_id: Uuid,
    /// When it is due.
    pub deliver_at: DateTime<Utc>,
    /// Base64 ciphertext.
    pub encrypted_content: String,
    /// Base64 nonce.
    pub nonce: String,
    /// Application-defined type.
    pub message_type: String,
    /// Unique per sender and conversation; a repeat answers the entry.
    pub idempotency_key: Option<String>,
    /// When it is scheduled.
    pub at: DateTime<Utc>,
}

impl NewScheduled {
    /// The entry as stored, pending.
    #[must_use]
    pub fn into_entry(self) -> ScheduledMessage {
        ScheduledMessage {
            id: self.id,
            conversation_id: self.conversation_id,
            sender_id: self.sender_id,
            deliver_at: self.deliver_at,
            status: ScheduledStatus::Pending,
            created_at: self.at,
            encrypted_content: self.encrypted_content,
            nonce: self.nonce,
            message_type: self.message_type,
            failure_reason: None,
            message_id: None,
        }
    }

    /// The answer when this entry's key stored `existing`: the entry,
    /// unless the key is being reused for another one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when time or content differ.
    pub fn replay(&self, existing: ScheduledMessage) -> Result<ScheduleOutcome, StoreError> {
        if existing.encrypted_content != self.encrypted_content
            || existing.nonce != self.nonce
            || existing.message_type != self.message_type
            || existing.deliver_at != self.deliver_at
        {
            return Err(StoreError::Conflict(
                "idempotency key already used for another scheduled message".into(),
            ));
        }
        Ok(ScheduleOutcome::Existing(existing))
    }
}

/// A dispatcher's hold on a due entry: the lease it took, which is also
/// its fencing token. A change to the entry drops the lease and another
/// node's claim replaces it, so a delivery turns the entry `sent` only
/// while the lease it claimed is still the entry's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledClaim {
    /// The entry.
    pub id: Uuid,
    /// The lease as stored (to the microsecond every store keeps).
    pub lease: DateTime<Utc>,
}

/// A due entry a dispatcher holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The entry as claimed.
    pub entry: ScheduledMessage,
    /// What its delivery must present.
    pub claim: ScheduledClaim,
}

/// `at` to the microsecond, the precision PostgreSQL stores, so a lease
/// compares equal to itself once stored.
#[must_use]
pub fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{DurationRound, TimeDelta};
    at.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(at)
}

/// The bounds a new entry must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleCaps {
    /// Entries one user may have pending.
    pub per_user_max: u32,
    /// Entries pending in all.
    pub total_max: u64,
}

/// The result of scheduling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleOutcome {
    /// A new entry.
    Created(ScheduledMessage),
    /// The entry this idempotency key stored before.
    Existing(ScheduledMessage),
    /// Over a cap: nothing was written.
    Full {
        /// The user's own cap (else the total one).
        user: bool,
        /// When the user's next pending entry is due (else the node's
        /// next), if any.
        next_due: Option<DateTime<Utc>>,
    },
}

/// A change to a pending entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduledChange {
    /// A new time.
    pub deliver_at: Option<DateTime<Utc>>,
    /// New ciphertext and nonce.
    pub content: Option<(String, String)>,
}

impl ScheduledChange {
    /// Applies the change to `entry`.
    pub fn apply(self, entry: &mut ScheduledMessage) {
        if let Some(deliver_at) = self.deliver_at {
            entry.deliver_at = deliver_at;
        }
        if let Some((content, nonce)) = self.content {
            entry.encrypted_content = content;
            entry.nonce = nonce;
        }
    }
}

/// Whether `entry` may be changed or cancelled by `by`: the rule every
/// store applies.
///
/// # Errors
///
/// `NotFound` for another user's entry (its sender alone sees it);
/// `Conflict` once it is sent, cancelled or failed.
pub fn check_pending(entry: &ScheduledMessage, by: Uuid) -> Result<(), StoreError> {
    if entry.sender_id != by {
        return Err(StoreError::NotFound);
    }
    if entry.status != ScheduledStatus::Pending {
        return Err(StoreError::Conflict(format!(
            "the scheduled message is {} already",
            entry.status.as_str()
        )));
    }
    Ok(())
}

/// Why a delivery's transaction found nothing to turn `sent`.
#[must_use]
pub fn not_pending() -> StoreError {
    StoreError::Conflict("the scheduled message is no longer pending".into())
}

/// The entry after a failure.
#[must_use]
pub fn failed(mut entry: ScheduledMessage, reason: ScheduledFailure) -> ScheduledMessage {
    entry.status = ScheduledStatus::Failed;
    entry.failure_reason = Some(reason);
    entry
}
