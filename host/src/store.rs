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
const STATE_KEY: &str = "host";

pub struct RedbStore {
    db: Database,
    /// Journal entries kept; older ones are pruned as new ones arrive.
    keep: u64,
}

impl RedbStore {
    pub fn open(dir: &Path, keep: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create state dir {}: {e}", dir.display()))?;
        let path = dir.join("flockd.redb");
        let db = Database::create(&path).map_err(|e| {
            anyhow::anyhow!("cannot open {}: {e} (is another flockd running with the same state-dir?)", path.display())
        })?;
        let tx = db.begin_write()?;
        tx.open_table(STATE)?;
        tx.open_table(JOURNAL)?;
        tx.commit()?;
        Ok(RedbStore { db, keep: keep.max(1) })
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
            let (_, v) = entry?;
            let record: TickRecord = serde_json::from_slice(v.value())?;
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
}
