-- Conversations, their members, messages and the per-conversation event log.

CREATE TABLE conversations (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title       TEXT,
    -- "<smaller uuid>:<larger uuid>" for direct conversations, so a pair has one.
    direct_key  TEXT UNIQUE,
    -- The seq of the newest event; the next event takes last_seq + 1 in the
    -- same transaction that writes it, so seqs are gap-free.
    last_seq    BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE members (
    conversation_id UUID NOT NULL REFERENCES conversations (id),
    user_id         UUID NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    last_read_seq   BIGINT NOT NULL DEFAULT 0,
    joined_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    id                UUID PRIMARY KEY,
    conversation_id   UUID NOT NULL REFERENCES conversations (id),
    seq               BIGINT NOT NULL,
    sender_id         UUID NOT NULL,
    message_type      TEXT NOT NULL,
    encrypted_content TEXT NOT NULL,
    nonce             TEXT NOT NULL,
    idempotency_key   TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    edited_at         TIMESTAMPTZ,
    deleted_at        TIMESTAMPTZ,
    deleted_by        UUID,
    UNIQUE (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, idempotency_key)
);

CREATE TABLE events (
    conversation_id UUID NOT NULL REFERENCES conversations (id),
    seq             BIGINT NOT NULL,
    type            TEXT NOT NULL,
    -- The event exactly as delivered: {"type","data"}.
    payload         TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
