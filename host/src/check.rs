//! `flockd check`: everything that can be verified about a config without a
//! network call, each problem reported at its file, line and column with
//! what to do about it. Errors stop `flockd run`; warnings are printed and
//! do not.

use std::path::Path;
use std::process::ExitCode;

use flockd_clearml::secret::SecretRef;
use flockd_wasm::PolicyEngine;
use serde::de::DeserializeOwned;

use crate::config::{Config, ProviderKind};
use crate::toml_location::{self, Location};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub at: Option<Location>,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(at) = self.at {
            write!(f, ":{at}")?;
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}: {}", self.message)
    }
}

/// What `check` found, and the config when it parsed.
pub struct Report {
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

pub fn check(path: &Path) -> Report {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let message = format!("cannot read the config: {e}");
            return Report {
                config: None,
                diagnostics: vec![Diagnostic { severity: Severity::Error, file, at: None, message }],
            };
        }
    };
    let config = match Config::parse(&text, path) {
        Ok(c) => c,
        Err(errors) => {
            let diagnostics = errors
                .0
                .into_iter()
                .map(|e| Diagnostic { severity: Severity::Error, file: file.clone(), at: e.at, message: e.message })
                .collect();
            return Report { config: None, diagnostics };
        }
    };
    let mut checker = Checker { file, text: &text, diagnostics: Vec::new() };
    checker.policies(&config);
    checker.clearml(&config);
    checker.agent(&config);
    checker.http(&config);
    checker.store(&config);
    checker.prices(&config);
    checker.chain_can_launch(&config);
    for (name, entry) in &config.providers {
        checker.provider(&config, name, entry);
    }
    checker.simulated_tables(&config);
    let diagnostics = checker.diagnostics;
    Report { config: Some(config), diagnostics }
}

/// How `check` prints what it found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    /// `file:line:col: severity: message` on stderr, a summary on stdout.
    #[default]
    Text,
    /// One JSON object on stdout, for CI pipelines: `ok`, `errors`,
    /// `warnings`, `chain` and `diagnostics` (severity, file, line, column,
    /// message).
    Json,
}

impl Diagnostic {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "severity": match self.severity { Severity::Error => "error", Severity::Warning => "warning" },
            "file": self.file,
            "line": self.at.map(|a| a.line),
            "column": self.at.map(|a| a.column),
            "message": self.message,
        })
    }
}

impl Report {
    /// The chain in effect, each policy once, "(required)" marked.
    fn chain(&self) -> Option<Vec<String>> {
        let config = self.config.as_ref()?;
        Some(
            config
                .chain()
                .into_iter()
                .map(|p| if p.is_required() { format!("{} (required)", p.name) } else { p.name })
                .collect(),
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        let count = |s: Severity| self.diagnostics.iter().filter(|d| d.severity == s).count();
        serde_json::json!({
            "ok": !self.has_errors(),
            "errors": count(Severity::Error),
            "warnings": count(Severity::Warning),
            "chain": self.chain().filter(|_| !self.has_errors()),
            "diagnostics": self.diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
        })
    }
}

/// `flockd check --config C`: exit 2 on any error, 0 otherwise.
pub fn command(path: &Path, format: CheckFormat) -> ExitCode {
    let report = check(path);
    let code = if report.has_errors() { ExitCode::from(2) } else { ExitCode::SUCCESS };
    if format == CheckFormat::Json {
        println!("{}", report.to_json());
        return code;
    }
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
    if report.has_errors() {
        ExitCode::from(2)
    } else {
        if let Some(chain) = report.chain() {
            println!("policy chain: {}", chain.join(" → "));
        }
        let warnings = report.diagnostics.len();
        match warnings {
            0 => println!("{}: ok", path.display()),
            n => println!("{}: ok, {n} warning{}", path.display(), if n == 1 { "" } else { "s" }),
        }
        ExitCode::SUCCESS
    }
}

struct Checker<'a> {
    file: String,
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

/// Environment variable names in a local machine's `env` that say "secret".
const SECRET_WORDS: [&str; 6] = ["SECRET", "PASSWORD", "PASSWD", "TOKEN", "PRIVATE", "_KEY"];

impl Checker<'_> {
    fn report(&mut self, severity: Severity, key: &[&str], message: String) {
        let at = toml_location::locate(self.text, key);
        self.diagnostics.push(Diagnostic { severity, file: self.file.clone(), at, message });
    }

