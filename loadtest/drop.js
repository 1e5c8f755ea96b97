// drop.js — the flash sale. Arrivals ramp from 0 to PEAK_RPS over RAMP and
// hold there for DURATION (open model: k6 starts iterations at the target
// rate whatever the latency). Many distinct customers race for a few scarce
// SKUs; every request carries its own Idempotency-Key, and RETRY_RATIO of the
// clients send their request again with the same key (half one after the
// other, half both copies at once): a hold must come back identical, marked
// `Idempotent-Replayed: true`; a rejection is decided afresh, never
// replayed. Every answer must be 201, 409 or 429.
//
// Environment (defaults for a local run on a small machine):
//   BASE_URL, STOREFRONT_TOKEN(S), SKUS, CUSTOMER_SPACE, QUANTITY, OUT_DIR — see lib.js
//   SKUS              default drop-a,drop-b,drop-c
//   CUSTOMER_SPACE    default 10000000 (customer ids c-0 .. c-9999999, random)
//   PEAK_RPS          admission iterations per second at the peak   (default 2000)
//   RAMP              time from 0 to PEAK_RPS                        (default 5s)
//   DURATION          time held at PEAK_RPS                          (default 30s)
//   RETRY_RATIO       share of clients that send their request twice (default 0.05)
//   P99_MS            threshold on p(99) of admission latency, ms    (default 50)
//   MAX_DROPPED       threshold: dropped_iterations must stay below  (default 1% of planned iterations, at least 10)
//   VUS / MAX_VUS     pre-allocated / maximum VUs                    (default max(50, PEAK_RPS/20) / max(200, PEAK_RPS/2))
//   SCENARIO          name of the summary file                       (default drop)
//
// Run through the runner (`loadtest/run drop`, `loadtest/run smoke`), which
// starts dropgate, seeds the SKUs and passes BASE_URL, tokens and SKUS.

import {
  admit,
  admitTwiceConcurrently,
  baseConfig,
  commonThresholds,
  durationSeconds,
  envFloat,
  envInt,
  envStr,
  newIdempotencyKey,
  pick,
  randomCustomer,
  retrySequential,
  summaryHandler,
  summaryTrendStats,
} from './lib.js';

const cfg = baseConfig({ scenario: 'drop', skus: 'drop-a,drop-b,drop-c', customerSpace: 10000000 });
const PEAK_RPS = envInt('PEAK_RPS', 2000);
const RAMP = envStr('RAMP', '5s');
const DURATION = envStr('DURATION', '30s');
const RETRY_RATIO = envFloat('RETRY_RATIO', 0.05);
const P99_MS = envFloat('P99_MS', 50);
// Iterations planned: half the peak over the ramp, then the peak.
const PLANNED = PEAK_RPS * (durationSeconds(RAMP) / 2 + durationSeconds(DURATION));
const MAX_DROPPED = envInt('MAX_DROPPED', Math.max(10, Math.ceil(PLANNED * 0.01)));

export const options = {
  scenarios: {
    drop: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: envInt('VUS', Math.max(50, Math.ceil(PEAK_RPS / 20))),
      maxVUs: envInt('MAX_VUS', Math.max(200, Math.ceil(PEAK_RPS / 2))),
      stages: [
        { target: PEAK_RPS, duration: RAMP },
        { target: PEAK_RPS, duration: DURATION },
      ],
    },
  },
  thresholds: commonThresholds(cfg, P99_MS, {
    dropped_iterations: [`count<${MAX_DROPPED}`],
  }),
  summaryTrendStats,
  discardResponseBodies: false,
};

export default function () {
  const sku = pick(cfg.skus);
  const customer = randomCustomer(cfg);
  const key = newIdempotencyKey();
  const roll = Math.random();
  if (roll < RETRY_RATIO / 2) {
    admitTwiceConcurrently(cfg, sku, customer, key);
  } else {
    const first = admit(cfg, sku, customer, key);
    if (roll < RETRY_RATIO) retrySequential(cfg, first);
  }
}

export const handleSummary = summaryHandler(cfg);
