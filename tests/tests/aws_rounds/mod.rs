//! Rounds of "run flockd for a random while, SIGKILL it, restart it on the
//! same state-dir" while a simulated agent fleet takes and finishes tasks,
//! then a settle phase. Shared by aws_e2e (20 rounds) and aws_soak (ROUNDS).
//!
//! Throughout, a monitor lists moto every 100 ms and records any moment a
//! cap was exceeded. Some rounds hold a RunInstances in the middleware and
//! kill flockd while it waits, so the kill lands mid-launch (the instance is
//! still made, as EC2 would).
//!
//! At the end flockd must have found every machine its killed predecessors
//! launched: with all agents idle and no work, it terminates each one after
//! max-idle and unregisters its worker. A machine flockd did not track would
//! stay running, and the test fails on it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

use crate::aws_harness::*;

pub const GPU: &str = "gpu";
pub const SPOT_MAX: usize = 2;
pub const ON_DEMAND_MAX: usize = 2;
/// Below the sum of the resources' caps, so the global cap binds too.
pub const MAX_INSTANCES: usize = 3;

/// What the monitor saw.
#[derive(Default)]
pub struct Watch {
    pub violations: Vec<String>,
    pub peak_total: usize,
    pub samples: usize,
}

pub async fn run(cluster: &str, rounds: usize, seed: u64) {
    let started = Instant::now();
    let moto = moto().await;
    let clearml = Arc::new(Clearml::start().await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup {
            cluster: cluster.into(),
            clearml_url: clearml.url(),
            max_instances: MAX_INSTANCES as u32,
            spot_max: SPOT_MAX as u32,
            on_demand_max: ON_DEMAND_MAX as u32,
            cool_off_secs: 2,
            max_idle_secs: 1,
        },
    )
    .await;
    clearml.handle.create_queue(GPU).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let watch = Arc::new(Mutex::new(Watch::default()));
    let fleet =
        tokio::spawn(play_fleet(cluster.to_owned(), clearml.clone(), rng.random(), stop.clone(), watch.clone()));

    let mut mid_launch_kills = 0;
    // Machines a killed flockd left for the next one to adopt.
    let mut inherited = 0;
    for round in 0..rounds {
        inherited += moto.instances(cluster).await.iter().filter(|i| i.live()).count();
        let log = dir.path().join(format!("flockd-{round}.log"));
        let mut flockd = Flockd::start(&config, log);
        match round % 4 {
            // Killed at any moment from start-up on (checking the config,
            // compiling policies, logging in, the first ticks).
            0 | 1 => tokio::time::sleep(Duration::from_millis(rng.random_range(0..4000))).await,
            // Hold this cluster's next RunInstances, make sure there is work
            // to launch for, and kill flockd once the call has arrived.
            2 => {
                let before = cluster_calls(cluster, "RunInstances").await;
                moto.inject_delay("RunInstances", Duration::from_millis(1500), 1, run_instances_of(cluster, false))
                    .await;
                for n in 0..3 {
                    clearml.enqueue(GPU, &format!("burst-{round}-{n}"));
                }
                flockd.wait_until_running().await;
                let deadline = Instant::now() + Duration::from_secs(4);
                while Instant::now() < deadline && cluster_calls(cluster, "RunInstances").await == before {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if cluster_calls(cluster, "RunInstances").await > before {
                    mid_launch_kills += 1;
                }
            }
            // Killed at a random point of its ticks.
            _ => {
                flockd.wait_until_running().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            }
        }
        if let Some(status) = flockd.exited() {
            panic!("round {round}: flockd exited by itself ({status}):\n{}", flockd.log_text());
        }
        flockd.kill();
    }
    stop.store(true, Ordering::Relaxed);
    fleet.await.unwrap();
    let rounds_took = started.elapsed();

    // Settle: no work, every machine's agent up and idle. A flockd that
    // adopted every machine terminates them all after max-idle.
    for task in pending_tasks(&clearml) {
        clearml.handle.call("tasks.dequeue", json!({"task": task})).unwrap();
    }
    let mut flockd = Flockd::start(&config, dir.path().join("flockd-settle.log"));
    flockd.wait_until_running().await;
    // Each machine's agent comes up idle, including one that appears only
    // now: a killed flockd's RunInstances may still have been being made.
    let mut agents = BTreeSet::new();
    let settle = wait_for_all_terminated(cluster, Duration::from_secs(45), |instance| {
        if !agents.insert(instance.id.clone()) {
            return;
        }
        inherited += 1;
        let resource = instance.tag("flockd-resource").unwrap();
        let worker = format!("flockd:{cluster}:{resource}:{}", instance.id);
        clearml.register(&worker, &[GPU]);
        clearml.handle.call("workers.status_report", json!({"worker": worker, "task": ""})).unwrap();
    })
    .await;
    if let Err(live) = settle {
        panic!("flockd left machines running after settling: {live:?}\nlog:\n{}", flockd.log_text());
    }
    wait_for("flockd's workers to be unregistered", Duration::from_secs(15), || async {
        let prefix = format!("flockd:{cluster}:");
        clearml.workers().keys().all(|w| !w.starts_with(&prefix)).then_some(())
    })
    .await;

    let all = moto.instances(cluster).await;
    let watch = std::mem::take(&mut *watch.lock().unwrap());
    eprintln!(
        "{rounds} SIGKILL rounds ({mid_launch_kills} mid-launch, {inherited} machines inherited by a restart) in {rounds_took:?}, {} instances launched, peak {} live, {} samples; total {:?}",
        all.len(),
        watch.peak_total,
        watch.samples,
        started.elapsed()
    );
    flockd.stop().await;
    assert!(watch.violations.is_empty(), "caps exceeded:\n{}", watch.violations.join("\n"));
    assert!(all.len() >= rounds / 4, "the rounds launched only {} machines: the fleet did not churn", all.len());
    assert!(inherited > 0, "no restart ever found a machine left by its killed predecessor");
    assert!(mid_launch_kills >= rounds / 10, "only {mid_launch_kills} kills landed mid-launch");

    // Every machine was tagged at creation, with a launch key used once.
    let mut keys = BTreeSet::new();
    for i in &all {
        for tag in ["flockd-cluster", "flockd-resource", "flockd-launch-key", "flockd-worker-prefix"] {
            assert!(i.tag(tag).is_some(), "{} lacks tag {tag}: {:?}", i.id, i.tags);
        }
        let key = i.tag("flockd-launch-key").unwrap();
        assert!(keys.insert(key.to_owned()), "launch key {key} made two instances");
    }
    // And nothing in the whole region runs untagged (other tests' clusters
    // share this moto; none of them may leave an untagged machine either).
    for i in moto.all_instances().await.iter().filter(|i| i.live()) {
        assert!(i.tag("flockd-cluster").is_some(), "untagged live instance {}: {:?}", i.id, i.tags);
    }
}

async fn cluster_calls(cluster: &str, action: &str) -> usize {
    moto()
        .await
        .calls(action)
        .await
        .iter()
        .filter(|c| c.get("TagSpecification.1.Tag.1.Value").map(String::as_str) == Some(cluster))
        .count()
}

pub fn pending_tasks(clearml: &Clearml) -> Vec<String> {
    let data = clearml.handle.call("tasks.get_all", json!({"status": ["queued"]})).unwrap();
    data["tasks"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str().map(str::to_owned)).collect()
}

/// Ok once no instance of `cluster` is live; Err(live ids) at the deadline.
/// `on_live` sees every live instance on every look.
pub async fn wait_for_all_terminated(
    cluster: &str,
    within: Duration,
    mut on_live: impl FnMut(&MotoInstance),
) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let live: Vec<MotoInstance> =
            moto().await.instances(cluster).await.into_iter().filter(MotoInstance::live).collect();
        if live.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(live.into_iter().map(|i| i.id).collect());
        }
        live.iter().for_each(&mut on_live);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agents of the launched machines, the people enqueueing work, and the
