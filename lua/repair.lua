-- repair.lua: set a SKU's counters to the ledger's, but only if no event was
-- appended since the fence the reconciler compared at; otherwise do nothing
-- (the next round compares again).
--
-- KEYS[1]  stock hash    <prefix>:{sku}:stock
-- KEYS[2]  event stream  <prefix>:{sku}:events
-- ARGV[1]  fence: the last event id seen by snapshot.lua
-- ARGV[2]  on_hand   ARGV[3] held   ARGV[4] sold   (the ledger's figures)
--
-- A repair publishes the SKU on "<prefix>:units-back" (units may be back).
--
-- Reply, by name: outcome "repaired", "moved" (an event was appended since
-- the fence) or "closed" (the SKU is closed for a rebuild, or gone).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'outcome', 'closed'}
end
local last = '0-0'
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
if last ~= ARGV[1] then
  return {'outcome', 'moved'}
end
redis.call('HSET', KEYS[1], 'on_hand', ARGV[2], 'held', ARGV[3], 'sold', ARGV[4])
local prefix, sku = string.match(KEYS[1], '^(.*):{(.*)}:stock$')
redis.call('PUBLISH', prefix .. ':units-back', sku)
return {'outcome', 'repaired'}
