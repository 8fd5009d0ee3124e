//! The real `clearml` SDK (2.1.12) and `clearml-agent` (3.0.3) from the
//! project venv against flockd's compatible server, with flockd's client
//! watching. Skips (loudly) only when the venv is missing.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildGuard, clearml_env, client_for, poll_until, start_server, venv_bin};
use flockd_core::QueueSource;
use serde_json::json;

const SDK_PROGRAM: &str = r#"
import sys
from clearml import Task
queue, count = sys.argv[1], int(sys.argv[2])
ids = []
for i in range(count):
    task = Task.create(project_name="flockd-tests", task_name="sdk-task-%d" % i)
    Task.enqueue(task, queue_name=queue)
    ids.append(task.id)
print("TASK_IDS " + " ".join(ids))
"#;

#[tokio::test]
async fn sdk_creates_and_enqueues_tasks_and_flockd_sees_the_depth() {
    let Some(bin) = venv_bin("sdk_creates_and_enqueues_tasks_and_flockd_sees_the_depth") else { return };
    let server = start_server().await;
    let home = tempfile::tempdir().unwrap();
    let client = client_for(&server.url(), home.path());
    client.ensure_queues(&["sdk-queue".into()], true).await.unwrap();

    let mut sdk = Command::new(bin.join("python"));
    sdk.arg("-c").arg(SDK_PROGRAM).args(["sdk-queue", "3"]).env_clear().env("PATH", "/usr/bin:/bin");
    sdk.envs(clearml_env(&server.url(), home.path())).stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || sdk.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "SDK failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let ids: Vec<String> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TASK_IDS "))
        .expect("SDK printed the task ids")
        .split(' ')
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 3);

    let observation = client.observe(&["sdk-queue".into()]).await.unwrap();
    assert_eq!(observation.queues[0].pending, 3);
    let handle = server.handle();
    for id in &ids {
        let task = handle.task(id).expect("SDK task stored");
        assert_eq!(task.status, "queued");
        assert_eq!(task.queue, handle.queue_id("sdk-queue"));
    }
    assert_eq!(handle.unknown_endpoints(), Vec::<String>::new(), "the SDK called endpoints the server lacks");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn agent_registers_pulls_runs_and_unregisters() {
    let Some(bin) = venv_bin("agent_registers_pulls_runs_and_unregisters") else { return };
    let server = start_server().await;
    let handle = server.handle();
    let home = tempfile::tempdir().unwrap();
    let client = client_for(&server.url(), home.path());
    let queue = "flockd-cpu".to_string();
    let worker_id = "flockd:test:cpu:i-123";
    client.ensure_queues(std::slice::from_ref(&queue), true).await.unwrap();

    // A single-file task (its code travels in `script.diff`, as the SDK stores
    // uncommitted scripts) that runs until the test opens the gate, so the
    // busy worker is observed without racing it.
    let gate = home.path().join("gate");
    let code = format!(
        "import os, time\ndeadline = time.time() + 120\nwhile not os.path.exists({gate:?}) and time.time() < deadline:\n    time.sleep(0.05)\nprint('gated task done')\n",
        gate = gate.display().to_string()
    );
    let created = handle
        .call(
            "tasks.create",
            json!({"name": "gated", "type": "training",
                   "script": {"diff": code, "entry_point": "task.py", "working_dir": "."}}),
        )
        .unwrap();
    let task_id = created["id"].as_str().unwrap().to_string();
    handle.enqueue(&task_id, &queue).unwrap();
    assert_eq!(client.observe(std::slice::from_ref(&queue)).await.unwrap().queues[0].pending, 1);

    let (mut agent, log_path) = spawn_agent(&bin, &server.url(), home.path(), &queue, worker_id);
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = Instant::now();

    // Registers and pulls the task: the queue drains and the worker is busy with it.
    let busy = poll_until("the agent to pull the task", Duration::from_secs(60), || async {
        let o = client.observe(std::slice::from_ref(&queue)).await.unwrap();
        let worker = o.workers.iter().find(|w| w.id == worker_id).cloned();
        match (&worker, o.queues[0].pending) {
            (Some(w), 0) if w.task.as_deref() == Some(&task_id) => Ok(w.clone()),
            _ => Err(format!("pending={} worker={worker:?}", o.queues[0].pending)),
        }
    })
    .await;
    let pulled_after = started.elapsed();
    assert_eq!(busy.queues, std::slice::from_ref(&queue), "{}", agent_log());
    assert!(busy.registered_at.is_some());
    assert_eq!(handle.task(&task_id).unwrap().status, "in_progress");

    // Let the task finish: it completes and the worker goes idle.
    std::fs::write(&gate, "").unwrap();
    poll_until("the task to complete and the worker to go idle", Duration::from_secs(60), || async {
        let status = handle.task(&task_id).unwrap().status;
        let workers = QueueSource::workers(&client).await.unwrap();
        let task = workers.iter().find(|w| w.id == worker_id).map(|w| w.task.clone());
        if status == "completed" && task == Some(None) {
            Ok(())
        } else {
            Err(format!("status={status} worker task={task:?}"))
        }
    })
    .await;

    // SIGINT: the agent unregisters on its way out.
    agent.signal("INT");
    let status = agent.wait_until(Instant::now() + Duration::from_secs(30)).await;
    assert!(status.is_some(), "agent did not exit on SIGINT:\n{}", agent_log());
    let workers = QueueSource::workers(&client).await.unwrap();
    assert!(workers.iter().all(|w| w.id != worker_id), "worker still registered: {workers:?}\n{}", agent_log());
    assert_eq!(handle.unknown_endpoints(), Vec::<String>::new(), "the agent called endpoints the server lacks");
    eprintln!("agent pulled the task {pulled_after:?} after start; whole run {:?}", started.elapsed());
    server.shutdown().await.unwrap();
}

