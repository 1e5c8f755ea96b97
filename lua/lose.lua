-- lose.lua: the ledger refused a hold's admission (it would have oversold,
-- possible only after the gate lost data). Marks the hold lost with the
-- settle step of hold_lib.lua: its units leave `held` (or `sold`, if it was
-- confirmed meanwhile) and the customer's count. No event: the ledger already
-- recorded the refusal; the reconciler squares any remaining difference at
-- its next fence. Prefixed with hold_lib.lua.
--
-- KEYS[1]  hold hash     <prefix>:{sku}:h:<hold id>
-- ARGV[1]  key base      <prefix>:{sku}:
-- ARGV[2]  hold id
--
-- Reply, by name:
--   outcome   "lost" (the hold is lost now, or was already), "no_hold", or
--             "closed" (the SKU is closed for a rebuild, which leaves the
--             hold out since the ledger refused it)
--   was       the state the hold was in (with "lost")

local hold_key, base, hold_id = KEYS[1], ARGV[1], ARGV[2]

if not sku_open(base) then
  return CLOSED
end
local hold = read_hold(hold_key)
if not hold then
  return {'outcome', 'no_hold'}
end
local was = hold.state
if was ~= 'lost' then
  settle_step(base, hold_id, hold, 'lost')
end
return {'outcome', 'lost', 'was', was}
