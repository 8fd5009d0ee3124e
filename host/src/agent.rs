//! `[agent]`: how a launched machine becomes a `clearml-agent` worker. Every
//! secret is a reference, resolved only when start-up scripts are rendered.

use std::collections::HashMap;

use flockd_clearml::bootstrap::{self, BootstrapSettings, S3Credentials};
use flockd_clearml::secret::SecretRef;

use crate::config::{AgentSection, Config, ResourceAgent};

/// Start-up scripts by resource, for providers that boot real machines.
/// Empty when no provider is a real cloud, or there is no `[agent]` section
/// and no `[clearml]` to default from.
pub fn startup_scripts(config: &Config) -> anyhow::Result<HashMap<String, String>> {
    // Only machines of a real cloud boot from a start-up script.
    if !config.has_real_cloud() {
        return Ok(HashMap::new());
    }
    let clearml = config.clearml.as_ref();
    let section = match (&config.agent, clearml) {
        (Some(section), _) => section.clone(),
        (None, None) => return Ok(HashMap::new()),
        (None, Some(_)) => AgentSection::default(),
    };
    let reference =
        |own: &Option<SecretRef>, key: &str, from_clearml: Option<&SecretRef>| -> anyhow::Result<SecretRef> {
            own.clone()
                .or_else(|| from_clearml.cloned())
                .ok_or_else(|| anyhow::anyhow!("[agent] {key} is not set and [clearml] has none to default from"))
        };
    let api_host = config
        .agent_api_host()
        .ok_or_else(|| anyhow::anyhow!("[agent] api-host is not set and there is no [clearml] api-host"))?;
    let (web_host, files_host) = match config.clearml_web_and_files_hosts() {
        (Some(web), Some(files)) => (web, files),
        _ => anyhow::bail!(
            "[agent] web-host and files-host cannot be derived from api-host {api_host:?} (neither an api. host name nor a self-hosted server on port 8008): set both in [agent]"
        ),
    };
    let access_key = reference(&section.access_key, "access-key", clearml.map(|c| &c.access_key))?.resolve()?;
    let secret_key = reference(&section.secret_key, "secret-key", clearml.map(|c| &c.secret_key))?.resolve()?;
    let mut settings = BootstrapSettings::new(api_host, web_host, files_host, access_key, secret_key);
    if let Some(p) = &section.agent_package {
        settings.agent_package = p.clone();
    }
    settings.docker_image = section.docker_image.clone();
    settings.cpu_only = section.cpu_only;
    settings.git_user = section.git_user.clone();
    settings.git_pass = section.git_pass.as_ref().map(|r| r.resolve()).transpose()?;
    settings.s3 = match (&section.s3_key, &section.s3_secret) {
        (Some(k), Some(s)) => {
            Some(S3Credentials { key: k.resolve()?, secret: s.resolve()?, region: section.s3_region.clone() })
        }
        (None, None) => None,
        _ => anyhow::bail!("[agent] set both s3-key and s3-secret, or neither"),
    };
    settings.extra_clearml_conf = section.extra_clearml_conf.clone();
    settings.extra_bash_script = section.extra_bash_script.clone();

    let controller = config.controller_config();
    let mut scripts = HashMap::new();
    for (resource, entry) in &config.resources {
        let queues: Vec<String> =
            config.queues.iter().filter(|q| q.resources.contains(resource)).map(|q| q.name.clone()).collect();
        let prefix = flockd_core::naming::worker_id_prefix(&controller.cluster, resource);
        let settings = match &entry.agent {
            Some(own) => overridden(&settings, own),
            None => settings.clone(),
        };
        let script = bootstrap::render_startup_script(&settings, &queues, &prefix)
            .map_err(|e| anyhow::anyhow!("start-up script for resource {resource:?}: {e}"))?;
        scripts.insert(resource.clone(), script);
    }
    Ok(scripts)
}

/// `[agent]`'s settings with a resource's own keys in their place.
fn overridden(fleet: &BootstrapSettings, own: &ResourceAgent) -> BootstrapSettings {
    let mut s = fleet.clone();
    if let Some(p) = &own.agent_package {
        s.agent_package = p.clone();
    }
    if let Some(image) = &own.docker_image {
        s.docker_image = Some(image.clone()).filter(|i| !i.trim().is_empty());
    }
    if let Some(cpu_only) = own.cpu_only {
        s.cpu_only = cpu_only;
    }
    if let Some(conf) = &own.extra_clearml_conf {
        s.extra_clearml_conf = Some(conf.clone());
    }
    if let Some(script) = &own.extra_bash_script {
        s.extra_bash_script = Some(script.clone());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// Issue 15, item 3: a fleet mixing CPU and GPU machines sets the
    /// docker image, cpu-only and the extra script per resource; the rest
    /// comes from `[agent]`.
    #[test]
    fn a_resource_overrides_the_fleets_agent_settings_key_by_key() {
        let secrets = tempfile::tempdir().unwrap();
        let (key, secret) = (secrets.path().join("key"), secrets.path().join("secret"));
        std::fs::write(&key, "access").unwrap();
        std::fs::write(&secret, "secret").unwrap();
        let config = Config::parse(
            &format!(
                r#"
cluster = "mixed"
[limits]
max-instances = 4
max-cost-per-hour = 10.0
[clearml]
api-host = "https://api.clear.example"
access-key = "file:{}"
secret-key = "file:{}"
[agent]
docker-image = "python:3.11"
extra-bash-script = "echo fleet"
[[queue]]
name = "q"
resources = ["cpu", "gpu", "bare"]
[provider.ec2]
kind = "aws"
region = "eu-west-1"
[resource.cpu]
provider = "ec2"
max-instances = 1
price-per-hour = 0.1
[resource.cpu.aws]
ami = "ami-0123456789abcdef0"
instance-type = "m7i.large"
[resource.cpu.agent]
cpu-only = true
[resource.gpu]
provider = "ec2"
max-instances = 1
price-per-hour = 1.0
[resource.gpu.aws]
ami = "ami-0123456789abcdef0"
instance-type = "g5.xlarge"
[resource.gpu.agent]
docker-image = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
extra-bash-script = "nvidia-smi"
[resource.bare]
provider = "ec2"
max-instances = 1
price-per-hour = 0.1
[resource.bare.aws]
ami = "ami-0123456789abcdef0"
instance-type = "m7i.large"
[resource.bare.agent]
docker-image = ""
"#,
                key.display(),
                secret.display()
            ),
            std::path::Path::new("mixed.toml"),
        )
        .unwrap();
        let scripts = startup_scripts(&config).unwrap();
        let (cpu, gpu, bare) = (&scripts["cpu"], &scripts["gpu"], &scripts["bare"]);
        assert!(cpu.contains(&b64("python:3.11")) && cpu.contains("--cpu-only"), "cpu keeps the fleet's image");
        assert!(cpu.contains(&b64("echo fleet")), "and the fleet's script");
        assert!(gpu.contains(&b64("nvidia/cuda:12.4.1-runtime-ubuntu22.04")) && !gpu.contains(&b64("python:3.11")));
        assert!(gpu.contains(&b64("nvidia-smi")) && !gpu.contains(&b64("echo fleet")), "the script replaced");
        assert!(!gpu.contains("--cpu-only"));
        assert!(!bare.contains("--docker"), "an empty image runs without docker");
        // The hosts the agents use, derived from the api-host.
        assert!(cpu.contains(&b64("https://app.clear.example")) && cpu.contains(&b64("https://files.clear.example")));
    }
}
