//! Settings of a `[provider.NAME]` of kind "aws" and of its resources'
//! `[resource.NAME.aws]` tables.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use flockd_core::ProviderError;
use serde::{Deserialize, Serialize};

/// Provider-level settings.
///
/// ```toml
/// region = "eu-west-1"
/// # endpoint-url = "http://127.0.0.1:5000"   # moto in tests
/// # credentials = { access-key-id = "env:FLOCKD_AWS_KEY", secret-access-key = "file:/run/secrets/aws" }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AwsProviderConfig {
    /// EC2 region, e.g. "eu-west-1". Required.
    pub region: String,
    /// Send EC2 calls here instead of the region's endpoint (a moto server in
    /// tests, a VPC endpoint in production). Default: the region's endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Static keys, given only as references to where they are kept. Default:
    /// AWS's standard chain (environment, profile files, web identity, ECS
    /// and EC2 instance roles).
    #[serde(default)]
    pub credentials: Option<AwsCredentialRefs>,
    /// How many times a throttled call (RequestLimitExceeded, Throttling,
    /// HTTP 429) is tried again before the launch or list fails as
    /// throttled. Default: 4.
    #[serde(default = "default_throttle_retries")]
    pub throttle_retries: u32,
    /// First wait after a throttled call, in milliseconds; it doubles on each
    /// retry, up to 20 s. Default: 500.
    #[serde(default = "default_throttle_backoff_ms")]
    pub throttle_backoff_ms: u64,
    /// Instances asked for per DescribeInstances page (5 to 1000).
    /// Default: 500.
    #[serde(default = "default_list_page_size")]
    pub list_page_size: i32,
}

fn default_throttle_retries() -> u32 {
    4
}
fn default_throttle_backoff_ms() -> u64 {
    500
}
fn default_list_page_size() -> i32 {
    500
}

/// Where static keys are kept: `env:NAME` (an environment variable of
/// flockd) or `file:PATH` (a file holding just the value; surrounding
/// whitespace is ignored). They are read again every five minutes, so a
/// rotated file is picked up. A key written in the config itself is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AwsCredentialRefs {
    /// Reference to the access key id. Required.
    pub access_key_id: SecretRef,
    /// Reference to the secret access key. Required.
    pub secret_access_key: SecretRef,
    /// Reference to a session token, for temporary keys. Default: none.
    #[serde(default)]
    pub session_token: Option<SecretRef>,
}

/// `env:NAME` or `file:PATH`: where a secret is, never the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl TryFrom<String> for SecretRef {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("env:").filter(|n| !n.is_empty()) {
            Ok(SecretRef::Env(name.to_owned()))
        } else if let Some(path) = text.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(SecretRef::File(PathBuf::from(path)))
        } else {
            // Never echo the value: it may be the secret itself.
            Err("a credential must be a reference, `env:NAME` or `file:PATH`, \
                 not the value itself (move the key into an environment variable or a file)"
                .to_owned())
        }
    }
}

impl From<SecretRef> for String {
    fn from(secret: SecretRef) -> String {
        match secret {
            SecretRef::Env(name) => format!("env:{name}"),
            SecretRef::File(path) => format!("file:{}", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from(self.clone()))
    }
}

impl SecretRef {
    /// The secret's value. Errors name the reference, never the value.
    pub fn resolve(&self, what: &str) -> Result<String, ProviderError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                ProviderError::Auth(format!("{what}: environment variable {name} is not set (or not UTF-8)"))
            })?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| ProviderError::Auth(format!("{what}: cannot read {}: {e}", path.display())))?,
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(ProviderError::Auth(format!("{what}: {self:?} is empty")));
        }
        Ok(value)
    }
}

/// How a resource's instances are bought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    #[default]
    OnDemand,
    /// One-time spot request; the instance is terminated (not stopped) when
    /// EC2 reclaims it.
    Spot,
}

