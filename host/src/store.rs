//! The on-disk store: host state and the decision journal in one redb file,
//! so a restart keeps idle timers, failure history and the "why" of every
//! past decision. The state is kept as records (one per launch intent, idle
//! timer, remembered scope, …) and written record by record; each write is
//! one redb commit, atomic, so a crash leaves the previous write whole.
//! redb is synchronous: every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use flockd_core::journal::TickRecord;
use flockd_core::store::{HostState, JournalQuery, RecordKey, RecordKind, Records, StateChange, StateStore};
use redb::{Database, ReadableTable, TableDefinition};

/// Schemas 1 and 2: the host state as one JSON value under [`STATE_KEY`].
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// Schema 3: one row per record, keyed by (kind, key).
const RECORDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("records");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// Schema 3: (instance, tick) for every instance a tick launched or acted
/// on, so a query by instance reads only its ticks.
const JOURNAL_BY_INSTANCE: TableDefinition<(&str, u64), ()> = TableDefinition::new("journal-by-instance");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STATE_KEY: &str = "host";
const SCHEMA_KEY: &str = "schema-version";
/// The journal's size in bytes and in records (schema 3), kept with each
/// write so pruning needs no scan.
const JOURNAL_BYTES_KEY: &str = "journal-bytes";
const JOURNAL_RECORDS_KEY: &str = "journal-records";

/// The layout this code writes and reads.
/// 1: release 0.1, no `meta` table: host state as one JSON value, the
///    journal as JSON values keyed by tick.
/// 2: the same tables and a `meta` table; host state gained `own_keys`,
///    `own_keys_complete` and `last_prices`, all defaulted when read from 1
///    (a store from 1 adopts the keys of its first listing).
/// 3: the host state as records in a `records` table, written one by one;
///    the blob of 1 and 2 is split into records when the store is opened.
///    The journal is indexed by instance and bounded in bytes as well as in
///    records; both are built from the journal on the upgrade.
/// An upgrade is done in place when the store is opened; a store written by
/// a newer flockd is refused rather than half-read.
pub const SCHEMA_VERSION: u64 = 3;

#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    limits: JournalLimits,
}

pub use flockd_core::store::JournalLimits;

