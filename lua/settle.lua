-- settle.lua: settle a hold as its client asks: confirm (held -> confirmed)
-- or release (held -> released). Asking twice answers "same". Prefixed with
-- hold_lib.lua.
--
-- KEYS[1]  hold hash     <prefix>:{sku}:h:<hold id>
-- ARGV[1]  key base      <prefix>:{sku}:
-- ARGV[2]  hold id
-- ARGV[3]  event id (fresh UUID; names the settlement, or the expiry if the hold is past due)
-- ARGV[4]  target state: "confirmed" or "released"
--
-- Reply, by name:
--   outcome        "done" (settled now), "same" (already in the target state),
--                  "conflict" (in another state), "no_hold", "closed" (the SKU
--                  is closed for a rebuild; nothing read or written)
--   state, customer, quantity, expires_at_ms, extensions, created_at_ms
--                  the hold after the call (not with "no_hold", "closed")
--   position       the event appended, or "" (a conflict may carry the expiry
--                  this call appended)

local hold_key = KEYS[1]
local base, hold_id, event_id = ARGV[1], ARGV[2], ARGV[3]
local target = ARGV[4]
if target ~= 'confirmed' and target ~= 'released' then
  return redis.error_reply('settle.lua: target must be confirmed or released, not ' .. tostring(target))
end

if not sku_open(base) then
  return CLOSED
end
local hold = read_hold(hold_key)
if not hold then
  return {'outcome', 'no_hold'}
end
if hold.state == target then
  return reply('same', hold)
end
local now_ms = redis_now_ms()
local expired_at = expire_if_due(base, hold_id, hold, event_id, now_ms)
if hold.state ~= 'held' then
  return reply('conflict', hold, expired_at)
end
return reply('done', hold, settle(base, hold_id, hold, target, event_id, now_ms))
