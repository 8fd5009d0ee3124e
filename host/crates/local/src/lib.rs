//! flockd's local provider: a "machine" is a process on this host, started
//! from a configured command in its own session and process group, so it
//! outlives a flockd crash. Each machine is recorded in a state directory;
//! a restarted flockd lists (adopts) the live ones and forgets the dead.
//!
//! Useful on-prem (one agent per launch on a big box) and for end-to-end
//! tests without a cloud.

mod config;
mod process;
mod state;

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use flockd_core::naming;
use flockd_core::{CloudInstance, CloudProvider, CloudState, LaunchRequest, Millis, ProviderError};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

pub use config::{LocalProviderConfig, LocalResourceConfig};
use process::ProcessIdentity;
use state::{MachineRecord, StateDir};

/// Set in every machine's environment; how a record whose start was
/// interrupted finds its process.
const INSTANCE_ID_VAR: &str = "FLOCKD_INSTANCE_ID";
/// How often terminate looks whether the process group is gone.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// How long terminate waits for the kernel after SIGKILL.
const AFTER_KILL_WAIT: Duration = Duration::from_secs(5);

pub struct LocalProvider {
    resources: HashMap<String, LocalResourceConfig>,
    terminate_grace: Duration,
    /// Serialises changes to the state directory within this flockd.
    state: Arc<Mutex<StateDir>>,
}

impl LocalProvider {
    /// Opens (creating if needed) the state directory. Machines recorded
    /// there by an earlier flockd are adopted on the next `list`.
    pub fn new(
        config: &LocalProviderConfig,
        resources: HashMap<String, LocalResourceConfig>,
    ) -> Result<Self, ProviderError> {
        let state = StateDir::open(&config.state_dir).map_err(|e| {
            ProviderError::InvalidRequest(format!(
                "cannot create or open the local provider's state-dir {}: {e}; \
                 set state-dir to a writable directory",
                config.state_dir.display()
            ))
        })?;
        Ok(LocalProvider {
            resources,
            terminate_grace: Duration::from_millis(config.terminate_grace_ms),
            state: Arc::new(Mutex::new(state)),
        })
    }

    fn resource(&self, name: &str) -> Result<&LocalResourceConfig, ProviderError> {
        self.resources.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.resources.keys().map(String::as_str).collect();
            known.sort_unstable();
            ProviderError::InvalidRequest(format!(
                "resource {name:?} has no local provider settings (configured: {known:?})"
            ))
        })
    }

    /// Starts the process. The caller has already recorded the machine
    /// as starting (leader None), so a crash in here leaves it findable.
    fn spawn(
        &self,
        state: &StateDir,
        request: &LaunchRequest,
        instance_id: &str,
        resource: &LocalResourceConfig,
    ) -> Result<ProcessIdentity, ProviderError> {
        let log_path = state.log_path(instance_id);
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| ProviderError::Other(format!("cannot open {}: {e}", log_path.display())))
        };
        let working_dir = resource.working_dir.as_deref().unwrap_or(state.path());

        let mut command = Command::new(&resource.command);
        command.args(&resource.args).env_clear();
        for name in &resource.pass_env {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .envs(&resource.env)
            .env("CLEARML_WORKER_ID", naming::worker_id(&request.cluster, &request.resource, instance_id))
            .env("FLOCKD_CLUSTER", &request.cluster)
            .env("FLOCKD_RESOURCE", &request.resource)
            .env(INSTANCE_ID_VAR, instance_id)
            .env("FLOCKD_QUEUES", request.queues.join(" "))
            .current_dir(working_dir)
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?);
        // A session of its own: its own process group (terminate signals the
        // whole group) and no controlling terminal, so neither a Ctrl-C nor a
        // crash of flockd takes it down.
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        let mut child = command.spawn().map_err(|e| {
            ProviderError::InvalidRequest(format!(
                "resource {:?}: cannot start {:?} (working-dir {}): {e}",
                request.resource,
                resource.command,
                working_dir.display()
            ))
        })?;
        let pid = child.id() as i32;
        let identity = ProcessIdentity::of(pid);
        // Reap it when it exits, so it never lingers as a zombie of flockd.
        std::thread::spawn(move || child.wait());
        identity.map_err(|e| {
            let _ = process::signal_group(pid, Some(Signal::SIGKILL));
            ProviderError::Other(format!("started {instance_id} but cannot read /proc/{pid} ({e}); killed it"))
        })
    }

    /// The record of a machine still running, or None if it is gone. A
    /// machine runs while its leader does, or while processes the leader
    /// started live on in its group after it exited (an agent's task, a
    /// daemonised child): forgetting those would leak them. A record left
    /// "starting" by a crash is completed from the process that carries its
    /// instance id, if one runs.
    fn live(&self, state: &StateDir, record: MachineRecord) -> Result<Option<MachineRecord>, ProviderError> {
        if let Some(leader) = &record.leader {
            if leader.is_alive() {
                return Ok(Some(record));
            }
            let orphans = process::group_member_with_env(leader.pid, INSTANCE_ID_VAR, &record.instance_id)
                .map_err(|e| ProviderError::Other(format!("cannot scan /proc: {e}")))?;
            return Ok(orphans.then_some(record));
        }
        let found = process::find_group_leader_with_env(INSTANCE_ID_VAR, &record.instance_id)
            .map_err(|e| ProviderError::Other(format!("cannot scan /proc: {e}")))?;
        let Some(leader) = found.and_then(|pid| ProcessIdentity::of(pid).ok()) else {
            return Ok(None);
        };
        tracing::info!(instance = %record.instance_id, pid = leader.pid, "found the process of a machine whose start was interrupted");
        let record = MachineRecord { leader: Some(leader), ..record };
        state.write(&record).map_err(|e| state_error(state, e))?;
        Ok(Some(record))
    }
}

