//! The checkers: what must hold after every run, judged only from the
//! history, the store's final logs and the clients' final places; none of
//! them knows which faults were injected.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use switchboard_protocol::Event;
use uuid::Uuid;

use crate::history::{Entry, Record};
use crate::log::check_log;

/// Where the run ended, as the checkers see it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Each conversation's full log, from the store.
    pub logs: BTreeMap<Uuid, Vec<Event>>,
    /// Each conversation's members at the end.
    pub members: BTreeMap<Uuid, BTreeSet<Uuid>>,
    /// Each client's user and final positions.
    pub clients: Vec<ClientEnd>,
    /// How long the system took to go quiet after the faults stopped, or
    /// `None` if it did not within the bound.
    pub quiet_after: Option<Duration>,
    /// Every object left in the blob store.
    pub objects: BTreeSet<String>,
    /// Every attachment row an upload URL was issued for, at the end.
    pub attachments: Vec<AttachmentEnd>,
    /// Every scheduled message a client was told it scheduled, at the end.
    pub scheduled: Vec<ScheduledEnd>,
}

/// A scheduled message at the end of a run, with what its sender was told.
#[derive(Debug, Clone)]
pub struct ScheduledEnd {
    /// The entry as stored at the end.
    pub entry: switchboard_protocol::ScheduledMessage,
    /// The content marker its messages carry (`sched KEY`, or `sched KEY
    /// edited` after an edit).
    pub marker: String,
    /// A cancel of it was acknowledged.
    pub cancelled: bool,
    /// An edit of it was acknowledged: the content it must go out with.
    pub edited: Option<String>,
}

/// An attachment row at the end of a run.
#[derive(Debug, Clone)]
pub struct AttachmentEnd {
    /// Its object's key.
    pub key: String,
    /// Where it stands.
    pub state: switchboard_storage::AttachmentState,
}

/// A client at the end of a run.
#[derive(Debug, Clone)]
pub struct ClientEnd {
    /// Its user.
    pub user: Uuid,
    /// The last `seq` it applied, by conversation.
    pub positions: BTreeMap<Uuid, i64>,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A conversation's log breaks `seq` contiguity or the permission rules.
    #[error("conversation {conversation}: {violation}")]
    Log {
        /// Which.
        conversation: Uuid,
        /// How.
        violation: crate::log::Violation,
    },
    /// An acknowledged send is not in the log where it was acknowledged.
    #[error("acknowledged send {key} ({message} at seq {seq}) is not in the log")]
    AckedMissing {
        /// The send's key.
        key: String,
        /// The acknowledged message.
        message: Uuid,
        /// Its acknowledged `seq`.
        seq: i64,
    },
    /// One send stored more than once.
    #[error("send {key} stored {count} times")]
    StoredTwice {
        /// The send's key.
        key: String,
        /// How often.
        count: usize,
    },
    /// A client applied an event that was not the next of its conversation.
    #[error("client {client} applied seq {seq} of {conversation} after {prev:?}")]
    OutOfOrder {
        /// Which client.
        client: usize,
        /// Where.
        conversation: Uuid,
        /// The event.
        seq: i64,
        /// Its position before.
        prev: Option<i64>,
    },
    /// After the system went quiet, a member's client does not hold every
    /// event of a conversation.
    #[error("client {client} holds {conversation} up to {held:?}, the log up to {last_seq}")]
    Behind {
        /// Which client.
        client: usize,
        /// Where.
        conversation: Uuid,
        /// Its position.
        held: Option<i64>,
        /// The log's end.
        last_seq: i64,
    },
    /// A node held more sessions or connections than its limits.
    #[error("node {node}: {what} {value} over its bound {bound}")]
    Bound {
        /// Which node (`usize::MAX` for the bus).
        node: usize,
        /// What overflowed.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The bound.
        bound: usize,
    },
    /// A node's supervised task panicked past its restart budget and
    /// stayed down.
    #[error("node {node}: task {task} spent its restart budget")]
    TaskFailed {
        /// Which node.
        node: usize,
        /// Which task.
        task: &'static str,
    },
    /// A feed answer broke its rules.
    #[error("user {user}'s feed: {what}")]
    Feed {
        /// Whose.
        user: usize,
        /// How.
        what: String,
    },
    /// An object the blob store holds that no live attachment row claims:
    /// an orphan the sweeper should have removed.
    #[error("object {key} has no live attachment row")]
    ObjectWithoutRow {
        /// The object's key.
        key: String,
    },
    /// A live attachment row (sent, or still pending) with no object, or a
    /// pending one the sweeper should have settled.
    #[error("attachment {key} is {state:?} at the end")]
    RowUnsettled {
        /// The object's key.
        key: String,
        /// The row's state.
        state: switchboard_storage::AttachmentState,
    },
    /// A message that carries an attachment whose object is gone.
    #[error("message {message} carries {key}, which is not in the blob store")]
    MessageWithoutObject {
        /// The message.
        message: Uuid,
        /// The object's key.
        key: String,
    },
    /// A scheduled message that did not end sent exactly once, failed or
    /// cancelled, as its sender was told.
    #[error("scheduled message {id}: {what}")]
    Scheduled {
        /// The entry.
        id: Uuid,
        /// What went wrong.
        what: String,
    },
    /// A client received a frame it could not read.
    #[error("client {client} received an undecodable frame")]
    Undecodable {
        /// Which client.
        client: usize,
    },
    /// The system did not settle after the faults stopped.
    #[error("not quiet within {0:?} after the faults stopped")]
    NotQuiet(Duration),
}

