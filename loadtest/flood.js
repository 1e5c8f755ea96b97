// flood.js — far more clients than units. One SKU with STOCK units (1,000)
// meets CLIENTS unique customers (50 × STOCK); REQUESTS admissions arrive at
// RATE/s (open model), client i % CLIENTS sending the i-th, each with its own
// Idempotency-Key. Nearly every answer is a rejection (409 sold_out or
// limit_exceeded), and by the contract a rejection stores nothing: the runner
// reports how much Redis grew over the flood (`flood` line of the summary).
//
// Environment:
//   BASE_URL, STOREFRONT_TOKEN(S), QUANTITY, OUT_DIR — see lib.js
//   SKUS              default flood (the runner seeds STOCK 1000)
//   CLIENTS           unique customers c-0 .. c-<CLIENTS-1>    (default 50000; the runner: 50 × STOCK)
//   REQUESTS          admissions in all                         (the runner: 100000 + STOCK)
//   RATE              admissions per second                     (default 2000)
//   DURATION          how long; the runner sets REQUESTS / RATE (default 51s)
//   P99_MS            threshold on p(99) admission latency, ms  (default 50)
//   MAX_DROPPED       dropped_iterations must stay below        (default 1% of planned, at least 10)
//   VUS / MAX_VUS     pre-allocated / maximum VUs               (default max(50, RATE/20) / max(200, RATE/2))
//   SCENARIO          name of the summary file                  (default flood)

import exec from 'k6/execution';
import {
  admit,
  baseConfig,
  constantRateOptions,
  envInt,
  newIdempotencyKey,
  pick,
  summaryHandler,
} from './lib.js';

const cfg = baseConfig({ scenario: 'flood', skus: 'flood', customerSpace: envInt('CLIENTS', 50000) });
const CLIENTS = envInt('CLIENTS', cfg.customerSpace);
const REQUESTS = envInt('REQUESTS', 0);

export const options = constantRateOptions('flood', cfg, {
  rate: 2000,
  duration: '51s',
  vus: (rate) => Math.max(50, Math.ceil(rate / 20)),
  maxVus: (rate) => Math.max(200, Math.ceil(rate / 2)),
});

export default function () {
  const i = exec.scenario.iterationInTest;
  // The duration is rounded up to whole seconds: stop at REQUESTS exactly.
  if (REQUESTS > 0 && i >= REQUESTS) return;
  admit(cfg, pick(cfg.skus), `c-${i % CLIENTS}`, newIdempotencyKey());
}

export const handleSummary = summaryHandler(cfg);
