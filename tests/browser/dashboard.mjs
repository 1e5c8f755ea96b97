// Drives the dashboard in headless Chromium (Debian's /usr/bin/chromium).
// Run by tests/dashboard.rs, which talks to it over stdin/stdout:
//
//   node tests/browser/dashboard.mjs <base_url> <sku> <expected_json> <screenshot_path>
//
// 1. Opens <base_url>/, waits for the row of <sku>, prints one JSON line
//    {"phase":"initial", ...} with what the page shows.
// 2. Waits for a line on stdin (the test has changed the stock meanwhile).
// 3. Waits (up to 10 s) until the row shows every field of <expected_json>
//    (e.g. {"available":15,"held":3,"sold":2}; the key "admitted_at_least"
//    means the legend's "held" total), saves a screenshot, prints
//    {"phase":"final", "ok": true|false, ...} and exits 0 when all matched,
//    no request left the server's origin and the page logged no error.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";

const [baseUrl, sku, expectedJson, screenshot] = process.argv.slice(2);
if (!baseUrl || !sku || !expectedJson || !screenshot) {
  console.error("usage: dashboard.mjs <base_url> <sku> <expected_json> <screenshot_path>");
  process.exit(2);
}
const expected = JSON.parse(expectedJson);
const origin = new URL(baseUrl).origin;
const WAIT_MS = 10_000;

// Never outlive a test that died.
const deadline = setTimeout(() => {
  console.error("dashboard.mjs: gave up after 90 s");
  process.exit(3);
}, 90_000);
deadline.unref();

const lines = createInterface({ input: process.stdin });
const nextLine = () =>
  new Promise((resolve, reject) => {
    lines.once("line", resolve);
    lines.once("close", () => reject(new Error("stdin closed")));
  });

function say(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

const foreignRequests = [];
const pageErrors = [];
const userDataDir = mkdtempSync(join(tmpdir(), "dropgate-chromium-"));
let context;
let exitCode = 1;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(origin + "/") && !url.startsWith("data:")) foreignRequests.push(url);
  });
  page.on("console", (message) => {
    if (message.type() === "error") pageErrors.push("console: " + message.text());
  });
  page.on("pageerror", (error) => pageErrors.push("pageerror: " + error.message));

  const response = await page.goto(origin + "/", { waitUntil: "load" });
  if (!response || response.status() !== 200) {
    throw new Error("GET / answered " + (response && response.status()));
  }
  const row = `tr[data-sku="${sku}"]`;
  // The first figures: a slow start of Chromium on a busy machine is not
  // the page's fault, so this wait is longer than the one for a change.
  await page.waitForSelector(`${row} td[data-field="available"][data-value]:not([data-value=""])`, {
    timeout: 2 * WAIT_MS,
  });

  // Everything the test checks, read from the page as a person would see it
  // (text) and as the page tagged it (data-value).
  const read = () =>
    page.evaluate((row) => {
      const values = {};
      const texts = {};
      for (const cell of document.querySelectorAll(`${row} td[data-field]`)) {
        const field = cell.dataset.field;
        texts[field] = cell.textContent;
        if (field !== "sku") values[field] = cell.dataset.value === "" ? null : Number(cell.dataset.value);
      }
      const tiles = {};
      for (const tile of document.querySelectorAll("[data-tile]")) {
        tiles[tile.dataset.tile] = {
          state: tile.dataset.state,
          text: tile.querySelector(".tile-value").textContent,
        };
      }
      const legend = {};
      for (const li of document.querySelectorAll("#legend [data-outcome]")) {
        legend[li.dataset.outcome] = {
          total: Number(li.dataset.total),
          rate: Number(li.dataset.rate),
          peak: Number(li.dataset.peak),
        };
      }
      return {
        values,
        texts,
        tiles,
        legend,
        polls: Number(document.body.dataset.polls || 0),
        connection: document.getElementById("conn").textContent,
      };
    }, row);

  const go = nextLine(); // listening before the test can answer
  say({ phase: "initial", ...(await read()) });
  await go;

  const matches = (seen) =>
    Object.entries(expected).every(([field, want]) => {
      if (field === "admitted_at_least") {
        const held = seen.legend.held;
        return held !== undefined && held.total >= want && held.peak > 0;
      }
      return seen.values[field] === want && seen.texts[field] === String(want);
    });

  const started = Date.now();
  let seen = await read();
  while (!matches(seen) && Date.now() - started < WAIT_MS) {
    await page.waitForTimeout(100);
    seen = await read();
  }
  const matched = matches(seen);
  // One more poll so the chart shows the change, then the picture.
  if (matched) {
    const polls = seen.polls;
    await page
      .waitForFunction((n) => Number(document.body.dataset.polls || 0) > n, polls, { timeout: 3000 })
      .catch(() => {});
  }
  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });

  const ok = matched && foreignRequests.length === 0 && pageErrors.length === 0;
  say({
    phase: "final",
    ok,
    matched,
    waited_ms: Date.now() - started,
    ...seen,
    foreign_requests: foreignRequests,
    page_errors: pageErrors,
    screenshot,
  });
  exitCode = ok ? 0 : 1;
} catch (error) {
  say({ phase: "error", error: String(error && error.stack ? error.stack : error) });
  exitCode = 1;
} finally {
  lines.close();
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
