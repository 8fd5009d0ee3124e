//! Builds the configured cloud providers. Each provider crate owns its
//! settings' schema; here they are parsed from the config's TOML tables,
//! with errors that name the section.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flockd_core::{CloudProvider, HostState, ProviderScope};
use serde::de::DeserializeOwned;

use crate::config::{Config, ProviderEntry, ProviderKind};

pub type ProviderMap = BTreeMap<String, Arc<dyn CloudProvider>>;

/// Every provider a controller acts through.
#[derive(Default)]
pub struct Providers {
    /// `[provider.NAME]` → its provider.
    pub configured: ProviderMap,
    /// Built for a scope flockd once launched into and the config no longer
    /// names (see [`retired`]): listed and terminated through, never
    /// launched into. Name → (scope key, provider).
    pub retired: BTreeMap<String, (String, Arc<dyn CloudProvider>)>,
    /// Configured provider name → the real place it launches into (see
    /// [`scopes`]); empty for simulated worlds (`dev`, `simulate`), whose
    /// launches go nowhere worth remembering.
    pub scopes: BTreeMap<String, ProviderScope>,
}

impl From<ProviderMap> for Providers {
    /// Providers of a simulated world: no scope to remember.
    fn from(configured: ProviderMap) -> Self {
        Providers { configured, retired: BTreeMap::new(), scopes: BTreeMap::new() }
    }
}

/// Builds every `[provider.NAME]` except simulated ones, which the caller
/// supplies (they share a world with the simulated queue): `simulated` maps
/// a provider name to the provider to use for it.
pub async fn build(
    config: &Config,
    startup_scripts: &HashMap<String, String>,
    mut simulated: ProviderMap,
) -> anyhow::Result<Providers> {
    let mut out = ProviderMap::new();
    for (name, entry) in &config.providers {
        let provider = match entry.kind {
            ProviderKind::Simulated => simulated.remove(name).ok_or_else(|| {
                anyhow::anyhow!("[provider.{name}] is simulated: only `flockd dev` and `flockd simulate` can run it")
            })?,
            kind => {
                let mut settings = entry.settings.clone();
                if kind == ProviderKind::Local {
                    resolve_state_dir(config, &mut settings);
                }
                build_one(kind, name, settings, Some((config, startup_scripts)))
                    .await
                    .map_err(|e| anyhow::anyhow!("[provider.{name}]: {e}"))?
            }
        };
        out.insert(name.clone(), provider);
    }
    Ok(Providers { configured: out, retired: BTreeMap::new(), scopes: scopes(config) })
}

/// A local provider's `state-dir` made absolute against the config's
/// folder (also what its scope remembers: the place must not depend on
/// where flockd was started from).
fn resolve_state_dir(config: &Config, settings: &mut toml::Table) {
    if let Some(toml::Value::String(dir)) = settings.get("state-dir") {
        let resolved = config.resolve(std::path::Path::new(dir)).display().to_string();
        settings.insert("state-dir".into(), toml::Value::String(resolved));
    }
}

/// One provider of `kind` from its section's `settings`. `configured`
/// gives its resources (the `[resource.R.<kind>]` tables of the resources
/// naming it) and start-up scripts; without it the provider can list and
/// terminate but not launch (a retired scope's).
async fn build_one(
    kind: ProviderKind,
    name: &str,
    settings: toml::Table,
    configured: Option<(&Config, &HashMap<String, String>)>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    Ok(match kind {
        ProviderKind::Local => {
            let settings: flockd_local::LocalProviderConfig = parse(settings)?;
            let resources = match configured {
                Some((config, _)) => resource_settings(config, name, kind)?,
                None => HashMap::new(),
            };
            Arc::new(flockd_local::LocalProvider::new(&settings, resources)?)
        }
        ProviderKind::Aws => aws(name, settings, configured).await?,
        ProviderKind::Gcp => gcp(name, settings, configured).await?,
        ProviderKind::Simulated => anyhow::bail!("a simulated provider is built by `flockd dev` and `flockd simulate`"),
    })
}

#[cfg(feature = "aws")]
async fn aws(
    name: &str,
    settings: toml::Table,
    configured: Option<(&Config, &HashMap<String, String>)>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    let settings: flockd_aws::AwsProviderConfig = parse(settings)?;
    let Some((config, scripts)) = configured else {
        return Ok(Arc::new(flockd_aws::AwsProvider::new(&settings, HashMap::new()).await?));
    };
    let resources = resource_settings(config, name, ProviderKind::Aws)?;
    let provider = flockd_aws::AwsProvider::new(&settings, resources)
        .await
        .and_then(|p| p.with_startup_scripts(scripts.clone()))?;
    Ok(Arc::new(provider))
}

