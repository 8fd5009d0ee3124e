//! The local provider against real processes.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flockd_core::testing::provider_contract::{request, run_contract, wait_until_gone};
use flockd_core::{CloudProvider, ProviderError, naming};
use flockd_local::{LocalProvider, LocalProviderConfig, LocalResourceConfig};

const CLUSTER: &str = "test";

fn shell(script: &str) -> LocalResourceConfig {
    LocalResourceConfig::new("/bin/sh", ["-c", script])
}

fn provider(state_dir: &Path, resources: &[(&str, LocalResourceConfig)]) -> LocalProvider {
    let config = LocalProviderConfig { state_dir: state_dir.to_owned(), terminate_grace_ms: 2_000 };
    let resources: HashMap<String, LocalResourceConfig> =
        resources.iter().map(|(name, r)| (name.to_string(), r.clone())).collect();
    LocalProvider::new(&config, resources).expect("provider")
}

/// Running and not a zombie (an orphaned zombie may never be reaped here).
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

async fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_when_written(path: &Path) -> String {
    poll_until(&format!("{} is written", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

fn record_path(state_dir: &Path, instance_id: &str) -> PathBuf {
    state_dir.join(format!("{instance_id}.json"))
}

fn recorded_pid(state_dir: &Path, instance_id: &str) -> i32 {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record_path(state_dir, instance_id)).unwrap()).unwrap();
    json["leader"]["pid"].as_i64().unwrap() as i32
}

#[tokio::test]
async fn meets_the_provider_contract() {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(dir.path(), &[("cpu", shell("exec sleep 600"))]);
    run_contract(&provider, "contract", "cpu").await;
}

#[tokio::test]
async fn launched_process_gets_its_worker_id_queues_and_configured_env() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut resource =
        shell("printf '%s|%s|%s\\n' \"$CLEARML_WORKER_ID\" \"$FLOCKD_QUEUES\" \"$EXTRA\" > seen.txt; exec sleep 600");
    resource.env.insert("EXTRA".to_owned(), "from-config".to_owned());
    resource.working_dir = Some(work.path().to_owned());
    let provider = provider(dir.path(), &[("cpu", resource)]);

    let mut req = request(CLUSTER, "cpu", "k-env");
    req.queues = vec!["q1".to_owned(), "q2".to_owned()];
    let instance = provider.launch(&req).await.unwrap();

    let seen = read_when_written(&work.path().join("seen.txt")).await;
    assert_eq!(seen, format!("{}|q1 q2|from-config", naming::worker_id(CLUSTER, "cpu", &instance.id)));
    let listed = provider.list(CLUSTER).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].resource, "cpu");
    provider.terminate(&instance.id).await.unwrap();
}

#[tokio::test]
async fn flockds_own_environment_is_not_inherited_unless_passed() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // cargo sets CARGO_PKG_NAME for the test process, standing in for a
    // secret in flockd's environment.
    assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
    let script = "printf '%s|%s\\n' \"${CARGO_PKG_NAME:-unset}\" \"${PATH:+has-path}\" > \"$OUT\"; exec sleep 600";
    let mut closed = shell(script);
    closed.env.insert("OUT".to_owned(), work.path().join("closed.txt").display().to_string());
    let mut passed = shell(script);
    passed.env.insert("OUT".to_owned(), work.path().join("passed.txt").display().to_string());
    passed.pass_env.push("CARGO_PKG_NAME".to_owned());
    let provider = provider(dir.path(), &[("closed", closed), ("passed", passed)]);

    let a = provider.launch(&request(CLUSTER, "closed", "k-a")).await.unwrap();
    let b = provider.launch(&request(CLUSTER, "passed", "k-b")).await.unwrap();
    assert_eq!(read_when_written(&work.path().join("closed.txt")).await, "unset|has-path");
    assert_eq!(read_when_written(&work.path().join("passed.txt")).await, "flockd-local|has-path");
    provider.terminate(&a.id).await.unwrap();
    provider.terminate(&b.id).await.unwrap();
}

