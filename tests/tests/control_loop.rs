//! The control loop's guards, end to end: the real `Controller`, the real
//! built-in policy components, a simulated cloud and queue server on a
//! virtual clock. Each test names the guard it protects; each was checked
//! to fail with that guard taken out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flockd_core::{
    Action, Clock, CloudProvider, Controller, ControllerConfig, Decider, HardLimits, JournalQuery, ManualClock, Market,
    MemoryStore, Millis, Outcome, ProviderError, QueueObservation, QueueSource, QueueSpec, ResourceSpec, Seams,
    SourceError, StateStore, TickRecord, Worker, naming,
};
use flockd_sim::{Agents, Outage, OutageError, SimProviderSettings, SimQueue, SimResourceSettings, SimWorld};
use flockd_wasm::{CallLimits, PolicyEngine, PolicyRuntime, PolicySpec};

const T0: Millis = 1_767_225_600_000;
const CLUSTER: &str = "test";
const POLL_SECS: f64 = 10.0;

struct Res {
    name: &'static str,
    max: u32,
    market: Market,
    sim: SimResourceSettings,
}

fn res(name: &'static str, max: u32) -> Res {
    Res { name, max, market: Market::OnDemand, sim: SimResourceSettings::default() }
}

/// A simulated world and everything a controller needs to run against it.
struct Harness {
    clock: Arc<ManualClock>,
    queue: SimQueue,
    world: Arc<SimWorld>,
    providers: BTreeMap<String, Arc<dyn CloudProvider>>,
    decider: Arc<dyn Decider>,
    config: ControllerConfig,
}

impl Harness {
    fn new(queues: &[(&str, &[&str])], resources: Vec<Res>) -> Self {
        Self::with_policies(queues, resources, builtin_chain(&[]))
    }

    fn with_policies(queues: &[(&str, &[&str])], resources: Vec<Res>, policies: Vec<PolicySpec>) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let queue = SimQueue::new(clock.clone());
        let world = SimWorld::new(clock.clone(), Arc::new(queue.clone()));
        let sim: BTreeMap<String, SimResourceSettings> =
            resources.iter().map(|r| (r.name.to_string(), r.sim.clone())).collect();
        let cloud = world.cloud("sim", &SimProviderSettings { seed: 1 }, &sim).unwrap();
        let providers = BTreeMap::from([("sim".to_string(), Arc::new(cloud) as Arc<dyn CloudProvider>)]);
        let config = ControllerConfig::new(
            CLUSTER,
            queues
                .iter()
                .map(|(q, rs)| QueueSpec { name: q.to_string(), resources: rs.iter().map(|r| r.to_string()).collect() })
                .collect(),
            resources
                .iter()
                .map(|r| ResourceSpec {
                    name: r.name.into(),
                    provider: "sim".into(),
                    max_instances: r.max,
                    price_per_hour: 1.0,
                    market: r.market,
                })
                .collect(),
            HardLimits { max_instances: 100, max_cost_per_hour: 1000.0, ..Default::default() },
        );
        Harness { clock, queue, world, providers, decider: decider(policies), config }
    }

    async fn controller(&self, store: Arc<dyn StateStore>) -> Controller {
        self.controller_with(Arc::new(self.queue.clone()), store, self.config.clone()).await
    }

    async fn controller_with(
        &self,
        source: Arc<dyn QueueSource>,
        store: Arc<dyn StateStore>,
        config: ControllerConfig,
    ) -> Controller {
        let seams = Seams {
            source,
            providers: self.providers.clone(),
            decider: self.decider.clone(),
            store,
            clock: self.clock.clone(),
        };
        Controller::new(config, seams).await.unwrap()
    }

    /// Moves the world to `secs` after the start.
    fn at(&self, secs: f64) {
        self.clock.set(T0 + (secs * 1000.0) as Millis);
        self.world.step();
    }

    /// One tick at `secs`.
    async fn tick_at(&self, controller: &Controller, secs: f64) -> Arc<TickRecord> {
        self.at(secs);
        controller.tick().await
    }

    /// Ticks every poll interval over `[from, to)`, returning the records.
    async fn run(&self, controller: &Controller, from: f64, to: f64) -> Vec<Arc<TickRecord>> {
        let mut records = Vec::new();
        let mut t = from;
        while t < to {
            records.push(self.tick_at(controller, t).await);
            t += POLL_SECS;
        }
        records
    }

    fn enqueue(&self, queue: &str, at_secs: f64, duration_secs: f64, count: usize) {
        for _ in 0..count {
            self.queue.enqueue(queue, T0 + (at_secs * 1000.0) as Millis, (duration_secs * 1000.0) as Millis);
        }
    }

    fn launches(&self, resource: &str) -> u32 {
        self.world.stats(self.clock.now()).get(resource).map_or(0, |s| s.launches)
    }

    fn terminations(&self, resource: &str) -> u32 {
        self.world.stats(self.clock.now()).get(resource).map_or(0, |s| s.terminations)
    }

    fn killed_by_termination(&self) -> u32 {
        self.world.stats(self.clock.now()).values().map(|s| s.tasks_killed_by_termination).sum()
    }
}

