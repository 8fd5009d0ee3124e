//! Idle shutdown: terminate instances whose worker has had nothing to do for
//! too long.
//!
//! Only `running` instances whose worker is idle are candidates: a busy,
//! booting or stopping instance is never terminated. Per resource, the
//! `min-idle` most recently idle instances are kept warm; the others are
//! terminated (cause `idle`) once idle for more than `max-idle-secs`. An
//! instance serving a queue that still has pending tasks not covered by
//! external idle workers is spared (one instance per pending task), so a
//! worker about to pick up a task that just arrived is not shut down under it.
//!
//! Settings (JSON, kebab-case):
//! - `max-idle-secs` (default 600): idle time after which an instance goes.
//! - `min-idle` (default 0): idle instances kept warm per resource.
//! - `resources` (default none): per-resource overrides,
//!   `{ "<resource>": { "max-idle-secs": .., "min-idle": .. } }`, either key
//!   optional.
//! - `spare-for-pending` (default true): the pending-task guard above.

use std::collections::BTreeMap;

use flockd_policy::{Instance, Plan, Policy, Snapshot, Termination, TerminationCause, warn};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub max_idle_secs: u64,
    pub min_idle: u32,
    pub resources: BTreeMap<String, ResourceSettings>,
    pub spare_for_pending: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { max_idle_secs: 600, min_idle: 0, resources: BTreeMap::new(), spare_for_pending: true }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ResourceSettings {
    pub max_idle_secs: Option<u64>,
    pub min_idle: Option<u32>,
}

pub struct Idle {
    settings: Settings,
}

impl Policy for Idle {
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        Ok(Idle { settings })
    }

    fn decide(&self, snapshot: &Snapshot, mut plan: Plan) -> Result<Plan, String> {
        for name in self.settings.resources.keys() {
            if snapshot.resource(name).is_none() {
                warn(&format!("idle: settings name resource {name:?}, which is not configured"));
            }
        }
        // Pending tasks per queue that no external worker covers; idle
        // instances that stay take them first, then the guard spares others.
        let mut uncovered: BTreeMap<&str, u32> = snapshot
            .queues
            .iter()
            .map(|q| (q.name.as_str(), q.pending.saturating_sub(q.external_idle_workers)))
            .collect();
        let served = snapshot.served_queues();
        let mut take_pending = |resource: &str| {
            let Some(queues) = served.get(resource) else { return false };
            for queue in queues {
                if let Some(pending) = uncovered.get_mut(queue)
                    && *pending > 0
                {
                    *pending -= 1;
                    return true;
                }
            }
            false
        };
        let terminating = plan.terminating();
        let mut idle_by_resource: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
        for instance in snapshot.instances.iter().filter(|i| i.is_idle() && !terminating.contains(&i.id)) {
            idle_by_resource.entry(instance.resource.as_str()).or_default().push(instance);
        }
        let mut overdue = Vec::new();
        for resource in &snapshot.resources {
            let (max_idle_secs, min_idle) = self.limits(&resource.name);
            let mut idle = idle_by_resource.remove(resource.name.as_str()).unwrap_or_default();
            // Most recently idle first: those are the ones kept warm. No
            // idle-since means it just became idle.
            idle.sort_by_key(|i| std::cmp::Reverse(i.idle_since.unwrap_or(snapshot.now)));
            let idle_count = idle.len();
            for (rank, instance) in idle.into_iter().enumerate() {
                let idle_secs = snapshot.secs_since(instance.idle_since.unwrap_or(snapshot.now));
                if rank < min_idle as usize || idle_secs <= max_idle_secs {
                    take_pending(&resource.name);
                    continue;
                }
                let reason = format!(
                    "idle {idle_secs} s > max-idle-secs {max_idle_secs} ({}: {idle_count} idle, min-idle {min_idle})",
                    resource.name
                );
                overdue.push((instance, reason));
            }
        }
        for (instance, reason) in overdue {
            if self.settings.spare_for_pending && take_pending(&instance.resource) {
                continue;
            }
            // Not yet terminated (filtered above), so push directly: `terminate`
            // would scan the list for every instance.
            plan.terminations.push(Termination {
                instance: instance.id.clone(),
                cause: TerminationCause::Idle,
                reason,
            });
        }
        Ok(plan)
    }
}

impl Idle {
    /// (max-idle-secs, min-idle) for `resource`, overrides applied.
    fn limits(&self, resource: &str) -> (u64, u32) {
        let over = self.settings.resources.get(resource);
        (
            over.and_then(|o| o.max_idle_secs).unwrap_or(self.settings.max_idle_secs),
            over.and_then(|o| o.min_idle).unwrap_or(self.settings.min_idle),
        )
    }
}

flockd_policy::export_policy!(Idle);

#[cfg(test)]
mod tests;