/// Why a store could not be opened, where a caller decides by it: one held
/// by a running flockd can be asked through its API instead.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error(
        "cannot open {}: it is already open (another flockd with the same state-dir is running; give each its own)",
        path.display()
    )]
    AlreadyOpen { path: std::path::PathBuf },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl RedbStore {
    pub fn open(dir: &Path, limits: JournalLimits) -> Result<Self, StoreOpenError> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create state dir {}: {e}", dir.display()))?;
        let path = dir.join("flockd.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreOpenError::AlreadyOpen { path: path.clone() },
            other => StoreOpenError::Other(anyhow::anyhow!(
                "cannot open {}: {other} (the file is damaged or not a flockd store: move it away to start afresh)",
                path.display()
            )),
        })?;
        Ok(Self::prepare(db, &path, limits)?)
    }

    /// Brings an opened file to this schema (upgrading it in place).
    fn prepare(db: Database, path: &Path, limits: JournalLimits) -> anyhow::Result<Self> {
        let tx = db.begin_write()?;
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
        let mut records = tx.open_table(RECORDS)?;
        if found < 3 {
            // The one-blob state of schemas 1 and 2, split into records.
            let blob = tx.open_table(STATE)?.remove(STATE_KEY)?.map(|v| v.value().to_vec());
            if let Some(blob) = blob {
                let state: HostState = serde_json::from_slice(&blob)
                    .map_err(|e| anyhow::anyhow!("{}: the host state does not decode: {e}", path.display()))?;
                for record in state.records() {
                    if let StateChange::Put(k, v) = record {
                        records.insert((k.kind.as_str(), k.key.as_str()), v.as_str())?;
                    }
                }
            }
            tx.delete_table(STATE)?;
            index_journal(&tx)?;
        }
        drop(records);
        tx.commit()?;
        if found < SCHEMA_VERSION {
            tracing::info!(path = %path.display(), "store upgraded in place from schema {found} to {SCHEMA_VERSION}");
        }
        Ok(RedbStore { db: Arc::new(db), limits })
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

    /// Runs `f` over this store on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RedbStore) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store)).await?
    }

    fn load_now(&self) -> anyhow::Result<Records> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RECORDS)?;
        let mut out = Records::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (kind, key) = k.value();
            let Some(kind) = RecordKind::parse(kind) else {
                anyhow::bail!(
                    "the store holds state records of kind {kind:?}, which this flockd does not know: it was written by a newer flockd; run that version"
                );
            };
            out.insert(RecordKey { kind, key: key.to_string() }, v.value().to_string());
        }
        Ok(out)
    }

    fn write_now(&self, writes: &[StateChange]) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RECORDS)?;
            for w in writes {
                let k = w.key();
                match w {
                    StateChange::Put(_, v) => drop(table.insert((k.kind.as_str(), k.key.as_str()), v.as_str())?),
                    StateChange::Delete(_) => drop(table.remove((k.kind.as_str(), k.key.as_str()))?),
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn append_now(&self, record: &TickRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(record)?;
        let tx = self.db.begin_write()?;
        {
            let mut journal = tx.open_table(JOURNAL)?;
            let mut index = tx.open_table(JOURNAL_BY_INSTANCE)?;
            let mut meta = tx.open_table(META)?;
            let mut total = meta.get(JOURNAL_BYTES_KEY)?.map_or(0, |v| v.value());
            let mut count = meta.get(JOURNAL_RECORDS_KEY)?.map_or(0, |v| v.value());
            // A tick replayed after a lost save replaces its record.
            match journal.insert(record.tick, bytes.as_slice())? {
                Some(old) => total = total.saturating_sub(old.value().len() as u64),
                None => count += 1,
            }
            total += bytes.len() as u64;
            for instance in record.instances() {
                index.insert((instance, record.tick), ())?;
            }
            while count > 1 && (count > self.limits.max_records || total > self.limits.max_bytes) {
                let Some((tick, old)) = journal.pop_first()? else { break };
                let (tick, old) = (tick.value(), old.value().to_vec());
                count -= 1;
                total = total.saturating_sub(old.len() as u64);
                // An undecodable record leaves its index entries behind; a
                // query skips ticks that are gone.
                if let Ok(old) = serde_json::from_slice::<TickRecord>(&old) {
                    for instance in old.instances() {
                        index.remove((instance, tick))?;
                    }
                }
            }
            meta.insert(JOURNAL_BYTES_KEY, total)?;
            meta.insert(JOURNAL_RECORDS_KEY, count)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn journal_now(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
        let tx = self.db.begin_read()?;
        let journal = tx.open_table(JOURNAL)?;
        let limit = if query.limit == 0 { usize::MAX } else { query.limit };
        // One record that no longer decodes must not hide the rest.
        let decode = |tick: u64, bytes: &[u8]| match serde_json::from_slice::<TickRecord>(bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(tick, "skipping a journal record that does not decode: {e}");
                None
            }
        };
        let mut out = Vec::new();
        match query.instance.as_deref() {
            None => {
                for entry in journal.iter()?.rev() {
                    let (tick, v) = entry?;
                    out.extend(decode(tick.value(), v.value()));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Some(instance) => {
                let index = tx.open_table(JOURNAL_BY_INSTANCE)?;
                for entry in index.range((instance, 0)..=(instance, u64::MAX))?.rev() {
                    let tick = entry?.0.value().1;
                    let Some(v) = journal.get(tick)? else { continue };
                    out.extend(decode(tick, v.value()));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Builds the instance index and the size counters from the journal (the
/// upgrade to schema 3).
fn index_journal(tx: &redb::WriteTransaction) -> anyhow::Result<()> {
    let journal = tx.open_table(JOURNAL)?;
    let mut index = tx.open_table(JOURNAL_BY_INSTANCE)?;
    let (mut total, mut count) = (0u64, 0u64);
    for entry in journal.iter()? {
        let (tick, v) = entry?;
        total += v.value().len() as u64;
        count += 1;
        if let Ok(record) = serde_json::from_slice::<TickRecord>(v.value()) {
            for instance in record.instances() {
                index.insert((instance, tick.value()), ())?;
            }
        }
    }
    let mut meta = tx.open_table(META)?;
    meta.insert(JOURNAL_BYTES_KEY, total)?;
    meta.insert(JOURNAL_RECORDS_KEY, count)?;
    Ok(())
}

#[async_trait]
impl StateStore for RedbStore {
    async fn load(&self) -> anyhow::Result<Records> {
        self.blocking(|s| s.load_now()).await
    }

    async fn write(&self, writes: &[StateChange]) -> anyhow::Result<()> {
        let writes = writes.to_vec();
        self.blocking(move |s| s.write_now(&writes)).await
    }

    async fn append(&self, record: &TickRecord) -> anyhow::Result<()> {
        let record = record.clone();
        self.blocking(move |s| s.append_now(&record)).await
    }

    async fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
        let query = query.clone();
        self.blocking(move |s| s.journal_now(&query)).await
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
            trims: vec![],
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
            fleet: None,
            epoch: None,
            micros: 1,
        }
    }

    #[tokio::test]
    async fn the_redb_store_keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let store = RedbStore::open(&path, JournalLimits::default()).unwrap();
        flockd_core::testing::store_contract::run(store, |s| {
            drop(s);
            RedbStore::open(&path, JournalLimits::default()).unwrap()
        })
        .await;
    }

    #[tokio::test]
    async fn the_redb_store_keeps_what_the_controller_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        flockd_core::testing::store_behaviour::run(async || {
            Arc::new(RedbStore::open(&path, JournalLimits::default()).unwrap()) as Arc<dyn StateStore>
        })
        .await;
    }

    #[tokio::test]
    async fn the_journal_survives_reopening_and_prunes_old_ticks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path(), JournalLimits { max_records: 3, ..Default::default() }).unwrap();
            for t in 1..=5 {
                store.append(&record(t, if t % 2 == 0 { "i-even" } else { "i-odd" })).await.unwrap();
            }
        }
        let store = RedbStore::open(dir.path(), JournalLimits { max_records: 3, ..Default::default() }).unwrap();
        let all = store.journal(&JournalQuery { limit: 0, instance: None }).await.unwrap();
        assert_eq!(all.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![5, 4, 3], "newest first, pruned to 3");
        let odd = store.journal(&JournalQuery { limit: 10, instance: Some("i-odd".into()) }).await.unwrap();
        assert_eq!(odd.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![5, 3]);
    }

    /// A store written by release 0.1 (`tests/fixtures/stores/v0.1/flockd.redb`,
    /// made with that release's code) opens, keeps every unanswered launch,
    /// failure and idle timer, and is marked as the current schema.
    /// Guard: the journal is bounded in bytes, not only in records (issue
    /// 10, hole 11): ticks with long records push the oldest out, and the
    /// instance index forgets what was pruned.
    #[tokio::test]
    async fn the_journal_is_bounded_in_bytes_and_indexed_by_instance() {
        let dir = tempfile::tempdir().unwrap();
        let limits = JournalLimits { max_records: 1_000, max_bytes: 64 * 1024 };
        let store = RedbStore::open(dir.path(), limits).unwrap();
        for t in 1..=50 {
            let mut r = record(t, if t <= 25 { "i-early" } else { "i-late" });
            r.clamps = vec!["x".repeat(10_000)];
            store.append(&r).await.unwrap();
        }
        let kept = store.journal(&JournalQuery { limit: 0, instance: None }).await.unwrap();
        let bytes: usize = kept.iter().map(|r| serde_json::to_vec(r).unwrap().len()).sum();
        assert!(bytes <= 64 * 1024, "{} records, {bytes} bytes kept", kept.len());
        assert_eq!(kept.first().map(|r| r.tick), Some(50), "the newest stays");
        assert_eq!(kept.len(), 6, "as many of the newest as fit");
        let early = store.journal(&JournalQuery { limit: 0, instance: Some("i-early".into()) }).await.unwrap();
        assert!(early.is_empty(), "pruned ticks are gone from the index too");
        let late = store.journal(&JournalQuery { limit: 2, instance: Some("i-late".into()) }).await.unwrap();
        assert_eq!(late.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![50, 49]);
        // The counters survive a reopen: the bound holds on.
        drop(store);
        let store = RedbStore::open(dir.path(), limits).unwrap();
        store.append(&record(51, "i-late")).await.unwrap();
        let kept = store.journal(&JournalQuery { limit: 0, instance: None }).await.unwrap();
        assert_eq!(kept.len(), 7, "one small record more fits");
    }

    #[tokio::test]
    async fn a_store_written_by_release_0_1_is_upgraded_in_place_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stores/v0.1/flockd.redb");
        std::fs::copy(fixture, dir.path().join("flockd.redb")).unwrap();
        let store = RedbStore::open(dir.path(), JournalLimits::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let state = flockd_core::store::load_state(&store).await.unwrap();
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
            let store = RedbStore::open(dir.path(), JournalLimits::default()).unwrap();
            let err = match RedbStore::open(dir.path(), JournalLimits::default()) {
                Ok(_) => panic!("a store open twice"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains("already open") && err.contains("another flockd"), "{err}");
            store.set_schema_version(SCHEMA_VERSION + 1).unwrap();
        }
        let err = match RedbStore::open(dir.path(), JournalLimits::default()) {
            Ok(_) => panic!("a newer schema must be refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("newer flockd"), "{err}");
    }

    #[tokio::test]
    async fn an_undecodable_journal_record_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), JournalLimits::default()).unwrap();
        store.append(&record(1, "i-a")).await.unwrap();
        {
            let tx = store.db.begin_write().unwrap();
            tx.open_table(JOURNAL).unwrap().insert(2, b"{not a record".as_slice()).unwrap();
            tx.commit().unwrap();
        }
        store.append(&record(3, "i-a")).await.unwrap();
        let all = store.journal(&JournalQuery { limit: 0, instance: None }).await.unwrap();
        assert_eq!(all.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![3, 1]);
    }
}
