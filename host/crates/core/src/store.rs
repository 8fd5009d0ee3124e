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
    /// UTC day ("YYYY-MM-DD") → what the fleet cost that day, so far.
    #[serde(default)]
    pub spend: BTreeMap<String, crate::spend::DaySpend>,
    /// Since when an operator has paused launches (terminations go on).
    #[serde(default)]
    pub launches_paused: Option<Millis>,
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

/// How much journal is kept: the oldest records go as new ones arrive, once
/// either bound is passed (the newest record is always kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalLimits {
    pub max_records: u64,
    pub max_bytes: u64,
}

impl Default for JournalLimits {
    fn default() -> Self {
        JournalLimits { max_records: 100_000, max_bytes: 256 << 20 }
    }
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
    Spend,
    LaunchesPaused,
}

impl RecordKind {
    pub const ALL: [RecordKind; 15] = [
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
        RecordKind::Spend,
        RecordKind::LaunchesPaused,
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
            RecordKind::Spend => "spend",
            RecordKind::LaunchesPaused => "launches-paused",
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
    /// The writes that take a store holding `saved` to this state, in key
    /// order. The maps are compared entry by entry and only what differs is
    /// encoded: a quiet tick at 10,000 machines writes one record.
    pub fn changes_since(&self, saved: &HostState) -> Vec<StateChange> {
        let mut out = Vec::new();
        let o = &mut out;
        scalar_change(o, RecordKind::Tick, &saved.tick, &self.tick);
        scalar_change(o, RecordKind::OwnKeysComplete, &saved.own_keys_complete, &self.own_keys_complete);
        scalar_change(o, RecordKind::Failures, &saved.failures, &self.failures);
        scalar_change(o, RecordKind::LaunchesPaused, &saved.launches_paused, &self.launches_paused);
        map_changes(o, RecordKind::IdleSince, &saved.idle_since, &self.idle_since);
        for k in self.registered.difference(&saved.registered) {
            o.push(StateChange::Put(RecordKey { kind: RecordKind::Registered, key: k.clone() }, json(&true)));
        }
        for k in saved.registered.difference(&self.registered) {
            o.push(StateChange::Delete(RecordKey { kind: RecordKind::Registered, key: k.clone() }));
        }
        map_changes(o, RecordKind::LastBootOk, &saved.last_boot_ok, &self.last_boot_ok);
        map_changes(o, RecordKind::RecentLaunch, &saved.recent_launches, &self.recent_launches);
        map_changes(o, RecordKind::Terminating, &saved.terminating, &self.terminating);
        map_changes(o, RecordKind::WorkerLostSince, &saved.worker_lost_since, &self.worker_lost_since);
        map_changes(o, RecordKind::Launching, &saved.launching, &self.launching);
        map_changes(o, RecordKind::OwnKey, &saved.own_keys, &self.own_keys);
        map_changes(o, RecordKind::LastPrice, &saved.last_prices, &self.last_prices);
        map_changes(o, RecordKind::Scope, &saved.scopes, &self.scopes);
        map_changes(o, RecordKind::Spend, &saved.spend, &self.spend);
        out.sort_by(|a, b| a.key().cmp(b.key()));
        out
    }

    /// Every record of this state (those at their default left out: they
    /// read back as the default).
    pub fn records(&self) -> Vec<StateChange> {
        self.changes_since(&HostState::default())
    }

    /// Takes the records named by `keys` from `from`: what a store now
    /// holds after those of `from` were written.
    pub fn take_records<'a>(&mut self, from: &HostState, keys: impl IntoIterator<Item = &'a RecordKey>) {
        fn entry<V: Clone>(to: &mut BTreeMap<String, V>, from: &BTreeMap<String, V>, key: &str) {
            match from.get(key) {
                Some(v) => drop(to.insert(key.to_string(), v.clone())),
                None => drop(to.remove(key)),
            }
        }
        for k in keys {
            let key = k.key.as_str();
            match k.kind {
                RecordKind::Tick => self.tick = from.tick,
                RecordKind::OwnKeysComplete => self.own_keys_complete = from.own_keys_complete,
                RecordKind::Failures => self.failures = from.failures.clone(),
                RecordKind::LaunchesPaused => self.launches_paused = from.launches_paused,
                RecordKind::IdleSince => entry(&mut self.idle_since, &from.idle_since, key),
                RecordKind::Registered => match from.registered.contains(key) {
                    true => drop(self.registered.insert(key.to_string())),
                    false => drop(self.registered.remove(key)),
                },
                RecordKind::LastBootOk => entry(&mut self.last_boot_ok, &from.last_boot_ok, key),
                RecordKind::RecentLaunch => entry(&mut self.recent_launches, &from.recent_launches, key),
                RecordKind::Terminating => entry(&mut self.terminating, &from.terminating, key),
                RecordKind::WorkerLostSince => entry(&mut self.worker_lost_since, &from.worker_lost_since, key),
                RecordKind::Launching => entry(&mut self.launching, &from.launching, key),
                RecordKind::OwnKey => entry(&mut self.own_keys, &from.own_keys, key),
                RecordKind::LastPrice => entry(&mut self.last_prices, &from.last_prices, key),
                RecordKind::Scope => entry(&mut self.scopes, &from.scopes, key),
                RecordKind::Spend => entry(&mut self.spend, &from.spend, key),
            }
        }
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
                RecordKind::LaunchesPaused => s.launches_paused = read(k, v)?,
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
                RecordKind::Spend => drop(s.spend.insert(key, read(k, v)?)),
            }
        }
        Ok(s)
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("host state encodes")
}

