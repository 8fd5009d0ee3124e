//! Runs rendered start-up scripts for real (bash) in a sandbox where the
//! system commands are stubs: `curl` answers like the GCE/EC2 metadata
//! services, `python3 -m pip` and `clearml-agent` record what they got,
//! `poweroff` records that it ran.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flockd_clearml::bootstrap::{BootstrapSettings, S3Credentials, render_clearml_conf, render_startup_script};
use flockd_clearml::secret::Secret;

/// Everything a shell or a config parser could trip over.
const HOSTILE: &str = "s3cr3t $HOME ${PATH} `id` $(id) '\"\\n \\\\ \\ üñí€ 🦀\n\ttab; rm -rf / # \\u0041\n";

fn settings() -> BootstrapSettings {
    let mut s = BootstrapSettings::new(
        "http://api.example:8008",
        "http://app.example:8080",
        "http://files.example:8081",
        Secret::new("AKFAKE$ACCESS`id`"),
        Secret::new(HOSTILE),
    );
    s.git_user = Some("git-user'\"$USER".into());
    s.git_pass = Some(Secret::new(format!("git-{HOSTILE}")));
    s.s3 = Some(S3Credentials {
        key: Secret::new("AKIAFAKE"),
        secret: Secret::new(format!("s3-{HOSTILE}")),
        region: Some("eu-west-1".into()),
    });
    s.extra_clearml_conf = Some("sdk.development.default_output_uri: \"s3://bucket/out\"".into());
    s.docker_image = Some("nvidia/cuda:12.4.1-runtime-ubuntu22.04".into());
    s.cpu_only = true;
    s
}

const FAKE_CURL: &str = r#"#!/bin/bash
# Metadata services as the cloud in $FAKE_CLOUD would answer.
printf 'curl %s\n' "$*" >> "$SANDBOX/calls.log"
args="$*"
case "$FAKE_CLOUD:$args" in
  gcp:*"Metadata-Flavor: Google"*metadata.google.internal/computeMetadata/v1/instance/name*)
    printf 'flockd-vm-7'; exit 0 ;;
  aws:*"-X PUT"*"X-aws-ec2-metadata-token-ttl-seconds"*169.254.169.254/latest/api/token*)
    printf 'FAKETOKEN'; exit 0 ;;
  aws:*"X-aws-ec2-metadata-token: FAKETOKEN"*169.254.169.254/latest/meta-data/instance-id*)
    printf 'i-0abc123'; exit 0 ;;
esac
case "$args" in
  *169.254.169.254/latest/meta-data*) echo "IMDSv1 call without a token: $args" >> "$SANDBOX/violations.log" ;;
esac
exit 7
"#;

const FAKE_PYTHON: &str = r#"#!/bin/bash
printf 'python %s\n' "$*" >> "$SANDBOX/events.log"
exit 0
"#;

const FAKE_AGENT: &str = r#"#!/bin/bash
printf 'agent-start\n' >> "$SANDBOX/events.log"
: > "$SANDBOX/agent.argv"
for arg in "$@"; do printf '%s\0' "$arg" >> "$SANDBOX/agent.argv"; done
for var in CLEARML_WORKER_ID CLEARML_API_HOST CLEARML_WEB_HOST CLEARML_FILES_HOST \
           CLEARML_API_ACCESS_KEY CLEARML_API_SECRET_KEY CLEARML_CONFIG_FILE; do
  printf '%s' "${!var}" > "$SANDBOX/env.$var"
done
printf 'agent-exit\n' >> "$SANDBOX/events.log"
exit "${FAKE_AGENT_STATUS:-0}"
"#;

