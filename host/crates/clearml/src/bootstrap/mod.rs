//! The start-up script of a launched machine: one bash script that works as
//! EC2 user data and as a GCE `startup-script`. It
//!
//! 1. finds the instance id (GCE metadata server with `Metadata-Flavor`, or
//!    EC2 IMDSv2 with a token; never IMDSv1),
//! 2. writes `clearml.conf` from an embedded base64 blob (no shell ever sees
//!    its contents, so `$`, quotes, backticks and newlines in secrets arrive
//!    byte-identical),
//! 3. exports `CLEARML_WORKER_ID` = prefix + instance id and the API hosts and keys,
//! 4. runs the user's extra script, installs the pinned `clearml-agent`,
//! 5. runs `clearml-agent daemon --queue A B …` for every queue of the resource
//!    (one `--queue` with all names: a repeated `--queue` keeps only the last),
//! 6. powers the machine off when anything above fails or the agent exits.
//!
//! On GCE the "instance id" is the instance **name** (what the Compute API
//! addresses instances by); on EC2 it is the `i-…` id.
//!
//! Every value that comes from settings is embedded base64-encoded and
//! decoded at run time, never interpolated into shell code. The script has
//! no `set -x` and prints no secret.

mod conf;

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::secret::Secret;
pub use conf::render_clearml_conf;

/// The clearml-agent release flockd is tested with.
pub const DEFAULT_AGENT_PACKAGE: &str = "clearml-agent==3.0.3";

/// EC2's limit on user data, which applies to the raw script, before the
/// base64 encoding the API carries it in.
pub const EC2_USER_DATA_LIMIT: usize = 16 * 1024;

/// Everything a launched machine needs to become a worker. Secrets are
/// already resolved; Debug never prints them (nor the free-form texts, which
/// may hold credentials too).
#[derive(Clone)]
pub struct BootstrapSettings {
    pub api_host: String,
    pub web_host: String,
    pub files_host: String,
    pub access_key: Secret,
    pub secret_key: Secret,
    /// What `pip install` gets, pinned: default [`DEFAULT_AGENT_PACKAGE`].
    pub agent_package: String,
    /// Python used to install the agent (`python3`).
    pub python: String,
    /// Run tasks in this docker image by default (`--docker IMAGE`); None
    /// runs them in a virtualenv on the machine.
    pub docker_image: Option<String>,
    /// `--cpu-only`: hide GPUs from tasks.
    pub cpu_only: bool,
    /// `agent.git_user` / `agent.git_pass` for cloning task repositories.
    pub git_user: Option<String>,
    pub git_pass: Option<Secret>,
    /// `sdk.aws.s3` default credentials for artifact storage.
    pub s3: Option<S3Credentials>,
    /// Appended verbatim to `clearml.conf` (HOCON), e.g. `sdk.google.storage {…}`.
    pub extra_clearml_conf: Option<String>,
    /// Run with bash before the agent is installed; a failure powers the machine off.
    pub extra_bash_script: Option<String>,
}

#[derive(Clone)]
pub struct S3Credentials {
    pub key: Secret,
    pub secret: Secret,
    pub region: Option<String>,
}

impl BootstrapSettings {
    pub fn new(
        api_host: impl Into<String>,
        web_host: impl Into<String>,
        files_host: impl Into<String>,
        access_key: Secret,
        secret_key: Secret,
    ) -> Self {
        BootstrapSettings {
            api_host: api_host.into(),
            web_host: web_host.into(),
            files_host: files_host.into(),
            access_key,
            secret_key,
            agent_package: DEFAULT_AGENT_PACKAGE.into(),
            python: "python3".into(),
            docker_image: None,
            cpu_only: false,
            git_user: None,
            git_pass: None,
            s3: None,
            extra_clearml_conf: None,
            extra_bash_script: None,
        }
    }
}

