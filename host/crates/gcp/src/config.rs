//! Settings of a `[provider.NAME]` of kind "gcp" and of its resources'
//! `[resource.NAME.gcp]` tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::labels::is_valid_label;

/// Provider-level settings.
///
/// ```toml
/// project = "my-project"
/// zones = ["europe-west4-a", "europe-west4-b"]
/// # credentials-file = "/run/secrets/gcp-sa.json"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GcpProviderConfig {
    /// Project id. Required.
    pub project: String,
    /// Zones to launch in, in order of preference: on a stockout
    /// (ZONE_RESOURCE_POOL_EXHAUSTED) in one, the same launch tries the next.
    /// `list` looks in every zone of the project (so instances in a zone
    /// removed from this list are still found). Required, at least one.
    pub zones: Vec<String>,
    /// Send Compute calls here instead of https://compute.googleapis.com
    /// (a fake in tests, a Private Service Connect endpoint in production).
    /// Default: Google's endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path of a service-account key file (JSON). Default: Application
    /// Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's
    /// credentials, or the metadata server on GCE/GKE).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Send no credentials at all; only for a local fake of the API.
    /// Default: false.
    #[serde(default)]
    pub anonymous: bool,
    /// How many times a throttled call (HTTP 429, rateLimitExceeded) is
    /// tried again before it fails as throttled. Default: 4.
    #[serde(default = "default_throttle_retries")]
    pub throttle_retries: u32,
    /// First wait after a throttled call, in milliseconds; it doubles on each
    /// retry, up to 20 s. Default: 500.
    #[serde(default = "default_throttle_backoff_ms")]
    pub throttle_backoff_ms: u64,
    /// Instances asked for per aggregated-list page (1 to 500). Default: 500.
    #[serde(default = "default_list_page_size")]
    pub list_page_size: u32,
    /// First wait before polling an insert operation, in milliseconds; it
    /// grows up to 10 s between polls. Default: 1000.
    #[serde(default = "default_operation_poll_ms")]
    pub operation_poll_ms: u64,
    /// How long a launch waits for its insert operation to finish before it
    /// gives up waiting (the instance, if it comes up, is still found by
    /// `list`), in seconds. Default: 300.
    #[serde(default = "default_operation_timeout_secs")]
    pub operation_timeout_secs: u64,
    /// Instance metadata for every resource of this provider, e.g.
    /// `{ install-nvidia-driver = "True" }` for Deep Learning VM images; a
    /// resource's own `metadata` wins key by key. Default: none.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_throttle_retries() -> u32 {
    4
}
fn default_throttle_backoff_ms() -> u64 {
    500
}
fn default_list_page_size() -> u32 {
    500
}
fn default_operation_poll_ms() -> u64 {
    1000
}
fn default_operation_timeout_secs() -> u64 {
    300
}

/// How a resource's instances are bought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provisioning {
    #[default]
    Standard,
    /// Spot VM, deleted (not stopped) when Google reclaims it.
    Spot,
}

/// A GPU (or other accelerator) attached to each instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GcpAccelerator {
    /// Accelerator type, e.g. "nvidia-tesla-t4". Required.
    #[serde(rename = "type")]
    pub accelerator_type: String,
    /// How many. Default: 1.
    #[serde(default = "default_accelerator_count")]
    pub count: i32,
}

fn default_accelerator_count() -> i32 {
    1
}