const FAKE_POWEROFF: &str = r#"#!/bin/bash
printf 'poweroff\n' >> "$SANDBOX/events.log"
"#;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let stubs = [
            ("curl", FAKE_CURL),
            ("python3", FAKE_PYTHON),
            ("clearml-agent", FAKE_AGENT),
            ("poweroff", FAKE_POWEROFF),
            ("shutdown", FAKE_POWEROFF),
            // Metadata retries wait between attempts; not here.
            ("sleep", "#!/bin/bash\nexit 0\n"),
        ];
        for (name, body) in stubs {
            let path = bin.join(name);
            std::fs::write(&path, body).unwrap();
            let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
            std::fs::set_permissions(&path, executable).unwrap();
        }
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, script: &str, cloud: &str, agent_status: i32) -> Command {
        let script_path = self.path("startup.sh");
        std::fs::write(&script_path, script).unwrap();
        let mut command = Command::new("/bin/bash");
        command
            .arg(&script_path)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.path("bin").display()))
            .env("HOME", self.dir.path())
            .env("SANDBOX", self.dir.path())
            .env("FAKE_CLOUD", cloud)
            .env("FAKE_AGENT_STATUS", agent_status.to_string())
            .env("FLOCKD_BOOTSTRAP_DIR", self.path("flockd"))
            .env("FLOCKD_METADATA_ATTEMPTS", "3");
        command
    }

    fn run(&self, script: &str, cloud: &str, agent_status: i32) -> Output {
        self.command(script, cloud, agent_status).output().expect("bash runs")
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn events(&self) -> Vec<String> {
        self.read("events.log").lines().map(str::to_string).collect()
    }
}

fn queues() -> Vec<String> {
    vec!["aws gpu".into(), "q$HOME'x".into()]
}

#[test]
fn rendered_scripts_pass_bash_syntax_check() {
    let mut plain = settings();
    plain.git_pass = None;
    plain.s3 = None;
    plain.docker_image = None;
    plain.extra_clearml_conf = None;
    plain.extra_bash_script = Some("echo hi\n".into());
    for s in [settings(), plain] {
        let script = render_startup_script(&s, &queues(), "flockd:c:r:").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        std::fs::write(&path, &script).unwrap();
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(out.status.success(), "bash -n: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn on_ec2_writes_the_conf_byte_identical_runs_the_agent_for_all_queues_then_powers_off() {
    let sandbox = Sandbox::new();
    let s = settings();
    let script = render_startup_script(&s, &queues(), "flockd:prod:gpu-spot:").unwrap();
    let out = sandbox.run(&script, "aws", 0);
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "script failed: {output}");

    let conf = std::fs::read(sandbox.path("flockd/clearml.conf")).expect("clearml.conf written");
    assert_eq!(conf, render_clearml_conf(&s).into_bytes(), "clearml.conf differs from what was rendered");
    assert_hocon_values(&sandbox.path("flockd/clearml.conf"));

    let argv = sandbox.read("agent.argv");
    let argv: Vec<&str> = argv.split('\0').filter(|a| !a.is_empty()).collect();
    assert_eq!(
        argv,
        [
            "daemon",
            "--queue",
            "aws gpu",
            "q$HOME'x",
            "--docker",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "--cpu-only"
        ]
    );
    assert_eq!(sandbox.read("env.CLEARML_WORKER_ID"), "flockd:prod:gpu-spot:i-0abc123");
    assert_eq!(sandbox.read("env.CLEARML_API_SECRET_KEY"), HOSTILE, "secret env var not byte-identical");
    assert_eq!(sandbox.read("env.CLEARML_API_ACCESS_KEY"), "AKFAKE$ACCESS`id`");
    assert_eq!(sandbox.read("env.CLEARML_API_HOST"), "http://api.example:8008");
    assert_eq!(sandbox.read("env.CLEARML_FILES_HOST"), "http://files.example:8081");
    assert_eq!(sandbox.read("env.CLEARML_CONFIG_FILE"), sandbox.path("flockd/clearml.conf").display().to_string());

    let events = sandbox.events();
    assert!(events.iter().any(|e| e.contains("-m pip install") && e.contains("clearml-agent==3.0.3")), "{events:?}");
    let agent_exit = events.iter().position(|e| e == "agent-exit").expect("agent ran");
    let poweroff = events.iter().position(|e| e == "poweroff").expect("poweroff ran");
    assert!(poweroff > agent_exit, "poweroff must follow the agent's exit: {events:?}");
    assert_eq!(events.last().map(String::as_str), Some("poweroff"), "{events:?}");

    assert_eq!(sandbox.read("violations.log"), "", "IMDSv1 was used");
    assert!(sandbox.read("calls.log").contains("-X PUT"), "IMDSv2 token was not requested");
    for secret in ["s3cr3t", "git-s3cr3t", "AKFAKE$ACCESS"] {
        assert!(!output.contains(secret), "script printed a secret: {output}");
    }
}

#[test]
fn on_gce_uses_the_instance_name_and_the_metadata_flavor_header() {
    let sandbox = Sandbox::new();
    let script = render_startup_script(&settings(), &["cpu".into()], "flockd:c:cpu:").unwrap();
    let out = sandbox.run(&script, "gcp", 0);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sandbox.read("env.CLEARML_WORKER_ID"), "flockd:c:cpu:flockd-vm-7");
    assert!(!sandbox.read("calls.log").contains("169.254.169.254"), "EC2 metadata tried on GCE");
    assert_eq!(sandbox.events().last().map(String::as_str), Some("poweroff"));
}

