//! flockd's TOML configuration: parse, validate, and turn into the plain
//! structs the controller and the policy runtime take.
//!
//! Provider-specific tables (`[provider.NAME]`, `[resource.NAME.<kind>]`) are
//! kept as TOML here and parsed by the provider's own crate when it is built
//! (see `providers.rs`), so this module stays free of cloud SDK types and a
//! build without a cloud feature still reads every config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flockd_clearml::secret::SecretRef;
use flockd_core::{ControllerConfig, HardLimits, Market, QueueSpec, ResourceSpec};
use flockd_wasm::PolicySpec;
use serde::Deserialize;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Tags every machine this flockd launches; two flockds with different
    /// cluster ids never touch each other's machines. [a-z0-9-], ≤ 32 chars.
    pub cluster: String,
    /// Seconds between ticks.
    #[serde(default = "defaults::poll_interval_secs")]
    pub poll_interval_secs: f64,
    /// Record what would be done, do nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Where host state and the decision journal live.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    pub limits: Limits,
    /// The ClearML server to watch. Without it, `flockd run` refuses to start
    /// (use `flockd dev` for the built-in server).
    #[serde(default)]
    pub clearml: Option<flockd_clearml::ClearmlConfig>,
    /// Start-up settings for launched machines' agents.
    #[serde(default)]
    pub agent: Option<AgentSection>,
    #[serde(default, rename = "queue")]
    pub queues: Vec<QueueEntry>,
    #[serde(default, rename = "resource")]
    pub resources: BTreeMap<String, ResourceEntry>,
    #[serde(default, rename = "provider")]
    pub providers: BTreeMap<String, ProviderEntry>,
    #[serde(default)]
    pub policies: PoliciesSection,
    /// The policy chain in order; the four built-ins when omitted.
    #[serde(default, rename = "policy")]
    pub policy: Vec<PolicyEntry>,
    #[serde(default)]
    pub http: HttpSection,
    /// Advanced controller timings.
    #[serde(default)]
    pub controller: ControllerSection,
    #[serde(default)]
    pub journal: JournalSection,
    /// Where the host state and journal live: the embedded file (one
    /// flockd) or PostgreSQL (two or more, one leading).
    #[serde(default)]
    pub store: StoreSection,
    /// Where this config was read from (relative paths resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

mod defaults {
    use std::path::PathBuf;
    pub fn poll_interval_secs() -> f64 {
        10.0
    }
    pub fn journal_max_records() -> u64 {
        100_000
    }
    pub fn journal_max_mib() -> u64 {
        256
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from("flockd-state")
    }
    pub fn policy_dir() -> PathBuf {
        PathBuf::from("policies")
    }
    pub fn timeout_ms() -> u64 {
        50
    }
    pub fn memory_mib() -> u64 {
        64
    }
    pub fn listen() -> String {
        "127.0.0.1:9090".into()
    }
    pub fn yes() -> bool {
        true
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Hard cap on instances of all resources together.
    pub max_instances: u32,
    /// Hard cap on the fleet's cost per hour (same currency as prices).
    pub max_cost_per_hour: f64,
    /// What a UTC day may cost: a launch is refused once the day's spend
    /// plus the fleet's cost until midnight would pass it.
    #[serde(default)]
    pub max_cost_per_day: Option<f64>,
    /// Likewise for the UTC calendar month.
    #[serde(default)]
    pub max_cost_per_month: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QueueEntry {
    pub name: String,
    /// Resource names, most preferred first (e.g. spot, then on-demand).
    pub resources: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResourceEntry {
    /// The `[provider.NAME]` that launches it.
    pub provider: String,
    pub max_instances: u32,
    /// Required on a real cloud (aws, gcp): the cost cap counts every
    /// machine at its price, so a missing one would make it free.
    #[serde(default)]
    pub price_per_hour: Option<f64>,
    #[serde(default)]
    pub market: Market,
    /// Provider-specific settings, under the provider's kind:
    /// `[resource.NAME.aws]`, `.gcp`, `.local` or `.simulated`.
    #[serde(default)]
    pub aws: Option<toml::Value>,
    #[serde(default)]
    pub gcp: Option<toml::Value>,
    #[serde(default)]
    pub local: Option<toml::Value>,
    #[serde(default)]
    pub simulated: Option<toml::Value>,
    /// `[resource.NAME.agent]`: overrides of `[agent]`, key by key.
    #[serde(default)]
    pub agent: Option<ResourceAgent>,
}

impl PolicyEntry {
    /// Its failure withholds a tick's launches: as set, else only `budget`.
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(self.name == "budget")
    }
}

impl Config {
    /// How long the on-shutdown terminations may take.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.controller.shutdown_timeout_secs.unwrap_or(60.0))
    }

    /// Whether any provider is a real cloud, whose machines boot from a
    /// start-up script that starts the agent.
    pub fn has_real_cloud(&self) -> bool {
        self.providers.values().any(|p| matches!(p.kind, ProviderKind::Aws | ProviderKind::Gcp))
    }

    /// The ClearML api-host the agents talk to: `[agent]`'s, else `[clearml]`'s.
    pub fn agent_api_host(&self) -> Option<String> {
        let agent = self.agent.as_ref();
        agent.and_then(|a| a.api_host.clone()).or_else(|| self.clearml.as_ref().map(|c| c.api_host.clone()))
    }

    /// The ClearML web UI and file server the agents use: `[agent]
    /// web-host` and `files-host` where set, else derived from the api-host
    /// ([`derive_web_and_files_hosts`]); `None` for one that is neither.
    pub fn clearml_web_and_files_hosts(&self) -> (Option<String>, Option<String>) {
        let agent = self.agent.as_ref();
        let derived = self.agent_api_host().and_then(|api| derive_web_and_files_hosts(&api));
        (
            agent.and_then(|a| a.web_host.clone()).or_else(|| derived.as_ref().map(|d| d.0.clone())),
            agent.and_then(|a| a.files_host.clone()).or_else(|| derived.map(|d| d.1)),
        )
    }

    /// The ClearML web UI's address, when known.
    pub fn clearml_web_host(&self) -> Option<String> {
        self.clearml_web_and_files_hosts().0
    }
}

/// The web UI and file server of a ClearML server, from its api-host, as
/// ClearML names them: `https://api.example.com` → `https://app.example.com`
/// and `https://files.example.com`; a self-hosted server on its default
/// ports, `http://host:8008` → `http://host:8080` and `http://host:8081`.
/// `None` when the api-host follows neither convention.
pub fn derive_web_and_files_hosts(api_host: &str) -> Option<(String, String)> {
    let url = url::Url::parse(api_host).ok()?;
    let host = url.host_str()?;
    let text = |u: url::Url| u.as_str().trim_end_matches('/').to_string();
    let (mut web, mut files) = (url.clone(), url.clone());
    if let Some(rest) = host.strip_prefix("api.") {
        web.set_host(Some(&format!("app.{rest}"))).ok()?;
        files.set_host(Some(&format!("files.{rest}"))).ok()?;
    } else if url.port() == Some(8008) {
        web.set_port(Some(8080)).ok()?;
        files.set_port(Some(8081)).ok()?;
    } else {
        return None;
    }
    Some((text(web), text(files)))
}

impl ResourceEntry {
    /// Its price per hour (0 where none is needed: local and simulated).
    pub fn price(&self) -> f64 {
        self.price_per_hour.unwrap_or(0.0)
    }

