//! The contract every `Store` keeps.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use switchboard_protocol::{
    Attachment, AttachmentKind, ConversationKind, Event, Role, ScheduledFailure, ScheduledMessage,
    ScheduledStatus,
};
use switchboard_storage::{
    AttachmentState, Claimed, Clock, CreateConversation, CreateOutcome, DeleteAttachment,
    DeleteMessage, DeletionReason, EditMessage, MessageRange, NewAttachment, NewMessage,
    NewScheduled, Rejection, ScheduleCaps, ScheduleOutcome, ScheduledChange, SendOutcome, Store,
    StoreError, StoredAttachment, SystemClock,
};
use uuid::Uuid;

use crate::backend::Backend;

fn now() -> DateTime<Utc> {
    SystemClock::new().now()
}

pub(crate) async fn group(store: &dyn Store, owner: Uuid, members: &[Uuid]) -> Uuid {
    let id = Uuid::now_v7();
    let outcome = store
        .create_conversation(CreateConversation {
            id,
            kind: ConversationKind::Group,
            title: Some("contract".into()),
            creator: owner,
            members: members.to_vec(),
            at: now(),
        })
        .await
        .unwrap();
    assert!(matches!(outcome, CreateOutcome::Created(_)));
    id
}

pub(crate) fn message(conversation_id: Uuid, sender_id: Uuid, content: &str) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        conversation_id,
        sender_id,
        encrypted_content: content.into(),
        nonce: "bm9uY2U=".into(),
        message_type: "text".into(),
        idempotency_key: None,
        attachment: None,
        scheduled: None,
        at: now(),
    }
}

async fn send(
    store: &dyn Store,
    conversation: Uuid,
    sender: Uuid,
    content: &str,
) -> switchboard_protocol::Message {
    match store
        .send(message(conversation, sender, content))
        .await
        .unwrap()
    {
        SendOutcome::Created(committed) => committed.value,
        SendOutcome::Duplicate(_) => panic!("no key, no duplicate"),
    }
}

async fn log(store: &dyn Store, conversation: Uuid) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    loop {
        let after = events.last().map_or(0, Event::seq);
        let page = store.events(conversation, after, 10_000).await.unwrap();
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    switchboard_simulation::check_log(&events).expect("the log obeys the rules");
    events
}

fn edit(conversation_id: Uuid, message_id: Uuid, editor: Uuid) -> EditMessage {
    EditMessage {
        conversation_id,
        message_id,
        editor,
        encrypted_content: "ZWRpdGVk".into(),
        nonce: "bm9uY2U=".into(),
        at: now(),
    }
}

fn delete(conversation_id: Uuid, message_id: Uuid, by: Uuid) -> DeleteMessage {
    DeleteMessage {
        conversation_id,
        message_id,
        by,
        at: now(),
    }
}

