-- hold_lib.lua: helpers shared by the scripts that move a hold along its state
-- machine (settle, extend, expire, lose). Prepended to each of them by the
-- Rust side, so every script still runs as one atomic EVALSHA.
--
-- Key layout under one SKU's hash tag, base = "<prefix>:{<sku>}:":
--   base.."stock"  base.."h:"..hold_id  base.."expiry"  base.."c:"..customer
--   base.."events"
-- These keys are derived here from the base, inside the same hash tag (same
-- slot) as the declared keys.
--
-- Replies are flat lists of name, value pairs ({'outcome', 'done', 'state',
-- 'held', ...}), read by name on the Rust side.

-- A settled hold stays readable in Redis this long; the ledger has it after.
local SETTLED_HOLD_TTL_MS = 3600000

-- The event each settled state is recorded as. `lost` has none: the ledger
-- already recorded the refusal that made the hold lost.
local EVENT_KIND = {confirmed = 'confirm', released = 'release', expired = 'expire'}

-- A SKU is open while its stock hash exists. Closing a SKU for a rebuild
-- deletes the hash first, so no script acts on a half-built or closing SKU
-- (and none appends an event without the SKU's epoch).
local function sku_open(base)
  return redis.call('EXISTS', base .. 'stock') == 1
end

local CLOSED = {'outcome', 'closed'}

-- Units came back to the SKU (release, expiry, lost hold), or a confirm left
-- fewer holds that may come back (what Retry-After promises): every
-- gatekeeper that remembers the SKU sold out forgets it (see
-- `gate::sold_out`). The channel is "<prefix>:units-back", the message the
-- SKU id, both read off the base.
local function units_back(base)
  local prefix, sku = string.match(base, '^(.*):{(.*)}:$')
  redis.call('PUBLISH', prefix .. ':units-back', sku)
end

-- Redis's clock in unix ms: the one clock every gatekeeper shares, so
-- gatekeepers whose own clocks disagree decide exactly as one would
-- (DESIGN.md "One clock").
local function redis_now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function read_hold(hold_key)
  local h = redis.call('HMGET', hold_key, 's', 'c', 'q', 'e', 'x', 't')
  if not h[1] then
    return nil
  end
  return {state = h[1], customer = h[2], qty = tonumber(h[3]), expires_ms = tonumber(h[4]),
    extensions = tonumber(h[5]), created_ms = tonumber(h[6])}
end

-- Appends an event to the SKU's stream at the SKU's epoch; returns its id.
local function append_event(stock_key, events_key, fields)
  local epoch = redis.call('HGET', stock_key, 'epoch')
  return redis.call('XADD', events_key, epoch .. '-*', unpack(fields))
end

-- The settle step: moves a hold from its state to `to` (confirmed, released,
-- expired or lost) and its units with it. Units counted in `held` (or in
-- `sold`, for a confirmed hold) leave that counter; they go to `sold` when the
-- hold is confirmed, else they also leave the customer's count. A hold that
-- was already settled elsewhere (released, expired) moves no units.
local function settle_step(base, hold_id, hold, to)
  local stock_key = base .. 'stock'
  local counted = hold.state == 'held' or hold.state == 'confirmed'
  if hold.state == 'held' then
    redis.call('HINCRBY', stock_key, 'held', -hold.qty)
  elseif hold.state == 'confirmed' then
    redis.call('HINCRBY', stock_key, 'sold', -hold.qty)
  end
  if to == 'confirmed' then
    redis.call('HINCRBY', stock_key, 'sold', hold.qty)
  elseif counted then
    local cust_key = base .. 'c:' .. hold.customer
    if redis.call('DECRBY', cust_key, hold.qty) <= 0 then
      redis.call('DEL', cust_key)
    end
  end
  units_back(base)
  local hold_key = base .. 'h:' .. hold_id
  redis.call('HSET', hold_key, 's', to)
  redis.call('PEXPIRE', hold_key, SETTLED_HOLD_TTL_MS)
  redis.call('ZREM', base .. 'expiry', hold_id)
  hold.state = to
end

-- Settles a held hold (confirmed, released or expired) and records it in the
-- stream. Returns the event's stream id.
local function settle(base, hold_id, hold, to, event_id, now_ms)
  settle_step(base, hold_id, hold, to)
  return append_event(base .. 'stock', base .. 'events', {'t', EVENT_KIND[to], 'i', event_id,
    'h', hold_id, 'c', hold.customer, 'q', hold.qty, 'm', now_ms})
end

-- The reply every transition script gives: the outcome, the hold, and the
-- position of the event it appended ('' when none).
local function reply(outcome, hold, position)
  return {'outcome', outcome, 'state', hold.state, 'customer', hold.customer,
    'quantity', hold.qty, 'expires_at_ms', hold.expires_ms, 'extensions', hold.extensions,
    'created_at_ms', hold.created_ms, 'position', position or ''}
end

-- A held hold past its expiry is expired on the spot, whoever touches it
-- first, so confirm, release and the reaper can never both win.
local function expire_if_due(base, hold_id, hold, event_id, now_ms)
  if hold.state == 'held' and hold.expires_ms <= now_ms then
    return settle(base, hold_id, hold, 'expired', event_id, now_ms)
  end
  return nil
end
