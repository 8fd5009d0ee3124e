//! The state directory: one JSON record per machine, written atomically
//! (temporary file, then rename) so a crash never leaves half a record.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use flockd_core::Millis;
use serde::{Deserialize, Serialize};

use crate::process::ProcessIdentity;

/// Everything needed to find a machine again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineRecord {
    pub instance_id: String,
    pub cluster: String,
    pub resource: String,
    pub launch_key: String,
    /// Unix ms.
    pub launched_at: Millis,
    /// The process group leader; its pid is also the group id (setsid).
    /// None while the machine is being started: the record is written
    /// before the process, so a crash in between leaves a record to find
    /// the process by (its `FLOCKD_INSTANCE_ID`), never an untracked process.
    pub leader: Option<ProcessIdentity>,
}

pub struct StateDir {
    dir: PathBuf,
}

const RECORD_SUFFIX: &str = ".json";

impl StateDir {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(StateDir { dir: dir.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self, instance_id: &str) -> PathBuf {
        self.dir.join(format!("{instance_id}.log"))
    }

    fn record_path(&self, instance_id: &str) -> PathBuf {
        self.dir.join(format!("{instance_id}{RECORD_SUFFIX}"))
    }

    pub fn write(&self, record: &MachineRecord) -> io::Result<()> {
        let path = self.record_path(&record.instance_id);
        let tmp = self.dir.join(format!(".{}.tmp", record.instance_id));
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        // Written, synced, renamed, and the rename synced: after a power
        // cut the record is either the old one or the new one, whole.
        let mut file = fs::File::create(&tmp)?;
        io::Write::write_all(&mut file, &json)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    pub fn read(&self, instance_id: &str) -> io::Result<Option<MachineRecord>> {
        read_record(&self.record_path(instance_id))
    }

    pub fn remove(&self, instance_id: &str) -> io::Result<()> {
        match fs::remove_file(self.record_path(instance_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record, and the names of files that are not readable records
    /// (left for a person to look at, never deleted).
    pub fn all(&self) -> io::Result<(Vec<MachineRecord>, Vec<PathBuf>)> {
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_record = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(RECORD_SUFFIX) && !n.starts_with('.'));
            if !is_record {
                continue;
            }
            match read_record(&path) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(_) => unreadable.push(path),
            }
        }
        records.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok((records, unreadable))
    }
}

fn read_record(path: &Path) -> io::Result<Option<MachineRecord>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