#[test]
fn a_failing_agent_still_powers_the_machine_off() {
    let sandbox = Sandbox::new();
    let script = render_startup_script(&settings(), &["cpu".into()], "flockd:c:cpu:").unwrap();
    let out = sandbox.run(&script, "aws", 3);
    assert_eq!(out.status.code(), Some(3), "the script exits with the agent's status");
    let events = sandbox.events();
    assert_eq!(&events[events.len() - 2..], ["agent-exit", "poweroff"], "{events:?}");
}

#[test]
fn no_metadata_service_means_no_agent_and_a_power_off() {
    let sandbox = Sandbox::new();
    let script = render_startup_script(&settings(), &["cpu".into()], "flockd:c:cpu:").unwrap();
    let out = sandbox.run(&script, "none", 0);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no GCE or EC2"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sandbox.events(), ["poweroff"]);
}

#[test]
fn a_failing_extra_script_powers_off_before_the_agent_starts() {
    let sandbox = Sandbox::new();
    let mut s = settings();
    s.extra_bash_script = Some("printf '%s' \"$CLEARML_WORKER_ID\" > \"$SANDBOX/extra.ran\"\nexit 5\n".into());
    let script = render_startup_script(&s, &["cpu".into()], "flockd:c:cpu:").unwrap();
    let out = sandbox.run(&script, "aws", 0);
    assert!(!out.status.success());
    assert_eq!(sandbox.read("extra.ran"), "flockd:c:cpu:i-0abc123", "extra script sees the worker id");
    assert_eq!(sandbox.events(), ["poweroff"], "agent must not start after a failed extra script");
}

/// The agent's own HOCON parser reads back exactly the hostile values.
fn assert_hocon_values(conf: &Path) {
    let Some(bin) = common::venv_bin("HOCON read-back of clearml.conf") else { return };
    let program = r#"
import json, sys
from clearml_agent.external.pyhocon import ConfigFactory
c = ConfigFactory.parse_file(sys.argv[1])
print(json.dumps({
    "secret_key": c.get("api.credentials.secret_key"),
    "git_pass": c.get("agent.git_pass"),
    "git_user": c.get("agent.git_user"),
    "s3_secret": c.get("sdk.aws.s3.secret"),
    "output_uri": c.get("sdk.development.default_output_uri"),
}))
"#;
    let out = Command::new(bin.join("python")).arg("-c").arg(program).arg(conf).output().unwrap();
    assert!(out.status.success(), "pyhocon: {}", String::from_utf8_lossy(&out.stderr));
    let values: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(values["secret_key"], HOSTILE);
    assert_eq!(values["git_pass"], format!("git-{HOSTILE}"));
    assert_eq!(values["git_user"], "git-user'\"$USER");
    assert_eq!(values["s3_secret"], format!("s3-{HOSTILE}"));
    assert_eq!(values["output_uri"], "s3://bucket/out");
}

