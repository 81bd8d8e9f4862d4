-- Attachments (voice notes, images, files), the deletions owed to the blob
-- store, and the audit log of every deletion.

-- The attachment a message carries, as the message shows it: JSON, written
-- with the message and cleared when the message is deleted.
ALTER TABLE messages ADD COLUMN attachment TEXT;

-- A row exists from the moment an upload URL is issued, before any object.
CREATE TABLE attachments (
    id                BLOB PRIMARY KEY NOT NULL,
    conversation_id   BLOB NOT NULL REFERENCES conversations (id),
    uploader_id       BLOB NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('audio', 'image', 'file')),
    s3_key            TEXT NOT NULL UNIQUE,
    content_type      TEXT NOT NULL,
    size_bytes        INTEGER NOT NULL CHECK (size_bytes >= 0),
    duration_ms       INTEGER,
    file_name         TEXT,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'attached', 'deleted')),
    message_id        BLOB,
    created_at        TEXT NOT NULL,
    upload_expires_at TEXT NOT NULL,
    deleted_at        TEXT
);

CREATE INDEX attachments_pending ON attachments (state, id);
CREATE INDEX attachments_by_message ON attachments (message_id);

-- One per deleted attachment, written in the tombstone's transaction; the
-- deleter takes due ones with a lease, so two nodes never work one at once.
CREATE TABLE blob_deletions (
    attachment_id BLOB PRIMARY KEY NOT NULL,
    s3_key        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    due_at        TEXT NOT NULL,
    leased_until  TEXT
) WITHOUT ROWID;

CREATE INDEX blob_deletions_due ON blob_deletions (due_at);

CREATE TABLE attachment_audit (
    attachment_id BLOB,
    s3_key        TEXT NOT NULL,
    -- The user who deleted; NULL for the sweeper.
    actor         BLOB,
    reason        TEXT NOT NULL,
    at            TEXT NOT NULL
);

CREATE INDEX attachment_audit_by_key ON attachment_audit (s3_key);