/// One resource's launch settings.
///
/// ```toml
/// ami = "ami-0123456789abcdef0"
/// instance-type = "g5.xlarge"
/// subnets = ["subnet-aaa", "subnet-bbb"]
/// security-groups = ["sg-0123"]
/// ebs-size-gb = 100
/// tags = { team = "ml" }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AwsResourceConfig {
    /// Image id ("ami-…"). Required.
    pub ami: String,
    /// Instance type, e.g. "g5.xlarge". Required.
    pub instance_type: String,
    /// Subnet ids to launch in, in order of preference: when EC2 has no
    /// capacity (or the spot price is too low) in one, the same launch tries
    /// the next. Default: none, meaning the default VPC's default subnet.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Availability zones to launch in, in order of preference, in the
    /// default VPC (a subnet is in one zone already: give one list or the
    /// other). On no capacity in one, the same launch tries the next.
    /// Default: none, meaning EC2 picks.
    #[serde(default)]
    pub availability_zones: Vec<String>,
    /// Security group ids ("sg-…"). Default: the VPC's default group.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// EC2 key pair name for SSH. Default: none.
    #[serde(default)]
    pub key_name: Option<String>,
    /// Instance profile, by name or by ARN ("arn:aws:iam::…"). Default: none.
    #[serde(default)]
    pub iam_instance_profile: Option<String>,
    /// Root volume size in GiB. Default: the AMI's.
    #[serde(default)]
    pub ebs_size_gb: Option<i32>,
    /// Root volume type, e.g. "gp3". Default: the AMI's.
    #[serde(default)]
    pub ebs_type: Option<String>,
    /// The AMI's root device name, needed to resize the root volume
    /// ("/dev/sda1" on Ubuntu images). Default: "/dev/xvda".
    #[serde(default = "default_root_device_name")]
    pub root_device_name: String,
    /// Extra tags for the instance and its volumes. Keys starting with
    /// "flockd-" are reserved. Default: none.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// "on-demand" or "spot". flockd fills it from `[resource.NAME] market`
    /// (the one place to write it); set here it must agree with that.
    #[serde(default)]
    pub market: Market,
    /// Highest spot price per hour in USD, e.g. "0.50". Default: the
    /// on-demand price. Only with market = "spot".
    #[serde(default)]
    pub spot_max_price: Option<String>,
    /// Network hops a reply of the instance metadata service (IMDSv2) may
    /// take: 1 keeps it to the host's own processes, 2 lets the agent's
    /// task containers reach it (and with it the instance's user data).
    /// flockd fills it: 2 when the resource's agent runs in docker, else 1.
    #[serde(default = "default_imds_hop_limit")]
    pub imds_hop_limit: i32,
}

fn default_imds_hop_limit() -> i32 {
    1
}

fn default_root_device_name() -> String {
    "/dev/xvda".to_owned()
}

impl AwsResourceConfig {
    /// Problems a person must fix in the config, found before any launch.
    pub fn validate(&self, resource: &str) -> Result<(), String> {
        let at = format!("[resource.{resource}.aws]");
        if self.ami.trim().is_empty() {
            return Err(format!("{at} ami is empty: set the image id (ami-…)"));
        }
        if self.instance_type.trim().is_empty() {
            return Err(format!("{at} instance-type is empty: set e.g. \"g5.xlarge\""));
        }
        if let Some(key) = self.tags.keys().find(|k| k.starts_with("flockd-")) {
            return Err(format!("{at} tag {key:?} uses the reserved prefix \"flockd-\": rename it"));
        }
        if !self.subnets.is_empty() && !self.availability_zones.is_empty() {
            return Err(format!(
                "{at} sets both subnets and availability-zones: a subnet lies in one zone, so list the subnets of the zones you want (or only the zones, in the default VPC)"
            ));
        }
        if self.spot_max_price.is_some() && self.market != Market::Spot {
            return Err(format!("{at} spot-max-price is set but market is not \"spot\""));
        }
        if !(1..=64).contains(&self.imds_hop_limit) {
            return Err(format!("{at} imds-hop-limit must be 1 to 64, got {}", self.imds_hop_limit));
        }
        if let Some(size) = self.ebs_size_gb
            && size <= 0
        {
            return Err(format!("{at} ebs-size-gb must be positive, got {size}"));
        }
        Ok(())
    }
}
