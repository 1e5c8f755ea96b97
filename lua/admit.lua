-- admit.lua: admit one pre-reservation (a hold) for a SKU in one atomic step:
-- SKU exists and is open, idempotency replay or key-reuse check, per-customer
-- limit, stock check and decrement, hold + expiry entry, idempotency record
-- stored, event appended. Everything is validated before anything is written.
-- A rejection (sold_out, limit) writes nothing: only an admission that took
-- units is remembered, and a retry of a rejected key is decided afresh.
--
-- KEYS[1]  stock hash       <prefix>:{sku}:stock
-- KEYS[2]  idempotency rec  <prefix>:{sku}:i:<idempotency key>
-- KEYS[3]  customer units   <prefix>:{sku}:c:<customer id>
-- KEYS[4]  hold hash        <prefix>:{sku}:h:<hold id>
-- KEYS[5]  expiry index     <prefix>:{sku}:expiry
-- KEYS[6]  event stream     <prefix>:{sku}:events
-- KEYS[7]  closed marker    <prefix>:{sku}:closed (present while a rebuild has the SKU closed)
--
-- ARGV[1]  hold id (fresh; unused when the key replays)
-- ARGV[2]  event id (fresh UUID)
-- ARGV[3]  customer id
-- ARGV[4]  quantity, 1..1000
-- ARGV[5]  request fingerprint (same body, same fingerprint)
-- ARGV[6]  idempotency record TTL, ms
-- ARGV[7]  idempotency key (carried in the event so the ledger can rebuild it)
-- ARGV[8]  event backlog limit: refuse to admit while the stream holds at least this many entries
--
-- Time is Redis's (TIME), never the caller's.
--
-- Reply, by name; `outcome` is one of:
--   "held"       with hold_id, expires_at_ms
--   "replay"     with record: the stored outcome, without its fingerprint
--   "reused"     the key was used before with another body
--   "sold_out"   with retry_after_ms (0 when nothing is held: no Retry-After),
--                available (units left, fewer than asked; 0: the SKU is sold out)
--   "limit"      with limit (per customer), already (units the customer has)
--   "no_sku"     the SKU does not exist
--   "closed"     the SKU is closed for a rebuild; nothing read or written
--   "backlog"    with backlog (stream length)
--
-- Idempotency record: "<fp>|H|<hold id>|<expires_at_ms>". Records of
-- rejections ("<fp>|S|...", "<fp>|L|...") that an older version stored are
-- no record: the key is decided afresh, and a hold overwrites them.

local stock_key, idem_key, cust_key, hold_key, expiry_key, events_key, closed_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local hold_id, event_id, customer = ARGV[1], ARGV[2], ARGV[3]
local qty = tonumber(ARGV[4])
local fingerprint, idem_ttl_ms = ARGV[5], tonumber(ARGV[6])

-- First, so a closed SKU's keys (being rewritten) are not even read.
local s = redis.call('HMGET', stock_key, 'on_hand', 'held', 'sold', 'limit', 'ttl_ms', 'epoch')
if not s[1] then
  if redis.call('EXISTS', closed_key) == 1 then
    return {'outcome', 'closed'}
  end
  return {'outcome', 'no_sku'}
end
local on_hand, held, sold = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local limit, ttl_ms, epoch = tonumber(s[4]), tonumber(s[5]), s[6]

local record = redis.call('GET', idem_key)
if record and not string.find(record, '^[^|]*|H|') then
  record = nil
end
if record then
  local fp_len = #fingerprint
  if string.sub(record, 1, fp_len + 1) == fingerprint .. '|' then
    return {'outcome', 'replay', 'record', string.sub(record, fp_len + 2)}
  end
  return {'outcome', 'reused'}
end

local backlog = redis.call('XLEN', events_key)
if backlog >= tonumber(ARGV[8]) then
  return {'outcome', 'backlog', 'backlog', backlog}
end

local already = 0
if limit > 0 then
  already = tonumber(redis.call('GET', cust_key) or '0')
  if already + qty > limit then
    return {'outcome', 'limit', 'limit', limit, 'already', already}
  end
end

-- Redis's clock, the one every gatekeeper shares (DESIGN.md "One clock").
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

if on_hand - held - sold < qty then
  local retry_after_ms = 0
  if held > 0 then
    local first = redis.call('ZRANGE', expiry_key, 0, 0, 'WITHSCORES')
    retry_after_ms = 1000
    if first[2] then
      retry_after_ms = math.max(1000, tonumber(first[2]) - now_ms)
    end
  end
  return {'outcome', 'sold_out', 'retry_after_ms', retry_after_ms,
    'available', on_hand - held - sold}
end

local expires_at_ms = now_ms + ttl_ms
redis.call('HINCRBY', stock_key, 'held', qty)
redis.call('HSET', hold_key, 's', 'held', 'c', customer, 'q', qty, 'e', expires_at_ms,
  'x', 0, 't', now_ms, 'a', event_id)
redis.call('ZADD', expiry_key, expires_at_ms, hold_id)
-- Counted even without a limit, so setting a limit later is exact at once.
redis.call('INCRBY', cust_key, qty)
redis.call('SET', idem_key, fingerprint .. '|H|' .. hold_id .. '|' .. expires_at_ms, 'PX', idem_ttl_ms)
redis.call('XADD', events_key, epoch .. '-*', 't', 'admit', 'i', event_id, 'h', hold_id,
  'c', customer, 'q', qty, 'm', now_ms, 'e', expires_at_ms, 'k', ARGV[7], 'f', fingerprint)
return {'outcome', 'held', 'hold_id', hold_id, 'expires_at_ms', expires_at_ms}
