-- confirm.lua: confirm a hold (held -> confirmed). Doing it twice answers "same".
-- Prefixed with hold_lib.lua.
--
-- KEYS[1]  hold hash     <prefix>:{sku}:h:<hold id>
-- ARGV[1]  key base      <prefix>:{sku}:
-- ARGV[2]  hold id
-- ARGV[3]  event id (fresh UUID; names the confirm, or the expiry if the hold is past due)
-- ARGV[4]  now, unix ms
--
-- Reply: {outcome, state, customer, quantity, expires_at_ms, extensions,
--         created_at_ms, event stream id or ""}
--   outcome "done" (confirmed now), "same" (was already confirmed),
--   "conflict" (the hold is in another state, given), "no_hold".

local hold_key = KEYS[1]
local base, hold_id, event_id, now_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local hold = read_hold(hold_key)
if not hold then
  return {'no_hold'}
end
if hold.state == 'confirmed' then
  return reply('same', hold)
end
local expired_at = expire_if_due(base, hold_id, hold, event_id, now_ms)
if hold.state ~= 'held' then
  return reply('conflict', hold, expired_at)
end
return reply('done', hold, settle(base, hold_id, hold, 'confirmed', 'confirm', event_id, now_ms))
