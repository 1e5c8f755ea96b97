-- set_sku.lua: create a SKU, replace its settings, or adjust its stock, and
-- append the adjustment event. Refuses to put on_hand below held + sold, or
-- above 1000000000 (SkuSettings::MAX_ON_HAND), and to touch a SKU closed for
-- a rebuild (it would otherwise be created anew under the rebuild).
--
-- KEYS[1]  stock hash    <prefix>:{sku}:stock
-- KEYS[2]  event stream  <prefix>:{sku}:events
-- KEYS[3]  closed marker <prefix>:{sku}:closed
-- ARGV[1]  mode: "put" (ARGV[2] is the new on_hand; ARGV[3..5] replace the
--          settings) or "adjust" (ARGV[2] is a delta; settings unchanged)
-- ARGV[2]  on_hand or delta
-- ARGV[3]  per_customer_limit   (put only)
-- ARGV[4]  hold_ttl_ms          (put only)
-- ARGV[5]  max_extensions       (put only)
-- ARGV[6]  event id (fresh UUID)
-- ARGV[7]  gate epoch (used when the SKU is created)
-- ARGV[8]  sku number from the ledger (used when the SKU is created)
-- ARGV[9]  reason, recorded with the movement
-- ARGV[10] consumer group of the commit worker
-- KEYS[4]  (optional) admin idempotency record <prefix>:{sku}:a:<key>
-- ARGV[11] (with KEYS[4]) request fingerprint: same change, same fingerprint
-- ARGV[12] (with KEYS[4]) record TTL, ms
--
-- The movement is dated by Redis's clock (TIME), never the caller's.
--
-- A change publishes the SKU on "<prefix>:units-back": units may have come
-- back, and gatekeepers that remember the SKU sold out forget it.
--
-- With an idempotency key, a change that happened is remembered with its
-- answer, so a retry (after a timeout, a 5xx) replays it instead of moving
-- stock again. Refusals (conflict, no_sku) store nothing.
--
-- Reply, by name; `outcome` is one of:
--   "created", "updated"   with on_hand, held, sold, limit, ttl_ms, max_ext
--   "conflict"             with requested (on_hand), held, sold
--   "no_sku"               adjust of a SKU that does not exist
--   "closed"               the SKU is closed for a rebuild; nothing written
--   "replay"               the key's first answer: first (created/updated)
--                          and its figures, as above
--   "reused"               the key was used for another change

local stock_key, events_key, closed_key = KEYS[1], KEYS[2], KEYS[3]
local mode, amount = ARGV[1], tonumber(ARGV[2])
local event_id, reason = ARGV[6], ARGV[9]

local idem_key, fingerprint = KEYS[4], ARGV[11]

local s = redis.call('HMGET', stock_key, 'on_hand', 'held', 'sold', 'limit', 'ttl_ms', 'max_ext', 'epoch')
if not s[1] and redis.call('EXISTS', closed_key) == 1 then
  return {'outcome', 'closed'}
end
if idem_key then
  local record = redis.call('GET', idem_key)
  if record then
    local f = {}
    for part in string.gmatch(record, '[^|]+') do
      f[#f + 1] = part
    end
    if f[1] ~= fingerprint then
      return {'outcome', 'reused'}
    end
    return {'outcome', 'replay', 'first', f[2], 'on_hand', tonumber(f[3]), 'held', tonumber(f[4]),
      'sold', tonumber(f[5]), 'limit', tonumber(f[6]), 'ttl_ms', tonumber(f[7]),
      'max_ext', tonumber(f[8])}
  end
end
local outcome = 'updated'
if not s[1] then
  if mode ~= 'put' then
    return {'outcome', 'no_sku'}
  end
  outcome = 'created'
  s = {'0', '0', '0', ARGV[3], ARGV[4], ARGV[5], ARGV[7]}
end
local on_hand, held, sold = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local limit, ttl_ms, max_ext, epoch = s[4], s[5], s[6], s[7]

local new_on_hand = amount
if mode == 'adjust' then
  new_on_hand = on_hand + amount
else
  limit, ttl_ms, max_ext = ARGV[3], ARGV[4], ARGV[5]
end
if new_on_hand < held + sold or new_on_hand > 1000000000 then
  return {'outcome', 'conflict', 'requested', new_on_hand, 'held', held, 'sold', sold}
end

if outcome == 'created' then
  redis.call('HSET', stock_key, 'held', 0, 'sold', 0, 'epoch', epoch, 'sku_no', ARGV[8])
  local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', events_key, ARGV[10], '0', 'MKSTREAM')
  if not ok and not string.find(tostring(err), 'BUSYGROUP') then
    return redis.error_reply(tostring(err))
  end
end
redis.call('HSET', stock_key, 'on_hand', new_on_hand, 'limit', limit, 'ttl_ms', ttl_ms, 'max_ext', max_ext)
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('XADD', events_key, epoch .. '-*', 't', 'adjust', 'i', event_id, 'm', now_ms,
  'd', new_on_hand - on_hand, 'l', limit, 'ttl', ttl_ms, 'x', max_ext, 'r', reason)
local prefix, sku = string.match(stock_key, '^(.*):{(.*)}:stock$')
redis.call('PUBLISH', prefix .. ':units-back', sku)
if idem_key then
  redis.call('SET', idem_key, table.concat({fingerprint, outcome, new_on_hand, held, sold,
    limit, ttl_ms, max_ext}, '|'), 'PX', ARGV[12])
end
return {'outcome', outcome, 'on_hand', new_on_hand, 'held', held, 'sold', sold,
  'limit', tonumber(limit), 'ttl_ms', tonumber(ttl_ms), 'max_ext', tonumber(max_ext)}
