//! The compatible server's state: queues, tasks, projects (persisted) and
//! workers (in memory only: an agent re-registers within one report period).
//!
//! Tasks and projects are kept as JSON objects so whatever field a client
//! writes (`script`, `hyperparams`, `runtime`, …) reads back unchanged
//! without this server modelling ClearML's whole task schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub type Object = Map<String, Value>;

/// The identity every token and record carries: this server has one user.
pub const COMPANY_ID: &str = "flockd";
pub const COMPANY_NAME: &str = "flockd";
pub const USER_ID: &str = "flockd-user";
pub const USER_NAME: &str = "flockd";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueEntry {
    pub task: String,
    /// Unix ms.
    pub added: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueRecord {
    pub id: String,
    pub name: String,
    pub created: i64,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub system_tags: Vec<String>,
    #[serde(default)]
    pub entries: Vec<QueueEntry>,
}

impl QueueRecord {
    /// Queues tagged `k8s-glue` are hidden from listings unless asked for.
    pub fn is_hidden(&self) -> bool {
        self.tags.iter().chain(&self.system_tags).any(|t| t == "k8s-glue")
    }

    pub fn to_json(&self) -> Value {
        let entries: Vec<Value> = self.entries.iter().map(|e| json!({"task": e.task, "added": iso(e.added)})).collect();
        json!({
            "id": self.id, "name": self.name, "display_name": self.name,
            "created": iso(self.created), "company": COMPANY_ID, "user": USER_ID,
            "tags": self.tags, "system_tags": self.system_tags,
            "entries": entries, "metadata": {},
            "last_update": iso(self.created),
        })
    }
}

#[derive(Clone, Debug)]
pub struct WorkerRecord {
    pub id: String,
    pub ip: String,
    /// Queue ids it serves.
    pub queues: Vec<String>,
    pub task: Option<String>,
    pub queue: Option<String>,
    pub register_time: i64,
    pub last_activity: i64,
    pub last_report: Option<i64>,
    /// Seconds of silence after which it is dropped.
    pub timeout_secs: u64,
    pub tags: Vec<String>,
    pub system_tags: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Store {
    #[serde(default)]
    pub queues: BTreeMap<String, QueueRecord>,
    #[serde(default)]
    pub tasks: BTreeMap<String, Object>,
    #[serde(default)]
    pub projects: BTreeMap<String, Object>,
    #[serde(skip)]
    pub workers: BTreeMap<String, WorkerRecord>,
}

impl Store {
    pub fn queue_by_name(&self, name: &str) -> Option<&QueueRecord> {
        self.queues.values().find(|q| q.name == name)
    }

    /// The queue id if a queue has it. Ids only, as on the real server: the
    /// SDK probes `queues.get_by_id` with a *name* and must get 701 back to
    /// go on to look the name up.
    pub fn resolve_queue_id(&self, id: &str) -> Option<String> {
        self.queues.contains_key(id).then(|| id.to_string())
    }

    /// Removes a task from every queue it sits in; true if it was in one.
    pub fn remove_from_queues(&mut self, task_id: &str) -> bool {
        let mut removed = false;
        for queue in self.queues.values_mut() {
            let before = queue.entries.len();
            queue.entries.retain(|e| e.task != task_id);
            removed |= queue.entries.len() != before;
        }
        removed
    }

    /// Drops workers silent for longer than their timeout.
    pub fn sweep_workers(&mut self, now: i64) {
        self.workers.retain(|_, w| now.saturating_sub(w.last_activity) <= secs_to_ms(w.timeout_secs));
    }

    pub fn load(path: &Path) -> anyhow::Result<Store> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "state file {} is not valid flockd ClearML state ({e}); move it away to start empty",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read state file {}: {e}", path.display())),
        }
    }
}

/// Writes `bytes` to `path` atomically: a reader (or a crash) sees the old
/// file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        path.with_file_name(name)
    };
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Seconds as ms, saturating: a longer span than i64 ms can hold is forever.
pub(crate) fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// ClearML's timestamp format: `2025-01-01T00:00:00.000+00:00`.
pub fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// A fresh 32-hex id, the shape ClearML ids have.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
