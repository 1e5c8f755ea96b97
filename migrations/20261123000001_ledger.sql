-- The ledger: SKUs with their counters, holds with their state, and the
-- append-only movements every counter is the sum of.

CREATE TABLE skus (
    sku                 text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    -- Small immutable number embedded in every hold id, so a hold id alone
    -- names its SKU (and its Redis hash slot) without a lookup table.
    sku_no              integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    on_hand             bigint  NOT NULL DEFAULT 0,
    held                bigint  NOT NULL DEFAULT 0,
    sold                bigint  NOT NULL DEFAULT 0,
    per_customer_limit  integer NOT NULL DEFAULT 0 CHECK (per_customer_limit >= 0),
    hold_ttl_ms         bigint  NOT NULL DEFAULT 600000 CHECK (hold_ttl_ms BETWEEN 1000 AND 86400000),
    max_extensions      integer NOT NULL DEFAULT 1 CHECK (max_extensions BETWEEN 0 AND 10),
    -- Stream position (gate epoch, sequence) of the last event applied. Events
    -- at or before it are replays; events of an older epoch are fenced off.
    -- Stream ids start at <epoch>-0, so -1 means "nothing of this epoch yet".
    epoch               bigint  NOT NULL DEFAULT 0,
    applied_seq         bigint  NOT NULL DEFAULT -1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT skus_counters_non_negative CHECK (on_hand >= 0 AND held >= 0 AND sold >= 0),
    CONSTRAINT skus_no_oversell CHECK (held + sold <= on_hand)
);

CREATE TABLE holds (
    hold_id          uuid PRIMARY KEY,
    sku              text NOT NULL REFERENCES skus (sku),
    -- Validated at the edge; a regex CHECK here cost ~30 % of batch inserts.
    customer_id      text NOT NULL CHECK (char_length(customer_id) BETWEEN 1 AND 128),
    quantity         integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    state            text NOT NULL CHECK (state IN ('held', 'confirmed', 'released', 'expired', 'lost')),
    extensions       integer NOT NULL DEFAULT 0 CHECK (extensions >= 0),
    -- Kept so the gate can rebuild idempotency records after Redis loses them.
    idempotency_key  text,
    request_fingerprint text,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX holds_live ON holds (sku) WHERE state = 'held';
CREATE INDEX holds_customer ON holds (sku, customer_id);

-- A hold leaves `held` once and terminal states never change.
CREATE FUNCTION holds_state_machine() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'held' AND NEW.state <> OLD.state THEN
        RAISE EXCEPTION 'hold % is % and cannot become %', OLD.hold_id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'holds_state_machine';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER holds_state_machine BEFORE UPDATE ON holds
    FOR EACH ROW EXECUTE FUNCTION holds_state_machine();

CREATE TABLE movements (
    event_id        uuid PRIMARY KEY,
    sku             text NOT NULL REFERENCES skus (sku),
    hold_id         uuid,
    kind            text NOT NULL CHECK (kind IN
                        ('admit', 'confirm', 'release', 'expire', 'extend', 'adjustment', 'reconcile', 'lost')),
    quantity_delta  bigint NOT NULL DEFAULT 0,
    held_delta      bigint NOT NULL DEFAULT 0,
    sold_delta      bigint NOT NULL DEFAULT 0,
    reason          text,
    epoch           bigint,
    seq             bigint,
    occurred_at     timestamptz NOT NULL,
    committed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX movements_sku ON movements (sku, occurred_at);
CREATE INDEX movements_hold ON movements (hold_id) WHERE hold_id IS NOT NULL;

-- Append-only: a movement, once written, is history.
CREATE FUNCTION movements_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'movements are append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER movements_append_only BEFORE UPDATE OR DELETE ON movements
    FOR EACH ROW EXECUTE FUNCTION movements_append_only();

-- Each rebuild of the gate from the ledger starts a new epoch.
CREATE TABLE gate_epochs (
    epoch       bigint PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL
);
INSERT INTO gate_epochs (epoch, reason) VALUES (1, 'initial');