/// The built-ins in default order; `settings` overrides some by name.
fn builtin_chain(settings: &[(&str, serde_json::Value)]) -> Vec<PolicySpec> {
    flockd_wasm::builtin::names()
        .map(|name| {
            let mut spec = PolicySpec::builtin(name);
            if let Some((_, s)) = settings.iter().find(|(n, _)| *n == name) {
                spec.settings = s.clone();
            }
            spec
        })
        .collect()
}

fn decider(specs: Vec<PolicySpec>) -> Arc<dyn Decider> {
    // A generous deadline: a loaded test machine must not make a policy
    // time out and pass its plan on unchanged.
    let engine =
        Arc::new(PolicyEngine::new(CallLimits { timeout: Duration::from_secs(10), ..Default::default() }).unwrap());
    let chain = flockd_wasm::load_chain(&engine, &specs).unwrap();
    Arc::new(PolicyRuntime::new(engine, chain))
}

fn terminations_of(record: &TickRecord) -> Vec<(&str, &Outcome)> {
    record
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Terminate { instance, outcome, .. } => Some((instance.as_str(), outcome)),
            _ => None,
        })
        .collect()
}

/// Guard: scale-up fills a queue's shortfall across its resources in order,
/// each taking at most its room, and counts booting machines as capacity
/// (prior-art #3: the ClearML autoscaler launched 5 machines here).
#[tokio::test]
async fn over_allocation_three_pending_over_a_max_2_and_b_max_5_launches_exactly_three() {
    let h = Harness::new(&[("q", &["a", "b"])], vec![res("a", 2), res("b", 5)]);
    let controller = h.controller(Arc::new(MemoryStore::default())).await;
    h.enqueue("q", 0.0, 600.0, 3);

    let first = h.tick_at(&controller, 0.0).await;
    assert_eq!((h.launches("a"), h.launches("b")), (2, 1), "{:#?}", first.actions);
    // While they boot (90 s), nothing more is launched.
    h.run(&controller, POLL_SECS, 80.0).await;
    assert_eq!((h.launches("a"), h.launches("b")), (2, 1));
    // And once they run, the three tasks are on the three machines.
    h.run(&controller, 80.0, 200.0).await;
    assert_eq!((h.launches("a"), h.launches("b")), (2, 1));
    assert!(h.queue.tasks().iter().all(|t| t.first_started.is_some()));
}

/// Guard: workers under this cluster's prefix whose machine is gone are not
/// capacity and are unregistered (controller `build_snapshot`, prior-art #4).
#[tokio::test]
async fn zombie_worker_does_not_block_scale_up_and_is_unregistered() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 3)]);
    let zombie = naming::worker_id(CLUSTER, "a", "sim-999999");
    h.queue.register(&zombie, &["q".to_string()], T0);
    h.enqueue("q", 0.0, 60.0, 1);
    let controller = h.controller(Arc::new(MemoryStore::default())).await;

    let record = h.tick_at(&controller, 0.0).await;
    assert_eq!(h.launches("a"), 1, "the idle zombie must not cover the pending task: {:#?}", record.plan);
    assert_eq!(record.unregistered, vec![zombie.clone()]);
    assert!(!h.queue.worker_ids().contains(&zombie), "zombie still listed: {:?}", h.queue.worker_ids());
}

