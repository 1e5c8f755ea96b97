// dashboard.js — does a crowd watching the dashboard slow admissions down?
// Admissions arrive at RATE/s (open model) for the whole run. The run is
// ROUNDS rounds of phases of PHASE_S seconds each: a quiet phase (nobody on
// the dashboard), a viewed phase (VIEWERS viewers polling GET /v1/dashboard
// POLL_HZ times a second each; the page polls once a second) and, with
// CONTROL=1, a control phase (as many GET /healthz a second: what that many
// extra requests cost the HTTP stack and the load generator alone, on a
// machine they share). Admissions are tagged phase:quiet, phase:viewed or
// phase:control; those in the first SETTLE_S of a phase are tagged
// phase:settling and count in none, so the summary has the distributions
// side by side, from one server, one SKU and one k6 process, interleaved so
// that drift of a shared machine hits them alike.
//
// Environment:
//   BASE_URL, STOREFRONT_TOKEN(S), CUSTOMER_SPACE, QUANTITY, OUT_DIR — see lib.js
//   OPS_URL           where viewers and the control phase poll    (default BASE_URL;
//                     the runner gives DROPGATE_OPS_LISTEN's address)
//   SKUS              default dash (the runner seeds STOCK 100000000)
//   RATE              admissions per second, all phases          (default 1000)
//   VIEWERS           dashboard viewers in a viewed phase         (default 50; 0 = none)
//   POLL_HZ           polls per second per viewer                 (default 1, as the page)
//   PHASE_S           seconds per phase                           (default 10)
//   ROUNDS            quiet, viewed (, control) rounds            (default 2)
//   CONTROL           1: add the /healthz control phase           (default 1)
//   SETTLE_S          seconds at a phase's start left out         (default 1)
//   P99_MS            threshold on p(99) of all admissions, ms    (default 50)
//   MAX_DROPPED       dropped_iterations must stay below          (default 1% of planned, at least 10)
//   SCENARIO          name of the summary file                    (default dashboard)

import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import {
  admit,
  baseConfig,
  commonThresholds,
  envFloat,
  envInt,
  envStr,
  metrics,
  newIdempotencyKey,
  pick,
  randomCustomer,
  summaryHandler,
  summaryTrendStats,
} from './lib.js';

const cfg = baseConfig({ scenario: 'dashboard', skus: 'dash', customerSpace: 10000000 });
const RATE = envInt('RATE', 1000);
const VIEWERS = envInt('VIEWERS', 50);
const POLL_HZ = envFloat('POLL_HZ', 1);
const OPS_URL = envStr('OPS_URL', cfg.baseUrl).replace(/\/+$/, '');
const PHASE_S = envInt('PHASE_S', 10);
const ROUNDS = envInt('ROUNDS', 2);
const SETTLE_S = envFloat('SETTLE_S', 1);
const CONTROL = envInt('CONTROL', 1) === 1;
const P99_MS = envFloat('P99_MS', 50);
const PHASES = CONTROL ? ['quiet', 'viewed', 'control'] : ['quiet', 'viewed'];
const TOTAL_S = PHASES.length * ROUNDS * PHASE_S;
const MAX_DROPPED = envInt('MAX_DROPPED', Math.max(10, Math.ceil(RATE * TOTAL_S * 0.01)));

const scenarios = {
  admissions: {
    executor: 'constant-arrival-rate',
    rate: RATE,
    timeUnit: '1s',
    duration: `${TOTAL_S}s`,
    preAllocatedVUs: envInt('VUS', Math.max(50, Math.ceil(RATE / 20))),
    maxVUs: envInt('MAX_VUS', Math.max(200, Math.ceil(RATE / 2))),
    exec: 'admission',
  },
};
const pollRate = Math.round(VIEWERS * POLL_HZ);
for (let r = 0; r < ROUNDS && pollRate > 0; r++) {
  for (const [name, exec] of [['viewed', 'view'], ['control', 'control']]) {
    const index = PHASES.indexOf(name);
    if (index < 0) continue;
    scenarios[`${name}_${r}`] = {
      executor: 'constant-arrival-rate',
      rate: pollRate,
      timeUnit: '1s',
      startTime: `${(PHASES.length * r + index) * PHASE_S}s`,
      duration: `${PHASE_S}s`,
      preAllocatedVUs: Math.max(10, VIEWERS),
      maxVUs: Math.max(50, 4 * VIEWERS),
      exec,
    };
  }
}

export const options = {
  scenarios,
  thresholds: commonThresholds(cfg, P99_MS, {
    dropped_iterations: [`count<${MAX_DROPPED}`],
    // Always true: they make k6 export the per-phase figures.
    'http_req_duration{phase:quiet}': ['p(99)>=0'],
    'http_req_duration{phase:viewed}': ['p(99)>=0'],
    'http_req_duration{phase:control}': ['p(99)>=0'],
    'http_reqs{phase:quiet}': ['count>=0'],
    'http_reqs{phase:viewed}': ['count>=0'],
    'http_reqs{phase:control}': ['count>=0'],
    'http_req_duration{name:dashboard}': ['p(99)>=0'],
    'http_reqs{name:dashboard}': ['count>=0'],
    'http_reqs{name:healthz}': ['count>=0'],
  }),
  summaryTrendStats,
};

// Which phase this moment of the run belongs to.
function phase() {
  const elapsedS = (Date.now() - exec.scenario.startTime) / 1000;
  const inPhase = elapsedS % PHASE_S;
  if (inPhase < SETTLE_S) return 'settling';
  return PHASES[Math.floor(elapsedS / PHASE_S) % PHASES.length];
}

export function admission() {
  admit(cfg, pick(cfg.skus), randomCustomer(cfg), newIdempotencyKey(), { phase: phase() });
}

export function view() {
  const res = http.get(`${OPS_URL}/v1/dashboard`, {
    tags: { name: 'dashboard' },
    timeout: cfg.timeout,
  });
  const ok = check(res, { 'dashboard: 200': (r) => r.status === 200 });
  if (!ok) {
    metrics.errors.add(1, { name: 'dashboard' });
    if (res.status >= 500) metrics.http5xx.add(1, { name: 'dashboard' });
  }
}

export function control() {
  const res = http.get(`${OPS_URL}/healthz`, { tags: { name: 'healthz' }, timeout: cfg.timeout });
  if (!check(res, { 'healthz: 200': (r) => r.status === 200 })) {
    metrics.errors.add(1, { name: 'healthz' });
    if (res.status >= 500) metrics.http5xx.add(1, { name: 'healthz' });
  }
}

export const handleSummary = summaryHandler(cfg);
