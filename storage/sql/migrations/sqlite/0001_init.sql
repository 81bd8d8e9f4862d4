-- Conversations, their members, messages and the per-conversation event log.
-- Ids are 16-byte UUID blobs; timestamps are RFC 3339 text in UTC.

CREATE TABLE conversations (
    id          BLOB PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title       TEXT,
    -- "<smaller uuid>:<larger uuid>" for direct conversations, so a pair has one.
    direct_key  TEXT UNIQUE,
    -- The seq of the newest event; the next event takes last_seq + 1 in the
    -- same transaction that writes it, so seqs are gap-free.
    last_seq    INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE members (
    conversation_id BLOB NOT NULL REFERENCES conversations (id),
    user_id         BLOB NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    last_read_seq   INTEGER NOT NULL DEFAULT 0,
    joined_at       TEXT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;

CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    id                BLOB PRIMARY KEY NOT NULL,
    conversation_id   BLOB NOT NULL REFERENCES conversations (id),
    seq               INTEGER NOT NULL,
    sender_id         BLOB NOT NULL,
    message_type      TEXT NOT NULL,
    encrypted_content TEXT NOT NULL,
    nonce             TEXT NOT NULL,
    idempotency_key   TEXT,
    created_at        TEXT NOT NULL,
    edited_at         TEXT,
    deleted_at        TEXT,
    deleted_by        BLOB,
    UNIQUE (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, idempotency_key)
);

CREATE TABLE events (
    conversation_id BLOB NOT NULL REFERENCES conversations (id),
    seq             INTEGER NOT NULL,
    type            TEXT NOT NULL,
    -- The event exactly as delivered: {"type","data"}.
    payload         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
