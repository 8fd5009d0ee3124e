//! `[clearml]` in flockd's TOML config.

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// How to reach a ClearML API server. Credentials are references
/// (`env:NAME` / `file:PATH`), resolved when the client is built.
///
/// ```toml
/// [clearml]
/// api-host = "https://api.clear.ml"
/// access-key = "env:CLEARML_API_ACCESS_KEY"
/// secret-key = "file:/run/secrets/clearml-secret"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClearmlConfig {
    /// Base URL of the API server, e.g. `https://api.clear.ml` or `http://127.0.0.1:8008`.
    pub api_host: String,
    pub access_key: SecretRef,
    pub secret_key: SecretRef,
    /// Per-request timeout, seconds.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Attempts per call (first try included) on throttling, 502/503/509 and timeouts.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Workers silent for longer than this are not reported (`workers.get_all last_seen`).
    #[serde(default = "default_worker_last_seen_secs")]
    pub worker_last_seen_secs: u64,
    /// Create configured queues the server does not have (at start).
    #[serde(default)]
    pub create_missing_queues: bool,
}

fn default_request_timeout_secs() -> u64 {
    30
}

fn default_max_attempts() -> u32 {
    4
}

fn default_worker_last_seen_secs() -> u64 {
    600
}

impl ClearmlConfig {
    pub fn new(api_host: impl Into<String>, access_key: SecretRef, secret_key: SecretRef) -> Self {
        ClearmlConfig {
            api_host: api_host.into(),
            access_key,
            secret_key,
            request_timeout_secs: default_request_timeout_secs(),
            max_attempts: default_max_attempts(),
            worker_last_seen_secs: default_worker_last_seen_secs(),
            create_missing_queues: false,
        }
    }
}
