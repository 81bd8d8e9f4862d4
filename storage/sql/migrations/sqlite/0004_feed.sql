-- The feed: posts, their likes and who follows whom. A post's like_count
-- changes in the transaction that adds or removes its like.
CREATE TABLE posts (
    id         BLOB PRIMARY KEY NOT NULL,
    author_id  BLOB NOT NULL,
    text       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    like_count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE INDEX posts_by_author ON posts (author_id, created_at, id);

CREATE TABLE post_likes (
    post_id    BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (post_id, user_id)
) WITHOUT ROWID;

CREATE INDEX post_likes_recent ON post_likes (post_id, created_at);

CREATE TABLE follows (
    follower_id BLOB NOT NULL,
    followee_id BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
) WITHOUT ROWID;
