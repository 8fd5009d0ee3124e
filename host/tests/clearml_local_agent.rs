//! Issue 4, end to end with nothing simulated: the real `clearml` SDK
//! enqueues a task on flockd's ClearML-compatible server, `flockd run` (the
//! built binary) launches a machine through the local provider, that machine
//! is the real `clearml-agent`, which registers under the worker id flockd
//! assigned and pulls the task; once the worker has been idle past
//! max-idle-secs flockd terminates the machine and the worker is gone.
//!
//! Skips (loudly) only when the project venv is missing (`scripts/setup`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flockd_clearml::secret::{Secret, SecretRef};
use flockd_clearml::server::{ClearmlServer, ServerConfig};
use flockd_clearml::{ClearmlClient, ClearmlConfig};

const ACCESS_KEY: &str = "FLOCKDFAKEACCESSKEY";
const SECRET_KEY: &str = "flockd-fake-secret-$key'\"with spaces";
const QUEUE: &str = "cpu";
const RESOURCE: &str = "cpu-local";
const MAX_IDLE_SECS: u64 = 3;

const SDK_PROGRAM: &str = r#"
from clearml import Task
task = Task.create(project_name="flockd-e2e", task_name="no-script")
Task.enqueue(task, queue_name="cpu")
print("TASK_ID " + task.id)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flockd_launches_a_real_agent_for_a_queued_task_and_terminates_it_when_idle() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    let venv = repo.join(".venv/bin");
    if !venv.join("python").exists() || !venv.join("clearml-agent").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} has no python/clearml-agent, and CI must run the real agent: scripts/setup creates them",
            venv.display()
        );
        eprintln!(
            "\n\n!!!!!!!! SKIPPING: {} has no python/clearml-agent; run scripts/setup !!!!!!!!\n\n",
            venv.display()
        );
        return;
    }
    let started = Instant::now();
    let server =
        ClearmlServer::start(ServerConfig::new("127.0.0.1:0".parse().unwrap(), ACCESS_KEY, Secret::new(SECRET_KEY)))
            .await
            .expect("server starts");
    let url = server.url();
    let handle = server.handle();
    let dir = tempfile::tempdir().unwrap();
    let cluster = format!("e2e-{}", std::process::id());
    // Declared before flockd so it drops after it: whatever path the test
    // takes, flockd's machines (their own sessions) are killed too.
    let _machines = MachineReaper { cluster: cluster.clone() };

    // 1. The real SDK enqueues a task with no script (the agent fails it fast).
    handle.create_queue(QUEUE).unwrap();
    let task_id = enqueue_with_sdk(&venv, &url, dir.path()).await;
    assert_eq!(handle.queue_depth(QUEUE), Some(1));
    assert_eq!(handle.task(&task_id).unwrap().status, "queued");

    // 2. flockd run, its queue source that server, its provider local.
    let config = write_config(dir.path(), &url, &cluster, &venv);
    let log_path = dir.path().join("flockd.log");
    let mut flockd = Command::new(env!("CARGO_BIN_EXE_flockd"));
    flockd
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("RUST_LOG", "info")
        .env("CLEARML_API_ACCESS_KEY", ACCESS_KEY)
        .env("CLEARML_API_SECRET_KEY", SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::fs::File::create(dir.path().join("flockd.stderr")).unwrap());
    let mut flockd = ChildGuard::spawn(&mut flockd);
    let state_dir = dir.path().join("machines");
    let logs = || {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let mut text = format!(
            "--- flockd stdout\n{}\n--- flockd stderr\n{}",
            read(log_path.clone()),
            read(dir.path().join("flockd.stderr"))
        );
        for entry in std::fs::read_dir(&state_dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                text += &format!("\n--- {}\n{}", entry.path().display(), read(entry.path()));
            }
        }
        text
    };
    let client = watcher_client(dir.path(), &url);

    // 3. A machine is launched for the queued task.
    let machine =
        poll_until("flockd to launch a local machine", Duration::from_secs(60), &mut flockd, &logs, async || {
            let records = machine_records(&state_dir);
            match records.as_slice() {
                [one] if one.leader_pid.is_some() => Ok(one.clone()),
                _ => Err(format!("records: {records:?}")),
            }
        })
        .await;
    let launched_after = started.elapsed();
    let leader = machine.leader_pid.unwrap();
    assert_eq!(machine.resource, RESOURCE);
    assert!(group_alive(leader), "the machine's process group {leader} is not running\n{}", logs());
    let worker_id = format!("flockd:{cluster}:{RESOURCE}:{}", machine.instance_id);

    // 4. The agent registers as exactly that worker and pulls the task: the
    // queue drains, the task leaves `queued`, and the worker runs it or (the
    // task has no script) has already failed it.
    let mut seen_busy = false;
    poll_until("the agent to register and pull the task", Duration::from_secs(90), &mut flockd, &logs, async || {
        let workers: Vec<_> = handle.workers();
        let status = handle.task(&task_id).map(|t| t.status).unwrap_or_default();
        let depth = handle.queue_depth(QUEUE);
        let ours = workers.iter().find(|w| w.id == worker_id);
        if ours.is_some_and(|w| w.task.as_deref() == Some(task_id.as_str())) {
            seen_busy = true;
        }
        match (ours, depth, status.as_str()) {
            (Some(w), Some(0), "in_progress" | "failed" | "completed") if w.queues == [QUEUE] => Ok(()),
            _ => Err(format!("depth={depth:?} status={status} workers={workers:?}")),
        }
    })
    .await;
    let pulled_after = started.elapsed();
    let registered: Vec<String> = handle.workers().into_iter().map(|w| w.id).collect();
    assert_eq!(registered, std::slice::from_ref(&worker_id), "only the launched agent registered, with flockd's id");

    // 5. flockd's client sees the worker idle and the task failed by the agent.
    poll_until("the task to fail and the worker to go idle", Duration::from_secs(60), &mut flockd, &logs, async || {
        let workers = client.workers().await.map_err(|e| e.to_string())?;
        let ours = workers.iter().find(|w| w.id == worker_id).map(|w| w.task.as_ref().map(|t| t.id.clone()));
        let status = handle.task(&task_id).map(|t| t.status).unwrap_or_default();
        if ours == Some(Some(task_id.clone())) {
            seen_busy = true;
        }
        match (&ours, status.as_str()) {
            (Some(None), "failed") => Ok(()),
            _ => Err(format!("worker task={ours:?} status={status}")),
        }
    })
    .await;
    let idle_after = started.elapsed();
    assert!(machine_records(&state_dir).iter().any(|r| r.instance_id == machine.instance_id));

    // 6. Idle past max-idle-secs: flockd terminates the machine (the record
    // goes, the agent's whole process group is gone) and the worker leaves.
    poll_until("flockd to terminate the idle machine", Duration::from_secs(60), &mut flockd, &logs, async || {
        let records = machine_records(&state_dir);
        let workers = client.workers().await.map_err(|e| e.to_string())?;
        let worker_left = workers.iter().all(|w| w.id != worker_id);
        if records.is_empty() && !group_alive(leader) && worker_left {
            Ok(())
        } else {
            Err(format!("records={records:?} group alive={} workers={workers:?}", group_alive(leader)))
        }
    })
    .await;
    let terminated_after = started.elapsed();
    let log = logs();
    let line_with = |needle: &str| log.lines().find(|l| l.contains(needle) && l.contains(&machine.instance_id));
    assert!(line_with("launched:").is_some(), "flockd did not log the launch:\n{log}");
    let terminated = line_with("terminated:").unwrap_or_else(|| panic!("flockd did not log the termination:\n{log}"));
    assert!(terminated.contains("max-idle-secs"), "terminated for another reason: {terminated}");
    assert!(!log.contains(SECRET_KEY), "the ClearML secret leaked into a log");
    assert!(handle.workers().is_empty());
    assert_eq!(handle.unknown_endpoints(), Vec::<String>::new(), "a client called endpoints the server lacks");

    // flockd itself stops cleanly on SIGTERM and leaves nothing running.
    flockd.signal("TERM");
    let status = flockd.wait_until(Instant::now() + Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "flockd did not stop cleanly on SIGTERM: {status:?}\n{}", logs());
    assert_eq!(cluster_processes(&cluster), Vec::<i32>::new(), "processes of the cluster left behind");
    eprintln!(
        "launched {launched_after:?}, pulled {pulled_after:?}, idle {idle_after:?}, terminated {terminated_after:?} \
         after the server started (busy observed: {seen_busy})"
    );
    server.shutdown().await.unwrap();
}

