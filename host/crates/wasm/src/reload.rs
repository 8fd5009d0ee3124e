//! Hot swap. A dedicated thread watches the directories of the policy files
//! (a rename replaces the inode, so watching a file would miss it), waits for
//! writes to settle, and replaces a policy only after the new version
//! compiled, accepted its settings and decided validly on the last snapshot.
//! Compiling happens on this thread, never on the async executor, and the
//! old version keeps deciding meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::chain::{Chain, Origin, PolicyRuntime, ReloadEvent, ReloadOutcome};
use crate::loader::{self, PolicySpec};

/// Default quiet period after the last write before a file is read.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

pub struct Reloader {
    _watcher: notify::RecommendedWatcher,
    stop: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Msg {
    Changed(PathBuf),
    Stop,
}

impl Reloader {
    /// Starts watching every spec's file. Directories that do not exist yet
    /// are created, so "drop a file in the folder" works on a fresh install.
    pub fn start(runtime: Arc<PolicyRuntime>, specs: Vec<PolicySpec>, debounce: Duration) -> anyhow::Result<Reloader> {
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                for path in event.paths {
                    let _ = events.send(Msg::Changed(path));
                }
            }
        })?;
        let dirs: BTreeSet<PathBuf> = specs
            .iter()
            .filter_map(|s| s.file.as_deref())
            .map(|f| f.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf())
            .collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create policy folder {}: {e}", dir.display()))?;
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        let thread = std::thread::Builder::new()
            .name("flockd-policy-reload".into())
            .spawn(move || run(runtime, specs, rx, debounce))?;
        Ok(Reloader { _watcher: watcher, stop: tx, thread: Some(thread) })
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        let _ = self.stop.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(runtime: Arc<PolicyRuntime>, specs: Vec<PolicySpec>, rx: mpsc::Receiver<Msg>, debounce: Duration) {
    // Per spec: when its file last changed. A spec is reloaded once it has
    // been quiet for `debounce`.
    let mut due: HashMap<usize, Instant> = HashMap::new();
    loop {
        let timeout = due
            .values()
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(timeout) {
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Msg::Changed(path)) => {
                for (i, spec) in specs.iter().enumerate() {
                    if spec.file.as_deref().is_some_and(|f| loader::same_file(f, &path)) {
                        due.insert(i, Instant::now() + debounce);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let ready: Vec<usize> = due.iter().filter(|(_, t)| **t <= now).map(|(i, _)| *i).collect();
        for i in ready {
            due.remove(&i);
            reload(&runtime, &specs, i);
        }
    }
}

/// Brings spec `index` up to date with its file and swaps the chain if it
/// changed. Public for callers that want a synchronous reload (tests, SIGHUP).
pub fn reload(runtime: &PolicyRuntime, specs: &[PolicySpec], index: usize) {
    let spec = &specs[index];
    let current = runtime.chain();
    let existing = current.policies.iter().find(|p| p.name == spec.name);
    let event = |origin: Origin, outcome: ReloadOutcome, digest: Option<String>, error: Option<String>| ReloadEvent {
        at: SystemTime::now(),
        policy: spec.name.clone(),
        origin,
        outcome,
        digest,
        error,
    };

    let file_present = spec.file.as_deref().is_some_and(Path::exists);
    if !file_present && spec.builtin.is_none() {
        if existing.is_some() {
            swap_entry(runtime, specs, &current, &spec.name, None);
            tracing::warn!(policy = %spec.name, "policy file removed: the chain goes on without it");
            runtime.record_event(event(origin_of(spec), ReloadOutcome::Unloaded, None, None));
        }
        return;
    }
    let (origin, bytes) = match spec.resolve() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(policy = %spec.name, "reload failed, last good version keeps serving: {e}");
            runtime.record_event(event(origin_of(spec), ReloadOutcome::Rejected, None, Some(e)));
            return;
        }
    };
    let digest = loader::digest(&bytes);
    if existing.is_some_and(|p| p.digest == digest) {
        runtime.record_event(event(origin, ReloadOutcome::Unchanged, Some(digest), None));
        return;
    }
    let candidate = loader::load(runtime.engine(), spec, origin.clone(), &bytes)
        .map_err(|e| e.to_string())
        .and_then(|p| loader::smoke_test(runtime, &p).map(|()| p));
    match candidate {
        Ok(policy) => {
            let outcome = if matches!(origin, Origin::Builtin(_)) {
                ReloadOutcome::RevertedToBuiltin
            } else {
                ReloadOutcome::Loaded
            };
            swap_entry(runtime, specs, &current, &spec.name, Some(Arc::new(policy)));
            tracing::info!(policy = %spec.name, version = %digest, from = %origin, "policy {outcome}");
            runtime.record_event(event(origin, outcome, Some(digest), None));
        }
        Err(e) => {
            tracing::error!(policy = %spec.name, from = %origin, "new version rejected, last good version keeps serving: {e}");
            runtime.record_event(event(origin, ReloadOutcome::Rejected, Some(digest), Some(e)));
        }
    }
}

fn origin_of(spec: &PolicySpec) -> Origin {
    match &spec.file {
        Some(f) => Origin::File(f.clone()),
        None => Origin::Builtin(spec.builtin.clone().unwrap_or_default()),
    }
}

/// Rebuilds the chain in spec order with `name` replaced (or removed).
fn swap_entry(
    runtime: &PolicyRuntime,
    specs: &[PolicySpec],
    current: &Chain,
    name: &str,
    replacement: Option<Arc<crate::chain::LoadedPolicy>>,
) {
    let mut policies = Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.name == name {
            policies.extend(replacement.clone());
        } else if let Some(p) = current.policies.iter().find(|p| p.name == spec.name) {
            policies.push(p.clone());
        }
    }
    runtime.swap(Chain { policies });
}
