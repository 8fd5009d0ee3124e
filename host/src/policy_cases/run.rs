//! Running a case file's cases against its policy, each on a fresh instance
//! exactly as the chain would call it (same limits, same plan validation).

use std::sync::Arc;

use flockd_wasm::{CallError, Chain, Origin, PolicyEngine, PolicyRuntime, builtin, loader};

use super::{CaseFile, CaseFileError, CaseOutcome, FileOutcome, PolicyRef};

/// Runs every case of `file`. Fails only when the policy it names cannot be
/// found or loaded; failing cases are in the returned outcome.
pub fn run_file(engine: &Arc<PolicyEngine>, file: &CaseFile) -> Result<FileOutcome, CaseFileError> {
    let error = |message: String| CaseFileError { source_name: file.source.clone(), message };
    let (name, origin, bytes) = match &file.policy {
        PolicyRef::Builtin(name) => {
            let bytes = builtin::component(name).ok_or_else(|| {
                error(format!(
                    "no built-in policy named {name:?} (built-ins: {}); to test a file, give a path ending in .wasm",
                    builtin::names().collect::<Vec<_>>().join(", ")
                ))
            })?;
            (name.clone(), Origin::Builtin(name.clone()), bytes.to_vec())
        }
        PolicyRef::File(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| error(format!("cannot read policy {}: {e}", path.display())))?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            (name, Origin::File(path.clone()), bytes)
        }
    };
    let (policy, cache) = loader::compile_cached(engine, &name, origin, &bytes)
        .map_err(|e| error(format!("cannot load policy {}: {e}", file.policy)))?;
    let runtime = PolicyRuntime::new(engine.clone(), Chain::default());
    let cases = file
        .cases
        .iter()
        .map(|case| {
            let configured = policy.with_settings(case.settings_json());
            let (result, report) = runtime.trial(&configured, &case.snapshot, &case.plan);
            let timed_out = matches!(result, Err(CallError::Timeout(_)));
            let result = result.map_err(|e| e.to_string());
            CaseOutcome {
                name: case.name.clone(),
                timed_out,
                mismatches: case.expect.mismatches(&result),
                result,
                logs: report.logs,
                elapsed: report.elapsed,
            }
        })
        .collect();
    Ok(FileOutcome {
        source: file.source.clone(),
        policy: file.policy.to_string(),
        digest: policy.digest.clone(),
        cache,
        cases,
    })
}

/// Runs the case file shipped with built-in `name` against that built-in.
pub fn run_builtin_cases(engine: &Arc<PolicyEngine>, name: &str) -> Result<FileOutcome, CaseFileError> {
    let source = format!("built-in {name} cases.toml");
    let text = builtin::cases(name).ok_or_else(|| CaseFileError {
        source_name: source.clone(),
        message: format!("built-in {name:?} ships no case file"),
    })?;
    run_file(engine, &CaseFile::parse(text, &source, None)?)
}
