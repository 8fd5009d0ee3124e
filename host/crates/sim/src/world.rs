//! The simulated cloud: machines that boot after a delay, fail to launch in
//! outages, get reclaimed, and run an agent against [`Agents`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::queue::Agents;
use crate::settings::{OutageError, SimProviderSettings, SimResourceSettings};
use flockd_core::Clock;
use flockd_core::Millis;
use flockd_core::naming;
use flockd_core::{CloudInstance, CloudProvider, CloudState, LaunchRequest, ProviderError};

/// What happened to one resource's machines so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceStats {
    /// Machine time of every instance, alive ones counted up to the time asked.
    pub instance_ms: u64,
    /// Machine time with the agent registered and no task: what the idle
    /// rules trade against the next task's wait. Open spans count up to the
    /// time asked.
    pub idle_ms: u64,
    pub launches: u32,
    /// Launches refused (outages).
    pub launch_failures: u32,
    /// Instances terminated on flockd's request.
    pub terminations: u32,
    /// Instances the cloud reclaimed (spot interruptions).
    pub reclaimed: u32,
    pub peak_instances: u32,
    pub alive: u32,
    pub tasks_finished: u32,
    /// Tasks sent back to their queue because the machine died under them.
    pub tasks_interrupted: u32,
    /// Of those, the ones whose machine flockd itself terminated: a guard failed.
    pub tasks_killed_by_termination: u32,
}

/// The simulated world: every simulated provider's machines and their agents,
/// moved forward by [`SimWorld::step`]. Handles: [`SimWorld::cloud`].
pub struct SimWorld {
    clock: Arc<dyn Clock>,
    agents: Arc<dyn Agents>,
    origin: Millis,
    state: Mutex<World>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Booted(String),
    TaskDone { instance: String, task: String },
    Reclaim(String),
    Wave { provider: String, resource: String },
}

enum Agent {
    Booting,
    /// Never registers (`never-boots`).
    Broken,
    Idle,
    Busy(String),
    /// The machine powered off (its agent exited): listed as stopped, still
    /// billing, until terminated.
    Off,
}

struct SimInstance {
    provider: String,
    resource: String,
    cluster: String,
    queues: Vec<String>,
    worker: String,
    launched_at: Millis,
    launch_key: String,
    agent: Agent,
    /// When the agent last became free (`Agent::Idle`).
    idle_since: Option<Millis>,
}

struct ResourceSim {
    settings: SimResourceSettings,
    rng: StdRng,
}

#[derive(Default)]
struct World {
    /// The time the world has been stepped to.
    now: Millis,
    next_id: u64,
    seq: u64,
    resources: BTreeMap<(String, String), ResourceSim>,
    instances: BTreeMap<String, SimInstance>,
    launched_by_key: HashMap<String, CloudInstance>,
    events: BinaryHeap<Reverse<(Millis, u64, Event)>>,
    idle: BTreeSet<String>,
    stats: BTreeMap<String, ResourceStats>,
    /// Alive instances at their peak, all resources together.
    peak_total: u32,
    list_fails: bool,
}

impl World {
    fn schedule(&mut self, at: Millis, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    fn stats(&mut self, resource: &str) -> &mut ResourceStats {
        self.stats.entry(resource.to_string()).or_default()
    }

    /// The instance's agent is free from `now`.
    fn idle_from(&mut self, id: &str, now: Millis) {
        if let Some(i) = self.instances.get_mut(id) {
            i.idle_since.get_or_insert(now);
        }
        self.idle.insert(id.to_string());
    }

    /// The instance's agent stops being free at `now` (a task, power-off or exit).
    fn idle_until(&mut self, id: &str, now: Millis) {
        self.idle.remove(id);
        let Some(i) = self.instances.get_mut(id) else { return };
        if let Some(since) = i.idle_since.take() {
            let resource = i.resource.clone();
            self.stats(&resource).idle_ms += now.saturating_sub(since);
        }
    }

    fn alive_total(&self) -> u32 {
        self.instances.len() as u32
    }
}

/// Why an instance leaves the world.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Exit {
    Terminated,
    Reclaimed,
}

impl SimWorld {
    /// An empty world whose time starts at `clock.now()` (outage and
    /// interruption times count from there) and whose machines' agents act
    /// through `agents`.
    pub fn new(clock: Arc<dyn Clock>, agents: Arc<dyn Agents>) -> Arc<SimWorld> {
        let origin = clock.now();
        Arc::new(SimWorld { clock, agents, origin, state: Mutex::new(World { now: origin, ..Default::default() }) })
    }

