// sustained.js — latency at a fixed load. `constant-arrival-rate` (open
// model): RATE admissions per second for DURATION whatever the latency, so
// the percentiles are not flattered by coordinated omission. The SKU has
// stock far beyond what the run can take, so every answer is a new hold (201)
// and the figures are the cost of a real admission, not of a sold-out reply.
//
// Environment:
//   BASE_URL, STOREFRONT_TOKEN(S), CUSTOMER_SPACE, QUANTITY, OUT_DIR — see lib.js
//   SKUS              default sustained (the runner seeds STOCK 100000000)
//   RATE              admissions per second                     (default 1000)
//   DURATION          how long                                  (default 60s)
//   P99_MS            threshold on p(99) admission latency, ms  (default 50)
//   MAX_DROPPED       dropped_iterations must stay below        (default 1% of planned, at least 10)
//   VUS / MAX_VUS     pre-allocated / maximum VUs               (default max(50, RATE/20) / max(200, RATE/2))
//   SCENARIO          name of the summary file                  (default sustained)

import {
  admit,
  baseConfig,
  constantRateOptions,
  newIdempotencyKey,
  pick,
  randomCustomer,
  summaryHandler,
} from './lib.js';

const cfg = baseConfig({ scenario: 'sustained', skus: 'sustained', customerSpace: 10000000 });
export const options = constantRateOptions('sustained', cfg, {
  rate: 1000,
  duration: '60s',
  vus: (rate) => Math.max(50, Math.ceil(rate / 20)),
  maxVus: (rate) => Math.max(200, Math.ceil(rate / 2)),
});

export default function () {
  const sku = pick(cfg.skus);
  admit(cfg, sku, randomCustomer(cfg), newIdempotencyKey());
}

export const handleSummary = summaryHandler(cfg);
