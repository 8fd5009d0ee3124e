//! The policy chain: an immutable list of loaded policies, swapped whole.
//! A decision loads the chain once, so no call ever sees half a swap, and
//! calls already running finish on the version they started with.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use flockd_core::{Decider, Decision, Plan, PolicyRun, Snapshot};
use serde::Serialize;

use crate::bindings;
use crate::engine::{CallError, CompiledPolicy, LogLevel, PolicyEngine};

/// Where a policy's code comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Origin {
    /// Compiled into the flockd binary.
    Builtin(String),
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin(name) => write!(f, "built-in {name}"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One policy ready to run: code, settings and where it came from.
pub struct LoadedPolicy {
    pub name: String,
    pub origin: Origin,
    /// sha256 of the component bytes (first 12 hex digits).
    pub digest: String,
    pub settings_json: String,
    pub loaded_at: SystemTime,
    pub(crate) compiled: CompiledPolicy,
}

impl LoadedPolicy {
    /// The same compiled code with other settings (not checked here: the
    /// next call's `configure` does). Cheap: the compiled code is shared.
    pub fn with_settings(&self, settings_json: impl Into<String>) -> LoadedPolicy {
        LoadedPolicy {
            name: self.name.clone(),
            origin: self.origin.clone(),
            digest: self.digest.clone(),
            settings_json: settings_json.into(),
            loaded_at: self.loaded_at,
            compiled: self.compiled.clone(),
        }
    }
}

/// The chain in order. Cheap to clone (Arcs) so a swap copies pointers only.
#[derive(Clone, Default)]
pub struct Chain {
    pub policies: Vec<Arc<LoadedPolicy>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReloadEvent {
    pub at: SystemTime,
    pub policy: String,
    pub origin: Origin,
    pub outcome: ReloadOutcome,
    pub digest: Option<String>,
    pub error: Option<String>,
}

/// What a reload did to one policy of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ReloadOutcome {
    /// A new version from a file now serves.
    #[serde(rename = "loaded")]
    Loaded,
    /// The file changed on disk but not its content.
    #[serde(rename = "unchanged")]
    Unchanged,
    /// The new version failed to load or its smoke test; the last good one
    /// keeps serving.
    #[serde(rename = "rejected")]
    Rejected,
    /// The file is gone and there is no built-in: the chain goes on without it.
    #[serde(rename = "unloaded")]
    Unloaded,
    /// The file is gone and the built-in of that name serves again.
    #[serde(rename = "reverted to built-in")]
    RevertedToBuiltin,
}

impl ReloadOutcome {
    /// As shown in logs, the status API and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Loaded => "loaded",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Rejected => "rejected",
            ReloadOutcome::Unloaded => "unloaded",
            ReloadOutcome::RevertedToBuiltin => "reverted to built-in",
        }
    }
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyCounters {
    pub calls: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub reloads: u64,
    pub reload_failures: u64,
}

const MAX_EVENTS: usize = 100;

/// The runtime as the rest of flockd sees it: a [`Decider`] whose chain can
/// be replaced while it runs.
pub struct PolicyRuntime {
    pub(crate) engine: Arc<PolicyEngine>,
    chain: ArcSwap<Chain>,
    last_snapshot: Mutex<Option<Arc<Snapshot>>>,
    events: Mutex<VecDeque<ReloadEvent>>,
    counters: Mutex<std::collections::BTreeMap<String, PolicyCounters>>,
}

impl PolicyRuntime {
    pub fn new(engine: Arc<PolicyEngine>, chain: Chain) -> Self {
        PolicyRuntime {
            engine,
            chain: ArcSwap::from_pointee(chain),
            last_snapshot: Mutex::new(None),
            events: Mutex::new(VecDeque::new()),
            counters: Mutex::new(Default::default()),
        }
    }

    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    pub fn chain(&self) -> Arc<Chain> {
        self.chain.load_full()
    }

    /// Replaces the whole chain at once.
    pub fn swap(&self, chain: Chain) {
        self.chain.store(Arc::new(chain));
    }

