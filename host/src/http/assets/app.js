// flockd dashboard: polls the JSON API and redraws. Everything a policy or
// a cloud wrote (reasons, errors) goes in as text, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const COLORS = ["#2563eb", "#f59e0b", "#10b981", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#ea580c"];
let logNext = 0;
let whyInstance = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString();
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status + " " + (await response.text()).trim());
  return response.json();
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat().filter(c => c !== null && c !== undefined));
  return node;
}

function renderHeader(status) {
  document.getElementById("cluster").textContent = status.cluster;
  replace("badges",
    el("span", { class: "badge " + (status.ready ? "ok" : "warn") }, status.ready ? "ready" : "not ready"),
    status["dry-run"] ? el("span", { class: "badge warn" }, "dry run") : null);
  renderBlind(status);
  const t = status["last-tick"];
  if (!t) return;
  const text = t.outcome === "ok"
    ? `tick ${t.tick} at ${clock(t.at)}: ${t.launched} launched, ${t.terminated} terminated, ${t.failed} failed, ${t.refused} refused, ${t.clamps.length} clamped (${(t.micros / 1000).toFixed(1)} ms)`
    : `tick ${t.tick} at ${clock(t.at)}: observation failed, nothing decided: ${t["observation-error"]}`;
  const node = replace("tick", text);
  node.className = t.outcome === "ok" ? "muted" : "error";
}

