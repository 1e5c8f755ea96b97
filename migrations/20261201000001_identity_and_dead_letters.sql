-- Which ledger this is. The gate records the id of the ledger it was built
-- from, so a gate left in Redis by another database (a fresh DATABASE_URL,
-- a restored backup) is never served against this one.
CREATE TABLE ledger_identity (
    ledger_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    one_row     boolean NOT NULL DEFAULT true UNIQUE CHECK (one_row)
);
INSERT INTO ledger_identity DEFAULT VALUES;

-- Events the ledger could not apply however often it tried (the event
-- itself is bad, not the store). Each is set aside here with the reason, so
-- the rest of its SKU's stream and every other SKU keep committing; an
-- operator retries or voids it (`dropgate dead-letters`).
CREATE TABLE dead_letters (
    event_id     uuid PRIMARY KEY,
    sku          text NOT NULL REFERENCES skus (sku),
    epoch        bigint NOT NULL,
    seq          bigint NOT NULL,
    -- The event as JSON text (not jsonb: text keeps escaped control
    -- characters, which are often why the event was refused).
    event        text NOT NULL,
    error        text NOT NULL,
    state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'retried', 'voided')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    resolution   text
);
CREATE INDEX dead_letters_open ON dead_letters (created_at) WHERE state = 'open';
