//! Host-owned state that must survive a restart (idle timers, failure
//! history, launches not yet visible in the cloud) and the decision journal.
//! The cloud stays the source of truth for *what exists*; this is only what
//! the cloud cannot tell us.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

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

pub trait StateStore: Send + Sync {
    fn load(&self) -> anyhow::Result<HostState>;
    fn save(&self, state: &HostState) -> anyhow::Result<()>;
    fn append(&self, record: &TickRecord) -> anyhow::Result<()>;
    fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>>;
}

/// For tests and the simulator: everything in memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<HostState>,
    journal: Mutex<Vec<TickRecord>>,
    /// Keep at most this many journal entries (0 = all).
    pub journal_cap: usize,
}

impl MemoryStore {
    pub fn with_journal_cap(cap: usize) -> Self {
        MemoryStore { journal_cap: cap, ..Default::default() }
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> anyhow::Result<HostState> {
        Ok(self.state.lock().unwrap().clone())
    }
    fn save(&self, state: &HostState) -> anyhow::Result<()> {
        *self.state.lock().unwrap() = state.clone();
        Ok(())
    }
    fn append(&self, record: &TickRecord) -> anyhow::Result<()> {
        let mut j = self.journal.lock().unwrap();
        j.push(record.clone());
        if self.journal_cap > 0 && j.len() > self.journal_cap {
            let excess = j.len() - self.journal_cap;
            j.drain(..excess);
        }
        Ok(())
    }
    fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
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