impl fmt::Debug for BootstrapSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = |s: &Option<String>| s.as_ref().map(|s| format!("<{} bytes>", s.len()));
        f.debug_struct("BootstrapSettings")
            .field("api_host", &self.api_host)
            .field("web_host", &self.web_host)
            .field("files_host", &self.files_host)
            .field("agent_package", &self.agent_package)
            .field("python", &self.python)
            .field("docker_image", &self.docker_image)
            .field("cpu_only", &self.cpu_only)
            .field("git_user", &self.git_user)
            .field("git_pass", &self.git_pass.as_ref().map(|_| "<redacted>"))
            .field("s3", &self.s3.as_ref().map(|_| "<redacted>"))
            .field("extra_clearml_conf", &len(&self.extra_clearml_conf))
            .field("extra_bash_script", &len(&self.extra_bash_script))
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error("bootstrap: {field} is empty; {hint}")]
    Empty { field: &'static str, hint: &'static str },
    #[error("bootstrap: {field} = {value:?} must start with http:// or https://")]
    NotAUrl { field: &'static str, value: String },
    #[error("bootstrap: {field} contains a NUL byte, which no shell or file format here can carry")]
    NulByte { field: &'static str },
    #[error(
        "the start-up script is {raw} bytes, {over} bytes over EC2's {limit}-byte user-data limit; \
         shorten extra-bash-script or extra-clearml-conf (or fetch them at boot from storage), or drop the s3/git settings you do not need"
    )]
    TooLarge { raw: usize, limit: usize, over: usize },
}

/// Renders the start-up script for a machine serving `resource_queues`,
/// whose agent registers as `worker_id_prefix` + its instance id (see
/// `flockd_core::naming::worker_id_prefix`).
pub fn render_startup_script(
    settings: &BootstrapSettings,
    resource_queues: &[String],
    worker_id_prefix: &str,
) -> Result<String, BootstrapError> {
    validate(settings, resource_queues, worker_id_prefix)?;
    let conf = render_clearml_conf(settings);

    // One `--queue` followed by every name: the agent's option takes several
    // values, and a repeated `--queue` replaces the earlier ones.
    let mut agent_args = String::from("agent_args+=(--queue)\n");
    for queue in resource_queues {
        agent_args.push_str(&format!("decode_into q {}\nagent_args+=(\"$q\")\n", b64(queue)));
    }
    if let Some(image) = &settings.docker_image {
        agent_args.push_str(&format!("decode_into image {}\nagent_args+=(--docker \"$image\")\n", b64(image)));
    }
    if settings.cpu_only {
        agent_args.push_str("agent_args+=(--cpu-only)\n");
    }
    let extra_script = settings.extra_bash_script.as_deref().unwrap_or("");

    Ok(TEMPLATE
        .replace("@CONF_B64@", &b64(&conf))
        .replace("@API_HOST_B64@", &b64(&settings.api_host))
        .replace("@WEB_HOST_B64@", &b64(&settings.web_host))
        .replace("@FILES_HOST_B64@", &b64(&settings.files_host))
        .replace("@ACCESS_KEY_B64@", &b64(settings.access_key.expose()))
        .replace("@SECRET_KEY_B64@", &b64(settings.secret_key.expose()))
        .replace("@WORKER_PREFIX_B64@", &b64(worker_id_prefix))
        .replace("@AGENT_PACKAGE_B64@", &b64(&settings.agent_package))
        .replace("@PYTHON_B64@", &b64(&settings.python))
        .replace("@EXTRA_SCRIPT_B64@", &b64(extra_script))
        .replace("@AGENT_ARGS@\n", &agent_args))
}

/// EC2 rejects user data of more than `limit` bytes (16 KB,
/// [`EC2_USER_DATA_LIMIT`]), counted before base64. Returns the size when it
/// fits.
pub fn check_user_data_size(script: &str, limit: usize) -> Result<usize, BootstrapError> {
    let raw = script.len();
    if raw > limit {
        return Err(BootstrapError::TooLarge { raw, limit, over: raw - limit });
    }
    Ok(raw)
}

