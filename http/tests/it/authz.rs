//! Who may edit and delete a message: the full matrix.

use switchboard_protocol::{AddMember, ChangeRole, EditMessage, Event, Role};

use crate::support::{TestServer, User, group, log, text};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Principal {
    Sender,
    Member,
    Admin,
    Owner,
    NonMember,
    RemovedMember,
    RemovedSender,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Edit,
    Delete,
}

/// The HTTP status each principal gets, per operation.
fn expected(principal: Principal, op: Op) -> u16 {
    use Principal::*;
    match (principal, op) {
        (Sender, Op::Edit) => 200,
        (Sender, Op::Delete) | (Admin, Op::Delete) | (Owner, Op::Delete) => 204,
        (Member, _) | (Admin, Op::Edit) | (Owner, Op::Edit) => 403,
        (NonMember, _) | (RemovedMember, _) | (RemovedSender, _) => 404,
    }
}

struct Cast {
    owner: User,
    admin: User,
    sender: User,
    member: User,
    removed: User,
    outsider: User,
}

#[tokio::test]
async fn edit_and_delete_follow_the_authorization_matrix() {
    let server = TestServer::start().await;
    let cast = Cast {
        owner: server.user(),
        admin: server.user(),
        sender: server.user(),
        member: server.user(),
        removed: server.user(),
        outsider: server.user(),
    };
    let principals = [
        Principal::Sender,
        Principal::Member,
        Principal::Admin,
        Principal::Owner,
        Principal::NonMember,
        Principal::RemovedMember,
        Principal::RemovedSender,
    ];
    for op in [Op::Edit, Op::Delete] {
        for principal in principals {
            let conversation = group(
                &cast.owner,
                &[&cast.admin, &cast.sender, &cast.member, &cast.removed],
            )
            .await;
            let id = conversation.id;
            cast.owner
                .client
                .change_role(id, cast.admin.id, &ChangeRole { role: Role::Admin })
                .await
                .unwrap();
            // The message's sender: the removed sender sends, then is removed.
            let author = if principal == Principal::RemovedSender {
                &cast.removed
            } else {
                &cast.sender
            };
            let message = author
                .client
                .send(&text(id, "original"))
                .await
                .unwrap()
                .message;
            if matches!(
                principal,
                Principal::RemovedMember | Principal::RemovedSender
            ) {
                cast.owner
                    .client
                    .remove_member(id, cast.removed.id)
                    .await
                    .unwrap();
            }
            let actor = match principal {
                Principal::Sender => &cast.sender,
                Principal::Member => &cast.member,
                Principal::Admin => &cast.admin,
                Principal::Owner => &cast.owner,
                Principal::NonMember => &cast.outsider,
                Principal::RemovedMember | Principal::RemovedSender => &cast.removed,
            };
            let before = log(&cast.owner, id).await.len();
            let status = match op {
                Op::Edit => actor
                    .client
                    .edit(
                        message.id,
                        &EditMessage {
                            encrypted_content: "ZWRpdGVk".into(),
                            nonce: "bm9uY2U=".into(),
                        },
                    )
                    .await
                    .map(|_| 200)
                    .unwrap_or_else(|e| e.status().unwrap()),
                Op::Delete => actor
                    .client
                    .delete(message.id)
                    .await
                    .map(|()| 204)
                    .unwrap_or_else(|e| e.status().unwrap()),
            };
            assert_eq!(status, expected(principal, op), "{principal:?} {op:?}");

            // The log and the stored message agree with the answer.
            let after = log(&cast.owner, id).await;
            let stored = cast
                .owner
                .client
                .messages(id, None, None, None)
                .await
                .unwrap()
                .messages
                .into_iter()
                .find(|m| m.id == message.id)
                .unwrap();
            if status < 300 {
                assert_eq!(after.len(), before + 1, "{principal:?} {op:?}");
                match (op, after.last().unwrap()) {
                    (Op::Edit, Event::MessageEdited(e)) => {
                        assert_eq!(e.message_id, message.id);
                        assert_eq!(stored.encrypted_content, "ZWRpdGVk");
                    }
                    (Op::Delete, Event::MessageDeleted(e)) => {
                        assert_eq!(e.deleted_by, actor.id);
                        assert!(stored.deleted_at.is_some());
                        assert!(stored.encrypted_content.is_empty());
                    }
                    (_, other) => panic!("unexpected {other:?}"),
                }
            } else {
                assert_eq!(after.len(), before, "{principal:?} {op:?} wrote nothing");
                assert_eq!(stored, message, "{principal:?} {op:?} changed nothing");
            }
            switchboard_simulation::check_log(&after).expect("log obeys the rules");
        }
    }
}

#[tokio::test]
async fn a_deleted_message_cannot_be_edited_and_deleting_twice_changes_nothing() {
    let server = TestServer::start().await;
    let (owner, sender) = (server.user(), server.user());
    let conversation = group(&owner, &[&sender]).await;
    let message = sender
        .client
        .send(&text(conversation.id, "x"))
        .await
        .unwrap()
        .message;
    sender.client.delete(message.id).await.unwrap();
    let before = log(&owner, conversation.id).await.len();
    sender.client.delete(message.id).await.unwrap();
    let error = sender
        .client
        .edit(
            message.id,
            &EditMessage {
                encrypted_content: "eQ==".into(),
                nonce: "bm9uY2U=".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(409));
    assert_eq!(log(&owner, conversation.id).await.len(), before);
    // Adding back a removed member restores rights only from then on.
    owner
        .client
        .add_member(
            conversation.id,
            &AddMember {
                user_id: server.user().id,
                role: None,
            },
        )
        .await
        .unwrap();
}
