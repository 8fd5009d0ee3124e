//! Against a real PostgreSQL started for the test (see `testing`).

use std::sync::Arc;
use std::time::Duration;

use flockd_core::leader::{Fenced, LeaseAnswer, LeaseBackend};
use flockd_core::store::{HostState, LaunchIntent, StateStore, load_state};

use crate::PgStore;
use crate::testing::TempPostgres;
use flockd_core::store::JournalLimits;

const LIMITS: JournalLimits = JournalLimits { max_records: 1000, max_bytes: 1 << 20 };
const LEASE: Duration = Duration::from_secs(15);

async fn store(pg: &TempPostgres, cluster: &str) -> PgStore {
    PgStore::connect(&pg.url(), cluster, LIMITS).await.unwrap()
}

/// A store that holds the lease, so its writes go through.
async fn leading(pg: &TempPostgres, cluster: &str, holder: &str) -> PgStore {
    let s = store(pg, cluster).await;
    assert!(matches!(s.acquire_or_renew(holder, LEASE).await.unwrap(), LeaseAnswer::Held { .. }));
    s
}

fn intent(resource: &str) -> LaunchIntent {
    LaunchIntent { resource: resource.into(), at: 1 }
}

#[tokio::test]
async fn the_postgres_store_keeps_the_contract() {
    let pg = TempPostgres::start().unwrap();
    let s = leading(&pg, "contract", "a").await;
    flockd_core::testing::store_contract::run(s, |s| s).await;
    // A second connection (a new process) reads the same rows; another
    // cluster in the same database sees none of them.
    let again = store(&pg, "contract").await;
    assert_eq!(load_state(&again).await.unwrap().tick, 7);
    let other = store(&pg, "another-cluster").await;
    assert!(other.load().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_postgres_store_keeps_what_the_controller_needs() {
    let pg = TempPostgres::start().unwrap();
    let pg = &pg;
    flockd_core::testing::store_behaviour::run(async || {
        Arc::new(leading(pg, "behaviour", "p").await) as Arc<dyn StateStore>
    })
    .await;
}

#[tokio::test]
async fn a_follower_cannot_write_and_a_deposed_leader_cannot_record_an_intent() {
    let pg = TempPostgres::start().unwrap();
    let a = leading(&pg, "c", "a").await;
    let b = store(&pg, "c").await;
    assert_eq!(b.acquire_or_renew("b", LEASE).await.unwrap(), LeaseAnswer::HeldBy { holder: "a".into(), epoch: 1 });
    let mut state = HostState::default();
    state.launching.insert("k1".into(), intent("gpu"));
    let err = b.write(&state.records()).await.unwrap_err();
    assert!(err.downcast_ref::<Fenced>().is_some(), "a follower's write is fenced: {err:#}");

    a.write(&state.records()).await.unwrap();
    // a pauses past its lease; b takes over under a new epoch.
    let client = a.client().await.unwrap();
    client.execute("UPDATE flockd_lease SET expires_at = now() - interval '1 second'", &[]).await.unwrap();
    assert_eq!(b.acquire_or_renew("b", LEASE).await.unwrap(), LeaseAnswer::Held { epoch: 2 });
    // a wakes up and tries to record its next launch: refused, by type.
    let mut next = state.clone();
    next.launching.insert("k2".into(), intent("gpu"));
    let err = a.write(&next.changes_since(&state)).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Fenced>(), Some(&Fenced { epoch: Some(1) }), "{err:#}");
    let err = a.append(&Default::default()).await.unwrap_err();
    assert!(err.downcast_ref::<Fenced>().is_some(), "{err:#}");
    assert_eq!(load_state(&b).await.unwrap(), state, "nothing of a's was written after it was deposed");
    // b, the leader, writes.
    b.write(&next.changes_since(&state)).await.unwrap();
    assert_eq!(load_state(&a).await.unwrap(), next);
}

#[tokio::test]
async fn a_lapsed_grant_cannot_write_even_before_another_takes_it() {
    let pg = TempPostgres::start().unwrap();
    let a = leading(&pg, "c", "a").await;
    let client = a.client().await.unwrap();
    client.execute("UPDATE flockd_lease SET expires_at = now() - interval '1 second'", &[]).await.unwrap();
    let err = a.write(&HostState { tick: 1, ..Default::default() }.records()).await.unwrap_err();
    assert!(err.downcast_ref::<Fenced>().is_some(), "{err:#}");
    // Renewing after the lapse is a new term.
    assert_eq!(a.acquire_or_renew("a", LEASE).await.unwrap(), LeaseAnswer::Held { epoch: 2 });
    a.write(&HostState { tick: 1, ..Default::default() }.records()).await.unwrap();
}

#[tokio::test]
async fn a_released_lease_goes_to_the_next_campaign_at_once() {
    let pg = TempPostgres::start().unwrap();
    let a = leading(&pg, "c", "a").await;
    let b = store(&pg, "c").await;
    assert!(matches!(b.acquire_or_renew("b", LEASE).await.unwrap(), LeaseAnswer::HeldBy { .. }));
    a.release("a", 1).await.unwrap();
    assert_eq!(b.acquire_or_renew("b", LEASE).await.unwrap(), LeaseAnswer::Held { epoch: 2 });
    // a's old grant is over.
    assert!(a.write(&HostState { tick: 1, ..Default::default() }.records()).await.is_err());
}

#[tokio::test]
async fn the_journal_is_bounded_and_indexed_by_instance() {
    use flockd_core::journal::{Action, Outcome, TickRecord};
    use flockd_core::store::JournalQuery;
    let pg = TempPostgres::start().unwrap();
    let mut s = leading(&pg, "c", "a").await;
    s.limits = JournalLimits { max_records: 10, max_bytes: 1 << 20 };
    for tick in 1..=200u64 {
        let mut r = TickRecord { tick, ..Default::default() };
        if tick % 50 == 0 {
            r.actions.push(Action::Terminate {
                instance: format!("i-{tick}"),
                resource: "gpu".into(),
                cause: flockd_core::model::TerminationCause::Other,
                reason: String::new(),
                outcome: Outcome::Done,
            });
        }
        s.append(&r).await.unwrap();
    }
    let all = s.journal(&JournalQuery { limit: 0, instance: None }).await.unwrap();
    assert!(all.len() <= 10 + super::PRUNE_EVERY as usize, "{} records kept", all.len());
    assert_eq!(all[0].tick, 200);
    let one = s.journal(&JournalQuery { limit: 5, instance: Some("i-200".into()) }).await.unwrap();
    assert_eq!(one.iter().map(|r| r.tick).collect::<Vec<_>>(), vec![200]);
    let pruned = s.journal(&JournalQuery { limit: 5, instance: Some("i-50".into()) }).await.unwrap();
    assert!(pruned.is_empty(), "the index goes with its pruned tick");
}

#[tokio::test]
async fn two_processes_migrating_at_once_both_start() {
    let pg = TempPostgres::start().unwrap();
    let url = Arc::new(pg.url());
    let starts = (0..3).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PgStore::connect(&url, "c", LIMITS).await.map(|_| ()) })
    });
    for s in futures_join(starts).await {
        s.unwrap().unwrap();
    }
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await);
    }
    out
}
