//! The policy chain seen from the controller: snapshot in, plan out. The
//! wasm runtime implements it; tests can implement it with a closure.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Plan, Snapshot};

/// What one policy of the chain did during a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRun {
    pub policy: String,
    /// Content digest of the version that ran.
    pub version: String,
    pub micros: u64,
    /// Set when the policy failed this tick; its input plan passed on unchanged.
    pub error: Option<String>,
    /// What the policy logged during the call (its "why" beyond reasons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub plan: Plan,
    pub runs: Vec<PolicyRun>,
}

/// Runs the policy chain. Deliberately synchronous and infallible: a failing
/// policy is that policy's problem for that tick, never the controller's.
/// Callers on an async runtime run it in `spawn_blocking`.
pub trait Decider: Send + Sync {
    fn decide(&self, snapshot: &Arc<Snapshot>) -> Decision;
}

impl<F> Decider for F
where
    F: Fn(&Snapshot) -> Plan + Send + Sync,
{
    fn decide(&self, snapshot: &Arc<Snapshot>) -> Decision {
        Decision { plan: self(snapshot), runs: Vec::new() }
    }
}
