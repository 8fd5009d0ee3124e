//! Shared by the integration tests: the server on loopback, the Python venv
//! with the real ClearML clients, child processes that die with the test,
//! and polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use flockd_clearml::secret::{Secret, SecretRef};
use flockd_clearml::server::{ClearmlServer, RunningServer, ServerConfig};
use flockd_clearml::{ClearmlClient, ClearmlConfig};

pub const ACCESS_KEY: &str = "FLOCKDFAKEACCESSKEY";
pub const SECRET_KEY: &str = "flockd-fake-secret-key";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().expect("repo root")
}

/// `<repo>/.venv/bin`, or None (with a loud message) when scripts/setup has
/// not been run. Under CI (`CI` set) a missing venv fails the test instead:
/// a green run must mean the real clients ran.
pub fn venv_bin(test: &str) -> Option<PathBuf> {
    let bin = repo_root().join(".venv/bin");
    if bin.join("python").exists() && bin.join("clearml-agent").exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} has no python/clearml-agent, and CI must run the real clients: scripts/setup creates them",
        bin.display()
    );
    eprintln!(
        "\n\n!!!!!!!! SKIPPING {test}: {} has no python/clearml-agent; run scripts/setup to create the venv !!!!!!!!\n\n",
        bin.display()
    );
    None
}

pub async fn start_server() -> RunningServer {
    start_server_with(|_| {}).await
}

pub async fn start_server_with(adjust: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), ACCESS_KEY, Secret::new(SECRET_KEY));
    adjust(&mut config);
    ClearmlServer::start(config).await.expect("server starts")
}

/// A client for `url` whose credentials are referenced as files in `dir`,
/// the way flockd's config references them.
pub fn client_for(url: &str, dir: &Path) -> ClearmlClient {
    std::fs::write(dir.join("access-key"), ACCESS_KEY).unwrap();
    std::fs::write(dir.join("secret-key"), format!("{SECRET_KEY}\n")).unwrap();
    let mut config =
        ClearmlConfig::new(url, SecretRef::File(dir.join("access-key")), SecretRef::File(dir.join("secret-key")));
    config.max_attempts = 3;
    config.request_timeout_secs = 10;
    ClearmlClient::new(&config).expect("client builds")
}

/// Environment for the real SDK/agent: everything points at `url`, and HOME
/// and the config file are inside `home` so nothing touches ~/.clearml.
pub fn clearml_env(url: &str, home: &Path) -> Vec<(String, String)> {
    let conf = home.join("clearml.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").unwrap();
    }
    [
        ("HOME", home.display().to_string()),
        ("TMPDIR", home.display().to_string()),
        ("CLEARML_CONFIG_FILE", conf.display().to_string()),
        ("CLEARML_API_HOST", url.to_string()),
        ("CLEARML_WEB_HOST", url.to_string()),
        ("CLEARML_FILES_HOST", url.to_string()),
        ("CLEARML_API_ACCESS_KEY", ACCESS_KEY.to_string()),
        ("CLEARML_API_SECRET_KEY", SECRET_KEY.to_string()),
        ("CLEARML_LOG_LEVEL", "WARNING".to_string()),
        ("PYTHONUNBUFFERED", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A child process in its own process group, killed (with everything it
/// started) when dropped, whatever path the test takes.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut Command) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        let child = command.process_group(0).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard { child: Some(child), name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (e.g. "INT") to the process itself, not its group.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
    }

    /// Waits for exit, polling, until `deadline`; None if still running.
    pub async fn wait_until(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
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
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `probe` every 100 ms until it returns Some, or panics at the
/// deadline with `what` and the last state seen.
pub async fn poll_until<T, S: std::fmt::Debug, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