/// Wraps the simulated queue server: on the controller's last look before
/// terminating, the idle worker takes a task that just arrived.
struct TakesTaskOnRecheck {
    queue: SimQueue,
    world: Arc<SimWorld>,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl QueueSource for TakesTaskOnRecheck {
    async fn observe(&self, queues: &[String]) -> Result<QueueObservation, SourceError> {
        self.queue.observe(queues).await
    }
    async fn unregister_worker(&self, worker_id: &str) -> Result<(), SourceError> {
        self.queue.unregister_worker(worker_id).await
    }
    async fn workers(&self) -> Result<Vec<Worker>, SourceError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.queue.enqueue("q", self.world.origin(), 3_600_000);
            self.world.step();
        }
        self.queue.workers().await
    }
}

/// Guard: the controller re-reads the workers right before terminating and
/// refuses to terminate one that took a task since the decision
/// (controller `act`, prior-art #5).
#[tokio::test]
async fn worker_that_takes_a_task_between_decision_and_action_is_not_terminated() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 3)]);
    let source = Arc::new(TakesTaskOnRecheck { queue: h.queue.clone(), world: h.world.clone(), armed: false.into() });
    let controller = h.controller_with(source.clone(), Arc::new(MemoryStore::default()), h.config.clone()).await;
    h.enqueue("q", 0.0, 60.0, 1);
    // Launch, boot (90 s), run the task (60 s), then sit idle.
    h.run(&controller, 0.0, 300.0).await;
    assert_eq!(h.launches("a"), 1);
    let busy_before = h.queue.workers().await.unwrap();
    assert!(busy_before.iter().all(|w| w.task.is_none()), "{busy_before:?}");

    // Idle for more than the idle policy's 600 s: it plans the termination,
    // and the worker takes a task in between.
    source.armed.store(true, Ordering::SeqCst);
    let record = h.tick_at(&controller, 1000.0).await;
    let terminations = terminations_of(&record);
    assert_eq!(terminations.len(), 1, "the idle policy should have asked: {:#?}", record);
    assert_eq!(h.terminations("a"), 0, "{terminations:?}");
    assert_eq!(h.killed_by_termination(), 0);
    assert_eq!(h.world.alive(), 1);
    assert!(matches!(terminations[0].1, Outcome::Refused(why) if why.contains("took task")), "{terminations:?}");
}

/// Guard: spin-up-timeout's circuit breaker (and the host keeping boot
/// failures long enough for it to count them): a resource whose machines
/// never boot is launched a bounded number of times, not every timeout
/// (prior-art #6).
#[tokio::test]
async fn broken_image_trips_the_breaker_instead_of_churning() {
    let broken = Res { sim: SimResourceSettings { never_boots: true, ..Default::default() }, ..res("a", 3) };
    let h = Harness::new(&[("q", &["a"])], vec![broken]);
    let controller = h.controller(Arc::new(MemoryStore::default())).await;
    h.enqueue("q", 0.0, 60.0, 1);
    let hours = 12.0;
    let records = h.run(&controller, 0.0, hours * 3600.0).await;

    // Without a breaker: a launch every timeout (900 s) = 48 in 12 h. With
    // it (3 failures, then 1800 s backoff, then one try per reopening): 3
    // launches, then one per 2700 s.
    let launches = h.launches("a");
    assert!(launches <= 20, "{launches} launches of a never-booting image in {hours} h");
    assert!(launches >= 3, "the breaker must not open before 3 failures: {launches}");
    assert_eq!(h.terminations("a") + h.world.alive() as u32, launches, "every launch is terminated or still alive");
    let boot_timeouts = records
        .iter()
        .flat_map(|r| r.actions.iter())
        .filter(|a| {
            matches!(
                a,
                Action::Terminate { cause: flockd_core::TerminationCause::BootTimeout, outcome: Outcome::Done, .. }
            )
        })
        .count();
    assert_eq!(boot_timeouts as u32, h.terminations("a"));
}