fn rejected(result: Result<impl std::fmt::Debug, StoreError>) -> Rejection {
    match result {
        Err(StoreError::Rejected(why)) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

pub(crate) async fn creates_and_reads_a_group(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    let conversation = store.conversation(id).await.unwrap().unwrap();
    assert_eq!(conversation.kind, ConversationKind::Group);
    assert_eq!(conversation.title.as_deref(), Some("contract"));
    assert_eq!(conversation.last_seq, 1);
    let roles: Vec<(Uuid, Role)> = conversation
        .members
        .iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert!(roles.contains(&(owner, Role::Owner)) && roles.contains(&(member, Role::Member)));
    assert_eq!(store.role(id, member).await.unwrap(), Some(Role::Member));
    assert_eq!(store.role(id, Uuid::new_v4()).await.unwrap(), None);
    let events = log(store, id).await;
    assert!(
        matches!(&events[..], [Event::ConversationCreated(c)] if c.conversation == conversation)
    );
    assert!(store.conversation(Uuid::new_v4()).await.unwrap().is_none());
    store.ping().await.unwrap();
}

pub(crate) async fn a_direct_pair_has_one_conversation(b: Arc<Backend>) {
    let store = &*b.store;
    let (a, c) = (Uuid::new_v4(), Uuid::new_v4());
    let create = |creator: Uuid, other: Uuid| CreateConversation {
        id: Uuid::now_v7(),
        kind: ConversationKind::Direct,
        title: None,
        creator,
        members: vec![other],
        at: now(),
    };
    let CreateOutcome::Created(first) = store.create_conversation(create(a, c)).await.unwrap()
    else {
        panic!("first creation creates");
    };
    let CreateOutcome::Existing(again) = store.create_conversation(create(c, a)).await.unwrap()
    else {
        panic!("the pair already has one");
    };
    assert_eq!(first.value.id, again.id);
    // Its members are fixed.
    let outcome = store
        .add_member(again.id, a, Uuid::new_v4(), Role::Member, now())
        .await;
    assert_eq!(rejected(outcome), Rejection::NotPermitted);
    let outcome = store.remove_member(again.id, a, a, now()).await;
    assert_eq!(rejected(outcome), Rejection::NotPermitted);
}

pub(crate) async fn concurrent_sends_take_gap_free_seqs(b: Arc<Backend>) {
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(&*b.store, owner, &[member]).await;
    let other_node = b.another().await;
    let mut tasks = Vec::new();
    for (store, sender) in [
        (Arc::clone(&b.store), owner),
        (Arc::clone(&b.store), member),
        (Arc::clone(&other_node), owner),
        (other_node, member),
    ] {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                seqs.push(send(&*store, id, sender, &format!("m{i}")).await.seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one sender's seqs rise"
        );
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=41).collect::<Vec<_>>());
    let events = log(&*b.store, id).await;
    assert_eq!(events.len(), 41);
    assert_eq!(
        b.store.conversation(id).await.unwrap().unwrap().last_seq,
        41
    );
}

pub(crate) async fn an_idempotency_key_stores_once(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    let mut first = message(id, owner, "aGk=");
    first.idempotency_key = Some("key-1".into());
    let SendOutcome::Created(created) = store.send(first.clone()).await.unwrap() else {
        panic!("new key creates");
    };
    let mut retry = first.clone();
    retry.id = Uuid::now_v7();
    let SendOutcome::Duplicate(duplicate) = store.send(retry.clone()).await.unwrap() else {
        panic!("same key is a duplicate");
    };
    assert_eq!(duplicate, created.value);
    retry.encrypted_content = "b3RoZXI=".into();
    assert!(matches!(
        store.send(retry).await,
        Err(StoreError::Conflict(_))
    ));
    let mut theirs = first;
    theirs.id = Uuid::now_v7();
    theirs.sender_id = member;
    assert!(matches!(
        store.send(theirs).await.unwrap(),
        SendOutcome::Created(_)
    ));
    assert_eq!(log(store, id).await.len(), 3);
}

/// Many sends at once, as a store that commits them together sees them:
/// each gets its own outcome (created, duplicate of a key sent in the same
/// burst, conflict, refused for a non-member), and only the created ones
/// are written, gap-free per conversation.
pub(crate) async fn sends_at_once_each_get_their_own_outcome(b: Arc<Backend>) {
    let (owner, outsider) = (Uuid::new_v4(), Uuid::new_v4());
    let rooms = [
        group(&*b.store, owner, &[]).await,
        group(&*b.store, owner, &[]).await,
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60_usize {
        let store = Arc::clone(&b.store);
        let room = rooms[i % 2];
        let mut command = message(room, if i % 10 == 9 { outsider } else { owner }, "aGk=");
        // Each key goes twice to each room at once; in the second room one
        // of the pair has other content, so whichever lands second there is
        // a conflict (or the first's duplicate, in the first room).
        command.idempotency_key = Some(format!("k{}", i / 4));
        if i % 4 == 3 {
            command.encrypted_content = "b3RoZXI=".into();
        }
        tasks.spawn(async move { (i, store.send(command).await) });
    }
    let mut created = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, outcome) = done.unwrap();
        match outcome {
            Ok(SendOutcome::Created(_)) => created += 1,
            Ok(SendOutcome::Duplicate(m)) => assert_eq!(m.sender_id, owner, "send {i}"),
            Err(StoreError::Conflict(_)) => assert_eq!(i % 2, 1, "send {i}"),
            Err(StoreError::Rejected(Rejection::NotMember)) => assert_eq!(i % 10, 9),
            other => panic!("send {i}: {other:?}"),
        }
    }
    let mut written = 0;
    for room in rooms {
        let events = log(&*b.store, room).await;
        let seqs: Vec<i64> = events.iter().map(Event::seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
        written += events.len() - 1;
    }
    assert_eq!(written, created, "exactly the created sends are written");
}

/// A conversation actor's batch: one store call, outcomes in order, and
/// the created messages numbered in the order they were given.
pub(crate) async fn a_batch_of_sends_keeps_its_order(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member, outsider) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    let keyed = |sender, key: &str, content: &str| {
        let mut command = message(id, sender, content);
        command.idempotency_key = Some(key.into());
        command
    };
    let outcomes = store
        .send_batch(vec![
            message(id, owner, "MQ=="),
            keyed(member, "k", "Mg=="),
            message(id, outsider, "eA=="),
            keyed(member, "k", "Mg=="),
            keyed(member, "k", "b3RoZXI="),
            message(id, owner, "Mw=="),
        ])
        .await;
    assert_eq!(outcomes.len(), 6);
    let created = |i: usize| match &outcomes[i] {
        Ok(SendOutcome::Created(c)) => c.value.clone(),
        other => panic!("send {i}: {other:?}"),
    };
    let (first, keyed_first, last) = (created(0), created(1), created(5));
    assert_eq!(
        (first.seq, keyed_first.seq, last.seq),
        (2, 3, 4),
        "numbered in the order given, refused sends taking no seq"
    );
    assert!(matches!(
        outcomes[2],
        Err(StoreError::Rejected(Rejection::NotMember))
    ));
    match &outcomes[3] {
        Ok(SendOutcome::Duplicate(m)) => assert_eq!(m, &keyed_first),
        other => panic!("a repeated key is a duplicate: {other:?}"),
    }
    assert!(matches!(outcomes[4], Err(StoreError::Conflict(_))));
    let contents: Vec<String> = log(store, id)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::MessageNew(m) => Some(m.encrypted_content),
            _ => None,
        })
        .collect();
    assert_eq!(contents, ["MQ==", "Mg==", "Mw=="]);
    assert!(store.send_batch(Vec::new()).await.is_empty());
}

pub(crate) async fn a_non_member_writes_nothing(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, outsider) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[]).await;
    let sent = send(store, id, owner, "aGk=").await;
    assert_eq!(
        rejected(store.send(message(id, outsider, "eA==")).await),
        Rejection::NotMember
    );
    assert_eq!(
        rejected(store.edit(edit(id, sent.id, outsider)).await),
        Rejection::NotMember
    );
    assert_eq!(
        rejected(store.delete(delete(id, sent.id, outsider)).await),
        Rejection::NotMember
    );
    assert_eq!(
        rejected(store.mark_read(id, outsider, 1, now()).await),
        Rejection::NotMember
    );
    let outcome = store
        .add_member(id, outsider, outsider, Role::Member, now())
        .await;
    assert_eq!(rejected(outcome), Rejection::NotPermitted);
    let outcome = store.remove_member(id, outsider, owner, now()).await;
    assert_eq!(rejected(outcome), Rejection::NotPermitted);
    assert_eq!(log(store, id).await.len(), 2);
    // Sending to a conversation that does not exist is refused the same way.
    let nowhere = store.send(message(Uuid::new_v4(), owner, "eA==")).await;
    assert_eq!(rejected(nowhere), Rejection::NotMember);
}

