//! Queue-depth scale-up: launch enough instances for the work that is waiting.
//!
//! Per queue (in snapshot order):
//! `needed = pending − external-idle-workers − idle − booting − planned`, where
//! idle, booting and planned count flockd capacity that serves the queue:
//! running instances whose worker is idle, booting instances, and launches
//! already in the plan from policies before this one. Each such instance (or
//! planned launch) is counted for at most one queue, so a resource serving two
//! queues is not counted twice; a queue takes capacity that serves the fewest
//! queues first. Instances the plan already terminates are not capacity.
//!
//! `needed` is then filled across the queue's `resources` in preference order,
//! each taking at most its room (max-instances − alive − already planned), so
//! the total never exceeds `needed`: 3 pending over [A max 2, B max 5] gives
//! 2 × A + 1 × B. A resource with a `capacity`, `quota` or `auth` failure
//! less than `cool-off-secs` ago is skipped so the next one gets the work
//! (spot → on-demand fallback), and a resource whose credentials or
//! permissions are wrong is not hammered every tick.
//!
//! Settings (JSON, kebab-case):
//! - `cool-off-secs` (default 300): how long a capacity/quota/auth failure
//!   keeps a resource out of consideration.
//! - `max-launches-per-tick` (default: unlimited): cap on the instances this
//!   policy launches in one tick, over all queues; earlier queues go first.
//! - `spill-after-secs` (default: none): resource → seconds. Such a resource
//!   (the cloud, beside on-premise workers or a local pool listed before it)
//!   is launched for a queue only once the queue's oldest task has waited
//!   that long: until then the work is left to the workers already there.

use std::collections::BTreeMap;

use flockd_policy::{FailureKind, InstanceState, Plan, Policy, Snapshot, info};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub cool_off_secs: u64,
    pub max_launches_per_tick: Option<u32>,
    pub spill_after_secs: BTreeMap<String, u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { cool_off_secs: 300, max_launches_per_tick: None, spill_after_secs: BTreeMap::new() }
    }
}

pub struct ScaleUp {
    settings: Settings,
}

impl Policy for ScaleUp {
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        Ok(ScaleUp { settings })
    }

    fn decide(&self, snapshot: &Snapshot, mut plan: Plan) -> Result<Plan, String> {
        let mut spare = SpareCapacity::count(snapshot, &plan);
        let alive_counts = snapshot.alive_counts();
        let mut launches_left = self.settings.max_launches_per_tick.unwrap_or(u32::MAX);
        for queue in &snapshot.queues {
            let uncovered = queue.pending.saturating_sub(queue.external_idle_workers);
            let claimed = spare.claim(&queue.name, uncovered);
            let mut needed = uncovered - claimed.total();
            if needed == 0 {
                continue;
            }
            let mut head = format!(
                "queue {}: {} pending, {} external idle, {} idle, {} booting",
                queue.name, queue.pending, queue.external_idle_workers, claimed.0[IDLE], claimed.0[BOOTING]
            );
            if claimed.0[PLANNED] > 0 {
                head += &format!(", {} already planned", claimed.0[PLANNED]);
            }
            let mut skipped = Vec::new();
            for name in &queue.resources {
                if needed == 0 || launches_left == 0 {
                    break;
                }
                let Some(resource) = snapshot.resource(name) else {
                    skipped.push(format!("{name}: unknown resource"));
                    continue;
                };
                if let Some(why) = self.cooling_off(snapshot, name) {
                    skipped.push(why);
                    continue;
                }
                if let Some(&after) = self.settings.spill_after_secs.get(name)
                    && queue.oldest_wait_ms < after.saturating_mul(1000)
                {
                    skipped.push(format!(
                        "{name}: the oldest task has waited {} s, under spill-after-secs {after}",
                        queue.oldest_wait_ms / 1000
                    ));
                    continue;
                }
                let alive = alive_counts.get(name.as_str()).copied().unwrap_or(0);
                let room = resource.max_instances.saturating_sub(alive).saturating_sub(plan.launch_count(name));
                if room == 0 {
                    skipped.push(format!("{name}: full ({alive} alive of max {})", resource.max_instances));
                    continue;
                }
                let count = needed.min(room).min(launches_left);
                let mut reason = format!("{head} → {count} of {name} (max {}, {alive} alive)", resource.max_instances);
                if !skipped.is_empty() {
                    reason += &format!("; skipped {}", skipped.join("; "));
                }
                plan.launch(name, count, reason);
                needed -= count;
                launches_left -= count;
            }
            if needed > 0 {
                let why = if launches_left == 0 {
                    format!("max-launches-per-tick {} reached", self.settings.max_launches_per_tick.unwrap_or(0))
                } else if skipped.is_empty() {
                    "no resource of the queue has room left".to_string()
                } else {
                    format!("no room left; skipped {}", skipped.join("; "))
                };
                info(&format!("{head}: {needed} more needed than launched ({why})"));
            }
        }
        Ok(plan)
    }
}