    /// Its `[resource.NAME.<kind>]` table as the provider reads it: the
    /// market is written once, on the resource, and the cloud's own key for
    /// it (aws `market`, gcp `provisioning`) follows it unless the table sets
    /// it (which `check` warns about, and refuses when the two disagree).
    pub fn settings_for(&self, kind: ProviderKind) -> Option<toml::Value> {
        let mut table = match kind {
            ProviderKind::Aws => self.aws.clone(),
            ProviderKind::Gcp => self.gcp.clone(),
            ProviderKind::Local => self.local.clone(),
            ProviderKind::Simulated => self.simulated.clone(),
        }?;
        if let (Some((key, value)), toml::Value::Table(t)) = (self.market_in(kind), &mut table) {
            t.entry(key).or_insert_with(|| toml::Value::String(value.to_owned()));
        }
        Some(table)
    }

    /// The provider kind's key for the market and its value for this
    /// resource's market; none where the kind has no market.
    pub fn market_in(&self, kind: ProviderKind) -> Option<(&'static str, &'static str)> {
        let spot = self.market == Market::Spot;
        match kind {
            ProviderKind::Aws => Some(("market", if spot { "spot" } else { "on-demand" })),
            ProviderKind::Gcp => Some(("provisioning", if spot { "spot" } else { "standard" })),
            ProviderKind::Local | ProviderKind::Simulated => None,
        }
    }

