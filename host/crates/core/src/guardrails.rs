//! Hard limits the host enforces on whatever the policy chain asked for. A
//! plugin can ask for anything; it can never get past these.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{InstanceState, Launch, Plan, Snapshot, Termination};
use crate::spend::Periods;

/// Limits from the config, not from any plugin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HardLimits {
    pub max_instances: u32,
    pub max_cost_per_hour: f64,
    /// What a UTC day may cost: its spend so far plus the fleet's cost until
    /// midnight must stay within it.
    pub max_cost_per_day: Option<f64>,
    /// Likewise for the UTC calendar month.
    pub max_cost_per_month: Option<f64>,
}

/// What the guardrails let through, and a sentence per cut.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Clamped {
    pub plan: Plan,
    pub clamps: Vec<String>,
    /// The launches cut, by the cap that cut them (also in `clamps`, as
    /// sentences): what `simulate` counts to say why tasks waited.
    pub trims: Vec<Trim>,
}

/// A launch the caps cut short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Trim {
    pub resource: String,
    pub asked: u32,
    pub allowed: u32,
    pub by: Cap,
}

/// Which hard limit cut a launch (the tightest, when several did).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cap {
    /// The resource's own `max-instances`.
    ResourceInstances,
    /// `[limits] max-instances`.
    GlobalInstances,
    /// `[limits] max-cost-per-hour`.
    CostPerHour,
    /// `[limits] max-cost-per-day`.
    CostPerDay,
    /// `[limits] max-cost-per-month`.
    CostPerMonth,
}

/// Machines of this cluster that bill, or may, but are not in the snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Unlisted {
    /// Their resource is no longer configured: they still count against the
    /// global max, or renaming a resource would double the fleet.
    pub unmanaged: u32,
    /// What those bill per hour, at their resources' last known prices.
    pub unmanaged_cost_per_hour: f64,
    /// Resource → launches whose answer never came (a crash or a timeout
    /// cut the call): the machines may exist, so they count against every
    /// cap until the cloud lists them. A launch of that resource the plan
    /// asks for is that launch again, under its own key (the cloud hands
    /// back the machine if it made it), so it needs no room of its own.
    pub launching: BTreeMap<String, u32>,
}

