//! `flockd policy inspect`: what a component is, and whether flockd can run
//! it, checked the way a hot reload checks a new version.

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use flockd_core::{Plan, Snapshot};
use flockd_wasm::inspect::ComponentShape;
use flockd_wasm::{CallError, Chain, Origin, PolicyEngine, PolicyRuntime, loader};

/// One validation step and how it went.
#[derive(Clone, Debug)]
pub struct Check {
    pub what: String,
    /// Details when it passed, the reason when it failed.
    pub outcome: Result<String, String>,
}

#[derive(Clone, Debug)]
pub struct Inspection {
    pub file: String,
    pub size: usize,
    pub digest: String,
    /// Absent when the bytes are not a component at all.
    pub shape: Option<ComponentShape>,
    /// In order; checking stops at the first failure.
    pub checks: Vec<Check>,
    /// What to do about the failure, when flockd knows (settings to pass,
    /// a longer deadline).
    pub hint: Option<String>,
}

impl Inspection {
    pub fn is_valid(&self) -> bool {
        self.checks.iter().all(|c| c.outcome.is_ok())
    }

    /// Why it is not a usable policy, if it is not.
    pub fn reason(&self) -> Option<&str> {
        self.checks.iter().find_map(|c| c.outcome.as_ref().err()).map(String::as_str)
    }

    /// The verdict first, then what the component is, the checks, and the
    /// long import list last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self.reason() {
            None => {
                let _ = writeln!(out, "verdict:  valid policy");
            }
            Some(reason) => {
                let _ = writeln!(out, "verdict:  invalid: {reason}");
            }
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "hint:     {hint}");
        }
        let _ = writeln!(out, "file:     {}", self.file);
        let _ = writeln!(out, "size:     {} bytes", self.size);
        let _ = writeln!(out, "digest:   {} (sha256, first 12 bytes)", self.digest);
        if let Some(shape) = &self.shape {
            let world = shape.world().unwrap_or_else(|| "not flockd:policy (see exports)".into());
            let _ = writeln!(out, "world:    {world}");
            let _ = writeln!(
                out,
                "version:  {}",
                shape.policy_version().unwrap_or("none (imports no flockd:policy interface)")
            );
        }
        let _ = writeln!(out, "checks:");
        for check in &self.checks {
            match &check.outcome {
                Ok(detail) if detail.is_empty() => {
                    let _ = writeln!(out, "  ok      {}", check.what);
                }
                Ok(detail) => {
                    let _ = writeln!(out, "  ok      {}: {detail}", check.what);
                }
                Err(reason) => {
                    let _ = writeln!(out, "  FAILED  {}: {reason}", check.what);
                }
            }
        }
        if let Some(shape) = &self.shape {
            let _ = writeln!(out, "exports:");
            for item in &shape.exports {
                let _ = writeln!(out, "  {}: {}", item.name, item.kind);
            }
            let _ = writeln!(out, "imports:");
            for item in &shape.imports {
                let members =
                    if item.members.is_empty() { String::new() } else { format!(": {}", item.members.join(", ")) };
                let _ = writeln!(out, "  {} ({}){members}", item.name, item.kind);
            }
        }
        out
    }
}

/// Inspects `bytes` (read from `file`): parses it as a component, links it
/// against the policy world, calls configure(`settings_json`), then decide
/// on an empty snapshot, under the engine's limits.
pub fn inspect(engine: &Arc<PolicyEngine>, file: &Path, bytes: &[u8], settings_json: &str) -> Inspection {
    let mut inspection = Inspection {
        file: file.display().to_string(),
        size: bytes.len(),
        digest: loader::digest(bytes),
        shape: None,
        checks: Vec::new(),
        hint: None,
    };
    let checks = &mut inspection.checks;
    match engine.describe(bytes) {
        Ok(shape) => {
            push(checks, "is a WebAssembly component", Ok(String::new()));
            inspection.shape = Some(shape);
        }
        Err(e) => {
            push(checks, "is a WebAssembly component", Err(e.to_string()));
            return inspection;
        }
    }
    let checks = &mut inspection.checks;
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let linked = "links against world flockd:policy/policy@0.1.0";
    let policy = match loader::compile(engine, &name, Origin::File(file.to_path_buf()), bytes) {
        Ok(policy) => {
            push(checks, linked, Ok(String::new()));
            policy
        }
        Err(e) => {
            push(checks, linked, Err(e.to_string()));
            return inspection;
        }
    };

    let runtime = PolicyRuntime::new(engine.clone(), Chain::default());
    let (result, report) = runtime.trial(&policy.with_settings(settings_json), &Snapshot::default(), &Plan::default());
    let configure = format!("configure({settings_json}) accepted");
    let decide = "decide(empty snapshot) returns a valid plan within the limits";
    match result {
        Err(CallError::Settings(reason)) => {
            push(checks, &configure, Err(format!("rejected its settings: {reason}")));
            inspection.hint = Some(if settings_json.trim() == "{}" {
                "this policy needs settings: pass the JSON of its [[policy]] settings, e.g. --settings '{\"resource\": \"cpu\"}'".into()
            } else {
                "fix the JSON given with --settings: it is what the [[policy]] entry's settings would be".into()
            });
        }
        Err(e) => {
            if matches!(e, CallError::Timeout(_)) {
                inspection.hint = Some("the call ran out of time: give it longer with --timeout-ms (large Python and JavaScript policies need more on a busy machine)".into());
            }
            push(checks, &configure, Ok(String::new()));
            push(checks, decide, Err(e.to_string()));
        }
        Ok(plan) => {
            push(checks, &configure, Ok(String::new()));
            let detail = format!(
                "{} launches, {} terminations in {:.2} ms",
                plan.launches.len(),
                plan.terminations.len(),
                report.elapsed.as_secs_f64() * 1e3
            );
            push(checks, decide, Ok(detail));
        }
    }
    inspection
}

fn push(checks: &mut Vec<Check>, what: &str, outcome: Result<String, String>) {
    checks.push(Check { what: what.into(), outcome });
}
