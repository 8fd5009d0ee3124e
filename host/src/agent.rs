//! `[agent]`: how a launched machine becomes a `clearml-agent` worker. Every
//! secret is a reference, resolved only when start-up scripts are rendered.

use std::collections::HashMap;

use flockd_clearml::bootstrap::{self, BootstrapSettings, S3Credentials};
use flockd_clearml::secret::SecretRef;

use crate::config::{AgentSection, Config};

/// Start-up scripts by resource, for providers that boot real machines.
/// Empty when there is no `[agent]` section and no `[clearml]` to default from.
pub fn startup_scripts(config: &Config) -> anyhow::Result<HashMap<String, String>> {
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
    let api_host = section
        .api_host
        .clone()
        .or_else(|| clearml.map(|c| c.api_host.clone()))
        .ok_or_else(|| anyhow::anyhow!("[agent] api-host is not set and there is no [clearml] api-host"))?;
    let web_host = section.web_host.clone().unwrap_or_else(|| api_host.replace("api.", "app."));
    let files_host = section.files_host.clone().unwrap_or_else(|| api_host.replace("api.", "files."));
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
    for resource in config.resources.keys() {
        let queues: Vec<String> =
            config.queues.iter().filter(|q| q.resources.contains(resource)).map(|q| q.name.clone()).collect();
        let prefix = flockd_core::naming::worker_id_prefix(&controller.cluster, resource);
        let script = bootstrap::render_startup_script(&settings, &queues, &prefix)
            .map_err(|e| anyhow::anyhow!("start-up script for resource {resource:?}: {e}"))?;
        scripts.insert(resource.clone(), script);
    }
    Ok(scripts)
}
