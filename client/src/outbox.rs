//! The outbox: sends waiting for their acknowledgement, as a state machine
//! the caller drives with the time and the outcome of each attempt. No
//! sockets and no clock: a transport, a test or the simulation drives it
//! alike.
//!
//! Every send keeps one idempotency key across all its attempts, so a retry
//! whose first attempt did reach the server is stored once. A send is tried
//! at most `attempts_max` times; a permanent failure or the last failed
//! attempt removes it and reports it. Sends to one conversation go one at a
//! time, in order; other conversations do not wait for them. The outbox is
//! bounded and refuses a send rather than grow.

use std::collections::VecDeque;
use std::time::Duration;

use switchboard_protocol::{Message, SendMessage};
use uuid::Uuid;

use crate::retry::{Class, Failure, RetryPolicy, classify};

/// Why the outbox did not take a send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// It holds `len_max` sends already.
    #[error("the outbox is full ({0} sends waiting)")]
    Full(usize),
    /// A send with this idempotency key is already waiting.
    #[error("a send with key {0:?} is already waiting")]
    DuplicateKey(String),
}

/// Why a send was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The server refused it for good (400, 401, 403, 404, 409, 413, 422…).
    Permanent(Failure),
    /// Every attempt failed; this was the last failure.
    Exhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: Failure,
    },
}

/// A send that left the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Acknowledged and stored.
    Sent {
        /// What was sent.
        request: SendMessage,
        /// What the server stored.
        message: Message,
    },
    /// Given up; the caller should tell the user.
    Failed {
        /// What was sent.
        request: SendMessage,
        /// Why it was given up.
        reason: GiveUp,
    },
}

#[derive(Debug)]
struct Entry {
    request: SendMessage,
    key: String,
    failures: u32,
    /// No attempt before this time.
    not_before: Duration,
    /// An attempt is out and has not reported.
    in_flight: bool,
}

/// Sends waiting for their acknowledgement.
#[derive(Debug)]
pub struct Outbox {
    policy: RetryPolicy,
    /// The most sends it holds.
    len_max: usize,
    /// In the order they were pushed.
    entries: VecDeque<Entry>,
}

impl Outbox {
    /// An empty outbox.
    #[must_use]
    pub fn new(policy: RetryPolicy, len_max: usize) -> Self {
        assert!(policy.attempts_max >= 1 && len_max >= 1);
        Self {
            policy,
            len_max,
            entries: VecDeque::new(),
        }
    }

    /// Sends waiting, in flight included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues a send. Without an idempotency key it gets `key`, which stays
    /// the same for every attempt; returns the key in use.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Full`] at the bound, [`OutboxError::DuplicateKey`] for a
    /// key already waiting.
    pub fn push(
        &mut self,
        mut request: SendMessage,
        key: Uuid,
        now: Duration,
    ) -> Result<String, OutboxError> {
        if self.entries.len() >= self.len_max {
            return Err(OutboxError::Full(self.len_max));
        }
        let key = request
            .idempotency_key
            .get_or_insert_with(|| key.to_string())
            .clone();
        if self.entries.iter().any(|e| e.key == key) {
            return Err(OutboxError::DuplicateKey(key));
        }
        self.entries.push_back(Entry {
            request,
            key: key.clone(),
            failures: 0,
            not_before: now,
            in_flight: false,
        });
        Ok(key)
    }

    /// The next send to attempt at `now`, marked in flight: the oldest that
    /// is due and is the first waiting for its conversation.
    pub fn next_attempt(&mut self, now: Duration) -> Option<SendMessage> {
        let index = self.ready(now)?;
        let entry = &mut self.entries[index];
        entry.in_flight = true;
        Some(entry.request.clone())
    }

    /// When the next attempt falls due, if any send is waiting for a time.
    #[must_use]
    pub fn next_due(&self) -> Option<Duration> {
        self.heads()
            .filter(|e| !e.in_flight)
            .map(|e| e.not_before)
            .min()
    }

