//! Permission changes racing the mutations they govern.
//!
//! A member who is an admin keeps editing their own messages and deleting the
//! owner's while the owner demotes them and then removes them. Whatever the
//! interleaving, the event log must show no deletion of another's message
//! after the demotion and no edit or deletion at all after the removal.

use std::time::Duration;

use switchboard_protocol::{ChangeRole, EditMessage, Event, Role};

use crate::support::{TestServer, group, log, text};

const ROUNDS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_takes_effect_after_the_member_lost_the_right() {
    let server = TestServer::start().await;
    let mut acknowledged_after_loss = 0;
    let mut raced = 0;
    for round in 0..ROUNDS {
        let (owner, member) = (server.user(), server.user());
        let conversation = group(&owner, &[&member]).await;
        let id = conversation.id;
        owner
            .client
            .change_role(id, member.id, &ChangeRole { role: Role::Admin })
            .await
            .unwrap();
        let mut own = Vec::new();
        let mut theirs = Vec::new();
        for i in 0..6 {
            own.push(
                member
                    .client
                    .send(&text(id, &format!("m{i}")))
                    .await
                    .unwrap()
                    .message
                    .id,
            );
            theirs.push(
                owner
                    .client
                    .send(&text(id, &format!("o{i}")))
                    .await
                    .unwrap()
                    .message
                    .id,
            );
        }

        // The member hammers away; every acknowledged call is recorded.
        let attacker = {
            let client = member.client.clone();
            tokio::spawn(async move {
                let mut acks = 0usize;
                for i in 0.. {
                    let edit = client
                        .edit(
                            own[i % own.len()],
                            &EditMessage {
                                encrypted_content: "ZWRpdA==".into(),
                                nonce: "bm9uY2U=".into(),
                            },
                        )
                        .await;
                    let delete = client.delete(theirs[i % theirs.len()]).await;
                    acks += usize::from(edit.is_ok()) + usize::from(delete.is_ok());
                    if matches!(&edit, Err(e) if e.status() == Some(404)) {
                        return acks;
                    }
                }
                unreachable!()
            })
        };
        // The owner demotes, then removes, at moments that vary by round.
        tokio::time::sleep(Duration::from_millis((round % 5) as u64)).await;
        owner
            .client
            .change_role(id, member.id, &ChangeRole { role: Role::Member })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis((round % 3) as u64)).await;
        owner.client.remove_member(id, member.id).await.unwrap();
        let acks = attacker.await.unwrap();

        let events = log(&owner, id).await;
        switchboard_simulation::check_log(&events).expect("no unauthorized change");
        let demoted = seq_of(
            &events,
            |e| matches!(e, Event::MemberRoleChanged(c) if c.user_id == member.id && c.role == Role::Member),
        );
        let removed = seq_of(
            &events,
            |e| matches!(e, Event::MemberLeft(l) if l.user_id == member.id),
        );
        for event in &events {
            match event {
                Event::MessageDeleted(d) if d.deleted_by == member.id => {
                    assert!(
                        d.seq < demoted,
                        "deleted the owner's message after demotion"
                    );
                }
                Event::MessageEdited(e) if e.sender_id == member.id => {
                    assert!(e.seq < removed, "edited after removal");
                }
                _ => {}
            }
        }
        // Every acknowledged call left exactly one event.
        let by_member = events
            .iter()
            .filter(|e| match e {
                Event::MessageDeleted(d) => d.deleted_by == member.id,
                Event::MessageEdited(e) => e.sender_id == member.id,
                _ => false,
            })
            .count();
        assert!(
            by_member <= acks,
            "every change by the member was acknowledged"
        );
        acknowledged_after_loss += events
            .iter()
            .filter(|e| e.seq() > removed && matches!(e, Event::MessageEdited(_)))
            .count();
        raced += usize::from(by_member > 0);
    }
    assert_eq!(acknowledged_after_loss, 0);
    // The race was real: the member got changes in before losing the right.
    assert!(raced > 0);
}

fn seq_of(events: &[Event], pick: impl Fn(&Event) -> bool) -> i64 {
    events
        .iter()
        .find(|e| pick(e))
        .map(Event::seq)
        .expect("event present")
}