fn scalar_change<V: PartialEq + Serialize>(out: &mut Vec<StateChange>, kind: RecordKind, old: &V, new: &V) {
    if old != new {
        out.push(StateChange::Put(RecordKey { kind, key: String::new() }, json(new)));
    }
}

fn map_changes<V: PartialEq + Serialize>(
    out: &mut Vec<StateChange>,
    kind: RecordKind,
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push(StateChange::Put(RecordKey { kind, key: k.clone() }, json(v)));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(StateChange::Delete(RecordKey { kind, key: k.clone() }));
    }
}

/// `writes` applied to `records`.
fn apply(records: &mut Records, writes: impl IntoIterator<Item = StateChange>) {
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
    let held = load_state(store).await?;
    store.write(&state.changes_since(&held)).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FailureKind;

    /// Guard: what `changes_since` writes, read back, is the new state, and
    /// `take_records` over those keys brings the old one to it.
    #[test]
    fn the_changes_between_two_states_carry_one_to_the_other() {
        let mut a = HostState { tick: 1, ..Default::default() };
        a.idle_since.insert("i-1".into(), 10);
        a.registered.insert("i-1".into());
        a.own_keys.insert("k0".into(), 1);
        let mut b = a.clone();
        b.tick = 2;
        b.idle_since.insert("i-1".into(), 11);
        b.registered.remove("i-1");
        b.registered.insert("i-2".into());
        b.launching.insert("k1".into(), LaunchIntent { resource: "a".into(), at: 5 });
        b.own_keys.clear();
        b.failures.push(Failure { resource: "a".into(), kind: FailureKind::Auth, at: 3, message: String::new() });
        let writes = b.changes_since(&a);
        assert_eq!(writes.len(), 7, "{writes:?}");
        let mut records = Records::new();
        apply(&mut records, a.records());
        apply(&mut records, writes.clone());
        assert_eq!(HostState::from_records(&records).unwrap(), b);
        let mut c = a.clone();
        c.take_records(&b, writes.iter().map(StateChange::key));
        assert_eq!(c, b);
        assert!(b.changes_since(&b).is_empty());
    }

    /// Guard: every field of the host state is a record kind, and a state
    /// with every field set survives records and back. A field added to
    /// `HostState` without its record would silently not be kept.
    #[test]
    fn every_field_of_the_host_state_is_kept_as_records() {
        let fields = serde_json::to_value(HostState::default()).unwrap().as_object().unwrap().len();
        assert_eq!(fields, RecordKind::ALL.len(), "a HostState field without a RecordKind (or the reverse)");
        let scope = ProviderScope { kind: "aws".into(), place: "region r".into(), settings: "{}".into() };
        let mut full = HostState { tick: 9, own_keys_complete: true, ..Default::default() };
        full.idle_since.insert("i".into(), 1);
        full.registered.insert("i".into());
        full.last_boot_ok.insert("a".into(), 2);
        full.failures.push(Failure { resource: "a".into(), kind: FailureKind::Quota, at: 3, message: "m".into() });
        full.recent_launches.insert("i".into(), RecentLaunch { resource: "a".into(), at: 4, key: "k".into() });
        full.terminating.insert("i".into(), 5);
        full.worker_lost_since.insert("i".into(), 6);
        full.launching.insert("k".into(), LaunchIntent { resource: "a".into(), at: 7 });
        full.own_keys.insert("k".into(), 8);
        full.last_prices.insert("a".into(), 1.5);
        full.scopes.insert(scope.key(), RememberedScope { provider: "aws".into(), scope, since: 0 });
        full.spend.insert("2026-01-01".into(), crate::spend::DaySpend { cost: 1.0, until: 9, rate_per_hour: 2.0 });
        full.launches_paused = Some(10);
        for (name, value) in serde_json::to_value(&full).unwrap().as_object().unwrap() {
            assert_ne!(value, &serde_json::to_value(HostState::default()).unwrap()[name], "{name} left at its default");
        }
        let writes = full.records();
        assert_eq!(writes.len(), 15, "{writes:?}");
        let mut records = Records::new();
        apply(&mut records, writes.clone());
        assert_eq!(HostState::from_records(&records).unwrap(), full);
        let mut taken = HostState::default();
        taken.take_records(&full, writes.iter().map(StateChange::key));
        assert_eq!(taken, full);
    }
}
