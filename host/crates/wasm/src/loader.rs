//! Turning configured policy specs into a chain: read, compile, check the
//! settings, and (for replacements) smoke-test a decision before going live.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use flockd_core::{Plan, Snapshot};
use sha2::{Digest, Sha256};

use crate::builtin;
use crate::chain::{Chain, LoadedPolicy, Origin, PolicyRuntime};
use crate::engine::{CallError, LoadError, PolicyEngine};

/// One entry of the configured chain.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    pub name: String,
    /// A built-in policy to run when `file` is absent.
    pub builtin: Option<String>,
    /// A component file that, when present, replaces the built-in. Watched.
    pub file: Option<PathBuf>,
    /// Passed to `configure` as JSON.
    pub settings: serde_json::Value,
}

impl PolicySpec {
    pub fn builtin(name: &str) -> Self {
        PolicySpec { name: name.into(), builtin: Some(name.into()), file: None, settings: serde_json::json!({}) }
    }

    pub fn settings_json(&self) -> String {
        self.settings.to_string()
    }

    /// The code this spec runs now: the file if it exists, else the built-in.
    pub fn resolve(&self) -> Result<(Origin, Vec<u8>), String> {
        if let Some(file) = &self.file {
            match std::fs::read(file) {
                Ok(bytes) => return Ok((Origin::File(file.clone()), bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.builtin.is_some() => {}
                Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
            }
        }
        match &self.builtin {
            Some(name) => {
                builtin::component(name).map(|b| (Origin::Builtin(name.clone()), b.to_vec())).ok_or_else(|| {
                    format!(
                        "no built-in policy named {name:?} (built-ins: {})",
                        builtin::names().collect::<Vec<_>>().join(", ")
                    )
                })
            }
            None => Err(format!("policy {:?} names neither an existing file nor a built-in", self.name)),
        }
    }
}

pub fn digest(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..12])
}

/// Compiles a component as a policy without calling it (settings `{}`; see
/// [`LoadedPolicy::with_settings`]), for tools that run one component under
/// many settings, like `flockd policy test`.
pub fn compile(engine: &PolicyEngine, name: &str, origin: Origin, bytes: &[u8]) -> Result<LoadedPolicy, LoadError> {
    compile_cached(engine, name, origin, bytes).map(|(policy, _)| policy)
}

/// [`compile`], saying whether the engine's compile cache served it (`None`
/// without a cache).
pub fn compile_cached(
    engine: &PolicyEngine,
    name: &str,
    origin: Origin,
    bytes: &[u8],
) -> Result<(LoadedPolicy, Option<crate::CacheOutcome>), LoadError> {
    let (compiled, outcome) = engine.compile_cached(bytes)?;
    let policy = LoadedPolicy {
        name: name.to_string(),
        origin,
        digest: digest(bytes),
        settings_json: "{}".into(),
        loaded_at: SystemTime::now(),
        compiled: compiled.with_timeout(engine.timeout_for(name)),
    };
    Ok((policy, outcome))
}

/// Why one configured policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// Its code could not be found or read.
    #[error("{0}")]
    Unreadable(String),
    /// Its component is not a policy: not WebAssembly, another world...
    #[error(transparent)]
    Component(#[from] LoadError),
    /// The component loaded, but `configure` failed on its settings (refused
    /// them, trapped or ran out of time reading them).
    #[error(transparent)]
    Settings(CallError),
}

/// A policy of the chain that did not load, and where its code came from.
#[derive(Debug, thiserror::Error)]
#[error("policy {policy:?}: {}{error}", from.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
pub struct ChainLoadError {
    pub policy: String,
    /// The file or built-in, when it could be resolved.
    pub from: Option<Origin>,
    pub error: PolicyLoadError,
}

/// Compiles a component and checks that `configure` accepts the settings.
pub fn load(
    engine: &PolicyEngine,
    spec: &PolicySpec,
    origin: Origin,
    bytes: &[u8],
) -> Result<LoadedPolicy, PolicyLoadError> {
    let compiled = engine.compile(bytes)?.with_timeout(engine.timeout_for(&spec.name));
    let settings_json = spec.settings_json();
    engine.check_settings(&compiled, &settings_json).map_err(PolicyLoadError::Settings)?;
    Ok(LoadedPolicy {
        name: spec.name.clone(),
        origin,
        digest: digest(bytes),
        settings_json,
        loaded_at: SystemTime::now(),
        compiled,
    })
}

/// Loads every spec; any failure is reported with the policy's name and
/// where its code came from, and nothing starts half-loaded.
pub fn load_chain(engine: &PolicyEngine, specs: &[PolicySpec]) -> Result<Chain, Vec<ChainLoadError>> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for spec in specs {
        let failed = |from, error| ChainLoadError { policy: spec.name.clone(), from, error };
        match spec.resolve() {
            Err(e) => errors.push(failed(None, PolicyLoadError::Unreadable(e))),
            Ok((origin, bytes)) => match load(engine, spec, origin.clone(), &bytes) {
                Ok(p) => policies.push(Arc::new(p)),
                Err(e) => errors.push(failed(Some(origin), e)),
            },
        }
    }
    if errors.is_empty() { Ok(Chain { policies }) } else { Err(errors) }
}

/// The errors of [`load_chain`], one per policy, joined by `separator`.
pub fn lines(errors: &[ChainLoadError], separator: &str) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(separator)
}

/// What a new version must do before it replaces the old one: decide on the
/// last real snapshot (or an empty one before the first tick) within the
/// deadline and return a valid plan.
pub fn smoke_test(runtime: &PolicyRuntime, candidate: &LoadedPolicy) -> Result<(), String> {
    let snapshot = runtime.last_snapshot().unwrap_or_else(|| Arc::new(Snapshot::default()));
    let (result, _) = runtime.trial(candidate, &snapshot, &Plan::default());
    result.map(|_| ()).map_err(|e| format!("a trial decide() on the last snapshot {e}"))
}

/// Whether `path` is the file a spec watches (compares canonical parents,
/// since editors and `mv` hand us paths in different spellings).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    let canon = |p: &Path| -> Option<PathBuf> {
        let parent = p.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}
