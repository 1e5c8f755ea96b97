// Shared helpers for the dropgate k6 scenarios: env parsing, headers, ids,
// the admission and lifecycle steps, thresholds and the summary writer.
// No remote imports: everything here is k6 built-ins only.
//
// Environment read here (every scenario):
//   BASE_URL          dropgate base URL                  (default http://127.0.0.1:8080)
//   STOREFRONT_TOKEN  storefront bearer token            (default first of STOREFRONT_TOKENS, else "storefront-dev-token")
//   STOREFRONT_TOKENS comma-separated tokens; requests spread over them
//   SKUS              comma-separated SKU ids            (default per scenario)
//   CUSTOMER_SPACE    customer ids are c-<0..N-1>        (default per scenario)
//   QUANTITY          units per admission                (default 1)
//   SCENARIO          name used for the summary file     (default per scenario)
//   OUT_DIR           where the summary JSON goes        (default loadtest/out)
//   HTTP_TIMEOUT      k6 request timeout                 (default 10s)

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';

// ---------------------------------------------------------------- env parsing

export function envStr(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

export function envInt(name, fallback) {
  const v = envStr(name, undefined);
  if (v === undefined) return fallback;
  const n = parseInt(v, 10);
  if (Number.isNaN(n)) throw new Error(`${name} must be an integer, got "${v}"`);
  return n;
}

export function envFloat(name, fallback) {
  const v = envStr(name, undefined);
  if (v === undefined) return fallback;
  const n = parseFloat(v);
  if (Number.isNaN(n)) throw new Error(`${name} must be a number, got "${v}"`);
  return n;
}

export function envList(name, fallback) {
  return envStr(name, fallback)
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

// "1h2m3s", "90s", "500ms", "2m" -> seconds (float). Plain numbers are seconds.
export function durationSeconds(text) {
  if (/^\d+(\.\d+)?$/.test(text)) return parseFloat(text);
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let total = 0;
  let seen = '';
  let m;
  while ((m = re.exec(text)) !== null) {
    const n = parseFloat(m[1]);
    total += m[2] === 'h' ? n * 3600 : m[2] === 'm' ? n * 60 : m[2] === 's' ? n : n / 1000;
    seen += m[0];
  }
  if (seen !== text) throw new Error(`not a duration: "${text}"`);
  return total;
}

// --------------------------------------------------------------- shared config

export function baseConfig(defaults) {
  const tokens = envList('STOREFRONT_TOKENS', envStr('STOREFRONT_TOKEN', 'storefront-dev-token'));
  return {
    scenario: envStr('SCENARIO', defaults.scenario),
    baseUrl: envStr('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, ''),
    tokens: envStr('STOREFRONT_TOKEN', '') ? [envStr('STOREFRONT_TOKEN')] : tokens,
    skus: envList('SKUS', defaults.skus),
    customerSpace: envInt('CUSTOMER_SPACE', defaults.customerSpace || 10000000),
    quantity: envInt('QUANTITY', 1),
    outDir: envStr('OUT_DIR', 'loadtest/out').replace(/\/+$/, ''),
    timeout: envStr('HTTP_TIMEOUT', '10s'),
  };
}

// ------------------------------------------------------------- ids & headers

export function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

export function randomCustomer(cfg) {
  return `c-${Math.floor(Math.random() * cfg.customerSpace)}`;
}

// Unique per request across VUs, iterations and runs: VU, iteration, time, random.
export function newIdempotencyKey() {
  const rnd = Math.floor(Math.random() * 0xffffffff).toString(36);
  return `k-${__VU}-${__ITER}-${Date.now().toString(36)}-${rnd}`;
}

export function headers(cfg, idempotencyKey) {
  const h = {
    Authorization: `Bearer ${pick(cfg.tokens)}`,
    'Content-Type': 'application/json',
  };
  if (idempotencyKey) h['Idempotency-Key'] = idempotencyKey;
  return h;
}

// ------------------------------------------------------------------- metrics

export const metrics = {
  admitted: new Counter('admitted'), // new holds (201, not a replay)
  soldOut: new Counter('sold_out'), // 409 sold_out
  limitExceeded: new Counter('limit_exceeded'), // 409 limit_exceeded
  rateLimited: new Counter('rate_limited'), // 429
  replayed: new Counter('replayed'), // answers carrying Idempotent-Replayed: true
  replayMismatch: new Counter('replay_mismatch'), // a replay that differed from the original
  errors: new Counter('errors'), // 5xx, network errors, unexpected statuses
  http5xx: new Counter('http_5xx'),
  confirmed: new Counter('confirmed'),
  released: new Counter('released'),
  abandoned: new Counter('abandoned'),
  extended: new Counter('extended'),
  expiryVerified: new Counter('expiry_verified'),
  transitionErrors: new Counter('transition_errors'), // confirm/release/extend/expiry answered wrongly
};

function problemCode(res) {
  try {
    return res.json('code') || '';
  } catch (_) {
    return '';
  }
}

function holdId(res) {
  try {
    return res.json('hold_id') || '';
  } catch (_) {
    return '';
  }
}

function isReplay(res) {
  return (res.headers['Idempotent-Replayed'] || '').toLowerCase() === 'true';
}

// Classifies one admission answer into the counters. Returns the outcome name.
export function classifyAdmission(res, sku) {
  const tags = { sku };
  if (res.status >= 500 || res.status === 0) {
    metrics.errors.add(1, tags);
    if (res.status >= 500) metrics.http5xx.add(1, tags);
    return 'error';
  }
  if (isReplay(res)) {
    metrics.replayed.add(1, tags);
    return 'replayed';
  }
  if (res.status === 201) {
    metrics.admitted.add(1, tags);
    return 'admitted';
  }
  if (res.status === 429) {
    metrics.rateLimited.add(1, tags);
    return 'rate_limited';
  }
  if (res.status === 409) {
    const code = problemCode(res);
    if (code === 'sold_out') {
      metrics.soldOut.add(1, tags);
      return 'sold_out';
    }
    if (code === 'limit_exceeded') {
      metrics.limitExceeded.add(1, tags);
      return 'limit_exceeded';
    }
  }
  metrics.errors.add(1, tags);
  return 'error';
}

function admitParams(cfg, sku, key, name, extraTags) {
  return {
    headers: headers(cfg, key),
    // op:admission marks every admission request (first try, retry, duplicate).
    tags: { ...(extraTags || {}), name, sku, op: 'admission' },
    timeout: cfg.timeout,
    // 409/429 are expected answers, not failed requests.
    responseCallback: http.expectedStatuses(201, 409, 429),
  };
}

export function admitRequest(cfg, sku, customer, key, name, extraTags) {
  return {
    method: 'POST',
    url: `${cfg.baseUrl}/v1/skus/${sku}/holds`,
    body: JSON.stringify({ customer_id: customer, quantity: cfg.quantity }),
    params: admitParams(cfg, sku, key, name || 'admit', extraTags),
  };
}

function send(req) {
  return http.request(req.method, req.url, req.body, req.params);
}

function checkAdmission(res) {
  return check(res, {
    'admit: 201, 409 or 429': (r) => r.status === 201 || r.status === 409 || r.status === 429,
    'admit: never 5xx': (r) => r.status < 500 && r.status !== 0,
  });
}

// One admission; `extraTags` (optional) go on the request's metrics.
// Returns { res, outcome, hold }.
export function admit(cfg, sku, customer, key, extraTags) {
  const req = admitRequest(cfg, sku, customer, key, 'admit', extraTags);
  const res = send(req);
  checkAdmission(res);
  const outcome = classifyAdmission(res, sku);
  return { res, outcome, req, hold: outcome === 'admitted' ? holdId(res) : '' };
}

function sameAnswer(a, b) {
  if (a.status !== b.status) return false;
  if (a.status === 201) return holdId(a) !== '' && holdId(a) === holdId(b);
  return problemCode(a) === problemCode(b);
}

// A client that timed out and retries with the same key and body: a hold
// comes back identical, marked Idempotent-Replayed: true; a rejection was
// never stored, so its retry is decided afresh and is never a replay.
export function retrySequential(cfg, first) {
  if (first.res.status === 429 || first.res.status >= 500 || first.res.status === 0) return;
  const again = send({ ...first.req, params: { ...first.req.params, tags: { ...first.req.params.tags, name: 'admit_retry' } } });
  checkAdmission(again);
  const ok = first.res.status === 201
    ? check(again, {
      'retry: Idempotent-Replayed: true': (r) => isReplay(r),
      'retry: identical answer': (r) => sameAnswer(first.res, r),
    })
    : check(again, { 'retry of a rejection: decided afresh': (r) => !isReplay(r) });
  classifyAdmission(again, first.req.params.tags.sku);
  if (!ok) metrics.replayMismatch.add(1, { sku: first.req.params.tags.sku });
}

// Two copies of one request at once (a double-clicked button, a retry racing
// the original): at most one hold; when both hold, one answer is the replay
// of the other; a rejection is never a replay.
export function admitTwiceConcurrently(cfg, sku, customer, key) {
  const req = admitRequest(cfg, sku, customer, key, 'admit_dup');
  const [a, b] = http.batch([
    [req.method, req.url, req.body, req.params],
    [req.method, req.url, req.body, req.params],
  ]);
  checkAdmission(a);
  checkAdmission(b);
  classifyAdmission(a, sku);
  classifyAdmission(b, sku);
  if (a.status === 429 || b.status === 429 || a.status >= 500 || b.status >= 500) return;
  const held = [a, b].filter((r) => r.status === 201);
  const ok = check([a, b], {
    'duplicate: no rejection replayed': (p) => p.every((r) => r.status === 201 || !isReplay(r)),
    'duplicate: one hold, one original and one replay': () =>
      held.length < 2 || (held.filter(isReplay).length === 1 && sameAnswer(held[0], held[1])),
  });
  if (!ok) metrics.replayMismatch.add(1, { sku });
}

// ------------------------------------------------------------- hold lifecycle

function holdParams(cfg, name, sku) {
  return { headers: headers(cfg), tags: { name, sku }, timeout: cfg.timeout };
}

export function lifecycleConfig(cfg) {
  return {
    ...cfg,
    confirmRatio: envFloat('CONFIRM_RATIO', 0.7),
    releaseRatio: envFloat('RELEASE_RATIO', 0.15),
    extendRatio: envFloat('EXTEND_RATIO', 0.05),
    thinkMinMs: envInt('THINK_MIN_MS', 100),
    thinkMaxMs: envInt('THINK_MAX_MS', 1000),
    holdTtlMs: envInt('HOLD_TTL_MS', 5000),
    expiryCheckRatio: envFloat('EXPIRY_CHECK_RATIO', 0.02),
  };
}

function transition(cfg, sku, hold, action, expectState) {
  const res = http.post(`${cfg.baseUrl}/v1/holds/${hold}/${action}`, null, holdParams(cfg, action, sku));
  if (res.status >= 500 || res.status === 0) {
    metrics.errors.add(1, { sku });
    if (res.status >= 500) metrics.http5xx.add(1, { sku });
  }
  const ok = check(res, {
    [`${action}: 200`]: (r) => r.status === 200,
    [`${action}: state ${expectState}`]: (r) => r.status === 200 && r.json('state') === expectState,
  });
  if (!ok) metrics.transitionErrors.add(1, { sku, action });
  return ok;
}

// Admit, think, then confirm / release / abandon (the abandoned hold expires).
export function lifecycleIteration(lc) {
  const sku = pick(lc.skus);
  const first = admit(lc, sku, randomCustomer(lc), newIdempotencyKey());
  if (first.outcome !== 'admitted') return;
  const hold = first.hold;
  sleep((lc.thinkMinMs + Math.random() * Math.max(0, lc.thinkMaxMs - lc.thinkMinMs)) / 1000);

  const roll = Math.random();
  if (roll < lc.confirmRatio) {
    if (Math.random() < lc.extendRatio && transition(lc, sku, hold, 'extend', 'held')) {
      metrics.extended.add(1, { sku });
    }
    if (transition(lc, sku, hold, 'confirm', 'confirmed')) metrics.confirmed.add(1, { sku });
  } else if (roll < lc.confirmRatio + lc.releaseRatio) {
    if (transition(lc, sku, hold, 'release', 'released')) metrics.released.add(1, { sku });
  } else {
    metrics.abandoned.add(1, { sku });
    // A few abandoned holds are watched until they expire: state `expired`,
    // and confirming then answers 409 hold_expired.
    if (Math.random() < lc.expiryCheckRatio) {
      sleep((lc.holdTtlMs + 2500) / 1000);
      const seen = http.get(`${lc.baseUrl}/v1/holds/${hold}`, holdParams(lc, 'get_hold', sku));
      const late = http.post(`${lc.baseUrl}/v1/holds/${hold}/confirm`, null, {
        ...holdParams(lc, 'confirm_expired', sku),
        responseCallback: http.expectedStatuses(409),
      });
      const ok = check(null, {
        'abandoned: state expired': () => seen.status === 200 && seen.json('state') === 'expired',
        'abandoned: late confirm is 409 hold_expired': () => late.status === 409 && problemCode(late) === 'hold_expired',
      });
      if (ok) metrics.expiryVerified.add(1, { sku });
      else metrics.transitionErrors.add(1, { sku, action: 'expire' });
    }
  }
}

// --------------------------------------------------------------- thresholds

// Thresholds every scenario shares. Per-SKU `admitted`/`sold_out` thresholds are always
// true; they exist so the summary carries per-SKU counts (k6 only exports
// tagged sub-metrics that have a threshold).
export function commonThresholds(cfg, p99Ms, extra) {
  const t = {
    errors: ['count==0'],
    http_5xx: ['count==0'],
    replay_mismatch: ['count==0'],
    'http_req_duration{op:admission}': [`p(99)<${p99Ms}`],
    'http_reqs{op:admission}': ['count>0'],
  };
  for (const sku of cfg.skus) {
    t[`admitted{sku:${sku}}`] = ['count>=0'];
    t[`sold_out{sku:${sku}}`] = ['count>=0'];
  }
  return Object.assign(t, extra || {});
}

export const summaryTrendStats = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'];

// Options of the open-model scenarios (sustained, lifecycle, soak): RATE
// iterations per second for DURATION, P99_MS on admissions, and fewer than
// MAX_DROPPED (default 1 % of planned, at least 10) dropped iterations.
// `vus(rate)` and `maxVus(rate)` give the VU defaults (env VUS / MAX_VUS win);
// `extra(p99Ms)` adds the scenario's own thresholds.
export function constantRateOptions(name, cfg, { rate, duration, vus, maxVus, gracefulStop, extra }) {
  const RATE = envInt('RATE', rate);
  const DURATION = envStr('DURATION', duration);
  const P99_MS = envFloat('P99_MS', 50);
  const MAX_DROPPED = envInt('MAX_DROPPED', Math.max(10, Math.ceil(RATE * durationSeconds(DURATION) * 0.01)));
  const scenario = {
    executor: 'constant-arrival-rate',
    rate: RATE,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: envInt('VUS', vus(RATE)),
    maxVUs: envInt('MAX_VUS', maxVus(RATE)),
  };
  if (gracefulStop) {
    scenario.gracefulStop = gracefulStop;
  }
  return {
    scenarios: { [name]: scenario },
    thresholds: commonThresholds(cfg, P99_MS, {
      dropped_iterations: [`count<${MAX_DROPPED}`],
      ...(extra ? extra(P99_MS) : {}),
    }),
    summaryTrendStats,
  };
}

// --------------------------------------------------------------- the summary

function fmtMs(v) {
  return v === undefined ? '-' : `${v.toFixed(2)}ms`;
}

function count(data, name) {
  const m = data.metrics[name];
  return m && m.values && m.values.count !== undefined ? m.values.count : 0;
}

// A short human summary (k6's own textSummary lives in a remote jslib, which
// we do not import).
export function textSummary(data, scenario) {
  const lines = [];
  const secs = (data.state && data.state.testRunDurationMs ? data.state.testRunDurationMs : 0) / 1000;
  lines.push(`── k6 ${scenario}: ${secs.toFixed(1)} s ──`);
  const reqs = data.metrics['http_reqs{op:admission}'];
  if (reqs) lines.push(`admission requests  ${reqs.values.count}  (${reqs.values.rate.toFixed(1)}/s)`);
  for (const name of ['admitted', 'sold_out', 'limit_exceeded', 'rate_limited', 'replayed', 'replay_mismatch',
    'confirmed', 'released', 'abandoned', 'extended', 'expiry_verified', 'transition_errors', 'errors', 'http_5xx',
    'dropped_iterations']) {
    if (data.metrics[name]) lines.push(`${name.padEnd(20)}${count(data, name)}`);
  }
  for (const [name, m] of Object.entries(data.metrics)) {
    if (!name.startsWith('http_req_duration')) continue;
    if (name !== 'http_req_duration' && !name.includes('name:') && !name.includes('op:')) continue;
    const v = m.values;
    lines.push(`${name.padEnd(38)} p50 ${fmtMs(v.med)}  p95 ${fmtMs(v['p(95)'])}  p99 ${fmtMs(v['p(99)'])}  max ${fmtMs(v.max)}`);
  }
  const checks = data.metrics.checks;
  if (checks) lines.push(`checks              ${(checks.values.rate * 100).toFixed(3)}% of ${checks.values.passes + checks.values.fails} passed`);
  const failed = [];
  for (const [name, m] of Object.entries(data.metrics)) {
    for (const [expr, t] of Object.entries(m.thresholds || {})) {
      if (!t.ok) failed.push(`${name}: ${expr}`);
    }
  }
  lines.push(failed.length ? `THRESHOLDS FAILED: ${failed.join(', ')}` : 'thresholds: all passed');
  return lines.join('\n') + '\n';
}

// handleSummary for a scenario: JSON to <OUT_DIR>/<scenario>-summary.json,
// the short text to stdout.
export function summaryHandler(cfg) {
  return function handleSummary(data) {
    return {
      [`${cfg.outDir}/${cfg.scenario}-summary.json`]: JSON.stringify(data, null, 2),
      stdout: textSummary(data, cfg.scenario),
    };
  };
}