    /// When the world began.
    pub fn origin(&self) -> Millis {
        self.origin
    }

    /// A [`CloudProvider`] handle for provider `name` with its resources'
    /// settings (a resource it is asked to launch that is not listed gets
    /// [`SimResourceSettings::default`]). Errors name the bad setting.
    pub fn cloud(
        self: &Arc<Self>,
        name: &str,
        provider: &SimProviderSettings,
        resources: &BTreeMap<String, SimResourceSettings>,
    ) -> Result<SimCloud, String> {
        let mut w = self.state.lock().unwrap();
        for (resource, settings) in resources {
            settings.validate().map_err(|e| format!("[resource.{resource}.simulated] {e}"))?;
            for at in &settings.spot_interruptions_at_secs {
                let t = self.origin + secs_to_ms(*at);
                w.schedule(t, Event::Wave { provider: name.into(), resource: resource.clone() });
            }
            w.resources.insert(
                (name.into(), resource.clone()),
                ResourceSim::new(provider.seed, name, resource, settings.clone()),
            );
        }
        Ok(SimCloud { world: self.clone(), provider: name.to_string(), seed: provider.seed })
    }

    /// Runs the world forward to the clock's now: boots complete, agents
    /// take and finish tasks, the cloud reclaims machines, each at its own
    /// moment in order. Time never goes back; a step to the same moment
    /// only hands pending work to idle agents.
    pub fn step(&self) {
        let now = self.clock.now();
        let mut w = self.state.lock().unwrap();
        let now = now.max(w.now);
        loop {
            let next_event = w.events.peek().map(|Reverse((t, _, _))| *t).filter(|t| *t <= now);
            let next_arrival = self.agents.next_arrival_after(w.now).filter(|t| *t <= now);
            match (next_event, next_arrival) {
                (Some(te), a) if a.is_none_or(|ta| te <= ta) => {
                    let Reverse((t, _, event)) = w.events.pop().unwrap();
                    w.now = w.now.max(t);
                    self.handle(&mut w, event);
                }
                (_, Some(ta)) => {
                    w.now = ta;
                    self.offer_work(&mut w);
                }
                (None, None) => break,
                _ => unreachable!(),
            }
        }
        w.now = now;
        self.offer_work(&mut w);
    }

