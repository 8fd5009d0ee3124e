//! What every [`StateStore`] must do, run against each one (the memory
//! store here, the redb store in the host, a database store next).

use crate::journal::TickRecord;
use crate::model::{Failure, FailureKind};
use crate::store::{HostState, JournalQuery, LaunchIntent, StateStore, load_state, replace_state};

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
    let writes = next.changes_since(&state);
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

#[cfg(test)]
mod tests {
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        super::run(MemoryStore::default(), |s| s).await;
    }
}