/// Clamps `plan` to the limits. Every non-terminated instance counts,
/// stopping ones included: they bill until they are gone; so do the
/// `unlisted`. When `allow_terminations` is false (the observation failed or
/// is stale) no termination passes.
pub fn clamp(
    plan: &Plan,
    snapshot: &Snapshot,
    limits: &HardLimits,
    unlisted: &Unlisted,
    periods: &Periods,
    allow_terminations: bool,
) -> Clamped {
    let mut clamps = Vec::new();
    let mut trims = Vec::new();
    let mut alive: HashMap<&str, u32> = HashMap::new();
    let prices: HashMap<&str, f64> = snapshot.resources.iter().map(|r| (r.name.as_str(), r.price_per_hour)).collect();
    let mut cost = 0.0;
    let instances = snapshot.instances.iter().map(|i| (i.resource.as_str(), 1));
    for (resource, n) in instances.chain(unlisted.launching.iter().map(|(r, n)| (r.as_str(), *n))) {
        *alive.entry(resource).or_default() += n;
        cost += prices.get(resource).copied().unwrap_or(0.0) * f64::from(n);
    }
    let mut total: u32 = alive.values().sum::<u32>() + unlisted.unmanaged;
    cost += unlisted.unmanaged_cost_per_hour;

    let mut retries: HashMap<&str, u32> = unlisted.launching.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    let mut launches = Vec::new();
    for launch in &plan.launches {
        let Some(resource) = snapshot.resource(&launch.resource) else {
            clamps.push(format!("dropped launch of {} × unknown resource {:?}", launch.count, launch.resource));
            continue;
        };
        let retry = retries.get_mut(resource.name.as_str()).map_or(0, |left| {
            let retry = launch.count.min(*left);
            *left -= retry;
            retry
        });
        let have = alive.entry(resource.name.as_str()).or_default();
        let by_resource = resource.max_instances.saturating_sub(*have);
        let by_global = limits.max_instances.saturating_sub(total);
        let by_cost = if resource.price_per_hour > 0.0 {
            (((limits.max_cost_per_hour - cost) / resource.price_per_hour) + 1e-9).floor().max(0.0) as u32
        } else {
            u32::MAX
        };
        // A period's budget: what it has cost plus what the fleet costs
        // until it ends must stay within it.
        let by_period = |limit: Option<f64>, spent: f64, hours_left: f64| match limit {
            Some(limit) if resource.price_per_hour > 0.0 && hours_left > 0.0 => {
                let left = limit - spent - cost * hours_left;
                ((left / (resource.price_per_hour * hours_left)) + 1e-9).floor().max(0.0) as u32
            }
            _ => u32::MAX,
        };
        let by_day = by_period(limits.max_cost_per_day, periods.spent.today, periods.day_hours_left);
        let by_month = by_period(limits.max_cost_per_month, periods.spent.this_month, periods.month_hours_left);
        let new = (launch.count - retry).min(by_resource).min(by_global).min(by_cost).min(by_day).min(by_month);
        let allowed = retry + new;
        if allowed < launch.count {
            let (cap, room) = [
                (Cap::ResourceInstances, by_resource),
                (Cap::GlobalInstances, by_global),
                (Cap::CostPerHour, by_cost),
                (Cap::CostPerDay, by_day),
                (Cap::CostPerMonth, by_month),
            ]
            .into_iter()
            .min_by_key(|(_, room)| *room)
            .unwrap();
            let what = match cap {
                Cap::ResourceInstances => format!("{}'s max-instances {}", resource.name, resource.max_instances),
                Cap::GlobalInstances => format!("the global max-instances {}", limits.max_instances),
                Cap::CostPerHour => format!("the cost cap {:.2}/h (now {:.2}/h)", limits.max_cost_per_hour, cost),
                Cap::CostPerDay => format!(
                    "the daily budget {:.2} (spent {:.2} today, {:.2} more at {:.2}/h until midnight UTC)",
                    limits.max_cost_per_day.unwrap_or_default(),
                    periods.spent.today,
                    cost * periods.day_hours_left,
                    cost
                ),
                Cap::CostPerMonth => format!(
                    "the monthly budget {:.2} (spent {:.2} this month, {:.2} more at {:.2}/h until it ends)",
                    limits.max_cost_per_month.unwrap_or_default(),
                    periods.spent.this_month,
                    cost * periods.month_hours_left,
                    cost
                ),
            };
            clamps.push(format!(
                "launch of {} × {} cut to {allowed} by {what} (room {room})",
                launch.count, resource.name
            ));
            trims.push(Trim { resource: resource.name.clone(), asked: launch.count, allowed, by: cap });
        }
        if allowed > 0 {
            *have += new;
            total += new;
            cost += resource.price_per_hour * f64::from(new);
            launches.push(Launch { count: allowed, ..launch.clone() });
        }
    }

    // Maps, not a search per termination: a hostile plan may name every
    // instance of a large fleet.
    let instances: HashMap<&str, &crate::model::Instance> =
        snapshot.instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut terminating: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut terminations: Vec<Termination> = Vec::new();
    for t in &plan.terminations {
        let Some(instance) = instances.get(t.instance.as_str()) else {
            clamps.push(format!("dropped termination of unknown instance {:?}", t.instance));
            continue;
        };
        if !allow_terminations {
            clamps.push(format!(
                "kept {}: this tick's observation failed or is stale, so nothing is terminated",
                t.instance
            ));
        } else if instance.busy {
            clamps.push(format!("kept {}: its worker is running a task", t.instance));
        } else if instance.state == InstanceState::Stopping {
            clamps.push(format!("skipped {}: already stopping", t.instance));
        } else if !terminating.insert(t.instance.as_str()) {
            clamps.push(format!("skipped a second termination of {}", t.instance));
        } else {
            terminations.push(t.clone());
        }
    }
    Clamped { plan: Plan { launches, terminations }, clamps, trims }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            now: 1,
            resources: vec![
                Resource { name: "a".into(), max_instances: 2, price_per_hour: 1.0, ..Default::default() },
                Resource { name: "b".into(), max_instances: 5, price_per_hour: 3.0, ..Default::default() },
            ],
            instances: vec![Instance {
                id: "i-1".into(),
                resource: "a".into(),
                state: InstanceState::Running,
                launched_at: 0,
                worker: Some("w".into()),
                busy: true,
                idle_since: None,
                task: None,
            }],
            ..Default::default()
        }
    }

    fn launch(r: &str, n: u32) -> Launch {
        Launch { resource: r.into(), count: n, reason: "test".into() }
    }

    #[test]
    fn per_resource_global_and_cost_caps_all_hold() {
        let limits = HardLimits { max_instances: 4, max_cost_per_hour: 7.0, ..Default::default() };
        let plan =
            Plan { launches: vec![launch("a", 1_000_000), launch("b", 5), launch("zzz", 3)], terminations: vec![] };
        let out = clamp(&plan, &snapshot(), &limits, &Unlisted::default(), &Periods::default(), true);
        // a: 1 alive, max 2 → 1 more (cost 2/h). b: global room 2, cost room (7-2)/3 = 1.
        assert_eq!(out.plan.launches, vec![launch("a", 1), launch("b", 1)]);
        assert_eq!(out.clamps.len(), 3, "{:?}", out.clamps);
        assert!(out.clamps[1].contains("cost cap"), "{:?}", out.clamps);
        let trim = |resource: &str, asked, allowed, by| Trim { resource: resource.into(), asked, allowed, by };
        assert_eq!(
            out.trims,
            vec![trim("a", 1_000_000, 1, Cap::ResourceInstances), trim("b", 5, 1, Cap::CostPerHour)],
            "the unknown resource is no trim"
        );
    }

    /// A day's and a month's budget: spend so far plus the fleet's cost
    /// until the period ends, the new machines' included, stays within it.
    #[test]
    fn daily_and_monthly_budgets_count_the_spend_and_the_fleet_until_the_period_ends() {
        // The snapshot's fleet: one machine of a at 2/h. b costs 3/h.
        let plan = Plan { launches: vec![launch("b", 5)], terminations: vec![] };
        let spent = crate::spend::Spent { today: 70.0, this_month: 500.0 };
        let periods = Periods { spent, day_hours_left: 10.0, month_hours_left: 100.0 };
        let wide = HardLimits { max_instances: 100, max_cost_per_hour: 100.0, ..Default::default() };
        // 70 spent + 2/h × 10 h = 90; each b adds 30 by midnight: 130 leaves room for one.
        let day = HardLimits { max_cost_per_day: Some(130.0), ..wide.clone() };
        let out = clamp(&plan, &snapshot(), &day, &Unlisted::default(), &periods, true);
        assert_eq!(out.plan.launches, vec![launch("b", 1)], "{:?}", out.clamps);
        assert_eq!(out.trims[0].by, Cap::CostPerDay);
        assert!(out.clamps[0].contains("the daily budget 130.00 (spent 70.00 today"), "{:?}", out.clamps);
        // Over already (70 + 20 > 80): nothing launches, nothing is terminated for it.
        let over = HardLimits { max_cost_per_day: Some(80.0), ..wide.clone() };
        assert!(clamp(&plan, &snapshot(), &over, &Unlisted::default(), &periods, true).plan.launches.is_empty());
        // The month: 500 + 2/h × 100 h = 700; each b adds 300: 1400 leaves room for two.
        let month = HardLimits { max_cost_per_month: Some(1400.0), ..wide.clone() };
        let out = clamp(&plan, &snapshot(), &month, &Unlisted::default(), &periods, true);
        assert_eq!(out.plan.launches, vec![launch("b", 2)], "{:?}", out.clamps);
        assert_eq!(out.trims[0].by, Cap::CostPerMonth);
        // No budget set: only the other caps.
        assert_eq!(
            clamp(&plan, &snapshot(), &wide, &Unlisted::default(), &periods, true).plan.launches,
            vec![launch("b", 5)]
        );
    }

    #[test]
    fn machines_of_unconfigured_resources_count_against_the_global_max() {
        let limits = HardLimits { max_instances: 4, max_cost_per_hour: 100.0, ..Default::default() };
        let plan = Plan { launches: vec![launch("b", 5)], terminations: vec![] };
        // 1 managed + 2 unmanaged alive: room for 1.
        let unlisted = Unlisted { unmanaged: 2, ..Default::default() };
        let out = clamp(&plan, &snapshot(), &limits, &unlisted, &Periods::default(), true);
        assert_eq!(out.plan.launches, vec![launch("b", 1)], "{:?}", out.clamps);
    }

    #[test]
    fn launches_whose_answer_never_came_count_against_every_cap() {
        let none = Unlisted::default();
        let launching = |r: &str, n| Unlisted { launching: BTreeMap::from([(r.to_string(), n)]), ..Default::default() };
        let wide = HardLimits { max_instances: 100, max_cost_per_hour: 100.0, ..Default::default() };
        let plan = Plan { launches: vec![launch("a", 5)], terminations: vec![] };
        // a: max 2, 1 listed, 1 launching → the launching one asked again,
        // nothing new.
        assert_eq!(
            clamp(&plan, &snapshot(), &wide, &none, &Periods::default(), true).plan.launches,
            vec![launch("a", 1)]
        );
        assert_eq!(
            clamp(&plan, &snapshot(), &wide, &launching("a", 1), &Periods::default(), true).plan.launches,
            vec![launch("a", 1)]
        );
        // Launching a counts against b's room too: global 1 listed + 2
        // launching a, max 4 → room 1 for b.
        let plan = Plan { launches: vec![launch("b", 5)], terminations: vec![] };
        let global = HardLimits { max_instances: 4, max_cost_per_hour: 100.0, ..Default::default() };
        assert_eq!(
            clamp(&plan, &snapshot(), &global, &launching("a", 2), &Periods::default(), true).plan.launches,
            vec![launch("b", 1)]
        );
        // Cost: 1/h listed + 2 × 3/h launching b, cap 10/h → the two asked
        // again and room for 1 more.
        let cost = HardLimits { max_instances: 100, max_cost_per_hour: 10.0, ..Default::default() };
        assert_eq!(
            clamp(&plan, &snapshot(), &cost, &launching("b", 2), &Periods::default(), true).plan.launches,
            vec![launch("b", 3)]
        );
        // Asked again only as often as the plan launches that resource.
        let one = Plan { launches: vec![launch("b", 1)], terminations: vec![] };
        assert_eq!(
            clamp(&one, &snapshot(), &cost, &launching("b", 2), &Periods::default(), true).plan.launches,
            vec![launch("b", 1)]
        );
    }

    #[test]
    fn busy_instances_and_failed_observations_block_terminations() {
        let limits = HardLimits { max_instances: 10, max_cost_per_hour: 100.0, ..Default::default() };
        let t = Termination { instance: "i-1".into(), cause: TerminationCause::Idle, reason: "idle".into() };
        let plan = Plan { launches: vec![], terminations: vec![t.clone()] };
        let none = Unlisted::default();
        assert!(clamp(&plan, &snapshot(), &limits, &none, &Periods::default(), true).plan.terminations.is_empty());
        let mut idle = snapshot();
        idle.instances[0].busy = false;
        assert_eq!(clamp(&plan, &idle, &limits, &none, &Periods::default(), true).plan.terminations, vec![t]);
        assert!(clamp(&plan, &idle, &limits, &none, &Periods::default(), false).plan.terminations.is_empty());
    }
}
