-- extend.lua: move a held hold's expiry to now (Redis's clock) + the SKU's
-- hold_ttl_ms, at most max_extensions times. Prefixed with hold_lib.lua.
--
-- KEYS[1]  hold hash     <prefix>:{sku}:h:<hold id>
-- ARGV[1]  key base      <prefix>:{sku}:
-- ARGV[2]  hold id
-- ARGV[3]  event id (fresh UUID; names the extension, or the expiry if the hold is past due)
--
-- Reply, by name (as settle.lua):
--   outcome        "done" (extended), "ext_limit" (max_extensions reached),
--                  "conflict" (the hold is not held), "no_hold", "closed"
--   state, customer, quantity, expires_at_ms, extensions, created_at_ms
--   position       the event appended, or ""

local hold_key = KEYS[1]
local base, hold_id, event_id = ARGV[1], ARGV[2], ARGV[3]

if not sku_open(base) then
  return CLOSED
end
local hold = read_hold(hold_key)
if not hold then
  return {'outcome', 'no_hold'}
end
local now_ms = redis_now_ms()
local expired_at = expire_if_due(base, hold_id, hold, event_id, now_ms)
if hold.state ~= 'held' then
  return reply('conflict', hold, expired_at)
end
local stock_key = base .. 'stock'
local s = redis.call('HMGET', stock_key, 'ttl_ms', 'max_ext')
if hold.extensions >= tonumber(s[2]) then
  return reply('ext_limit', hold)
end
hold.expires_ms = now_ms + tonumber(s[1])
hold.extensions = hold.extensions + 1
redis.call('HSET', hold_key, 'e', hold.expires_ms, 'x', hold.extensions)
redis.call('ZADD', base .. 'expiry', hold.expires_ms, hold_id)
local position = append_event(stock_key, base .. 'events', {'t', 'extend', 'i', event_id,
  'h', hold_id, 'c', hold.customer, 'q', hold.qty, 'm', now_ms, 'e', hold.expires_ms})
return reply('done', hold, position)