    fn error(&mut self, key: &[&str], message: impl Into<String>) {
        self.report(Severity::Error, key, message.into());
    }

    fn warn(&mut self, key: &[&str], message: impl Into<String>) {
        self.report(Severity::Warning, key, message.into());
    }

    /// Each policy compiles and its `configure` accepts its settings.
    fn policies(&mut self, config: &Config) {
        let engine = match PolicyEngine::new(config.call_limits()) {
            Ok(e) => e,
            Err(e) => return self.error(&["policies"], format!("cannot start the policy engine: {e:#}")),
        };
        for spec in config.policy_specs().iter() {
            let Err(errors) = flockd_wasm::load_chain(&engine, std::slice::from_ref(spec)) else { continue };
            let i = config.policy.iter().position(|p| p.name == spec.name);
            let index = i.map(|i| i.to_string()).unwrap_or_default();
            let entry = i.and_then(|i| config.policy.get(i));
            let about_settings = errors.iter().any(|e| matches!(e.error, flockd_wasm::PolicyLoadError::Settings(_)));
            let key: Vec<&str> = match entry {
                None => vec!["policies"],
                Some(e) if about_settings && e.settings.is_some() => vec!["policy", &index, "settings"],
                Some(e) if e.file.is_some() => vec!["policy", &index, "file"],
                Some(_) => vec!["policy", &index, "name"],
            };
            let hint =
                if about_settings { "fix the settings or the component" } else { "fix or remove the component file" };
            self.error(&key, format!("{}: {hint}", flockd_wasm::loader::lines(&errors, "; ")));
        }
    }

    /// A secret must be a reference. Returns false if it is not one.
    /// Where a secret reference points: warned about when flockd could not
    /// read it here. (A value where a reference belongs is refused when the
    /// config is parsed, without echoing it.)
    fn secret(&mut self, key: &[&str], value: Option<&SecretRef>) {
        let Some(value) = value else { return };
        let label = format!("[{}] {}", key[..key.len() - 1].join("."), key[key.len() - 1]);
        match value {
            SecretRef::Env(name) => {
                if std::env::var_os(name).is_none() {
                    self.warn(key, format!("{label} = \"env:{name}\": {name} is not set here; flockd run fails unless it is set in its environment"));
                }
            }
            SecretRef::File(path) => match std::fs::metadata(path) {
                Err(e) => self.warn(
                    key,
                    format!(
                        "{label}: cannot read {}: {e}; flockd run fails unless it exists where it runs",
                        path.display()
                    ),
                ),
                #[cfg(unix)]
                Ok(meta) => {
                    use std::os::unix::fs::PermissionsExt;
                    if meta.permissions().mode() & 0o077 != 0 {
                        self.warn(
                            key,
                            format!("{label}: {} can be read by other users: `chmod 600` it", path.display()),
                        );
                    }
                }
                #[cfg(not(unix))]
                Ok(_) => {}
            },
        }
    }

    fn clearml(&mut self, config: &Config) {
        let Some(c) = &config.clearml else { return };
        self.secret(&["clearml", "access-key"], Some(&c.access_key));
        self.secret(&["clearml", "secret-key"], Some(&c.secret_key));
    }

