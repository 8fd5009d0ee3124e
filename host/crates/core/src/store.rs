//! Host-owned state that must survive a restart (idle timers, failure
//! history, launches not yet visible in the cloud) and the decision journal.
//! The cloud stays the source of truth for *what exists*; this is only what
//! the cloud cannot tell us.
//!
//! A store keeps the state as records (one per launch intent, idle timer,
//! remembered scope, …), and the controller writes only the records that
//! changed: the intent written before a launch is that intent alone, so a
//! database store can write it on its own, conditioned on a leader's epoch,
//! and a tick with 10,000 machines does not rewrite 10,000 timers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::journal::TickRecord;
use crate::model::{Failure, Millis};
use crate::provider::ProviderScope;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// Ticks run so far; part of every idempotency key (with the tick's
    /// time, so a tick re-run after a crash that lost its save still gets
    /// new keys).
    pub tick: u64,
    /// Instance id → since when its worker has been idle.
    pub idle_since: BTreeMap<String, Millis>,
    /// Instances whose worker has registered at least once.
    pub registered: BTreeSet<String>,
    /// Resource → when one of its instances last registered its worker.
    pub last_boot_ok: BTreeMap<String, Millis>,
    /// Launch and boot failures, oldest first, pruned to the retention window.
    pub failures: Vec<Failure>,
    /// Launched by us but maybe not yet listed by the cloud (its listing is
    /// eventually consistent): counted as booting until it shows up.
    pub recent_launches: BTreeMap<String, RecentLaunch>,
    /// Instance id → when we asked the cloud to terminate it.
    pub terminating: BTreeMap<String, Millis>,
    /// Instance id → since when the worker it had registered is missing
    /// from the queue source (agent restarting, heartbeat lapsed, agent
    /// dead). Such an instance counts as booting again from that moment,
    /// so spin-up-timeout gives it a full timeout to come back instead of
    /// reading its launch time and killing it at once.
    #[serde(default)]
    pub worker_lost_since: BTreeMap<String, Millis>,
    /// Launch key → a launch asked of the cloud whose answer has not come.
    /// Saved before the call, so a crash or a lost answer still counts the
    /// machine that may exist against the caps until the cloud lists a
    /// machine with that key or the launch-visibility grace passes.
    #[serde(default)]
    pub launching: BTreeMap<String, LaunchIntent>,
    /// Launch key → when this store wrote it (with its intent, before the
    /// cloud call). A listed machine carrying any other key was launched by
    /// another writer on the same cluster. Pruned a day after the key was
    /// last listed or intended.
    #[serde(default)]
    pub own_keys: BTreeMap<String, Millis>,
    /// Whether `own_keys` is complete. A new store (or one written before
    /// keys were kept) adopts every key of its first listing.
    #[serde(default)]
    pub own_keys_complete: bool,
    /// Resource → its price per hour when it was last configured. A machine
    /// of a resource since dropped from the config bills at this price
    /// against the cost cap (renaming a resource must not open room).
    #[serde(default)]
    pub last_prices: BTreeMap<String, f64>,
    /// Scope key → every provider scope flockd has launched into. Each one
    /// the config no longer names is still listed, until it is empty.
    #[serde(default)]
    pub scopes: BTreeMap<String, RememberedScope>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RememberedScope {
    /// The `[provider.NAME]` that last launched into it.
    pub provider: String,
    pub scope: ProviderScope,
    /// When flockd first launched into it.
    pub since: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchIntent {
    pub resource: String,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentLaunch {
    pub resource: String,
    pub at: Millis,
    pub key: String,
}

/// Which journal entries to return, newest first.
#[derive(Clone, Debug, Default)]
pub struct JournalQuery {
    pub limit: usize,
    /// Only ticks that acted on (or launched) this instance.
    pub instance: Option<String>,
}

/// What kind of thing a record holds: one per field of [`HostState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    Tick,
    IdleSince,
    Registered,
    LastBootOk,
    /// The whole failure history, one record (short: pruned to the
    /// retention window).
    Failures,
    RecentLaunch,
    Terminating,
    WorkerLostSince,
    Launching,
    OwnKey,
    OwnKeysComplete,
    LastPrice,
    Scope,
}

impl RecordKind {
    pub const ALL: [RecordKind; 13] = [
        RecordKind::Tick,
        RecordKind::IdleSince,
        RecordKind::Registered,
        RecordKind::LastBootOk,
        RecordKind::Failures,
        RecordKind::RecentLaunch,
        RecordKind::Terminating,
        RecordKind::WorkerLostSince,
        RecordKind::Launching,
        RecordKind::OwnKey,
        RecordKind::OwnKeysComplete,
        RecordKind::LastPrice,
        RecordKind::Scope,
    ];

    /// Its name in a store (stable: stores keep it).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Tick => "tick",
            RecordKind::IdleSince => "idle-since",
            RecordKind::Registered => "registered",
            RecordKind::LastBootOk => "last-boot-ok",
            RecordKind::Failures => "failures",
            RecordKind::RecentLaunch => "recent-launch",
            RecordKind::Terminating => "terminating",
            RecordKind::WorkerLostSince => "worker-lost-since",
            RecordKind::Launching => "launching",
            RecordKind::OwnKey => "own-key",
            RecordKind::OwnKeysComplete => "own-keys-complete",
            RecordKind::LastPrice => "last-price",
            RecordKind::Scope => "scope",
        }
    }

    pub fn parse(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One record's address: its kind and, for a map, its key ("" otherwise).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub kind: RecordKind,
    pub key: String,
}

