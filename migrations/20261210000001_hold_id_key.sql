-- Hold ids are signed (see HoldId in src/domain/hold.rs). The key is this
-- ledger's own, made here from Postgres's strong random source, so only ids
-- this ledger's gatekeepers issued verify: a guessed id answers 404 without
-- a store being asked, and cannot pass for a hold the gate lost.
ALTER TABLE ledger_identity
    ADD COLUMN hold_id_key bytea NOT NULL
        DEFAULT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());
-- The default only filled the existing row; nothing else may make one.
ALTER TABLE ledger_identity ALTER COLUMN hold_id_key DROP DEFAULT;

-- Blocks of hold id serials: a gatekeeper takes one and issues its
-- 1,048,576 serials, so ids are unique across processes without random bits
-- (the id has no room for enough of them next to its tag). 2^29 blocks fill
-- the 49-bit serial space; running out is an error, never a wrap.
CREATE SEQUENCE hold_id_blocks AS bigint MINVALUE 0 MAXVALUE 536870911 START 0 NO CYCLE;

-- The last block taken when the epoch started: ids from blocks up to it may
-- have been issued by the gate this epoch replaced, so such an id neither
-- store has is a hold that gate lost. NULL for epochs before signed ids.
ALTER TABLE gate_epochs ADD COLUMN hold_id_block bigint;
