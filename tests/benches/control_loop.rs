//! Control-loop figures (BENCHMARKS.md, "Control loop (issue 3)"):
//!
//! 1. one tick's wall time at 1,000 queues and 100 / 1,000 / 10,000
//!    instances, real default chain, production call limits;
//! 2. task enqueued → launch call, real time, 1 s poll interval;
//! 3. `flockd simulate` throughput on a generated 10,000-task trace.
//!
//! `cargo bench -p flockd-tests --bench control_loop [-- tick|latency|simulate]`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flockd_core::{
    CloudInstance, CloudProvider, Controller, ControllerConfig, HardLimits, LaunchRequest, ManualClock, Market,
    MemoryStore, Millis, ProviderError, QueueSpec, ResourceSpec, Seams, SystemClock,
};
use flockd_sim::{SimProviderSettings, SimQueue, SimResourceSettings, SimWorld};
use flockd_wasm::{CallLimits, PolicyEngine, PolicyRuntime, PolicySpec};

const T0: Millis = 1_767_225_600_000;

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if wants("tick") {
        for instances in [100, 1_000, 10_000] {
            runtime.block_on(tick_cost(1_000, instances, true));
        }
    }
    if wants("tick") || wants("host") {
        // The host's share: the same ticks with a decider that plans nothing.
        for instances in [100, 1_000, 10_000] {
            runtime.block_on(tick_cost(1_000, instances, false));
        }
    }
    if wants("latency") {
        runtime.block_on(enqueue_to_launch(60));
    }
    if wants("simulate") {
        simulate_throughput(10_000);
    }
}

