//! The contract every [`CloudProvider`] meets, as one async function each
//! provider crate's tests call with its own provider (a dev-dependency on
//! `flockd-core` with `features = ["testing"]`), and the fake cloud here
//! meets too: a test on the fake proves nothing a real provider breaks.

use std::time::Duration;

use crate::provider::{CloudProvider, CloudState, LaunchRequest};

pub fn request(cluster: &str, resource: &str, key: &str) -> LaunchRequest {
    LaunchRequest {
        cluster: cluster.to_owned(),
        resource: resource.to_owned(),
        queues: vec!["default".to_owned()],
        idempotency_key: key.to_owned(),
    }
}

/// Launch, relaunch with the same key, list (and not in another cluster),
/// terminate, terminate again. `cluster` must be fresh (nothing launched in
/// it yet); `resource` must be configured on the provider.
pub async fn run_contract(provider: &dyn CloudProvider, cluster: &str, resource: &str) {
    assert!(provider.list(cluster).await.expect("list a fresh cluster").is_empty(), "a fresh cluster lists nothing");

    let first = provider.launch(&request(cluster, resource, "contract-key-1")).await.expect("launch");
    assert_eq!(first.resource, resource);
    assert_eq!(first.launch_key.as_deref(), Some("contract-key-1"));
    assert!(matches!(first.state, CloudState::Pending | CloudState::Running), "{:?}", first.state);
    assert!(first.launched_at > 0, "launched_at is set");

    let retried = provider.launch(&request(cluster, resource, "contract-key-1")).await.expect("retried launch");
    assert_eq!(retried.id, first.id, "the same idempotency key gives the same machine");

    let listed = provider.list(cluster).await.expect("list");
    assert_eq!(listed.len(), 1, "exactly one machine after two launches with one key: {listed:?}");
    assert_eq!(listed[0].id, first.id);
    assert_eq!(listed[0].resource, resource);
    assert_eq!(listed[0].launch_key.as_deref(), Some("contract-key-1"));

    let other_cluster = format!("{cluster}-other");
    assert!(
        provider.list(&other_cluster).await.expect("list another cluster").iter().all(|i| i.id != first.id),
        "another cluster's list does not show this cluster's machine"
    );

    provider.terminate(&first.id).await.expect("terminate");
    wait_until_gone(provider, cluster, &first.id).await;
    provider.terminate(&first.id).await.expect("terminating a machine that is gone is Ok");
}

/// Polls `list` until `instance_id` is no longer in it (30 s deadline).
pub async fn wait_until_gone(provider: &dyn CloudProvider, cluster: &str, instance_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = provider.list(cluster).await.expect("list");
        if listed.iter().all(|i| i.id != instance_id) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{instance_id} still listed: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::ManualClock;
    use crate::testing::FakeCloud;

    #[tokio::test]
    async fn the_fake_cloud_keeps_the_provider_contract() {
        let cloud = FakeCloud::new(Arc::new(ManualClock::new(1_767_225_600_000)));
        super::run_contract(&cloud, "contract", "a").await;
    }
}