/// Guard: the fleet is adopted from the cloud listing on every tick and idle
/// timers live in the store, so a restart neither over-launches nor resets
/// idle timers (prior-art #2).
#[tokio::test]
async fn restart_with_instances_booting_adopts_them_and_keeps_idle_timers() {
    let slow = Res { sim: SimResourceSettings { boot_secs: 300.0, ..Default::default() }, ..res("a", 5) };
    let h = Harness::new(&[("q", &["a"])], vec![slow]);
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::default());
    h.enqueue("q", 0.0, 60.0, 3);

    let first = h.controller(store.clone()).await;
    h.tick_at(&first, 0.0).await;
    assert_eq!(h.launches("a"), 3);
    drop(first);

    // Restarted while the three still boot: nothing more is launched.
    let second = h.controller(store.clone()).await;
    h.run(&second, 10.0, 400.0).await;
    assert_eq!(h.launches("a"), 3, "over-launch after restart");
    let idle_since = second.host_state().await.idle_since;
    assert_eq!(idle_since.len(), 3, "all three ran their task and went idle: {idle_since:?}");
    drop(second);

    // Restarted again while idle: the timers carry over, so they go 600 s
    // after they became idle, not 600 s after the restart.
    let third = h.controller(store.clone()).await;
    h.tick_at(&third, 600.0).await;
    assert_eq!(third.host_state().await.idle_since, idle_since);
    let became_idle = (*idle_since.values().max().unwrap() - T0) as f64 / 1000.0;
    h.run(&third, 610.0, became_idle + 600.0 + 2.0 * POLL_SECS).await;
    assert_eq!(h.terminations("a"), 3, "idle timers were reset by the restart");
    assert_eq!(h.launches("a"), 3);
    assert_eq!(h.killed_by_termination(), 0);
}

/// Guard: a failed observation decides nothing (controller `tick_locked` /
/// `observe`; design: "queue API down ⇒ no terminations").
#[tokio::test]
async fn queue_source_down_means_no_terminations_and_no_launches_until_it_is_back() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 5)]);
    let controller = h.controller(Arc::new(MemoryStore::default())).await;
    h.enqueue("q", 0.0, 60.0, 1);
    h.run(&controller, 0.0, 300.0).await;
    assert_eq!((h.launches("a"), h.world.alive()), (1, 1));

    // Down for an hour, with the instance long past its idle timeout and
    // new work arriving.
    h.queue.set_reachable(false);
    h.enqueue("q", 3500.0, 600.0, 3);
    let down = h.run(&controller, 300.0, 3600.0 + 300.0).await;
    assert_eq!((h.launches("a"), h.terminations("a")), (1, 0));
    assert!(down.iter().all(|r| r.observation_error.is_some() && r.actions.is_empty()));

    // Back: the loop picks up by itself.
    h.queue.set_reachable(true);
    let back = h.tick_at(&controller, 3900.0).await;
    assert!(back.observation_error.is_none());
    assert_eq!(h.launches("a"), 1 + 2, "the idle instance takes one task, two more launch: {:#?}", back.plan);
    assert_eq!(h.killed_by_termination(), 0);
}

/// Guard: dry-run records the plan and acts on nothing (controller `act`;
/// Nomad #845 let actions bypass dry-run).
#[tokio::test]
async fn dry_run_records_the_plan_and_leaves_the_cloud_untouched() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 5)]);
    let store = Arc::new(MemoryStore::default());
    let mut config = h.config.clone();
    config.dry_run = true;
    let controller = h.controller_with(Arc::new(h.queue.clone()), store.clone(), config).await;
    h.enqueue("q", 0.0, 60.0, 2);

    h.run(&controller, 0.0, 120.0).await;
    assert_eq!(h.launches("a"), 0);
    assert_eq!(h.world.alive(), 0);
    let journal = store.journal(&JournalQuery::default()).await.unwrap();
    let last = &journal[0];
    assert!(last.dry_run);
    assert_eq!(last.plan.launch_count("a"), 2, "{:#?}", last.plan);
    assert_eq!(last.actions.len(), 2);
    assert!(last.actions.iter().all(|a| matches!(a, Action::Launch { outcome: Outcome::Skipped, instance: None, .. })));
}

