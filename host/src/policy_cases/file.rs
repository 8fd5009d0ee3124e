//! Reading a case file: exactly the documented keys (kebab-case), anything
//! else is an error naming the key, the file, and the line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flockd_core::{Plan, Snapshot};
use serde::Deserialize;

use super::Expect;

/// Which policy a case file exercises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyRef {
    Builtin(String),
    File(PathBuf),
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyRef::Builtin(name) => write!(f, "built-in {name}"),
            PolicyRef::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CaseFile {
    /// Where it was read from (or a label such as `built-in scale-up`).
    pub source: String,
    pub policy: PolicyRef,
    pub cases: Vec<Case>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Case {
    pub name: String,
    /// Passed to `configure` as JSON; `{}` when absent.
    #[serde(default)]
    pub settings: Option<toml::Table>,
    /// The plan built so far by earlier policies.
    #[serde(default)]
    pub plan: Plan,
    pub snapshot: Snapshot,
    #[serde(default)]
    pub expect: Expect,
}

impl Case {
    pub fn settings_json(&self) -> String {
        match &self.settings {
            Some(table) => serde_json::to_string(table).expect("a TOML table always serializes to JSON"),
            None => "{}".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCaseFile {
    policy: String,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

/// A case file that cannot be used: unreadable, not valid TOML, an unknown
/// key, a missing field, or a policy that cannot be found or loaded.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct CaseFileError {
    pub source_name: String,
    pub message: String,
}

impl CaseFile {
    pub fn read(path: &Path) -> Result<CaseFile, CaseFileError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaseFileError { source_name: source.clone(), message: format!("cannot read: {e}") })?;
        CaseFile::parse(&text, &source, path.parent())
    }

    /// Parses case-file text. `base` is the folder relative policy paths are
    /// resolved against; without one (an embedded file), only built-in
    /// names are allowed.
    pub fn parse(text: &str, source: &str, base: Option<&Path>) -> Result<CaseFile, CaseFileError> {
        let error = |message: String| CaseFileError { source_name: source.to_string(), message };
        // toml's message already says "TOML parse error at line L, column C"
        // and quotes the offending line.
        let raw: RawCaseFile = toml::from_str(text).map_err(|e| error(e.to_string().trim_end().to_string()))?;
        if raw.cases.is_empty() {
            return Err(error("no cases: add at least one [[case]] table".into()));
        }
        let mut names = BTreeSet::new();
        for case in &raw.cases {
            if !names.insert(case.name.as_str()) {
                return Err(error(format!("two cases are named {:?}: give each a distinct name", case.name)));
            }
        }
        let policy = if raw.policy.ends_with(".wasm") || raw.policy.contains('/') {
            match base {
                Some(base) => PolicyRef::File(base.join(&raw.policy)),
                None => {
                    return Err(error(format!(
                        "policy {:?} is a path, but this case file has no folder to resolve it in",
                        raw.policy
                    )));
                }
            }
        } else {
            PolicyRef::Builtin(raw.policy)
        };
        Ok(CaseFile { source: source.to_string(), policy, cases: raw.cases })
    }
}