    fn agent(&mut self, config: &Config) {
        // Machines of a real cloud boot an agent that needs the web UI and
        // file server too: derived from the api-host, or given.
        if config.has_real_cloud()
            && let Some(api) = config.agent_api_host()
        {
            let (web, files) = config.clearml_web_and_files_hosts();
            let missing: Vec<&str> = [("web-host", web.is_none()), ("files-host", files.is_none())]
                .into_iter()
                .filter_map(|(k, m)| m.then_some(k))
                .collect();
            if !missing.is_empty() {
                let at: &[&str] = if config.agent.as_ref().is_some_and(|a| a.api_host.is_some()) {
                    &["agent", "api-host"]
                } else {
                    &["clearml", "api-host"]
                };
                let keys = missing.join(" and ");
                self.error(
                    at,
                    format!(
                        "api-host {api:?} is neither an api. host name nor a self-hosted server on port 8008, so the agents' {keys} cannot be derived from it: set {keys} in [agent]"
                    ),
                );
            }
        }
        // The agent's keys travel in the start-up data, which a task
        // container can read through the metadata service in docker mode.
        let docker_on_a_cloud: Vec<&str> = config
            .resources
            .iter()
            .filter(|(name, r)| {
                // A hop limit the table sets is the operator's decision.
                let decided = r.aws.as_ref().and_then(|t| t.get("imds-hop-limit")).is_some();
                config.docker_mode(name)
                    && !decided
                    && config.providers.get(&r.provider).is_some_and(|p| p.kind == ProviderKind::Aws)
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if config.has_real_cloud() && config.agent.is_some() && !docker_on_a_cloud.is_empty() {
            self.warn(
                &["agent"],
                format!(
                    "resources {} run tasks in docker on EC2: their containers reach the instance metadata service (hop limit 2), and through it the start-up data that carries the ClearML keys and any git or storage secret; run only trusted tasks there, or set imds-hop-limit in [resource.NAME.aws]: 1 if tasks need no AWS role, 2 to say they may",
                    docker_on_a_cloud.join(", ")
                ),
            );
        }
        let Some(a) = &config.agent else { return };
        for (key, value) in [
            ("access-key", &a.access_key),
            ("secret-key", &a.secret_key),
            ("git-pass", &a.git_pass),
            ("s3-key", &a.s3_key),
            ("s3-secret", &a.s3_secret),
        ] {
            self.secret(&["agent", key], value.as_ref());
        }
        if a.extra_clearml_conf.as_deref().is_some_and(|conf| conf.lines().any(looks_like_inline_secret)) {
            self.warn(
                &["agent", "extra-clearml-conf"],
                "[agent] extra-clearml-conf seems to set a secret inline: it goes into every machine's start-up data as written; give it by reference with [agent] git-pass, s3-key/s3-secret, access-key/secret-key instead",
            );
        }
    }

    /// `[store]`: the url's reference, the feature, and what on-shutdown
    /// means with a leader.
    fn store(&mut self, config: &Config) {
        if config.store.kind != crate::config::StoreKind::Postgres {
            return;
        }
        self.secret(&["store", "url"], config.store.url.as_ref());
        if !cfg!(feature = "postgres") {
            self.error(
                &["store", "kind"],
                "store.kind = \"postgres\" needs the `postgres` feature, which this flockd was built without; rebuild with default features",
            );
        }
        let mode = config.controller.on_shutdown;
        if mode != flockd_core::OnShutdown::Leave {
            self.warn(
                &["controller", "on-shutdown"],
                format!(
                    "controller.on-shutdown = {:?} does nothing with store.kind = \"postgres\": a leader that stops hands the fleet over to the next one (else every rolling update would shrink it)",
                    mode.as_str()
                ),
            );
        }
    }

    /// A chain of built-ins without scale-up never launches anything: every
    /// queued task would wait forever while the config looks fine.
    fn chain_can_launch(&mut self, config: &Config) {
        let chain = config.chain();
        let launcher = chain.iter().any(|p| p.name == "scale-up" || flockd_wasm::builtin::component(&p.name).is_none());
        if !launcher {
            self.warn(
                &["policies", "chain"],
                format!(
                    "no policy in the chain ({}) can launch a machine: queued tasks would never start; add \"scale-up\" (or a policy of your own that launches) to [policies] chain",
                    chain.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" → ")
                ),
            );
        }
    }

    /// An explicit price of 0 on a real cloud is allowed (credits, a
    /// reservation paid elsewhere) but takes that resource out of the cost cap.
    fn prices(&mut self, config: &Config) {
        for (name, r) in &config.resources {
            if config.on_real_cloud(r) && r.price_per_hour == Some(0.0) {
                self.warn(
                    &["resource", name, "price-per-hour"],
                    format!("resource {name:?} has price-per-hour = 0 on a real cloud: its machines do not count against limits.max-cost-per-hour; give its hourly price unless it really costs nothing"),
                );
            }
        }
    }

    fn http(&mut self, config: &Config) {
        let http = &config.http;
        self.secret(&["http", "token"], http.token.as_ref());
        let has_token = http.token.is_some();
        if !http.enabled {
            return;
        }
        let loopback = match http.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip().is_loopback(),
            Err(_) => match http.listen.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => host == "localhost",
                _ => {
                    return self.error(
                        &["http", "listen"],
                        format!(
                            "[http] listen = {:?}: write an address and port, e.g. \"127.0.0.1:9090\"",
                            http.listen
                        ),
                    );
                }
            },
        };
        if !loopback && !has_token {
            self.error(
                &["http", "listen"],
                format!(
                    "[http] listen = {:?} is reachable from other machines but [http] has no token: set token = \"env:FLOCKD_HTTP_TOKEN\" (or a file: reference), or listen on 127.0.0.1",
                    http.listen
                ),
            );
        }
    }

    /// Every `[resource.NAME.simulated]` table, whatever its provider: on a
    /// real cloud's resource `run` ignores it, but `simulate` and `dev` use
    /// it, so it must be right too.
    fn simulated_tables(&mut self, config: &Config) {
        for (resource, r) in &config.resources {
            let Some(table) = &r.simulated else { continue };
            let at = ["resource", resource.as_str(), "simulated"];
            match table.clone().try_into::<flockd_sim::SimResourceSettings>() {
                Ok(settings) => {
                    if let Err(e) = settings.validate() {
                        self.error(&at, format!("[resource.{resource}.simulated] {e}"));
                    }
                }
                Err(e) => self.error(&at, format!("[resource.{resource}.simulated]: {}", e.message())),
            }
        }
    }

    fn provider(&mut self, config: &Config, name: &str, entry: &crate::config::ProviderEntry) {
        match entry.kind {
            ProviderKind::Local => {
                self.settings::<flockd_local::LocalProviderConfig>(name, entry);
                for (resource, settings) in self.resource_settings::<flockd_local::LocalResourceConfig>(config, name, entry.kind) {
                    for var in settings.env.keys().filter(|k| SECRET_WORDS.iter().any(|w| k.to_ascii_uppercase().contains(w))) {
                        self.warn(
                            &["resource", &resource, "local", "env", var],
                            format!(
                                "[resource.{resource}.local] env sets {var} inline, which looks like a secret: set it in flockd's environment and list it in `pass-env` instead"
                            ),
                        );
                    }
                }
            }
            // Its resources' `.simulated` tables: `simulated_tables`.
            ProviderKind::Simulated => drop(self.settings::<flockd_sim::SimProviderSettings>(name, entry)),
            #[cfg(feature = "aws")]
            ProviderKind::Aws => {
                drop(self.settings::<flockd_aws::AwsProviderConfig>(name, entry));
                for (resource, settings) in self.resource_settings::<flockd_aws::AwsResourceConfig>(config, name, entry.kind) {
                    if let Err(e) = settings.validate(&resource) {
                        self.error(&["resource", &resource, "aws"], format!("[resource.{resource}.aws]: {e}"));
                    }
                    let spot = matches!(settings.market, flockd_aws::Market::Spot);
                    self.market_agrees(config, &resource, ProviderKind::Aws, spot);
                }
            }
            #[cfg(feature = "gcp")]
            ProviderKind::Gcp => {
                if let Some(provider) = self.settings::<flockd_gcp::GcpProviderConfig>(name, entry)
                    && let Err(e) = flockd_gcp::validate_metadata(&format!("[provider.{name}]"), &provider.metadata)
                {
                    self.error(&["provider", name, "metadata"], e);
                }
                for (resource, settings) in self.resource_settings::<flockd_gcp::GcpResourceConfig>(config, name, entry.kind) {
                    if let Err(e) = settings.validate(&resource) {
                        self.error(&["resource", &resource, "gcp"], format!("[resource.{resource}.gcp]: {e}"));
                    }
                    let spot = matches!(settings.provisioning, flockd_gcp::Provisioning::Spot);
                    self.market_agrees(config, &resource, ProviderKind::Gcp, spot);
                }
            }
            #[allow(unreachable_patterns)]
            kind => self.warn(
                &["provider", name, "kind"],
                format!("[provider.{name}] is kind {kind:?}, which this flockd was built without: its settings are not checked"),
            ),
        }
    }

    /// Policies and the cost cap see `[resource.R] market`; the cloud launches
    /// by the provider table's setting, which follows it unless the table
    /// repeats it. A repeat is redundant; a contradiction is an error.
    #[cfg(any(feature = "aws", feature = "gcp"))]
    fn market_agrees(&mut self, config: &Config, resource: &str, provider: ProviderKind, provider_spot: bool) {
        let Some(entry) = config.resources.get(resource) else { return };
        let Some((key, _)) = entry.market_in(provider) else { return };
        let kind = provider.to_string();
        let kind = kind.as_str();
        let spot = entry.market == flockd_core::Market::Spot;
        if spot == provider_spot {
            if entry.repeats_market(provider) {
                self.warn(
                    &["resource", resource, kind, key],
                    format!(
                        "[resource.{resource}.{kind}] {key} repeats [resource.{resource}] market: \
                         remove it here, the resource's market is the one setting"
                    ),
                );
            }
        } else {
            let (said, launched) = if spot { ("spot", "on-demand") } else { ("on-demand", "spot") };
            self.error(
                &["resource", resource, kind, key],
                format!(
                    "[resource.{resource}] market is {said} but [resource.{resource}.{kind}] {key} launches {launched}: \
                     make them agree (policies price and fall back by the first, the cloud launches by the second)"
                ),
            );
        }
    }

    fn settings<T: DeserializeOwned>(&mut self, name: &str, entry: &crate::config::ProviderEntry) -> Option<T> {
        match crate::providers::section::<T>(name, entry) {
            Ok(settings) => Some(settings),
            Err(e) => {
                self.error(&["provider", name], format!("{e:#}"));
                None
            }
        }
    }

    /// Each resource of provider `name` (a real cloud or local: simulated
    /// machines need no table), its `[resource.R.<kind>]` parsed; problems
    /// reported at the resource.
    fn resource_settings<T: DeserializeOwned>(
        &mut self,
        config: &Config,
        name: &str,
        kind: ProviderKind,
    ) -> Vec<(String, T)> {
        let mut out = Vec::new();
        for (resource, entry) in config.resources.iter().filter(|(_, r)| r.provider == name) {
            let Some(table) = entry.settings_for(kind) else {
                self.error(
                    &["resource", resource],
                    format!("resource {resource:?} uses provider {name:?} ({kind}) but has no [resource.{resource}.{kind}] table: add one"),
                );
                continue;
            };
            match table.try_into::<T>() {
                Ok(parsed) => out.push((resource.clone(), parsed)),
                Err(e) => self.error(
                    &["resource", resource, &kind.to_string()],
                    format!("[resource.{resource}.{kind}]: {}", e.message()),
                ),
            }
        }
        out
    }
}

/// `password = "hunter2"`, `secret_key: abc`, … but not `${ENV_VAR}`
/// substitutions, which clearml.conf resolves on the machine.
fn looks_like_inline_secret(line: &str) -> bool {
    let line = line.trim();
    let Some((key, value)) = line.split_once(['=', ':']) else { return false };
    let key = key.trim().to_ascii_lowercase();
    let value = value.trim().trim_matches(['"', '\'']);
    let secret_key = ["password", "secret", "token", "secret_key", "access_key"].iter().any(|w| key.ends_with(w));
    secret_key && !value.is_empty() && !value.starts_with("${") && !value.starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secret_lines() {
        assert!(looks_like_inline_secret("  password: \"hunter2\""));
        assert!(looks_like_inline_secret("api.credentials.secret_key = abc"));
        assert!(!looks_like_inline_secret("password: ${GIT_PASS}"));
        assert!(!looks_like_inline_secret("sdk { aws { s3 {"));
        assert!(!looks_like_inline_secret("verbose: true"));
    }
}