pub(crate) async fn edit_and_delete_repeat_the_permission_check(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, admin, sender, member) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let id = group(store, owner, &[admin, sender, member]).await;
    store
        .change_role(id, owner, admin, Role::Admin, now())
        .await
        .unwrap();
    let sent = send(store, id, sender, "aGk=").await;

    for editor in [owner, admin, member] {
        assert_eq!(
            rejected(store.edit(edit(id, sent.id, editor)).await),
            Rejection::NotPermitted
        );
    }
    let edited = store.edit(edit(id, sent.id, sender)).await.unwrap();
    assert_eq!(edited.value.encrypted_content, "ZWRpdGVk");
    assert!(edited.value.edited_at.is_some());
    assert!(matches!(&edited.events[..], [Event::MessageEdited(e)] if e.message_seq == sent.seq));

    assert_eq!(
        rejected(store.delete(delete(id, sent.id, member)).await),
        Rejection::NotPermitted
    );
    let deleted = store.delete(delete(id, sent.id, admin)).await.unwrap();
    assert!(deleted.value.deleted_at.is_some());
    assert!(deleted.value.encrypted_content.is_empty() && deleted.value.nonce.is_empty());
    assert_eq!(
        rejected(store.delete(delete(id, sent.id, sender)).await),
        Rejection::Deleted
    );
    assert_eq!(
        rejected(store.edit(edit(id, sent.id, sender)).await),
        Rejection::Deleted
    );
    assert!(matches!(
        store.edit(edit(id, Uuid::new_v4(), sender)).await,
        Err(StoreError::NotFound)
    ));

    // The sender may delete their own; a removed sender may not touch theirs.
    let own = send(store, id, sender, "aGk=").await;
    store.delete(delete(id, own.id, sender)).await.unwrap();
    let last = send(store, id, sender, "aGk=").await;
    store.remove_member(id, owner, sender, now()).await.unwrap();
    assert_eq!(
        rejected(store.edit(edit(id, last.id, sender)).await),
        Rejection::NotMember
    );
    assert_eq!(
        rejected(store.delete(delete(id, last.id, sender)).await),
        Rejection::NotMember
    );
    let stored = store.message(last.id).await.unwrap().unwrap();
    assert_eq!(stored, last);
    log(store, id).await;
}

pub(crate) async fn read_positions_only_advance(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    send(store, id, owner, "aGk=").await;
    let event = store.mark_read(id, member, 2, now()).await.unwrap();
    assert!(
        matches!(event, Some(Event::MessageRead(r)) if r.read_seq == 2 && r.user_id == member && r.seq == 3)
    );
    assert!(
        store
            .mark_read(id, member, 2, now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .mark_read(id, member, 1, now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .mark_read(id, member, 99, now())
            .await
            .unwrap()
            .is_none(),
        "beyond the log"
    );
    let members = store.members(id).await.unwrap();
    assert_eq!(
        members
            .iter()
            .find(|m| m.user_id == member)
            .unwrap()
            .last_read_seq,
        2
    );
    assert_eq!(log(store, id).await.len(), 3);
}

pub(crate) async fn membership_changes_follow_the_rules(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, admin, member, newcomer) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let id = group(store, owner, &[admin, member]).await;
    let outcome = store
        .add_member(id, member, newcomer, Role::Member, now())
        .await;
    assert_eq!(rejected(outcome), Rejection::NotPermitted);
    store
        .change_role(id, owner, admin, Role::Admin, now())
        .await
        .unwrap();
    let added = store
        .add_member(id, admin, newcomer, Role::Member, now())
        .await
        .unwrap();
    assert_eq!(added.value.user_id, newcomer);
    assert_eq!(
        added.value.last_read_seq, 2,
        "a newcomer has read everything before their arrival"
    );
    let again = store
        .add_member(id, admin, newcomer, Role::Member, now())
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let owner_role = store
        .add_member(id, owner, Uuid::new_v4(), Role::Owner, now())
        .await;
    assert_eq!(rejected(owner_role), Rejection::NotPermitted);
    let demote_owner = store
        .change_role(id, admin, owner, Role::Member, now())
        .await;
    assert_eq!(rejected(demote_owner), Rejection::NotPermitted);
    let remove_owner = store.remove_member(id, admin, owner, now()).await;
    assert_eq!(rejected(remove_owner), Rejection::NotPermitted);
    let by_member = store.remove_member(id, member, newcomer, now()).await;
    assert_eq!(rejected(by_member), Rejection::NotPermitted);

    store
        .remove_member(id, member, member, now())
        .await
        .unwrap();
    let left = store.remove_member(id, owner, owner, now()).await.unwrap();
    assert!(
        matches!(&left.events[..], [Event::MemberLeft(l), Event::MemberRoleChanged(r)]
        if l.user_id == owner && r.user_id == admin && r.role == Role::Owner)
    );
    assert_eq!(store.role(id, admin).await.unwrap(), Some(Role::Owner));
    assert_eq!(store.role(id, member).await.unwrap(), None);
    log(store, id).await;
}

pub(crate) async fn the_list_summarizes_in_one_query(b: Arc<Backend>) {
    let store = &*b.store;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let quiet = group(store, alice, &[bob]).await;
    let busy = group(store, alice, &[bob]).await;
    // Activity times have millisecond resolution, and a fast store can do
    // all of this within one millisecond.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    for i in 0..3 {
        send(store, busy, alice, &format!("m{i}")).await;
    }
    let own = send(store, busy, bob, "bWluZQ==").await;
    let list = store.conversations_for(bob, 50).await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![busy, quiet]
    );
    assert_eq!(list[0].last_message.as_ref(), Some(&own));
    assert_eq!((list[0].unread_count, list[0].member_count), (3, 2));
    assert_eq!(
        (list[1].unread_count, list[1].last_message.as_ref()),
        (0, None)
    );
    assert_eq!(list[0].role, Role::Member);
    assert_eq!(store.conversations_for(bob, 1).await.unwrap().len(), 1);
    let mut positions = store.positions_for(bob, 50).await.unwrap();
    positions.sort_unstable();
    let mut expected = vec![(quiet, 1), (busy, 5)];
    expected.sort_unstable();
    assert_eq!(positions, expected);
    // Last seqs by id, for members and not alike; a missing id is left out.
    let mut last = store
        .last_seqs(&[busy, Uuid::new_v4(), quiet])
        .await
        .unwrap();
    last.sort_unstable();
    assert_eq!(last, expected);
    assert!(store.last_seqs(&[]).await.unwrap().is_empty());
    assert!(
        store
            .conversations_for(Uuid::new_v4(), 50)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn message_pages_follow_seq(b: Arc<Backend>) {
    let store = &*b.store;
    let owner = Uuid::new_v4();
    let id = group(store, owner, &[]).await;
    for i in 0..10 {
        send(store, id, owner, &format!("m{i}")).await;
    }
    let page = |after_seq, before_seq, limit| async move {
        store
            .messages(
                id,
                MessageRange {
                    after_seq,
                    before_seq,
                    limit,
                },
            )
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None, None, 3).await, vec![9, 10, 11]);
    assert_eq!(page(Some(4), None, 3).await, vec![5, 6, 7]);
    assert_eq!(page(None, Some(5), 10).await, vec![2, 3, 4]);
    assert_eq!(page(Some(3), Some(6), 10).await, vec![4, 5]);
    let events = store.events(id, 5, 3).await.unwrap();
    assert_eq!(
        events.iter().map(Event::seq).collect::<Vec<_>>(),
        vec![6, 7, 8]
    );
}

