// lifecycle.js — a realistic mix. Each arrival admits a hold, "thinks"
// (THINK_MIN_MS..THINK_MAX_MS, like a customer at the payment step), then
// confirms it (CONFIRM_RATIO, 70%; EXTEND_RATIO of those extend it first),
// releases it (RELEASE_RATIO, 15%) or abandons it (the rest, 15%). Abandoned
// holds expire after the SKU's hold_ttl_ms (the runner seeds HOLD_TTL_MS=5000);
// EXPIRY_CHECK_RATIO of them are watched past their expiry to check they read
// `expired` and that a late confirm answers 409 hold_expired.
//
// Environment:
//   BASE_URL, STOREFRONT_TOKEN(S), CUSTOMER_SPACE, QUANTITY, OUT_DIR — see lib.js
//   SKUS                default life-a,life-b,life-c (the runner seeds STOCK 1000000 each)
//   RATE                admissions started per second               (default 200)
//   DURATION            how long                                    (default 60s)
//   CONFIRM_RATIO       share confirmed                             (default 0.7)
//   RELEASE_RATIO       share released                              (default 0.15)
//   EXTEND_RATIO        share of the confirmed extended first       (default 0.05)
//   THINK_MIN_MS/MAX_MS think time between admit and the next step  (default 100 / 1000)
//   HOLD_TTL_MS         the SKUs' hold_ttl_ms, to time expiry checks (default 5000)
//   EXPIRY_CHECK_RATIO  share of abandoned holds watched to expiry   (default 0.02)
//   P99_MS              threshold on p(99) admission latency, ms     (default 50)
//   MAX_DROPPED         dropped_iterations must stay below           (default 1% of planned, at least 10)
//   VUS / MAX_VUS       pre-allocated / maximum VUs                  (default max(50, RATE) / max(300, RATE*3))
//   SCENARIO            name of the summary file                     (default lifecycle)

import {
  baseConfig,
  constantRateOptions,
  lifecycleConfig,
  lifecycleIteration,
  summaryHandler,
} from './lib.js';

const lc = lifecycleConfig(baseConfig({ scenario: 'lifecycle', skus: 'life-a,life-b,life-c', customerSpace: 10000000 }));
export const options = constantRateOptions('lifecycle', lc, {
  rate: 200,
  duration: '60s',
  vus: (rate) => Math.max(50, rate),
  maxVus: (rate) => Math.max(300, rate * 3),
  // Each iteration sleeps (think time, sometimes a hold's whole TTL).
  gracefulStop: `${Math.ceil(lc.holdTtlMs / 1000) + 10}s`,
  extra: (p99Ms) => ({
    transition_errors: ['count==0'],
    'http_req_duration{name:confirm}': [`p(99)<${p99Ms * 4}`],
    'http_req_duration{name:release}': [`p(99)<${p99Ms}`],
  }),
});

export default function () {
  lifecycleIteration(lc);
}

export const handleSummary = summaryHandler(lc);
