#!/usr/bin/env python3
"""Turns one load-test run into a verdict, a printed summary and
loadtest/out/<scenario>-report.json. Called by loadtest/run (reads the files
it wrote into DG_OUT); standard library only.

Exit status: 0 pass, 1 correctness failure, 2 the run itself broke (k6 could
not run, files missing), 3 only performance thresholds failed.
"""

import csv
import json
import math
import os
import re
import sys

SCENARIO = os.environ["DG_SCENARIO"]
OUT = os.environ["DG_OUT"]
UNITS_RETURN = os.environ.get("DG_UNITS_RETURN") == "1"
THRESHOLDS_FATAL = os.environ.get("THRESHOLDS_FATAL", "1") != "0"
QUANTITY = int(os.environ.get("QUANTITY", "1") or 1)


def path(suffix):
    return os.path.join(OUT, f"{SCENARIO}-{suffix}")


def load_json(suffix, default=None):
    try:
        with open(path(suffix)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def load_facts():
    facts = {}
    try:
        with open(path("facts.tsv")) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("\t")
                facts[key] = value
    except OSError:
        pass
    return facts


def num(value, default=None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def prom(text):
    """Prometheus text -> {(name, frozenset(labels)): value}."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        series[(m.group(1), labels)] = num(m.group(3), 0.0)
    return series


facts = load_facts()
summary = load_json("summary.json")
audit = load_json("audit.json")
ledger = load_json("ledger.json", [])
memory = load_json("memory.json", {})
try:
    with open(path("metrics.txt")) as f:
        server = prom(f.read())
except OSError:
    server = {}
try:
    with open(path("samples.csv")) as f:
        samples = [r for r in csv.DictReader(f)]
except OSError:
    samples = []

failures = []  # correctness: exit 1
broken = []  # the run itself: exit 2
perf = []  # thresholds: exit 3
notes = []

# ---------------------------------------------------------------- k6 figures

metrics = (summary or {}).get("metrics", {})


def k6count(name):
    m = metrics.get(name)
    return int(m["values"].get("count", 0)) if m else 0


def k6trend(name):
    m = metrics.get(name)
    if not m:
        return None
    v = m["values"]
    return {"p50": v.get("med"), "p90": v.get("p(90)"), "p95": v.get("p(95)"), "p99": v.get("p(99)"),
            "max": v.get("max"), "avg": v.get("avg")}


k6_rc = int(facts.get("k6_rc", "-1"))
if summary is None:
    broken.append(f"k6 wrote no summary (k6 exit {k6_rc}); see the output above")
elif k6_rc not in (0, 99):
    broken.append(f"k6 exited {k6_rc} (not a threshold failure: script error or aborted run)")

run_s = ((summary or {}).get("state", {}).get("testRunDurationMs") or 0) / 1000
admit_reqs = metrics.get("http_reqs{op:admission}", {}).get("values", {})
requests = {
    "admission_requests": int(admit_reqs.get("count", 0)),
    "admission_requests_per_s": round(admit_reqs.get("rate", 0.0), 1),
    "all_http_requests": k6count("http_reqs"),
}
for name in ["admitted", "sold_out", "limit_exceeded", "rate_limited", "replayed", "replay_mismatch", "errors",
             "http_5xx", "dropped_iterations", "confirmed", "released", "abandoned", "extended", "expiry_verified",
             "transition_errors"]:
    if name in metrics or name in ("admitted", "errors", "http_5xx", "dropped_iterations"):
        requests[name] = k6count(name)

# Peak admissions per second as the server counted them, between samples.
peak_rate = 0.0
for a, b in zip(samples, samples[1:]):
    dt = num(b["unix_s"], 0) - num(a["unix_s"], 0)
    if dt > 0:
        peak_rate = max(peak_rate, (num(b["admissions_total"], 0) - num(a["admissions_total"], 0)) / dt)
requests["server_peak_admissions_per_s"] = round(peak_rate, 1)

latency = {}
for name in sorted(metrics):
    if name == "http_req_duration":
        key = "all"
    elif name == "http_req_duration{op:admission}":
        key = "admission"
    elif name.startswith("http_req_duration{name:"):
        key = name[len("http_req_duration{name:"):-1]
    elif name.startswith("http_req_duration{phase:"):
        key = "phase " + name[len("http_req_duration{phase:"):-1]
    else:
        continue
    latency[key] = {k: (round(v, 3) if v is not None else None) for k, v in k6trend(name).items()}



def histogram_quantiles(name, qs=(0.5, 0.95, 0.99)):
    """Quantiles (ms) of a Prometheus histogram by linear interpolation in
    its buckets: coarse, but it is the server's own view of the latency."""
    buckets = sorted((num(dict(labels)["le"], math.inf), v) for (n, labels), v in server.items()
                     if n == name + "_bucket")
    if not buckets or not buckets[-1][1]:
        return None
    total, out = buckets[-1][1], {}
    for q in qs:
        rank, lo_le, lo_n = q * total, 0.0, 0.0
        for le, n in buckets:
            if n >= rank:
                if math.isinf(le):
                    value = lo_le
                else:
                    value = lo_le + (le - lo_le) * ((rank - lo_n) / (n - lo_n) if n > lo_n else 1.0)
                out[f"p{round(q * 100)}"] = round(value * 1000, 3)
                break
            lo_le, lo_n = le, n
    return out


server_admission_ms = histogram_quantiles("dropgate_admission_duration_seconds")

failed_thresholds = []
for name, m in metrics.items():
    for expr, t in (m.get("thresholds") or {}).items():
        if not t.get("ok", True):
            failed_thresholds.append(f"{name}: {expr}")

server_outcomes = {dict(labels).get("outcome"): int(v) for (name, labels), v in server.items()
                   if name == "dropgate_admissions_total"}

# ---------------------------------------------------------------- correctness

if requests["http_5xx"] or requests["errors"]:
    failures.append(f"{requests['http_5xx']} HTTP 5xx, {requests['errors']} errors in total "
                    f"(5xx, network errors or unexpected statuses) seen by k6")
if server_outcomes.get("error"):
    failures.append(f"dropgate counted {server_outcomes['error']} admissions with outcome=error")
if requests.get("replay_mismatch"):
    failures.append(f"{requests['replay_mismatch']} idempotent retries got a different answer or no "
                    f"Idempotent-Replayed header")
if requests.get("transition_errors"):
    failures.append(f"{requests['transition_errors']} confirm/release/extend/expiry steps answered wrongly")
if facts.get("server_alive") == "false":
    failures.append("dropgate died during the run")
if facts.get("worker_caught_up") == "false":
    failures.append(f"the commit worker had not caught up {os.environ.get('CATCHUP_TIMEOUT_S', '30')} s after "
                    f"the load (undelivered, pending: {facts.get('worker_backlog')})")
if facts.get("settled") == "false":
    failures.append("abandoned holds were still live long after their TTL (reaper)")

audit_rc = int(facts.get("audit_rc", "-1"))
if audit is None:
    failures.append("dropgate audit --json printed nothing readable")
else:
    for b in audit.get("breaches", []):
        failures.append(f"audit: {b}")
    for s in audit.get("skus", []):
        for b in s.get("breaches", []):
            failures.append(f"audit {s['sku']}: {b}")
if audit_rc != 0 and not any(f.startswith("audit") for f in failures):
    failures.append(f"dropgate audit exited {audit_rc}")

by_state = {}
ledger_by_sku = {}
for row in ledger:
    by_state[row["state"]] = by_state.get(row["state"], 0) + int(row["holds"])
    ledger_by_sku.setdefault(row["sku"], {})[row["state"]] = int(row["holds"])
ledger_holds = sum(by_state.values())
if by_state.get("lost"):
    failures.append(f"{by_state['lost']} holds are lost (the ledger refused what the gate admitted)")
if summary is not None and ledger_holds != requests["admitted"]:
    failures.append(f"k6 was granted {requests['admitted']} new holds, the ledger has {ledger_holds}")
if summary is not None and UNITS_RETURN:
    for state, counter, verb in (("confirmed", "confirmed", "confirm"), ("released", "released", "release")):
        extra = by_state.get(state, 0) - requests.get(counter, 0)
        if extra:
            why = (f" — {extra} {verb} requests answered with an error took effect anyway"
                   if 0 < extra <= requests.get("transition_errors", 0) else "")
            failures.append(f"k6 {counter} {requests.get(counter, 0)} holds, the ledger has "
                            f"{by_state.get(state, 0)} {state}{why}")

skus = []
for s in (audit or {}).get("skus", []):
    sku = s["sku"]
    on_hand, held, sold = s["on_hand"], s["held"], s["sold"]
    gate_out = (s.get("gate_held") or 0) + (s.get("gate_sold") or 0)
    client_admitted = k6count(f"admitted{{sku:{sku}}}")
    client_sold_out = k6count(f"sold_out{{sku:{sku}}}")
    oversold = max(0, held + sold - on_hand, gate_out - on_hand)
    if not UNITS_RETURN:
        # Nothing comes back in these scenarios: every unit a customer was told
        # they hold is still out, so the client's count must fit the stock.
        oversold = max(oversold, client_admitted * QUANTITY - on_hand)
    row = {"sku": sku, "on_hand": on_hand, "held": held, "sold": sold, "units_out": held + sold,
           "oversold": oversold, "gate_held": s.get("gate_held"), "gate_sold": s.get("gate_sold"),
           "k6_admitted": client_admitted, "k6_sold_out": client_sold_out,
           "live_holds_gate": s.get("live_holds_gate"), "live_holds_ledger": s.get("live_holds_ledger"),
           "ledger_holds_by_state": ledger_by_sku.get(sku, {})}
    skus.append(row)
    if oversold:
        failures.append(f"{sku} OVERSOLD by {oversold} (on_hand {on_hand}, ledger held {held} sold {sold}, "
                        f"gate out {gate_out}, k6 admitted {client_admitted})")
    if not UNITS_RETURN and client_sold_out and held + sold < on_hand:
        failures.append(f"{sku}: {client_sold_out} sold_out answers, yet only {held + sold} of {on_hand} units "
                        f"are out (units stranded)")

# ---------------------------------------------------------------- performance


def size_(b):
    if b is None:
        return "-"
    return f"{b / 1048576:.2f} MiB" if abs(b) >= 1048576 else f"{b / 1024:.1f} KiB" if abs(b) >= 1024 else f"{b:.0f} B"


if failed_thresholds:
    perf.append("k6 thresholds crossed: " + ", ".join(sorted(failed_thresholds)))

lag_end = num(facts.get("commit_lag_s_at_load_end"))
lag_vals = [num(r["commit_lag_s"]) for r in samples if num(r["commit_lag_s"]) is not None]
commit_lag = {"at_load_end_s": lag_end, "max_sampled_s": max(lag_vals) if lag_vals else None,
              "at_end_s": num(facts.get("commit_lag_s_at_end")),
              "worker_drain_after_load_s": num(facts.get("worker_drain_s"))}

mem_before = num(facts.get("redis_used_memory_before"), 0)
mem_after = num(facts.get("redis_used_memory_after"), 0)
live_holds = sum((s.get("live_holds_gate") or 0) for s in skus) if skus else int(facts.get("live_holds_gate", 0) or 0)
delta = mem_after - mem_before
redis_memory = {
    "used_memory_before": int(mem_before), "used_memory_after": int(mem_after), "delta_bytes": int(delta),
    "live_holds": live_holds,
    "bytes_per_live_hold": round(delta / live_holds) if live_holds else None,
    "bytes_per_admission_request": round(delta / requests["admission_requests"])
    if requests["admission_requests"] else None,
    "sampled": memory,
}
prefix_before = num(facts.get("prefix_bytes_before"), 0)
prefix_after = num(facts.get("prefix_bytes_after"))
if prefix_after is not None:
    redis_memory["prefix_bytes"] = int(prefix_after)
    redis_memory["prefix_keys"] = int(num(facts.get("prefix_keys_after"), 0))
    redis_memory["prefix_bytes_per_live_hold"] = round((prefix_after - prefix_before) / live_holds) \
        if live_holds else None
others = (facts.get("redis_other_keys_before"), facts.get("redis_other_keys_after"))
# DBSIZE also counts keys that have expired but are not reclaimed yet (SCAN
# skips them), so on a Redis of the run's own a difference means nothing.
redis_memory["private_redis"] = facts.get("redis_private") == "true"
redis_memory["other_tenants_active"] = others[0] != others[1] and not redis_memory["private_redis"]
if redis_memory["other_tenants_active"]:
    notes.append(f"other clients changed their Redis keys during the run ({others[0]} → {others[1]} keys not "
                 f"ours): the used_memory delta is not this run's alone; the prefix total (MEMORY USAGE of "
                 f"this run's keys) is")
if memory:
    e = memory.get("expiry", {})
    per_expiry = e.get("bytes", 0) / e["entries"] if e.get("entries") else 0
    redis_memory["sampled_bytes_per_live_hold"] = round(
        memory.get("h", {}).get("avg_bytes", 0) + memory.get("i", {}).get("avg_bytes", 0)
        + memory.get("c", {}).get("avg_bytes", 0) + per_expiry)
    redis_memory["sampled_expiry_bytes_per_entry"] = round(per_expiry)

process = {"rss_kb_before": num(facts.get("rss_kb_before")), "rss_kb_after": num(facts.get("rss_kb_after"))}

# Soak: first sample after warm-up against the last one.
soak = None
if SCENARIO == "soak" or os.environ.get("FLAT_CHECK") == "1":
    warmup = num(os.environ.get("WARMUP_S"), 0)
    flat_pct = num(os.environ.get("FLAT_PCT"), 20)
    usable = [r for r in samples if num(r["elapsed_s"], 0) >= warmup and r["dropgate_rss_kb"]]
    if len(usable) >= 2:
        first, last = usable[0], usable[-1]

        def growth(col):
            a, b = num(first[col], 0), num(last[col], 0)
            return round((b - a) / a * 100, 1) if a else None

        soak = {"first": first, "last": last, "warmup_s": warmup, "flat_pct": flat_pct,
                "redis_growth_pct": growth("redis_used_memory"), "rss_growth_pct": growth("dropgate_rss_kb"),
                "samples": len(samples)}
        soak["rss_flat"] = soak["rss_growth_pct"] is not None and abs(soak["rss_growth_pct"]) <= flat_pct
        soak["redis_flat"] = soak["redis_growth_pct"] is not None and abs(soak["redis_growth_pct"]) <= flat_pct
        admissions = num(last["admissions_total"], 0) - num(first["admissions_total"], 0)
        soak["redis_bytes_per_admission_after_warmup"] = round(
            (num(last["redis_used_memory"], 0) - num(first["redis_used_memory"], 0)) / admissions) \
            if admissions else None
        if not soak["rss_flat"]:
            perf.append(f"dropgate RSS grew {soak['rss_growth_pct']}% after warm-up (flat = within {flat_pct}%)")
        # By contract Redis keeps every idempotency record 24 h (and dropgate
        # keeps settled hold hashes 1 h), so used_memory climbs with the number
        # of admissions until those TTLs turn over: not flat, but bounded per
        # admission. Anything above REDIS_RETAINED_MAX_B per admission is a leak.
        retained_max = num(os.environ.get("REDIS_RETAINED_MAX_B"), 1000)
        soak["redis_retained_max_b"] = retained_max
        per = soak["redis_bytes_per_admission_after_warmup"]
        if not soak["redis_flat"]:
            if per is not None and per <= retained_max:
                notes.append(f"Redis used_memory grew {soak['redis_growth_pct']}% after warm-up: {per} B per "
                             f"admission, within the {retained_max:.0f} B retained by contract (idempotency records "
                             f"24 h, settled holds 1 h); it levels off only once those TTLs turn over")
            else:
                perf.append(f"Redis used_memory grew {soak['redis_growth_pct']}% after warm-up, {per} B per "
                            f"admission (more than the {retained_max:.0f} B the retained records explain)")
    else:
        notes.append("soak: too few samples after warm-up to judge memory growth")

# Flood: Redis growth over a mass of rejections, which by contract store nothing.
flood = None
if SCENARIO == "flood":
    rejections = requests.get("sold_out", 0) + requests.get("limit_exceeded", 0)
    judged = redis_memory.get("prefix_bytes", 0) - prefix_before \
        if redis_memory["other_tenants_active"] else delta
    per = num(os.environ.get("FLOOD_PER_REJECTIONS"), 100000)
    limit = num(os.environ.get("FLOOD_MAX_GROWTH_B"), 1000000)
    flood = {"clients": int(num(os.environ.get("CLIENTS"), 0)), "rejections": rejections,
             "redis_growth_bytes": int(judged),
             "judged_on": "prefix MEMORY USAGE" if redis_memory["other_tenants_active"] else "used_memory",
             "keys_after": redis_memory.get("prefix_keys"), "live_holds": live_holds,
             f"growth_bytes_per_{int(per)}_rejections": round(judged / rejections * per) if rejections else None,
             "limit_bytes": limit}
    if rejections and judged / rejections * per >= limit:
        perf.append(f"Redis grew {size_(judged)} over {rejections} rejections: "
                    f"{size_(judged / rejections * per)} per {per:,.0f} (target < {size_(limit)})")

# Dashboard: admission latency with and without viewers, same run.
dashboard = None
if SCENARIO == "dashboard":
    quiet, viewed, control = latency.get("phase quiet"), latency.get("phase viewed"), latency.get("phase control")
    polls = metrics.get("http_reqs{name:dashboard}", {}).get("values", {})
    dashboard = {"viewers": os.environ.get("VIEWERS"), "poll_hz": os.environ.get("POLL_HZ"),
                 "phase_s": os.environ.get("PHASE_S"), "rounds": os.environ.get("ROUNDS"),
                 "dashboard_requests": int(polls.get("count", 0)),
                 "dashboard_computations": int(sum(v for (n, _), v in server.items()
                                                   if n == "dropgate_dashboard_computations_total")),
                 "quiet_ms": quiet, "viewed_ms": viewed, "control_ms": control,
                 "p99_ratio": round(viewed["p99"] / quiet["p99"], 3)
                 if quiet and viewed and quiet.get("p99") else None,
                 # The same number of /healthz requests instead: what is left
                 # of the ratio is the dashboard's own cost.
                 "control_p99_ratio": round(control["p99"] / quiet["p99"], 3)
                 if quiet and control and quiet.get("p99") else None}
    max_ratio = num(os.environ.get("DASHBOARD_MAX_RATIO"), 1.2)
    dashboard["max_ratio"] = max_ratio
    if dashboard["p99_ratio"] is None:
        broken.append("no admissions in a quiet or a viewed phase: no p99 to compare")
    elif dashboard["p99_ratio"] > max_ratio:
        perf.append(f"dashboard viewers moved admission p99 by ×{dashboard['p99_ratio']} "
                    f"(target ≤ ×{max_ratio})")

# ---------------------------------------------------------------- verdict

if failures:
    verdict, code = "FAIL", 1
elif broken:
    verdict, code = "BROKEN", 2
elif perf and THRESHOLDS_FATAL:
    verdict, code = "FAIL (performance)", 3
else:
    verdict, code = "PASS", 0
if broken and failures:
    failures.extend(broken)

params = {k: os.environ.get(k) for k in ("SKUS", "STOCK", "HOLD_TTL_MS", "PER_CUSTOMER_LIMIT", "PEAK_RPS", "RAMP",
                                         "RATE", "DURATION", "P99_MS", "DROPGATE_CUSTOMER_RPS",
                                         "DROPGATE_GLOBAL_RPS", "DROPGATE_ADMIT_BATCH_MAX", "CLIENTS",
                                         "REQUESTS", "VIEWERS", "POLL_HZ", "PHASE_S", "ROUNDS", "CONTROL")
          if os.environ.get(k)}
report = {
    "scenario": SCENARIO, "verdict": verdict, "exit_code": code, "params": params,
    "k6_run_s": run_s, "k6_exit": k6_rc, "requests": requests, "latency_ms": latency,
    "server_admission_latency_ms": server_admission_ms,
    "failed_thresholds": failed_thresholds, "skus": skus, "ledger_holds_by_state": by_state,
    "server_admissions_by_outcome": server_outcomes, "commit_lag": commit_lag, "redis_memory": redis_memory,
    "process": process, "soak": soak, "flood": flood, "dashboard": dashboard, "audit_exit": audit_rc,
    "failures": failures, "broken": broken, "performance": perf, "notes": notes,
}
with open(path("report.json"), "w") as f:
    json.dump(report, f, indent=2)

# ---------------------------------------------------------------- printing


def ms(v):
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def size(b):
    if b is None:
        return "-"
    return f"{b / 1048576:.1f} MiB" if abs(b) >= 1048576 else f"{b / 1024:.1f} KiB" if abs(b) >= 1024 else f"{b:.0f} B"


def secs(v):
    return "-" if v is None else f"{v:.3f} s"


lines = [f"══════ dropgate load test: {SCENARIO} ══════"]
load = (f"peak {params.get('PEAK_RPS')}/s (ramp {params.get('RAMP')}) for {params.get('DURATION')}"
        if params.get("PEAK_RPS") and SCENARIO in ("drop", "smoke")
        else f"{params.get('RATE')}/s for {params.get('DURATION')}")
lines.append(f"load          {load}; {len(skus)} SKUs × {params.get('STOCK')} units, "
             f"hold_ttl {params.get('HOLD_TTL_MS')} ms, k6 ran {run_s:.1f} s")
r = requests
lines.append(f"admissions    {r['admission_requests']} requests, {r['admission_requests_per_s']}/s average, "
             f"server peak {r['server_peak_admissions_per_s']}/s")
lines.append(f"outcomes      admitted {r['admitted']}, sold out {r.get('sold_out', 0)}, "
             f"limit {r.get('limit_exceeded', 0)}, rate limited {r.get('rate_limited', 0)}, "
             f"replayed {r.get('replayed', 0)} (mismatch {r.get('replay_mismatch', 0)}), "
             f"errors {r['errors']} (5xx {r['http_5xx']}), dropped iterations {r['dropped_iterations']}")
if UNITS_RETURN:
    lines.append(f"lifecycle     confirmed {r.get('confirmed', 0)}, released {r.get('released', 0)}, "
                 f"abandoned {r.get('abandoned', 0)} (expiry verified {r.get('expiry_verified', 0)}), "
                 f"extended {r.get('extended', 0)}, wrong transitions {r.get('transition_errors', 0)}")
for key in ["admission"] + [k for k in latency if k not in ("admission", "all")] + ["all"]:
    if key in latency:
        t = latency[key]
        lines.append(f"latency {key:<12} p50 {ms(t['p50'])} ms  p95 {ms(t['p95'])} ms  p99 {ms(t['p99'])} ms  "
                     f"max {ms(t['max'])} ms")
if server_admission_ms:
    t = server_admission_ms
    lines.append(f"latency {'in-server':<12} p50 {ms(t.get('p50'))} ms  p95 {ms(t.get('p95'))} ms  p99 {ms(t.get('p99'))} ms"
                 f"  (admission handler, from dropgate_admission_duration_seconds buckets)")
lines.append(f"{'SKU':<14}{'on_hand':>9}{'held':>9}{'sold':>9}{'held+sold':>11}{'oversold':>10}"
             f"{'k6 admitted':>13}{'live gate/pg':>14}")
for s in skus:
    lines.append(f"{s['sku']:<14}{s['on_hand']:>9}{s['held']:>9}{s['sold']:>9}{s['units_out']:>11}"
                 f"{s['oversold']:>10}{s['k6_admitted']:>13}"
                 f"{str(s['live_holds_gate']) + '/' + str(s['live_holds_ledger']):>14}")
lines.append("ledger holds  " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none")
             + f"; lost {by_state.get('lost', 0)}")
lines.append(f"commit lag    at load end {secs(commit_lag['at_load_end_s'])}, max sampled "
             f"{secs(commit_lag['max_sampled_s'])}; worker drained "
             f"{secs(commit_lag['worker_drain_after_load_s'])} after the load")
rm = redis_memory
per_live = f"{rm['bytes_per_live_hold']} B per live hold" if rm["bytes_per_live_hold"] is not None else "no live holds"
lines.append(f"redis memory  {size(delta)} over the run / {live_holds} live holds = {per_live} "
             f"({rm['bytes_per_admission_request']} B per admission request)")
if "prefix_bytes" in rm:
    per_prefix = (f"{rm['prefix_bytes_per_live_hold']} B per live hold" if rm["prefix_bytes_per_live_hold"]
                  is not None else "no live holds")
    lines.append(f"              this run's keys: {rm['prefix_keys']} keys, {size(rm['prefix_bytes'])} "
                 f"(MEMORY USAGE) = {per_prefix}"
                 + ("   [used_memory disturbed by other Redis users]" if rm["other_tenants_active"] else ""))
if memory:
    lines.append(f"              sampled key sizes: hold {memory.get('h', {}).get('avg_bytes')} B, idempotency "
                 f"{memory.get('i', {}).get('avg_bytes')} B, customer {memory.get('c', {}).get('avg_bytes')} B, "
                 f"expiry {rm.get('sampled_expiry_bytes_per_entry')} B/entry = "
                 f"~{rm.get('sampled_bytes_per_live_hold')} B per hold")
rss_a, rss_b = process["rss_kb_before"], process["rss_kb_after"]
lines.append(f"dropgate RSS  {size(rss_a * 1024 if rss_a else None)} before the load, "
             f"{size(rss_b * 1024 if rss_b else None)} after")
if soak:
    lines.append(f"soak          after {soak['warmup_s']:.0f} s warm-up: Redis {size(num(soak['first']['redis_used_memory']))}"
                 f" → {size(num(soak['last']['redis_used_memory']))} ({soak['redis_growth_pct']:+}%, "
                 f"{soak['redis_bytes_per_admission_after_warmup']} B per admission), RSS "
                 f"{size(num(soak['first']['dropgate_rss_kb']) * 1024)} → "
                 f"{size(num(soak['last']['dropgate_rss_kb']) * 1024)} ({soak['rss_growth_pct']:+}%); "
                 f"flat = within {soak['flat_pct']:.0f}%")
if flood:
    per_n = next(v for k, v in flood.items() if k.startswith("growth_bytes_per_"))
    lines.append(f"flood         {flood['clients']} clients, {flood['rejections']} rejections: Redis grew "
                 f"{size_(flood['redis_growth_bytes'])} ({flood['judged_on']}), "
                 f"{size_(per_n)} per {num(os.environ.get('FLOOD_PER_REJECTIONS'), 100000):,.0f} rejections "
                 f"(target < {size_(flood['limit_bytes'])}); {flood['keys_after']} keys for "
                 f"{flood['live_holds']} live holds")
if dashboard:
    q, v = dashboard["quiet_ms"] or {}, dashboard["viewed_ms"] or {}
    lines.append(f"dashboard     {dashboard['viewers']} viewers × {dashboard['poll_hz']}/s: "
                 f"{dashboard['dashboard_requests']} dashboard requests, {dashboard['dashboard_computations']} "
                 f"computations; admission p99 quiet {ms(q.get('p99'))} ms, viewed {ms(v.get('p99'))} ms, "
                 f"ratio {dashboard['p99_ratio']} (target ≤ {dashboard['max_ratio']})"
                 + (f"; control (as many /healthz) {ms(dashboard['control_ms'].get('p99'))} ms, ratio "
                    f"{dashboard['control_p99_ratio']}" if dashboard["control_ms"] else ""))
lines.append(f"audit         {'passed' if audit_rc == 0 else 'FAILED (exit %d)' % audit_rc}")
for f_ in failures:
    lines.append(f"  FAIL  {f_}")
for b in broken:
    if b not in failures:
        lines.append(f"  BROKEN {b}")
for p in perf:
    lines.append(f"  PERF  {p}")
for n in notes:
    lines.append(f"  note  {n}")
lines.append(f"result        {verdict}   (report: {path('report.json')})")
print("\n".join(lines))
sys.exit(code)