/// Many conversations' events in one call: by conversation id, then seq,
/// each after its own position, cut at the limit.
pub(crate) async fn events_of_reads_many_conversations_at_once(b: Arc<Backend>) {
    let store = &*b.store;
    let owner = Uuid::new_v4();
    let mut rooms = Vec::new();
    for r in 0..4 {
        let id = group(store, owner, &[]).await;
        for i in 0..3 {
            send(store, id, owner, &format!("r{r}m{i}")).await;
        }
        rooms.push(id);
    }
    // Each room's log: created, then three messages (seqs 1 to 4).
    let from: Vec<(Uuid, i64)> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, i64::try_from(i % 3).unwrap()))
        .collect();
    let mut expected = Vec::new();
    let mut sorted = from.clone();
    sorted.sort_unstable();
    for (room, after) in &sorted {
        for event in store.events(*room, *after, 100).await.unwrap() {
            expected.push((event.conversation_id(), event.seq()));
        }
    }
    let from = &from;
    let got = |limit| async move {
        store
            .events_of(from, limit)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.conversation_id(), e.seq()))
            .collect::<Vec<_>>()
    };
    assert_eq!(got(100).await, expected);
    assert_eq!(got(5).await, expected[..5].to_vec(), "cut at the limit");
    assert!(store.events_of(&[], 10).await.unwrap().is_empty());
}

/// Two nodes write without any actor between them: one removes a member
/// while the other keeps editing as that member. The statements' own
/// conditions must keep every edit before the removal.
pub(crate) async fn two_nodes_cannot_let_a_removed_member_edit(b: Arc<Backend>) {
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(&*b.store, owner, &[member]).await;
    let sent = send(&*b.store, id, member, "aGk=").await;
    let other_node = b.another().await;
    let editor = tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            match other_node.edit(edit(id, sent.id, member)).await {
                Ok(_) => accepted += 1,
                Err(StoreError::Rejected(Rejection::NotMember)) => return accepted,
                Err(other) => panic!("unexpected {other:?}"),
            }
            // A store that never waits would otherwise spin here unseen.
            tokio::task::yield_now().await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    b.store
        .remove_member(id, owner, member, now())
        .await
        .unwrap();
    let accepted = editor.await.unwrap();
    let events = log(&*b.store, id).await;
    let removed = events
        .iter()
        .find(|e| matches!(e, Event::MemberLeft(_)))
        .map(Event::seq)
        .unwrap();
    let edits: Vec<i64> = events
        .iter()
        .filter(|e| matches!(e, Event::MessageEdited(_)))
        .map(Event::seq)
        .collect();
    assert_eq!(edits.len(), accepted, "every accepted edit is in the log");
    assert!(
        edits.iter().all(|&seq| seq < removed),
        "no edit after the removal"
    );
    assert!(accepted > 0, "the race was real");
}

fn upload(conversation_id: Uuid, uploader_id: Uuid) -> NewAttachment {
    let id = Uuid::now_v7();
    NewAttachment {
        id,
        conversation_id,
        uploader_id,
        kind: AttachmentKind::Audio,
        s3_key: format!("conversations/{conversation_id}/{id}"),
        content_type: "audio/mp4".into(),
        size_bytes: 1234,
        file_name: None,
        at: now(),
        upload_expires_at: now() + chrono::TimeDelta::seconds(3600),
    }
}

fn with_attachment(message: NewMessage, stored: &StoredAttachment) -> NewMessage {
    NewMessage {
        message_type: "audio".into(),
        attachment: Some(Box::new(Attachment {
            duration_ms: Some(4_200),
            ..stored.attachment.clone()
        })),
        ..message
    }
}

