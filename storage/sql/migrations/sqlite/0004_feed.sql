-- The feed: posts, their likes, who follows whom, and what posts carry. A
-- post's like_count changes in the transaction that adds or removes its
-- like; an upload is claimed by its post's transaction.
CREATE TABLE posts (
    id         BLOB PRIMARY KEY NOT NULL,
    author_id  BLOB NOT NULL,
    text       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    like_count INTEGER NOT NULL DEFAULT 0,
    -- The attachment as the post shows it: JSON.
    attachment TEXT,
    idempotency_key TEXT,
    UNIQUE (author_id, idempotency_key)
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

-- A row exists from the moment an upload URL is issued, before any object.
CREATE TABLE post_uploads (
    id                BLOB PRIMARY KEY NOT NULL,
    author_id         BLOB NOT NULL,
    s3_key            TEXT NOT NULL UNIQUE,
    content_type      TEXT NOT NULL,
    size_bytes        INTEGER NOT NULL CHECK (size_bytes >= 0),
    file_name         TEXT,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'attached', 'deleted')),
    post_id           BLOB,
    created_at        TEXT NOT NULL,
    upload_expires_at TEXT NOT NULL
);

CREATE INDEX post_uploads_pending ON post_uploads (state, created_at);
