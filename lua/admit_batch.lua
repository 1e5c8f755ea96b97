-- admit_batch.lua: admit a batch of pre-reservations for one SKU in one
-- atomic step. Each admission gets exactly the outcome admit.lua would give
-- it alone, in the batch's order (idempotency replay or key reuse, backlog,
-- per-customer limit, stock): a key admitted earlier in the batch replays,
-- a customer's earlier units in the batch count toward the limit. The stock
-- hash is read and written once, Redis's clock read once, and the batch's
-- admissions go out as one stream entry. Rejections write nothing.
--
-- KEYS[1]  stock hash       <prefix>:{sku}:stock
-- KEYS[2]  expiry index     <prefix>:{sku}:expiry
-- KEYS[3]  event stream     <prefix>:{sku}:events
-- KEYS[4]  closed marker    <prefix>:{sku}:closed
-- then per admission j = 1..n, KEYS[3j+2], KEYS[3j+3], KEYS[3j+4]:
--          idempotency rec  <prefix>:{sku}:i:<idempotency key>
--          customer units   <prefix>:{sku}:c:<customer id>
--          hold hash        <prefix>:{sku}:h:<hold id>
--
-- ARGV[1]  idempotency record TTL, ms
-- ARGV[2]  event backlog limit (as admit.lua)
-- then per admission j, ARGV[6j-3 .. 6j+2]: hold id, event id, customer id,
--          quantity, request fingerprint, idempotency key (as admit.lua)
--
-- Reply: one reply per admission, in order, each exactly admit.lua's.
--
-- Stream entry (one per batch that took units): t "admits", m (now, ms),
-- n (admissions in it), and per admission j = 1..n the fields of an admit
-- event suffixed with j: ij (event id), hj, cj, qj, ej, kj, fj.

local stock_key, expiry_key, events_key, closed_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local idem_ttl_ms, backlog_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = (#KEYS - 4) / 3

local function for_each(reply)
  local replies = {}
  for j = 1, n do
    replies[j] = reply
  end
  return replies
end

-- First, so a closed SKU's keys (being rewritten) are not even read.
local s = redis.call('HMGET', stock_key, 'on_hand', 'held', 'sold', 'limit', 'ttl_ms', 'epoch')
if not s[1] then
  if redis.call('EXISTS', closed_key) == 1 then
    return for_each({'outcome', 'closed'})
  end
  return for_each({'outcome', 'no_sku'})
end
local on_hand, held, sold = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local limit, ttl_ms, epoch = tonumber(s[4]), tonumber(s[5]), s[6]

-- Redis's clock, the one every gatekeeper shares (DESIGN.md "One clock").
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local backlog = redis.call('XLEN', events_key)

local replies = {}
local taken = 0
local entry = {'t', 'admits', 'm', now_ms, 'n', 0}
local admitted = 0
for j = 1, n do
  local idem_key, cust_key, hold_key = KEYS[3 * j + 2], KEYS[3 * j + 3], KEYS[3 * j + 4]
  local a = 6 * j - 3
  local hold_id, event_id, customer = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local qty, fingerprint, key = tonumber(ARGV[a + 3]), ARGV[a + 4], ARGV[a + 5]

  local record = redis.call('GET', idem_key)
  if record and not string.find(record, '^[^|]*|H|') then
    record = nil
  end
  if record then
    local fp_len = #fingerprint
    if string.sub(record, 1, fp_len + 1) == fingerprint .. '|' then
      replies[j] = {'outcome', 'replay', 'record', string.sub(record, fp_len + 2)}
    else
      replies[j] = {'outcome', 'reused'}
    end
  elseif backlog >= backlog_limit then
    replies[j] = {'outcome', 'backlog', 'backlog', backlog}
  else
    local already = 0
    if limit > 0 then
      already = tonumber(redis.call('GET', cust_key) or '0')
    end
    if limit > 0 and already + qty > limit then
      replies[j] = {'outcome', 'limit', 'limit', limit, 'already', already}
    elseif on_hand - held - taken - sold < qty then
      local retry_after_ms = 0
      if held + taken > 0 then
        local first = redis.call('ZRANGE', expiry_key, 0, 0, 'WITHSCORES')
        retry_after_ms = 1000
        if first[2] then
          retry_after_ms = math.max(1000, tonumber(first[2]) - now_ms)
        end
      end
      replies[j] = {'outcome', 'sold_out', 'retry_after_ms', retry_after_ms,
        'available', on_hand - held - taken - sold}
    else
      local expires_at_ms = now_ms + ttl_ms
      taken = taken + qty
      redis.call('HSET', hold_key, 's', 'held', 'c', customer, 'q', qty, 'e', expires_at_ms,
        'x', 0, 't', now_ms, 'a', event_id)
      redis.call('ZADD', expiry_key, expires_at_ms, hold_id)
      -- Counted even without a limit, so setting a limit later is exact at once.
      redis.call('INCRBY', cust_key, qty)
      redis.call('SET', idem_key, fingerprint .. '|H|' .. hold_id .. '|' .. expires_at_ms,
        'PX', idem_ttl_ms)
      admitted = admitted + 1
      for _, field in ipairs({{'i', event_id}, {'h', hold_id}, {'c', customer}, {'q', qty},
          {'e', expires_at_ms}, {'k', key}, {'f', fingerprint}}) do
        entry[#entry + 1] = field[1] .. admitted
        entry[#entry + 1] = field[2]
      end
      replies[j] = {'outcome', 'held', 'hold_id', hold_id, 'expires_at_ms', expires_at_ms}
    end
  end
end
if admitted > 0 then
  entry[6] = admitted
  redis.call('HINCRBY', stock_key, 'held', taken)
  redis.call('XADD', events_key, epoch .. '-*', unpack(entry))
end
return replies