fn validate(settings: &BootstrapSettings, queues: &[String], prefix: &str) -> Result<(), BootstrapError> {
    if queues.is_empty() || queues.iter().any(String::is_empty) {
        return Err(BootstrapError::Empty {
            field: "resource queues",
            hint: "a machine must serve at least one named queue",
        });
    }
    if prefix.is_empty() {
        return Err(BootstrapError::Empty {
            field: "worker id prefix",
            hint: "use flockd_core::naming::worker_id_prefix(cluster, resource)",
        });
    }
    for (field, value) in
        [("api-host", &settings.api_host), ("web-host", &settings.web_host), ("files-host", &settings.files_host)]
    {
        if !(value.starts_with("http://") || value.starts_with("https://")) {
            return Err(BootstrapError::NotAUrl { field, value: value.clone() });
        }
    }
    if settings.agent_package.trim().is_empty() {
        return Err(BootstrapError::Empty { field: "agent package", hint: "e.g. clearml-agent==3.0.3" });
    }
    let texts: [(&'static str, Option<&str>); 8] = [
        ("access key", Some(settings.access_key.expose())),
        ("secret key", Some(settings.secret_key.expose())),
        ("git password", settings.git_pass.as_ref().map(Secret::expose)),
        ("extra-bash-script", settings.extra_bash_script.as_deref()),
        ("extra-clearml-conf", settings.extra_clearml_conf.as_deref()),
        ("docker image", settings.docker_image.as_deref()),
        ("worker id prefix", Some(prefix)),
        ("python", Some(&settings.python)),
    ];
    for (field, text) in texts {
        if text.is_some_and(|t| t.contains('\0')) {
            return Err(BootstrapError::NulByte { field });
        }
    }
    if queues.iter().any(|q| q.contains('\0')) {
        return Err(BootstrapError::NulByte { field: "queue name" });
    }
    Ok(())
}

fn b64(text: &str) -> String {
    format!("'{}'", STANDARD.encode(text))
}

const TEMPLATE: &str = include_str!("startup.sh");

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BootstrapSettings {
        BootstrapSettings::new(
            "https://api.example",
            "https://app.example",
            "https://files.example",
            Secret::new("AKFAKE"),
            Secret::new("fake-secret-$HOME"),
        )
    }

    #[test]
    fn secrets_never_appear_in_plain_text_or_debug() {
        let mut s = settings();
        s.git_pass = Some(Secret::new("ghp_FAKE_TOKEN"));
        let script = render_startup_script(&s, &["q".into()], "flockd:c:r:").unwrap();
        for secret in ["fake-secret-$HOME", "ghp_FAKE_TOKEN"] {
            assert!(!script.contains(secret), "{secret} leaked into the script text");
            assert!(!format!("{s:?}").contains(secret));
        }
        let traces = |l: &str| l.trim_start().starts_with("set -x") || l.contains("xtrace") || l.contains("bash -x");
        assert!(!script.lines().any(traces), "the script must never trace its commands");
    }

    #[test]
    fn rejects_bad_input_with_the_field_named() {
        let err = render_startup_script(&settings(), &[], "p:").unwrap_err();
        assert!(err.to_string().contains("resource queues"), "{err}");
        let mut s = settings();
        s.api_host = "api.example".into();
        let err = render_startup_script(&s, &["q".into()], "p:").unwrap_err();
        assert!(err.to_string().contains("api-host"), "{err}");
    }

    #[test]
    fn size_check_counts_the_raw_script_and_says_by_how_much() {
        assert_eq!(check_user_data_size("abc", 4), Ok(3));
        // 16 KB raw fits (its base64 is larger, and that is fine).
        assert_eq!(check_user_data_size(&"x".repeat(16_384), EC2_USER_DATA_LIMIT), Ok(16_384));
        let err = check_user_data_size(&"x".repeat(16_388), EC2_USER_DATA_LIMIT).unwrap_err();
        assert_eq!(err, BootstrapError::TooLarge { raw: 16_388, limit: 16_384, over: 4 });
        assert!(err.to_string().contains("4 bytes over"), "{err}");
        assert!(err.to_string().contains("extra-bash-script"), "{err}");
    }

    #[test]
    fn typical_script_fits_ec2_user_data() {
        let script = render_startup_script(&settings(), &["a".into(), "b".into()], "flockd:c:r:").unwrap();
        let encoded = check_user_data_size(&script, EC2_USER_DATA_LIMIT).unwrap();
        assert!(encoded < EC2_USER_DATA_LIMIT / 2, "{encoded}");
    }
}
