// soak.js — long run at moderate load with the lifecycle mix (admit, then
// confirm / release / abandon-and-expire), to show that nothing accumulates:
// the runner samples Redis `used_memory` and dropgate's RSS every
// SAMPLE_S seconds (default 10) into loadtest/out/soak-samples.csv and
// compares the first sample after warm-up with the last.
//
// Environment: everything lifecycle.js reads (see there and lib.js), with
// soak defaults:
//   SKUS                default soak-a,soak-b,soak-c (the runner seeds STOCK 10000000 each)
//   RATE                admissions started per second  (default 100)
//   DURATION            how long                       (default 10m)
//   CUSTOMER_SPACE      default 100000 (returning customers, so per-customer keys stay bounded)
//   P99_MS              default 50
//   SCENARIO            default soak

import {
  baseConfig,
  commonThresholds,
  durationSeconds,
  envFloat,
  envInt,
  envStr,
  lifecycleConfig,
  lifecycleIteration,
  summaryHandler,
  summaryTrendStats,
} from './lib.js';

const lc = lifecycleConfig(baseConfig({ scenario: 'soak', skus: 'soak-a,soak-b,soak-c', customerSpace: 100000 }));
const RATE = envInt('RATE', 100);
const DURATION = envStr('DURATION', '10m');
const P99_MS = envFloat('P99_MS', 50);
const MAX_DROPPED = envInt('MAX_DROPPED', Math.max(10, Math.ceil(RATE * durationSeconds(DURATION) * 0.01)));

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      gracefulStop: `${Math.ceil(lc.holdTtlMs / 1000) + 10}s`,
      preAllocatedVUs: envInt('VUS', Math.max(50, RATE)),
      maxVUs: envInt('MAX_VUS', Math.max(300, RATE * 3)),
    },
  },
  thresholds: commonThresholds(lc, P99_MS, {
    dropped_iterations: [`count<${MAX_DROPPED}`],
    transition_errors: ['count==0'],
  }),
  summaryTrendStats,
};

export default function () {
  lifecycleIteration(lc);
}

export const handleSummary = summaryHandler(lc);
