//! The journal from the shell: `flockd why INSTANCE` and `flockd decisions`.
//! They read the store directly when no flockd holds it (flockd stopped, or
//! on another copy of the state-dir), and ask the running flockd's API when
//! one does: the embedded store has one writer at a time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flockd_core::journal::{Action, Outcome, TickRecord};
use flockd_core::store::{JournalQuery, StateStore};

use crate::config::Config;
use crate::store::{RedbStore, StoreOpenError};

/// How far back "acted" and "resource" filters look, as the API does.
const SCAN: usize = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct WhyArgs {
    /// The instance id (as in status, the dashboard or the cloud console).
    pub instance: String,
    /// The flockd config (default ./flockd.toml, or FLOCKD_CONFIG).
    #[arg(long, short, env = "FLOCKD_CONFIG", default_value = "flockd.toml")]
    pub config: PathBuf,
    /// At most this many ticks, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// `text` for people, `json` (the records as /api/v2/decisions serves them) for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct DecisionsArgs {
    /// The flockd config (default ./flockd.toml, or FLOCKD_CONFIG).
    #[arg(long, short, env = "FLOCKD_CONFIG", default_value = "flockd.toml")]
    pub config: PathBuf,
    /// At most this many ticks, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Only ticks that launched, terminated, clamped or could not observe.
    #[arg(long)]
    pub acted: bool,
    /// Only ticks that acted on this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// Only ticks since then: a time (`2026-12-03T14:00:00Z`) or how long
    /// ago (`90s`, `30m`, `2h`, `1d`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// `text` for people, `json` (the records as /api/v2/decisions serves them) for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `flockd why INSTANCE`: every tick that launched or acted on it.
pub async fn why(args: WhyArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let query = JournalQuery { limit: args.limit.max(1), instance: Some(args.instance.clone()) };
    let records = read(&config, &query, false).await?;
    if records.is_empty() && args.format == Format::Text {
        println!("no tick in the journal launched or acted on {}", args.instance);
        return Ok(ExitCode::from(1));
    }
    print(&records, args.format)
}

/// `flockd decisions`: the latest ticks, filtered.
pub async fn decisions(args: DecisionsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let filtered = args.acted || args.resource.is_some() || args.since.is_some();
    let since = args.since.map(|s| s.unix_ms(chrono::Utc::now().timestamp_millis().max(0) as u64));
    let limit = args.limit.max(1);
    let query = JournalQuery { limit: if filtered { SCAN } else { limit }, instance: None };
    let records: Vec<TickRecord> = read(&config, &query, args.acted)
        .await?
        .into_iter()
        .filter(|r| !args.acted || r.acted())
        .filter(|r| args.resource.as_deref().is_none_or(|res| touches(r, res)))
        .filter(|r| since.is_none_or(|since| r.at >= since))
        .take(limit)
        .collect();
    print(&records, args.format)
}

/// The journal from the store, or from the flockd that holds it.
async fn read(config: &Config, query: &JournalQuery, acted: bool) -> anyhow::Result<Vec<TickRecord>> {
    if config.store.kind == crate::config::StoreKind::Postgres {
        // A database is read beside the running flockd, whoever leads.
        return crate::run::open_store(config).await?.state.journal(query).await;
    }
    let dir = config.resolve(&config.state_dir);
    if !dir.join("flockd.redb").exists() {
        anyhow::bail!(
            "no store in {}: flockd has not run with this config's state-dir (or it was moved)",
            dir.display()
        );
    }
    match RedbStore::open(&dir, config.journal_limits()) {
        Ok(store) => store.journal(query).await,
        Err(StoreOpenError::AlreadyOpen { path }) => from_api(config, query, acted).await.map_err(|e| {
            anyhow::anyhow!("{} is held by a running flockd, and asking its API failed: {e:#}", path.display())
        }),
        Err(e) => Err(e.into()),
    }
}

/// `GET /api/v1/decisions` of the flockd at the config's `[http] listen`.
async fn from_api(config: &Config, query: &JournalQuery, acted: bool) -> anyhow::Result<Vec<TickRecord>> {
    anyhow::ensure!(config.http.enabled, "its [http] is disabled; stop it to read the store, or enable [http]");
    let mut addr: std::net::SocketAddr = config
        .http
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("[http] listen = {:?} is not an address: {e}", config.http.listen))?;
    anyhow::ensure!(
        addr.port() != 0,
        "its [http] listen has port 0 (any free port): ask the address it printed at start, /api/v1/decisions"
    );
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut url = url::Url::parse(&format!("http://{addr}/api/v1/decisions"))?;
    url.query_pairs_mut()
        .append_pair("limit", &query.limit.min(crate::http::api::MAX_DECISIONS).to_string())
        .append_pair("acted", if acted { "true" } else { "false" });
    if let Some(instance) = &query.instance {
        url.query_pairs_mut().append_pair("instance", instance);
    }
    let mut request = reqwest::Client::new().get(url.clone()).timeout(Duration::from_secs(10));
    if let Some(token) = &config.http.token {
        request = request.bearer_auth(token.resolve()?.expose());
    }
    let response = request.send().await.map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
    Ok(response.json().await?)
}

