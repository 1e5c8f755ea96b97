// dropgate live dashboard: polls /v1/dashboard every second and draws it.
// Plain DOM, no libraries; every text from the server goes through
// textContent, never innerHTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 5000;
  const HISTORY_SECONDS = 60;
  const MAX_POINTS = 61;

  const OUTCOME_COLORS = {
    held: "#34b36b",
    sold_out: "#d64545",
    limit_exceeded: "#8a5cd1",
    rate_limited: "#f0a830",
    replayed: "#3b82c4",
    error: "#7a1f1f",
  };
  const SPARE_COLORS = ["#6b7685", "#0f8b8d", "#b5651d", "#a0a8b4", "#c2185b"];

  // Legend order: the usual outcomes first, any other as it first appears.
  const outcomes = ["held", "sold_out", "limit_exceeded", "rate_limited", "replayed", "error"];
  const history = []; // {t: ms, rates: {outcome: per second}}
  let previous = null; // {t, totals}
  let polls = 0;
  let lastAnswer = null; // when the server last answered, as text

  const $ = (id) => document.getElementById(id);

  function colorOf(outcome) {
    if (!OUTCOME_COLORS[outcome]) {
      const used = Object.keys(OUTCOME_COLORS).length - 6;
      OUTCOME_COLORS[outcome] = SPARE_COLORS[used % SPARE_COLORS.length];
    }
    return OUTCOME_COLORS[outcome];
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  function fmtInt(n) {
    return n === null || n === undefined ? "–" : integer.format(n);
  }
  function fmtRate(r) {
    if (r >= 100) return integer.format(r) + "/s";
    return r.toFixed(1) + "/s";
  }
  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    return Math.round(s / 60) + " min";
  }
  function signed(n) {
    return n > 0 ? "+" + n : n < 0 ? "−" + -n : "0";
  }

  // ---- tiles ---------------------------------------------------------------

  function setTile(name, value, text, state, note) {
    const tile = document.querySelector('[data-tile="' + name + '"]');
    if (!tile) return;
    tile.dataset.state = state;
    const v = tile.querySelector(".tile-value");
    v.textContent = text;
    v.dataset.value = value === null || value === undefined ? "" : String(value);
    if (note !== undefined) tile.querySelector(".tile-note").textContent = note;
  }

  function renderTiles(d) {
    for (const [store, role] of [["redis", "gate"], ["postgres", "ledger"]]) {
      const ok = d[store] === "ok";
      setTile(store, d[store], ok ? "ok" : "down", ok ? "ok" : "bad",
        ok ? role : "unreachable");
      document.querySelector('[data-tile="' + store + '"] .tile-value').classList.add("health");
    }
    const built = d.gate === "built";
    setTile("gate", d.gate, d.gate, built ? "ok" : "bad",
      built ? "built from the ledger" : d.redis === "ok" ? "rebuilding" : "Redis unreachable");
    const lag = d.commit_lag_seconds;
    setTile("commit_lag", lag, fmtSeconds(lag),
      lag === null ? "wait" : lag < 1 ? "ok" : lag < 5 ? "warn" : "bad",
      lag === null ? "no commit yet" : "age at last commit");
    const backlog = d.backlog_total;
    setTile("backlog", backlog, fmtInt(backlog),
      backlog === null ? "wait" : backlog < 10000 ? "ok" : backlog < 100000 ? "warn" : "bad",
      backlog === null ? "unknown" : "events in the streams");
    const drift = d.max_abs_drift;
    setTile("drift", drift, fmtInt(drift),
      drift === null ? "wait" : drift === 0 ? "ok" : "warn",
      drift === null ? "unknown"
        : drift === 0 ? "gate − ledger, units" : "gate − ledger: worker behind?");
  }

  // ---- SKU rows ------------------------------------------------------------

  const rows = new Map(); // sku → {tr, cells}
  const FIELDS = ["on_hand", "available", "held", "sold", "backlog"];

  function makeRow(sku) {
    const tr = el("tr");
    tr.dataset.sku = sku;
    const name = el("td", "sku-name", sku);
    name.title = sku;
    name.dataset.field = "sku";
    tr.appendChild(name);
    const barCell = el("td");
    const bar = el("div", "bar");
    const parts = {};
    for (const part of ["sold", "held", "available"]) {
      parts[part] = el("span", part);
      bar.appendChild(parts[part]);
    }
    barCell.appendChild(bar);
    tr.appendChild(barCell);
    const cells = {};
    for (const field of FIELDS.concat(["drift"])) {
      const td = el("td", "num", "–");
      td.dataset.field = field;
      cells[field] = td;
      tr.appendChild(td);
    }
    return { tr, bar, parts, cells };
  }

  function setCell(td, value, text) {
    td.dataset.value = value === null || value === undefined ? "" : String(value);
    td.textContent = text === undefined ? fmtInt(value) : text;
  }

  function renderSkus(d) {
    const body = $("sku-rows");
    const seen = new Set();
    let anyFromLedger = false;
    for (const s of d.skus) {
      seen.add(s.sku);
      let row = rows.get(s.sku);
      if (!row) {
        row = makeRow(s.sku);
        rows.set(s.sku, row);
      }
      body.appendChild(row.tr); // (re)places it in server order
      // The gate's figures; the ledger's when the gate does not have the SKU
      // (Redis away, or admissions decided by Postgres).
      const fromLedger = s.on_hand === null && s.ledger_on_hand !== null;
      const f = fromLedger
        ? {
            on_hand: s.ledger_on_hand,
            held: s.ledger_held,
            sold: s.ledger_sold,
            available: s.ledger_on_hand - s.ledger_held - s.ledger_sold,
            backlog: s.backlog,
          }
        : s;
      row.tr.dataset.source = fromLedger ? "ledger" : s.on_hand === null ? "none" : "gate";
      row.tr.classList.toggle("from-ledger", fromLedger);
      if (fromLedger) anyFromLedger = true;
      for (const field of FIELDS) setCell(row.cells[field], f[field]);
      const total = f.on_hand || 0;
      for (const part of ["sold", "held", "available"]) {
        const n = Math.max(0, f[part] || 0);
        row.parts[part].style.width = total > 0 ? (100 * n) / total + "%" : "0%";
      }
      row.bar.title = f.on_hand === null
        ? "in neither store"
        : "sold " + f.sold + " · held " + f.held + " · available " + f.available +
          " of " + f.on_hand + (fromLedger ? " (ledger)" : "");
      const drift = s.drift;
      if (!drift) {
        setCell(row.cells.drift, null, "–");
        row.cells.drift.classList.remove("drift-bad");
      } else {
        const parts = [];
        if (drift.on_hand) parts.push("o " + signed(drift.on_hand));
        if (drift.held) parts.push("h " + signed(drift.held));
        if (drift.sold) parts.push("s " + signed(drift.sold));
        const max = Math.max(Math.abs(drift.on_hand), Math.abs(drift.held), Math.abs(drift.sold));
        setCell(row.cells.drift, max, parts.length ? parts.join(" ") : "0");
        row.cells.drift.title = "gate − ledger: on hand " + signed(drift.on_hand) +
          ", held " + signed(drift.held) + ", sold " + signed(drift.sold);
        row.cells.drift.classList.toggle("drift-bad", max > 0);
      }
    }
    for (const [sku, row] of rows) {
      if (!seen.has(sku)) {
        row.tr.remove();
        rows.delete(sku);
      }
    }
    $("no-skus").hidden = d.skus.length > 0;
    $("from-ledger").hidden = !anyFromLedger;
    $("truncated").hidden = !d.skus_truncated;
  }

  // ---- admissions chart ------------------------------------------------------

  function record(d, now) {
    const totals = d.admissions_total || {};
    for (const outcome of Object.keys(totals)) {
      if (!outcomes.includes(outcome)) outcomes.push(outcome);
    }
    if (previous) {
      const dt = (now - previous.t) / 1000;
      if (dt > 0) {
        const rates = {};
        for (const outcome of outcomes) {
          const delta = (totals[outcome] || 0) - (previous.totals[outcome] || 0);
          rates[outcome] = Math.max(0, delta) / dt; // a restart resets counters
        }
        history.push({ t: now, rates });
        while (history.length > MAX_POINTS) history.shift();
      }
    }
    previous = { t: now, totals };
  }

  function renderLegend(d) {
    const legend = $("legend");
    const latest = history.length ? history[history.length - 1].rates : {};
    for (const outcome of outcomes) {
      let li = legend.querySelector('[data-outcome="' + CSS.escape(outcome) + '"]');
      if (!li) {
        li = el("li");
        li.dataset.outcome = outcome;
        const swatch = el("span", "swatch");
        swatch.style.background = colorOf(outcome);
        li.appendChild(swatch);
        li.appendChild(el("span", "name", outcome.replace(/_/g, " ")));
        li.appendChild(el("span", "rate"));
        li.appendChild(el("span", "total"));
        li.dataset.peak = "0";
        legend.appendChild(li);
      }
      const rate = latest[outcome] || 0;
      const total = (d.admissions_total || {})[outcome] || 0;
      li.dataset.rate = String(rate);
      li.dataset.total = String(total);
      li.dataset.peak = String(Math.max(Number(li.dataset.peak), rate));
      li.querySelector(".rate").textContent = fmtRate(rate);
      li.querySelector(".total").textContent = "(" + fmtInt(total) + " total)";
    }
  }

  function niceCeiling(x) {
    if (x <= 1) return 1;
    const magnitude = Math.pow(10, Math.floor(Math.log10(x)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * magnitude >= x) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function drawChart() {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (w === 0 || h === 0) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);

    const pad = { left: 52, right: 12, top: 10, bottom: 22 };
    const pw = w - pad.left - pad.right;
    const ph = h - pad.top - pad.bottom;
    let max = 0;
    for (const point of history) {
      for (const outcome of outcomes) max = Math.max(max, point.rates[outcome] || 0);
    }
    const top = niceCeiling(max);

    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.top + ph - (ph * i) / 4;
      ctx.strokeStyle = i === 0 ? "#c9d1dc" : "#eef1f5";
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y) + 0.5);
      ctx.lineTo(pad.left + pw, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillStyle = "#6b7685";
      ctx.textAlign = "right";
      const v = (top * i) / 4;
      ctx.fillText((v >= 10 || v === 0 ? Math.round(v) : v.toFixed(2).replace(/\.?0+$/, "")) + "/s",
        pad.left - 8, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const s of [60, 45, 30, 15, 0]) {
      const x = pad.left + pw - (pw * s) / HISTORY_SECONDS;
      ctx.fillText(s === 0 ? "now" : "−" + s + " s", x, pad.top + ph + 6);
    }

    if (history.length < 1) {
      ctx.fillStyle = "#6b7685";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for data…", pad.left + pw / 2, pad.top + ph / 2);
      return;
    }
    const newest = history[history.length - 1].t;
    const xOf = (t) => pad.left + pw - (pw * (newest - t)) / (HISTORY_SECONDS * 1000);
    const yOf = (r) => pad.top + ph - (ph * r) / top;

    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.left, pad.top - 2, pw, ph + 4);
    ctx.clip();
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    // Quiet outcomes first so the busy ones are drawn on top.
    const order = outcomes.slice().sort((a, b) => peakOf(a) - peakOf(b));
    for (const outcome of order) {
      if (peakOf(outcome) === 0) continue; // the baseline says it already
      ctx.strokeStyle = colorOf(outcome);
      ctx.lineWidth = 2;
      ctx.beginPath();
      history.forEach((point, i) => {
        const x = xOf(point.t);
        const y = yOf(point.rates[outcome] || 0);
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
      if (history.length === 1 && history[0].rates[outcome] > 0) {
        ctx.fillStyle = colorOf(outcome);
        ctx.beginPath();
        ctx.arc(xOf(history[0].t), yOf(history[0].rates[outcome] || 0), 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    ctx.restore();
  }

  function peakOf(outcome) {
    let peak = 0;
    for (const point of history) peak = Math.max(peak, point.rates[outcome] || 0);
    return peak;
  }

  // ---- polling ---------------------------------------------------------------

  function setConnection(ok, text) {
    const pill = $("conn");
    pill.dataset.state = ok ? "ok" : "bad";
    pill.textContent = text;
  }

  async function poll() {
    const started = performance.now();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("/v1/dashboard", {
        cache: "no-store",
        headers: { accept: "application/json" },
        signal: controller.signal,
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const d = await response.json();
      const now = performance.now();
      record(d, now);
      renderTiles(d);
      renderSkus(d);
      renderLegend(d);
      drawChart();
      polls += 1;
      document.body.dataset.polls = String(polls);
      setConnection(true, "live");
      document.body.dataset.stale = "false";
      const at = new Date(d.generated_at);
      lastAnswer = isNaN(at) ? d.generated_at : at.toLocaleTimeString();
      $("updated").textContent = "updated " + lastAnswer;
    } catch (error) {
      setConnection(false, "dropgate unreachable");
      document.body.dataset.stale = "true";
      const why = error && error.name === "AbortError" ? "timed out" : "no answer";
      $("updated").textContent = lastAnswer
        ? why + "; last update " + lastAnswer + ", figures below are stale"
        : why;
    } finally {
      clearTimeout(timer);
      const elapsed = performance.now() - started;
      setTimeout(poll, Math.max(0, POLL_MS - elapsed));
    }
  }

  window.addEventListener("resize", drawChart);
  document.addEventListener("DOMContentLoaded", () => {
    drawChart();
    poll();
  });
})();
