-- lose.lua: the ledger refused a hold's admission (it would have oversold,
-- possible only after the gate lost data). Marks the hold lost and takes its
-- units out of `held` (or `sold`, if it was confirmed meanwhile) and out of
-- the customer's count. No event: the ledger already recorded the refusal;
-- the reconciler squares any remaining difference at its next fence.
--
-- KEYS[1]  hold hash     <prefix>:{sku}:h:<hold id>
-- ARGV[1]  key base      <prefix>:{sku}:
-- ARGV[2]  hold id
--
-- Reply: the state the hold was in, or "" when the gate does not have it.

local hold_key, base, hold_id = KEYS[1], ARGV[1], ARGV[2]
local h = redis.call('HMGET', hold_key, 's', 'c', 'q')
if not h[1] then
  return ''
end
local state, customer, qty = h[1], h[2], tonumber(h[3])
if state == 'lost' then
  return state
end
if state == 'held' then
  redis.call('HINCRBY', base .. 'stock', 'held', -qty)
elseif state == 'confirmed' then
  redis.call('HINCRBY', base .. 'stock', 'sold', -qty)
end
if state == 'held' or state == 'confirmed' then
  local cust_key = base .. 'c:' .. customer
  if redis.call('DECRBY', cust_key, qty) <= 0 then
    redis.call('DEL', cust_key)
  end
end
redis.call('HSET', hold_key, 's', 'lost')
redis.call('PEXPIRE', hold_key, 3600000)
redis.call('ZREM', base .. 'expiry', hold_id)
return state
