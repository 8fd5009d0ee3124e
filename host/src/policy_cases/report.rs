//! Case results, and how they read on a terminal.

use std::fmt::Write;
use std::time::Duration;

use flockd_core::Plan;
use flockd_wasm::engine::LogLevel;

#[derive(Clone, Debug)]
pub struct CaseOutcome {
    pub name: String,
    /// Each way the result differs from the expectation; empty when it passed.
    pub mismatches: Vec<String>,
    /// The plan the policy returned, or why the call failed.
    pub result: Result<Plan, String>,
    pub logs: Vec<(LogLevel, String)>,
    pub elapsed: Duration,
}

impl CaseOutcome {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct FileOutcome {
    pub source: String,
    /// The policy as the file named it.
    pub policy: String,
    /// Content digest of the component that ran.
    pub digest: String,
    pub cases: Vec<CaseOutcome>,
}

impl FileOutcome {
    pub fn all_passed(&self) -> bool {
        self.cases.iter().all(CaseOutcome::passed)
    }

    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }

    /// One line per case, and under each failure what differed, the plan the
    /// policy actually returned (with reasons) and what it logged.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} ({}, version {})", self.source, self.policy, self.digest);
        for case in &self.cases {
            if case.passed() {
                let _ = writeln!(out, "  ok      {}", case.name);
                continue;
            }
            let _ = writeln!(out, "  FAILED  {}", case.name);
            for mismatch in &case.mismatches {
                let _ = writeln!(out, "          - {mismatch}");
            }
            match &case.result {
                Ok(plan) => {
                    let _ = writeln!(out, "          actual plan:");
                    if plan.is_empty() {
                        let _ = writeln!(out, "            (empty)");
                    }
                    for l in &plan.launches {
                        let _ = writeln!(out, "            launch {} × {}: {}", l.count, l.resource, l.reason);
                    }
                    for t in &plan.terminations {
                        let _ = writeln!(out, "            terminate {} ({:?}): {}", t.instance, t.cause, t.reason);
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "          call failed: {e}");
                }
            }
            if !case.logs.is_empty() {
                let _ = writeln!(out, "          policy log:");
                for (level, line) in &case.logs {
                    let _ = writeln!(out, "            {level:?}: {line}");
                }
            }
        }
        let _ = writeln!(
            out,
            "  {} cases: {} ok, {} FAILED",
            self.cases.len(),
            self.cases.len() - self.failed(),
            self.failed()
        );
        out
    }
}
