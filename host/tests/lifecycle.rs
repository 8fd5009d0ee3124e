//! `flockd run` as a process, end to end against the built-in ClearML server
//! and the local provider: SIGTERM ends it cleanly with the last tick saved,
//! and no secret it was given (ClearML keys, the agent's git password, the
//! HTTP token) appears in any log line, API response, journal entry, file it
//! wrote or error it printed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flockd_clearml::secret::Secret;
use flockd_clearml::server::{ClearmlServer, ServerConfig};
use flockd_core::{JournalQuery, StateStore};
use tokio::io::{AsyncBufReadExt, BufReader};

const ACCESS_KEY: &str = "AKIAFAKEclearmlAccess7Q";
const SECRET_KEY: &str = "cml-secret-Zx81Qw-FAKE";
const GIT_PASS: &str = "ghp_FAKEgitPassword4711";
const HTTP_TOKEN: &str = "http-token-FAKE-93kdQ";
const WRONG_SECRET: &str = "cml-wrong-secret-Pq55-FAKE";
const SECRETS: [&str; 5] = [ACCESS_KEY, SECRET_KEY, GIT_PASS, HTTP_TOKEN, WRONG_SECRET];

fn config(api: &str) -> String {
    format!(
        r#"
cluster = "leak"
poll-interval-secs = 0.3
state-dir = "state"

[clearml]
api-host = "{api}"
access-key = "env:FLOCKD_TEST_CML_KEY"
secret-key = "env:FLOCKD_TEST_CML_SECRET"

[agent]
git-user = "flockd-bot"
git-pass = "env:FLOCKD_TEST_GIT_PASS"

[http]
listen = "127.0.0.1:0"
token = "env:FLOCKD_TEST_HTTP_TOKEN"

[limits]
max-instances = 2
max-cost-per-hour = 5.0

[provider.here]
kind = "local"
state-dir = "machines"
terminate-grace-ms = 500

[[queue]]
name = "cpu"
resources = ["cpu"]

[resource.cpu]
provider = "here"
max-instances = 1
price-per-hour = 0.25

# A machine whose agent never registers: launched, then terminated by the
# spin-up timeout two seconds later.
[resource.cpu.local]
command = "sleep"
args = ["30"]

# The two tests run side by side: a debug build's first policy calls can
# pass the 50 ms default on 2 busy cores.
[policies]
timeout-ms = 2000

[[policy]]
name = "scale-up"

[[policy]]
name = "spin-up-timeout"
settings = {{ timeout-secs = 2 }}

[[policy]]
name = "idle"

[[policy]]
name = "budget"
"#
    )
}

