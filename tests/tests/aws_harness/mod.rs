//! The pieces of the end-to-end runs against moto (issue 5): moto behind
//! tests/fixtures/moto_faults.py, flockd's ClearML-compatible server in
//! process, and the real `flockd` binary as a child process.
//!
//! moto's instances are `running` the moment RunInstances returns and never
//! boot anything: no agent ever runs on them. The tests play the agent
//! themselves, registering the worker id flockd assigns
//! (`flockd:<cluster>:<resource>:<instance-id>`) with the ClearML server.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flockd_clearml::secret::Secret;
use flockd_clearml::server::{ClearmlServer, RunningServer, ServerConfig, ServerHandle};
use serde_json::{Value, json};
use tokio::time::Instant;

pub const REGION: &str = "us-east-1";
pub const AMI: &str = "ami-12345678";
pub const CLEARML_ACCESS_KEY: &str = "flockd-e2e";
/// Handed to flockd only through the environment variable its config names.
pub const CLEARML_SECRET: &str = "flockd-e2e-fake-secret";
pub const CLEARML_SECRET_ENV: &str = "FLOCKD_E2E_CLEARML_SECRET";
pub const AWS_KEY_ENV: &str = "FLOCKD_E2E_AWS_KEY_ID";
pub const AWS_SECRET_ENV: &str = "FLOCKD_E2E_AWS_SECRET";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repo root")
}

/// The `flockd` binary with the aws feature: `FLOCKD_BIN`, else
/// `<target>/debug/flockd`. A test package cannot make cargo build another
/// package's binary, so build it first: `cargo build -p flockd`.
pub fn flockd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLOCKD_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug/flockd");
    assert!(bin.exists(), "{} is missing: run `cargo build -p flockd` first (or set FLOCKD_BIN)", bin.display());
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `probe` until it returns Some, or panics with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One moto for the whole test binary (its first EC2 call takes seconds).
/// Tests keep apart by cluster id. The fixture exits with this process.
pub struct Moto {
    pub url: String,
}

static MOTO: tokio::sync::OnceCell<Moto> = tokio::sync::OnceCell::const_new();

