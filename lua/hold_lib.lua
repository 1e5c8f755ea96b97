-- hold_lib.lua: helpers shared by the scripts that move a hold along its state
-- machine (confirm, release, extend, expire). Prepended to each of them by
-- the Rust side, so every script still runs as one atomic EVALSHA.
--
-- Key layout under one SKU's hash tag, base = "<prefix>:{<sku>}:":
--   base.."stock"  base.."h:"..hold_id  base.."expiry"  base.."c:"..customer
--   base.."events"
-- The customer key is derived here from the hold's customer, inside the same
-- hash tag (same slot) as the declared keys.

-- A settled hold stays readable in Redis this long; the ledger has it after.
local SETTLED_HOLD_TTL_MS = 3600000

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

-- Moves a held hold to a settled state (confirmed, released or expired) and
-- puts its units where they belong. Returns the event's stream id.
local function settle(base, hold_id, hold, state, kind, event_id, now_ms)
  local stock_key = base .. 'stock'
  redis.call('HINCRBY', stock_key, 'held', -hold.qty)
  if state == 'confirmed' then
    redis.call('HINCRBY', stock_key, 'sold', hold.qty)
  else
    local cust_key = base .. 'c:' .. hold.customer
    if redis.call('DECRBY', cust_key, hold.qty) <= 0 then
      redis.call('DEL', cust_key)
    end
  end
  local hold_key = base .. 'h:' .. hold_id
  redis.call('HSET', hold_key, 's', state)
  redis.call('PEXPIRE', hold_key, SETTLED_HOLD_TTL_MS)
  redis.call('ZREM', base .. 'expiry', hold_id)
  hold.state = state
  return append_event(stock_key, base .. 'events', {'t', kind, 'i', event_id, 'h', hold_id,
    'c', hold.customer, 'q', hold.qty, 'm', now_ms})
end

-- The reply every transition script gives: outcome, then the hold.
local function reply(outcome, hold, position)
  return {outcome, hold.state, hold.customer, hold.qty, hold.expires_ms, hold.extensions,
    hold.created_ms, position or ''}
end

-- A held hold past its expiry is expired on the spot, whoever touches it
-- first, so confirm, release and the reaper can never both win.
local function expire_if_due(base, hold_id, hold, event_id, now_ms)
  if hold.state == 'held' and hold.expires_ms <= now_ms then
    return settle(base, hold_id, hold, 'expired', 'expire', event_id, now_ms)
  end
  return nil
end
