-- Scheduled messages: the database is the queue. A dispatcher takes due
-- pending entries with a lease (FOR UPDATE SKIP LOCKED); the send that
-- delivers one turns it 'sent' in the send's own transaction.
CREATE TABLE scheduled_messages (
    id                UUID PRIMARY KEY,
    conversation_id   UUID NOT NULL REFERENCES conversations (id),
    sender_id         UUID NOT NULL,
    deliver_at        TIMESTAMPTZ NOT NULL,
    encrypted_content TEXT NOT NULL,
    nonce             TEXT NOT NULL,
    message_type      TEXT NOT NULL,
    idempotency_key   TEXT,
    status            TEXT NOT NULL
        CHECK (status IN ('pending', 'sent', 'cancelled', 'failed')),
    failure_reason    TEXT,
    message_id        UUID,
    created_at        TIMESTAMPTZ NOT NULL,
    -- When it was sent, cancelled or failed: the purge's clock.
    finished_at       TIMESTAMPTZ,
    -- Held by a dispatcher, or not to be taken again, until then.
    leased_until      TIMESTAMPTZ,
    UNIQUE (conversation_id, sender_id, idempotency_key)
);

CREATE INDEX scheduled_messages_due ON scheduled_messages (deliver_at)
    WHERE status = 'pending';
CREATE INDEX scheduled_messages_by_sender ON scheduled_messages (sender_id, status);
CREATE INDEX scheduled_messages_finished ON scheduled_messages (finished_at)
    WHERE finished_at IS NOT NULL;