fn default_chain(limits: CallLimits) -> Arc<PolicyRuntime> {
    let engine = Arc::new(PolicyEngine::new(limits).unwrap());
    let specs: Vec<PolicySpec> = flockd_wasm::builtin::names().map(PolicySpec::builtin).collect();
    let chain = flockd_wasm::load_chain(&engine, &specs).unwrap();
    Arc::new(PolicyRuntime::new(engine, chain))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A steady fleet: `queues` queues over 100 resources (each queue prefers
/// two), every resource full, half the machines busy, one task pending per
/// queue and idle machines to cover it. Ticks at a fixed moment decide the
/// same thing each time, so each measures a full observe → decide → act.
async fn tick_cost(queues: usize, instances: usize, real_chain: bool) {
    let resources = 100;
    let clock = Arc::new(ManualClock::new(T0));
    let queue = SimQueue::new(clock.clone());
    let world = SimWorld::new(clock.clone(), Arc::new(queue.clone()));
    let fast = SimResourceSettings { boot_secs: 0.0, ..Default::default() };
    let sim: BTreeMap<String, SimResourceSettings> =
        (0..resources).map(|r| (format!("r{r:03}"), fast.clone())).collect();
    let cloud = world.cloud("sim", &SimProviderSettings::default(), &sim).unwrap();
    let queue_specs: Vec<QueueSpec> = (0..queues)
        .map(|i| QueueSpec {
            name: format!("q{i:04}"),
            resources: vec![format!("r{:03}", i % resources), format!("r{:03}", (i + 1) % resources)],
        })
        .collect();
    let per_resource = instances / resources;
    let resource_specs: Vec<ResourceSpec> = (0..resources)
        .map(|r| ResourceSpec {
            name: format!("r{r:03}"),
            provider: "sim".into(),
            max_instances: per_resource as u32,
            price_per_hour: 1.0,
            market: Market::OnDemand,
        })
        .collect();
    let config = ControllerConfig::new(
        "bench",
        queue_specs.clone(),
        resource_specs,
        HardLimits { max_instances: 100_000, max_cost_per_hour: 1e9, ..Default::default() },
    );
    for r in 0..resources {
        let name = format!("r{r:03}");
        let served: Vec<String> =
            queue_specs.iter().filter(|q| q.resources.contains(&name)).map(|q| q.name.clone()).collect();
        for k in 0..per_resource {
            let request = LaunchRequest {
                cluster: "bench".into(),
                resource: name.clone(),
                queues: served.clone(),
                idempotency_key: format!("setup-{r}-{k}"),
            };
            cloud.launch(&request).await.unwrap();
        }
    }
    world.step();
    // Half the machines busy for hours.
    for r in 0..resources {
        for _ in 0..per_resource / 2 {
            queue.enqueue(&format!("q{:04}", r), T0, 36_000_000);
        }
    }
    world.step();
    // One pending task per queue, not handed out (the world is not stepped again).
    for q in &queue_specs {
        queue.enqueue(&q.name, T0, 60_000);
    }

    // What the simulated seams themselves cost per tick (a real queue
    // source and cloud API cost more), to tell the controller's share apart.
    let names: Vec<String> = queue_specs.iter().map(|q| q.name.clone()).collect();
    let seams_started = Instant::now();
    for _ in 0..5 {
        flockd_core::QueueSource::observe(&queue, &names).await.unwrap();
        cloud.list("bench").await.unwrap();
    }
    let seams_ms = seams_started.elapsed().as_secs_f64() * 1000.0 / 5.0;
    let decider: Arc<dyn flockd_core::Decider> = if real_chain {
        default_chain(CallLimits::default())
    } else {
        Arc::new(|_: &flockd_core::Snapshot| flockd_core::Plan::default())
    };
    let controller = Controller::new(
        config,
        Seams {
            source: Arc::new(queue.clone()),
            providers: BTreeMap::from([("sim".to_string(), Arc::new(cloud) as Arc<dyn CloudProvider>)]),
            decider,
            store: Arc::new(MemoryStore::with_journal_cap(4)),
            clock: clock.clone(),
        },
    )
    .await
    .unwrap();
    for _ in 0..3 {
        controller.tick().await;
    }
    let mut total = Vec::new();
    let mut decide = Vec::new();
    let mut errors = BTreeMap::new();
    let mut actions = 0;
    let mut per_policy: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..20 {
        let started = Instant::now();
        let record = controller.tick().await;
        total.push(started.elapsed().as_secs_f64() * 1000.0);
        decide.push(record.policies.iter().map(|p| p.micros).sum::<u64>() as f64 / 1000.0);
        actions += record.actions.len();
        for p in &record.policies {
            per_policy.entry(p.policy.clone()).or_default().push(p.micros as f64 / 1000.0);
            if let Some(e) = &p.error {
                errors.insert(p.policy.clone(), e.clone());
            }
        }
    }
    total.sort_by(f64::total_cmp);
    decide.sort_by(f64::total_cmp);
    let policies: Vec<String> = per_policy
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            format!("{name} {:.1}", percentile(&v, 0.5))
        })
        .collect();
    println!(
        "tick ({}): {queues} queues, {instances} instances: p50 {:.2} ms, p95 {:.2} ms (policy chain p50 {:.2} ms: {}), {actions} actions over 20 ticks; simulated observe + list {seams_ms:.2} ms{}",
        if real_chain { "default chain" } else { "empty decider" },
        percentile(&total, 0.5),
        percentile(&total, 0.95),
        percentile(&decide, 0.5),
        policies.join(", "),
        if errors.is_empty() { String::new() } else { format!(", POLICY ERRORS: {errors:?}") }
    );
}

/// Records when each launch call arrives.
struct Stopwatch {
    inner: Arc<dyn CloudProvider>,
    launches: Mutex<Vec<Instant>>,
}

#[async_trait::async_trait]
impl CloudProvider for Stopwatch {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        self.launches.lock().unwrap().push(Instant::now());
        self.inner.launch(request).await
    }
    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        self.inner.list(cluster).await
    }
    async fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.terminate(id).await
    }
}

