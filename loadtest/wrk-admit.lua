-- wrk-admit.lua: one admission per request, each with its own
-- Idempotency-Key and customer, as storefronts send them during a drop.
-- Env: WRK_PATH (/v1/skus/<sku>/holds), WRK_TOKEN (storefront token).

local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() + id)
  prefix = string.format("%d-%d-", id, math.random(1, 1000000000))
  counter = 0
  path = os.getenv("WRK_PATH")
  headers = {
    ["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN"),
    ["Content-Type"] = "application/json",
  }
end

function request()
  counter = counter + 1
  local key = prefix .. counter
  headers["Idempotency-Key"] = key
  return wrk.format("POST", path, headers, '{"customer_id":"c-' .. key .. '","quantity":1}')
end
