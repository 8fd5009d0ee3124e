//! Runs a policy's `cases.toml` natively, in the format `flockd policy test`
//! reads, so case files can be checked with `cargo test` before the host
//! runs them against the built component.
//!
//! ```ignore
//! #[test]
//! fn case_file_passes() {
//!     flockd_policy::testing::cases::assert_case_file::<MyPolicy>(include_str!("../cases.toml"));
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::{Policy, configure};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CaseFile {
    #[allow(dead_code)] // names the component for the host; natively the policy is the type parameter
    policy: String,
    #[serde(rename = "case")]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Case {
    name: String,
    settings: Option<toml::Value>,
    #[serde(default)]
    plan: Plan,
    snapshot: Snapshot,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Expect {
    launches: Option<BTreeMap<String, u32>>,
    launches_at_most: Option<u32>,
    terminated: Option<BTreeSet<String>>,
    #[serde(default)]
    not_terminated: Vec<String>,
    error: Option<String>,
    reason_contains: Option<String>,
}

// Mirrors of the WIT records with the case format's defaults (the same as
// flockd-core's model): everything but `now`, names, ids and hard caps is
// optional.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Snapshot {
    now: u64,
    #[serde(default)]
    queues: Vec<Queue>,
    #[serde(default)]
    resources: Vec<Resource>,
    #[serde(default)]
    instances: Vec<Instance>,
    #[serde(default)]
    failures: Vec<Failure>,
    budget: Option<Budget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Queue {
    name: String,
    #[serde(default)]
    pending: u32,
    #[serde(default)]
    oldest_wait_ms: u64,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    external_idle_workers: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Resource {
    name: String,
    #[serde(default)]
    queues: Vec<String>,
    max_instances: u32,
    #[serde(default)]
    price_per_hour: f64,
    #[serde(default)]
    market: Market,
    last_boot_ok: Option<u64>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Market {
    Spot,
    #[default]
    OnDemand,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Instance {
    id: String,
    resource: String,
    state: State,
    #[serde(default)]
    launched_at: u64,
    worker: Option<String>,
    #[serde(default)]
    busy: bool,
    idle_since: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum State {
    Booting,
    Running,
    Stopping,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Failure {
    resource: String,
    kind: Kind,
    at: u64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Capacity,
    Quota,
    Auth,
    BootTimeout,
    Other,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Budget {
    max_instances: u32,
    max_cost_per_hour: f64,
    #[serde(default)]
    cost_per_hour: f64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Plan {
    #[serde(default)]
    launches: Vec<Launch>,
    #[serde(default)]
    terminations: Vec<Termination>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Launch {
    resource: String,
    count: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Termination {
    instance: String,
    #[serde(default)]
    cause: Cause,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Cause {
    Idle,
    BootTimeout,
    Budget,
    #[default]
    Other,
}

/// Runs every case of `text` against `P` and panics listing each failing
/// case and why.
pub fn assert_case_file<P: Policy>(text: &str) {
    let file: CaseFile = toml::from_str(text).unwrap_or_else(|e| panic!("case file does not parse: {e}"));
    assert!(!file.cases.is_empty(), "case file has no [[case]]");
    let failures: Vec<String> = file
        .cases
        .into_iter()
        .filter_map(|case| {
            let name = case.name.clone();
            run_case::<P>(case).err().map(|why| format!("case {name:?}: {why}"))
        })
        .collect();
    assert!(failures.is_empty(), "{} failing case(s):\n{}", failures.len(), failures.join("\n"));
}

fn run_case<P: Policy>(case: Case) -> Result<(), String> {
    let settings = match &case.settings {
        Some(value) => serde_json::to_string(value).map_err(|e| format!("settings: {e}"))?,
        None => String::new(),
    };
    let outcome = configure::<P>("case", &settings).and_then(|policy| {
        let snapshot = case.snapshot.into_wit();
        let plan = case.plan.into_wit();
        policy.decide(&snapshot, plan).map(|plan| (snapshot, plan))
    });
    let expect = case.expect;
    let (snapshot, plan) = match (outcome, &expect.error) {
        (Err(e), Some(want)) if e.contains(want.as_str()) => return Ok(()),
        (Err(e), _) => return Err(format!("failed: {e}")),
        (Ok(_), Some(want)) => return Err(format!("succeeded, expected an error containing {want:?}")),
        (Ok(done), None) => done,
    };
    validate(&snapshot, &plan)?;
    if let Some(want) = &expect.launches {
        let mut got = BTreeMap::new();
        for l in &plan.launches {
            *got.entry(l.resource.clone()).or_insert(0) += l.count;
        }
        let want: BTreeMap<String, u32> = want.iter().filter(|(_, n)| **n > 0).map(|(r, n)| (r.clone(), *n)).collect();
        if got != want {
            return Err(format!("launches {got:?}, expected {want:?}; plan: {:?}", plan.launches));
        }
    }
    if let Some(most) = expect.launches_at_most
        && plan.total_launches() > most
    {
        return Err(format!("{} launches, expected at most {most}", plan.total_launches()));
    }
    let terminated: BTreeSet<String> = plan.terminations.iter().map(|t| t.instance.clone()).collect();
    if let Some(want) = &expect.terminated
        && &terminated != want
    {
        return Err(format!("terminated {terminated:?}, expected {want:?}"));
    }
    if let Some(id) = expect.not_terminated.iter().find(|id| terminated.contains(*id)) {
        return Err(format!("terminated {id:?}, which must not be"));
    }
    if let Some(want) = &expect.reason_contains {
        let reasons = plan.launches.iter().map(|l| &l.reason).chain(plan.terminations.iter().map(|t| &t.reason));
        if !reasons.clone().any(|r| r.contains(want.as_str())) {
            return Err(format!("no reason contains {want:?}; reasons: {:?}", reasons.collect::<Vec<_>>()));
        }
    }
    Ok(())
}

/// What the host checks of every plan (flockd-core's `Plan::validate`).
fn validate(snapshot: &crate::Snapshot, plan: &crate::Plan) -> Result<(), String> {
    for l in &plan.launches {
        let resource = snapshot.resource(&l.resource).ok_or(format!("launch of unknown resource {:?}", l.resource))?;
        if l.count == 0 || l.count > resource.max_instances {
            return Err(format!("launch of {} × {:?} (max-instances {})", l.count, l.resource, resource.max_instances));
        }
    }
    let mut seen = BTreeSet::new();
    for t in &plan.terminations {
        if snapshot.instance(&t.instance).is_none() || !seen.insert(&t.instance) {
            return Err(format!("termination of unknown or already terminated instance {:?}", t.instance));
        }
    }
    Ok(())
}

impl Snapshot {
    fn into_wit(self) -> crate::Snapshot {
        crate::Snapshot {
            now: self.now,
            queues: self.queues.into_iter().map(Queue::into_wit).collect(),
            resources: self.resources.into_iter().map(Resource::into_wit).collect(),
            instances: self.instances.into_iter().map(Instance::into_wit).collect(),
            failures: self.failures.into_iter().map(Failure::into_wit).collect(),
            budget: match self.budget {
                Some(b) => crate::Budget {
                    max_instances: b.max_instances,
                    max_cost_per_hour: b.max_cost_per_hour,
                    cost_per_hour: b.cost_per_hour,
                },
                None => crate::Budget { max_instances: u32::MAX, max_cost_per_hour: f64::INFINITY, cost_per_hour: 0.0 },
            },
        }
    }
}

impl Queue {
    fn into_wit(self) -> crate::Queue {
        crate::Queue {
            name: self.name,
            pending: self.pending,
            oldest_wait_ms: self.oldest_wait_ms,
            resources: self.resources,
            external_idle_workers: self.external_idle_workers,
        }
    }
}

impl Resource {
    fn into_wit(self) -> crate::Resource {
        crate::Resource {
            name: self.name,
            queues: self.queues,
            max_instances: self.max_instances,
            price_per_hour: self.price_per_hour,
            market: match self.market {
                Market::Spot => crate::Market::Spot,
                Market::OnDemand => crate::Market::OnDemand,
            },
            last_boot_ok: self.last_boot_ok,
        }
    }
}

impl Instance {
    fn into_wit(self) -> crate::Instance {
        crate::Instance {
            id: self.id,
            resource: self.resource,
            state: match self.state {
                State::Booting => crate::InstanceState::Booting,
                State::Running => crate::InstanceState::Running,
                State::Stopping => crate::InstanceState::Stopping,
            },
            launched_at: self.launched_at,
            worker: self.worker,
            busy: self.busy,
            idle_since: self.idle_since,
        }
    }
}

impl Failure {
    fn into_wit(self) -> crate::Failure {
        crate::Failure {
            resource: self.resource,
            kind: match self.kind {
                Kind::Capacity => crate::FailureKind::Capacity,
                Kind::Quota => crate::FailureKind::Quota,
                Kind::Auth => crate::FailureKind::Auth,
                Kind::BootTimeout => crate::FailureKind::BootTimeout,
                Kind::Other => crate::FailureKind::Other,
            },
            at: self.at,
            message: self.message,
        }
    }
}

impl Plan {
    fn into_wit(self) -> crate::Plan {
        crate::Plan {
            launches: self
                .launches
                .into_iter()
                .map(|l| crate::Launch { resource: l.resource, count: l.count, reason: l.reason })
                .collect(),
            terminations: self
                .terminations
                .into_iter()
                .map(|t| crate::Termination {
                    instance: t.instance,
                    cause: match t.cause {
                        Cause::Idle => crate::TerminationCause::Idle,
                        Cause::BootTimeout => crate::TerminationCause::BootTimeout,
                        Cause::Budget => crate::TerminationCause::Budget,
                        Cause::Other => crate::TerminationCause::Other,
                    },
                    reason: t.reason,
                })
                .collect(),
        }
    }
}
