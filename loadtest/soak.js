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
  constantRateOptions,
  lifecycleConfig,
  lifecycleIteration,
  summaryHandler,
} from './lib.js';

const lc = lifecycleConfig(baseConfig({ scenario: 'soak', skus: 'soak-a,soak-b,soak-c', customerSpace: 100000 }));
export const options = constantRateOptions('soak', lc, {
  rate: 100,
  duration: '10m',
  vus: (rate) => Math.max(50, rate),
  maxVus: (rate) => Math.max(300, rate * 3),
  gracefulStop: `${Math.ceil(lc.holdTtlMs / 1000) + 10}s`,
  extra: () => ({ transition_errors: ['count==0'] }),
});

export default function () {
  lifecycleIteration(lc);
}

export const handleSummary = summaryHandler(lc);