#[cfg(not(feature = "aws"))]
async fn aws(
    _: &str,
    _: toml::Table,
    _: Option<(&Config, &HashMap<String, String>)>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    anyhow::bail!(
        "kind \"aws\" needs the `aws` feature, which this flockd was built without; rebuild with default features"
    )
}

#[cfg(feature = "gcp")]
async fn gcp(
    name: &str,
    settings: toml::Table,
    configured: Option<(&Config, &HashMap<String, String>)>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    let settings: flockd_gcp::GcpProviderConfig = parse(settings)?;
    let Some((config, scripts)) = configured else {
        return Ok(Arc::new(flockd_gcp::GcpProvider::new(&settings, HashMap::new()).await?));
    };
    let resources = resource_settings(config, name, ProviderKind::Gcp)?;
    let provider = flockd_gcp::GcpProvider::new(&settings, resources)
        .await
        .and_then(|p| p.with_startup_scripts(scripts.clone()))?;
    Ok(Arc::new(provider))
}

#[cfg(not(feature = "gcp"))]
async fn gcp(
    _: &str,
    _: toml::Table,
    _: Option<(&Config, &HashMap<String, String>)>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    anyhow::bail!(
        "kind \"gcp\" needs the `gcp` feature, which this flockd was built without; rebuild with default features"
    )
}

fn parse<T: DeserializeOwned>(settings: toml::Table) -> anyhow::Result<T> {
    Ok(toml::Value::Table(settings).try_into()?)
}

/// The scope of each configured provider that launches into a real place
/// (not the simulated ones): where its machines live, as far as its listing
/// goes. Every setting that changes what the listing returns is in the
/// place; the settings are kept whole so a provider for it can be built
/// again once the config no longer names it.
pub fn scopes(config: &Config) -> BTreeMap<String, ProviderScope> {
    let text = |t: &toml::Table, key: &str| t.get(key).and_then(toml::Value::as_str).map(str::to_string);
    let mut out = BTreeMap::new();
    for (name, entry) in &config.providers {
        let mut settings = entry.settings.clone();
        let place = match entry.kind {
            ProviderKind::Simulated => continue,
            ProviderKind::Local => {
                resolve_state_dir(config, &mut settings);
                text(&settings, "state-dir").map(|d| format!("state-dir {d}"))
            }
            ProviderKind::Aws => text(&settings, "region").map(|r| match text(&settings, "endpoint-url") {
                Some(url) => format!("region {r} at {url}"),
                None => format!("region {r}"),
            }),
            ProviderKind::Gcp => text(&settings, "project").map(|p| {
                let mut zones: Vec<&str> = settings
                    .get("zones")
                    .and_then(toml::Value::as_array)
                    .map(|z| z.iter().filter_map(toml::Value::as_str).collect())
                    .unwrap_or_default();
                zones.sort_unstable();
                let place = format!("project {p}, zones {}", zones.join(", "));
                match text(&settings, "endpoint") {
                    Some(url) => format!("{place} at {url}"),
                    None => place,
                }
            }),
        };
        // A section without its place is refused by `flockd check` first.
        let Some(place) = place else { continue };
        let settings = serde_json::to_string(&settings).expect("a TOML table is JSON");
        out.insert(name.clone(), ProviderScope { kind: entry.kind.to_string(), place, settings });
    }
    out
}

/// Providers for the scopes `state` remembers and `configured` (from
/// [`scopes`]) no longer names: their machines still count, show and are
/// retired by the idle rules; each is listed until it is empty.
pub async fn retired(
    state: &HostState,
    configured: &BTreeMap<String, ProviderScope>,
) -> anyhow::Result<BTreeMap<String, (String, Arc<dyn CloudProvider>)>> {
    let named: Vec<String> = configured.values().map(ProviderScope::key).collect();
    let mut out = BTreeMap::new();
    for (key, remembered) in state.scopes.iter().filter(|(key, _)| !named.contains(key)) {
        let name = format!("{} (retired: {})", remembered.provider, remembered.scope.place);
        let provider = async {
            let kind: ProviderKind = serde_json::from_value(serde_json::Value::String(remembered.scope.kind.clone()))?;
            let settings: toml::Table = serde_json::from_str(&remembered.scope.settings)?;
            build_one(kind, &remembered.provider, settings, None).await
        };
        let provider = provider.await.map_err(|e| {
            anyhow::anyhow!(
                "flockd launched into {key} (as [provider.{}]) and the config no longer names it, so it must still list it until no machine of this cluster is left there — but it cannot: {e:#}. Put that provider back in the config, or make it reachable, until its machines are gone",
                remembered.provider
            )
        })?;
        tracing::warn!(
            "the config no longer names {key} (where [provider.{}] launched): its machines still count against the caps and are retired by the idle rules; it is listed until it is empty",
            remembered.provider
        );
        out.insert(name, (key.clone(), provider));
    }
    Ok(out)
}