/// `clearml-agent daemon --queue QUEUE` as worker `worker_id`, HOME and
/// config in `home`, output in `home/agent.log`. With
/// CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL it runs tasks with its own python:
/// no virtualenv, no pip, no network.
fn spawn_agent(
    bin: &std::path::Path,
    url: &str,
    home: &std::path::Path,
    queue: &str,
    worker_id: &str,
) -> (ChildGuard, std::path::PathBuf) {
    let log_path = home.join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(bin.join("clearml-agent"));
    command
        .args(["daemon", "--queue", queue, "--foreground"])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .envs(clearml_env(url, home))
        .env("CLEARML_WORKER_ID", worker_id)
        .env("CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    (ChildGuard::spawn("clearml-agent", &mut command), log_path)
}

#[tokio::test]
async fn agent_fails_a_task_it_cannot_run_and_unregisters_on_sigterm() {
    let Some(bin) = venv_bin("agent_fails_a_task_it_cannot_run_and_unregisters_on_sigterm") else { return };
    let server = start_server().await;
    let handle = server.handle();
    let home = tempfile::tempdir().unwrap();
    let client = client_for(&server.url(), home.path());
    let queue = "flockd-broken".to_string();
    let worker_id = "flockd:test:cpu:i-456";
    // No script at all: the agent cannot run it and must mark it failed.
    let task_id = handle.create_task("no script").unwrap();
    handle.enqueue(&task_id, &queue).unwrap();

    let (mut agent, log_path) = spawn_agent(&bin, &server.url(), home.path(), &queue, worker_id);
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    poll_until("the agent to fail the task and go idle", Duration::from_secs(60), || async {
        let status = handle.task(&task_id).unwrap().status;
        let o = client.observe(std::slice::from_ref(&queue)).await.unwrap();
        let task = o.workers.iter().find(|w| w.id == worker_id).map(|w| w.task.clone());
        match (status.as_str(), o.queues[0].pending, &task) {
            ("failed", 0, Some(None)) => Ok(()),
            _ => Err(format!("status={status} pending={} worker task={task:?}", o.queues[0].pending)),
        }
    })
    .await;

    agent.signal("TERM");
    let status = agent.wait_until(Instant::now() + Duration::from_secs(30)).await;
    assert!(status.is_some(), "agent did not exit on SIGTERM:\n{}", agent_log());
    let workers = QueueSource::workers(&client).await.unwrap();
    assert!(workers.iter().all(|w| w.id != worker_id), "worker still registered: {workers:?}\n{}", agent_log());
    assert_eq!(handle.unknown_endpoints(), Vec::<String>::new(), "the agent called endpoints the server lacks");
    server.shutdown().await.unwrap();
}