/// Guard: a launch failure is recorded and shown to the policies in the next
/// snapshot, so scale-up falls back from spot to on-demand on the next tick
/// (controller `act` → `HostState::failures`; prior-art #6, #7, Karpenter
/// #5789).
#[tokio::test]
async fn spot_capacity_failure_falls_back_to_on_demand_on_the_next_tick() {
    let outage = vec![Outage { from_secs: 0.0, to_secs: 3600.0, error: OutageError::Capacity }];
    let spot = Res {
        market: Market::Spot,
        sim: SimResourceSettings { capacity_outages: outage, ..Default::default() },
        ..res("spot", 5)
    };
    let h = Harness::new(&[("gpu", &["spot", "on-demand"])], vec![spot, res("on-demand", 5)]);
    let controller = h.controller(Arc::new(MemoryStore::default())).await;
    h.enqueue("gpu", 0.0, 600.0, 2);

    let first = h.tick_at(&controller, 0.0).await;
    assert!(
        first
            .actions
            .iter()
            .all(|a| matches!(a, Action::Launch { resource, outcome: Outcome::Failed(_), .. } if resource == "spot"))
    );
    let second = h.tick_at(&controller, POLL_SECS).await;
    assert_eq!(second.plan.launch_count("spot"), 0, "{:#?}", second.plan);
    assert_eq!(h.launches("on-demand"), 2);
    // Within the 300 s cool-off, nothing tries spot again, and the work runs.
    let rest = h.run(&controller, 2.0 * POLL_SECS, 290.0).await;
    assert!(rest.iter().all(|r| r.plan.launch_count("spot") == 0));
    assert!(h.queue.tasks().iter().all(|t| t.first_started.as_ref().is_some_and(|(_, w)| w.contains(":on-demand:"))));
}

/// Wraps the simulated queue server and leaves out the workers in `hidden`,
/// as a ClearML server does once an agent's heartbeat lapses.
struct HidesWorkers {
    queue: SimQueue,
    hidden: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl HidesWorkers {
    fn shown(&self, mut workers: Vec<Worker>) -> Vec<Worker> {
        let hidden = self.hidden.lock().unwrap();
        workers.retain(|w| !hidden.contains(&w.id));
        workers
    }
}

#[async_trait::async_trait]
impl QueueSource for HidesWorkers {
    async fn observe(&self, queues: &[String]) -> Result<QueueObservation, SourceError> {
        let mut observed = self.queue.observe(queues).await?;
        observed.workers = self.shown(observed.workers);
        Ok(observed)
    }
    async fn unregister_worker(&self, worker_id: &str) -> Result<(), SourceError> {
        self.queue.unregister_worker(worker_id).await
    }
    async fn workers(&self) -> Result<Vec<Worker>, SourceError> {
        Ok(self.shown(self.queue.workers().await?))
    }
}

/// Guard: a machine whose worker registered and then went missing counts as
/// booting again *from when it went missing* (controller `build_snapshot`,
/// `HostState::worker_lost_since`). Read from its launch time instead, a
/// long-running busy machine whose heartbeat lapses for one tick is killed
/// at once as a boot timeout, task and all.
#[tokio::test]
async fn a_busy_machine_whose_worker_lapses_gets_a_full_spin_up_timeout_to_come_back() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 3)]);
    let source = Arc::new(HidesWorkers { queue: h.queue.clone(), hidden: Default::default() });
    let controller = h.controller_with(source.clone(), Arc::new(MemoryStore::default()), h.config.clone()).await;
    h.enqueue("q", 0.0, 4.0 * 3600.0, 1);
    // Launch, boot (90 s), then run the task well past the spin-up timeout (900 s).
    h.run(&controller, 0.0, 1200.0).await;
    assert_eq!(h.launches("a"), 1);
    let worker = h.queue.worker_ids().pop().expect("the agent registered");

    // The heartbeat lapses for five minutes, then the worker is back.
    source.hidden.lock().unwrap().insert(worker.clone());
    h.run(&controller, 1200.0, 1500.0).await;
    source.hidden.lock().unwrap().clear();
    h.run(&controller, 1500.0, 1800.0).await;
    assert_eq!((h.terminations("a"), h.killed_by_termination()), (0, 0), "killed during a lapse");
    assert_eq!(controller.host_state().await.worker_lost_since.len(), 0);

    // Gone for good: terminated one spin-up timeout after it went missing,
    // not before, and not left running forever either.
    source.hidden.lock().unwrap().insert(worker);
    h.run(&controller, 1800.0, 1800.0 + 880.0).await;
    assert_eq!(h.terminations("a"), 0, "terminated before its spin-up timeout from going missing");
    h.run(&controller, 1800.0 + 880.0, 1800.0 + 960.0).await;
    assert_eq!(h.terminations("a"), 1, "a machine whose worker never came back must not run on");
    // It had booted: its end says nothing about the image, so it must not
    // count towards spin-up-timeout's boot breaker.
    let failures = controller.host_state().await.failures;
    assert!(
        !failures.is_empty() && failures.iter().all(|f| f.kind != flockd_core::FailureKind::BootTimeout),
        "{failures:?}"
    );
}