pub async fn moto() -> &'static Moto {
    MOTO.get_or_init(|| async {
        let python = repo_root().join(".venv/bin/python");
        assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
        let port = free_port();
        let child = Command::new(python)
            .arg(repo_root().join("tests/fixtures/moto_faults.py"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        // Never waited for: it exits when this test process does.
        std::mem::forget(child);
        let moto = Moto { url: format!("http://127.0.0.1:{port}") };
        // A client per call: the tests' runtimes come and go.
        let http = reqwest::Client::new();
        wait_for("moto to answer", Duration::from_secs(30), || async {
            http.get(format!("{}/_faults/calls", moto.url)).send().await.ok().map(|_| ())
        })
        .await;
        // Loads moto's AMI and instance-type data (seconds).
        let warm = moto.ec2_call(&http, "DescribeInstances").await;
        assert!(warm.status().is_success(), "warm-up DescribeInstances: {}", warm.status());
        moto.post(&http, "/_faults/reset", json!({})).await;
        moto
    })
    .await
}

/// An instance as moto holds it.
#[derive(Clone, Debug)]
pub struct MotoInstance {
    pub id: String,
    pub state: String,
    pub lifecycle: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub user_data: Option<String>,
    pub http_tokens: String,
}

impl MotoInstance {
    pub fn live(&self) -> bool {
        self.state != "terminated"
    }
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

impl Moto {
    async fn ec2_call(&self, http: &reqwest::Client, action: &str) -> reqwest::Response {
        // moto reads service and region from the (unchecked) signature.
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAFAKEFAKEFAKEFAKE/20260101/{REGION}/ec2/aws4_request, SignedHeaders=host, Signature=00"
        );
        http.post(&self.url)
            .header("Authorization", auth)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("Action={action}&Version=2016-11-15"))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, http: &reqwest::Client, path: &str, body: Value) {
        let response = http.post(format!("{}{path}", self.url)).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
    }

    /// Every instance of `cluster` (by its flockd-cluster tag), any state.
    pub async fn instances(&self, cluster: &str) -> Vec<MotoInstance> {
        self.all_instances().await.into_iter().filter(|i| i.tag("flockd-cluster") == Some(cluster)).collect()
    }

    /// Every instance of `cluster` in `region`, any state.
    pub async fn instances_in(&self, region: &str, cluster: &str) -> Vec<MotoInstance> {
        self.all_instances_in(region).await.into_iter().filter(|i| i.tag("flockd-cluster") == Some(cluster)).collect()
    }

    /// Every instance in the region, whoever launched it, any state.
    pub async fn all_instances(&self) -> Vec<MotoInstance> {
        self.all_instances_in(REGION).await
    }

    async fn all_instances_in(&self, region: &str) -> Vec<MotoInstance> {
        let url = format!("{}/_faults/instances?region={region}", self.url);
        let all: Vec<Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
        all.into_iter()
            .map(|i| MotoInstance {
                id: i["id"].as_str().unwrap().to_owned(),
                state: i["state"].as_str().unwrap().to_owned(),
                lifecycle: i["lifecycle"].as_str().map(str::to_owned),
                tags: serde_json::from_value(i["tags"].clone()).unwrap(),
                user_data: i["user_data"].as_str().map(str::to_owned),
                http_tokens: i["http_tokens"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Makes the next `count` calls of `action` whose parameters include
    /// `matching` fail with EC2 error `code` and HTTP `status`.
    pub async fn inject_error(&self, action: &str, code: &str, status: u16, count: u32, matching: Value) {
        let fault = json!({"action": action, "code": code, "status": status, "count": count, "match": matching});
        self.post(&reqwest::Client::new(), "/_faults/inject", fault).await;
    }

    /// The next matching RunInstances makes its instance, then answers
    /// `status` with `code`; DescribeInstances leaves that instance out for
    /// `hide`. Match on the cluster: tests share one moto.
    pub async fn inject_made_then_failed(&self, code: &str, status: u16, hide: Duration, matching: Value) {
        let fault = json!({
            "action": "RunInstances", "code": code, "status": status, "count": 1,
            "after": true, "hide_secs": hide.as_secs_f64(), "match": matching,
        });
        self.post(&reqwest::Client::new(), "/_faults/inject", fault).await;
    }

    /// Makes the next `count` matching calls of `action` take `delay` longer.
    pub async fn inject_delay(&self, action: &str, delay: Duration, count: u32, matching: Value) {
        let fault = json!({"action": action, "delay_ms": delay.as_millis() as u64, "count": count, "match": matching});
        self.post(&reqwest::Client::new(), "/_faults/inject", fault).await;
    }

    /// Parameters of every logged call of `action`.
    pub async fn calls(&self, action: &str) -> Vec<BTreeMap<String, String>> {
        let all: Vec<Value> = reqwest::get(format!("{}/_faults/calls", self.url)).await.unwrap().json().await.unwrap();
        all.into_iter()
            .filter(|c| c["action"] == action)
            .map(|c| serde_json::from_value(c["params"].clone()).unwrap())
            .collect()
    }
}

/// RunInstances parameters that pick out one cluster's calls (its tag is the
/// first one flockd writes) and, optionally, one market.
pub fn run_instances_of(cluster: &str, spot: bool) -> Value {
    let mut matching = json!({
        "TagSpecification.1.Tag.1.Key": "flockd-cluster",
        "TagSpecification.1.Tag.1.Value": cluster,
    });
    if spot {
        matching["InstanceMarketOptions.MarketType"] = json!("spot");
    }
    matching
}

/// flockd's ClearML-compatible server, in process.
pub struct Clearml {
    pub server: RunningServer,
    pub handle: ServerHandle,
}

impl Clearml {
    pub async fn start() -> Clearml {
        let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), CLEARML_ACCESS_KEY, Secret::new(CLEARML_SECRET));
        let server = ClearmlServer::start(config).await.expect("ClearML server starts");
        let handle = server.handle();
        Clearml { server, handle }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn enqueue(&self, queue: &str, name: &str) -> String {
        let task = self.handle.create_task(name).unwrap();
        self.handle.enqueue(&task, queue).unwrap();
        task
    }

    pub fn pending(&self, queue: &str) -> usize {
        let id = self.handle.queue_id(queue).expect("queue exists");
        let data = self.handle.call("queues.get_num_entries", json!({"queue": id})).unwrap();
        data["num"].as_u64().unwrap() as usize
    }

    /// What the agent does when it starts: register and serve `queues`.
    pub fn register(&self, worker: &str, queues: &[&str]) {
        self.handle.call("workers.register", json!({"worker": worker, "queues": queues})).unwrap();
    }

    /// The agent pulls the next task of `queue` and reports it as running;
    /// None when the queue is empty.
    pub fn take_task(&self, worker: &str, queue: &str) -> Option<String> {
        let id = self.handle.queue_id(queue).expect("queue exists");
        let next = self.handle.call("queues.get_next_task", json!({"queue": id})).unwrap();
        let task = next["entry"]["task"].as_str()?.to_owned();
        self.handle.call("tasks.started", json!({"task": task})).unwrap();
        self.handle.call("workers.status_report", json!({"worker": worker, "task": task, "queue": id})).unwrap();
        Some(task)
    }

    /// The agent finishes its task and goes back to waiting.
    pub fn finish_task(&self, worker: &str, task: &str) {
        self.handle.call("tasks.completed", json!({"task": task})).unwrap();
        self.handle.call("workers.status_report", json!({"worker": worker, "task": ""})).unwrap();
    }

    /// Worker id → its current task, for every registered worker.
    pub fn workers(&self) -> BTreeMap<String, Option<String>> {
        let data = self.handle.call("workers.get_all", json!({})).unwrap();
        data["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["id"].as_str().unwrap().to_owned(), w["task"]["id"].as_str().map(str::to_owned)))
            .collect()
    }
}

/// The knobs of one flockd config.
pub struct Setup {
    pub cluster: String,
    pub clearml_url: String,
    pub max_instances: u32,
    pub spot_max: u32,
    pub on_demand_max: u32,
    pub cool_off_secs: u64,
    pub max_idle_secs: u64,
}

/// A flockd config file for `setup` against the shared moto, in `dir`.
pub async fn write_config(dir: &Path, setup: &Setup) -> PathBuf {
    let Setup { cluster, clearml_url, max_instances, spot_max, on_demand_max, cool_off_secs, max_idle_secs } = setup;
    let moto = &moto().await.url;
    let state = dir.join("state");
    let config = format!(
        r#"
cluster = "{cluster}"
poll-interval-secs = 0.5
state-dir = "{state}"

[limits]
max-instances = {max_instances}
max-cost-per-hour = 100.0

[clearml]
api-host = "{clearml_url}"
access-key = "env:FLOCKD_E2E_CLEARML_KEY"
secret-key = "env:{CLEARML_SECRET_ENV}"
request-timeout-secs = 5
create-missing-queues = true

[[queue]]
name = "gpu"
resources = ["gpu-spot", "gpu-on-demand"]

[provider.aws]
kind = "aws"
region = "{REGION}"
endpoint-url = "{moto}"
credentials = {{ access-key-id = "env:{AWS_KEY_ENV}", secret-access-key = "env:{AWS_SECRET_ENV}" }}
throttle-retries = 1
throttle-backoff-ms = 50

[resource.gpu-spot]
provider = "aws"
max-instances = {spot_max}
price-per-hour = 1.0
market = "spot"
[resource.gpu-spot.aws]
ami = "{AMI}"
instance-type = "g5.xlarge"

[resource.gpu-on-demand]
provider = "aws"
max-instances = {on_demand_max}
price-per-hour = 3.0
[resource.gpu-on-demand.aws]
ami = "{AMI}"
instance-type = "g5.xlarge"

[agent]
agent-package = "clearml-agent==3.0.3"
# The test server's random port follows no ClearML naming: given, not derived.
web-host = "{clearml_url}"
files-host = "{clearml_url}"

[policies]
watch = false

[[policy]]
name = "scale-up"
settings = {{ cool-off-secs = {cool_off_secs} }}

[[policy]]
name = "spin-up-timeout"
settings = {{ timeout-secs = 3600 }}

[[policy]]
name = "idle"
settings = {{ max-idle-secs = {max_idle_secs} }}

[[policy]]
name = "budget"

[http]
enabled = false
"#,
        state = state.display(),
    );
    let path = dir.join("flockd.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A running `flockd run`; its output goes to `<dir>/flockd-<n>.log`.
pub struct Flockd {
    child: Child,
    pub log: PathBuf,
}

impl Flockd {
    pub fn start(config: &Path, log: PathBuf) -> Flockd {
        Flockd::start_with_env(config, log, &[])
    }

    /// With these variables set too (a database URL, say).
    pub fn start_with_env(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Flockd {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(flockd_bin())
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("FLOCKD_E2E_CLEARML_KEY", CLEARML_ACCESS_KEY)
            .env(CLEARML_SECRET_ENV, CLEARML_SECRET)
            .env(AWS_KEY_ENV, "AKIAFAKEFAKEFAKEFAKE")
            .env(AWS_SECRET_ENV, "fake-aws-secret-key")
            // No real AWS settings from the developer's shell.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start flockd");
        Flockd { child, log }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = wait_for("flockd to stop after SIGTERM", Duration::from_secs(20), || {
            let done = self.child.try_wait().unwrap();
            async move { done }
        })
        .await;
        assert!(exit.success(), "flockd exited with {exit} after SIGTERM; log:\n{}", self.log_text());
    }

    /// Until its log says the loop has started.
    pub async fn wait_until_running(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log_text().contains("flockd running") {
            if let Some(status) = self.exited() {
                panic!("flockd exited ({status}) before running:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "flockd did not start within 30 s:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Flockd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
