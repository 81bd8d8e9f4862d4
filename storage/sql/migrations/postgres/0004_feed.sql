-- The feed: posts, their likes, who follows whom, and what posts carry. A
-- post's like_count changes in the transaction that adds or removes its
-- like; an upload is claimed by its post's transaction.
CREATE TABLE posts (
    id         UUID PRIMARY KEY,
    author_id  UUID NOT NULL,
    text       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    like_count BIGINT NOT NULL DEFAULT 0,
    -- The attachment as the post shows it: JSON.
    attachment TEXT,
    idempotency_key TEXT,
    UNIQUE (author_id, idempotency_key)
);

CREATE INDEX posts_by_author ON posts (author_id, created_at, id);

CREATE TABLE post_likes (
    post_id    UUID NOT NULL,
    user_id    UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (post_id, user_id)
);

CREATE INDEX post_likes_recent ON post_likes (post_id, created_at);

CREATE TABLE follows (
    follower_id UUID NOT NULL,
    followee_id UUID NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);

-- A row exists from the moment an upload URL is issued, before any object.
CREATE TABLE post_uploads (
    id                UUID PRIMARY KEY,
    author_id         UUID NOT NULL,
    s3_key            TEXT NOT NULL UNIQUE,
    content_type      TEXT NOT NULL,
    size_bytes        BIGINT NOT NULL CHECK (size_bytes >= 0),
    file_name         TEXT,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'attached', 'deleted')),
    post_id           UUID,
    created_at        TIMESTAMPTZ NOT NULL,
    upload_expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX post_uploads_pending ON post_uploads (state, created_at);
