-- Postgres-direct admission (the benchmark peer and the Redis-down fallback)
-- looks holds up by idempotency key and by customer under the SKU's row lock.
CREATE INDEX holds_idempotency ON holds (sku, idempotency_key) WHERE idempotency_key IS NOT NULL;