/// One resource's launch settings.
///
/// ```toml
/// machine-type = "n1-standard-8"
/// accelerators = [{ type = "nvidia-tesla-t4", count = 1 }]
/// boot-image = "projects/deeplearning-platform-release/global/images/family/common-cu121-debian-11"
/// boot-disk-size-gb = 100
/// labels = { team = "ml" }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GcpResourceConfig {
    /// Machine type, e.g. "n1-standard-8". Required.
    pub machine_type: String,
    /// Accelerators per instance. Default: none. With any, instances stop
    /// (instead of live-migrating) for host maintenance, as GCE requires.
    #[serde(default)]
    pub accelerators: Vec<GcpAccelerator>,
    /// Boot image or image family URL, e.g.
    /// "projects/debian-cloud/global/images/family/debian-12". Required.
    pub boot_image: String,
    /// Boot disk size in GB. Default: the image's.
    #[serde(default)]
    pub boot_disk_size_gb: Option<i64>,
    /// Boot disk type, e.g. "pd-balanced". Default: GCE's ("pd-standard").
    #[serde(default)]
    pub boot_disk_type: Option<String>,
    /// VPC network URL. Default: "global/networks/default".
    #[serde(default)]
    pub network: Option<String>,
    /// Subnetwork URL, e.g. "regions/europe-west4/subnetworks/ml".
    /// Default: the network's subnetwork in the zone's region.
    #[serde(default)]
    pub subnetwork: Option<String>,
    /// Give the instance an ephemeral public IP (it needs one to reach the
    /// internet unless the subnetwork has Cloud NAT). Default: true.
    #[serde(default = "default_true")]
    pub external_ip: bool,
    /// Service account email the instance runs as. Default: none.
    #[serde(default)]
    pub service_account: Option<String>,
    /// OAuth scopes of that service account. Default:
    /// ["https://www.googleapis.com/auth/cloud-platform"].
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Extra labels for the instance and its boot disk: keys and values of
    /// lowercase letters, digits, `_` and `-`, at most 63 characters; keys
    /// starting with "flockd-" are reserved. Default: none.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// "standard" or "spot". flockd fills it from `[resource.NAME] market`
    /// (the one place to write it); set here it must agree with that.
    #[serde(default)]
    pub provisioning: Provisioning,
    /// Instance metadata, over the provider's (key by key). Keys of letters,
    /// digits, `-` and `_`; `startup-script` and keys starting with
    /// "flockd-" are flockd's. Default: none.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// GCE's limits on one metadata entry (its total is 512 KiB).
const METADATA_VALUE_MAX: usize = 256 << 10;

/// Metadata a person wrote at `at`: keys GCE takes and flockd does not own.
pub fn validate_metadata(at: &str, metadata: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in metadata {
        if key == "startup-script" || key.starts_with("flockd-") {
            return Err(format!(
                "{at} metadata {key:?} is flockd's (the agent's start-up script and its own keys): for commands at boot use [agent] extra-bash-script"
            ));
        }
        if key.is_empty() || key.len() > 128 || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{at} metadata key {key:?} is not one GCE takes: use 1 to 128 letters, digits, '-' and '_'"
            ));
        }
        if value.len() > METADATA_VALUE_MAX {
            return Err(format!("{at} metadata {key:?} is {} bytes: GCE takes at most 256 KiB per value", value.len()));
        }
    }
    Ok(())
}

fn default_true() -> bool {
    true
}

fn default_scopes() -> Vec<String> {
    vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()]
}

impl GcpResourceConfig {
    /// Problems a person must fix in the config, found before any launch.
    pub fn validate(&self, resource: &str) -> Result<(), String> {
        let at = format!("[resource.{resource}.gcp]");
        if self.machine_type.trim().is_empty() {
            return Err(format!("{at} machine-type is empty: set e.g. \"n1-standard-8\""));
        }
        if self.boot_image.trim().is_empty() {
            return Err(format!(
                "{at} boot-image is empty: set e.g. \"projects/debian-cloud/global/images/family/debian-12\""
            ));
        }
        for (key, value) in &self.labels {
            if key.starts_with("flockd-") {
                return Err(format!("{at} label {key:?} uses the reserved prefix \"flockd-\": rename it"));
            }
            if !is_valid_label(key) || key.is_empty() || !is_valid_label(value) {
                return Err(format!(
                    "{at} label {key:?} = {value:?} is not a valid GCE label: use lowercase letters, \
                     digits, '_' and '-', at most 63 characters"
                ));
            }
        }
        validate_metadata(&at, &self.metadata)?;
        if let Some(accelerator) = self.accelerators.iter().find(|a| a.count < 1) {
            return Err(format!(
                "{at} accelerator {:?} has count {}: it must be at least 1",
                accelerator.accelerator_type, accelerator.count
            ));
        }
        Ok(())
    }
}