    /// When the waiting send with `key` is next due, if it is waiting.
    #[must_use]
    pub fn due_of(&self, key: &str) -> Option<Duration> {
        self.entries
            .iter()
            .find(|e| e.key == key && !e.in_flight)
            .map(|e| e.not_before)
    }

    /// The attempt with `key` was acknowledged.
    pub fn succeeded(&mut self, key: &str, message: Message) -> Option<Settled> {
        let index = self.position(key)?;
        let entry = self.entries.remove(index)?;
        Some(Settled::Sent {
            request: entry.request,
            message,
        })
    }

    /// The attempt with `key` failed at `now`. A retryable failure with
    /// attempts left reschedules the send (`None`); anything else removes it
    /// and says why. `sample` is a uniform draw from `[0, 1)` for jitter.
    pub fn failed(
        &mut self,
        key: &str,
        failure: Failure,
        now: Duration,
        sample: f64,
    ) -> Option<Settled> {
        let index = self.position(key)?;
        let entry = &mut self.entries[index];
        entry.in_flight = false;
        entry.failures += 1;
        let reason = match classify(failure) {
            Class::Permanent => GiveUp::Permanent(failure),
            Class::Retryable { retry_after } => {
                match self.policy.delay(entry.failures, sample, retry_after) {
                    Some(wait) => {
                        entry.not_before = now + wait;
                        return None;
                    }
                    None => GiveUp::Exhausted {
                        attempts: entry.failures,
                        last: failure,
                    },
                }
            }
        };
        let entry = self.entries.remove(index)?;
        Some(Settled::Failed {
            request: entry.request,
            reason,
        })
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    /// The first waiting send of each conversation.
    fn heads(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            let first = !self
                .entries
                .iter()
                .take(i)
                .any(|earlier| earlier.request.conversation_id == e.request.conversation_id);
            first.then_some(e)
        })
    }

    fn ready(&self, now: Duration) -> Option<usize> {
        let head = self.heads().find(|e| !e.in_flight && e.not_before <= now)?;
        self.position(&head.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn outbox() -> Outbox {
        Outbox::new(
            RetryPolicy {
                jitter: 0.0,
                ..RetryPolicy::default()
            },
            3,
        )
    }

    fn send(conversation: u128, body: &str) -> SendMessage {
        SendMessage {
            conversation_id: Uuid::from_u128(conversation),
            encrypted_content: body.into(),
            nonce: "bm9uY2U=".into(),
            message_type: "text".into(),
            idempotency_key: None,
        }
    }

    fn key(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }

    fn stored(request: &SendMessage) -> Message {
        Message {
            id: Uuid::nil(),
            conversation_id: request.conversation_id,
            seq: 2,
            sender_id: Uuid::nil(),
            encrypted_content: request.encrypted_content.clone(),
            nonce: request.nonce.clone(),
            message_type: request.message_type.clone(),
            created_at: chrono::DateTime::UNIX_EPOCH,
            edited_at: None,
            deleted_at: None,
            attachment: None,
        }
    }

    #[test]
    fn a_full_outbox_refuses_instead_of_growing() {
        let mut o = outbox();
        for n in 0..3 {
            o.push(send(1, "x"), key(n), Duration::ZERO).unwrap();
        }
        assert_eq!(
            o.push(send(1, "x"), key(9), Duration::ZERO),
            Err(OutboxError::Full(3))
        );
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn a_retryable_failure_retries_with_the_same_key_at_most_five_times() {
        let mut o = outbox();
        let k = o.push(send(1, "x"), key(1), Duration::ZERO).unwrap();
        let mut now = Duration::ZERO;
        let mut attempts = Vec::new();
        loop {
            let attempt = o.next_attempt(now).expect("due");
            assert_eq!(attempt.idempotency_key.as_deref(), Some(k.as_str()));
            attempts.push(now);
            if let Some(settled) = o.failed(&k, Failure::Network, now, 0.5) {
                assert_eq!(
                    settled,
                    Settled::Failed {
                        request: attempt,
                        reason: GiveUp::Exhausted {
                            attempts: 5,
                            last: Failure::Network
                        }
                    }
                );
                break;
            }
            assert!(o.next_attempt(now).is_none(), "not before its wait");
            now = o.next_due().unwrap();
        }
        assert_eq!(attempts, vec![Duration::ZERO, 2 * S, 6 * S, 14 * S, 30 * S]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_permanent_failure_is_reported_at_once_and_never_retried() {
        let mut o = outbox();
        let k = o.push(send(1, "x"), key(1), Duration::ZERO).unwrap();
        o.next_attempt(Duration::ZERO).unwrap();
        let forbidden = Failure::Status {
            code: 403,
            retry_after: None,
        };
        let settled = o.failed(&k, forbidden, Duration::ZERO, 0.5).unwrap();
        assert!(
            matches!(settled, Settled::Failed { reason: GiveUp::Permanent(f), .. } if f == forbidden)
        );
        assert!(o.is_empty());
        assert!(o.next_attempt(Duration::from_secs(3600)).is_none());
    }

    #[test]
    fn sends_to_one_conversation_go_in_order_and_others_do_not_wait() {
        let mut o = outbox();
        let first = o.push(send(1, "first"), key(1), Duration::ZERO).unwrap();
        let second = o.push(send(1, "second"), key(2), Duration::ZERO).unwrap();
        let elsewhere = o
            .push(send(2, "elsewhere"), key(3), Duration::ZERO)
            .unwrap();
        let a = o.next_attempt(Duration::ZERO).unwrap();
        assert_eq!(a.encrypted_content, "first");
        // The second send to conversation 1 waits behind the first; the
        // other conversation goes ahead.
        let b = o.next_attempt(Duration::ZERO).unwrap();
        assert_eq!(b.encrypted_content, "elsewhere");
        assert!(o.next_attempt(Duration::ZERO).is_none());
        assert!(
            o.failed(&first, Failure::Timeout, Duration::ZERO, 0.5)
                .is_none()
        );
        assert!(
            o.next_attempt(S).is_none(),
            "still behind the first's retry"
        );
        let retry = o.next_attempt(2 * S).unwrap();
        assert_eq!(retry.encrypted_content, "first");
        assert!(matches!(
            o.succeeded(&first, stored(&retry)),
            Some(Settled::Sent { .. })
        ));
        assert_eq!(
            o.next_attempt(2 * S).unwrap().idempotency_key.as_deref(),
            Some(second.as_str())
        );
        assert!(matches!(
            o.succeeded(&elsewhere, stored(&b)),
            Some(Settled::Sent { .. })
        ));
    }

    #[test]
    fn retry_after_sets_the_next_attempt() {
        let mut o = outbox();
        let k = o.push(send(1, "x"), key(1), Duration::ZERO).unwrap();
        o.next_attempt(Duration::ZERO).unwrap();
        let throttled = Failure::Status {
            code: 429,
            retry_after: Some(45 * S),
        };
        assert!(o.failed(&k, throttled, Duration::ZERO, 0.5).is_none());
        assert_eq!(o.next_due(), Some(45 * S));
        assert!(o.next_attempt(44 * S).is_none());
        assert!(o.next_attempt(45 * S).is_some());
    }

    #[test]
    fn a_callers_key_is_kept_and_a_duplicate_refused() {
        let mut o = outbox();
        let mut mine = send(1, "x");
        mine.idempotency_key = Some("client-1".into());
        assert_eq!(
            o.push(mine.clone(), key(1), Duration::ZERO).unwrap(),
            "client-1"
        );
        assert_eq!(
            o.push(mine, key(2), Duration::ZERO),
            Err(OutboxError::DuplicateKey("client-1".into()))
        );
    }
}