/// Guard: a shutdown that arrived before the loop started (a SIGTERM during
/// start-up) stops it before the first tick, not after a tick that launches
/// (controller `run`).
#[tokio::test]
async fn a_shutdown_signalled_before_the_loop_starts_runs_no_tick() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 3)]);
    let controller = h.controller(Arc::new(MemoryStore::default())).await;
    h.enqueue("q", 0.0, 60.0, 1);
    h.at(0.0);
    controller.run(Duration::from_secs(10), async {}).await;
    assert_eq!(h.launches("a"), 0);
    assert_eq!(controller.host_state().await.tick, 0);
}

/// Guard: a machine that powered itself off (the bootstrap does when its
/// agent exits) is deleted by the host (controller `delete_stopped`);
/// otherwise it keeps its disks and a slot forever, waited on as "stopping".
#[tokio::test]
async fn a_machine_that_powered_itself_off_is_deleted() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 3)]);
    let controller = h.controller(Arc::new(MemoryStore::default())).await;
    h.enqueue("q", 0.0, 3600.0, 1);
    h.run(&controller, 0.0, 200.0).await;
    let (snapshot, _) = controller.last().unwrap();
    let id = snapshot.instances[0].id.clone();

    h.world.power_off(&id);
    let record = h.tick_at(&controller, 200.0).await;
    assert!(
        terminations_of(&record).contains(&(id.as_str(), &Outcome::Done)),
        "the stopped machine was not deleted: {record:#?}"
    );
    assert_eq!(h.terminations("a"), 1);
    // Its task went back to the queue, and a new machine takes it.
    assert_eq!(h.launches("a"), 2, "{:#?}", record.plan);
    h.run(&controller, 210.0, 400.0).await;
    assert_eq!((h.terminations("a"), h.world.alive()), (1, 1));
}

/// Guard: machines of a resource dropped from the config are left alone but
/// still count against the global max (guardrails `unmanaged`), and their
/// live workers are not taken for zombies and unregistered.
#[tokio::test]
async fn machines_of_a_resource_dropped_from_the_config_still_count_and_keep_their_workers() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 5), res("b", 5)]);
    let mut config = h.config.clone();
    config.limits.max_instances = 3;
    h.enqueue("q", 0.0, 3600.0, 2);
    let first = h.controller_with(Arc::new(h.queue.clone()), Arc::new(MemoryStore::default()), config.clone()).await;
    h.run(&first, 0.0, 200.0).await;
    assert_eq!(h.launches("a"), 2);
    drop(first);

    // The operator replaces resource a by b and restarts.
    config.queues = vec![QueueSpec { name: "q".into(), resources: vec!["b".into()] }];
    config.resources.retain(|r| r.name == "b");
    let second = h.controller_with(Arc::new(h.queue.clone()), Arc::new(MemoryStore::default()), config).await;
    h.enqueue("q", 200.0, 3600.0, 5);
    let records = h.run(&second, 200.0, 300.0).await;
    assert_eq!(h.launches("b"), 1, "the two machines of a leave room for one: {:#?}", records[0].clamps);
    assert!(records.iter().all(|r| r.unregistered.is_empty()), "{:?}", records[0].unregistered);
    assert_eq!(h.queue.worker_ids().iter().filter(|w| w.contains(":a:")).count(), 2);
    assert_eq!((h.terminations("a"), h.killed_by_termination()), (0, 0));
}

/// A store whose saves never land: flockd killed after acting and before
/// every tick's save.
#[derive(Default)]
struct LosesEverySave(MemoryStore);

#[async_trait::async_trait]
impl StateStore for LosesEverySave {
    async fn load(&self) -> anyhow::Result<flockd_core::store::Records> {
        self.0.load().await
    }
    async fn write(&self, _: &[flockd_core::store::StateChange]) -> anyhow::Result<()> {
        Ok(())
    }
    async fn append(&self, record: &TickRecord) -> anyhow::Result<()> {
        self.0.append(record).await
    }
    async fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
        self.0.journal(query).await
    }
}

