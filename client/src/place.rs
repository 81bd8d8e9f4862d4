//! A client's place in the live stream, as a state machine: the session and
//! cursor to resume with and, per conversation, the last `seq` applied. No
//! sockets and no clock; the transport feeds it every server frame and sends
//! whatever frame it asks for (see `docs/protocol.md`).

use std::collections::BTreeMap;

use switchboard_protocol::{
    ClientFrame, Control, ErrorCode, Event, Hello, Resume, ServerFrame, Sync,
};
use uuid::Uuid;

/// What to do with a server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new event, the next of its conversation: hand it to the app.
    Deliver(Event),
    /// An event the client already holds: drop it.
    Duplicate,
    /// Send this frame to the server.
    Reply(ClientFrame),
    /// The server could not answer a `sync` now: send this frame again
    /// after a pause (the conversations it lists wait for it).
    RetryLater(ClientFrame),
    /// A control frame the app may want to see (`pong`, `error`, `close`).
    Control(Control),
    /// Nothing to do.
    Nothing,
}

/// The session and positions a client resumes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// The session and the last cursor received in it.
    session: Option<(Uuid, u64)>,
    /// The session the current connection's `hello` named, until the
    /// client's `resume` is answered.
    offered: Option<Hello>,
    /// The last `seq` applied, by conversation.
    positions: BTreeMap<Uuid, i64>,
    /// The `sync` sent and not yet answered.
    syncing: Option<Sync>,
}

impl Place {
    /// A client that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A client that already holds these conversations up to these seqs
    /// (say, from its local database).
    #[must_use]
    pub fn with_positions(positions: BTreeMap<Uuid, i64>) -> Self {
        Self {
            positions,
            ..Self::default()
        }
    }

    /// The session to resume and its last cursor, if any: none while a
    /// `sync` is unanswered, since a resume replays events but not the
    /// `synced` that says where each conversation starts.
    #[must_use]
    pub fn session(&self) -> Option<(Uuid, u64)> {
        self.session.filter(|_| self.syncing.is_none())
    }

    /// The last `seq` applied, by conversation.
    #[must_use]
    pub fn positions(&self) -> &BTreeMap<Uuid, i64> {
        &self.positions
    }

    fn sync(&mut self) -> Step {
        self.ask(Sync {
            positions: self.positions.clone(),
        })
    }

    fn ask(&mut self, sync: Sync) -> Step {
        self.syncing = Some(sync.clone());
        Step::Reply(ClientFrame::Sync(sync))
    }