    /// Whether `[resource.NAME.<kind>]` repeats the market itself.
    pub fn repeats_market(&self, kind: ProviderKind) -> bool {
        let table = match kind {
            ProviderKind::Aws => self.aws.as_ref(),
            ProviderKind::Gcp => self.gcp.as_ref(),
            ProviderKind::Local | ProviderKind::Simulated => None,
        };
        matches!((table, self.market_in(kind)), (Some(toml::Value::Table(t)), Some((key, _))) if t.contains_key(key))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Aws,
    Gcp,
    Local,
    Simulated,
}

impl ProviderKind {
    /// A cloud that sends a bill: its resources must say their price.
    pub fn bills(self) -> bool {
        matches!(self, ProviderKind::Aws | ProviderKind::Gcp)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Aws => "aws",
            ProviderKind::Gcp => "gcp",
            ProviderKind::Local => "local",
            ProviderKind::Simulated => "simulated",
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProviderEntry {
    pub kind: ProviderKind,
    /// Everything else: the provider crate's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PoliciesSection {
    /// A file `<dir>/<name>.wasm` replaces the policy of that name while
    /// flockd runs (watched; publish by writing elsewhere and renaming).
    #[serde(default = "defaults::policy_dir")]
    pub dir: PathBuf,
    /// Watch `dir` and hot-swap changed policies.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
    /// Per-call deadline for one policy (instantiate + configure + decide).
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Memory cap per policy instance.
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: u64,
    /// Compiled policies are cached here, keyed by content and engine
    /// settings, so a restart loads a Python policy in milliseconds.
    /// Default `<state-dir>/policy-cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The policy chain, in order: built-ins and `[[policy]]` names. Absent:
    /// the built-ins in their default order, every other `[[policy]]` just
    /// before `budget` — so listing one built-in to change its settings
    /// never drops the others (scale-up above all).
    #[serde(default)]
    pub chain: Option<Vec<String>>,
}

impl Default for PoliciesSection {
    fn default() -> Self {
        PoliciesSection {
            dir: defaults::policy_dir(),
            watch: true,
            timeout_ms: defaults::timeout_ms(),
            memory_mib: defaults::memory_mib(),
            cache_dir: None,
            chain: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PolicyEntry {
    pub name: String,
    /// Defaults to `<policies.dir>/<name>.wasm`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Passed to the policy's `configure` as JSON.
    #[serde(default)]
    pub settings: Option<toml::Table>,
    /// This policy's own per-call deadline, e.g. for an interpreted (Python,
    /// JS) policy; default `policies.timeout-ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// When this policy fails (error, trap, timeout, invalid plan), the tick
    /// launches nothing instead of passing its input plan on. Default: true
    /// for the built-in `budget` (a spend guard must not fail open), false
    /// for the rest.
    #[serde(default)]
    pub required: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpSection {
    /// Status API, metrics and dashboard. Loopback by default; any other
    /// address requires `token`.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// Bearer token reference (`env:NAME` or `file:PATH`).
    #[serde(default)]
    pub token: Option<SecretRef>,
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection { listen: defaults::listen(), token: None, enabled: true }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ControllerSection {
    pub observe_timeout_secs: Option<f64>,
    pub failure_retention_secs: Option<f64>,
    pub launch_concurrency: Option<usize>,
    pub launch_visibility_grace_secs: Option<f64>,
    pub termination_retry_secs: Option<f64>,
    pub max_observation_age_secs: Option<f64>,
    pub action_timeout_secs: Option<f64>,
    /// What to terminate on SIGTERM: nothing (default), the idle machines,
    /// or every machine whose worker is not busy.
    #[serde(default)]
    pub on_shutdown: flockd_core::OnShutdown,
    /// How long that may take before flockd exits anyway (default 60 s,
    /// within systemd's default 90 s stop timeout).
    pub shutdown_timeout_secs: Option<f64>,
}

/// `[agent]`: how launched machines start their agent.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AgentSection {
    /// The API server agents talk to; defaults to `[clearml] api-host`.
    pub api_host: Option<String>,
    pub web_host: Option<String>,
    pub files_host: Option<String>,
    /// Agent credentials; default to `[clearml]`'s.
    pub access_key: Option<SecretRef>,
    pub secret_key: Option<SecretRef>,
    /// pip requirement for the agent, pinned (default clearml-agent==3.0.3).
    pub agent_package: Option<String>,
    /// Default docker image for tasks (`--docker`); a task's own container overrides it.
    pub docker_image: Option<String>,
    #[serde(default)]
    pub cpu_only: bool,
    pub git_user: Option<String>,
    pub git_pass: Option<SecretRef>,
    pub s3_key: Option<SecretRef>,
    pub s3_secret: Option<SecretRef>,
    pub s3_region: Option<String>,
    /// Appended to clearml.conf verbatim.
    pub extra_clearml_conf: Option<String>,
    /// Run before the agent starts.
    pub extra_bash_script: Option<String>,
}

/// `[resource.NAME.agent]`: this resource's machines start their agent as
/// `[agent]` says, but for the keys given here (a GPU resource's docker
/// image, a CPU resource's `cpu-only`). Hosts and credentials are the
/// fleet's: set them in `[agent]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResourceAgent {
    pub agent_package: Option<String>,
    /// "" runs this resource's tasks without docker, whatever `[agent]` says.
    pub docker_image: Option<String>,
    pub cpu_only: Option<bool>,
    pub extra_clearml_conf: Option<String>,
    pub extra_bash_script: Option<String>,
}

/// `[journal]`: how much of the decision journal the store keeps.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JournalSection {
    /// Ticks kept (one record each). Default 100,000.
    #[serde(default = "defaults::journal_max_records")]
    pub max_records: u64,
    /// Bytes kept, in MiB. Default 256.
    #[serde(default = "defaults::journal_max_mib")]
    pub max_mib: u64,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection { max_records: defaults::journal_max_records(), max_mib: defaults::journal_max_mib() }
    }
}

/// `[store]`: where the host state and the journal live.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreSection {
    #[serde(default)]
    pub kind: StoreKind,
    /// PostgreSQL connection string by reference (`env:NAME` or
    /// `file:PATH`): it usually carries a password.
    pub url: Option<SecretRef>,
    /// This process's name in the leader lease. Default: host name, process
    /// id and start time.
    pub holder: Option<String>,
    /// Seconds a lease lasts without renewal (default 15).
    pub lease_secs: Option<f64>,
    /// A leader that could not renew for this long stops acting (default 10).
    pub renew_deadline_secs: Option<f64>,
    /// Seconds between campaigns and renewals (default 2).
    pub retry_secs: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// A redb file in `state-dir`: one flockd.
    #[default]
    Embedded,
    /// A PostgreSQL database shared by several flockd, one leading.
    Postgres,
}

impl StoreSection {
    pub fn lease_timings(&self) -> flockd_core::LeaseTimings {
        let d = flockd_core::LeaseTimings::default();
        let secs = |v: Option<f64>, default: Duration| v.map_or(default, Duration::from_secs_f64);
        flockd_core::LeaseTimings {
            lease: secs(self.lease_secs, d.lease),
            renew_deadline: secs(self.renew_deadline_secs, d.renew_deadline),
            retry: secs(self.retry_secs, d.retry),
        }
    }
}

/// A config problem, with where it is and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", at.map(|a| format!(":{a}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    /// Line and column of the offending key, when known.
    pub at: Option<crate::toml_location::Location>,
    pub message: String,
}

/// toml's message, made to say which key and what to write: a wrong type
/// names the key it was given for; a missing top-level section or field
/// says what it is for and shows a minimal one.
fn explain_parse_error(text: &str, span: Option<std::ops::Range<usize>>, message: &str) -> String {
    if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
        let hint = match field {
            "cluster" => {
                "cluster names this flockd's fleet and tags every machine it launches: add e.g. cluster = \"ml\" at the top of the file"
            }
            "limits" => {
                "[limits] caps the whole fleet, whatever the policies ask: add e.g.\n  [limits]\n  max-instances = 10\n  max-cost-per-hour = 25.0"
            }
            "max-instances" => {
                "max-instances is the most machines this section allows at once: add e.g. max-instances = 4"
            }
            "max-cost-per-hour" => {
                "max-cost-per-hour is what the whole fleet may cost per hour at most: add e.g. max-cost-per-hour = 25.0"
            }
            "provider" => {
                "provider names the [provider.NAME] section that launches this resource's machines: add e.g. provider = \"aws\""
            }
            "kind" => "kind says what launches machines: \"aws\", \"gcp\", \"local\" or \"simulated\"",
            "name" => {
                "add a name: a [[queue]]'s is its ClearML queue's (e.g. name = \"gpu\"), a [[policy]]'s a built-in's or its component's (e.g. name = \"idle\")"
            }
            "resources" => {
                "every [[queue]] lists the resources that serve it, most preferred first: add e.g. resources = [\"gpu-spot\", \"gpu-on-demand\"]"
            }
            _ => return format!("{message}: add `{field} = …` here"),
        };
        return format!("{message}: {hint}");
    }
    // A value's error names its key, and the table it is in: the key is on
    // the line the value's span starts on, the table on the last header
    // above it.
    let Some(start) = span.map(|s| s.start.min(text.len())) else { return message.to_string() };
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let Some((key, _)) = text[line_start..].split_once('=') else { return message.to_string() };
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "-_.\"".contains(c)) {
        return message.to_string();
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']') && !l.starts_with("[["));
    match table {
        Some(table) => format!("{table} {key}: {message}"),
        None => format!("{key}: {message}"),
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, e) in self.0.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// A semantic problem: the key it is about (table keys and array indices,
/// e.g. `["resource", "gpu", "provider"]`) and what to do.
struct Invalid {
    key: Vec<String>,
    message: String,
}

fn invalid(key: &[&str], message: impl Into<String>) -> Invalid {
    Invalid { key: key.iter().map(|k| k.to_string()).collect(), message: message.into() }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            at: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates; `path` is used for messages and relative paths.
    /// A file that does not parse (bad syntax, a wrong type, an unknown
    /// key) gives its first error; one that parses gives every problem.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.clone(),
            at: e.span().map(|s| crate::toml_location::at_offset(text, s.start)),
            message: explain_parse_error(text, e.span(), e.message().trim_end()),
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let errors: Vec<ConfigError> = config
            .validate()
            .into_iter()
            .map(|e| {
                let key: Vec<&str> = e.key.iter().map(String::as_str).collect();
                ConfigError { file: file.clone(), at: crate::toml_location::locate(text, &key), message: e.message }
            })
            .collect();
        if errors.is_empty() { Ok(config) } else { Err(ConfigErrors(errors)) }
    }

