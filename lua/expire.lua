-- expire.lua: the reaper's step for one SKU: expire up to #ARGV - 1 holds
-- whose expiry has passed by Redis's clock and return their units. Prefixed
-- with hold_lib.lua.
--
-- KEYS[1]  expiry index  <prefix>:{sku}:expiry
-- ARGV[1]  key base      <prefix>:{sku}:
-- ARGV[2..] fresh event ids, one per hold this call may expire
--
-- Reply, by name:
--   outcome     "expired", or "closed" (the SKU is closed for a rebuild)
--   expired     holds expired now
--   still_due   due holds left for the next call (non-zero when the batch was full)
--   next_due_ms the earliest expiry of the SKU's live holds after the call, or
--               "" when none is left: the reaper's next hint for the SKU

local expiry_key = KEYS[1]
local base = ARGV[1]
local batch = #ARGV - 1

if not sku_open(base) then
  return CLOSED
end
local now_ms = redis_now_ms()
local due = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_ms, 'LIMIT', 0, batch)
local expired = 0
for i, hold_id in ipairs(due) do
  local hold = read_hold(base .. 'h:' .. hold_id)
  if hold and hold.state == 'held' then
    if expire_if_due(base, hold_id, hold, ARGV[1 + i], now_ms) then
      expired = expired + 1
    end
  else
    -- Settled elsewhere; the index entry is stale.
    redis.call('ZREM', expiry_key, hold_id)
  end
end
local first = redis.call('ZRANGE', expiry_key, 0, 0, 'WITHSCORES')
return {'outcome', 'expired', 'expired', expired,
  'still_due', redis.call('ZCOUNT', expiry_key, '-inf', now_ms),
  'next_due_ms', first[2] or ''}