    /// The snapshot of the last decision, used to smoke-test a new version.
    pub fn last_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.last_snapshot.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<ReloadEvent> {
        self.events.lock().unwrap().iter().cloned().collect()
    }

    pub fn counters(&self) -> std::collections::BTreeMap<String, PolicyCounters> {
        self.counters.lock().unwrap().clone()
    }

    pub(crate) fn record_event(&self, event: ReloadEvent) {
        {
            let mut counters = self.counters.lock().unwrap();
            let c = counters.entry(event.policy.clone()).or_default();
            match event.outcome {
                ReloadOutcome::Rejected => {
                    c.reload_failures += 1;
                    c.last_error = event.error.clone();
                }
                ReloadOutcome::Unchanged => {}
                ReloadOutcome::Loaded | ReloadOutcome::Unloaded | ReloadOutcome::RevertedToBuiltin => c.reloads += 1,
            }
        }
        let mut events = self.events.lock().unwrap();
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Runs one policy on a snapshot and checks what it returns. Used by the
    /// chain, by reload validation and by `flockd policy test`.
    pub fn run_one(
        &self,
        policy: &LoadedPolicy,
        snapshot: &Snapshot,
        snapshot_wit: &bindings::wit::Snapshot,
        plan: &Plan,
    ) -> (Result<Plan, CallError>, crate::engine::CallReport) {
        let (result, report) = self.engine.call(&policy.compiled, &policy.settings_json, snapshot_wit, plan);
        let result = result.and_then(|next| {
            next.validate(snapshot)
                .map(|()| next)
                .map_err(|e| CallError::InvalidPlan(crate::text::bounded_text(e, crate::text::MAX_POLICY_TEXT_BYTES)))
        });
        (result, report)
    }

    /// Runs a policy that is not (yet) in the chain, e.g. for validation.
    pub fn trial(
        &self,
        policy: &LoadedPolicy,
        snapshot: &Snapshot,
        plan: &Plan,
    ) -> (Result<Plan, CallError>, crate::engine::CallReport) {
        let wit = bindings::snapshot_to_wit(snapshot);
        self.run_one(policy, snapshot, &wit, plan)
    }
}

impl Decider for PolicyRuntime {
    fn decide(&self, snapshot: &Arc<Snapshot>) -> Decision {
        let chain = self.chain.load_full();
        let snapshot_wit = bindings::snapshot_to_wit(snapshot);
        let mut plan = Plan::default();
        let mut runs = Vec::with_capacity(chain.policies.len());
        for policy in &chain.policies {
            let (result, report) = self.run_one(policy, snapshot, &snapshot_wit, &plan);
            for (level, line) in &report.logs {
                match level {
                    LogLevel::Error => tracing::error!(policy = %policy.name, "{line}"),
                    LogLevel::Warn => tracing::warn!(policy = %policy.name, "{line}"),
                    LogLevel::Info => tracing::info!(policy = %policy.name, "{line}"),
                    LogLevel::Debug => tracing::debug!(policy = %policy.name, "{line}"),
                }
            }
            let error = match result {
                Ok(next) => {
                    plan = next;
                    None
                }
                Err(e) => {
                    tracing::warn!(policy = %policy.name, version = %policy.digest, "policy failed this tick, its input plan passes on unchanged: {e}");
                    Some(e.to_string())
                }
            };
            {
                let mut counters = self.counters.lock().unwrap();
                let c = counters.entry(policy.name.clone()).or_default();
                c.calls += 1;
                if let Some(e) = &error {
                    c.errors += 1;
                    c.last_error = Some(e.clone());
                }
            }
            runs.push(PolicyRun {
                policy: policy.name.clone(),
                version: policy.digest.clone(),
                micros: report.elapsed.as_micros() as u64,
                error,
                logs: report.logs.into_iter().map(|(_, l)| l).collect(),
            });
        }
        *self.last_snapshot.lock().unwrap() = Some(snapshot.clone());
        Decision { plan, runs }
    }
}
