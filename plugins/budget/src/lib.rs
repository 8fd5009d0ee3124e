//! Budget: trim planned launches until every cap holds.
//!
//! Caps, applied in this order, each counting alive instances (booting or
//! running; `stopping` ones are on their way out) plus the launches left after
//! the previous cap:
//! 1. each resource's `max-instances`;
//! 2. the global `budget.max-instances`;
//! 3. `budget.max-cost-per-hour`, against `budget.cost-per-hour` (what the
//!    alive fleet costs now, as the host reports it) plus each launch's
//!    count × its resource's `price-per-hour`.
//!
//! Planned terminations free no room: the instances are alive until they are
//! gone. Terminations are never touched.
//!
//! The least preferred launch is trimmed first: the one whose resource ranks
//! lowest in the queues' preference lists (its best position in any queue's
//! `resources`), and among equals the one later in the plan. Counts are
//! reduced rather than whole launches dropped; a launch reduced to 0 is
//! removed. Each trim is logged to the host with the numbers behind it, and a
//! launch that survives reduced gets a note appended to its reason.
//!
//! Settings: none (`{}` or empty). The caps come from the snapshot.

use std::collections::BTreeMap;

use flockd_policy::{Launch, Plan, Policy, Snapshot, info};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {}

pub struct BudgetPolicy;

impl Policy for BudgetPolicy {
    type Settings = Settings;

    fn new(_settings: Settings) -> Result<Self, String> {
        Ok(BudgetPolicy)
    }

    fn decide(&self, snapshot: &Snapshot, mut plan: Plan) -> Result<Plan, String> {
        let mut trimmer = Trimmer::new(snapshot, &plan);

        let alive_counts = snapshot.alive_counts();
        for resource in &snapshot.resources {
            let alive = alive_counts.get(resource.name.as_str()).copied().unwrap_or(0);
            let planned = plan.launch_count(&resource.name);
            let excess = (alive + planned).saturating_sub(resource.max_instances);
            if excess > 0 {
                let why = format!(
                    "{} max-instances {} with {alive} alive and {planned} planned",
                    resource.name, resource.max_instances
                );
                trimmer.trim(&mut plan, excess, &why, |launch| launch.resource == resource.name);
            }
        }

        let alive = snapshot.alive_total();
        let planned = plan.total_launches();
        let limit = snapshot.budget.max_instances;
        let excess = (alive + planned).saturating_sub(limit);
        if excess > 0 {
            let why = format!("budget max-instances {limit} with {alive} alive and {planned} planned");
            trimmer.trim(&mut plan, excess, &why, |_| true);
        }

        let cost_now = snapshot.budget.cost_per_hour;
        let cost_planned = plan.launch_cost_per_hour(snapshot);
        let cap = snapshot.budget.max_cost_per_hour;
        if cost_now + cost_planned > cap + COST_EPSILON {
            let why =
                format!("budget max-cost-per-hour {cap:.2} with {cost_now:.2}/h alive and {cost_planned:.2}/h planned");
            trimmer.trim_cost(snapshot, &mut plan, cost_now + cost_planned - cap, &why);
        }

        trimmer.finish(&mut plan);
        Ok(plan)
    }
}

/// Prices are decimals; don't trim a launch for a rounding error.
const COST_EPSILON: f64 = 1e-9;

/// Trims launches least preferred first and remembers what it did to each.
struct Trimmer {
    /// Launch indices, least preferred first.
    order: Vec<usize>,
    /// Per launch: its count before budget and the caps that trimmed it.
    notes: Vec<(u32, Vec<String>)>,
}

impl Trimmer {
    fn new(snapshot: &Snapshot, plan: &Plan) -> Self {
        // A resource's rank: its best position in any queue's preference list.
        let mut rank: BTreeMap<&str, usize> = BTreeMap::new();
        for queue in &snapshot.queues {
            for (position, resource) in queue.resources.iter().enumerate() {
                let best = rank.entry(resource.as_str()).or_insert(position);
                *best = (*best).min(position);
            }
        }
        let rank_of = |resource: &str| rank.get(resource).copied().unwrap_or(usize::MAX);
        let mut order: Vec<usize> = (0..plan.launches.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse((rank_of(&plan.launches[i].resource), i)));
        let notes = plan.launches.iter().map(|l| (l.count, Vec::new())).collect();
        Trimmer { order, notes }
    }

    /// Removes `excess` instances from the launches `applies` to.
    fn trim(&mut self, plan: &mut Plan, mut excess: u32, why: &str, applies: impl Fn(&Launch) -> bool) {
        for &i in &self.order {
            let launch = &mut plan.launches[i];
            if excess == 0 {
                break;
            }
            if !applies(launch) || launch.count == 0 {
                continue;
            }
            let cut = excess.min(launch.count);
            excess -= cut;
            record_cut(&mut self.notes, launch, i, cut, why);
        }
    }

    /// Removes the fewest instances, least preferred first, that bring the
    /// plan's cost down by `over` per hour.
    fn trim_cost(&mut self, snapshot: &Snapshot, plan: &mut Plan, mut over: f64, why: &str) {
        for &i in &self.order {
            if over <= COST_EPSILON {
                break;
            }
            let launch = &mut plan.launches[i];
            let price = snapshot.resource(&launch.resource).map_or(0.0, |r| r.price_per_hour);
            if price <= 0.0 || launch.count == 0 {
                continue;
            }
            let cut = ((over - COST_EPSILON) / price).ceil().min(f64::from(launch.count)) as u32;
            over -= f64::from(cut) * price;
            record_cut(&mut self.notes, launch, i, cut, why);
        }
    }

    /// Notes what was trimmed on launches that survive and drops empty ones.
    fn finish(self, plan: &mut Plan) {
        for (launch, (before, whys)) in plan.launches.iter_mut().zip(self.notes) {
            if !whys.is_empty() && launch.count > 0 {
                launch.reason += &format!(" [budget: {before} → {}: {}]", launch.count, whys.join("; "));
            }
        }
        plan.launches.retain(|l| l.count > 0);
    }
}

/// Applies one trim: logs it, reduces the count and keeps the reason for
/// the note on the launch.
fn record_cut(notes: &mut [(u32, Vec<String>)], launch: &mut Launch, index: usize, cut: u32, why: &str) {
    info(&format!(
        "budget: trimmed {cut} of {} × {} (launch #{} of the plan): {why}",
        launch.count,
        launch.resource,
        index + 1
    ));
    launch.count -= cut;
    notes[index].1.push(why.to_string());
}

flockd_policy::export_policy!(BudgetPolicy);

#[cfg(test)]
mod tests;