/// The rendered script with the real `clearml-agent` (only metadata, pip
/// and poweroff faked): the agent authenticates with a hostile secret that
/// travelled through the script, registers under prefix + instance id for
/// every queue, and when it dies the machine powers off.
#[tokio::test]
async fn the_real_agent_started_by_the_script_registers_and_its_exit_powers_off() {
    let Some(venv) = common::venv_bin("the_real_agent_started_by_the_script_registers_and_its_exit_powers_off") else {
        return;
    };
    // Hostile but single-line ASCII: the agent's HTTP basic auth carries
    // neither newlines nor non-latin-1 characters.
    let secret = "s3cr3t $HOME ${PATH} `id` $(id) '\" \\ ; # \\u0041";
    let server = common::start_server_with(|c| c.secret_key = Secret::new(secret)).await;
    let handle = server.handle();
    for queue in ["cpu a", "cpu-b"] {
        handle.create_queue(queue).unwrap();
    }
    let sandbox = Sandbox::new();
    // Between the fake pip and the real agent: remember the agent's pid.
    std::fs::write(
        sandbox.path("bin/clearml-agent"),
        format!(
            "#!/bin/bash\nprintf '%s' $$ > \"$SANDBOX/agent.pid\"\nexport CLEARML_LOG_LEVEL=WARNING\nexec {} \"$@\"\n",
            venv.join("clearml-agent").display()
        ),
    )
    .unwrap();
    let mut settings = BootstrapSettings::new(
        server.url(),
        server.url(),
        server.url(),
        Secret::new(common::ACCESS_KEY),
        Secret::new(secret),
    );
    settings.git_pass = Some(Secret::new(format!("git-{HOSTILE}")));
    let script = render_startup_script(&settings, &["cpu a".into(), "cpu-b".into()], "flockd:e2e:cpu:").unwrap();

    let log = std::fs::File::create(sandbox.path("script.log")).unwrap();
    let mut command = sandbox.command(&script, "aws", 0);
    command.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    let mut machine = common::ChildGuard::spawn("start-up script", &mut command);
    let script_log = || std::fs::read_to_string(sandbox.path("script.log")).unwrap_or_default();

    common::poll_until("the agent to register for both queues", Duration::from_secs(60), || async {
        let workers = handle.workers();
        let queues = workers.iter().find(|w| w.id == "flockd:e2e:cpu:i-0abc123").map(|w| {
            let mut queues = w.queues.clone();
            queues.sort();
            queues
        });
        match queues {
            Some(queues) if queues == ["cpu a", "cpu-b"] => Ok(()),
            _ => Err(format!("workers: {workers:?}\nscript log:\n{}", script_log())),
        }
    })
    .await;
    assert_eq!(sandbox.events().iter().filter(|e| *e == "poweroff").count(), 0, "powered off early");

    // The agent dies; the machine must power off.
    let pid = sandbox.read("agent.pid");
    Command::new("kill").args(["-TERM", pid.trim()]).status().unwrap();
    let status = machine.wait_until(Instant::now() + Duration::from_secs(30)).await;
    assert!(status.is_some(), "script still running after the agent exited:\n{}", script_log());
    assert_eq!(sandbox.events().last().map(String::as_str), Some("poweroff"), "{}", script_log());
    // The agent unregisters on SIGTERM; on a loaded machine that call can
    // still be landing when the script has already powered off.
    common::poll_until("the agent to unregister on SIGTERM", Duration::from_secs(15), || async {
        let workers = handle.workers();
        if workers.is_empty() { Ok(()) } else { Err(format!("workers: {workers:?}\nscript log:\n{}", script_log())) }
    })
    .await;
    let log = script_log();
    assert!(!log.contains("s3cr3t") && !log.contains("git-"), "a secret reached the log:\n{log}");
    server.shutdown().await.unwrap();
}