/// Guard: launch keys stay unique when a restart replays a tick number whose
/// save was lost (controller `act`: the key carries the tick's time). A
/// reused key makes the cloud hand back the earlier launch's machine (EC2
/// ClientToken), so nothing new starts.
#[tokio::test]
async fn a_restart_that_lost_its_last_save_still_launches_under_new_keys() {
    let h = Harness::new(&[("q", &["a"])], vec![res("a", 5), res("b", 5)]);
    let store = Arc::new(LosesEverySave::default());
    h.enqueue("q", 0.0, 60.0, 1);
    let first = h.controller(store.clone()).await;
    let record = h.tick_at(&first, 0.0).await;
    assert_eq!(h.launches("a"), 1);
    drop(first);
    // The machine is gone by the restart, and the queue is now served by b.
    for action in &record.actions {
        if let Action::Launch { instance: Some(id), .. } = action {
            h.providers["sim"].terminate(id).await.unwrap();
        }
    }
    let mut config = h.config.clone();
    config.queues = vec![QueueSpec { name: "q".into(), resources: vec!["b".into()] }];
    let second = h.controller_with(Arc::new(h.queue.clone()), store, config).await;
    let record = h.tick_at(&second, 10.0).await;
    assert_eq!(h.launches("b"), 1, "the launch reused the lost tick's key: {:#?}", record.actions);
}

/// Guard: the host's guardrails hold whatever the chain asks (controller
/// `tick_locked` → `guardrails::clamp`): a decider that wants a million
/// machines of each resource and every running machine terminated gets the
/// per-resource max, the global max and the cost cap, and busy machines stay.
#[tokio::test]
async fn guardrails_hold_against_a_greedy_chain() {
    let mut h = Harness::new(&[("q", &["a", "b"])], vec![res("a", 3), res("b", 10)]);
    h.config.limits = HardLimits { max_instances: 5, max_cost_per_hour: 4.0, ..Default::default() };
    h.decider = Arc::new(|s: &flockd_core::Snapshot| flockd_core::Plan {
        launches: ["a", "b"]
            .iter()
            .map(|r| flockd_core::Launch { resource: r.to_string(), count: 1_000_000, reason: "greedy".into() })
            .collect(),
        terminations: s
            .instances
            .iter()
            .filter(|i| i.state == flockd_core::InstanceState::Running)
            .map(|i| flockd_core::Termination {
                instance: i.id.clone(),
                cause: flockd_core::TerminationCause::Other,
                reason: "greedy".into(),
            })
            .collect(),
    });
    let controller = h.controller(Arc::new(MemoryStore::default())).await;
    h.enqueue("q", 0.0, 3600.0, 1);
    let records = h.run(&controller, 0.0, 600.0).await;

    // Every machine costs 1/h: the 4/h cap is the tightest limit.
    assert_eq!(h.world.peak_instances(), 4);
    assert!(h.launches("a") >= 3 && h.world.stats(h.clock.now())["a"].peak_instances <= 3);
    // The task started and was never killed under it, though every tick
    // asked for its machine's termination.
    assert!(h.queue.tasks()[0].first_started.is_some());
    assert_eq!(h.killed_by_termination(), 0);
    assert!(records.iter().any(|r| r.clamps.iter().any(|c| c.contains("running a task"))));
}

/// A cloud whose listing lags behind its launches while `hang` is set: the
/// machine is made, its answer never comes (the caller dies or gives up
/// first) and it stays unlisted until `reveal`.
struct LostAnswers {
    inner: Arc<dyn CloudProvider>,
    hang: AtomicBool,
    unlisted: std::sync::Mutex<Vec<String>>,
}

impl LostAnswers {
    fn new(inner: Arc<dyn CloudProvider>) -> Arc<Self> {
        Arc::new(LostAnswers { inner, hang: AtomicBool::new(true), unlisted: Default::default() })
    }

    fn answer_again(&self) {
        self.hang.store(false, Ordering::Relaxed);
    }

    fn reveal(&self) {
        self.unlisted.lock().unwrap().clear();
    }
}