impl ScaleUp {
    /// Why `resource` is skipped for a recent capacity, quota or auth failure, if it is.
    fn cooling_off(&self, snapshot: &Snapshot, resource: &str) -> Option<String> {
        let cool_off_ms = self.settings.cool_off_secs.saturating_mul(1000);
        snapshot
            .failures
            .iter()
            .rev()
            .filter(|f| {
                f.resource == resource
                    && matches!(f.kind, FailureKind::Capacity | FailureKind::Quota | FailureKind::Auth)
            })
            .find(|f| snapshot.now.saturating_sub(f.at) < cool_off_ms)
            .map(|f| {
                let kind = match f.kind {
                    FailureKind::Capacity => "capacity",
                    FailureKind::Quota => "quota",
                    _ => "authorization",
                };
                format!(
                    "{resource}: {kind} failure {} s ago (cool-off {} s)",
                    snapshot.secs_since(f.at),
                    self.settings.cool_off_secs
                )
            })
    }
}

/// flockd capacity that is not yet working, per resource: idle instances,
/// booting instances and launches planned by earlier policies (in that order
/// of preference). Each unit is handed to one queue only.
struct SpareCapacity<'a> {
    resources: Vec<SpareOfResource<'a>>,
    /// Queue → indexes into `resources` that serve it, in `resources`
    /// order, so a claim touches only its queue's resources (a scan of all
    /// of them per queue is quadratic at 1,000 queues).
    by_queue: BTreeMap<&'a str, Vec<usize>>,
}

const IDLE: usize = 0;
const BOOTING: usize = 1;
const PLANNED: usize = 2;

struct SpareOfResource<'a> {
    queues: Vec<&'a str>,
    units: [u32; 3],
}

/// Units claimed for one queue, indexed like [`SpareOfResource::units`].
struct Claimed([u32; 3]);

impl Claimed {
    fn total(&self) -> u32 {
        self.0.iter().sum()
    }
}

impl<'a> SpareCapacity<'a> {
    fn count(snapshot: &'a Snapshot, plan: &Plan) -> Self {
        let mut served = snapshot.served_queues();
        let terminating = plan.terminating();
        let mut units: BTreeMap<&str, [u32; 3]> = BTreeMap::new();
        for instance in snapshot.instances.iter().filter(|i| i.is_alive() && !terminating.contains(&i.id)) {
            let of_resource = units.entry(instance.resource.as_str()).or_default();
            if instance.is_idle() {
                of_resource[IDLE] += 1;
            } else if instance.state == InstanceState::Booting {
                of_resource[BOOTING] += 1;
            }
        }
        for launch in &plan.launches {
            units.entry(launch.resource.as_str()).or_default()[PLANNED] += launch.count;
        }
        let mut resources: Vec<SpareOfResource<'a>> = snapshot
            .resources
            .iter()
            .map(|r| SpareOfResource {
                queues: served.remove(r.name.as_str()).unwrap_or_default(),
                units: units.get(r.name.as_str()).copied().unwrap_or_default(),
            })
            .collect();
        // Capacity that serves few queues goes first, leaving versatile
        // capacity for queues that may have no other.
        resources.sort_by_key(|r| r.queues.len());
        let mut by_queue: BTreeMap<&'a str, Vec<usize>> = BTreeMap::new();
        for (index, resource) in resources.iter().enumerate() {
            for queue in &resource.queues {
                by_queue.entry(*queue).or_default().push(index);
            }
        }
        SpareCapacity { resources, by_queue }
    }

    /// Takes up to `wanted` units serving `queue`: idle first, then booting,
    /// then planned.
    fn claim(&mut self, queue: &str, wanted: u32) -> Claimed {
        let mut claimed = Claimed([0; 3]);
        let mut left = wanted;
        let Some(indexes) = self.by_queue.get(queue) else { return claimed };
        for kind in [IDLE, BOOTING, PLANNED] {
            for &index in indexes {
                let resource = &mut self.resources[index];
                let take = left.min(resource.units[kind]);
                resource.units[kind] -= take;
                claimed.0[kind] += take;
                left -= take;
            }
        }
        claimed
    }
}

flockd_policy::export_policy!(ScaleUp);

#[cfg(test)]
mod tests;
