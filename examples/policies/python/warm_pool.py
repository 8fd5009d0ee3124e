"""Warm pool: keep a few idle machines of one resource ready during working
hours, so the first task of the morning starts in seconds instead of waiting
for a machine to boot, and keep none at night, so nobody pays for idle
machines while the office sleeps.

During working hours it
- launches machines until `warm` of them are spare: idle, or booting, or
  already planned, beyond what the pending tasks of the resource's queues
  will take;
- takes back idle-terminations planned by earlier policies (e.g. the
  built-in `idle` policy) that would drain the pool below `warm`.

Outside working hours it terminates idle machines of the resource that the
pending tasks do not need, longest idle first, once they have been idle for
`night-grace-minutes`. A busy machine is never terminated; neither is a
booting one (it is on its way to a task).

The only clock is `snapshot.now` (unix ms, UTC); the working hours are in
the local time given by `utc-offset-minutes`.

Settings (JSON, kebab-case; unknown keys are rejected):
- `resource` (required): the resource to keep warm.
- `warm` (default 1): spare machines wanted during working hours.
- `open-hour` (default 8), `close-hour` (default 18): working hours, local
  time, from open-hour:00 up to close-hour:00. May wrap midnight
  (open-hour 22, close-hour 6: the night shift belongs to the day it started).
- `weekdays` (default mon..fri): the days the working hours apply to.
- `utc-offset-minutes` (default 0): local time minus UTC, e.g. 60 for CET,
  -300 for US Eastern standard time. Fixed: no daylight-saving rules.
- `night-grace-minutes` (default 10): at night, an idle machine is kept
  this long after its last task, in case another one follows.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    InstanceState,
    Launch,
    LogLevel,
    Plan,
    Snapshot,
    Termination,
    TerminationCause,
)

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
KNOWN_KEYS = {
    "resource",
    "warm",
    "open-hour",
    "close-hour",
    "weekdays",
    "utc-offset-minutes",
    "night-grace-minutes",
}


@dataclass(frozen=True)
class Settings:
    resource: str
    warm: int
    open_hour: int
    close_hour: int
    weekdays: frozenset
    utc_offset_minutes: int
    night_grace_minutes: int


def parse_settings(text: str) -> Settings:
    """Checks every key; raises ValueError saying what is wrong and how to fix it."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"settings are not valid JSON: {e}")
    if not isinstance(raw, dict):
        raise ValueError("settings must be a table (JSON object)")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}")

    def integer(key, default, low, high):
        value = raw.get(key, default)
        # bool is an int in Python; `warm = true` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{key} must be a whole number from {low} to {high}, got {value!r}")
        return value

    resource = raw.get("resource")
    if not isinstance(resource, str) or not resource:
        raise ValueError("resource is required: the name of the resource to keep warm, e.g. resource = \"cpu\"")
    open_hour = integer("open-hour", 8, 0, 23)
    close_hour = integer("close-hour", 18, 0, 23)
    if open_hour == close_hour:
        raise ValueError(f"open-hour equals close-hour ({open_hour}), which leaves no working hours")
    days = raw.get("weekdays", WEEKDAYS[:5])
    if not isinstance(days, list) or not days or any(d not in WEEKDAYS for d in days):
        raise ValueError(f"weekdays must be a non-empty list of {', '.join(WEEKDAYS)}; got {days!r}")
    return Settings(
        resource=resource,
        warm=integer("warm", 1, 0, 1000),
        open_hour=open_hour,
        close_hour=close_hour,
        weekdays=frozenset(WEEKDAYS.index(d) for d in days),
        utc_offset_minutes=integer("utc-offset-minutes", 0, -720, 840),
        night_grace_minutes=integer("night-grace-minutes", 10, 0, 24 * 60),
    )


def working_hours(s: Settings, now_ms: int):
    """(whether `now` is within working hours, the local time as text)."""
    local = datetime.fromtimestamp(now_ms / 1000, tz=timezone(timedelta(minutes=s.utc_offset_minutes)))
    day, hour = local.weekday(), local.hour
    if s.open_hour < s.close_hour:
        working = day in s.weekdays and s.open_hour <= hour < s.close_hour
    else:
        # A window across midnight: the hours after midnight belong to the
        # previous day's shift.
        working = (day in s.weekdays and hour >= s.open_hour) or (
            (day - 1) % 7 in s.weekdays and hour < s.close_hour
        )
    offset = s.utc_offset_minutes
    sign = "+" if offset >= 0 else "-"
    label = f"{WEEKDAYS[day]} {local:%H:%M} UTC{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    return working, label