function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  const s = Math.max(0, Math.floor(secs));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor(s % 86400 / 3600)).padStart(2, "0")}h`;
}

// While every observation fails nothing is decided, and idle machines bill
// on: that must not look like calm.
function renderBlind(status) {
  const node = document.getElementById("blind");
  const b = status.blind;
  const foreign = status["foreign-machines"] || [];
  const follower = status.leader && !status.leader.leading ? status.leader : null;
  node.hidden = !b && foreign.length === 0 && !follower;
  const lines = [];
  if (follower) lines.push(`Follower: ${follower.leader ? `the leader is ${follower.leader}` : "no leader seen yet"}; ` +
    `this flockd acts only if it takes over the lease. What it shows is its last view.`);
  if (b) lines.push(`Blind for ${duration(b.seconds)} (${b["failed-ticks"]} failed ticks): nothing is launched or terminated ` +
    `while ${status.fleet.length} machine(s) keep billing. Last error: ${b.error}`);
  if (foreign.length) lines.push(`Another flockd is launching into this cluster (${foreign.length} machine(s) with launch keys ` +
    `this one never wrote: ${foreign.slice(0, 5).join(", ")}): launches are stopped until they are gone.`);
  node.textContent = lines.join(" ");
}

// " / 100.00" when a budget is set.
function budget(limit) {
  return limit === null || limit === undefined ? "" : ` / ${limit.toFixed(2)}`;
}

function renderSummary(status) {
  const alive = status.fleet.length;
  const card = (label, value, extra) => el("div", { class: "card" }, el("div", { class: "muted" }, label), el("div", { class: "value" }, value), extra ? el("div", { class: "muted" }, extra) : null);
  const byActivity = a => status.fleet.filter(i => i.activity === a).length;
  replace("summary",
    card("instances", `${alive} / ${status.limits["max-instances"]}`,
      `${byActivity("booting")} booting · ${byActivity("busy")} busy · ${byActivity("idle")} idle · ${byActivity("stopping")} stopping`),
    card("cost per hour", `${status["cost-per-hour"].toFixed(2)} / ${status.limits["max-cost-per-hour"].toFixed(2)}`),
    el("div", { class: "card", id: "spend" }, el("div", { class: "muted" }, "spent today (UTC)"),
      el("div", { class: "value" }, status.spend.today.toFixed(2) + budget(status.limits["max-cost-per-day"])),
      el("div", { class: "muted" }, `${status.spend["this-month"].toFixed(2)}${budget(status.limits["max-cost-per-month"])} this month`)),
    card("pending tasks", status.queues.reduce((n, q) => n + q.pending, 0), status.queues.map(q => `${q.name}: ${q.pending}`).join(" · ")));
}

function instanceRow(i) {
  return el("tr", {
      class: "instance", "data-instance": i.id, "data-activity": i.activity, title: "why is this machine up?",
      onclick: () => showWhy(i.id),
    },
    el("td", {}, el("span", { class: "dot " + i.activity }), i.activity),
    el("td", {}, i.id),
    el("td", {}, duration(i["age-secs"])),
    el("td", { class: "cost" }, i["cost-so-far"] === null || i["cost-so-far"] === undefined ? "–" : i["cost-so-far"].toFixed(2)),
    el("td", {}, i["idle-secs"] === null ? "–" : duration(i["idle-secs"])),
    el("td", {}, i.worker || "–"),
    // The task a busy machine runs, in the ClearML web UI when its address
    // is known. The link must not open "why is this machine up?".
    el("td", { class: "task" }, !i.task ? "–" : i["task-url"]
      ? el("a", { href: i["task-url"], target: "_blank", rel: "noopener", onclick: e => e.stopPropagation() }, i.task)
      : i.task),
    // Only with actions on; flockd refuses it anyway while the worker is busy.
    actionsEnabled ? el("td", {}, el("button", {
      type: "button", class: "terminate", "data-instance": i.id,
      onclick: e => { e.stopPropagation(); act("terminate", { instance: i.id }, `Terminate ${i.id}? A busy machine is refused.`); },
    }, "terminate")) : null);
}

let actionsEnabled = false;

// POST an action (after a confirmation) and say what it did. The browser
// sends the dashboard's credentials and its Origin; flockd checks both.
async function act(name, body, question) {
  if (!window.confirm(question)) return;
  const result = document.getElementById("action-result");
  result.textContent = `${name}…`;
  delete result.dataset.status;
  try {
    const response = await fetch(`/api/v2/actions/${name}`, {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (answer.error) {
      result.textContent = `${name}: ${answer.error}`;
    } else {
      const parts = [];
      if (answer.tick !== null && answer.tick !== undefined) {
        parts.push(`terminated ${answer.terminated.length}`);
        for (const r of answer.refused) parts.push(`kept ${r.instance}: ${r.why}`);
        for (const r of answer.failed) parts.push(`failed ${r.instance}: ${r.why}`);
      } else {
        parts.push(answer["launches-paused-since"] ? "launches paused" : "launches resumed");
      }
      result.textContent = `${name}: ${parts.join("; ")}`;
    }
    result.dataset.status = String(response.status);
  } catch (e) {
    result.textContent = `${name}: ${e.message}`;
  }
  await refresh();
}

function renderActions(status) {
  actionsEnabled = status["actions-enabled"];
  document.getElementById("actions").hidden = !actionsEnabled;
  const paused = status["launches-paused-since"];
  document.getElementById("action-pause").hidden = paused !== null && paused !== undefined;
  document.getElementById("action-resume").hidden = paused === null || paused === undefined;
  const banner = document.getElementById("paused");
  banner.hidden = paused === null || paused === undefined;
  banner.textContent = banner.hidden ? "" :
    `Launches paused by an operator since ${clock(paused)}: queued tasks wait; idle machines are still retired.`;
}

document.getElementById("action-pause").addEventListener("click", () =>
  act("pause", {}, "Pause launches? Queued tasks will wait; idle machines are still retired."));
document.getElementById("action-resume").addEventListener("click", () => act("resume", {}, "Resume launches?"));
document.getElementById("action-shutdown-idle").addEventListener("click", () =>
  act("shutdown-idle", {}, "Terminate every idle machine now? Busy ones are kept."));

function renderFleet(status) {
  const sections = status.queues.map(q => {
    const resources = q.resources.map(name => {
      const r = status.resources.find(x => x.name === name);
      const instances = status.fleet.filter(i => i.resource === name);
      const head = el("h3", {},
        `${name} `,
        el("span", { class: "muted" },
          `${r ? r.market : ""} · ${r ? r["price-per-hour"].toFixed(2) : "?"}/h · max ${r ? r["max-instances"] : "?"} · ` +
          `${r ? r.booting : 0} booting, ${r ? r["running-busy"] : 0} busy, ${r ? r["running-idle"] : 0} idle, ${r ? r.stopping : 0} stopping`));
      const table = instances.length === 0 ? el("p", { class: "muted" }, "no instances") :
        el("table", {}, el("thead", {}, el("tr", {}, ["state", "instance", "age", "cost", "idle", "worker", "task"].concat(actionsEnabled ? [""] : []).map(h => el("th", {}, h)))),
          el("tbody", {}, instances.map(instanceRow)));
      return el("div", { "data-resource": name }, head, table);
    });
    return el("div", { class: "queue", "data-queue": q.name },
      el("h3", {}, `queue ${q.name} `, el("span", { class: "muted" },
        `${q.pending} pending, oldest waiting ${duration(q["oldest-wait-secs"])}` + (q["external-idle-workers"] ? `, ${q["external-idle-workers"]} idle workers not ours` : ""))),
      resources);
  });
  replace("fleet", sections);
}

function describeAction(a) {
  const outcome = a.outcome.status + (a.outcome.detail ? `: ${a.outcome.detail}` : "");
  const what = a.kind === "launch"
    ? `launch ${a.resource}${a.instance ? " → " + a.instance : ""}`
    : `terminate ${a.instance} (${a.resource}, ${a.cause})`;
  return el("li", { class: "outcome-" + a.outcome.status, "data-kind": a.kind },
    el("strong", {}, what), " — ", a.reason || "(no reason given)", el("span", { class: "muted" }, ` [${outcome}]`));
}

function describeRecord(r) {
  const items = r.actions.map(describeAction);
  for (const c of r.clamps) items.push(el("li", { class: "muted" }, "guardrail: " + c));
  if (r["observation-error"]) items.push(el("li", { class: "error" }, "observation failed: " + r["observation-error"]));
  return el("li", { "data-tick": r.tick },
    el("span", { class: "muted" }, `${clock(r.at)} · tick ${r.tick}${r["dry-run"] ? " · dry run" : ""}`),
    el("ul", {}, items));
}

function renderDecisions(records) {
  replace("decisions", records.length ? records.map(describeRecord) : [el("li", { class: "muted" }, "nothing done yet")]);
}

async function showWhy(instance) {
  whyInstance = instance;
  document.getElementById("why").hidden = false;
  document.getElementById("why-instance").textContent = instance;
  await refreshWhy();
  document.getElementById("why").scrollIntoView({ block: "nearest" });
}

async function refreshWhy() {
  if (!whyInstance) return;
  const records = await getJSON("/api/v2/decisions?limit=50&instance=" + encodeURIComponent(whyInstance));
  const relevant = records.map(r => ({ ...r, actions: r.actions.filter(a => a.instance === whyInstance), clamps: [] }));
  replace("why-entries", relevant.length ? relevant.map(describeRecord) : [el("li", { class: "muted" }, "no journal entry mentions this instance")]);
}

// What went wrong lately: the clouds' launch and boot failures the policies
// act on (spin-up-timeout's breaker counts the boot timeouts), and the
// policies' own errors.
function renderFailures(status) {
  const items = status.failures.map(f => el("li", { "data-failure": f.kind, "data-resource": f.resource },
    el("span", { class: "muted" }, clock(f.at) + " "), el("strong", {}, `${f.resource}: ${f.kind}`),
    f.kind === "boot-timeout" ? el("span", { class: "muted" }, " (counted by spin-up-timeout's breaker)") : null,
    f.message ? " — " + f.message : null));
  for (const p of status.policies.filter(p => p.errors > 0)) {
    items.push(el("li", { class: "error", "data-policy-error": p.name },
      el("strong", {}, `policy ${p.name}: ${p.errors} error(s)`), p["last-error"] ? " — " + p["last-error"] : null));
  }
  replace("failures", items.length ? items : [el("li", { class: "muted" }, "no failures in the retention window")]);
}

function settingsText(settings) {
  const entries = Object.entries(settings || {});
  return entries.length ? entries.map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ") : "defaults";
}

function renderPolicies(status) {
  const body = document.querySelector("#policies tbody");
  body.replaceChildren(...status.policies.map((p, n) => el("tr", { "data-policy": p.name },
    el("td", {}, n + 1), el("td", {}, p.name), el("td", {}, p.origin), el("td", {}, el("code", {}, p.version)),
    el("td", {}, clock(p["loaded-at"])), el("td", {}, p.calls), el("td", { class: p.errors ? "error" : "" }, p.errors),
    el("td", { class: "error" }, p["last-error"] || ""),
    // The rules in force: max-idle-secs, budgets, cool-offs…
    el("td", { class: "settings" }, el("code", {}, settingsText(p.settings))))));
  replace("reloads", status.reloads.length ? status.reloads.map(e => el("li", {
      class: "outcome-" + e.outcome.split(" ")[0], "data-policy": e.policy, "data-outcome": e.outcome,
    },
    el("span", { class: "muted" }, clock(e.at) + " "), el("strong", {}, e.policy), ` ${e.outcome}`,
    e.version ? el("code", {}, " " + e.version) : null, ` from ${e.origin}`,
    e.error ? el("div", { class: "error" }, e.error) : null)) : [el("li", { class: "muted" }, "no reloads since start")]);
}

// A line chart of several series over the last hour, in inline SVG.
function chart(series, options) {
  const W = 560, H = 180, L = 40, R = 10, T = 10, B = 22;
  const now = Date.now(), from = now - 3600 * 1000;
  let max = options.min_max || 1;
  for (const s of series) for (const [, v] of s.points) max = Math.max(max, v);
  // Whole numbers of tasks get whole gridlines.
  if (!options.digits) max = 2 * Math.ceil(max / 2);
  const x = t => L + (W - L - R) * (t - from) / (now - from);
  const y = v => T + (H - T - B) * (1 - v / max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  for (const f of [0, 0.5, 1]) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), stroke: "#e5e7eb" }));
    root.append(svg("text", { x: 2, y: y(max * f) + 3 }, (max * f).toFixed(options.digits || 0)));
  }
  for (const m of [60, 30, 0]) root.append(svg("text", { x: x(now - m * 60000) - 10, y: H - 6 }, m ? `-${m} min` : "now"));
  for (const s of series) {
    const pts = s.points.filter(([t]) => t >= from).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    if (pts.length === 1) pts.push(pts[0]);
    if (pts.length) root.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dashed ? "4 3" : (s.dash || "none") }));
  }
  const legend = el("div", { class: "legend" }, series.map(s => el("span", {}, el("span", { class: "dot", style: `background:${s.color}` }), s.name)));
  return [root, legend];
}

// A cap as a dashed line across the whole window: it held before the first
// sample too.
function capLine(value) {
  const now = Date.now();
  return { name: "cap", color: "#dc2626", dashed: true, points: [[now - 3599 * 1000, value], [now, value]] };
}

function renderCharts(samples, status) {
  const queues = status.queues.map(q => q.name);
  const perQueue = key => queues.map((q, n) => ({
    name: q, color: COLORS[n % COLORS.length],
    points: samples.map(s => [s.at, (s.queues.find(x => x.name === q) || {})[key] || 0]),
  }));
  replace("chart-queues", chart(perQueue("pending"), { min_max: 2 }));
  replace("chart-waits", chart(perQueue("oldest-wait-secs").map(s => ({ ...s, points: s.points.map(([t, v]) => [t, v / 60]) })),
    { min_max: 1, digits: 1 }));
  replace("chart-instances", chart([
    { name: "alive", color: COLORS[0], points: samples.map(s => [s.at, s.booting + s.running + s.stopping]) },
    { name: "booting", color: COLORS[1], points: samples.map(s => [s.at, s.booting]) },
    capLine(status.limits["max-instances"]),
  ], { min_max: status.limits["max-instances"] }));
  // Per resource: alive machines, and how many of them are busy.
  const resourceOf = (s, name) => (s.resources || []).find(r => r.name === name) || {};
  const perResource = status.resources.flatMap((r, n) => [
    { name: r.name, color: COLORS[n % COLORS.length],
      points: samples.map(s => { const x = resourceOf(s, r.name); return [s.at, (x.booting || 0) + (x.busy || 0) + (x.idle || 0) + (x.stopping || 0)]; }) },
    { name: `${r.name} busy`, color: COLORS[n % COLORS.length], dash: "2 2",
      points: samples.map(s => [s.at, resourceOf(s, r.name).busy || 0]) },
  ]);
  replace("chart-resources", chart(perResource, { min_max: 2 }));
  const cap = status.limits["max-cost-per-hour"];
  replace("chart-cost", chart([
    { name: "cost/h", color: COLORS[0], points: samples.map(s => [s.at, s["cost-per-hour"]]) },
    capLine(cap),
  ], { min_max: cap, digits: 2 }));
}

async function refreshLog() {
  const logs = await getJSON("/api/v2/logs?after=" + logNext);
  logNext = logs.next;
  if (!logs.lines.length) return;
  const pre = document.getElementById("log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(logs.lines.map(l => l.line).join("\n") + "\n");
  while (pre.childNodes.length > 500) pre.removeChild(pre.firstChild);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function refresh() {
  try {
    const [status, samples, decisions] = await Promise.all([
      getJSON("/api/v2/status"), getJSON("/api/v2/history"), getJSON("/api/v2/decisions?acted=true&limit=30"),
    ]);
    renderHeader(status);
    renderActions(status);
    renderSummary(status);
    renderFleet(status);
    renderCharts(samples, status);
    renderDecisions(decisions);
    renderFailures(status);
    renderPolicies(status);
    await refreshWhy();
    await refreshLog();
    document.getElementById("error").hidden = true;
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    const footer = document.getElementById("error");
    footer.hidden = false;
    footer.textContent = "cannot reach flockd: " + e.message;
  }
}

document.getElementById("why-close").addEventListener("click", () => {
  whyInstance = null;
  document.getElementById("why").hidden = true;
});

async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_MS);
}
loop();