    /// Steps the world every `every` on the runtime this is called from
    /// (real-time mode: build the world on a [`flockd_core::SystemClock`]). Abort
    /// the handle to stop.
    pub fn spawn_stepper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let world = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                world.step();
            }
        })
    }

    /// Per-resource figures, alive machines' time counted up to `now`.
    pub fn stats(&self, now: Millis) -> BTreeMap<String, ResourceStats> {
        let w = self.state.lock().unwrap();
        let mut stats = w.stats.clone();
        for i in w.instances.values() {
            let s = stats.entry(i.resource.clone()).or_default();
            s.instance_ms += now.saturating_sub(i.launched_at);
            s.idle_ms += i.idle_since.map_or(0, |since| now.saturating_sub(since));
        }
        stats
    }

    /// Most instances alive at once, all resources together.
    pub fn peak_instances(&self) -> u32 {
        self.state.lock().unwrap().peak_total
    }

    /// Instances alive now (booting or running).
    pub fn alive(&self) -> usize {
        self.state.lock().unwrap().instances.len()
    }

    /// Instances alive now, per resource (only those with any).
    pub fn alive_by_resource(&self) -> BTreeMap<String, u32> {
        let w = self.state.lock().unwrap();
        w.stats.iter().filter(|(_, s)| s.alive > 0).map(|(r, s)| (r.clone(), s.alive)).collect()
    }

    /// Makes every provider's `list` fail (`true`) or work again.
    pub fn set_listing_fails(&self, fails: bool) {
        self.state.lock().unwrap().list_fails = fails;
    }

    /// The agent on `instance_id` exits and the machine powers itself off,
    /// as the bootstrap does: the worker unregisters (a task it ran goes back
    /// to its queue), the cloud lists the machine as stopped, and it bills
    /// until terminated.
    pub fn power_off(&self, instance_id: &str) {
        let mut w = self.state.lock().unwrap();
        let now = w.now.max(self.clock.now());
        w.idle_until(instance_id, now);
        let Some(i) = w.instances.get_mut(instance_id) else { return };
        let was = std::mem::replace(&mut i.agent, Agent::Off);
        if let Agent::Busy(task) = &was {
            self.agents.requeue(&i.worker, task, now);
        }
        if matches!(was, Agent::Idle | Agent::Busy(_)) {
            self.agents.unregister(&i.worker, now);
        }
        if let Agent::Busy(_) = was {
            let resource = i.resource.clone();
            w.stats(&resource).tasks_interrupted += 1;
        }
        self.offer_work(&mut w);
    }

    /// Reclaims an instance now, as a spot interruption would.
    pub fn reclaim(&self, instance_id: &str) {
        let mut w = self.state.lock().unwrap();
        let now = w.now.max(self.clock.now());
        self.remove(&mut w, instance_id, Exit::Reclaimed, now);
        self.offer_work(&mut w);
    }

    fn handle(&self, w: &mut World, event: Event) {
        match event {
            Event::Booted(id) => {
                let now = w.now;
                let Some(i) = w.instances.get_mut(&id) else { return };
                if !matches!(i.agent, Agent::Booting) {
                    return;
                }
                i.agent = Agent::Idle;
                self.agents.register(&i.worker, &i.queues, now);
                w.idle_from(&id, now);
                self.try_pull(w, &id);
            }
            Event::TaskDone { instance, task } => {
                let now = w.now;
                let Some(i) = w.instances.get_mut(&instance) else { return };
                if !matches!(&i.agent, Agent::Busy(t) if *t == task) {
                    return;
                }
                i.agent = Agent::Idle;
                self.agents.finish(&i.worker, &task, now);
                let resource = i.resource.clone();
                w.stats(&resource).tasks_finished += 1;
                w.idle_from(&instance, now);
                self.try_pull(w, &instance);
            }
            Event::Reclaim(id) => {
                self.remove(w, &id, Exit::Reclaimed, w.now);
                self.offer_work(w);
            }
            Event::Wave { provider, resource } => {
                let ids: Vec<String> = w
                    .instances
                    .iter()
                    .filter(|(_, i)| i.provider == provider && i.resource == resource)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ids {
                    self.remove(w, &id, Exit::Reclaimed, w.now);
                }
                self.offer_work(w);
            }
        }
    }

    /// Idle agents, in instance order, ask for work.
    fn offer_work(&self, w: &mut World) {
        let idle: Vec<String> = w.idle.iter().cloned().collect();
        for id in idle {
            self.try_pull(w, &id);
        }
    }

    fn try_pull(&self, w: &mut World, id: &str) {
        let now = w.now;
        let Some(i) = w.instances.get_mut(id) else { return };
        if !matches!(i.agent, Agent::Idle) {
            return;
        }
        let Some(task) = self.agents.pull(&i.worker, &i.queues, now) else { return };
        i.agent = Agent::Busy(task.id.clone());
        w.idle_until(id, now);
        w.schedule(now + task.duration_ms, Event::TaskDone { instance: id.to_string(), task: task.id });
    }

    fn remove(&self, w: &mut World, id: &str, exit: Exit, now: Millis) -> bool {
        w.idle_until(id, now);
        let Some(i) = w.instances.remove(id) else { return false };
        let stats = w.stats(&i.resource);
        stats.instance_ms += now.saturating_sub(i.launched_at);
        stats.alive -= 1;
        match exit {
            Exit::Terminated => stats.terminations += 1,
            Exit::Reclaimed => stats.reclaimed += 1,
        }
        if let Agent::Busy(task) = &i.agent {
            stats.tasks_interrupted += 1;
            if exit == Exit::Terminated {
                stats.tasks_killed_by_termination += 1;
            }
            self.agents.requeue(&i.worker, task, now);
        }
        if matches!(i.agent, Agent::Idle | Agent::Busy(_)) {
            self.agents.unregister(&i.worker, now);
        }
        true
    }

    fn launch(&self, provider: &str, seed: u64, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        let now = self.clock.now();
        let mut w = self.state.lock().unwrap();
        if let Some(existing) = w.launched_by_key.get(&request.idempotency_key) {
            return Ok(existing.clone());
        }
        let key = (provider.to_string(), request.resource.clone());
        let resource = w
            .resources
            .entry(key)
            .or_insert_with(|| ResourceSim::new(seed, provider, &request.resource, SimResourceSettings::default()));
        let since_origin = now.saturating_sub(self.origin);
        if let Some(outage) = resource
            .settings
            .capacity_outages
            .iter()
            .find(|o| secs_to_ms(o.from_secs) <= since_origin && since_origin < secs_to_ms(o.to_secs))
        {
            let message =
                format!("simulated outage of {} from {} s to {} s", request.resource, outage.from_secs, outage.to_secs);
            let error = match outage.error {
                OutageError::Capacity => ProviderError::Capacity(message),
                OutageError::Quota => ProviderError::Quota(message),
            };
            w.stats(&request.resource).launch_failures += 1;
            return Err(error);
        }
        let boot_ms = resource.boot_ms();
        let reclaim_after = resource.reclaim_after_ms();
        let never_boots = resource.settings.never_boots;

        w.next_id += 1;
        let id = format!("sim-{:06}", w.next_id);
        let worker = naming::worker_id(&request.cluster, &request.resource, &id);
        w.instances.insert(
            id.clone(),
            SimInstance {
                provider: provider.to_string(),
                resource: request.resource.clone(),
                cluster: request.cluster.clone(),
                queues: request.queues.clone(),
                worker,
                launched_at: now,
                launch_key: request.idempotency_key.clone(),
                agent: if never_boots { Agent::Broken } else { Agent::Booting },
                idle_since: None,
            },
        );
        if !never_boots {
            w.schedule(now + boot_ms, Event::Booted(id.clone()));
        }
        if let Some(after) = reclaim_after {
            w.schedule(now + after, Event::Reclaim(id.clone()));
        }
        let stats = w.stats(&request.resource);
        stats.launches += 1;
        stats.alive += 1;
        stats.peak_instances = stats.peak_instances.max(stats.alive);
        w.peak_total = w.peak_total.max(w.alive_total());
        let instance = CloudInstance {
            id,
            resource: request.resource.clone(),
            state: CloudState::Pending,
            launched_at: now,
            launch_key: Some(request.idempotency_key.clone()),
            failure: None,
        };
        w.launched_by_key.insert(request.idempotency_key.clone(), instance.clone());
        Ok(instance)
    }

    fn list(&self, provider: &str, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        let w = self.state.lock().unwrap();
        if w.list_fails {
            return Err(ProviderError::Other("simulated outage of the cloud API".into()));
        }
        Ok(w.instances
            .iter()
            .filter(|(_, i)| i.provider == provider && i.cluster == cluster)
            .map(|(id, i)| CloudInstance {
                id: id.clone(),
                resource: i.resource.clone(),
                state: match i.agent {
                    Agent::Booting | Agent::Broken => CloudState::Pending,
                    Agent::Idle | Agent::Busy(_) => CloudState::Running,
                    Agent::Off => CloudState::Stopped,
                },
                launched_at: i.launched_at,
                launch_key: Some(i.launch_key.clone()),
                failure: None,
            })
            .collect())
    }

    fn terminate(&self, instance_id: &str) {
        let mut w = self.state.lock().unwrap();
        let now = w.now.max(self.clock.now());
        if self.remove(&mut w, instance_id, Exit::Terminated, now) {
            self.offer_work(&mut w);
        }
    }
}

