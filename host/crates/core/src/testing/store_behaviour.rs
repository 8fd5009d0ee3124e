//! Controller behaviour that rests on what a store keeps across a restart
//! (or a change of leader), run against every [`StateStore`]: the memory
//! store here, the redb store in the host, the PostgreSQL store in its crate.
//! Where [`super::store_contract`] checks the records, this checks what the
//! guarantees need of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::clock::ManualClock;
use crate::controller::{Controller, ControllerConfig, QueueSpec, ResourceSpec, Seams};
use crate::guardrails::HardLimits;
use crate::model::{Launch, Market, Plan, Snapshot};
use crate::naming;
use crate::provider::CloudProvider;
use crate::store::StateStore;
use crate::testing::{FakeCloud, FakeQueues};

const CLUSTER: &str = "behaviour";

fn config() -> ControllerConfig {
    ControllerConfig::new(
        CLUSTER,
        vec![QueueSpec { name: "q".into(), resources: vec!["a".into()] }],
        vec![ResourceSpec {
            name: "a".into(),
            provider: "fake".into(),
            max_instances: 1,
            price_per_hour: 1.0,
            market: Market::OnDemand,
        }],
        HardLimits { max_instances: 10, max_cost_per_hour: 100.0, ..Default::default() },
    )
}

/// Asks for one more machine of `a` every tick; the caps decide.
fn greedy(_: &Snapshot) -> Plan {
    Plan { launches: vec![Launch { resource: "a".into(), count: 1, reason: "greedy".into() }], terminations: vec![] }
}

/// `open` gives the store as a new process sees it (the same file or
/// database, reopened; able to write).
pub async fn run(mut open: impl AsyncFnMut() -> Arc<dyn StateStore>) {
    let clock = Arc::new(ManualClock::new(1_767_225_600_000));
    let cloud = Arc::new(FakeCloud::new(clock.clone()));
    let queues = Arc::new(FakeQueues::new());
    let controller = async |store: Arc<dyn StateStore>| {
        let seams = Seams {
            source: queues.clone(),
            providers: BTreeMap::from([("fake".to_string(), cloud.clone() as Arc<dyn CloudProvider>)]),
            decider: Arc::new(greedy),
            store,
            clock: clock.clone(),
        };
        Controller::new(config(), seams).await.unwrap()
    };
    queues.set_pending("q", 5);

    // 1. A launch the cloud made but does not list yet counts after a
    //    restart: the new process launches nothing more (max 1).
    cloud.hide_new_machines(true);
    let first = controller(open().await).await;
    first.tick().await;
    assert_eq!(cloud.made(), 1);
    drop(first);
    let second = controller(open().await).await;
    clock.advance(10_000);
    second.tick().await;
    assert_eq!(cloud.made(), 1, "a restart forgot the machine the cloud had not listed yet");

    // 2. Its idle timer survives a restart: the machine is listed, its worker
    //    idle since this tick.
    cloud.reveal();
    let id = cloud.alive()[0].id.clone();
    queues.set_pending("q", 0);
    queues.register(&naming::worker_id(CLUSTER, "a", &id), &["q"], None);
    clock.advance(10_000);
    second.tick().await;
    let idle_since = second.host_state().await.idle_since.get(&id).copied();
    assert!(idle_since.is_some(), "the idle worker has no idle timer");
    drop(second);

    // 3. So does an operator's pause.
    let third = controller(open().await).await;
    assert_eq!(third.host_state().await.idle_since.get(&id).copied(), idle_since, "the idle timer restarted");
    let paused = third.pause_launches(true).await.unwrap();
    drop(third);
    let fourth = controller(open().await).await;
    assert_eq!(fourth.launches_paused(), paused, "the pause was lost");
    assert!(paused.is_some());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::store::{MemoryStore, StateStore};

    #[tokio::test]
    async fn the_memory_store_keeps_what_the_controller_needs() {
        let store = Arc::new(MemoryStore::default());
        super::run(async || store.clone() as Arc<dyn StateStore>).await;
    }
}
