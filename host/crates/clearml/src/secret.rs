//! Credentials by reference. A config file names where a secret lives
//! (`env:NAME` or `file:PATH`), never the secret itself, so configs can be
//! committed, logged and shown on a dashboard.
//!
//! [`SecretRef`] prints the reference; [`Secret`] holds the resolved value and
//! prints `<redacted>` in both Debug and Display, so a stray `{:?}` in a log
//! line cannot leak it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a secret lives. Parses from and serializes to `env:NAME` / `file:PATH`.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the flockd process.
    Env(String),
    /// A file whose contents (minus one trailing newline) are the secret.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "holds a value, not a reference (`env:NAME` or `file:PATH`): secrets are never written in the config. Put it in an environment variable or a file readable only by flockd, write e.g. `env:CLEARML_SECRET_KEY` here, and rotate the secret if this file has held it"
    )]
    BadReference,
    #[error("secret {reference}: environment variable {name} is not set (or not valid UTF-8)")]
    EnvMissing { reference: String, name: String },
    #[error("secret {reference}: cannot read {path}: {reason}")]
    FileUnreadable { reference: String, path: String, reason: String },
    #[error("secret {reference} is empty")]
    Empty { reference: String },
}

impl SecretRef {
    /// Reads the secret now. Errors name the reference, never the value.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| SecretError::EnvMissing { reference: self.to_string(), name: name.clone() })?,
            SecretRef::File(path) => {
                let mut text = std::fs::read_to_string(path).map_err(|e| SecretError::FileUnreadable {
                    reference: self.to_string(),
                    path: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?;
                // Editors and `echo` add one; the secret never ends in a newline.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty { reference: self.to_string() });
        }
        Ok(Secret::new(value))
    }
}

impl FromStr for SecretRef {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("env", name)) if !name.is_empty() => Ok(SecretRef::Env(name.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(SecretRef::File(PathBuf::from(path))),
            // Do not echo the input: someone may have pasted the secret itself.
            _ => Err(SecretError::BadReference),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A resolved secret value. Debug and Display print `<redacted>`; use
/// [`Secret::expose`] exactly where the value must go.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_and_file_and_rejects_the_rest_without_echoing() {
        assert_eq!("env:CML_KEY".parse::<SecretRef>().unwrap(), SecretRef::Env("CML_KEY".into()));
        assert_eq!("file:/run/secrets/k".parse::<SecretRef>().unwrap(), SecretRef::File("/run/secrets/k".into()));
        let err = "hunter2-the-actual-secret".parse::<SecretRef>().unwrap_err().to_string();
        assert!(!err.contains("hunter2-the"), "{err}");
        assert!(err.contains("env:NAME"), "{err}");
        assert!("env:".parse::<SecretRef>().is_err());
    }

    #[test]
    fn resolves_from_file_dropping_one_newline_and_never_prints_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "s3cr$t`x`\n").unwrap();
        let reference = SecretRef::File(path.clone());
        let secret = reference.resolve().unwrap();
        assert_eq!(secret.expose(), "s3cr$t`x`");
        assert!(!format!("{secret:?} {secret} {reference:?} {reference}").contains("s3cr"));

        let missing = SecretRef::File(dir.path().join("nope")).resolve().unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn resolves_from_env_and_reports_missing_variable_by_name() {
        let err = SecretRef::Env("FLOCKD_TEST_SURELY_UNSET_VAR".into()).resolve().unwrap_err();
        assert!(err.to_string().contains("FLOCKD_TEST_SURELY_UNSET_VAR"), "{err}");
        let path_var = SecretRef::Env("PATH".into()).resolve().unwrap();
        assert_eq!(path_var.expose(), std::env::var("PATH").unwrap());
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let r: SecretRef = serde_json::from_str("\"env:X\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"env:X\"");
    }
}