impl ResourceSim {
    fn new(seed: u64, provider: &str, resource: &str, settings: SimResourceSettings) -> Self {
        // One stream per resource, so one resource's launches never shift
        // another's draws.
        let digest = Sha256::digest(format!("{seed}/{provider}/{resource}").as_bytes());
        let rng = StdRng::from_seed(digest.into());
        ResourceSim { settings, rng }
    }

    fn boot_ms(&mut self) -> Millis {
        let jitter = if self.settings.boot_jitter_secs > 0.0 {
            self.rng.random_range(0.0..=self.settings.boot_jitter_secs)
        } else {
            0.0
        };
        secs_to_ms(self.settings.boot_secs + jitter)
    }

    /// Exponential lifetime for a Poisson reclaim rate.
    fn reclaim_after_ms(&mut self) -> Option<Millis> {
        let rate = self.settings.spot_interruptions_per_hour;
        if rate <= 0.0 {
            return None;
        }
        let u: f64 = self.rng.random();
        let hours = -(1.0 - u).ln() / rate;
        Some(secs_to_ms(hours * 3600.0).max(1))
    }
}

fn secs_to_ms(secs: f64) -> Millis {
    (secs * 1000.0).round() as Millis
}

/// One simulated provider's view of the world: a [`CloudProvider`].
#[derive(Clone)]
pub struct SimCloud {
    world: Arc<SimWorld>,
    provider: String,
    seed: u64,
}

impl SimCloud {
    pub fn world(&self) -> &Arc<SimWorld> {
        &self.world
    }
}

#[async_trait]
impl CloudProvider for SimCloud {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        self.world.launch(&self.provider, self.seed, request)
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        self.world.list(&self.provider, cluster)
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.world.terminate(instance_id);
        Ok(())
    }
}
