//! The on-disk store: host state and the decision journal in one redb file,
//! so a restart keeps idle timers, failure history and the "why" of every
//! past decision. Each tick commits once; redb's commits are atomic, so a
//! crash leaves the previous tick's state, never half of one.

use std::path::Path;

use flockd_core::journal::TickRecord;
use flockd_core::store::{HostState, JournalQuery, StateStore};
use redb::{Database, ReadableTable, TableDefinition};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STATE_KEY: &str = "host";
const SCHEMA_KEY: &str = "schema-version";

/// The layout this code writes and reads.
/// 1: release 0.1, no `meta` table: host state as one JSON value, the
///    journal as JSON values keyed by tick.
/// 2: the same tables and a `meta` table; host state gained `own_keys`,
///    `own_keys_complete` and `last_prices`, all defaulted when read from 1
///    (a store from 1 adopts the keys of its first listing).
/// An upgrade is done in place when the store is opened; a store written by
/// a newer flockd is refused rather than half-read.
pub const SCHEMA_VERSION: u64 = 2;

pub struct RedbStore {
    db: Database,
    /// Journal entries kept; older ones are pruned as new ones arrive.
    keep: u64,
}

impl RedbStore {
    pub fn open(dir: &Path, keep: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create state dir {}: {e}", dir.display()))?;
        let path = dir.join("flockd.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "cannot open {}: it is already open (another flockd with the same state-dir is running; give each its own)",
                path.display()
            ),
            other => anyhow::anyhow!(
                "cannot open {}: {other} (the file is damaged or not a flockd store: move it away to start afresh)",
                path.display()
            ),
        })?;
        let tx = db.begin_write()?;
        tx.open_table(STATE)?;
        tx.open_table(JOURNAL)?;
        let found = {
            let mut meta = tx.open_table(META)?;
            // No version: written by release 0.1, which had no meta table.
            let found = meta.get(SCHEMA_KEY)?.map_or(1, |v| v.value());
            anyhow::ensure!(
                found <= SCHEMA_VERSION,
                "{} was written by a newer flockd (store schema {found}; this flockd reads up to {SCHEMA_VERSION}): run that version, or move the file away to start afresh (machines are adopted from the cloud again, but unanswered launches and failure history are lost)",
                path.display()
            );
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
            found
        };
        tx.commit()?;
        if found < SCHEMA_VERSION {
            tracing::info!(path = %path.display(), "store upgraded in place from schema {found} to {SCHEMA_VERSION}");
        }
        Ok(RedbStore { db, keep: keep.max(1) })
    }

    pub fn schema_version(&self) -> anyhow::Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(META)?.get(SCHEMA_KEY)?.map_or(1, |v| v.value()))
    }

    #[cfg(test)]
    fn set_schema_version(&self, version: u64) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(SCHEMA_KEY, version)?;
        tx.commit()?;
        Ok(())
    }
}