/// Same cluster and key, same instance id: a retried launch finds the first.
fn instance_id_for(cluster: &str, idempotency_key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(cluster.as_bytes())
        .chain_update([0])
        .chain_update(idempotency_key.as_bytes())
        .finalize();
    format!("local-{}", &hex::encode(digest)[..16])
}

fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

fn instance_of(record: &MachineRecord) -> CloudInstance {
    CloudInstance {
        id: record.instance_id.clone(),
        resource: record.resource.clone(),
        state: CloudState::Running,
        launched_at: record.launched_at,
        launch_key: Some(record.launch_key.clone()),
        failure: None,
    }
}

fn state_error(state: &StateDir, e: io::Error) -> ProviderError {
    ProviderError::Other(format!("local provider state-dir {}: {e}", state.path().display()))
}

#[async_trait]
impl CloudProvider for LocalProvider {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        let resource = self.resource(&request.resource)?;
        let instance_id = instance_id_for(&request.cluster, &request.idempotency_key);
        let state = self.state.lock().await;
        let existing = state.read(&instance_id).map_err(|e| state_error(&state, e))?;
        if let Some(live) = existing.map(|record| self.live(&state, record)).transpose()?.flatten() {
            return Ok(instance_of(&live));
        }
        let mut record = MachineRecord {
            instance_id: instance_id.clone(),
            cluster: request.cluster.clone(),
            resource: request.resource.clone(),
            launch_key: request.idempotency_key.clone(),
            launched_at: now_ms(),
            leader: None,
        };
        state.write(&record).map_err(|e| state_error(&state, e))?;
        let leader = match self.spawn(&state, request, &instance_id, resource) {
            Ok(leader) => leader,
            Err(e) => {
                let _ = state.remove(&instance_id);
                return Err(e);
            }
        };
        let pid = leader.pid;
        record.leader = Some(leader);
        if let Err(e) = state.write(&record) {
            // Untracked means leaked: stop it before reporting the failure.
            let _ = process::signal_group(pid, Some(Signal::SIGKILL));
            let _ = state.remove(&instance_id);
            return Err(ProviderError::Other(format!(
                "started {instance_id} but could not record it in {} ({e}); killed it",
                state.path().display()
            )));
        }
        tracing::info!(instance = %instance_id, resource = %request.resource, pid, "started local machine");
        Ok(instance_of(&record))
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        let state = self.state.lock().await;
        let (records, unreadable) = state.all().map_err(|e| state_error(&state, e))?;
        // A listing is complete or it is an error: a record we cannot read
        // may stand for a running agent, and skipping it would leave that
        // machine counted against nothing.
        if let Some(path) = unreadable.first() {
            return Err(ProviderError::Other(format!(
                "local provider: cannot read the machine record {} ({} unreadable in all): check whether a process with {INSTANCE_ID_VAR}=<its name> still runs, stop it, then move the file out of {}",
                path.display(),
                unreadable.len(),
                state.path().display()
            )));
        }
        let mut live = Vec::new();
        for record in records.into_iter().filter(|r| r.cluster == cluster) {
            let instance_id = record.instance_id.clone();
            match self.live(&state, record)? {
                Some(record) => live.push(instance_of(&record)),
                None => {
                    tracing::info!(instance = %instance_id, "local machine exited on its own; forgetting it");
                    state.remove(&instance_id).map_err(|e| state_error(&state, e))?;
                }
            }
        }
        Ok(live)
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let live = {
            let state = self.state.lock().await;
            match state.read(instance_id).map_err(|e| state_error(&state, e))? {
                Some(record) => self.live(&state, record)?,
                None => return Ok(()),
            }
        };
        // Only signal a group `live` vouched for: led by the very process we
        // started, or holding processes that carry this machine's instance id
        // (a dead leader's pid, and so group id, may belong to a stranger now).
        if let Some(leader) = live.and_then(|r| r.leader) {
            stop_group(leader.pid, self.terminate_grace)
                .await
                .map_err(|e| ProviderError::Other(format!("cannot stop {instance_id} (pid {}): {e}", leader.pid)))?;
        }
        let state = self.state.lock().await;
        state.remove(instance_id).map_err(|e| state_error(&state, e))?;
        tracing::info!(instance = %instance_id, "terminated local machine");
        Ok(())
    }
}

/// SIGTERM the group, wait up to `grace` for it to go, then SIGKILL.
async fn stop_group(pgid: i32, grace: Duration) -> io::Result<()> {
    if !process::signal_group(pgid, Some(Signal::SIGTERM))? {
        return Ok(());
    }
    if wait_group_gone(pgid, grace).await? {
        return Ok(());
    }
    tracing::warn!(pgid, "process group ignored SIGTERM for {grace:?}; sending SIGKILL");
    process::signal_group(pgid, Some(Signal::SIGKILL))?;
    if wait_group_gone(pgid, AFTER_KILL_WAIT).await? {
        return Ok(());
    }
    Err(io::Error::other(format!("process group {pgid} still exists {AFTER_KILL_WAIT:?} after SIGKILL")))
}

async fn wait_group_gone(pgid: i32, within: Duration) -> io::Result<bool> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if !process::group_running(pgid)? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_stable_per_cluster_and_key() {
        assert_eq!(instance_id_for("prod", "k1"), instance_id_for("prod", "k1"));
        assert_ne!(instance_id_for("prod", "k1"), instance_id_for("prod", "k2"));
        assert_ne!(instance_id_for("prod", "k1"), instance_id_for("dev", "k1"));
        assert!(instance_id_for("prod", "k1").starts_with("local-"));
    }
}