#[tokio::test]
async fn a_start_interrupted_by_a_crash_is_adopted_from_the_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(dir.path(), &[("cpu", shell("exec sleep 600"))]);
    // What a crash between writing the "starting" record and recording the
    // pid leaves: a record without leader, and a process carrying the id.
    let instance_id = "local-00000000feedbeef";
    let record = serde_json::json!({
        "instance-id": instance_id, "cluster": CLUSTER, "resource": "cpu",
        "launch-key": "k-crash", "launched-at": 1, "leader": null,
    });
    std::fs::write(record_path(dir.path(), instance_id), record.to_string()).unwrap();
    let mut orphan = std::process::Command::new("sleep")
        .arg("600")
        .env("FLOCKD_INSTANCE_ID", instance_id)
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = orphan.id() as i32;

    let listed = provider.list(CLUSTER).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, instance_id);
    assert_eq!(recorded_pid(dir.path(), instance_id), pid, "the record now names the process");

    provider.terminate(instance_id).await.unwrap();
    orphan.wait().unwrap();
    assert!(!is_running(pid));

    // A "starting" record whose process never ran is simply forgotten.
    std::fs::write(record_path(dir.path(), instance_id), record.to_string()).unwrap();
    assert!(provider.list(CLUSTER).await.unwrap().is_empty());
    assert!(!record_path(dir.path(), instance_id).exists());
}

#[tokio::test]
async fn a_restarted_provider_adopts_live_machines_and_can_terminate_them() {
    let dir = tempfile::tempdir().unwrap();
    let resources = [("gpu", shell("exec sleep 600"))];
    let first = provider(dir.path(), &resources);
    let instance = first.launch(&request(CLUSTER, "gpu", "k-adopt")).await.unwrap();
    let pid = recorded_pid(dir.path(), &instance.id);
    drop(first);

    let restarted = provider(dir.path(), &resources);
    let listed = restarted.list(CLUSTER).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, instance.id);
    assert_eq!(listed[0].resource, "gpu");
    assert_eq!(listed[0].launch_key.as_deref(), Some("k-adopt"));
    assert!(is_running(pid));

    restarted.terminate(&instance.id).await.unwrap();
    poll_until("the adopted process is gone", || !is_running(pid)).await;
    assert!(restarted.list(CLUSTER).await.unwrap().is_empty());
    assert!(!record_path(dir.path(), &instance.id).exists(), "its record is deleted");
}

#[tokio::test]
async fn terminate_kills_the_whole_process_group_even_when_sigterm_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // The leader ignores SIGTERM and has a child (in its group) that does too:
    // only the SIGKILL after the grace period stops them.
    let mut resource = shell("trap '' TERM; sleep 600 & echo $! > child.pid; wait");
    resource.working_dir = Some(work.path().to_owned());
    let provider = provider(dir.path(), &[("cpu", resource)]);

    let instance = provider.launch(&request(CLUSTER, "cpu", "k-group")).await.unwrap();
    let leader = recorded_pid(dir.path(), &instance.id);
    let child: i32 = read_when_written(&work.path().join("child.pid")).await.parse().unwrap();
    assert!(is_running(leader) && is_running(child));

    provider.terminate(&instance.id).await.unwrap();
    poll_until("leader and child are gone", || !is_running(leader) && !is_running(child)).await;
    assert!(provider.list(CLUSTER).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_process_that_exits_on_its_own_disappears_from_list() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut resource = shell("while [ ! -e stop ]; do sleep 0.02; done");
    resource.working_dir = Some(work.path().to_owned());
    let provider = provider(dir.path(), &[("cpu", resource)]);

    let instance = provider.launch(&request(CLUSTER, "cpu", "k-exit")).await.unwrap();
    assert_eq!(provider.list(CLUSTER).await.unwrap().len(), 1);
    std::fs::write(work.path().join("stop"), "").unwrap();
    wait_until_gone(&provider, CLUSTER, &instance.id).await;
    assert!(!record_path(dir.path(), &instance.id).exists(), "the dead machine's record is forgotten");
}

