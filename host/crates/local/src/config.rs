//! Settings of a `[provider.NAME]` of kind "local" and of its resources'
//! `[resource.NAME.local]` tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Provider-level settings.
///
/// ```toml
/// state-dir = "/var/lib/flockd/local"
/// terminate-grace-ms = 10000
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LocalProviderConfig {
    /// Directory holding one record per running machine (`<instance-id>.json`)
    /// and its output (`<instance-id>.log`). Required; created if missing.
    /// A restarted flockd adopts the live machines recorded here, so keep it
    /// on persistent storage and use one directory per flockd.
    pub state_dir: PathBuf,
    /// How long terminate waits after SIGTERM to the machine's process group
    /// before sending SIGKILL, in milliseconds. Default: 10000 (10 s).
    #[serde(default = "default_terminate_grace_ms")]
    pub terminate_grace_ms: u64,
}

fn default_pass_env() -> Vec<String> {
    ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR"].map(String::from).to_vec()
}

fn default_terminate_grace_ms() -> u64 {
    10_000
}

/// What one resource runs: a "machine" is one process (and its process
/// group) started from this command.
///
/// The process does not inherit flockd's environment (which may hold cloud
/// keys): it gets the variables named in `pass-env` that flockd has, then
/// `env`, then these, which override both:
/// `CLEARML_WORKER_ID` (the worker id its agent must register with),
/// `FLOCKD_CLUSTER`, `FLOCKD_RESOURCE`, `FLOCKD_INSTANCE_ID` and
/// `FLOCKD_QUEUES` (the queues to serve, separated by spaces).
///
/// ```toml
/// command = "clearml-agent"
/// args = ["daemon", "--queue", "cpu", "--foreground"]
/// env = { CLEARML_API_HOST = "http://127.0.0.1:8008" }
/// working-dir = "/srv/agent"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LocalResourceConfig {
    /// Program to run, looked up in `PATH` unless it contains a `/`. Required.
    /// It should not daemonize: when it exits, the machine counts as gone.
    pub command: String,
    /// Arguments, passed as they are (no shell). Default: none.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables to set. Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of flockd's own environment variables the process inherits.
    /// Default: PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_ALL, TZ, TMPDIR.
    #[serde(default = "default_pass_env")]
    pub pass_env: Vec<String>,
    /// Working directory of the process. Default: the state directory.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
}

impl LocalResourceConfig {
    /// A resource running `command` with `args`, other settings at their
    /// defaults.
    pub fn new(command: impl Into<String>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        LocalResourceConfig {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            pass_env: default_pass_env(),
            working_dir: None,
        }
    }
}