    /// Applies one frame from the server.
    pub fn apply(&mut self, frame: ServerFrame) -> Step {
        match frame {
            ServerFrame::Event(frame) => {
                if let Some((_, cursor)) = &mut self.session {
                    *cursor = (*cursor).max(frame.cursor);
                }
                let conversation = frame.event.conversation_id();
                let seq = frame.event.seq();
                match self.positions.get(&conversation) {
                    Some(&last) if seq <= last => Step::Duplicate,
                    _ => {
                        self.positions.insert(conversation, seq);
                        Step::Deliver(frame.event)
                    }
                }
            }
            ServerFrame::Control(Control::Hello(hello)) => match self.session() {
                // The resume asked for at connect (`?session_id=&cursor=`,
                // or SSE's `Last-Event-ID`) was granted.
                Some((session_id, _)) if hello.session_id == session_id => {
                    self.session = Some((session_id, hello.cursor));
                    Step::Nothing
                }
                // First frame of a reconnect: ask for the old session.
                Some((session_id, cursor)) => {
                    self.offered = Some(hello);
                    Step::Reply(ClientFrame::Resume(Resume { session_id, cursor }))
                }
                None => {
                    self.session = Some((hello.session_id, hello.cursor));
                    self.sync()
                }
            },
            ServerFrame::Control(Control::Resumed(resumed)) => {
                self.offered = None;
                self.session = Some((resumed.session_id, resumed.cursor));
                Step::Nothing
            }
            ServerFrame::Control(Control::ResumeFailed(_)) => {
                // The connection stays on the session its hello named;
                // catch up from the store.
                if let Some(hello) = self.offered.take() {
                    self.session = Some((hello.session_id, hello.cursor));
                }
                self.sync()
            }
            ServerFrame::Control(Control::Synced(synced)) => {
                let asked = self.syncing.take().map(|s| s.positions).unwrap_or_default();
                // Where live delivery continues, for conversations this
                // sync did not list: a new one starts there; one held
                // further back must catch up from where it is.
                let mut behind = Vec::new();
                for (conversation, seq) in synced.positions {
                    match self.positions.get(&conversation) {
                        None => {
                            self.positions.insert(conversation, seq);
                        }
                        Some(&held) if held < seq && !asked.contains_key(&conversation) => {
                            behind.push(conversation);
                        }
                        Some(_) => {}
                    }
                }
                for gone in synced.not_member {
                    self.positions.remove(&gone);
                }
                let positions: BTreeMap<Uuid, i64> = synced
                    .incomplete
                    .iter()
                    .chain(&behind)
                    .filter_map(|c| Some((*c, *self.positions.get(c)?)))
                    .collect();
                if positions.is_empty() {
                    Step::Nothing
                } else {
                    self.ask(Sync { positions })
                }
            }
            ServerFrame::Control(Control::Error(error))
                if error.code == ErrorCode::Unavailable && self.syncing.is_some() =>
            {
                // Ask again from where the client is now.
                let asked = self.syncing.take().unwrap_or_default();
                let positions = asked
                    .positions
                    .keys()
                    .filter_map(|c| Some((*c, *self.positions.get(c)?)))
                    .collect();
                self.syncing = Some(Sync { positions });
                Step::RetryLater(ClientFrame::Sync(self.syncing.clone().unwrap_or_default()))
            }
            ServerFrame::Control(other) => Step::Control(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::{EventFrame, MessageRead, ResumeFailed, ResumeRefusal, Synced};

    use super::*;

    fn hello(session: u128, cursor: u64) -> ServerFrame {
        ServerFrame::Control(Control::Hello(Hello {
            session_id: Uuid::from_u128(session),
            cursor,
        }))
    }

    fn answered(positions: &[(u128, i64)]) -> ServerFrame {
        ServerFrame::Control(Control::Synced(Synced {
            positions: positions
                .iter()
                .map(|(c, seq)| (Uuid::from_u128(*c), *seq))
                .collect(),
            incomplete: vec![],
            not_member: vec![],
        }))
    }

    fn event(conversation: u128, seq: i64, cursor: u64) -> ServerFrame {
        ServerFrame::Event(EventFrame {
            event: Event::MessageRead(MessageRead {
                conversation_id: Uuid::from_u128(conversation),
                seq,
                user_id: Uuid::nil(),
                read_seq: seq - 1,
            }),
            cursor,
        })
    }

    #[test]
    fn a_connection_lost_before_synced_starts_over() {
        let mut place = Place::new();
        assert!(matches!(
            place.apply(hello(1, 0)),
            Step::Reply(ClientFrame::Sync(_))
        ));
        // Dropped before `synced`: the next connection syncs, not resumes.
        assert_eq!(place.session(), None);
        assert!(matches!(
            place.apply(hello(2, 0)),
            Step::Reply(ClientFrame::Sync(_))
        ));
        assert_eq!(place.session(), None, "still waiting for synced");
        place.apply(answered(&[]));
        assert_eq!(place.session(), Some((Uuid::from_u128(2), 0)));
    }

    #[test]
    fn a_resume_granted_at_connect_needs_no_frame() {
        let mut place = Place::new();
        place.apply(hello(1, 0));
        place.apply(answered(&[]));
        assert!(matches!(place.apply(event(7, 1, 4)), Step::Deliver(_)));
        // Reconnected with ?session_id=1&cursor=4: the same session greets.
        assert_eq!(place.apply(hello(1, 4)), Step::Nothing);
        assert_eq!(place.session(), Some((Uuid::from_u128(1), 4)));
    }

    #[test]
    fn a_conversation_held_behind_where_live_delivery_continues_is_synced() {
        let (known, behind, fresh) = (Uuid::from_u128(7), Uuid::from_u128(8), Uuid::from_u128(9));
        let mut place = Place::with_positions([(known, 3), (behind, 2)].into());
        place.apply(hello(1, 0));
        // The server asks for `known` only; it reports `behind` further on.
        let asked = place.apply(ServerFrame::Control(Control::Synced(Synced {
            positions: BTreeMap::new(),
            incomplete: vec![known],
            not_member: vec![],
        })));
        assert_eq!(
            asked,
            Step::Reply(ClientFrame::Sync(Sync {
                positions: [(known, 3)].into()
            }))
        );
        let answer = Synced {
            positions: [(known, 5), (behind, 57), (fresh, 4)].into(),
            incomplete: vec![],
            not_member: vec![],
        };
        assert_eq!(
            place.apply(ServerFrame::Control(Control::Synced(answer))),
            Step::Reply(ClientFrame::Sync(Sync {
                positions: [(behind, 2)].into()
            })),
            "behind catches up from where it is; fresh starts where the server says"
        );
        assert_eq!(place.positions().get(&fresh), Some(&4));
    }

    #[test]
    fn a_first_connection_syncs_then_resumes_its_session_after() {
        let mut place = Place::new();
        assert_eq!(
            place.apply(hello(1, 0)),
            Step::Reply(ClientFrame::Sync(Sync::default()))
        );
        let synced = Synced {
            positions: [(Uuid::from_u128(7), 3)].into(),
            incomplete: vec![],
            not_member: vec![],
        };
        assert_eq!(
            place.apply(ServerFrame::Control(Control::Synced(synced))),
            Step::Nothing
        );
        assert!(matches!(place.apply(event(7, 4, 1)), Step::Deliver(_)));
        assert_eq!(place.apply(event(7, 4, 2)), Step::Duplicate);
        assert!(matches!(place.apply(event(7, 5, 3)), Step::Deliver(_)));
        assert_eq!(place.session(), Some((Uuid::from_u128(1), 3)));
        // Reconnect: the new hello is answered with a resume of the old one.
        assert_eq!(
            place.apply(hello(2, 0)),
            Step::Reply(ClientFrame::Resume(Resume {
                session_id: Uuid::from_u128(1),
                cursor: 3
            }))
        );
        let refused = ServerFrame::Control(Control::ResumeFailed(ResumeFailed {
            session_id: Some(Uuid::from_u128(1)),
            reason: ResumeRefusal::NotFound,
        }));
        assert_eq!(
            place.apply(refused),
            Step::Reply(ClientFrame::Sync(Sync {
                positions: [(Uuid::from_u128(7), 5)].into()
            }))
        );
        // The new session is resumable once its sync is answered.
        assert_eq!(place.session(), None);
        place.apply(answered(&[]));
        assert_eq!(place.session(), Some((Uuid::from_u128(2), 0)));
    }

    #[test]
    fn an_incomplete_sync_is_continued_and_lost_conversations_are_dropped() {
        let mut place =
            Place::with_positions([(Uuid::from_u128(7), 3), (Uuid::from_u128(8), 1)].into());
        place.apply(hello(1, 0));
        let synced = Synced {
            positions: [(Uuid::from_u128(7), 900)].into(),
            incomplete: vec![Uuid::from_u128(7)],
            not_member: vec![Uuid::from_u128(8)],
        };
        // The sync's events advanced 7 to 900 before `synced` came.
        for seq in 4..=900 {
            place.apply(event(7, seq, seq as u64));
        }
        assert_eq!(
            place.apply(ServerFrame::Control(Control::Synced(synced))),
            Step::Reply(ClientFrame::Sync(Sync {
                positions: [(Uuid::from_u128(7), 900)].into()
            }))
        );
        assert!(!place.positions().contains_key(&Uuid::from_u128(8)));
    }
}
