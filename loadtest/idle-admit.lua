-- idle-admit.lua: one admission per request, round-robin over the SKUs of
-- a drop, each request with its own Idempotency-Key and customer.
-- Env: WRK_SKUS (comma-separated SKU ids), WRK_TOKEN (storefront token).

local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() + id)
  prefix = string.format("%d-%d-", id, math.random(1, 1000000000))
  counter = 0
  paths = {}
  for sku in string.gmatch(os.getenv("WRK_SKUS"), "[^,]+") do
    paths[#paths + 1] = "/v1/skus/" .. sku .. "/holds"
  end
  headers = {
    ["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN"),
    ["Content-Type"] = "application/json",
  }
end

function request()
  counter = counter + 1
  local key = prefix .. counter
  headers["Idempotency-Key"] = key
  return wrk.format("POST", paths[counter % #paths + 1], headers,
    '{"customer_id":"c-' .. key .. '","quantity":1}')
end
