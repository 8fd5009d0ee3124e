//! Helpers for the policy runtime tests and benchmarks: the fixture
//! components built by `build.rs`, realistic snapshots, publishing a file the
//! way operators should (write elsewhere, rename), and polling with a deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flockd_core::{Budget, Failure, FailureKind, Instance, InstanceState, Market, Queue, Resource, Snapshot};
use flockd_wasm::{CallLimits, PolicyEngine};

/// Paths of the fixture components (see `fixtures/policies/`).
pub mod fixture {
    pub const LOOP_FOREVER: &str = env!("FIXTURE_LOOP_FOREVER");
    pub const MEMORY_BOMB: &str = env!("FIXTURE_MEMORY_BOMB");
    pub const TRAP: &str = env!("FIXTURE_TRAP");
    pub const HUGE_PLAN: &str = env!("FIXTURE_HUGE_PLAN");
    pub const FLOOD_PLAN: &str = env!("FIXTURE_FLOOD_PLAN");
    pub const OTHER_WORLD: &str = env!("FIXTURE_OTHER_WORLD");
    pub const GOOD_V1: &str = env!("FIXTURE_GOOD_V1");
    pub const GOOD_V2: &str = env!("FIXTURE_GOOD_V2");
    pub const FORGED_TEXT: &str = env!("FIXTURE_FORGED_TEXT");
}

pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// An engine with the default memory cap and a deadline of one second: on a
/// loaded test machine a well-behaved call must never be cut off by the
/// clock. Tests of the deadline itself use [`engine_with_timeout`].
pub fn engine() -> Arc<PolicyEngine> {
    engine_with_timeout(Duration::from_secs(1))
}

pub fn engine_with_timeout(timeout: Duration) -> Arc<PolicyEngine> {
    Arc::new(PolicyEngine::new(CallLimits { timeout, ..CallLimits::default() }).expect("engine"))
}

/// One queue with 3 pending tasks served by resource "A" (max 4): good-v1
/// answers 1 × A, good-v2 2 × A.
pub fn small_snapshot() -> Snapshot {
    Snapshot {
        now: 1_700_000_000_000,
        queues: vec![Queue { name: "q".into(), pending: 3, resources: vec!["A".into()], ..Default::default() }],
        resources: vec![Resource {
            name: "A".into(),
            queues: vec!["q".into()],
            max_instances: 4,
            price_per_hour: 1.0,
            market: Market::Spot,
            last_boot_ok: None,
        }],
        ..Default::default()
    }
}

/// A fleet of the given size as a busy cluster would report it: every queue
/// served by a spot and an on-demand resource (two queues per resource pair),
/// some queues backed up, instances booting, busy, idle for a while and
/// stopping, and a few recent capacity failures.
pub fn fleet_snapshot(queues: usize, instances: usize) -> Snapshot {
    let now: u64 = 1_700_000_000_000;
    let pairs = queues.div_ceil(2).max(1);
    let mut resources = Vec::with_capacity(pairs * 2);
    for p in 0..pairs {
        let served: Vec<String> = (2 * p..(2 * p + 2).min(queues)).map(|q| format!("queue-{q:04}")).collect();
        for (market, suffix, price) in [(Market::Spot, "spot", 0.9), (Market::OnDemand, "od", 3.1)] {
            resources.push(Resource {
                name: format!("gpu-{p:04}-{suffix}"),
                queues: served.clone(),
                max_instances: (instances / pairs).max(4) as u32 * 2,
                price_per_hour: price,
                market,
                last_boot_ok: Some(now - 600_000),
            });
        }
    }
    let queues: Vec<Queue> = (0..queues)
        .map(|q| {
            let pair = q / 2;
            Queue {
                name: format!("queue-{q:04}"),
                pending: if q % 3 == 0 { (q % 7) as u32 + 1 } else { 0 },
                oldest_wait_ms: if q % 3 == 0 { 90_000 } else { 0 },
                resources: vec![format!("gpu-{pair:04}-spot"), format!("gpu-{pair:04}-od")],
                external_idle_workers: u32::from(q % 11 == 0),
            }
        })
        .collect();
    let instances: Vec<Instance> = (0..instances)
        .map(|i| {
            let resource = &resources[i % resources.len()].name;
            let (state, busy, idle_since, worker) = match i % 10 {
                0 => (InstanceState::Booting, false, None, None),
                1 => (InstanceState::Stopping, false, None, Some(format!("worker-{i:05}"))),
                2..=4 => (
                    InstanceState::Running,
                    false,
                    Some(now - (i as u64 % 30) * 60_000),
                    Some(format!("worker-{i:05}")),
                ),
                _ => (InstanceState::Running, true, None, Some(format!("worker-{i:05}"))),
            };
            Instance {
                id: format!("i-{i:017x}"),
                resource: resource.clone(),
                state,
                launched_at: now - 3_600_000 - (i as u64 % 100) * 60_000,
                worker,
                busy,
                idle_since,
                task: busy.then(|| format!("task-{i:05}")),
            }
        })
        .collect();
    let failures = (0..resources.len().min(5))
        .map(|r| Failure {
            resource: resources[r * 2 % resources.len()].name.clone(),
            kind: FailureKind::Capacity,
            at: now - 120_000,
            message: "InsufficientInstanceCapacity".into(),
        })
        .collect();
    let budget_instances = (instances.len() as u32 * 2).max(10);
    let cost: f64 = instances.iter().map(|i| if i.resource.ends_with("spot") { 0.9 } else { 3.1 }).sum();
    Snapshot {
        now,
        queues,
        resources,
        instances,
        failures,
        budget: Budget { max_instances: budget_instances, max_cost_per_hour: cost * 1.5, cost_per_hour: cost },
    }
}

/// Publishes `bytes` at `path` the way operators should: write a sibling
/// file, then rename it over the target (one inotify rename, never a
/// half-written file).
pub fn publish(path: &Path, bytes: &[u8]) {
    let staging = path.with_extension("partial");
    std::fs::write(&staging, bytes).expect("write staging file");
    std::fs::rename(&staging, path).expect("rename over the policy file");
}

/// Polls `check` until it returns `Some` or `deadline` passes; panics with
/// `what` on timeout.
pub fn poll_until<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A scratch folder for policy files.
pub fn policy_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    (dir, path)
}