def log(message: str):
    host.log(LogLevel.INFO, f"warm-pool: {message}")


class WitWorld(wit_world.WitWorld):
    # A fresh instance is made for every call and `configure` always comes
    # first, so this is never stale.
    settings = None

    def configure(self, settings: str) -> None:
        try:
            WitWorld.settings = parse_settings(settings)
        except ValueError as e:
            raise Err(str(e))

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        s = WitWorld.settings
        resource = next((r for r in snapshot.resources if r.name == s.resource), None)
        if resource is None:
            known = ", ".join(r.name for r in snapshot.resources) or "none"
            raise Err(f"resource {s.resource!r} is not configured (resources: {known}); fix `resource` in the settings")
        working, when = working_hours(s, snapshot.now)
        mine = [i for i in snapshot.instances if i.resource == s.resource]
        # Tasks the resource's machines will pick up before they count as spare.
        demand = sum(q.pending for q in snapshot.queues if s.resource in q.resources)
        if working:
            return keep_warm(s, resource, snapshot, plan, mine, demand, when)
        return cool_down(s, snapshot, plan, mine, demand, when)


def is_idle(instance) -> bool:
    return instance.state == InstanceState.RUNNING and not instance.busy


def keep_warm(s, resource, snapshot, plan, mine, demand, when) -> Plan:
    planned_off = {t.instance for t in plan.terminations}
    idle = [i for i in mine if is_idle(i) and i.id not in planned_off]
    booting = sum(1 for i in mine if i.state == InstanceState.BOOTING)
    planned = sum(l.count for l in plan.launches if l.resource == s.resource)
    spare = len(idle) + booting + planned - demand

    # Spare machines about to be terminated for idleness come back first:
    # keeping one is cheaper than booting another.
    if spare < s.warm:
        ours = {i.id: i for i in mine if is_idle(i)}
        kept = []
        for t in plan.terminations:
            if spare < s.warm and t.instance in ours and t.cause == TerminationCause.IDLE:
                kept.append(t.instance)
                spare += 1
        if kept:
            log(f"kept idle {', '.join(kept)} on {s.resource}: the warm pool wants {s.warm} spare ({when})")
            plan.terminations = [t for t in plan.terminations if t.instance not in kept]

    alive = sum(1 for i in mine if i.state != InstanceState.STOPPING)
    room = max(0, resource.max_instances - alive - planned)
    missing = min(s.warm - spare, room)
    if missing > 0:
        reason = (
            f"warm pool: {s.warm} spare {s.resource} wanted during working hours ({when}), "
            f"{max(spare, 0)} spare after {demand} pending task(s)"
        )
        plan.launches.append(Launch(resource=s.resource, count=missing, reason=reason))
    return plan


def cool_down(s, snapshot, plan, mine, demand, when) -> Plan:
    planned_off = {t.instance for t in plan.terminations}
    grace_ms = s.night_grace_minutes * 60_000
    # Longest idle first; machines inside their grace period are not
    # candidates at all.
    candidates = sorted(
        (
            i
            for i in mine
            if is_idle(i)
            and i.id not in planned_off
            and i.idle_since is not None
            and snapshot.now - i.idle_since >= grace_ms
        ),
        key=lambda i: i.idle_since,
    )
    # Pending tasks go to booting machines and to machines still in their
    # grace period first; the most recently idle candidates take the rest.
    candidate_ids = {i.id for i in candidates}
    others = sum(1 for i in mine if i.state == InstanceState.BOOTING or (is_idle(i) and i.id not in candidate_ids))
    needed = max(0, demand - others)
    surplus = candidates[: max(0, len(candidates) - needed)]
    for i in surplus:
        idle_minutes = (snapshot.now - i.idle_since) // 60_000
        plan.terminations.append(
            Termination(
                instance=i.id,
                cause=TerminationCause.IDLE,
                reason=f"warm pool: outside working hours ({when}), no spare {s.resource} wanted; idle {idle_minutes} min",
            )
        )
    return plan
