//! `flockd policy …`: list, inspect, test, export.

mod inspect;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use flockd_wasm::{CallLimits, PolicyEngine, builtin};

pub use inspect::{Check, Inspection, inspect};

use crate::policy_cases::{CaseFile, run_file};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// List the built-in policies, in default chain order.
    List,
    /// Show what a component imports and exports and whether flockd can run
    /// it as a policy. Exits 0 when valid, 1 (with the reason) when not.
    Inspect {
        /// A component file (.wasm).
        file: PathBuf,
        /// Settings JSON to pass to configure().
        #[arg(long, default_value = "{}")]
        settings: String,
        /// Deadline for one call (instantiate + configure + decide), as in
        /// the config's `timeout-ms`.
        #[arg(long, default_value_t = default_timeout_ms())]
        timeout_ms: u64,
    },
    /// Run table-driven case files against their policies. Exits 1 if a case
    /// fails, 2 if a case file cannot be read or names a policy that cannot
    /// be loaded.
    Test {
        /// Case files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Deadline for one call (instantiate + configure + decide), as in
        /// the config's `timeout-ms`.
        #[arg(long, default_value_t = default_timeout_ms())]
        timeout_ms: u64,
        /// `text` for people; `json` or `junit` (XML) for CI pipelines, on
        /// stdout. Exit codes are the same.
        #[arg(long, value_enum, default_value_t = TestFormat::Text)]
        format: TestFormat,
    },
    /// Write a built-in policy's component to a file (e.g. as a starting
    /// point, or to inspect it).
    Export {
        /// A built-in policy name (see `flockd policy list`).
        name: String,
        /// Where to write the component.
        #[arg(short, long)]
        output: PathBuf,
        /// Also write the policy's shipped case file here.
        #[arg(long)]
        cases: Option<PathBuf>,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::List => {
            list();
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Inspect { file, settings, timeout_ms } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let engine = Arc::new(cached(PolicyEngine::new(limits(timeout_ms))?));
            let inspection = inspect(&engine, &file, &bytes, &settings);
            print!("{}", inspection.render());
            Ok(if inspection.is_valid() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        PolicyCommand::Test { files, timeout_ms, format } => test(&files, limits(timeout_ms), format),
        PolicyCommand::Export { name, output, cases } => export(&name, &output, cases.as_deref()),
    }
}

fn list() {
    println!("Built-in policies, in default chain order:");
    for (i, name) in builtin::names().enumerate() {
        let bytes = builtin::component(name).unwrap_or_default();
        let cases = builtin::cases(name).map_or("no case file", |_| "ships cases.toml");
        println!(
            "  {}. {name:<16} {:>8} bytes  version {}  {cases}",
            i + 1,
            bytes.len(),
            flockd_wasm::loader::digest(bytes)
        );
    }
}

fn default_timeout_ms() -> u64 {
    CallLimits::default().timeout.as_millis() as u64
}

fn limits(timeout_ms: u64) -> CallLimits {
    CallLimits { timeout: std::time::Duration::from_millis(timeout_ms), ..CallLimits::default() }
}

/// Compiling a Python policy takes 10-15 s, so the edit-test loop keeps
/// compiled components where `run` would: in a per-user cache folder
/// (`FLOCKD_POLICY_CACHE`, else `$XDG_CACHE_HOME/flockd/policy-cache`, else
/// `~/.cache/flockd/policy-cache`). Without one, every run compiles.
fn cached(engine: PolicyEngine) -> PolicyEngine {
    let Some(dir) = user_cache_dir() else { return engine };
    match flockd_wasm::CompileCache::open(&dir) {
        Ok(cache) => engine.with_compile_cache(cache),
        Err(e) => {
            eprintln!("warning: compiled policies will not be cached: {e}");
            engine
        }
    }
}

fn user_cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("FLOCKD_POLICY_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("flockd/policy-cache")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/flockd/policy-cache")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TestFormat {
    Text,
    Json,
    Junit,
}

fn test(files: &[PathBuf], limits: CallLimits, format: TestFormat) -> anyhow::Result<ExitCode> {
    let engine = Arc::new(cached(PolicyEngine::new(limits)?));
    let (mut unusable, mut failing) = (0, 0);
    let mut results = Vec::new();
    for path in files {
        let result = CaseFile::read(path).and_then(|file| run_file(&engine, &file));
        match &result {
            Ok(outcome) => {
                if format == TestFormat::Text {
                    print!("{}", outcome.render());
                }
                failing += usize::from(!outcome.all_passed());
            }
            Err(e) => {
                eprintln!("error: {e}");
                unusable += 1;
            }
        }
        results.push((path.display().to_string(), result.map_err(|e| e.to_string())));
    }
    match format {
        TestFormat::Text => {}
        TestFormat::Json => println!("{}", crate::policy_cases::report::json(&results)),
        TestFormat::Junit => print!("{}", crate::policy_cases::report::junit(&results)),
    }
    Ok(match (unusable, failing) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(1),
        _ => ExitCode::from(2),
    })
}

fn export(name: &str, output: &Path, cases: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(bytes) = builtin::component(name) else {
        eprintln!(
            "error: no built-in policy named {name:?}; the built-ins are: {}",
            builtin::names().collect::<Vec<_>>().join(", ")
        );
        return Ok(ExitCode::from(2));
    };
    let case_text = match cases {
        Some(_) => Some(builtin::cases(name).with_context(|| format!("built-in {name} ships no case file"))?),
        None => None,
    };
    write_by_rename(output, bytes)?;
    println!("wrote {} ({} bytes, version {})", output.display(), bytes.len(), flockd_wasm::loader::digest(bytes));
    if let (Some(path), Some(text)) = (cases, case_text) {
        // The shipped file names the built-in; point it at the exported copy
        // only if the user asks for that by editing `policy`.
        write_by_rename(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes next to `path` and renames over it, so a hot-reloading flockd
/// watching that folder never reads a half-written component.
fn write_by_rename(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let staging = dir.join(format!(".{}.{}.partial", file_name.to_string_lossy(), std::process::id()));
    std::fs::write(&staging, bytes).with_context(|| format!("cannot write {}", staging.display()))?;
    std::fs::rename(&staging, path).map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        anyhow::anyhow!("cannot move {} to {}: {e}", staging.display(), path.display())
    })
}