/// The agent (the group leader) exits but a process it started lives on in
/// its group: the machine is still there until that is gone, and terminating
/// it stops the orphan. Forgetting it with its leader would leak the orphan.
#[tokio::test]
async fn a_machine_whose_leader_exited_is_kept_while_its_children_run_and_terminate_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut resource = shell("sleep 600 & echo $! > child.pid; exit 0");
    resource.working_dir = Some(work.path().to_owned());
    let provider = provider(dir.path(), &[("cpu", resource)]);

    let instance = provider.launch(&request(CLUSTER, "cpu", "k-orphan")).await.unwrap();
    let leader = recorded_pid(dir.path(), &instance.id);
    let child: i32 = read_when_written(&work.path().join("child.pid")).await.parse().unwrap();
    poll_until("the leader exits", || !is_running(leader)).await;
    assert!(is_running(child));

    let listed: Vec<String> = provider.list(CLUSTER).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, std::slice::from_ref(&instance.id), "forgotten while its child runs");
    provider.terminate(&instance.id).await.unwrap();
    poll_until("the orphaned child is stopped", || !is_running(child)).await;
    assert!(provider.list(CLUSTER).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_reused_pid_is_neither_listed_nor_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(dir.path(), &[("cpu", shell("exec sleep 600"))]);
    let instance = provider.launch(&request(CLUSTER, "cpu", "k-reuse")).await.unwrap();
    let pid = recorded_pid(dir.path(), &instance.id);

    // Pretend the recorded process died and its pid went to a stranger: the
    // record now names the stranger's pid with another start time.
    let mut stranger = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let path = record_path(dir.path(), &instance.id);
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["leader"]["pid"] = serde_json::json!(stranger.id());
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();

    provider.terminate(&instance.id).await.unwrap();
    assert!(is_running(stranger.id() as i32), "the stranger was not signalled");
    assert!(provider.list(CLUSTER).await.unwrap().is_empty(), "the stranger is not adopted");

    stranger.kill().unwrap();
    stranger.wait().unwrap();
    // The real machine is now untracked by this test's doing; stop it.
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[tokio::test]
async fn bad_requests_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = LocalResourceConfig::new("/nonexistent/flockd-agent", [] as [&str; 0]);
    let provider = provider(dir.path(), &[("cpu", missing)]);

    let err = provider.launch(&request(CLUSTER, "gpu", "k1")).await.unwrap_err();
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("\"gpu\"") && m.contains("cpu")), "{err}");
    let err = provider.launch(&request(CLUSTER, "cpu", "k2")).await.unwrap_err();
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("/nonexistent/flockd-agent")), "{err}");
    assert!(provider.list(CLUSTER).await.unwrap().is_empty());
}

#[test]
fn config_parses_with_defaults_and_rejects_unknown_fields() {
    let config: LocalProviderConfig = toml::from_str("state-dir = \"/tmp/x\"").unwrap();
    assert_eq!(config.terminate_grace_ms, 10_000);
    let resource: LocalResourceConfig =
        toml::from_str("command = \"clearml-agent\"\nargs = [\"daemon\"]\nworking-dir = \"/srv\"").unwrap();
    assert_eq!(resource.args, ["daemon"]);
    assert!(resource.env.is_empty());
    assert!(resource.pass_env.contains(&"PATH".to_owned()) && resource.pass_env.contains(&"HOME".to_owned()));
    let err = toml::from_str::<LocalResourceConfig>("command = \"x\"\ncmd = \"y\"").unwrap_err();
    assert!(err.to_string().contains("cmd"), "{err}");
}

/// Guard: a listing is complete or it is an error. A machine record that
/// cannot be read (damaged, half-copied by hand) may stand for a running
/// agent; skipping it would leave that machine counted against nothing.
#[tokio::test]
async fn an_unreadable_machine_record_fails_the_listing_instead_of_hiding_a_machine() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider(dir.path(), &[("cpu", shell("sleep 30"))]);
    let launched = p.launch(&request(CLUSTER, "cpu", "key-1")).await.unwrap();
    std::fs::write(record_path(dir.path(), "local-0123456789abcdef"), b"{\"instance-id\": \"local-01").unwrap();
    let err = p.list(CLUSTER).await.expect_err("a listing that skipped a record would be partial");
    let message = err.to_string();
    assert!(message.contains("local-0123456789abcdef.json"), "names the record: {message}");
    std::fs::remove_file(record_path(dir.path(), "local-0123456789abcdef")).unwrap();
    assert_eq!(p.list(CLUSTER).await.unwrap().len(), 1);
    p.terminate(&launched.id).await.unwrap();
}
