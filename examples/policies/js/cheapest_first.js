// Cheapest first: serve each queue with the cheapest resource that can.
//
// Earlier policies (e.g. the built-in scale-up) plan launches in each
// queue's order of preference. This policy moves every launch made for
// pending work to the cheapest resources that serve the same queues and
// have room, so a queue served by both a spot and an on-demand machine type
// gets spot machines while spot has capacity. Launches that are not for
// pending work (a warm pool, say) are left alone.
//
// A resource that recently failed to launch for lack of capacity or quota
// is skipped for `failure-cooldown-secs`, so the policy does not steer
// launches back to a sold-out spot market the scale-up policy just left.
//
// Settings (JSON, kebab-case; unknown keys are rejected):
// - `failure-cooldown-secs` (default 600): how long a capacity or quota
//   failure rules a resource out.
// - `queues` (default: every queue): only launches for these queues move.
//
// Types: u64 fields (times) arrive as BigInt, enums as strings
// ("on-demand", "capacity"), options as the value or undefined.

import { log } from "flockd:policy/host@0.1.0";

const KNOWN_KEYS = ["failure-cooldown-secs", "queues"];

let settings = null;

function parseSettings(text) {
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw `settings are not valid JSON: ${e.message}`;
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw "settings must be a table (JSON object)";
  }
  const unknown = Object.keys(raw).filter((k) => !KNOWN_KEYS.includes(k));
  if (unknown.length > 0) {
    throw `unknown setting(s) ${unknown.join(", ")}; known: ${KNOWN_KEYS.join(", ")}`;
  }
  const cooldown = raw["failure-cooldown-secs"] ?? 600;
  if (!Number.isInteger(cooldown) || cooldown < 0) {
    throw `failure-cooldown-secs must be a whole number of seconds, 0 or more; got ${JSON.stringify(cooldown)}`;
  }
  const queues = raw.queues ?? null;
  if (queues !== null && (!Array.isArray(queues) || queues.some((q) => typeof q !== "string"))) {
    throw `queues must be a list of queue names; got ${JSON.stringify(queues)}`;
  }
  return { cooldownMs: BigInt(cooldown) * 1000n, queues: queues && new Set(queues) };
}

// Called on every fresh instance before `decide`; a thrown string becomes
// the `err` the host reports.
export function configure(text) {
  settings = parseSettings(text);
}

export function decide(snapshot, plan) {
  const resources = new Map(snapshot.resources.map((r) => [r.name, r]));
  const pending = new Map(snapshot.queues.map((q) => [q.name, q.pending]));
  // Preference order of each resource in the queues it serves: ties in price
  // keep the order the operator configured.
  const rank = new Map();
  for (const q of snapshot.queues) {
    q.resources.forEach((r, i) => rank.set(r, Math.min(rank.get(r) ?? Infinity, i)));
  }
  const coolingDown = new Set(
    snapshot.failures
      .filter((f) => (f.kind === "capacity" || f.kind === "quota") && snapshot.now - f.at < settings.cooldownMs)
      .map((f) => f.resource),
  );

  // Room left per resource: its cap minus machines alive and launches
  // already planned (ours are re-added as they are placed).
  const room = new Map();
  for (const r of snapshot.resources) room.set(r.name, r.maxInstances);
  for (const i of snapshot.instances) {
    if (i.state !== "stopping") room.set(i.resource, (room.get(i.resource) ?? 0) - 1);
  }
  for (const l of plan.launches) room.set(l.resource, (room.get(l.resource) ?? 0) - l.count);

  const launches = [];
  for (const launch of plan.launches) {
    const origin = resources.get(launch.resource);
    // The queues this launch works for: those of its resource with pending tasks.
    const served = origin ? origin.queues.filter((q) => (pending.get(q) ?? 0) > 0) : [];
    const movable = served.length > 0 && (settings.queues === null || served.every((q) => settings.queues.has(q)));
    if (!movable) {
      launches.push(launch);
      continue;
    }
    // Any resource serving every one of those queues can do the same work.
    const candidates = snapshot.resources
      .filter((r) => served.every((q) => r.queues.includes(q)))
      .filter((r) => r.name === launch.resource || !coolingDown.has(r.name))
      .sort((a, b) => a.pricePerHour - b.pricePerHour || (rank.get(a.name) ?? 0) - (rank.get(b.name) ?? 0));
    // Give the launch's own room back before placing it again.
    room.set(launch.resource, room.get(launch.resource) + launch.count);
    let left = launch.count;
    for (const r of candidates) {
      if (left === 0) break;
      const take = r.name === launch.resource ? left : Math.min(left, Math.max(0, room.get(r.name)));
      if (take === 0) continue;
      room.set(r.name, room.get(r.name) - take);
      left -= take;
      const reason =
        r.name === launch.resource
          ? launch.reason
          : `cheapest first: ${take} × ${r.name} at ${price(r)} instead of ${launch.resource} at ${price(origin)} ` +
            `for ${served.join(", ")} (was: ${launch.reason})`;
      launches.push({ resource: r.name, count: take, reason });
    }
    if (left > 0) {
      // Unreachable while the launch's own resource is a candidate; kept so
      // a launch is never silently dropped.
      launches.push({ resource: launch.resource, count: left, reason: launch.reason });
    }
  }
  const moved = launches.filter((l) => l.reason.startsWith("cheapest first:"));
  for (const l of moved) log("info", l.reason);
  return { launches: merge(launches), terminations: plan.terminations };
}

function price(r) {
  return `${r.pricePerHour.toFixed(2)}/h`;
}

// One launch per resource keeps the journal readable; reasons are joined.
function merge(launches) {
  const byResource = new Map();
  for (const l of launches) {
    const seen = byResource.get(l.resource);
    if (seen) {
      seen.count += l.count;
      if (!seen.reason.includes(l.reason)) seen.reason += `; ${l.reason}`;
    } else {
      byResource.set(l.resource, { ...l });
    }
  }
  return [...byResource.values()];
}
