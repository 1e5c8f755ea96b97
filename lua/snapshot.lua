-- snapshot.lua: a SKU's figures and its stream position, read in one atomic
-- step, so the reconciler can compare them with the ledger at that fence.
--
-- KEYS[1]  stock hash    <prefix>:{sku}:stock
-- KEYS[2]  event stream  <prefix>:{sku}:events
--
-- Reply, by name:
--   outcome    "found", or "no_sku" (not in the gate, or closed for a rebuild)
--   on_hand, held, sold
--   last_id    the last event appended, "0-0" when none yet
--   backlog    entries still in the stream

local s = redis.call('HMGET', KEYS[1], 'on_hand', 'held', 'sold')
if not s[1] then
  return {'outcome', 'no_sku'}
end
local last, backlog = '0-0', 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  backlog = redis.call('XLEN', KEYS[2])
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
return {'outcome', 'found', 'on_hand', tonumber(s[1]), 'held', tonumber(s[2]),
  'sold', tonumber(s[3]), 'last_id', last, 'backlog', backlog}
