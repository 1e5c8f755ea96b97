-- trim.lua: drop the stream entries every consumer of the commit worker's
-- group has acknowledged, so Redis memory stays bounded during a long drop.
-- Entries still pending (delivered, not yet committed) or not yet delivered
-- are kept.
--
-- KEYS[1]  event stream  <prefix>:{sku}:events
-- ARGV[1]  consumer group
--
-- Reply, by name: outcome "trimmed", trimmed (entries dropped), left (entries
-- still in the stream: 0 means nothing is pending for any consumer either).

local events_key, group = KEYS[1], ARGV[1]

local function trimmed(n)
  return {'outcome', 'trimmed', 'trimmed', n, 'left', redis.call('XLEN', events_key)}
end

local last_delivered = nil
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', events_key)
if not ok then
  return trimmed(0)
end
for _, g in ipairs(groups) do
  local name, delivered = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == group then last_delivered = delivered end
end
if not last_delivered or last_delivered == '0-0' then
  return trimmed(0)
end

local pending = redis.call('XPENDING', events_key, group)
local keep_from
if tonumber(pending[1]) > 0 then
  keep_from = pending[2]
else
  local ms, seq = string.match(last_delivered, '^(%d+)-(%d+)$')
  keep_from = ms .. '-' .. (tonumber(seq) + 1)
end
return trimmed(redis.call('XTRIM', events_key, 'MINID', keep_from))