/// Every checker, in turn; returns every violation found.
#[must_use]
pub fn check(history: &[Entry], outcome: &Outcome, quiet_bound: Duration) -> Vec<Violation> {
    let mut found = Vec::new();
    logs(outcome, &mut found);
    sends(history, outcome, &mut found);
    deliveries(history, &mut found);
    bounds(history, &mut found);
    media(outcome, &mut found);
    scheduled(outcome, &mut found);
    feed(history, &mut found);
    if outcome.quiet_after.is_none() {
        found.push(Violation::NotQuiet(quiet_bound));
    }
    // Once quiet this must hold; if never quiet, it says who is behind.
    complete(outcome, &mut found);
    found
}

/// Every feed request a live node answered was a page (the ranking's
/// failures fall back, never fail the request); every page holds each
/// post once, by the reader or someone they asked to follow before, and
/// none whose deletion was acknowledged before it began.
fn feed(history: &[Entry], found: &mut Vec<Violation>) {
    let mut deleted: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut asked: BTreeSet<(usize, usize)> = BTreeSet::new();
    for entry in history {
        match &entry.record {
            Record::PostDeleted { post } => {
                deleted.entry(*post).or_insert(entry.at_ms);
            }
            Record::FollowAsked { user, followee } => {
                asked.insert((*user, *followee));
            }
            Record::Op { user, op, outcome }
                if op.starts_with("feed ")
                    && !["ok", "node_down", "node_crashed"].contains(&outcome.as_str()) =>
            {
                found.push(Violation::Feed {
                    user: *user,
                    what: format!("{op} answered {outcome}"),
                });
            }
            Record::FeedRead {
                user,
                started_ms,
                source,
                posts: page,
            } => {
                let mut seen = BTreeSet::new();
                for (post, author) in page {
                    let what = if !seen.insert(*post) {
                        Some("a post twice")
                    } else if author != user && !asked.contains(&(*user, *author)) {
                        Some("a post by someone never followed")
                    } else if deleted.get(post).is_some_and(|at| at < started_ms) {
                        Some("a post deleted before the request")
                    } else {
                        None
                    };
                    if let Some(what) = what {
                        found.push(Violation::Feed {
                            user: *user,
                            what: format!("{what} ({post}, from {source})"),
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

/// `seq` is gap-free per conversation and no event was the act of a
/// principal who lacked the right at that point of the log.
fn logs(outcome: &Outcome, found: &mut Vec<Violation>) {
    for (conversation, log) in &outcome.logs {
        if let Err(violation) = check_log(log) {
            found.push(Violation::Log {
                conversation: *conversation,
                violation,
            });
        }
    }
}

/// The key a send's content encodes.
#[must_use]
pub fn key_of(content: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(content)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Every acknowledged send is in the log, once, where it was acknowledged;
/// no send (acknowledged or not) is stored twice.
fn sends(history: &[Entry], outcome: &Outcome, found: &mut Vec<Violation>) {
    let mut stored: BTreeMap<String, Vec<(Uuid, i64)>> = BTreeMap::new();
    for event in outcome.logs.values().flatten() {
        if let Event::MessageNew(m) = event
            && let Some(key) = key_of(&m.encrypted_content)
        {
            stored.entry(key).or_default().push((m.id, m.seq));
        }
    }
    for (key, copies) in &stored {
        if copies.len() > 1 {
            found.push(Violation::StoredTwice {
                key: key.clone(),
                count: copies.len(),
            });
        }
    }
    for entry in history {
        if let Record::Acked {
            key, message, seq, ..
        } = &entry.record
            && stored
                .get(key)
                .is_none_or(|c| !c.contains(&(*message, *seq)))
        {
            found.push(Violation::AckedMissing {
                key: key.clone(),
                message: *message,
                seq: *seq,
            });
        }
    }
}

/// Every event a client applied was the next of its conversation, or began
/// the client's view of it.
fn deliveries(history: &[Entry], found: &mut Vec<Violation>) {
    for entry in history {
        match &entry.record {
            Record::Delivered {
                client,
                conversation,
                seq,
                prev,
                opens,
            } => {
                let next = prev.is_some_and(|p| *seq == p + 1);
                if !(next || *opens) {
                    found.push(Violation::OutOfOrder {
                        client: *client,
                        conversation: *conversation,
                        seq: *seq,
                        prev: *prev,
                    });
                }
            }
            Record::Undecodable { client } => {
                found.push(Violation::Undecodable { client: *client });
            }
            _ => {}
        }
    }
}

/// Once settled, the blob store and the attachment rows agree: every
/// object is claimed by a sent attachment, every sent attachment has its
/// object (no pending one is left), and every message still carrying an
/// attachment has its object.
fn media(outcome: &Outcome, found: &mut Vec<Violation>) {
    use switchboard_storage::AttachmentState;
    let live: BTreeSet<&str> = outcome
        .attachments
        .iter()
        .filter(|a| a.state == AttachmentState::Attached)
        .map(|a| a.key.as_str())
        .collect();
    for key in &outcome.objects {
        if !live.contains(key.as_str()) {
            found.push(Violation::ObjectWithoutRow { key: key.clone() });
        }
    }
    for attachment in &outcome.attachments {
        let settled = match attachment.state {
            AttachmentState::Attached => outcome.objects.contains(&attachment.key),
            AttachmentState::Pending => false,
            AttachmentState::Deleted => true,
        };
        if !settled {
            found.push(Violation::RowUnsettled {
                key: attachment.key.clone(),
                state: attachment.state,
            });
        }
    }
    for log in outcome.logs.values() {
        let deleted: BTreeSet<Uuid> = log
            .iter()
            .filter_map(|e| match e {
                Event::MessageDeleted(d) => Some(d.message_id),
                _ => None,
            })
            .collect();
        for event in log {
            if let Event::MessageNew(m) = event
                && let Some(attachment) = &m.attachment
                && !deleted.contains(&m.id)
                && !outcome.objects.contains(&attachment.s3_key)
            {
                found.push(Violation::MessageWithoutObject {
                    message: m.id,
                    key: attachment.s3_key.clone(),
                });
            }
        }
    }
}

/// Each scheduled message ended sent exactly once (at or after its time,
/// by its sender, with the content of its last acknowledged edit), failed
/// with a reason, or cancelled, and never sent after an acknowledged
/// cancel. (That a sender was a member when it went, the log checker
/// already holds of every message.)
fn scheduled(outcome: &Outcome, found: &mut Vec<Violation>) {
    use switchboard_protocol::ScheduledStatus;
    for end in &outcome.scheduled {
        let entry = &end.entry;
        let mut report = |what: String| {
            found.push(Violation::Scheduled { id: entry.id, what });
        };
        let sent: Vec<&switchboard_protocol::Message> = outcome
            .logs
            .get(&entry.conversation_id)
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                Event::MessageNew(m)
                    if key_of(&m.encrypted_content).is_some_and(|k| k.starts_with(&end.marker)) =>
                {
                    Some(m)
                }
                _ => None,
            })
            .collect();
        if end.cancelled && entry.status != ScheduledStatus::Cancelled {
            report(format!("cancelled, but {}", entry.status.as_str()));
        }
        match entry.status {
            ScheduledStatus::Sent => {
                let [message] = sent.as_slice() else {
                    report(format!("sent, with {} messages in the log", sent.len()));
                    continue;
                };
                if entry.message_id != Some(message.id) {
                    report(format!(
                        "sent as {:?}, the log has {}",
                        entry.message_id, message.id
                    ));
                }
                if message.sender_id != entry.sender_id {
                    report(format!("sent by {}", message.sender_id));
                }
                if message.created_at < entry.deliver_at {
                    report(format!(
                        "sent at {} before its time {}",
                        message.created_at, entry.deliver_at
                    ));
                }
                if let Some(edited) = &end.edited
                    && key_of(&message.encrypted_content).as_ref() != Some(edited)
                {
                    report(format!("sent without its acknowledged edit to {edited:?}"));
                }
            }
            ScheduledStatus::Failed if entry.failure_reason.is_none() => {
                report("failed without a reason".into());
            }
            ScheduledStatus::Failed | ScheduledStatus::Cancelled if !sent.is_empty() => {
                report(format!(
                    "{}, with {} messages in the log",
                    entry.status.as_str(),
                    sent.len()
                ));
            }
            ScheduledStatus::Pending => report("still pending at the end".into()),
            _ => {}
        }
    }
}

/// Sessions, connections and replay streams stayed within their bounds,
/// and no supervised task spent its restart budget.
fn bounds(history: &[Entry], found: &mut Vec<Violation>) {
    for entry in history {
        match entry.record {
            Record::Bounds {
                node,
                sessions,
                connections,
                sessions_max,
                connections_max,
                buffer_peak,
                buffer_max,
                ref failed_tasks,
            } => {
                for task in failed_tasks {
                    found.push(Violation::TaskFailed { node, task });
                }
                for (what, value, bound) in [
                    ("sessions", sessions, sessions_max),
                    ("connections", connections, connections_max),
                    ("session buffer events", buffer_peak.0, buffer_max.0),
                    ("session buffer bytes", buffer_peak.1, buffer_max.1),
                ] {
                    if value > bound {
                        found.push(Violation::Bound {
                            node,
                            what,
                            value,
                            bound,
                        });
                    }
                }
            }
            Record::Stream { len, len_max } if len > len_max => {
                found.push(Violation::Bound {
                    node: usize::MAX,
                    what: "replay stream entries",
                    value: len,
                    bound: len_max,
                });
            }
            _ => {}
        }
    }
}

/// Once quiet, every client of a member holds each of its conversations up
/// to the end of the log: every event since the client's view began reached
/// it (the order checker says each exactly once, in order).
fn complete(outcome: &Outcome, found: &mut Vec<Violation>) {
    for (index, client) in outcome.clients.iter().enumerate() {
        for (conversation, members) in &outcome.members {
            if !members.contains(&client.user) {
                continue;
            }
            let last_seq = outcome
                .logs
                .get(conversation)
                .and_then(|l| l.last())
                .map_or(0, Event::seq);
            let held = client.positions.get(conversation).copied();
            if held != Some(last_seq) {
                found.push(Violation::Behind {
                    client: index,
                    conversation: *conversation,
                    held,
                    last_seq,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(seq: i64, prev: Option<i64>, opens: bool) -> Entry {
        Entry {
            at_ms: 0,
            record: Record::Delivered {
                client: 0,
                conversation: Uuid::nil(),
                seq,
                prev,
                opens,
            },
        }
    }

    #[test]
    fn a_skipped_or_repeated_event_is_out_of_order() {
        let mut found = Vec::new();
        let history = [
            delivered(1, None, true),
            delivered(2, Some(1), false),
            delivered(4, Some(2), false),
            delivered(3, None, false),
        ];
        deliveries(&history, &mut found);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn an_acknowledged_send_missing_from_the_log_is_reported() {
        let history = [Entry {
            at_ms: 0,
            record: Record::Acked {
                conversation: Uuid::nil(),
                key: "k".into(),
                message: Uuid::nil(),
                seq: 2,
            },
        }];
        let mut found = Vec::new();
        sends(&history, &Outcome::default(), &mut found);
        assert!(matches!(found.as_slice(), [Violation::AckedMissing { .. }]));
    }

    #[test]
    fn a_member_behind_the_log_is_reported_once_quiet() {
        let (user, conversation) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let outcome = Outcome {
            members: [(conversation, [user].into())].into(),
            clients: vec![ClientEnd {
                user,
                positions: BTreeMap::new(),
            }],
            quiet_after: Some(Duration::ZERO),
            ..Outcome::default()
        };
        let found = check(&[], &outcome, Duration::ZERO);
        assert!(matches!(found.as_slice(), [Violation::Behind { .. }]));
    }
}
