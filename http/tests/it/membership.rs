//! Membership rules, direct conversations, read positions and the list.

use switchboard_protocol::{
    AddMember, ChangeRole, ConversationKind, CreateConversation, ErrorCode, Event, Role,
};

use crate::support::{TestServer, connect, events, group, log, text};

#[tokio::test]
async fn a_direct_conversation_is_unique_per_pair_and_its_members_are_fixed() {
    let server = TestServer::start().await;
    let (alice, bob, carol) = (server.user(), server.user(), server.user());
    let request = CreateConversation {
        kind: ConversationKind::Direct,
        title: None,
        member_ids: vec![bob.id],
    };
    let first = alice.client.create_conversation(&request).await.unwrap();
    let again = bob
        .client
        .create_conversation(&CreateConversation {
            member_ids: vec![alice.id],
            ..request.clone()
        })
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    let error = alice
        .client
        .add_member(
            first.id,
            &AddMember {
                user_id: carol.id,
                role: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unprocessable));
    let error = alice
        .client
        .create_conversation(&CreateConversation {
            member_ids: vec![bob.id, carol.id],
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unprocessable));
}

#[tokio::test]
async fn moderators_manage_members_and_members_may_leave() {
    let server = TestServer::start().await;
    let (owner, admin, member, newcomer) =
        (server.user(), server.user(), server.user(), server.user());
    let conversation = group(&owner, &[&admin, &member]).await;
    let id = conversation.id;
    let mut member_ws = connect(&member).await;

    // A plain member may not add, promote or remove.
    let add = AddMember {
        user_id: newcomer.id,
        role: None,
    };
    let error = member.client.add_member(id, &add).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Forbidden));
    let error = member
        .client
        .change_role(id, admin.id, &ChangeRole { role: Role::Admin })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Forbidden));

    owner
        .client
        .change_role(id, admin.id, &ChangeRole { role: Role::Admin })
        .await
        .unwrap();
    let added = admin.client.add_member(id, &add).await.unwrap();
    assert_eq!(added.role, Role::Member);
    let error = admin.client.add_member(id, &add).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict));
    // Nobody removes the owner or changes their role.
    let error = admin.client.remove_member(id, owner.id).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Forbidden));
    let error = admin
        .client
        .change_role(id, owner.id, &ChangeRole { role: Role::Member })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Forbidden));

    // The member leaves and hears of it; afterwards the conversation is gone for them.
    member.client.remove_member(id, member.id).await.unwrap();
    let seen = events(&mut member_ws, 3).await;
    assert!(matches!(&seen[0], Event::MemberRoleChanged(e) if e.user_id == admin.id));
    assert!(matches!(&seen[1], Event::MemberJoined(e) if e.user_id == newcomer.id));
    assert!(matches!(&seen[2], Event::MemberLeft(e) if e.user_id == member.id));
    let error = member.client.conversation(id).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    owner.client.send(&text(id, "after")).await.unwrap();
    assert!(crate::support::next(&mut member_ws).await.is_none());

    // The owner leaves: the admin becomes owner.
    owner.client.remove_member(id, owner.id).await.unwrap();
    let now = admin.client.conversation(id).await.unwrap();
    let role_of = |user| {
        now.members
            .iter()
            .find(|m| m.user_id == user)
            .map(|m| m.role)
    };
    assert_eq!(role_of(admin.id), Some(Role::Owner));
    assert_eq!(role_of(owner.id), None);
    switchboard_simulation::check_log(&log(&admin, id).await).unwrap();
}

#[tokio::test]
async fn reading_moves_the_unread_count_and_the_list_shows_the_last_message() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user(), server.user());
    let first = group(&alice, &[&bob]).await;
    let second = group(&alice, &[&bob]).await;
    for i in 0..3 {
        alice
            .client
            .send(&text(first.id, &format!("{i}")))
            .await
            .unwrap();
    }
    let last = alice
        .client
        .send(&text(second.id, "newest"))
        .await
        .unwrap()
        .message;

    let list = bob.client.conversations().await.unwrap().conversations;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, second.id, "newest activity first");
    assert_eq!(list[0].last_message.as_ref(), Some(&last));
    assert_eq!(list[1].unread_count, 3);
    assert_eq!(list[1].member_count, 2);
    // The sender's own messages are never unread to them.
    assert_eq!(
        alice.client.conversations().await.unwrap().conversations[1].unread_count,
        0
    );

    bob.client.mark_read(first.id, 3).await.unwrap();
    let list = bob.client.conversations().await.unwrap().conversations;
    let row = list.iter().find(|c| c.id == first.id).unwrap();
    assert_eq!((row.unread_count, row.last_read_seq), (1, 3));
    let error = bob.client.mark_read(first.id, 1_000).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unprocessable));
    // Moving backwards is a no-op, not an event.
    let before = log(&bob, first.id).await.len();
    bob.client.mark_read(first.id, 2).await.unwrap();
    assert_eq!(log(&bob, first.id).await.len(), before);
}

#[tokio::test]
async fn message_pages_are_ascending_and_bounded_by_seq() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await;
    for i in 0..10 {
        alice
            .client
            .send(&text(conversation.id, &format!("{i}")))
            .await
            .unwrap();
    }
    // Messages took seqs 2..=11.
    let seqs = |page: switchboard_protocol::MessagePage| -> Vec<i64> {
        page.messages.iter().map(|m| m.seq).collect()
    };
    let c = &alice.client;
    let id = conversation.id;
    assert_eq!(
        seqs(c.messages(id, None, None, Some(3)).await.unwrap()),
        vec![9, 10, 11]
    );
    assert_eq!(
        seqs(c.messages(id, Some(4), None, Some(3)).await.unwrap()),
        vec![5, 6, 7]
    );
    assert_eq!(
        seqs(c.messages(id, None, Some(5), Some(10)).await.unwrap()),
        vec![2, 3, 4]
    );
    assert_eq!(
        seqs(c.messages(id, Some(3), Some(6), None).await.unwrap()),
        vec![4, 5]
    );
    let error = c.messages(id, None, None, Some(0)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unprocessable));
}
