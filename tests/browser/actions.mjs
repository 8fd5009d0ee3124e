// Drives the dashboard's action buttons in headless Chromium for
// host/tests/dashboard_actions.rs (issue 15, item 1).
//
//   node actions.mjs URL TOKEN
//
// The page is opened with the token as Basic credentials, as a browser
// that was asked once would send it. Line protocol with the test:
//   script: `paused`             after clicking "Pause launches" (confirmed)
//   test:   `checked-paused`     once it saw launches held back
//   script: `resumed`            after clicking "Resume launches"
//   test:   `busy ID`            once machine ID runs a task
//   script: `refused TEXT`       after clicking ID's terminate: what the page said
//   script: `no-token S1 S2 S3`  statuses of a POST with no credentials, with a
//                                wrong bearer token, and from another origin
//   script: `console-clean`      no console error happened
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, token] = process.argv.slice(2);
const STEP_MS = 30000;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextLine() {
  const { value, done } = await lines.next();
  if (done) throw new Error("the test stopped talking");
  return value.trim();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const problems = [];
let code = 0;
try {
  const context = await browser.newContext({ httpCredentials: { username: "flockd", password: token } });
  const page = await context.newPage();
  page.on("console", m => {
    // The refused requests below (401, 403, and 409 for the busy machine) are meant to fail.
    if (m.type() === "error" && !/status of 40[139]/.test(m.text())) problems.push("console error: " + m.text());
  });
  page.on("pageerror", e => problems.push("uncaught: " + e.message));
  const confirmations = [];
  page.on("dialog", d => { confirmations.push(d.message()); d.accept(); });

  await page.goto(url);
  await page.waitForSelector("#actions:not([hidden])", { timeout: STEP_MS });
  await page.click("#action-pause");
  await page.waitForSelector("#paused:not([hidden])", { timeout: STEP_MS });
  console.log("paused");
  const checked = await nextLine();
  if (checked !== "checked-paused") throw new Error(`expected checked-paused, got ${checked}`);

  await page.click("#action-resume");
  await page.waitForSelector("#paused[hidden]", { state: "attached", timeout: STEP_MS });
  console.log("resumed");

  const busy = await nextLine();
  if (!busy.startsWith("busy ")) throw new Error(`expected busy ID, got ${busy}`);
  const id = busy.slice(5);
  const button = await page.waitForSelector(`button.terminate[data-instance='${id}']`, { timeout: STEP_MS });
  await button.click();
  await page.waitForFunction(() => document.getElementById("action-result").dataset.status, null, { timeout: STEP_MS });
  const said = (await page.textContent("#action-result")).replace(/\s+/g, " ");
  console.log(`refused ${said}`);
  if (confirmations.length !== 3) problems.push(`expected a confirmation per click, got ${JSON.stringify(confirmations)}`);

  // Requests the browser makes without the dashboard's credentials, with a
  // wrong token, and as a page of another site would (its Origin).
  const statuses = await page.evaluate(async (bad) => {
    const post = (init) => fetch("/api/v2/actions/pause", { method: "POST", body: "{}", ...init }).then(r => r.status);
    return [
      await post({ credentials: "omit", headers: { "Content-Type": "application/json" } }),
      await post({ credentials: "omit", headers: { "Content-Type": "application/json", Authorization: `Bearer ${bad}` } }),
    ];
  }, token + "-wrong");
  // The credentials a browser saved for this dashboard, sent from a page of
  // another site (what a browser may do on its own).
  const basic = "Basic " + Buffer.from(`flockd:${token}`).toString("base64");
  const other = await context.request.post(`${url}api/v2/actions/pause`, {
    headers: { "Content-Type": "application/json", Origin: "http://evil.example", Authorization: basic }, data: "{}",
  });
  console.log(`no-token ${statuses.join(" ")} ${other.status()}`);
} catch (e) {
  problems.push(e.stack || String(e));
} finally {
  if (problems.length) {
    console.error(problems.join("\n"));
    code = 1;
  } else {
    console.log("console-clean");
  }
  await browser.close();
  process.exit(code);
}