/// Real time, the real loop at a 1 s interval: a task lands at a random
/// moment of the loop's cycle; how long until the launch call for it?
/// Machines never finish booting, so each task needs its own launch.
async fn enqueue_to_launch(samples: usize) {
    let clock = Arc::new(SystemClock);
    let queue = SimQueue::new(clock.clone());
    let world = SimWorld::new(clock.clone(), Arc::new(queue.clone()));
    let slow = SimResourceSettings { boot_secs: 3600.0, ..Default::default() };
    let cloud =
        world.cloud("sim", &SimProviderSettings::default(), &BTreeMap::from([("a".to_string(), slow)])).unwrap();
    let stopwatch = Arc::new(Stopwatch { inner: Arc::new(cloud), launches: Mutex::new(Vec::new()) });
    let config = ControllerConfig::new(
        "bench",
        vec![QueueSpec { name: "q".into(), resources: vec!["a".into()] }],
        vec![ResourceSpec {
            name: "a".into(),
            provider: "sim".into(),
            max_instances: 1000,
            price_per_hour: 1.0,
            market: Market::OnDemand,
        }],
        HardLimits { max_instances: 1000, max_cost_per_hour: 1e9, ..Default::default() },
    );
    let controller = Arc::new(
        Controller::new(
            config,
            Seams {
                source: Arc::new(queue.clone()),
                providers: BTreeMap::from([("sim".to_string(), stopwatch.clone() as Arc<dyn CloudProvider>)]),
                decider: default_chain(CallLimits::default()),
                store: Arc::new(MemoryStore::with_journal_cap(4)),
                clock: clock.clone(),
            },
        )
        .await
        .unwrap(),
    );
    let stepper = world.spawn_stepper(Duration::from_millis(50));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The loop runs in this task (its future is not `Send` for every
    // lifetime, so it cannot be spawned), beside the task feeder.
    let looping = controller.run(Duration::from_secs(1), async {
        let _ = stop_rx.await;
    });
    let feeding = async {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut latencies = Vec::new();
        for k in 0..samples {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            tokio::time::sleep(Duration::from_millis(rng % 1000)).await;
            let enqueued = Instant::now();
            queue.enqueue("q", flockd_core::Clock::now(&SystemClock), 3_600_000);
            let deadline = enqueued + Duration::from_secs(10);
            let launched = loop {
                if let Some(t) = stopwatch.launches.lock().unwrap().get(k).copied() {
                    break t;
                }
                assert!(Instant::now() < deadline, "no launch for task {k} within 10 s");
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            latencies.push(launched.duration_since(enqueued).as_secs_f64());
        }
        let _ = stop_tx.send(());
        latencies
    };
    let ((), mut latencies) = tokio::join!(looping, feeding);
    stepper.abort();
    latencies.sort_by(f64::total_cmp);
    println!(
        "enqueue → launch call, 1 s poll, {samples} tasks at random offsets: p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
}

/// `flockd simulate` on examples/simulate.toml with `tasks` generated tasks
/// over 48 simulated hours (GPU and CPU, bursts and a steady stream).
fn simulate_throughput(tasks: usize) {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("examples");
    let config = flockd::config::Config::load(&examples.join("simulate.toml")).unwrap();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let horizon = 48.0 * 3600.0;
    let trace: Vec<flockd::simulate::TraceTask> = (0..tasks)
        .map(|i| {
            let gpu = i % 3 == 0;
            flockd::simulate::TraceTask {
                at: (next() * horizon * 10.0).round() / 10.0,
                queue: if gpu { "gpu" } else { "cpu" }.into(),
                duration: (if gpu { 300.0 + next() * 1500.0 } else { 60.0 + next() * 540.0 } * 10.0).round() / 10.0,
                count: 1,
            }
        })
        .collect();
    let started = Instant::now();
    let report = flockd::simulate::simulate(&config, &trace, Default::default(), false).unwrap();
    let wall = started.elapsed().as_secs_f64();
    let hours = report.simulated_secs / 3600.0;
    println!(
        "simulate: {tasks} tasks, {hours:.1} simulated h, {} ticks in {wall:.1} s wall: {:.1} simulated h per wall second ({:.2} ms per tick); {} finished, peak {} instances",
        report.ticks,
        hours / wall,
        wall * 1000.0 / report.ticks as f64,
        report.total.tasks_finished,
        report.total.peak_instances
    );
}
