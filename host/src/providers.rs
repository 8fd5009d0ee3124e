//! Builds the configured cloud providers. Each provider crate owns its
//! settings' schema; here they are parsed from the config's TOML tables,
//! with errors that name the section.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flockd_core::CloudProvider;
use serde::de::DeserializeOwned;

use crate::config::{Config, ProviderEntry, ProviderKind};

pub type Providers = BTreeMap<String, Arc<dyn CloudProvider>>;

/// Builds every `[provider.NAME]` except simulated ones, which the caller
/// supplies (they share a world with the simulated queue): `simulated` maps
/// a provider name to the provider to use for it.
pub async fn build(
    config: &Config,
    startup_scripts: &HashMap<String, String>,
    mut simulated: Providers,
) -> anyhow::Result<Providers> {
    let mut out = Providers::new();
    for (name, entry) in &config.providers {
        let provider: Arc<dyn CloudProvider> = match entry.kind {
            ProviderKind::Simulated => simulated.remove(name).ok_or_else(|| {
                anyhow::anyhow!("[provider.{name}] is simulated: only `flockd dev` and `flockd simulate` can run it")
            })?,
            ProviderKind::Local => {
                let settings: flockd_local::LocalProviderConfig = section(name, entry)?;
                let mut settings = settings;
                settings.state_dir = config.resolve(&settings.state_dir);
                let resources = resource_settings(config, name, ProviderKind::Local)?;
                Arc::new(
                    flockd_local::LocalProvider::new(&settings, resources)
                        .map_err(|e| anyhow::anyhow!("[provider.{name}]: {e}"))?,
                )
            }
            ProviderKind::Aws => aws(config, name, entry, startup_scripts).await?,
            ProviderKind::Gcp => gcp(config, name, entry, startup_scripts).await?,
        };
        out.insert(name.clone(), provider);
    }
    Ok(out)
}

#[cfg(feature = "aws")]
async fn aws(
    config: &Config,
    name: &str,
    entry: &ProviderEntry,
    scripts: &HashMap<String, String>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    let settings: flockd_aws::AwsProviderConfig = section(name, entry)?;
    let resources = resource_settings(config, name, ProviderKind::Aws)?;
    let provider = flockd_aws::AwsProvider::new(&settings, resources)
        .await
        .and_then(|p| p.with_startup_scripts(scripts.clone()))
        .map_err(|e| anyhow::anyhow!("[provider.{name}]: {e}"))?;
    Ok(Arc::new(provider))
}

#[cfg(not(feature = "aws"))]
async fn aws(
    _: &Config,
    name: &str,
    _: &ProviderEntry,
    _: &HashMap<String, String>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    anyhow::bail!(
        "[provider.{name}] is kind \"aws\" but this flockd was built without the `aws` feature; rebuild with default features"
    )
}

#[cfg(feature = "gcp")]
async fn gcp(
    config: &Config,
    name: &str,
    entry: &ProviderEntry,
    scripts: &HashMap<String, String>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    let settings: flockd_gcp::GcpProviderConfig = section(name, entry)?;
    let resources = resource_settings(config, name, ProviderKind::Gcp)?;
    let provider = flockd_gcp::GcpProvider::new(&settings, resources)
        .await
        .and_then(|p| p.with_startup_scripts(scripts.clone()))
        .map_err(|e| anyhow::anyhow!("[provider.{name}]: {e}"))?;
    Ok(Arc::new(provider))
}

#[cfg(not(feature = "gcp"))]
async fn gcp(
    _: &Config,
    name: &str,
    _: &ProviderEntry,
    _: &HashMap<String, String>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    anyhow::bail!(
        "[provider.{name}] is kind \"gcp\" but this flockd was built without the `gcp` feature; rebuild with default features"
    )
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
        let table = entry.settings_for(kind).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "resource {resource:?} uses provider {name:?} ({kind}) but has no [resource.{resource}.{kind}] table"
            )
        })?;
        let parsed = table.try_into().map_err(|e| anyhow::anyhow!("[resource.{resource}.{kind}]: {e}"))?;
        out.insert(resource.clone(), parsed);
    }
    Ok(out)
}