    /// Every semantic problem in the config, not only the first: a user
    /// fixes them all in one go.
    fn validate(&self) -> Vec<Invalid> {
        let mut errors = Vec::new();
        let ok_id = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !ok_id(&self.cluster) {
            errors.push(invalid(
                &["cluster"],
                format!(
                    "cluster = {:?}: use 1–32 characters of a-z, 0-9 and '-' (it becomes a cloud tag and label)",
                    self.cluster
                ),
            ));
        }
        if !seconds_ok(self.poll_interval_secs, false) {
            errors.push(invalid(
                &["poll-interval-secs"],
                format!("poll-interval-secs = {}: must be more than 0 and at most a year", self.poll_interval_secs),
            ));
        }
        // The engine's own message for these (a pooling-allocator error)
        // says nothing a config writer can act on.
        if !(1..=4096).contains(&self.policies.memory_mib) {
            errors.push(invalid(
                &["policies", "memory-mib"],
                format!(
                    "policies.memory-mib = {}: each policy instance needs 1 to 4096 MiB (default 64; a Python policy uses ~6)",
                    self.policies.memory_mib
                ),
            ));
        }
        if !(1..=60_000).contains(&self.policies.timeout_ms) {
            errors.push(invalid(
                &["policies", "timeout-ms"],
                format!(
                    "policies.timeout-ms = {}: a policy call's deadline must be 1 to 60000 ms (default 50)",
                    self.policies.timeout_ms
                ),
            ));
        }
        let hosts = self.clearml.iter().map(|c| ("clearml", "api-host", Some(&c.api_host))).chain(
            self.agent.iter().flat_map(|a| {
                [
                    ("agent", "api-host", a.api_host.as_ref()),
                    ("agent", "web-host", a.web_host.as_ref()),
                    ("agent", "files-host", a.files_host.as_ref()),
                ]
            }),
        );
        for (section, key, value) in hosts {
            let Some(value) = value else { continue };
            let url_ok =
                url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !url_ok {
                errors.push(invalid(
                    &[section, key],
                    format!(
                        "{section}.{key} = {value:?} is not an http(s) URL: write it with its scheme, e.g. \"https://api.clear.ml\" or \"http://clearml.internal:8008\""
                    ),
                ));
            }
        }
        if let Some(c) = &self.clearml {
            for (key, value, range, meaning) in [
                (
                    "request-timeout-secs",
                    c.request_timeout_secs,
                    1..=600,
                    "how long one request to the ClearML server may take",
                ),
                ("max-attempts", u64::from(c.max_attempts), 1..=20, "tries per call, the first included"),
                (
                    "worker-last-seen-secs",
                    c.worker_last_seen_secs,
                    10..=86_400,
                    "how long a silent worker still counts as registered",
                ),
            ] {
                if !range.contains(&value) {
                    errors.push(invalid(
                        &["clearml", key],
                        format!("clearml.{key} = {value}: {meaning}; use {} to {}", range.start(), range.end()),
                    ));
                }
            }
        }
        if self.queues.is_empty() {
            errors.push(invalid(&[], "no [[queue]]: add at least one queue with the resources that serve it"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            let i = i.to_string();
            if q.name.trim().is_empty() {
                errors.push(invalid(
                    &["queue", &i, "name"],
                    "a [[queue]] has an empty name: give the ClearML queue's name, e.g. name = \"gpu\"",
                ));
            }
            if !seen.insert(&q.name) {
                errors.push(invalid(
                    &["queue", &i, "name"],
                    format!("queue {:?} is defined twice: rename or merge the two [[queue]] tables", q.name),
                ));
            }
            if q.resources.is_empty() {
                errors.push(invalid(
                    &["queue", &i, "resources"],
                    format!("queue {:?} has no resources: list at least one [resource.NAME] in `resources`", q.name),
                ));
            }
            for (j, r) in q.resources.iter().enumerate() {
                if q.resources[..j].contains(r) {
                    errors.push(invalid(
                        &["queue", &i, "resources", &j.to_string()],
                        format!(
                            "queue {:?} lists resource {r:?} twice: each resource appears once, in order of preference",
                            q.name
                        ),
                    ));
                }
                if !self.resources.contains_key(r) {
                    errors.push(invalid(
                        &["queue", &i, "resources", &j.to_string()],
                        format!(
                            "queue {:?} lists resource {r:?}, which has no [resource.{r}] section (defined: {}): add the section or fix the name",
                            q.name,
                            list(self.resources.keys())
                        ),
                    ));
                }
            }
        }
        for (name, r) in &self.resources {
            let at = |key: &str| ["resource", name.as_str(), key].map(String::from).to_vec();
            let here = |key: &str, message: String| Invalid { key: at(key), message };
            // '_' too, as ClearML users name resources (gpu_g4dn): EC2 tags
            // and GCE labels take it; a GCE instance name gets '-' instead.
            if !ok_id(&name.replace('_', "-")) {
                errors.push(invalid(
                    &["resource", name],
                    format!("resource name {name:?}: use 1–32 characters of a-z, 0-9, '-' and '_'"),
                ));
            }
            let Some(p) = self.providers.get(&r.provider) else {
                errors.push(here(
                    "provider",
                    format!(
                        "resource {name:?} uses provider {:?}, which has no [provider.{}] section (defined: {}): add it or fix the name",
                        r.provider,
                        r.provider,
                        list(self.providers.keys())
                    ),
                ));
                continue;
            };
            if r.max_instances == 0 {
                errors.push(here(
                    "max-instances",
                    format!(
                        "resource {name:?}: max-instances = 0 means it can never launch; remove it or raise the cap"
                    ),
                ));
            }
            if r.max_instances > self.limits.max_instances {
                errors.push(here(
                    "max-instances",
                    format!(
                        "resource {name:?}: max-instances {} exceeds limits.max-instances {}; lower one of them",
                        r.max_instances, self.limits.max_instances
                    ),
                ));
            }
            if r.price_per_hour.is_none() && self.on_real_cloud(r) {
                errors.push(invalid(
                    &["resource", name],
                    format!(
                        "resource {name:?} runs on provider {:?} (a real cloud) but has no price-per-hour: the cost cap (limits.max-cost-per-hour) counts every machine at its price, so without one its machines would be free to it. Add price-per-hour = <its hourly price> to [resource.{name}] (an explicit 0 is allowed, and `flockd check` warns about it)",
                        r.provider
                    ),
                ));
            }
            if r.price() < 0.0 || !r.price().is_finite() {
                errors.push(here(
                    "price-per-hour",
                    format!("resource {name:?}: price-per-hour must be a finite number ≥ 0"),
                ));
            }
            if r.price() > self.limits.max_cost_per_hour {
                errors.push(here(
                    "price-per-hour",
                    format!(
                        "resource {name:?}: one instance costs {}/h, more than limits.max-cost-per-hour {}: it could never launch; raise the cap or remove the resource",
                        r.price(),
                        self.limits.max_cost_per_hour
                    ),
                ));
            }
            // `.simulated` is allowed on every resource: `simulate` and `dev`
            // replay a production config with its machines' boot times and
            // outages; `run` ignores it.
            for (kind, present) in [
                (ProviderKind::Aws, r.aws.is_some()),
                (ProviderKind::Gcp, r.gcp.is_some()),
                (ProviderKind::Local, r.local.is_some()),
            ] {
                if present && kind != p.kind {
                    errors.push(here(
                        &kind.to_string(),
                        format!(
                            "resource {name:?} has a [resource.{name}.{kind}] table but its provider {:?} is of kind {}: rename the table to [resource.{name}.{}]",
                            r.provider, p.kind, p.kind
                        ),
                    ));
                }
            }
            if !self.queues.iter().any(|q| q.resources.contains(name)) {
                errors.push(invalid(
                    &["resource", name],
                    format!("resource {name:?} serves no queue: add it to a [[queue]]'s resources or remove it"),
                ));
            }
        }
        if self.limits.max_instances == 0 {
            errors.push(invalid(&["limits", "max-instances"], "limits.max-instances = 0: nothing could ever launch"));
        }
        if self.limits.max_cost_per_hour.is_nan() || self.limits.max_cost_per_hour <= 0.0 {
            errors.push(invalid(&["limits", "max-cost-per-hour"], "limits.max-cost-per-hour must be more than 0"));
        }
        for (key, value) in
            [("max-cost-per-day", self.limits.max_cost_per_day), ("max-cost-per-month", self.limits.max_cost_per_month)]
        {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                errors.push(invalid(
                    &["limits", key],
                    format!("limits.{key} = {v}: give an amount more than 0 in the prices' currency, or leave it out for no such budget"),
                ));
            }
        }
        let c = &self.controller;
        for (key, value, zero_ok) in [
            ("observe-timeout-secs", c.observe_timeout_secs, false),
            ("failure-retention-secs", c.failure_retention_secs, false),
            ("launch-visibility-grace-secs", c.launch_visibility_grace_secs, true),
            ("termination-retry-secs", c.termination_retry_secs, false),
            // 0 would refuse every termination, silently: not a setting.
            ("max-observation-age-secs", c.max_observation_age_secs, false),
            ("action-timeout-secs", c.action_timeout_secs, false),
            ("shutdown-timeout-secs", c.shutdown_timeout_secs, false),
        ] {
            if let Some(v) = value
                && !seconds_ok(v, zero_ok)
            {
                let least = if zero_ok { "0 or more" } else { "more than 0" };
                errors.push(invalid(
                    &["controller", key],
                    format!("controller.{key} = {v}: use a number of seconds, {least} and at most a year"),
                ));
            }
        }
        // A launch cut by the action timeout counts as launching for the
        // grace from when it was given up; a grace shorter than the call
        // itself may take says the cloud lists a machine faster than it
        // answers for it, which no cloud promises.
        let grace = c
            .launch_visibility_grace_secs
            .unwrap_or(flockd_core::controller::DEFAULT_LAUNCH_VISIBILITY_GRACE.as_secs_f64());
        let action_timeout =
            c.action_timeout_secs.unwrap_or(flockd_core::controller::DEFAULT_ACTION_TIMEOUT.as_secs_f64());
        if grace < action_timeout {
            let key = if c.launch_visibility_grace_secs.is_some() {
                "launch-visibility-grace-secs"
            } else {
                "action-timeout-secs"
            };
            errors.push(invalid(
                &["controller", key],
                format!(
                    "controller.launch-visibility-grace-secs ({grace}) is shorter than controller.action-timeout-secs ({action_timeout}): a launch whose answer never came would stop counting against the caps while the cloud may still be making its machine; raise the grace to at least the action timeout"
                ),
            ));
        }
        if c.launch_concurrency == Some(0) {
            errors.push(invalid(
                &["controller", "launch-concurrency"],
                "controller.launch-concurrency = 0 would never launch: use 1 or more",
            ));
        }
        if !(1..=1_000_000_000).contains(&self.journal.max_records) {
            errors.push(invalid(
                &["journal", "max-records"],
                format!(
                    "journal.max-records = {}: keep 1 to 1000000000 ticks of journal (default 100000)",
                    self.journal.max_records
                ),
            ));
        }
        if !(1..=1_048_576).contains(&self.journal.max_mib) {
            errors.push(invalid(
                &["journal", "max-mib"],
                format!("journal.max-mib = {}: keep 1 to 1048576 MiB of journal (default 256)", self.journal.max_mib),
            ));
        }
        let st = &self.store;
        let mut timings_ok = true;
        for (key, value) in [
            ("lease-secs", st.lease_secs),
            ("renew-deadline-secs", st.renew_deadline_secs),
            ("retry-secs", st.retry_secs),
        ] {
            if let Some(v) = value
                && !seconds_ok(v, false)
            {
                timings_ok = false;
                errors.push(invalid(
                    &["store", key],
                    format!("store.{key} = {v}: use a number of seconds, more than 0 and at most a year"),
                ));
            }
        }
        if timings_ok && let Err(why) = st.lease_timings().validate() {
            let key = ["lease-secs", "renew-deadline-secs", "retry-secs"]
                .into_iter()
                .zip([st.lease_secs, st.renew_deadline_secs, st.retry_secs])
                .find_map(|(k, v)| v.map(|_| k))
                .unwrap_or("lease-secs");
            errors.push(invalid(&["store", key], format!("[store] lease timings: {why}")));
        }
        match (st.kind, &st.url) {
            (StoreKind::Postgres, None) => errors.push(invalid(
                &["store", "kind"],
                "store.kind = \"postgres\" needs store.url: the connection string by reference, e.g. url = \"env:FLOCKD_DATABASE_URL\"",
            )),
            (StoreKind::Embedded, Some(_)) => errors.push(invalid(
                &["store", "url"],
                "store.url is for kind = \"postgres\": the embedded store is a file in state-dir; set kind = \"postgres\" or drop url",
            )),
            _ => {}
        }
        if let Some(h) = &st.holder
            && (h.is_empty() || h.len() > 200 || h.chars().any(char::is_control))
        {
            errors.push(invalid(
                &["store", "holder"],
                "store.holder: give 1–200 printable characters naming this process (or leave it out for host name and process id)",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.policy.iter().enumerate() {
            let i = i.to_string();
            if !names.insert(&p.name) {
                errors.push(invalid(
                    &["policy", &i, "name"],
                    format!("policy {:?} has two [[policy]] entries: merge them into one", p.name),
                ));
            }
            if let Some(chain) = &self.policies.chain
                && !chain.contains(&p.name)
            {
                errors.push(invalid(
                    &["policy", &i, "name"],
                    format!(
                        "policy {:?} has a [[policy]] entry but [policies] chain ({}) does not list it: add it to the chain or remove the entry",
                        p.name,
                        chain.join(", ")
                    ),
                ));
            }
        }
        let mut in_chain = std::collections::BTreeSet::new();
        for entry in self.chain() {
            if !in_chain.insert(entry.name.clone()) {
                errors.push(invalid(
                    &["policies", "chain"],
                    format!("[policies] chain lists {:?} twice: a policy runs once per tick", entry.name),
                ));
            }
            let has_builtin = flockd_wasm::builtin::component(&entry.name).is_some();
            if !has_builtin
                && entry.file.is_none()
                && !self.resolve(&self.policies.dir).join(format!("{}.wasm", entry.name)).exists()
            {
                let key = match self.policy.iter().position(|p| p.name == entry.name) {
                    Some(i) => vec!["policy".to_string(), i.to_string(), "name".to_string()],
                    None => vec!["policies".to_string(), "chain".to_string()],
                };
                errors.push(Invalid {
                    key,
                    message: format!(
                        "policy {:?} is not a built-in ({}) and {} does not exist: set `file` on its [[policy]] entry or add the component",
                        entry.name,
                        flockd_wasm::builtin::names().collect::<Vec<_>>().join(", "),
                        self.resolve(&self.policies.dir).join(format!("{}.wasm", entry.name)).display()
                    ),
                });
            }
        }
        errors
    }

    /// The journal bounds the store prunes to.
    pub fn journal_limits(&self) -> crate::store::JournalLimits {
        crate::store::JournalLimits { max_records: self.journal.max_records, max_bytes: self.journal.max_mib << 20 }
    }

    /// Whether `resource`'s agent runs tasks in docker: its own
    /// `[resource.NAME.agent] docker-image` ("" = no), else `[agent]`'s.
    pub fn docker_mode(&self, resource: &str) -> bool {
        let own = self.resources.get(resource).and_then(|r| r.agent.as_ref()).and_then(|a| a.docker_image.as_ref());
        let image = own.or_else(|| self.agent.as_ref().and_then(|a| a.docker_image.as_ref()));
        image.is_some_and(|i| !i.trim().is_empty())
    }

    /// A path from the config, relative to the config file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_interval_secs)
    }

    pub fn controller_config(&self) -> ControllerConfig {
        let mut c = ControllerConfig::new(
            &self.cluster,
            self.queues.iter().map(|q| QueueSpec { name: q.name.clone(), resources: q.resources.clone() }).collect(),
            self.resources
                .iter()
                .map(|(name, r)| ResourceSpec {
                    name: name.clone(),
                    provider: r.provider.clone(),
                    max_instances: r.max_instances,
                    price_per_hour: r.price(),
                    market: r.market,
                })
                .collect(),
            HardLimits {
                max_instances: self.limits.max_instances,
                max_cost_per_hour: self.limits.max_cost_per_hour,
                max_cost_per_day: self.limits.max_cost_per_day,
                max_cost_per_month: self.limits.max_cost_per_month,
            },
        );
        let s = &self.controller;
        let secs = |v: Option<f64>, d: Duration| v.map(Duration::from_secs_f64).unwrap_or(d);
        c.observe_timeout = secs(s.observe_timeout_secs, c.observe_timeout);
        c.failure_retention = secs(s.failure_retention_secs, c.failure_retention);
        c.launch_visibility_grace = secs(s.launch_visibility_grace_secs, c.launch_visibility_grace);
        c.termination_retry = secs(s.termination_retry_secs, c.termination_retry);
        c.max_observation_age = secs(s.max_observation_age_secs, c.max_observation_age);
        c.action_timeout = secs(s.action_timeout_secs, c.action_timeout);
        c.launch_concurrency = s.launch_concurrency.unwrap_or(c.launch_concurrency);
        c.required_policies = self.required_policies();
        c.dry_run = self.dry_run;
        c
    }

    /// The chain in effect, in order: `[policies] chain` if given, else the
    /// built-ins in their default order with every other `[[policy]]` (in
    /// file order) just before `budget`. A `[[policy]]` entry for a built-in
    /// only sets its settings, deadline and `required`.
    pub fn chain(&self) -> Vec<PolicyEntry> {
        let names: Vec<String> = match &self.policies.chain {
            Some(chain) => chain.clone(),
            None => {
                let custom: Vec<String> = self
                    .policy
                    .iter()
                    .filter(|p| flockd_wasm::builtin::component(&p.name).is_none())
                    .map(|p| p.name.clone())
                    .collect();
                let mut names: Vec<String> = Vec::new();
                for builtin in flockd_wasm::builtin::names() {
                    if builtin == "budget" {
                        names.extend(custom.iter().cloned());
                    }
                    names.push(builtin.to_string());
                }
                names
            }
        };
        names
            .into_iter()
            .map(|name| {
                self.policy.iter().find(|p| p.name == name).cloned().unwrap_or(PolicyEntry {
                    name,
                    file: None,
                    settings: None,
                    timeout_ms: None,
                    required: None,
                })
            })
            .collect()
    }

    /// The chain as the policy loader takes it. Each policy may be replaced
    /// by `<policies.dir>/<name>.wasm`.
    pub fn policy_specs(&self) -> Vec<PolicySpec> {
        let dir = self.resolve(&self.policies.dir);
        self.chain()
            .into_iter()
            .map(|e| PolicySpec {
                builtin: flockd_wasm::builtin::component(&e.name).map(|_| e.name.clone()),
                file: Some(e.file.map(|f| self.resolve(&f)).unwrap_or_else(|| dir.join(format!("{}.wasm", e.name)))),
                settings: serde_json::to_value(e.settings.unwrap_or_default()).unwrap_or_default(),
                name: e.name,
            })
            .collect()
    }

    /// Policies whose failure withholds a tick's launches.
    pub fn required_policies(&self) -> std::collections::BTreeSet<String> {
        self.chain().into_iter().filter(PolicyEntry::is_required).map(|p| p.name).collect()
    }

    /// Whether `resource` runs on a cloud that sends a bill (its price must
    /// be stated).
    pub fn on_real_cloud(&self, resource: &ResourceEntry) -> bool {
        self.providers.get(&resource.provider).is_some_and(|p| p.kind.bills())
    }

    pub fn call_limits(&self) -> flockd_wasm::CallLimits {
        flockd_wasm::CallLimits {
            timeout: Duration::from_millis(self.policies.timeout_ms),
            memory_bytes: (self.policies.memory_mib as usize) << 20,
        }
    }
}

/// A number of seconds `Duration::from_secs_f64` takes and that means
/// something: finite, not negative, more than 0 unless `zero_ok`, at most a year.
fn seconds_ok(v: f64, zero_ok: bool) -> bool {
    v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v <= 365.0 * 86_400.0
}

fn list<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

#[cfg(test)]
mod tests {
    /// Issue 15, item 5: the agents' web UI and file server, as ClearML
    /// names them, for its hosted service and for a self-hosted server on
    /// its default ports; nothing guessed otherwise.
    #[test]
    fn web_and_files_hosts_derive_from_hosted_and_self_hosted_api_hosts() {
        let d = |api: &str| super::derive_web_and_files_hosts(api);
        let pair = |w: &str, f: &str| Some((w.to_string(), f.to_string()));
        assert_eq!(d("https://api.clear.ml"), pair("https://app.clear.ml", "https://files.clear.ml"));
        assert_eq!(d("https://api.ml.corp:8443/"), pair("https://app.ml.corp:8443", "https://files.ml.corp:8443"));
        assert_eq!(d("http://clearml.corp:8008"), pair("http://clearml.corp:8080", "http://clearml.corp:8081"));
        assert_eq!(d("http://10.0.0.5:8008"), pair("http://10.0.0.5:8080", "http://10.0.0.5:8081"));
        assert_eq!(d("https://clearml.corp"), None, "no convention: set them");
        assert_eq!(d("not a url"), None);
    }

    use super::*;

    const BASE: &str = r#"
cluster = "c"
[limits]
max-instances = 2
max-cost-per-hour = 1.0
[provider.sim]
kind = "simulated"
[[queue]]
name = "q"
resources = ["a"]
[resource.a]
provider = "sim"
max-instances = 2
"#;

    fn required(extra: &str) -> Vec<String> {
        let config = Config::parse(&format!("{BASE}{extra}"), Path::new("flockd.toml")).unwrap();
        config.controller_config().required_policies.into_iter().collect()
    }

    #[test]
    fn budget_is_required_unless_said_otherwise_and_any_policy_can_be() {
        assert_eq!(required(""), ["budget"]);
        assert_eq!(required("[[policy]]\nname = \"scale-up\"\n"), ["budget"]);
        assert!(required("[[policy]]\nname = \"budget\"\nrequired = false\n").is_empty());
        assert_eq!(
            required("[[policy]]\nname = \"scale-up\"\nrequired = true\n[[policy]]\nname = \"budget\"\n"),
            ["budget", "scale-up"]
        );
    }

    fn chain(extra: &str) -> Result<Vec<String>, String> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("flockd.toml"))
            .map(|c| c.chain().into_iter().map(|p| p.name).collect())
            .map_err(|e| e.0.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("\n"))
    }

    #[test]
    fn one_builtin_entry_changes_its_settings_and_keeps_the_rest_of_the_chain() {
        let defaults = ["scale-up", "spin-up-timeout", "idle", "budget"];
        assert_eq!(chain("").unwrap(), defaults);
        let only_idle = "[[policy]]\nname = \"idle\"\nsettings = { max-idle-secs = 120 }\n";
        assert_eq!(chain(only_idle).unwrap(), defaults);
        let config = Config::parse(&format!("{BASE}{only_idle}"), Path::new("flockd.toml")).unwrap();
        let idle = config.policy_specs().into_iter().find(|p| p.name == "idle").unwrap();
        assert_eq!(idle.settings, serde_json::json!({ "max-idle-secs": 120 }));
    }

    #[test]
    fn a_custom_policy_goes_before_budget_unless_the_chain_places_it() {
        let mine = "[[policy]]\nname = \"mine\"\nfile = \"mine.wasm\"\n";
        assert_eq!(chain(mine).unwrap(), ["scale-up", "spin-up-timeout", "idle", "mine", "budget"]);
        let placed = format!("[policies]\nchain = [\"mine\", \"scale-up\"]\n{mine}");
        assert_eq!(chain(&placed).unwrap(), ["mine", "scale-up"]);
        let unlisted = format!("[policies]\nchain = [\"scale-up\"]\n{mine}");
        assert!(chain(&unlisted).unwrap_err().contains("does not list it"));
        let twice = "[policies]\nchain = [\"idle\", \"idle\"]\n";
        assert!(chain(twice).unwrap_err().contains("twice"));
    }
}

/// Property test of the config loader (issue 10, hole 15): the examples with
/// values swapped for any other (wrong types, huge, negative, NaN, empty,
/// control characters), lines dropped and lines repeated. Loading never
/// panics, and every error says what is wrong at a line that exists. A long
/// run: `PROPTEST_CASES=100000 cargo test -p flockd --lib config::proptests`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    const EXAMPLES: [&str; 5] = [
        include_str!("../../examples/dev.toml"),
        include_str!("../../examples/simulate.toml"),
        include_str!("../../examples/aws.toml"),
        include_str!("../../examples/gcp.toml"),
        include_str!("../../examples/local.toml"),
    ];

    /// Edge values most often: that is where loaders break.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec![
                "0",
                "-1",
                "1e308",
                "-1e308",
                "nan",
                "inf",
                "-inf",
                "18446744073709551616",
                "9223372036854775807",
                "\"\"",
                "\" \"",
                "\"\\n\\u001b[31m\"",
                "[]",
                "[\"\"]",
                "{}",
                "true",
                "\"env:\"",
                "\"file:\"",
                "\"http://\"",
                "0.0000001",
            ])
            .prop_map(str::to_string),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|f| format!("{f:?}")),
            1 => "\"[ -~]{0,24}\"",
        ]
    }

    /// One to three edits, each at some line: give its key another value
    /// (most often), drop it, or repeat it.
    fn edits() -> impl Strategy<Value = Vec<(usize, u8, String)>> {
        prop::collection::vec((any::<usize>(), 0u8..8, value()), 1..=3)
    }

    proptest! {
        // Cheap cases and a narrow target (one edit among ~50 lines): many
        // of them, unless PROPTEST_CASES asks for a number.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4096)
        ))]

        #[test]
        fn a_mangled_config_loads_or_says_where_it_is_wrong(
            example in 0usize..EXAMPLES.len(),
            edits in edits(),
        ) {
            let mut lines: Vec<String> = EXAMPLES[example].lines().map(str::to_string).collect();
            for (at, what, value) in edits {
                // Only lines that set a key: comments and headers stay.
                let keyed: Vec<usize> = (0..lines.len())
                    .filter(|&i| lines[i].contains(" = ") && !lines[i].trim_start().starts_with('#'))
                    .collect();
                let i = keyed[at % keyed.len()];
                match what {
                    0 => drop(lines.remove(i)),
                    1 => lines.insert(i, lines[i].clone()),
                    _ => {
                        let key = lines[i].split(" = ").next().unwrap().to_string();
                        lines[i] = format!("{key} = {value}");
                    }
                }
            }
            let text = lines.join("\n");
            let count = lines.len().max(1);
            if let Err(errors) = Config::parse(&text, Path::new("/nowhere/flockd.toml")) {
                prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    prop_assert!(!e.message.trim().is_empty(), "an empty message for:\n{text}");
                    if let Some(at) = e.at {
                        prop_assert!(at.line >= 1 && at.line <= count + 1, "{e} in a file of {count} lines");
                    }
                }
            }
        }

        #[test]
        fn any_text_loads_or_is_refused(text in "(?s).{0,400}") {
            let _ = Config::parse(&text, Path::new("/nowhere/flockd.toml"));
        }
    }
}