struct Run {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

fn flockd(dir: &Path, args: &[&str], cml_secret: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flockd"));
    cmd.current_dir(dir)
        .args(["--log-format", "json", "--log", "info"])
        .args(args)
        .env("FLOCKD_TEST_CML_KEY", ACCESS_KEY)
        .env("FLOCKD_TEST_CML_SECRET", cml_secret)
        .env("FLOCKD_TEST_GIT_PASS", GIT_PASS)
        .env("FLOCKD_TEST_HTTP_TOKEN", HTTP_TOKEN)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

impl Run {
    fn start(mut cmd: tokio::process::Command) -> Run {
        let mut child = cmd.spawn().expect("start flockd");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Run { child, lines }
    }

    async fn wait_for_line(&self, what: &str, limit: Duration, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| matches(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what} within {limit:?}:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

fn message(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(line).ok()
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} contains the secret {s:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_saves_the_last_tick_and_no_secret_leaks_anywhere() {
    let server =
        ClearmlServer::start(ServerConfig::new("127.0.0.1:0".parse().unwrap(), ACCESS_KEY, Secret::new(SECRET_KEY)))
            .await
            .unwrap();
    let handle = server.handle();
    handle.create_queue("cpu").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("flockd.toml");
    std::fs::write(&config_path, config(&server.url())).unwrap();
    let config_arg = config_path.to_str().unwrap();

    let check = flockd(dir.path(), &["check", "--config", config_arg], SECRET_KEY).output().await.unwrap();
    let check_out = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "{check_out}");

    let run = Run::start(flockd(dir.path(), &["run", "--config", config_arg], SECRET_KEY));
    let http_line = run
        .wait_for_line("announcing the HTTP address", Duration::from_secs(60), |l| l.contains("HTTP: dashboard"))
        .await;
    let url =
        message(&http_line).unwrap()["fields"]["message"].as_str().unwrap().rsplit(' ').next().unwrap().to_string();

    let task = handle.create_task("leak test task").unwrap();
    handle.enqueue(&task, "cpu").unwrap();
    run.wait_for_line("for a launch", Duration::from_secs(30), |l| l.contains("launched:")).await;
    run.wait_for_line("for a boot-timeout termination", Duration::from_secs(30), |l| l.contains("terminated:")).await;

    // Everything the API says, with and without the token.
    let client = reqwest::Client::new();
    let mut responses = String::new();
    for path in ["/api/v1/status", "/api/v1/decisions?limit=1000", "/metrics", "/api/v1/logs", "/api/v1/history", "/"] {
        let good = client.get(format!("{url}{path}")).bearer_auth(HTTP_TOKEN).send().await.unwrap();
        assert_eq!(good.status(), 200, "{path}");
        responses.push_str(&good.text().await.unwrap());
        let bad = client.get(format!("{url}{path}")).bearer_auth("not-the-token").send().await.unwrap();
        assert_eq!(bad.status(), 401, "{path}");
        responses.push_str(&format!("{:?}", bad.headers()));
        responses.push_str(&bad.text().await.unwrap());
    }
    // The probes answer without a token (a kubelet has none) and say nothing more.
    for probe in ["/healthz", "/readyz"] {
        let bare = client.get(format!("{url}{probe}")).send().await.unwrap();
        assert_eq!(bare.status(), 200, "{probe}");
        responses.push_str(&bare.text().await.unwrap());
    }
    assert!(
        responses.contains("\"kind\":\"terminate\"") && responses.contains("boot-timeout"),
        "the API shows the termination"
    );

    // SIGTERM: in-flight work finishes, state is saved, exit 0.
    let pid = run.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut run = run;
    let status = tokio::time::timeout(Duration::from_secs(30), run.child.wait())
        .await
        .expect("flockd exits within 30 s of SIGTERM")
        .unwrap();
    run.wait_for_line("saying it stopped", Duration::from_secs(5), |l| l.contains("state saved")).await;
    assert!(status.success(), "exit status {status:?}:\n{}", run.all());

    let last_logged = run
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| message(l))
        .filter(|m| m["fields"]["message"] == "tick done")
        .filter_map(|m| m["span"]["tick"].as_u64())
        .max()
        .expect("ticks logged with their span");
    let store =
        flockd::store::RedbStore::open(&dir.path().join("state"), flockd::store::JournalLimits::default()).unwrap();
    let journal = store.journal(&JournalQuery { limit: 0, instance: None }).await.unwrap();
    assert_eq!(
        journal.first().map(|r| r.tick),
        Some(last_logged),
        "the journal ends with the last tick the log reported"
    );
    assert_eq!(
        flockd_core::store::load_state(&store).await.unwrap().tick,
        last_logged,
        "host state saved at the last tick"
    );
    let tick_done = run
        .all()
        .lines()
        .filter_map(message)
        .find(|m| m["fields"]["message"] == "tick done" && m["span"]["launched"] == 1);
    assert!(tick_done.is_some(), "the tick span carries its counts");

    // A run with a wrong ClearML secret fails; its error names no secret.
    let wrong = flockd(dir.path(), &["run", "--config", config_arg], WRONG_SECRET).output().await.unwrap();
    let wrong_out = format!("{}{}", String::from_utf8_lossy(&wrong.stdout), String::from_utf8_lossy(&wrong.stderr));
    assert!(!wrong.status.success(), "a wrong secret must stop flockd run:\n{wrong_out}");

    assert_no_secret("flockd check's output", &check_out);
    assert_no_secret("the log", &run.all());
    assert_no_secret("the HTTP responses", &responses);
    assert_no_secret("the journal", &serde_json::to_string(&journal).unwrap());
    assert_no_secret("the failed run's output", &wrong_out);
    drop(store);
    for (path, bytes) in files(dir.path()) {
        if path == config_path {
            continue;
        }
        for s in SECRETS {
            assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{} contains the secret {s:?}", path.display());
        }
    }
    server.shutdown().await.unwrap();
}

/// Issue 15, item 2: with `on-shutdown = "all"`, SIGTERM terminates every
/// machine whose worker is not busy (here one still booting) before flockd
/// exits, and the journal's last tick says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_on_shutdown_all_terminates_the_fleet_before_exiting() {
    let server =
        ClearmlServer::start(ServerConfig::new("127.0.0.1:0".parse().unwrap(), ACCESS_KEY, Secret::new(SECRET_KEY)))
            .await
            .unwrap();
    let handle = server.handle();
    handle.create_queue("cpu").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("flockd.toml");
    let text = config(&server.url()).replace("timeout-secs = 2", "timeout-secs = 600")
        + "\n[controller]\non-shutdown = \"all\"\nshutdown-timeout-secs = 20\n";
    std::fs::write(&config_path, text).unwrap();
    let run = Run::start(flockd(dir.path(), &["run", "--config", config_path.to_str().unwrap()], SECRET_KEY));
    let task = handle.create_task("shutdown test task").unwrap();
    handle.enqueue(&task, "cpu").unwrap();
    run.wait_for_line("for a launch", Duration::from_secs(60), |l| l.contains("launched:")).await;

    let pid = run.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut run = run;
    let status = tokio::time::timeout(Duration::from_secs(30), run.child.wait())
        .await
        .expect("flockd exits within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status:?}:\n{}", run.all());
    run.wait_for_line("the on-shutdown terminations", Duration::from_secs(5), |l| {
        l.contains("on-shutdown terminations done") && l.contains("\"terminated\":1")
    })
    .await;
    let store =
        flockd::store::RedbStore::open(&dir.path().join("state"), flockd::store::JournalLimits::default()).unwrap();
    let journal = store.journal(&JournalQuery { limit: 1, instance: None }).await.unwrap();
    let last = &journal[0];
    assert!(
        last.actions.iter().any(|a| matches!(a,
            flockd_core::Action::Terminate { reason, outcome: flockd_core::Outcome::Done, .. } if reason.contains("on-shutdown = all"))),
        "the last tick terminated the booting machine: {:?}",
        last.actions
    );
    drop(store);
    server.shutdown().await.unwrap();
}