fn deletion(id: Uuid, by: Option<Uuid>) -> DeleteAttachment {
    DeleteAttachment {
        id,
        by,
        reason: if by.is_some() {
            DeletionReason::User
        } else {
            DeletionReason::Unattached
        },
        at: now(),
    }
}

/// An upload row is a member's alone; a send claims it once, the message
/// carries it, and deleting the message tombstones it with its deletion
/// owed and audited, in the same transaction.
pub(crate) async fn an_attachment_is_sent_once_and_goes_with_its_message(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member, stranger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    assert!(matches!(
        store.create_attachment(upload(id, stranger)).await,
        Err(StoreError::Rejected(Rejection::NotMember))
    ));
    let stored = store.create_attachment(upload(id, member)).await.unwrap();
    assert_eq!(stored.state, AttachmentState::Pending);
    assert_eq!(
        store.attachment(stored.attachment.id).await.unwrap(),
        Some(stored.clone())
    );

    // Only its uploader sends it, in its own conversation.
    let other = group(store, member, &[]).await;
    for (conversation, sender) in [(id, owner), (other, member)] {
        let refused = store
            .send(with_attachment(
                message(conversation, sender, "YQ=="),
                &stored,
            ))
            .await;
        assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    }
    let keyed = NewMessage {
        idempotency_key: Some("voice-1".into()),
        ..with_attachment(message(id, member, "YQ=="), &stored)
    };
    let SendOutcome::Created(sent) = store.send(keyed.clone()).await.unwrap() else {
        panic!("a new message");
    };
    let carried = sent.value.attachment.clone().unwrap();
    assert_eq!(
        (carried.id, carried.duration_ms),
        (stored.attachment.id, Some(4_200))
    );
    // A retry with its key is the same message; another send of it is not.
    assert!(matches!(
        store.send(NewMessage { id: Uuid::now_v7(), ..keyed }).await,
        Ok(SendOutcome::Duplicate(m)) if m.id == sent.value.id
    ));
    assert!(matches!(
        store
            .send(with_attachment(message(id, member, "Yg=="), &stored))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let read = store.message(sent.value.id).await.unwrap().unwrap();
    assert_eq!(read.attachment, sent.value.attachment);
    let listed = store.conversations_for(member, 10).await.unwrap();
    let last = listed.iter().find(|c| c.id == id).unwrap();
    assert_eq!(
        last.last_message.as_ref().unwrap().attachment,
        sent.value.attachment
    );
    let attached = store
        .attachment(stored.attachment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attached.state, AttachmentState::Attached);
    assert_eq!(attached.message_id, Some(sent.value.id));
    assert!(matches!(
        store
            .delete_attachment(deletion(stored.attachment.id, Some(member)))
            .await,
        Err(StoreError::Conflict(_))
    ));

    // The message's deletion takes the attachment with it.
    let deleted = store
        .delete(DeleteMessage {
            conversation_id: id,
            message_id: sent.value.id,
            by: owner,
            at: now(),
        })
        .await
        .unwrap();
    assert!(deleted.value.attachment.is_none());
    assert!(
        store
            .message(sent.value.id)
            .await
            .unwrap()
            .unwrap()
            .attachment
            .is_none()
    );
    let tombstone = store
        .attachment(stored.attachment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tombstone.state, AttachmentState::Deleted);
    assert_eq!(store.deletions_owed().await.unwrap(), 1);
    let audit = store.audit(&stored.attachment.s3_key).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].actor, audit[0].reason),
        (Some(owner), DeletionReason::MessageDeleted)
    );
}

/// Deleting an unsent attachment: its uploader or a moderator, once; the
/// sweeper (no actor) any pending one. Deletes racing each other end with
/// one tombstone, one deletion owed and one audit entry.
pub(crate) async fn an_unsent_attachment_is_deleted_once(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member, other, stranger) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let id = group(store, owner, &[member, other]).await;
    let stored = store.create_attachment(upload(id, member)).await.unwrap();
    let attachment = stored.attachment.id;
    assert!(matches!(
        store
            .delete_attachment(deletion(attachment, Some(other)))
            .await,
        Err(StoreError::Rejected(Rejection::NotPermitted))
    ));
    assert!(matches!(
        store
            .delete_attachment(deletion(attachment, Some(stranger)))
            .await,
        Err(StoreError::Rejected(Rejection::NotMember))
    ));
    assert!(matches!(
        store
            .delete_attachment(deletion(Uuid::now_v7(), Some(owner)))
            .await,
        Err(StoreError::NotFound)
    ));

    let racers: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&b.store);
            let by = if i % 2 == 0 { member } else { owner };
            tokio::spawn(async move {
                store
                    .delete_attachment(deletion(attachment, Some(by)))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(tombstone) => {
                won += 1;
                assert_eq!(tombstone.state, AttachmentState::Deleted);
            }
            Err(StoreError::NotFound) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1, "one delete wins, the others find nothing");
    assert_eq!(
        store.audit(&stored.attachment.s3_key).await.unwrap().len(),
        1
    );
    assert_eq!(store.deletions_owed().await.unwrap(), 1);
    // A deleted attachment can never be sent.
    assert!(matches!(
        store
            .send(with_attachment(message(id, member, "YQ=="), &stored))
            .await,
        Err(StoreError::NotFound)
    ));

    // The sweeper deletes any pending attachment.
    let forgotten = store.create_attachment(upload(id, other)).await.unwrap();
    let swept = store
        .delete_attachment(deletion(forgotten.attachment.id, None))
        .await
        .unwrap();
    assert_eq!(swept.state, AttachmentState::Deleted);
    let audit = store.audit(&forgotten.attachment.s3_key).await.unwrap();
    assert_eq!(
        (audit[0].actor, audit[0].reason),
        (None, DeletionReason::Unattached)
    );
}

