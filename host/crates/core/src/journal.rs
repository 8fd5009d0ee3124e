//! What one tick saw, decided, clamped and did: the answer to "why is this
//! machine up?" and "why was it terminated?".

use serde::{Deserialize, Serialize};

use crate::decider::PolicyRun;
use crate::model::{Millis, Plan, TerminationCause};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TickRecord {
    pub tick: u64,
    pub at: Millis,
    /// Digest of the snapshot the policies saw (None when observation failed).
    pub snapshot_digest: Option<String>,
    /// Set when observing failed: nothing was decided or done.
    pub observation_error: Option<String>,
    pub queues: Vec<QueueLine>,
    /// What the policy chain asked for.
    pub plan: Plan,
    pub policies: Vec<PolicyRun>,
    /// What the guardrails cut, and why.
    pub clamps: Vec<String>,
    /// The launches among `clamps`, typed: which cap cut how many.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trims: Vec<crate::guardrails::Trim>,
    pub actions: Vec<Action>,
    pub dry_run: bool,
    /// Policies marked `required` that failed this tick: its launches were
    /// withheld.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_failed: Vec<String>,
    /// Listed machines whose launch key this store never wrote: another
    /// writer launches into this fleet, so this tick launched nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_machines: Vec<String>,
    /// Workers unregistered because their machine is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unregistered: Vec<String>,
    /// The fleet as this tick observed it (none when it saw nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetLine>,
    /// The leader lease's epoch this tick ran under (a shared store only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub micros: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueLine {
    pub name: String,
    pub pending: u32,
    /// How long its oldest pending task had waited (0 in records older
    /// than this field).
    #[serde(default)]
    pub oldest_wait_ms: u64,
}

/// The fleet as a tick saw it, per resource: what the dashboard's charts
/// draw, kept in the journal so they survive a restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetLine {
    pub cost_per_hour: f64,
    pub resources: Vec<ResourceLine>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceLine {
    pub name: String,
    pub booting: u32,
    pub busy: u32,
    pub idle: u32,
    pub stopping: u32,
}

impl FleetLine {
    /// Counts per resource (the config's, then any other a machine has).
    pub fn of(snapshot: &crate::model::Snapshot) -> FleetLine {
        use crate::model::InstanceState;
        let mut resources: Vec<ResourceLine> =
            snapshot.resources.iter().map(|r| ResourceLine { name: r.name.clone(), ..Default::default() }).collect();
        // Looked up once per machine: a tick may see 10,000 machines of 1,000 resources.
        let mut at: std::collections::HashMap<String, usize> =
            resources.iter().enumerate().map(|(n, r)| (r.name.clone(), n)).collect();
        for i in &snapshot.instances {
            let n = *at.entry(i.resource.clone()).or_insert_with(|| {
                resources.push(ResourceLine { name: i.resource.clone(), ..Default::default() });
                resources.len() - 1
            });
            let line = &mut resources[n];
            match (i.state, i.busy) {
                (InstanceState::Booting, _) => line.booting += 1,
                (InstanceState::Running, true) => line.busy += 1,
                (InstanceState::Running, false) => line.idle += 1,
                (InstanceState::Stopping, _) => line.stopping += 1,
            }
        }
        FleetLine { cost_per_hour: snapshot.budget.cost_per_hour, resources }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    Launch {
        resource: String,
        key: String,
        reason: String,
        outcome: Outcome,
        /// The instance it became, when it succeeded.
        instance: Option<String>,
    },
    Terminate {
        instance: String,
        resource: String,
        cause: TerminationCause,
        reason: String,
        outcome: Outcome,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    /// `--dry-run`: recorded, not done.
    Skipped,
    Failed(String),
    /// The guard right before acting refused (e.g. the worker took a task).
    Refused(String),
}

impl TickRecord {
    /// Every instance this tick launched or acted on (what the journal is
    /// indexed by).
    pub fn instances(&self) -> impl Iterator<Item = &str> {
        self.actions.iter().filter_map(|a| match a {
            Action::Launch { instance, .. } => instance.as_deref(),
            Action::Terminate { instance, .. } => Some(instance.as_str()),
        })
    }

    pub fn mentions(&self, instance: &str) -> bool {
        self.instances().any(|i| i == instance)
    }

    /// Whether the tick did or tried anything, or saw nothing: what
    /// "acted" filters on.
    pub fn acted(&self) -> bool {
        !self.actions.is_empty() || !self.clamps.is_empty() || self.observation_error.is_some()
    }

    pub fn launched(&self) -> usize {
        self.actions.iter().filter(|a| matches!(a, Action::Launch { outcome: Outcome::Done, .. })).count()
    }

    pub fn terminated(&self) -> usize {
        self.actions.iter().filter(|a| matches!(a, Action::Terminate { outcome: Outcome::Done, .. })).count()
    }
}
