//! What a case expects of the returned plan, and how a mismatch is said.

use std::collections::{BTreeMap, BTreeSet};

use flockd_core::Plan;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Expect {
    /// Exact launch totals per resource; resources not named must get none.
    pub launches: Option<BTreeMap<String, u32>>,
    pub launches_at_most: Option<u32>,
    /// Exactly this set of instances is terminated.
    pub terminated: Option<BTreeSet<String>>,
    pub not_terminated: Option<BTreeSet<String>>,
    /// The call (configure or decide) must fail with a message containing this.
    pub error: Option<String>,
    /// Some action's reason contains this.
    pub reason_contains: Option<String>,
}

impl Expect {
    /// Every way `result` differs from this expectation, one line each
    /// (empty when it matches).
    pub fn mismatches(&self, result: &Result<Plan, String>) -> Vec<String> {
        let plan = match (result, &self.error) {
            (Err(actual), Some(wanted)) if actual.contains(wanted.as_str()) => return Vec::new(),
            (Err(actual), Some(wanted)) => {
                return vec![format!("error: expected a message containing {wanted:?}, got {actual:?}")];
            }
            (Err(actual), None) => return vec![format!("unexpected error: {actual}")],
            (Ok(_), Some(wanted)) => {
                return vec![format!("error: expected a failure containing {wanted:?}, but the call succeeded")];
            }
            (Ok(plan), None) => plan,
        };
        let mut out = Vec::new();
        if let Some(expected) = &self.launches {
            let resources: BTreeSet<&str> =
                expected.keys().map(String::as_str).chain(plan.launches.iter().map(|l| l.resource.as_str())).collect();
            let wrong: Vec<String> = resources
                .into_iter()
                .filter_map(|r| {
                    let want = expected.get(r).copied().unwrap_or(0);
                    let got = plan.launch_count(r);
                    (want != got).then(|| format!("{r}: expected {want}, actual {got}"))
                })
                .collect();
            if !wrong.is_empty() {
                out.push(format!("launches differ: {}", wrong.join("; ")));
            }
        }
        if let Some(most) = self.launches_at_most {
            let total = plan.total_launches();
            if total > most {
                out.push(format!("launches-at-most: expected at most {most}, actual {total}"));
            }
        }
        let terminated: BTreeSet<&str> = plan.terminations.iter().map(|t| t.instance.as_str()).collect();
        if let Some(expected) = &self.terminated {
            let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
            if expected != terminated {
                out.push(format!("terminated: expected {}, actual {}", list(&expected), list(&terminated)));
            }
        }
        if let Some(spared) = &self.not_terminated {
            let hit: BTreeSet<&str> = spared.iter().map(String::as_str).filter(|id| terminated.contains(id)).collect();
            if !hit.is_empty() {
                out.push(format!("not-terminated: {} terminated all the same", list(&hit)));
            }
        }
        if let Some(wanted) = &self.reason_contains {
            let reasons = plan.launches.iter().map(|l| &l.reason).chain(plan.terminations.iter().map(|t| &t.reason));
            if !reasons.clone().any(|r| r.contains(wanted.as_str())) {
                out.push(format!("reason-contains: no action's reason contains {wanted:?}"));
            }
        }
        out
    }
}

fn list(set: &BTreeSet<&str>) -> String {
    if set.is_empty() { "none".into() } else { format!("[{}]", set.iter().copied().collect::<Vec<_>>().join(", ")) }
}
