-- The feed: posts, their likes and who follows whom. A post's like_count
-- changes in the transaction that adds or removes its like.
CREATE TABLE posts (
    id         UUID PRIMARY KEY,
    author_id  UUID NOT NULL,
    text       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    like_count BIGINT NOT NULL DEFAULT 0
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
