// Drives flockd's dashboard in headless Chromium for host/tests/dashboard.rs.
//
//   node dashboard.mjs URL
//
// A line protocol with the test: this script prints `page-loaded` once the
// page has drawn from the API; the test enqueues a task and writes
// `enqueued`; the script waits for a booting instance, opens its journal
// entries and prints `saw-booting ID`; the test swaps policies and writes
// `swapped`; the script waits for the reload list and prints `saw-reload`.
// Any console error or uncaught exception fails the run (exit 1).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const url = process.argv[2];
const STEP_MS = 30000;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expectLine(word) {
  const { value, done } = await lines.next();
  if (done || value.trim() !== word) throw new Error(`expected "${word}" from the test, got ${done ? "end of input" : JSON.stringify(value)}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  // playwright gives every launch a fresh profile of its own and removes it.
});
const problems = [];
let code = 0;
try {
  const page = await browser.newPage();
  page.on("console", m => { if (m.type() === "error") problems.push("console error: " + m.text()); });
  page.on("pageerror", e => problems.push("uncaught: " + e.message));
  page.on("requestfailed", r => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  // Nothing but flockd itself may be fetched: no CDN, no fonts, no analytics.
  page.on("request", r => { if (!r.url().startsWith(url) && !r.url().startsWith("data:")) problems.push("off-site request: " + r.url()); });

  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.refreshed, null, { timeout: STEP_MS });
  await page.waitForSelector("#policies tbody tr[data-policy='scale-up']", { timeout: STEP_MS });
  console.log("page-loaded");

  await expectLine("enqueued");
  const row = await page.waitForSelector("tr.instance[data-activity='booting']", { timeout: STEP_MS });
  const id = await row.getAttribute("data-instance");
  // Issue 15, item 10: each machine's cost so far.
  const cost = await row.$eval("td.cost", n => n.textContent);
  if (!/^\d+\.\d\d$/.test(cost)) problems.push(`the machine's cost so far reads ${JSON.stringify(cost)}`);
  await row.click();
  await page.waitForSelector("#why:not([hidden]) #why-entries li[data-tick] li[data-kind='launch']", { timeout: STEP_MS });
  const why = await page.textContent("#why-entries");
  if (!why.includes(id)) problems.push(`the journal entries for ${id} do not name it: ${why}`);
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("launched"), null, { timeout: STEP_MS });
  await page.waitForSelector("#chart-queues svg polyline", { timeout: STEP_MS });
  // Issue 16, item 11: the waits chart, the instance cap drawn as a line,
  // spend so far today, and the failures panel.
  await page.waitForSelector("#chart-waits svg polyline", { timeout: STEP_MS });
  // Issue 15, item 10: machines per resource over time (alive and busy).
  await page.waitForSelector("#chart-resources svg polyline", { timeout: STEP_MS });
  // A horizontal line has no height, so playwright never calls it visible:
  // check that it is drawn across the chart instead.
  const cap = await page.waitForSelector("#chart-instances svg polyline[stroke-dasharray='4 3']", { state: "attached", timeout: STEP_MS });
  const xs = (await cap.getAttribute("points")).split(" ").map(p => Number(p.split(",")[0]));
  if (!(Math.max(...xs) - Math.min(...xs) > 400)) problems.push(`the max-instances cap is not drawn across the chart: ${xs}`);
  const spend = await page.textContent("#spend");
  if (!/spent today/.test(spend) || !/this month/.test(spend)) problems.push(`no spend card: ${spend}`);
  await page.waitForSelector("#failures li", { timeout: STEP_MS });
  console.log("saw-booting " + id);

  await expectLine("swapped");
  await page.waitForSelector("#reloads li[data-policy='idle'][data-outcome='loaded']", { timeout: STEP_MS });
  const rejected = await page.waitForSelector("#reloads li[data-policy='budget'][data-outcome='rejected'] .error", { timeout: STEP_MS });
  if (!(await rejected.textContent()).trim()) problems.push("a rejected reload shows no error");
  if (process.env.FLOCKD_SCREENSHOT) await page.screenshot({ path: process.env.FLOCKD_SCREENSHOT, fullPage: true });
  console.log("saw-reload");
} catch (e) {
  problems.push(String(e && e.stack || e));
} finally {
  await browser.close();
}
for (const p of problems) { console.error(p); code = 1; }
console.log(code === 0 ? "console-clean" : "failed");
process.exit(code);