/// `--since`: a moment, or how long before now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    At(u64),
    Ago(u64),
}

impl Since {
    fn unix_ms(self, now: u64) -> u64 {
        match self {
            Since::At(at) => at,
            Since::Ago(ms) => now.saturating_sub(ms),
        }
    }
}

fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Since::At(t.timestamp_millis().max(0) as u64));
    }
    let unit = |u: &str| match u {
        "s" => Some(1_000u64),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, u) = text.split_at(split);
    match (n.parse::<u64>(), unit(u)) {
        (Ok(n), Some(ms)) => Ok(Since::Ago(n.saturating_mul(ms))),
        _ => {
            Err(format!("{text:?} is neither a time (e.g. 2026-12-03T14:00:00Z) nor a duration ago (90s, 30m, 2h, 1d)"))
        }
    }
}

fn touches(record: &TickRecord, resource: &str) -> bool {
    record.actions.iter().any(|a| match a {
        Action::Launch { resource: r, .. } | Action::Terminate { resource: r, .. } => r == resource,
    })
}

fn print(records: &[TickRecord], format: Format) -> anyhow::Result<ExitCode> {
    match format {
        // As /api/v2/decisions answers: kebab-case keys, like the config.
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&crate::http::kebab(serde_json::to_value(records)?))?)
        }
        Format::Text => {
            for r in records {
                print!("{}", describe(r));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One tick in a few lines: when, what it did and why.
fn describe(r: &TickRecord) -> String {
    let at = chrono::DateTime::from_timestamp_millis(r.at as i64)
        .map_or_else(|| r.at.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    let mut out = format!("tick {} at {at}{}\n", r.tick, if r.dry_run { " (dry run)" } else { "" });
    if let Some(e) = &r.observation_error {
        out.push_str(&format!("  decided nothing: {e}\n"));
    }
    for a in &r.actions {
        let line = match a {
            Action::Launch { resource, reason, outcome, instance, .. } => {
                let made = instance.as_deref().map(|i| format!(" → {i}")).unwrap_or_default();
                format!("launch {resource}{made}: {reason} [{}]", outcome_text(outcome))
            }
            Action::Terminate { instance, resource, reason, outcome, .. } => {
                format!("terminate {instance} ({resource}): {reason} [{}]", outcome_text(outcome))
            }
        };
        out.push_str(&format!("  {line}\n"));
    }
    for c in &r.clamps {
        out.push_str(&format!("  clamp: {c}\n"));
    }
    for p in r.policies.iter().filter(|p| p.error.is_some()) {
        out.push_str(&format!("  policy {} failed: {}\n", p.policy, p.error.as_deref().unwrap_or_default()));
    }
    out
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Done => "done".into(),
        Outcome::Skipped => "dry run".into(),
        Outcome::Failed(e) => format!("failed: {e}"),
        Outcome::Refused(e) => format!("refused: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_duration_ago() {
        assert_eq!(parse_since("90s"), Ok(Since::Ago(90_000)));
        assert_eq!(parse_since("2h"), Ok(Since::Ago(7_200_000)));
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Ok(Since::At(1_000)));
        assert!(parse_since("yesterday").unwrap_err().contains("neither a time"));
        assert!(parse_since("5").is_err() && parse_since("m").is_err());
        assert_eq!(Since::Ago(500).unix_ms(1_000), 500);
    }
}