/// Runs the SDK program; returns the task id it printed.
async fn enqueue_with_sdk(venv: &Path, url: &str, dir: &Path) -> String {
    let home = dir.join("sdk-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut sdk = Command::new(venv.join("python"));
    sdk.arg("-c").arg(SDK_PROGRAM).env_clear().env("PATH", "/usr/bin:/bin");
    sdk.envs(clearml_env(url, &home)).stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || sdk.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "SDK failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout.lines().find_map(|l| l.strip_prefix("TASK_ID ")).expect("SDK printed the task id").trim().to_string()
}

/// Environment for the SDK: everything in `home`, nothing from ~/.clearml.
fn clearml_env(url: &str, home: &Path) -> Vec<(String, String)> {
    let conf = home.join("clearml.conf");
    std::fs::write(&conf, "").unwrap();
    [
        ("HOME", home.display().to_string()),
        ("TMPDIR", home.display().to_string()),
        ("CLEARML_CONFIG_FILE", conf.display().to_string()),
        ("CLEARML_API_HOST", url.into()),
        ("CLEARML_WEB_HOST", url.into()),
        ("CLEARML_FILES_HOST", url.into()),
        ("CLEARML_API_ACCESS_KEY", ACCESS_KEY.into()),
        ("CLEARML_API_SECRET_KEY", SECRET_KEY.into()),
        ("CLEARML_LOG_LEVEL", "WARNING".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// flockd's config: short timings, HTTP off, and a local resource whose
/// machine is `clearml-agent daemon`. The agent's keys come from flockd's
/// environment through `pass-env`, never from the file.
fn write_config(dir: &Path, url: &str, cluster: &str, venv: &Path) -> PathBuf {
    let agent_home = dir.join("agent-home");
    std::fs::create_dir_all(&agent_home).unwrap();
    std::fs::write(agent_home.join("clearml.conf"), "").unwrap();
    let quote = |p: &Path| toml_string(&p.display().to_string());
    let text = format!(
        r#"cluster = "{cluster}"
poll-interval-secs = 0.5
state-dir = {state}

[limits]
max-instances = 2
max-cost-per-hour = 10.0

[clearml]
api-host = "{url}"
access-key = "env:CLEARML_API_ACCESS_KEY"
secret-key = "env:CLEARML_API_SECRET_KEY"

[[queue]]
name = "{QUEUE}"
resources = ["{RESOURCE}"]

[resource.{RESOURCE}]
provider = "here"
max-instances = 1
price-per-hour = 0.0

[resource.{RESOURCE}.local]
command = {agent}
args = ["daemon", "--queue", "{QUEUE}", "--foreground"]
pass-env = ["CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"]
working-dir = {agent_home}

[resource.{RESOURCE}.local.env]
PATH = {path}
HOME = {agent_home}
TMPDIR = {agent_home}
CLEARML_CONFIG_FILE = {agent_conf}
CLEARML_API_HOST = "{url}"
CLEARML_WEB_HOST = "{url}"
CLEARML_FILES_HOST = "{url}"
CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL = "1"
PYTHONUNBUFFERED = "1"

[provider.here]
kind = "local"
state-dir = {machines}
terminate-grace-ms = 20000

[policies]
watch = false

[[policy]]
name = "scale-up"

[[policy]]
name = "spin-up-timeout"
settings = {{ timeout-secs = 120 }}

[[policy]]
name = "idle"
settings = {{ max-idle-secs = {MAX_IDLE_SECS} }}

[http]
enabled = false
"#,
        state = quote(&dir.join("state")),
        agent = quote(&venv.join("clearml-agent")),
        agent_home = quote(&agent_home),
        agent_conf = quote(&agent_home.join("clearml.conf")),
        path = toml_string(&format!("{}:/usr/bin:/bin", venv.display())),
        machines = quote(&dir.join("machines")),
    );
    let path = dir.join("flockd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A client like flockd's own, watching from outside.
fn watcher_client(dir: &Path, url: &str) -> ClearmlClient {
    std::fs::write(dir.join("access-key"), ACCESS_KEY).unwrap();
    std::fs::write(dir.join("secret-key"), SECRET_KEY).unwrap();
    let mut config =
        ClearmlConfig::new(url, SecretRef::File(dir.join("access-key")), SecretRef::File(dir.join("secret-key")));
    config.request_timeout_secs = 10;
    ClearmlClient::new(&config).unwrap()
}

/// What the test needs from a local provider record `<instance-id>.json`.
#[derive(Clone, Debug)]
struct MachineRecord {
    instance_id: String,
    resource: String,
    leader_pid: Option<i32>,
}

fn machine_records(state_dir: &Path) -> Vec<MachineRecord> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let is_record = path.extension().is_some_and(|e| e == "json")
            && !path.file_name().unwrap().to_string_lossy().starts_with('.');
        let Some(json) = is_record.then(|| std::fs::read(&path).ok()).flatten() else { continue };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json) else { continue };
        records.push(MachineRecord {
            instance_id: value["instance-id"].as_str().unwrap_or_default().to_string(),
            resource: value["resource"].as_str().unwrap_or_default().to_string(),
            leader_pid: value["leader"]["pid"].as_i64().map(|p| p as i32),
        });
    }
    records
}

/// (pid, process group) of every process, from /proc/<pid>/stat.
fn processes() -> Vec<(i32, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name may hold spaces and parens: fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp ...; a zombie is already gone for our purposes.
        if fields.first() == Some(&"Z") {
            continue;
        }
        if let Some(pgrp) = fields.get(2).and_then(|f| f.parse().ok()) {
            found.push((pid, pgrp));
        }
    }
    found
}

fn group_alive(pgid: i32) -> bool {
    processes().iter().any(|&(_, g)| g == pgid)
}

/// Pids of processes whose environment says they belong to `cluster`.
fn cluster_processes(cluster: &str) -> Vec<i32> {
    let marker = format!("FLOCKD_CLUSTER={cluster}");
    processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// Kills, on drop, every process group of the cluster's machines (they run
/// in sessions of their own, so killing flockd does not reach them).
struct MachineReaper {
    cluster: String,
}

impl Drop for MachineReaper {
    fn drop(&mut self) {
        let groups: std::collections::BTreeSet<i32> = {
            let all = processes();
            cluster_processes(&self.cluster)
                .into_iter()
                .filter_map(|pid| all.iter().find(|&&(p, _)| p == pid).map(|&(_, g)| g))
                .collect()
        };
        for group in groups {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).stderr(Stdio::null()).status();
        }
    }
}

/// flockd in a process group of its own, killed with it on drop.
struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    fn spawn(command: &mut Command) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        ChildGuard { child: Some(command.process_group(0).spawn().expect("flockd starts")) }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    }

    /// Exit status if it has exited (polling until `deadline`).
    async fn wait_until(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ =
                Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `probe` every 100 ms until Ok, or panics at the deadline with the
/// last state and the logs; panics early if flockd exits.
async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    flockd: &mut ChildGuard,
    logs: &dyn Fn() -> String,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        if let Some(status) = flockd.exited() {
            panic!("flockd exited ({status}) while waiting for {what}; last state: {last}\n{}", logs());
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