/// A provider section's own settings (everything but `kind`).
pub fn section<T: DeserializeOwned>(name: &str, entry: &ProviderEntry) -> anyhow::Result<T> {
    toml::Value::Table(entry.settings.clone()).try_into().map_err(|e| anyhow::anyhow!("[provider.{name}]: {e}"))
}

/// Every resource of provider `name`: its `[resource.R.<kind>]` table parsed.
pub fn resource_settings<T: DeserializeOwned>(
    config: &Config,
    name: &str,
    kind: ProviderKind,
) -> anyhow::Result<HashMap<String, T>> {
    let mut out = HashMap::new();
    for (resource, entry) in config.resources.iter().filter(|(_, r)| r.provider == name) {
        let mut table = entry.settings_for(kind).ok_or_else(|| {
            anyhow::anyhow!(
                "resource {resource:?} uses provider {name:?} ({kind}) but has no [resource.{resource}.{kind}] table"
            )
        })?;
        // Task containers reach the instance metadata service only with a
        // second hop; without docker, one hop keeps every other process
        // of the machine's network namespaces away from it.
        if kind == ProviderKind::Aws
            && let toml::Value::Table(t) = &mut table
        {
            let hops = if config.docker_mode(resource) { 2 } else { 1 };
            t.entry("imds-hop-limit").or_insert(toml::Value::Integer(hops));
        }
        let parsed = table.try_into().map_err(|e| anyhow::anyhow!("[resource.{resource}.{kind}]: {e}"))?;
        out.insert(resource.clone(), parsed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use flockd_core::store::RememberedScope;
    use flockd_core::{CloudState, LaunchRequest};

    use super::*;

    /// Issue 15, item 6: one IMDS hop unless the resource's agent runs tasks
    /// in docker (whose containers need the second), and a hop limit the
    /// table gives is kept.
    #[cfg(feature = "aws")]
    #[test]
    fn the_imds_hop_limit_follows_docker_mode() {
        let text = r#"
cluster = "hops"
[limits]
max-instances = 3
max-cost-per-hour = 10.0
[clearml]
api-host = "https://api.clear.example"
access-key = "env:K"
secret-key = "env:S"
[agent]
docker-image = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
[[queue]]
name = "q"
resources = ["gpu", "cpu", "pinned"]
[provider.aws]
kind = "aws"
region = "eu-west-1"
[resource.gpu]
provider = "aws"
max-instances = 1
price-per-hour = 1.0
[resource.gpu.aws]
ami = "ami-1"
instance-type = "g5.xlarge"
[resource.cpu]
provider = "aws"
max-instances = 1
price-per-hour = 1.0
agent = { docker-image = "" }
[resource.cpu.aws]
ami = "ami-1"
instance-type = "c6i.large"
[resource.pinned]
provider = "aws"
max-instances = 1
price-per-hour = 1.0
[resource.pinned.aws]
ami = "ami-1"
instance-type = "c6i.large"
imds-hop-limit = 1
"#;
        let config = Config::parse(text, std::path::Path::new("/tmp/flockd.toml")).unwrap();
        let settings: HashMap<String, flockd_aws::AwsResourceConfig> =
            resource_settings(&config, "aws", ProviderKind::Aws).unwrap();
        let hops = |r: &str| settings[r].imds_hop_limit;
        assert_eq!((hops("gpu"), hops("cpu"), hops("pinned")), (2, 1, 1));
    }

    fn config(dir: &std::path::Path, state_dir: &str) -> Config {
        let text = format!(
            r#"
cluster = "moved"
[limits]
max-instances = 2
max-cost-per-hour = 1.0
[[queue]]
name = "cpu"
resources = ["agent"]
[provider.local]
kind = "local"
state-dir = "{state_dir}"
terminate-grace-ms = 500
[resource.agent]
provider = "local"
max-instances = 2
[resource.agent.local]
command = "/bin/sleep"
args = ["30"]
"#
        );
        Config::parse(&text, &dir.join("flockd.toml")).unwrap()
    }

    /// Guard (issue 10, hole 3, for the local provider): a machine started
    /// under one `state-dir` is still listed — and terminated — through the
    /// provider built from the remembered scope once the config names
    /// another state-dir. The scope's place is the resolved path, so where
    /// flockd is started from does not matter.
    #[tokio::test]
    async fn a_moved_state_dir_is_still_listed_and_its_machines_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let before = config(dir.path(), "machines-a");
        let scripts = HashMap::new();
        let providers = build(&before, &scripts, ProviderMap::new()).await.unwrap();
        let request = LaunchRequest {
            cluster: "moved".into(),
            resource: "agent".into(),
            queues: vec!["cpu".into()],
            idempotency_key: "k1".into(),
        };
        let machine = providers.configured["local"].launch(&request).await.unwrap();
        let scope = scopes(&before).remove("local").unwrap();
        let resolved = dir.path().join("machines-a").display().to_string();
        assert_eq!(scope.place, format!("state-dir {resolved}"));

        let mut state = HostState::default();
        state.scopes.insert(scope.key(), RememberedScope { provider: "local".into(), scope, since: 0 });
        let after = config(dir.path(), "machines-b");
        let old_scopes = retired(&state, &scopes(&after)).await.unwrap();
        assert_eq!(old_scopes.len(), 1, "the old state-dir is retired: {:?}", old_scopes.keys().collect::<Vec<_>>());
        let (_, old) = old_scopes.values().next().unwrap();
        let listed = old.list("moved").await.unwrap();
        assert_eq!(listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec![machine.id.as_str()]);
        old.terminate(&machine.id).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while old.list("moved").await.unwrap().iter().any(|i| i.state != CloudState::Terminated) {
            assert!(std::time::Instant::now() < deadline, "the old state-dir's machine was not terminated");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(retired(&state, &scopes(&before)).await.unwrap().is_empty(), "a configured scope is not retired");
    }

    /// Issue 16, item 3: `market = "spot"` on the resource is what EC2 and
    /// GCE are asked for; the provider tables need not (and should not)
    /// repeat it.
    #[cfg(all(feature = "aws", feature = "gcp"))]
    #[test]
    fn the_provider_tables_launch_in_the_market_the_resource_names() {
        let config = Config::parse(
            r#"
cluster = "market"
[limits]
max-instances = 4
max-cost-per-hour = 10.0
[[queue]]
name = "gpu"
resources = ["ec2-spot", "ec2", "gce-spot", "gce"]
[provider.ec2]
kind = "aws"
region = "eu-west-1"
[provider.gce]
kind = "gcp"
project = "p"
zones = ["europe-west4-a"]
[resource.ec2-spot]
provider = "ec2"
max-instances = 1
price-per-hour = 0.4
market = "spot"
[resource.ec2-spot.aws]
ami = "ami-0123456789abcdef0"
instance-type = "g5.xlarge"
[resource.ec2]
provider = "ec2"
max-instances = 1
price-per-hour = 1.0
[resource.ec2.aws]
ami = "ami-0123456789abcdef0"
instance-type = "g5.xlarge"
[resource.gce-spot]
provider = "gce"
max-instances = 1
price-per-hour = 0.4
market = "spot"
[resource.gce-spot.gcp]
machine-type = "n1-standard-4"
boot-image = "projects/debian-cloud/global/images/family/debian-12"
[resource.gce]
provider = "gce"
max-instances = 1
price-per-hour = 1.0
[resource.gce.gcp]
machine-type = "n1-standard-4"
boot-image = "projects/debian-cloud/global/images/family/debian-12"
"#,
            std::path::Path::new("market.toml"),
        )
        .unwrap();
        let aws = resource_settings::<flockd_aws::AwsResourceConfig>(&config, "ec2", ProviderKind::Aws).unwrap();
        assert_eq!(aws["ec2-spot"].market, flockd_aws::Market::Spot);
        assert_eq!(aws["ec2"].market, flockd_aws::Market::OnDemand);
        let gcp = resource_settings::<flockd_gcp::GcpResourceConfig>(&config, "gce", ProviderKind::Gcp).unwrap();
        assert_eq!(gcp["gce-spot"].provisioning, flockd_gcp::Provisioning::Spot);
        assert_eq!(gcp["gce"].provisioning, flockd_gcp::Provisioning::Standard);
    }
}