impl StateStore for RedbStore {
    fn load(&self) -> anyhow::Result<HostState> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STATE)?;
        match table.get(STATE_KEY)? {
            Some(v) => Ok(serde_json::from_slice(v.value())?),
            None => Ok(HostState::default()),
        }
    }

    fn save(&self, state: &HostState) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(state)?;
        let tx = self.db.begin_write()?;
        tx.open_table(STATE)?.insert(STATE_KEY, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    fn append(&self, record: &TickRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(record)?;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(JOURNAL)?;
            table.insert(record.tick, bytes.as_slice())?;
            if record.tick > self.keep {
                let cutoff = record.tick - self.keep;
                table.retain_in(..=cutoff, |_, _| false)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOURNAL)?;
        let limit = if query.limit == 0 { usize::MAX } else { query.limit };
        let mut out = Vec::new();
        for entry in table.iter()?.rev() {
            let (tick, v) = entry?;
            // One record that no longer decodes must not hide the rest.
            let record: TickRecord = match serde_json::from_slice(v.value()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(tick = tick.value(), "skipping a journal record that does not decode: {e}");
                    continue;
                }
            };
            if query.instance.as_deref().is_none_or(|i| record.mentions(i)) {
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flockd_core::journal::{Action, Outcome};
    use flockd_core::{Plan, TerminationCause};

    fn record(tick: u64, instance: &str) -> TickRecord {
        TickRecord {
            tick,
            at: tick * 1000,
            snapshot_digest: Some("d".into()),
            observation_error: None,
            queues: vec![],
            plan: Plan::default(),
            policies: vec![],
            clamps: vec![],
            actions: vec![Action::Terminate {
                instance: instance.into(),
                resource: "r".into(),
                cause: TerminationCause::Idle,
                reason: "idle 600 s".into(),
                outcome: Outcome::Done,
            }],
            dry_run: false,
            required_failed: vec![],
            foreign_machines: vec![],
            unregistered: vec![],
            micros: 1,
        }
    }

    #[test]
    fn state_and_journal_survive_reopening_and_prune_old_ticks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path(), 3).unwrap();
            let mut state = HostState { tick: 7, ..Default::default() };
            state.idle_since.insert("i-1".into(), 42);
            store.save(&state).unwrap();
            for t in 1..=5 {
                store.append(&record(t, if t % 2 == 0 { "i-even" } else { "i-odd" })).unwrap();
            }
        }
        let store = RedbStore::open(dir.path(), 3).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.tick, 7);
        assert_eq!(state.idle_since.get("i-1"), Some(&42));
        let all = store.journal(&JournalQuery { limit: 0, instance: None }).unwrap();
        assert_eq!(all.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![5, 4, 3], "newest first, pruned to 3");
        let odd = store.journal(&JournalQuery { limit: 10, instance: Some("i-odd".into()) }).unwrap();
        assert_eq!(odd.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![5, 3]);
    }

    /// A store written by release 0.1 (`tests/fixtures/stores/v0.1/flockd.redb`,
    /// made with that release's code) opens, keeps every unanswered launch,
    /// failure and idle timer, and is marked as the current schema.
    #[test]
    fn a_store_written_by_release_0_1_is_upgraded_in_place_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stores/v0.1/flockd.redb");
        std::fs::copy(fixture, dir.path().join("flockd.redb")).unwrap();
        let store = RedbStore::open(dir.path(), 100).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let state = store.load().unwrap();
        assert_eq!(state.tick, 41);
        assert_eq!(state.launching.len(), 2, "unanswered launches lost on upgrade: {state:?}");
        assert!(state.launching.values().all(|i| i.resource == "gpu-spot"));
        assert_eq!(state.failures.len(), 1);
        assert_eq!(state.idle_since.get("i-0aaa"), Some(&1_767_225_000_000));
        assert_eq!(state.recent_launches.len(), 1);
        assert_eq!(state.worker_lost_since.len(), 1);
        // New records start empty and are filled by the first listing.
        assert!(!state.own_keys_complete && state.own_keys.is_empty());
    }

    #[test]
    fn a_store_from_a_newer_flockd_is_refused_and_an_open_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path(), 10).unwrap();
            let err = match RedbStore::open(dir.path(), 10) {
                Ok(_) => panic!("a store open twice"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains("already open") && err.contains("another flockd"), "{err}");
            store.set_schema_version(SCHEMA_VERSION + 1).unwrap();
        }
        let err = match RedbStore::open(dir.path(), 10) {
            Ok(_) => panic!("a newer schema must be refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("newer flockd"), "{err}");
    }

    #[test]
    fn an_undecodable_journal_record_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), 10).unwrap();
        store.append(&record(1, "i-a")).unwrap();
        {
            let tx = store.db.begin_write().unwrap();
            tx.open_table(JOURNAL).unwrap().insert(2, b"{not a record".as_slice()).unwrap();
            tx.commit().unwrap();
        }
        store.append(&record(3, "i-a")).unwrap();
        let all = store.journal(&JournalQuery { limit: 0, instance: None }).unwrap();
        assert_eq!(all.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![3, 1]);
    }
}