/// The state as records: key → JSON value.
pub type Records = BTreeMap<RecordKey, String>;

/// One write of a record.
#[derive(Clone, Debug, PartialEq)]
pub enum StateChange {
    Put(RecordKey, String),
    Delete(RecordKey),
}

impl StateChange {
    pub fn key(&self) -> &RecordKey {
        match self {
            StateChange::Put(k, _) | StateChange::Delete(k) => k,
        }
    }
}

/// A record a store holds that this flockd cannot read back.
#[derive(Debug, thiserror::Error)]
#[error("state record {kind}/{key} does not decode: {error}")]
pub struct RecordError {
    pub kind: String,
    pub key: String,
    pub error: String,
}

impl HostState {
    /// Every record of this state.
    pub fn records(&self) -> Records {
        fn json<T: Serialize + ?Sized>(v: &T) -> String {
            serde_json::to_string(v).expect("host state encodes")
        }
        let mut out = Records::new();
        let mut put = |kind, key: &str, value: String| {
            out.insert(RecordKey { kind, key: key.to_string() }, value);
        };
        put(RecordKind::Tick, "", json(&self.tick));
        put(RecordKind::OwnKeysComplete, "", json(&self.own_keys_complete));
        put(RecordKind::Failures, "", json(&self.failures));
        self.idle_since.iter().for_each(|(k, v)| put(RecordKind::IdleSince, k, json(v)));
        self.registered.iter().for_each(|k| put(RecordKind::Registered, k, json(&true)));
        self.last_boot_ok.iter().for_each(|(k, v)| put(RecordKind::LastBootOk, k, json(v)));
        self.recent_launches.iter().for_each(|(k, v)| put(RecordKind::RecentLaunch, k, json(v)));
        self.terminating.iter().for_each(|(k, v)| put(RecordKind::Terminating, k, json(v)));
        self.worker_lost_since.iter().for_each(|(k, v)| put(RecordKind::WorkerLostSince, k, json(v)));
        self.launching.iter().for_each(|(k, v)| put(RecordKind::Launching, k, json(v)));
        self.own_keys.iter().for_each(|(k, v)| put(RecordKind::OwnKey, k, json(v)));
        self.last_prices.iter().for_each(|(k, v)| put(RecordKind::LastPrice, k, json(v)));
        self.scopes.iter().for_each(|(k, v)| put(RecordKind::Scope, k, json(v)));
        out
    }

    /// The state these records make (missing ones take their defaults).
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = (&'a RecordKey, &'a String)>,
    ) -> Result<HostState, RecordError> {
        fn read<T: DeserializeOwned>(key: &RecordKey, value: &str) -> Result<T, RecordError> {
            serde_json::from_str(value).map_err(|e| RecordError {
                kind: key.kind.as_str().to_string(),
                key: key.key.clone(),
                error: e.to_string(),
            })
        }
        let mut s = HostState::default();
        for (k, v) in records {
            let key = k.key.clone();
            match k.kind {
                RecordKind::Tick => s.tick = read(k, v)?,
                RecordKind::OwnKeysComplete => s.own_keys_complete = read(k, v)?,
                RecordKind::Failures => s.failures = read(k, v)?,
                RecordKind::IdleSince => drop(s.idle_since.insert(key, read(k, v)?)),
                RecordKind::Registered => drop(s.registered.insert(key)),
                RecordKind::LastBootOk => drop(s.last_boot_ok.insert(key, read(k, v)?)),
                RecordKind::RecentLaunch => drop(s.recent_launches.insert(key, read(k, v)?)),
                RecordKind::Terminating => drop(s.terminating.insert(key, read(k, v)?)),
                RecordKind::WorkerLostSince => drop(s.worker_lost_since.insert(key, read(k, v)?)),
                RecordKind::Launching => drop(s.launching.insert(key, read(k, v)?)),
                RecordKind::OwnKey => drop(s.own_keys.insert(key, read(k, v)?)),
                RecordKind::LastPrice => drop(s.last_prices.insert(key, read(k, v)?)),
                RecordKind::Scope => drop(s.scopes.insert(key, read(k, v)?)),
            }
        }
        Ok(s)
    }
}