/// monitor, every 100 ms until `stop`.
pub async fn play_fleet(
    cluster: String,
    clearml: Arc<Clearml>,
    seed: u64,
    stop: Arc<AtomicBool>,
    watch: Arc<Mutex<Watch>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    // instance id → (worker id, task it runs)
    let mut agents: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let mut enqueued = 0;
    while !stop.load(Ordering::Relaxed) {
        let instances = moto().await.instances(&cluster).await;
        let live: Vec<&MotoInstance> = instances.iter().filter(|i| i.live()).collect();
        {
            let mut watch = watch.lock().unwrap();
            watch.samples += 1;
            watch.peak_total = watch.peak_total.max(live.len());
            let count = |resource: &str| live.iter().filter(|i| i.tag("flockd-resource") == Some(resource)).count();
            let (spot, on_demand) = (count("gpu-spot"), count("gpu-on-demand"));
            if live.len() > MAX_INSTANCES || spot > SPOT_MAX || on_demand > ON_DEMAND_MAX {
                let ids: Vec<&str> = live.iter().map(|i| i.id.as_str()).collect();
                watch.violations.push(format!("{} live ({spot} spot, {on_demand} on-demand): {ids:?}", live.len()));
            }
        }
        // Work arrives in bursts.
        if clearml.pending(GPU) < 3 && rng.random_bool(0.1) {
            enqueued += 1;
            clearml.enqueue(GPU, &format!("task-{enqueued}"));
        }
        // Sometimes spot has no capacity.
        if rng.random_bool(0.02) {
            moto()
                .await
                .inject_error("RunInstances", "InsufficientInstanceCapacity", 500, 1, run_instances_of(&cluster, true))
                .await;
        }
        // A machine that is gone takes its agent with it (flockd unregisters the worker).
        agents.retain(|id, _| live.iter().any(|i| &i.id == id));
        for instance in &live {
            let resource = instance.tag("flockd-resource").unwrap_or_default();
            match agents.get_mut(&instance.id) {
                None if rng.random_bool(0.4) => {
                    let worker = format!("flockd:{cluster}:{resource}:{}", instance.id);
                    clearml.register(&worker, &[GPU]);
                    agents.insert(instance.id.clone(), (worker, None));
                }
                None => {}
                Some((worker, task @ None)) if rng.random_bool(0.5) => *task = clearml.take_task(worker, GPU),
                Some((worker, task @ Some(_))) if rng.random_bool(0.3) => {
                    clearml.finish_task(worker, &task.take().unwrap());
                }
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