/// Deletions are taken with a lease: a claimed one is not claimed again
/// until the lease runs out or it is deferred, and a finished one is gone.
pub(crate) async fn deletions_are_claimed_with_a_lease(b: Arc<Backend>) {
    let store = &*b.store;
    let owner = Uuid::new_v4();
    let id = group(store, owner, &[]).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        let stored = store.create_attachment(upload(id, owner)).await.unwrap();
        store
            .delete_attachment(deletion(stored.attachment.id, Some(owner)))
            .await
            .unwrap();
        keys.push(stored.attachment.s3_key);
    }
    let t = now() + chrono::TimeDelta::seconds(1);
    let lease = t + chrono::TimeDelta::seconds(30);
    let first = store.claim_deletions(t, lease, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|d| d.attempts == 1 && keys.contains(&d.s3_key))
    );
    let second = store.claim_deletions(t, lease, 10).await.unwrap();
    assert_eq!(second.len(), 1, "the leased ones are not taken twice");
    assert!(
        store
            .claim_deletions(t, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    store.finish_deletion(first[0].id).await.unwrap();
    store.defer_deletion(first[1].id, t).await.unwrap();
    let again = store.claim_deletions(t, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (first[1].id, 2));
    // A lease that ran out is taken again, by whichever node asks.
    let later = lease + chrono::TimeDelta::seconds(1);
    let expired = store
        .claim_deletions(later, later + chrono::TimeDelta::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(expired.len(), 2);
    assert_eq!(store.deletions_owed().await.unwrap(), 2);
}

/// The sweeper's reads: attachments by object key in one query, and pending
/// ones past their URL's expiry, paged by id.
pub(crate) async fn the_sweepers_reads_find_what_it_looks_for(b: Arc<Backend>) {
    let store = &*b.store;
    let owner = Uuid::new_v4();
    let id = group(store, owner, &[]).await;
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(store.create_attachment(upload(id, owner)).await.unwrap());
    }
    let keys: Vec<String> = made
        .iter()
        .map(|a| a.attachment.s3_key.clone())
        .chain(["conversations/none/none".to_owned()])
        .collect();
    let mut found = store.attachments_by_keys(&keys).await.unwrap();
    found.sort_by_key(|a| a.attachment.id);
    assert_eq!(found, made);

    let before_expiry = now();
    assert!(
        store
            .pending_attachments(before_expiry, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "their URLs have not expired"
    );
    let after_expiry = now() + chrono::TimeDelta::seconds(3601);
    let page = store
        .pending_attachments(after_expiry, None, 2)
        .await
        .unwrap();
    assert_eq!(page, made[..2]);
    let rest = store
        .pending_attachments(after_expiry, Some(page[1].attachment.id), 2)
        .await
        .unwrap();
    assert_eq!(rest, made[2..]);
}

fn later(entry_at: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    entry_at + chrono::TimeDelta::seconds(seconds)
}

fn entry(conversation_id: Uuid, sender_id: Uuid, deliver_at: DateTime<Utc>) -> NewScheduled {
    NewScheduled {
        id: Uuid::now_v7(),
        conversation_id,
        sender_id,
        deliver_at,
        encrypted_content: "bGF0ZXI=".into(),
        nonce: "bm9uY2U=".into(),
        message_type: "text".into(),
        idempotency_key: None,
        at: now(),
    }
}

const CAPS: ScheduleCaps = ScheduleCaps {
    per_user_max: 3,
    total_max: 5,
};

async fn schedule(store: &dyn Store, new: NewScheduled) -> ScheduledMessage {
    match store.schedule(new, CAPS).await.unwrap() {
        ScheduleOutcome::Created(entry) => entry,
        other => panic!("expected a new entry, got {other:?}"),
    }
}

/// The send a dispatcher makes of a claimed entry.
fn delivery(claimed: &Claimed) -> NewMessage {
    let entry = &claimed.entry;
    NewMessage {
        idempotency_key: Some(format!("scheduled:{}", entry.id)),
        scheduled: Some(claimed.claim),
        ..message(
            entry.conversation_id,
            entry.sender_id,
            &entry.encrypted_content,
        )
    }
}

/// Scheduling checks membership, answers a repeated key with its entry,
/// and writes nothing past a cap, saying when the user's next entry is due.
pub(crate) async fn scheduling_keeps_its_bounds(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member, stranger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    let t = now();
    assert_eq!(
        rejected(
            store
                .schedule(entry(id, stranger, later(t, 60)), CAPS)
                .await
        ),
        Rejection::NotMember
    );

    let keyed = NewScheduled {
        idempotency_key: Some("k1".into()),
        ..entry(id, owner, later(t, 30))
    };
    let first = schedule(store, keyed.clone()).await;
    assert_eq!(first.status, ScheduledStatus::Pending);
    let again = NewScheduled {
        id: Uuid::now_v7(),
        ..keyed.clone()
    };
    assert_eq!(
        store.schedule(again, CAPS).await.unwrap(),
        ScheduleOutcome::Existing(first.clone())
    );
    let reused = NewScheduled {
        id: Uuid::now_v7(),
        encrypted_content: "b3RoZXI=".into(),
        ..keyed
    };
    assert!(matches!(
        store.schedule(reused, CAPS).await,
        Err(StoreError::Conflict(_))
    ));

    schedule(store, entry(id, owner, later(t, 20))).await;
    schedule(store, entry(id, owner, later(t, 40))).await;
    assert_eq!(
        store
            .schedule(entry(id, owner, later(t, 50)), CAPS)
            .await
            .unwrap(),
        ScheduleOutcome::Full {
            user: true,
            next_due: Some(later(t, 20)),
        },
        "the user's cap, and their earliest entry"
    );
    schedule(store, entry(id, member, later(t, 10))).await;
    schedule(store, entry(id, member, later(t, 15))).await;
    assert_eq!(store.scheduled_pending().await.unwrap(), 5);
    assert_eq!(
        store
            .schedule(entry(id, member, later(t, 50)), CAPS)
            .await
            .unwrap(),
        ScheduleOutcome::Full {
            user: false,
            next_due: Some(later(t, 10)),
        },
        "the node's cap"
    );
    // A cancelled entry no longer counts.
    store
        .cancel_scheduled(first.id, owner, now())
        .await
        .unwrap();
    schedule(store, entry(id, owner, later(t, 50))).await;
    assert_eq!(store.scheduled_pending().await.unwrap(), 5);
}

/// Only the sender sees or changes an entry, only while it is pending; the
/// list holds the pending ones and the recent failures, by time due.
pub(crate) async fn a_scheduled_entry_is_its_senders_until_it_goes(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    let other = group(store, owner, &[]).await;
    let t = now();
    let a = schedule(store, entry(id, owner, later(t, 30))).await;
    let b2 = schedule(store, entry(other, owner, later(t, 10))).await;
    let c = schedule(store, entry(id, owner, later(t, 20))).await;

    assert!(matches!(
        store
            .change_scheduled(a.id, member, ScheduledChange::default(), now())
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.cancel_scheduled(a.id, member, now()).await,
        Err(StoreError::NotFound)
    ));
    let changed = store
        .change_scheduled(
            a.id,
            owner,
            ScheduledChange {
                deliver_at: Some(later(t, 5)),
                content: Some(("bmV3".into(), "bjI=".into())),
            },
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        (changed.deliver_at, changed.encrypted_content.as_str()),
        (later(t, 5), "bmV3")
    );
    assert_eq!(store.scheduled(a.id).await.unwrap(), Some(changed.clone()));

    let listed = |conversation| store.scheduled_for(owner, conversation, t, 50);
    let ids = |list: Vec<ScheduledMessage>| list.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(listed(None).await.unwrap()), vec![a.id, b2.id, c.id]);
    assert_eq!(ids(listed(Some(id)).await.unwrap()), vec![a.id, c.id]);
    assert!(
        store
            .scheduled_for(member, None, t, 50)
            .await
            .unwrap()
            .is_empty()
    );

    let cancelled = store.cancel_scheduled(c.id, owner, now()).await.unwrap();
    assert_eq!(cancelled.status, ScheduledStatus::Cancelled);
    assert!(matches!(
        store.cancel_scheduled(c.id, owner, now()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .change_scheduled(c.id, owner, ScheduledChange::default(), now())
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(ids(listed(Some(id)).await.unwrap()), vec![a.id]);

    // A failure stays listed, with its reason, for as long as asked.
    let due = later(t, 40);
    let claimed = store
        .claim_scheduled(due, later(due, 30), 10)
        .await
        .unwrap();
    let held = claimed.iter().find(|c| c.entry.id == a.id).unwrap();
    let failed = store
        .fail_scheduled(held.claim, ScheduledFailure::NotMember, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.failure_reason, Some(ScheduledFailure::NotMember));
    let list = listed(Some(id)).await.unwrap();
    assert_eq!(list, vec![failed]);
    assert!(
        store
            .scheduled_for(owner, Some(id), later(t, 3600), 50)
            .await
            .unwrap()
            .is_empty(),
        "an older failure is not listed"
    );
}

/// Due entries are claimed with a lease, earliest first; the send that
/// delivers one turns it sent in its own transaction, once, and only
/// while its claim holds: not after a cancel, an edit, or another node's
/// claim of an expired lease.
pub(crate) async fn a_due_entry_is_sent_once_under_its_claim(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    let t = now();
    let first = schedule(store, entry(id, owner, later(t, 1))).await;
    let second = schedule(store, entry(id, member, later(t, 2))).await;
    let third = schedule(store, entry(id, owner, later(t, 3))).await;
    let not_due = schedule(store, entry(id, owner, later(t, 60))).await;
    assert_eq!(store.next_scheduled(t).await.unwrap(), Some(later(t, 1)));

    let due = later(t, 5);
    let lease = later(due, 30);
    let claimed = store.claim_scheduled(due, lease, 2).await.unwrap();
    let claimed_ids: Vec<Uuid> = claimed.iter().map(|c| c.entry.id).collect();
    assert_eq!(claimed_ids, vec![first.id, second.id], "earliest first");
    let rest = store.claim_scheduled(due, lease, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].entry.id, third.id);
    assert!(
        store
            .claim_scheduled(due, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.next_scheduled(due).await.unwrap(),
        Some(not_due.deliver_at),
        "held entries are not next"
    );

    // Sent once: the flip commits with the message; a retry replays it.
    let sent = match store.send(delivery(&claimed[0])).await.unwrap() {
        SendOutcome::Created(c) => c.value,
        other => panic!("expected a send, got {other:?}"),
    };
    let entry_now = store.scheduled(first.id).await.unwrap().unwrap();
    assert_eq!(entry_now.status, ScheduledStatus::Sent);
    assert_eq!(entry_now.message_id, Some(sent.id));
    assert!(matches!(
        store.send(delivery(&claimed[0])).await.unwrap(),
        SendOutcome::Duplicate(m) if m.id == sent.id
    ));
    assert!(matches!(
        store.cancel_scheduled(first.id, owner, now()).await,
        Err(StoreError::Conflict(_))
    ));

    // Cancelled after the claim: the delivery writes nothing.
    store
        .cancel_scheduled(third.id, owner, now())
        .await
        .unwrap();
    assert!(matches!(
        store.send(delivery(&rest[0])).await,
        Err(StoreError::Conflict(_))
    ));

    // Changed after the claim: the old claim no longer holds, and the entry
    // is claimable again with its new content.
    store
        .change_scheduled(
            second.id,
            member,
            ScheduledChange {
                deliver_at: None,
                content: Some(("ZWRpdGVk".into(), "bjM=".into())),
            },
            now(),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.send(delivery(&claimed[1])).await,
        Err(StoreError::Conflict(_))
    ));
    let reclaimed = store.claim_scheduled(due, lease, 10).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].entry.encrypted_content, "ZWRpdGVk");

    // Its lease runs out; another node claims it, and the first node's
    // late delivery is refused.
    let after = later(lease, 1);
    let other_node = b.another().await;
    let taken_over = other_node
        .claim_scheduled(after, later(after, 30), 10)
        .await
        .unwrap();
    assert_eq!(taken_over.len(), 1);
    assert!(matches!(
        store.send(delivery(&reclaimed[0])).await,
        Err(StoreError::Conflict(_))
    ));
    let messages_before = log(store, id).await.len();
    match other_node.send(delivery(&taken_over[0])).await.unwrap() {
        SendOutcome::Created(c) => assert_eq!(c.value.encrypted_content, "ZWRpdGVk"),
        other => panic!("expected a send, got {other:?}"),
    }
    assert_eq!(log(store, id).await.len(), messages_before + 1);

    // A release puts it off; failing needs the claim too.
    let held = store
        .claim_scheduled(
            later(not_due.deliver_at, 1),
            later(not_due.deliver_at, 30),
            10,
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let retry = later(not_due.deliver_at, 10);
    store.release_scheduled(held[0].claim, retry).await.unwrap();
    assert!(
        store
            .claim_scheduled(
                later(not_due.deliver_at, 5),
                later(not_due.deliver_at, 30),
                10
            )
            .await
            .unwrap()
            .is_empty(),
        "not before its retry"
    );
    assert_eq!(
        store
            .fail_scheduled(held[0].claim, ScheduledFailure::TooLate, now())
            .await
            .unwrap(),
        None,
        "a released claim fails nothing"
    );
    let again = store
        .claim_scheduled(later(retry, 1), later(retry, 30), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(store.scheduled_pending().await.unwrap(), 1);

    // Finished entries are purged in bounded batches once old enough.
    assert_eq!(store.purge_scheduled(t, 10).await.unwrap(), 0);
    let cutoff = later(now(), 1);
    assert_eq!(store.purge_scheduled(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.purge_scheduled(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.purge_scheduled(cutoff, 2).await.unwrap(), 0);
    assert!(store.scheduled(first.id).await.unwrap().is_none());
    assert!(store.scheduled(not_due.id).await.unwrap().is_some());
}

/// A delivery whose sender left is refused by the send's own membership
/// check and turns nothing sent; in a batch, one entry is sent at most
/// once and the other sends still commit.
pub(crate) async fn a_batch_delivers_each_entry_at_most_once(b: Arc<Backend>) {
    let store = &*b.store;
    let (owner, member) = (Uuid::new_v4(), Uuid::new_v4());
    let id = group(store, owner, &[member]).await;
    let t = now();
    let mine = schedule(store, entry(id, owner, later(t, 1))).await;
    let theirs = schedule(store, entry(id, member, later(t, 1))).await;
    store.remove_member(id, owner, member, now()).await.unwrap();
    let due = later(t, 2);
    let claimed = store
        .claim_scheduled(due, later(due, 30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let of = |entry: &ScheduledMessage| claimed.iter().find(|c| c.entry.id == entry.id).unwrap();
    let twice = NewMessage {
        idempotency_key: Some("another key".into()),
        ..delivery(of(&mine))
    };
    let outcomes = store
        .send_batch(vec![
            delivery(of(&mine)),
            delivery(of(&theirs)),
            twice,
            message(id, owner, "cGxhaW4="),
        ])
        .await;
    assert!(matches!(outcomes[0], Ok(SendOutcome::Created(_))));
    assert!(matches!(
        outcomes[1],
        Err(StoreError::Rejected(Rejection::NotMember))
    ));
    assert!(matches!(outcomes[2], Err(StoreError::Conflict(_))));
    assert!(matches!(outcomes[3], Ok(SendOutcome::Created(_))));
    let status = |id| async move { store.scheduled(id).await.unwrap().unwrap().status };
    assert_eq!(status(mine.id).await, ScheduledStatus::Sent);
    assert_eq!(status(theirs.id).await, ScheduledStatus::Pending);
    let messages: Vec<Event> = log(store, id)
        .await
        .into_iter()
        .filter(|e| matches!(e, Event::MessageNew(_)))
        .collect();
    assert_eq!(messages.len(), 2);
}

/// Two nodes claiming due entries at once take each entry once between
/// them.
pub(crate) async fn two_nodes_claim_disjoint_entries(b: Arc<Backend>) {
    let owner = Uuid::new_v4();
    let id = group(&*b.store, owner, &[]).await;
    let t = now();
    let caps = ScheduleCaps {
        per_user_max: 1_000,
        total_max: 1_000,
    };
    let mut all = Vec::new();
    for i in 0..200 {
        let new = entry(id, owner, later(t, i % 7));
        all.push(new.id);
        b.store.schedule(new, caps).await.unwrap();
    }
    let due = later(t, 10);
    let claim = |store: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store.claim_scheduled(due, later(due, 60), 7).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|c| c.entry.id));
            }
        })
    };
    let other_node = b.another().await;
    let (a, b2) = (claim(b.store.clone()), claim(other_node));
    let (a, b2) = (a.await.unwrap(), b2.await.unwrap());
    let mut taken: Vec<Uuid> = a.iter().chain(&b2).copied().collect();
    taken.sort_unstable();
    let before = taken.len();
    taken.dedup();
    assert_eq!(before, taken.len(), "no entry claimed twice");
    all.sort_unstable();
    assert_eq!(taken, all, "every entry claimed");
}
