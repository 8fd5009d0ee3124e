//! What a policy sees and what it returns: the snapshot and the plan.
//!
//! These mirror `wit/v0.1.0/policy.wit` field for field; the wasm runtime
//! converts at its edge so nothing else in the host names a WIT type.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Unix time in milliseconds.
pub type Millis = u64;

/// A duration for people: `45s`, `12m05s`, `2h09m`, `3d04h`.
pub fn human_duration(ms: Millis) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    Spot,
    #[default]
    OnDemand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Booting,
    Running,
    Stopping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    Capacity,
    Quota,
    Auth,
    BootTimeout,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TerminationCause {
    Idle,
    BootTimeout,
    Budget,
    #[default]
    Other,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Queue {
    pub name: String,
    #[serde(default)]
    pub pending: u32,
    #[serde(default)]
    pub oldest_wait_ms: u64,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub external_idle_workers: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Resource {
    pub name: String,
    #[serde(default)]
    pub queues: Vec<String>,
    pub max_instances: u32,
    #[serde(default)]
    pub price_per_hour: f64,
    #[serde(default)]
    pub market: Market,
    #[serde(default)]
    pub last_boot_ok: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Instance {
    pub id: String,
    pub resource: String,
    pub state: InstanceState,
    #[serde(default)]
    pub launched_at: Millis,
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub idle_since: Option<Millis>,
    /// The queue server's id of the task its worker runs, when busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Failure {
    pub resource: String,
    pub kind: FailureKind,
    pub at: Millis,
    #[serde(default)]
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Budget {
    pub max_instances: u32,
    pub max_cost_per_hour: f64,
    #[serde(default)]
    pub cost_per_hour: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { max_instances: u32::MAX, max_cost_per_hour: f64::INFINITY, cost_per_hour: 0.0 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Snapshot {
    pub now: Millis,
    #[serde(default)]
    pub queues: Vec<Queue>,
    #[serde(default)]
    pub resources: Vec<Resource>,
    #[serde(default)]
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub budget: Budget,
}

impl Snapshot {
    /// A stable digest of the whole snapshot, recorded in the journal so a
    /// decision can be tied to exactly what the policies saw.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("a snapshot always serializes");
        hex::encode(&Sha256::digest(&bytes)[..12])
    }

    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Launch {
    pub resource: String,
    pub count: u32,
    #[serde(default)]
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Termination {
    pub instance: String,
    #[serde(default)]
    pub cause: TerminationCause,
    #[serde(default)]
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub launches: Vec<Launch>,
    #[serde(default)]
    pub terminations: Vec<Termination>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.launches.is_empty() && self.terminations.is_empty()
    }

    /// Instances this plan asks for, per resource (saturating: a chain of
    /// plans may ask for more than a `u32` holds, which no cap allows anyway).
    pub fn launch_count(&self, resource: &str) -> u32 {
        self.launches.iter().filter(|l| l.resource == resource).fold(0, |n, l| n.saturating_add(l.count))
    }

    pub fn total_launches(&self) -> u32 {
        self.launches.iter().fold(0, |n, l| n.saturating_add(l.count))
    }

    /// The same plan with one launch per resource, in the order each resource
    /// first appears: counts added (saturating), reasons joined with "; " and
    /// cut at [`MAX_MERGED_REASON_BYTES`]. What is acted on and journaled is
    /// then one line per resource however many entries the policies returned.
    pub fn with_launches_merged(mut self) -> Plan {
        let mut merged: Vec<Launch> = Vec::new();
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for mut launch in self.launches {
            let Some(&i) = at.get(&launch.resource) else {
                at.insert(launch.resource.clone(), merged.len());
                launch.reason = crate::text::cut(launch.reason, MAX_MERGED_REASON_BYTES);
                merged.push(launch);
                continue;
            };
            let into = &mut merged[i];
            into.count = into.count.saturating_add(launch.count);
            if !launch.reason.is_empty() && into.reason.len() < MAX_MERGED_REASON_BYTES {
                let joined =
                    if into.reason.is_empty() { launch.reason } else { format!("{}; {}", into.reason, launch.reason) };
                into.reason = crate::text::cut(joined, MAX_MERGED_REASON_BYTES);
            }
        }
        self.launches = merged;
        self
    }

    /// Checks what any plan must satisfy whatever policy produced it: known
    /// resources and instances, no empty launches, no launch beyond its
    /// resource's own cap. Limits *across* actions (global max, cost) are the
    /// guardrails' job, not a validity question.
    pub fn validate(&self, snapshot: &Snapshot) -> Result<(), String> {
        // Maps, not a search per action: a hostile plan may hold millions.
        let resources: std::collections::HashMap<&str, &Resource> =
            snapshot.resources.iter().map(|r| (r.name.as_str(), r)).collect();
        let instances: std::collections::HashSet<&str> = snapshot.instances.iter().map(|i| i.id.as_str()).collect();
        for launch in &self.launches {
            let Some(resource) = resources.get(launch.resource.as_str()) else {
                return Err(format!(
                    "launch of {} × unknown resource {:?} (known: {})",
                    launch.count,
                    launch.resource,
                    names(snapshot.resources.iter().map(|r| r.name.as_str()))
                ));
            };
            if launch.count == 0 {
                return Err(format!("launch of 0 × {:?}: drop the action instead", launch.resource));
            }
            if launch.count > resource.max_instances {
                return Err(format!(
                    "launch of {} × {:?} exceeds that resource's max-instances {}",
                    launch.count, launch.resource, resource.max_instances
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.terminations {
            if !instances.contains(t.instance.as_str()) {
                return Err(format!("termination of unknown instance {:?}", t.instance));
            }
            if !seen.insert(t.instance.as_str()) {
                return Err(format!("instance {:?} terminated twice in one plan", t.instance));
            }
        }
        Ok(())
    }
}

/// The longest reason one merged launch keeps.
pub const MAX_MERGED_REASON_BYTES: usize = 1024;

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(resource: &str, count: u32, reason: &str) -> Launch {
        Launch { resource: resource.into(), count, reason: reason.into() }
    }

    #[test]
    fn merged_launches_are_one_per_resource_in_first_appearance_order() {
        let plan = Plan {
            launches: vec![launch("B", 1, "b1"), launch("A", 2, "a1"), launch("B", 3, ""), launch("B", 1, "b3")],
            terminations: vec![],
        };
        let merged = plan.with_launches_merged();
        assert_eq!(merged.launches, [launch("B", 5, "b1; b3"), launch("A", 2, "a1")]);
    }

    #[test]
    fn merged_counts_saturate_and_reasons_stay_bounded() {
        let plan = Plan { launches: vec![launch("A", u32::MAX, &"x".repeat(700)); 10_000], terminations: vec![] };
        assert_eq!(plan.total_launches(), u32::MAX, "sums saturate instead of wrapping or panicking");
        let merged = plan.with_launches_merged();
        assert_eq!(merged.launches.len(), 1);
        assert_eq!(merged.launches[0].count, u32::MAX);
        assert!(merged.launches[0].reason.len() <= MAX_MERGED_REASON_BYTES);
        assert!(merged.launches[0].reason.ends_with('…'));
    }
}

/// Property test of what a policy may return (issue 10, hole 15): any plan —
/// known and unknown resources and instances, counts from 0 to u32::MAX,
/// repeats — is accepted only if it is valid, never panics, and merging its
/// launches keeps one per resource with the (saturated) total. A long run:
/// `PROPTEST_CASES=100000 cargo test -p flockd-core --lib model::proptests`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn snapshot() -> Snapshot {
        let resource = |name: &str, max| Resource {
            name: name.into(),
            queues: vec!["q".into()],
            max_instances: max,
            price_per_hour: 1.0,
            market: Market::OnDemand,
            last_boot_ok: None,
        };
        let instance = |id: &str| Instance {
            id: id.into(),
            resource: "a".into(),
            state: InstanceState::Running,
            launched_at: 0,
            worker: None,
            busy: false,
            idle_since: None,
            task: None,
        };
        Snapshot {
            resources: vec![resource("a", 3), resource("b", u32::MAX)],
            instances: vec![instance("i-1"), instance("i-2")],
            ..Default::default()
        }
    }

    /// Mostly names that exist (so whole plans get past the first check
    /// and reach the later ones), sometimes anything.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec!["a", "b", "i-1", "i-2"]).prop_map(str::to_string),
            1 => Just(String::new()),
            1 => ".{0,8}",
        ]
    }

    fn plan() -> impl Strategy<Value = Plan> {
        let count = prop_oneof![6 => 1u32..=3, 1 => Just(0u32), 1 => Just(u32::MAX), 1 => any::<u32>()];
        let launch =
            (name(), count, ".{0,16}").prop_map(|(resource, count, reason)| Launch { resource, count, reason });
        let termination = (name(), ".{0,16}").prop_map(|(instance, reason)| Termination {
            instance,
            cause: TerminationCause::Idle,
            reason,
        });
        (prop::collection::vec(launch, 0..4), prop::collection::vec(termination, 0..3))
            .prop_map(|(launches, terminations)| Plan { launches, terminations })
    }

    proptest! {
        #[test]
        fn a_plan_is_accepted_only_when_valid(plan in plan()) {
            let snapshot = snapshot();
            if plan.validate(&snapshot).is_ok() {
                for l in &plan.launches {
                    let r = snapshot.resource(&l.resource);
                    prop_assert!(r.is_some_and(|r| l.count >= 1 && l.count <= r.max_instances), "{l:?}");
                }
                let mut seen = std::collections::HashSet::new();
                for t in &plan.terminations {
                    prop_assert!(snapshot.instance(&t.instance).is_some() && seen.insert(&t.instance), "{t:?}");
                }
            }
        }

        #[test]
        fn merging_keeps_one_launch_per_resource_and_the_total(plan in plan()) {
            let total = plan.launches.iter().fold(0u32, |sum, l| sum.saturating_add(l.count));
            let merged = plan.with_launches_merged();
            let mut names = std::collections::HashSet::new();
            prop_assert!(merged.launches.iter().all(|l| names.insert(l.resource.clone())));
            prop_assert_eq!(merged.total_launches(), total);
            prop_assert!(merged.launches.iter().all(|l| l.reason.len() <= MAX_MERGED_REASON_BYTES + 64));
        }
    }
}
