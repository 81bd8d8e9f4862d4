//! The event-log oracle.

use std::collections::HashMap;

use switchboard_protocol::{Event, Role};
use uuid::Uuid;

/// An event that should not be in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The log skips or repeats a `seq`.
    #[error("expected seq {expected}, found {found}")]
    Gap {
        /// The `seq` that should come next.
        expected: i64,
        /// The `seq` found instead.
        found: i64,
    },
    /// The log does not start with `conversation.created`, or has it twice.
    #[error("seq {seq}: conversation.created must be the first event and only the first")]
    Creation {
        /// Where.
        seq: i64,
    },
    /// The principal lacked the right when the event took effect.
    #[error("seq {seq}: {principal} may not {action}")]
    Unauthorized {
        /// Where.
        seq: i64,
        /// Who acted.
        principal: Uuid,
        /// What they did.
        action: &'static str,
    },
    /// The event names a message the log never created, or one already deleted.
    #[error("seq {seq}: message {message} is unknown or deleted")]
    Message {
        /// Where.
        seq: i64,
        /// Which message.
        message: Uuid,
    },
}

#[derive(Debug)]
struct MessageState {
    sender: Uuid,
    deleted: bool,
}

/// Replays `events` (one conversation's log, ascending) and returns the first
/// violation, if any.
///
/// # Errors
///
/// The first [`Violation`] found.
pub fn check_log(events: &[Event]) -> Result<(), Violation> {
    let mut members: HashMap<Uuid, Role> = HashMap::new();
    let mut messages: HashMap<Uuid, MessageState> = HashMap::new();
    // The owner who just left, who may hand ownership on in the next event.
    let mut departed_owner: Option<Uuid> = None;
    for (i, event) in events.iter().enumerate() {
        let seq = event.seq();
        let expected = i as i64 + 1;
        if seq != expected {
            return Err(Violation::Gap {
                expected,
                found: seq,
            });
        }
        let deny = |principal: Uuid, action: &'static str| Violation::Unauthorized {
            seq,
            principal,
            action,
        };
        let handed_over = departed_owner.take();
        match event {
            Event::ConversationCreated(e) => {
                if seq != 1 {
                    return Err(Violation::Creation { seq });
                }
                members = e
                    .conversation
                    .members
                    .iter()
                    .map(|m| (m.user_id, m.role))
                    .collect();
            }
            _ if seq == 1 => return Err(Violation::Creation { seq }),
            Event::MessageNew(m) => {
                if !members.contains_key(&m.sender_id) {
                    return Err(deny(m.sender_id, "send"));
                }
                messages.insert(
                    m.id,
                    MessageState {
                        sender: m.sender_id,
                        deleted: false,
                    },
                );
            }
            Event::MessageEdited(e) => {
                let message = live(&messages, seq, e.message_id)?;
                if message.sender != e.sender_id || !members.contains_key(&e.sender_id) {
                    return Err(deny(e.sender_id, "edit"));
                }
            }
            Event::MessageDeleted(e) => {
                let message = live(&messages, seq, e.message_id)?;
                let allowed = match members.get(&e.deleted_by) {
                    None => false,
                    Some(role) => message.sender == e.deleted_by || role.moderates(),
                };
                if !allowed {
                    return Err(deny(e.deleted_by, "delete"));
                }
                if let Some(m) = messages.get_mut(&e.message_id) {
                    m.deleted = true;
                }
            }
            Event::MessageRead(e) => {
                if !members.contains_key(&e.user_id) || e.read_seq >= seq {
                    return Err(deny(e.user_id, "mark read"));
                }
            }
            Event::MemberJoined(e) => {
                if !members.get(&e.added_by).is_some_and(|r| r.moderates())
                    || e.role == Role::Owner
                    || members.contains_key(&e.user_id)
                {
                    return Err(deny(e.added_by, "add a member"));
                }
                members.insert(e.user_id, e.role);
            }
            Event::MemberRoleChanged(e) => {
                let succession = e.role == Role::Owner && handed_over == Some(e.changed_by);
                let moderated = e.role != Role::Owner
                    && members.get(&e.changed_by).is_some_and(|r| r.moderates())
                    && members.get(&e.user_id).is_some_and(|r| *r != Role::Owner);
                if !(succession || moderated) || !members.contains_key(&e.user_id) {
                    return Err(deny(e.changed_by, "change a role"));
                }
                members.insert(e.user_id, e.role);
            }
            Event::MemberLeft(e) => {
                let Some(role) = members.get(&e.user_id).copied() else {
                    return Err(deny(e.removed_by, "remove a non-member"));
                };
                let left = e.removed_by == e.user_id;
                let removed = role != Role::Owner
                    && members.get(&e.removed_by).is_some_and(|r| r.moderates());
                if !(left || removed) {
                    return Err(deny(e.removed_by, "remove a member"));
                }
                members.remove(&e.user_id);
                if role == Role::Owner {
                    departed_owner = Some(e.user_id);
                }
            }
        }
    }
    Ok(())
}

fn live(
    messages: &HashMap<Uuid, MessageState>,
    seq: i64,
    id: Uuid,
) -> Result<&MessageState, Violation> {
    messages
        .get(&id)
        .filter(|m| !m.deleted)
        .ok_or(Violation::Message { seq, message: id })
}