/// The writes that take a store from `saved` to `now`, in key order.
pub fn changes(saved: &Records, now: &Records) -> Vec<StateChange> {
    let mut out = Vec::new();
    for (k, v) in now {
        if saved.get(k) != Some(v) {
            out.push(StateChange::Put(k.clone(), v.clone()));
        }
    }
    for k in saved.keys().filter(|k| !now.contains_key(*k)) {
        out.push(StateChange::Delete(k.clone()));
    }
    out.sort_by(|a, b| a.key().cmp(b.key()));
    out
}

/// `writes` applied to `records`.
pub fn apply(records: &mut Records, writes: impl IntoIterator<Item = StateChange>) {
    for w in writes {
        match w {
            StateChange::Put(k, v) => drop(records.insert(k, v)),
            StateChange::Delete(k) => drop(records.remove(&k)),
        }
    }
}

/// Where the host keeps its state and journal. Async, and written record by
/// record: an implementation over a database writes each [`StateChange`]
/// as a row.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Every record.
    async fn load(&self) -> anyhow::Result<Records>;
    /// Applies these writes all at once, or none of them.
    async fn write(&self, changes: &[StateChange]) -> anyhow::Result<()>;
    async fn append(&self, record: &TickRecord) -> anyhow::Result<()>;
    async fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>>;
}

/// The host state a store holds.
pub async fn load_state(store: &dyn StateStore) -> anyhow::Result<HostState> {
    let records = store.load().await?;
    Ok(HostState::from_records(&records)?)
}

/// Writes `state` whole over whatever `store` holds (tests, an upgrade).
pub async fn replace_state(store: &dyn StateStore, state: &HostState) -> anyhow::Result<()> {
    let held = store.load().await?;
    store.write(&changes(&held, &state.records())).await
}

/// For tests and the simulator: everything in memory.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
    journal: Mutex<Vec<TickRecord>>,
    /// Keep at most this many journal entries (0 = all).
    pub journal_cap: usize,
}

impl MemoryStore {
    pub fn with_journal_cap(cap: usize) -> Self {
        MemoryStore { journal_cap: cap, ..Default::default() }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self) -> anyhow::Result<Records> {
        Ok(self.records.lock().unwrap().clone())
    }
    async fn write(&self, changes: &[StateChange]) -> anyhow::Result<()> {
        apply(&mut self.records.lock().unwrap(), changes.iter().cloned());
        Ok(())
    }
    async fn append(&self, record: &TickRecord) -> anyhow::Result<()> {
        let mut j = self.journal.lock().unwrap();
        j.push(record.clone());
        if self.journal_cap > 0 && j.len() > self.journal_cap {
            let excess = j.len() - self.journal_cap;
            j.drain(..excess);
        }
        Ok(())
    }
    async fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
        let j = self.journal.lock().unwrap();
        let limit = if query.limit == 0 { usize::MAX } else { query.limit };
        Ok(j.iter()
            .rev()
            .filter(|r| query.instance.as_deref().is_none_or(|i| r.mentions(i)))
            .take(limit)
            .cloned()
            .collect())
    }
}

/// What every [`StateStore`] must do, run against each one (the memory
/// store here, the redb store in the host, a database store next).
#[cfg(any(test, feature = "testing"))]
pub mod contract {
    use super::*;
    use crate::model::FailureKind;

    fn record(tick: u64) -> TickRecord {
        TickRecord { tick, at: tick * 1000, ..Default::default() }
    }

    /// A fresh store: empty. `reopen` gives the same store again (a new
    /// process on the same file or database).
    pub async fn run<S: StateStore>(store: S, reopen: impl FnOnce(S) -> S) {
        assert!(store.load().await.unwrap().is_empty(), "a fresh store holds nothing");
        let mut state = HostState { tick: 7, own_keys_complete: true, ..Default::default() };
        state.idle_since.insert("i-1".into(), 42);
        state.registered.insert("i-1".into());
        state.launching.insert("k1".into(), LaunchIntent { resource: "a".into(), at: 5 });
        state.failures.push(Failure { resource: "a".into(), kind: FailureKind::Quota, at: 3, message: "q".into() });
        replace_state(&store, &state).await.unwrap();
        assert_eq!(load_state(&store).await.unwrap(), state, "what was written is read back");

        // One record on its own: the others stay as they were.
        let mut next = state.clone();
        next.launching.insert("k2".into(), LaunchIntent { resource: "a".into(), at: 6 });
        next.idle_since.remove("i-1");
        let writes = changes(&state.records(), &next.records());
        assert_eq!(writes.len(), 2, "{writes:?}");
        store.write(&writes).await.unwrap();
        let store = reopen(store);
        assert_eq!(load_state(&store).await.unwrap(), next, "kept across a reopen");

        for t in 1..=5 {
            store.append(&record(t)).await.unwrap();
        }
        let newest = store.journal(&JournalQuery { limit: 2, instance: None }).await.unwrap();
        assert_eq!(newest.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![5, 4], "newest first");
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        run(MemoryStore::default(), |s| s).await;
    }
}
