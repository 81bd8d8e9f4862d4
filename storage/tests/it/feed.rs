//! The contract every `FeedStore` keeps.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use switchboard_protocol::{Attachment, Post};
use switchboard_storage::{
    AttachmentState, Clock, ENGAGEMENT_WINDOW, FeedQuery, FollowOutcome, NewPost, PostPosition,
    PostUpload, Rejection, StoreError, SystemClock, rank,
};
use uuid::Uuid;

use crate::backend::Backend;

/// Now, to the second, so every backend stores it exactly.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(SystemClock::new().now().timestamp(), 0).unwrap()
}

async fn post(b: &Backend, author: Uuid, text: &str, at: DateTime<Utc>) -> Post {
    b.feed
        .create_post(NewPost {
            id: Uuid::now_v7(),
            author_id: author,
            text: text.into(),
            at,
            attachment: None,
            idempotency_key: None,
        })
        .await
        .unwrap()
        .0
}

fn query(user: Uuid, since: DateTime<Utc>) -> FeedQuery {
    FeedQuery {
        user,
        since,
        candidates_max: 500,
    }
}

fn ids(posts: &[Post]) -> Vec<Uuid> {
    posts.iter().map(|p| p.id).collect()
}

pub(crate) async fn posts_follows_and_likes_keep_their_rules(b: Arc<Backend>) {
    let store = &b.feed;
    let (me, a, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let at = now();
    assert_eq!(
        store.follow(me, a, at, 1).await.unwrap(),
        FollowOutcome::Followed
    );
    assert_eq!(
        store.follow(me, a, at, 1).await.unwrap(),
        FollowOutcome::Already
    );
    assert_eq!(
        store.follow(me, c, at, 1).await.unwrap(),
        FollowOutcome::Full
    );

    let mine = post(&b, me, "mine", at).await;
    let theirs = post(&b, a, "theirs", at + TimeDelta::seconds(1)).await;
    let stranger = post(&b, c, "stranger", at + TimeDelta::seconds(2)).await;
    let feed = store.recent(me, None, 10).await.unwrap();
    assert_eq!(
        ids(&feed),
        vec![theirs.id, mine.id],
        "own and followed only"
    );

    assert!(store.like(me, theirs.id, at).await.unwrap());
    assert!(
        !store.like(me, theirs.id, at).await.unwrap(),
        "a second like is no like"
    );
    assert!(store.like(c, theirs.id, at).await.unwrap());
    assert_eq!(store.post(theirs.id).await.unwrap().unwrap().like_count, 2);
    assert!(store.unlike(me, theirs.id).await.unwrap());
    assert!(!store.unlike(me, theirs.id).await.unwrap());
    assert_eq!(store.post(theirs.id).await.unwrap().unwrap().like_count, 1);
    assert!(matches!(
        store.like(me, Uuid::now_v7(), at).await,
        Err(StoreError::NotFound)
    ));

    assert!(matches!(
        store.delete_post(theirs.id, me, at).await,
        Err(StoreError::Rejected(Rejection::NotPermitted))
    ));
    store.delete_post(theirs.id, a, at).await.unwrap();
    assert!(matches!(
        store.delete_post(theirs.id, a, at).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.post(theirs.id).await.unwrap().is_none());
    assert!(matches!(
        store.like(me, theirs.id, at).await,
        Err(StoreError::NotFound)
    ));
    let found = store
        .posts(&[theirs.id, mine.id, stranger.id])
        .await
        .unwrap();
    let mut found = ids(&found);
    found.sort();
    let mut expected = vec![mine.id, stranger.id];
    expected.sort();
    assert_eq!(found, expected, "a deleted post is gone");

    assert!(store.unfollow(me, a).await.unwrap());
    assert!(!store.unfollow(me, a).await.unwrap());
    assert_eq!(
        store.follow(me, c, at, 1).await.unwrap(),
        FollowOutcome::Followed
    );
}

pub(crate) async fn the_ranking_query_is_the_shared_score(b: Arc<Backend>) {
    let store = &b.feed;
    let (me, a) = (Uuid::now_v7(), Uuid::now_v7());
    let now = now();
    store.follow(me, a, now, 10).await.unwrap();
    // An older post with many recent likes, a new quiet one, one liked
    // only long ago, and posts too old to be candidates.
    let liked = post(&b, a, "liked", now - TimeDelta::hours(3)).await;
    let quiet = post(&b, a, "quiet", now - TimeDelta::minutes(5)).await;
    let stale = post(&b, me, "liked long ago", now - TimeDelta::hours(30)).await;
    let mut posts = vec![liked.clone(), quiet.clone(), stale.clone()];
    for hours in [1, 2, 4, 6, 8, 10] {
        posts.push(
            post(
                &b,
                me,
                "filler",
                now - TimeDelta::hours(hours) - TimeDelta::minutes(30),
            )
            .await,
        );
    }
    let ancient = post(&b, a, "ancient", now - TimeDelta::days(40)).await;
    for _ in 0..8 {
        store
            .like(Uuid::now_v7(), liked.id, now - TimeDelta::minutes(30))
            .await
            .unwrap();
    }
    // Outside the window: counted in like_count, not in the score.
    for _ in 0..20 {
        store
            .like(
                Uuid::now_v7(),
                stale.id,
                now - ENGAGEMENT_WINDOW - TimeDelta::hours(1),
            )
            .await
            .unwrap();
    }
    let q = query(me, now - TimeDelta::days(30));
    let candidates = store.candidates(q).await.unwrap();
    assert!(!ids(&candidates).contains(&ancient.id), "too old to rank");
    assert_eq!(candidates.len(), posts.len());
    assert!(
        candidates
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at),
        "candidates come newest first"
    );

    let engagement = |p: &Post| if p.id == liked.id { 8.0 } else { 0.0 };
    let expected = ids(&rank(candidates.clone(), engagement, now));
    let ranked = store.ranked(q, now, 0, 100).await.unwrap();
    assert_eq!(
        ids(&ranked),
        expected,
        "the database ranks as feed::score does"
    );
    let first = expected.iter().position(|id| *id == liked.id).unwrap();
    let second = expected.iter().position(|id| *id == quiet.id).unwrap();
    assert!(
        first < second,
        "recent likes lift an older post over a quiet new one"
    );
    assert_eq!(
        ranked.iter().find(|p| p.id == stale.id).unwrap().like_count,
        20
    );

    let page = store.ranked(q, now, 2, 3).await.unwrap();
    assert_eq!(
        ids(&page),
        expected[2..5].to_vec(),
        "offset and limit page the ranking"
    );
    let few = store
        .ranked(
            FeedQuery {
                candidates_max: 2,
                ..q
            },
            now,
            0,
            100,
        )
        .await
        .unwrap();
    assert_eq!(few.len(), 2, "only the newest candidates are ranked");
}

pub(crate) async fn recent_pages_are_newest_first_without_gaps(b: Arc<Backend>) {
    let store = &b.feed;
    let (me, a, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let now = now();
    store.follow(me, a, now, 10).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..7 {
        let author = if i % 2 == 0 { a } else { me };
        // Two posts share each second: the id orders them.
        expected.push(post(&b, author, "p", now - TimeDelta::seconds(i / 2)).await);
        post(&b, c, "not followed", now).await;
    }
    expected.sort_by_key(|p| std::cmp::Reverse((p.created_at, p.id)));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.recent(me, after, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some(PostPosition {
            created_at: last.created_at,
            id: last.id,
        });
        seen.extend(page);
    }
    assert_eq!(ids(&seen), ids(&expected));
}

fn upload(author: Uuid, at: DateTime<Utc>) -> PostUpload {
    let id = Uuid::now_v7();
    PostUpload {
        attachment: Attachment {
            id,
            s3_key: format!("posts/{author}/{id}"),
            content_type: "image/png".into(),
            size_bytes: 42,
            duration_ms: None,
            file_name: Some("summit.png".into()),
        },
        author_id: author,
        state: AttachmentState::Pending,
        post_id: None,
        created_at: at,
        upload_expires_at: at + TimeDelta::hours(1),
    }
}

pub(crate) async fn an_upload_is_posted_once_and_goes_with_its_post(b: Arc<Backend>) {
    let store = &b.feed;
    let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
    let at = now();
    let mine = upload(me, at);
    store.create_post_upload(mine.clone()).await.unwrap();
    assert_eq!(
        store.post_upload(mine.attachment.id).await.unwrap(),
        Some(mine.clone())
    );
    let new = |author: Uuid| NewPost {
        id: Uuid::now_v7(),
        author_id: author,
        text: "with a picture".into(),
        at,
        attachment: Some(mine.attachment.clone()),
        idempotency_key: None,
    };
    assert!(
        matches!(
            store.create_post(new(other)).await,
            Err(StoreError::Conflict(_))
        ),
        "someone else's upload"
    );
    let (post, created) = store.create_post(new(me)).await.unwrap();
    assert!(created);
    assert_eq!(post.attachment.as_ref(), Some(&mine.attachment));
    assert_eq!(
        store.post(post.id).await.unwrap().unwrap().attachment,
        Some(mine.attachment.clone())
    );
    assert!(
        matches!(
            store.create_post(new(me)).await,
            Err(StoreError::Conflict(_))
        ),
        "an upload is posted once"
    );
    let stored = store
        .post_upload(mine.attachment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.state, stored.post_id),
        (AttachmentState::Attached, Some(post.id))
    );

    // Deleting the post owes its object a deletion, once.
    let owed = b.store.deletions_owed().await.unwrap();
    store.delete_post(post.id, me, at).await.unwrap();
    assert_eq!(b.store.deletions_owed().await.unwrap(), owed + 1);
    let stored = store
        .post_upload(mine.attachment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, AttachmentState::Deleted);
    let claimed = b
        .store
        .claim_deletions(at + TimeDelta::seconds(1), at + TimeDelta::minutes(1), 10)
        .await
        .unwrap();
    assert!(claimed.iter().any(|d| d.s3_key == mine.attachment.s3_key));

    // One never posted expires, owing its object a deletion too.
    let left = upload(me, at - TimeDelta::hours(2));
    let fresh = upload(me, at);
    store.create_post_upload(left.clone()).await.unwrap();
    store.create_post_upload(fresh.clone()).await.unwrap();
    let expired = store
        .expire_post_uploads(at - TimeDelta::hours(1), at, 10)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    assert_eq!(
        store
            .post_upload(left.attachment.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        AttachmentState::Deleted
    );
    assert_eq!(
        store
            .post_upload(fresh.attachment.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        AttachmentState::Pending
    );
    assert_eq!(b.store.deletions_owed().await.unwrap(), owed + 2);
}

pub(crate) async fn an_idempotency_key_posts_once(b: Arc<Backend>) {
    let store = &b.feed;
    let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
    let at = now();
    let new = |author: Uuid, text: &str| NewPost {
        id: Uuid::now_v7(),
        author_id: author,
        text: text.into(),
        at,
        attachment: None,
        idempotency_key: Some("k1".into()),
    };
    let (first, created) = store.create_post(new(me, "hello")).await.unwrap();
    assert!(created);
    let (again, created) = store.create_post(new(me, "hello")).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id, "a repeat answers the stored post");
    assert!(
        matches!(
            store.create_post(new(me, "other")).await,
            Err(StoreError::Conflict(_))
        ),
        "the key reused for another post"
    );
    let (theirs, created) = store.create_post(new(other, "hello")).await.unwrap();
    assert!(created, "keys are per author");
    assert_ne!(theirs.id, first.id);
    assert_eq!(store.recent(me, None, 10).await.unwrap().len(), 1);
}