#[async_trait::async_trait]
impl CloudProvider for LostAnswers {
    async fn launch(&self, request: &flockd_core::LaunchRequest) -> Result<flockd_core::CloudInstance, ProviderError> {
        let made = self.inner.launch(request).await?;
        if !self.hang.load(Ordering::Relaxed) {
            return Ok(made);
        }
        self.unlisted.lock().unwrap().push(made.id);
        std::future::pending().await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<flockd_core::CloudInstance>, ProviderError> {
        let unlisted = self.unlisted.lock().unwrap().clone();
        Ok(self.inner.list(cluster).await?.into_iter().filter(|i| !unlisted.contains(&i.id)).collect())
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.inner.terminate(instance_id).await
    }
}

/// Guard: a launch whose answer never came counts against the caps until
/// the cloud lists a machine with its key (controller `act` saves
/// `launching` before calling the cloud, `build_snapshot` counts it). Here
/// flockd is killed while the cloud makes its machines, and the listing
/// lags, so the restarted flockd's first look shows none of them.
#[tokio::test]
async fn launches_cut_off_by_a_crash_count_against_the_caps_after_the_restart() {
    let mut h = Harness::new(&[("q", &["a"])], vec![res("a", 2)]);
    let cloud = LostAnswers::new(h.providers["sim"].clone());
    h.providers.insert("sim".into(), cloud.clone());
    let store = Arc::new(MemoryStore::default());
    h.enqueue("q", 0.0, 600.0, 3);

    let first = h.controller(store.clone()).await;
    h.at(0.0);
    // Killed mid-launch: the tick never ends, so its own save never happens.
    assert!(tokio::time::timeout(Duration::from_millis(300), first.tick()).await.is_err());
    drop(first);
    let made = h.launches("a");
    assert!(made >= 1, "the first flockd launched nothing");

    let unanswered = flockd_core::store::load_state(&*store).await.unwrap().launching;
    assert_eq!(unanswered.len(), made as usize, "{unanswered:?}");

    // The restarted flockd asks again under the same keys, and the cloud
    // hands back the machines it made.
    cloud.answer_again();
    let second = h.controller(store.clone()).await;
    let record = h.tick_at(&second, 10.0).await;
    assert_eq!(h.launches("a"), 2, "past a's max of 2 (first flockd made {made}): {:#?}", record.actions);
    let asked_again: Vec<&str> = record
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Launch { key, outcome: Outcome::Done, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(asked_again, unanswered.keys().map(String::as_str).collect::<Vec<_>>());
    assert!(second.host_state().await.launching.is_empty());

    cloud.reveal();
    h.run(&second, 20.0, 100.0).await;
    assert_eq!(h.launches("a"), 2);
}

/// Guard: the same when flockd lives on and gives up waiting (the action
/// timeout): the launch that timed out stays counted.
#[tokio::test]
async fn a_launch_that_timed_out_counts_against_the_caps_until_listed() {
    let mut h = Harness::new(&[("q", &["a", "b"])], vec![res("a", 1), res("b", 5)]);
    let cloud = LostAnswers::new(h.providers["sim"].clone());
    h.providers.insert("sim".into(), cloud.clone());
    h.config.action_timeout = Duration::from_millis(50);
    h.config.limits.max_instances = 1;
    // Asks for everything every tick, whatever failed before; b first, so
    // that b's room is judged with a's unanswered launch counted.
    h.decider = Arc::new(|s: &flockd_core::Snapshot| flockd_core::Plan {
        launches: if s.now == T0 { &["a"][..] } else { &["b", "a"][..] }
            .iter()
            .map(|r| flockd_core::Launch { resource: r.to_string(), count: 5, reason: "greedy".into() })
            .collect(),
        terminations: vec![],
    });
    let controller = h.controller(Arc::new(MemoryStore::default())).await;

    let record = h.tick_at(&controller, 0.0).await;
    assert!(record.actions.iter().all(|a| matches!(a, Action::Launch { outcome: Outcome::Failed(_), .. })));
    assert_eq!(h.launches("a"), 1);
    // The cloud is slow to list the machine: until it does, a's launch is
    // asked again under its key, never as a new one, and it fills the
    // global max, so b gets nothing.
    cloud.answer_again();
    let records = h.run(&controller, 10.0, 50.0).await;
    assert_eq!((h.launches("a"), h.launches("b")), (1, 0), "past the max of 1: {:#?}", records[0].actions);
    assert!(records.iter().all(|r| r.clamps.iter().any(|c| c.contains("max-instances"))), "{:?}", records[0].clamps);
}
