//! One tick: observe → snapshot → decide → guardrails → act → record.
//!
//! The controller owns no truth about what exists: every tick lists the
//! cloud by flockd's cluster tag and adopts what it finds, so a crash, a
//! restart or a lost response can never leave a machine untracked. What
//! the cloud cannot tell (idle timers, failure history) is in the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::clock::Clock;
use crate::decider::Decider;
use crate::guardrails::{self, HardLimits, Unlisted};
use crate::journal::{Action, Outcome, QueueLine, TickRecord};
use crate::model::*;
use crate::naming;
use crate::provider::{CloudInstance, CloudProvider, CloudState, LaunchRequest, ProviderError};
use crate::queue_source::{QueueObservation, QueueSource, Worker};
use crate::store::{HostState, LaunchIntent, RecentLaunch, StateStore};

#[derive(Clone, Debug, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    /// Resources that serve it, most preferred first.
    pub resources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResourceSpec {
    pub name: String,
    /// Key into the controller's providers.
    pub provider: String,
    pub max_instances: u32,
    pub price_per_hour: f64,
    pub market: Market,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ControllerConfig {
    /// Tags every machine; two flockds with different ids never touch each
    /// other's machines.
    pub cluster: String,
    pub queues: Vec<QueueSpec>,
    pub resources: Vec<ResourceSpec>,
    pub limits: HardLimits,
    /// Each observation (queue source, each provider's list) must answer
    /// within this, or the tick decides nothing.
    pub observe_timeout: Duration,
    /// How long launch and boot failures stay in the snapshot.
    pub failure_retention: Duration,
    /// Launches in flight at once.
    pub launch_concurrency: usize,
    /// A launched instance the cloud does not list yet counts as booting
    /// for this long (cloud listings are eventually consistent).
    pub launch_visibility_grace: Duration,
    /// After this long, a termination we asked for and the cloud has not
    /// carried out is asked for again.
    pub termination_retry: Duration,
    /// Terminations are dropped when the observation is older than this by
    /// the time the plan is ready.
    pub max_observation_age: Duration,
    /// One launch or terminate call may take this long; past it the call is
    /// given up (a launched machine is tagged, so the listing adopts it) and
    /// the tick goes on. Without it one hung cloud call stalls every queue.
    pub action_timeout: Duration,
    /// Record plans, act on nothing.
    pub dry_run: bool,
}

impl ControllerConfig {
    pub fn new(cluster: &str, queues: Vec<QueueSpec>, resources: Vec<ResourceSpec>, limits: HardLimits) -> Self {
        ControllerConfig {
            cluster: cluster.into(),
            queues,
            resources,
            limits,
            observe_timeout: Duration::from_secs(10),
            // Long enough for spin-up-timeout's breaker to still count a
            // broken image's boot failures after its backoff (3 × 15 min
            // timeouts + 30 min backoff > 1 h): with 1 h, the oldest drop out
            // and the breaker closes early, doubling the churn.
            failure_retention: Duration::from_secs(6 * 3600),
            launch_concurrency: 8,
            launch_visibility_grace: Duration::from_secs(180),
            termination_retry: Duration::from_secs(300),
            max_observation_age: Duration::from_secs(30),
            action_timeout: Duration::from_secs(300),
            dry_run: false,
        }
    }

    /// Every queue a resource serves: those that list it.
    fn queues_of(&self, resource: &str) -> Vec<String> {
        self.queues.iter().filter(|q| q.resources.iter().any(|r| r == resource)).map(|q| q.name.clone()).collect()
    }
}

/// Everything a tick reads from outside, bundled.
pub struct Seams {
    pub source: Arc<dyn QueueSource>,
    /// Provider name → provider.
    pub providers: BTreeMap<String, Arc<dyn CloudProvider>>,
    pub decider: Arc<dyn Decider>,
    pub store: Arc<dyn StateStore>,
    pub clock: Arc<dyn Clock>,
}

pub struct Controller {
    config: ControllerConfig,
    seams: Seams,
    state: tokio::sync::Mutex<HostState>,
    last: Mutex<Option<(Arc<Snapshot>, Arc<TickRecord>)>>,
    ready: AtomicBool,
    ticks: tokio::sync::broadcast::Sender<TickReport>,
}

/// What a finished tick hands to observers (metrics, the dashboard).
#[derive(Clone, Debug)]
pub struct TickReport {
    /// What the policies saw; None when observation failed.
    pub snapshot: Option<Arc<Snapshot>>,
    pub record: Arc<TickRecord>,
}

/// Tick reports buffered per subscriber; one that falls further behind
/// misses the oldest (and is told so by the channel).
const TICK_REPORTS_BUFFERED: usize = 64;

/// What the observation produced, before policies see it.
struct Observed {
    queues: QueueObservation,
    instances: Vec<CloudInstance>,
}

/// The snapshot and what the host keeps to itself.
struct Built {
    snapshot: Snapshot,
    /// Machines that count against the caps but are not in the snapshot:
    /// those of a resource no longer configured (left alone) and launches
    /// whose answer never came.
    unlisted: Unlisted,
    /// Machines that powered off: the host deletes them.
    stopped: Vec<String>,
}

impl Controller {
    pub fn new(config: ControllerConfig, seams: Seams) -> anyhow::Result<Self> {
        for r in &config.resources {
            anyhow::ensure!(
                seams.providers.contains_key(&r.provider),
                "resource {:?} uses provider {:?}, which is not configured (configured: {})",
                r.name,
                r.provider,
                seams.providers.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        for q in &config.queues {
            for r in &q.resources {
                anyhow::ensure!(
                    config.resources.iter().any(|x| &x.name == r),
                    "queue {:?} lists resource {r:?}, which is not configured",
                    q.name
                );
            }
        }
        let state = seams.store.load()?;
        Ok(Controller {
            config,
            seams,
            state: tokio::sync::Mutex::new(state),
            last: Mutex::new(None),
            ready: AtomicBool::new(false),
            ticks: tokio::sync::broadcast::channel(TICK_REPORTS_BUFFERED).0,
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.seams.store
    }

    /// True once a tick has observed successfully.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The last tick's snapshot (if it observed) and record.
    pub fn last(&self) -> Option<(Arc<Snapshot>, Arc<TickRecord>)> {
        self.last.lock().unwrap().clone()
    }

    /// Every tick's report from now on, in order.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TickReport> {
        self.ticks.subscribe()
    }

    pub async fn host_state(&self) -> HostState {
        self.state.lock().await.clone()
    }

    /// Ticks every `interval` until `shutdown` resolves. A tick is never cut
    /// short: shutdown waits for cloud calls in flight, then state is saved.
    pub async fn run(&self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            // A signal that came during start-up (or a tick) stops here, before
            // another tick starts launching.
            if futures::FutureExt::now_or_never(shutdown.as_mut()).is_some() {
                break;
            }
            let started = tokio::time::Instant::now();
            self.tick().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(started + interval) => {}
            }
        }
    }

    pub async fn tick(&self) -> Arc<TickRecord> {
        let mut state = self.state.lock().await;
        state.tick += 1;
        let span = tracing::info_span!(
            "tick",
            tick = state.tick,
            launched = tracing::field::Empty,
            terminated = tracing::field::Empty,
            failed = tracing::field::Empty,
            clamps = tracing::field::Empty
        );
        self.tick_locked(&mut state).instrument(span).await
    }

    async fn tick_locked(&self, state: &mut HostState) -> Arc<TickRecord> {
        let started = Instant::now();
        let now = self.seams.clock.now();
        let mut record = TickRecord {
            tick: state.tick,
            at: now,
            snapshot_digest: None,
            observation_error: None,
            queues: Vec::new(),
            plan: Plan::default(),
            policies: Vec::new(),
            clamps: Vec::new(),
            actions: Vec::new(),
            dry_run: self.config.dry_run,
            unregistered: Vec::new(),
            micros: 0,
        };
        let built = match self.observe().await {
            Err(e) => {
                tracing::warn!("observation failed, deciding nothing this tick: {e}");
                record.observation_error = Some(e);
                None
            }
            Ok(observed) => Some(self.build_snapshot(state, observed, now, &mut record).await),
        };
        let (snapshot, unlisted, stopped) = match built {
            Some(b) => (Some(b.snapshot), b.unlisted, b.stopped),
            None => (None, Unlisted::default(), Vec::new()),
        };
        let snapshot_arc = snapshot.map(Arc::new);
        if let Some(snapshot) = &snapshot_arc {
            self.ready.store(true, Ordering::Relaxed);
            record.snapshot_digest = Some(snapshot.digest());
            record.queues =
                snapshot.queues.iter().map(|q| QueueLine { name: q.name.clone(), pending: q.pending }).collect();

            let decider = self.seams.decider.clone();
            let input = snapshot.clone();
            let decision = match tokio::task::spawn_blocking(move || decider.decide(&input)).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("the policy chain panicked; acting on nothing this tick: {e}");
                    Default::default()
                }
            };
            record.plan = decision.plan.clone();
            record.policies = decision.runs;

            // A slow decision makes the observation stale: launches may still
            // go (limits are re-checked against the same counts), but nothing
            // is terminated on an old picture.
            let fresh = self.still_fresh(now);
            let clamped = guardrails::clamp(&decision.plan, snapshot, &self.config.limits, &unlisted, fresh);
            for c in &clamped.clamps {
                tracing::info!("guardrail: {c}");
            }
            record.clamps = clamped.clamps;
            let by_id = instances_by_id(snapshot);
            self.act(state, &by_id, &clamped.plan, now, &mut record).await;
            // Launches may have taken a while: on an old picture, leave the
            // stopped machines for the next tick (someone may have restarted one).
            if self.still_fresh(now) {
                self.delete_stopped(state, &by_id, &stopped, now, &mut record).await;
            }
        }

        record.micros = started.elapsed().as_micros() as u64;
        if let Err(e) = self.seams.store.save(state) {
            tracing::error!("could not save host state: {e:#}");
        }
        if let Err(e) = self.seams.store.append(&record) {
            tracing::error!("could not append to the journal: {e:#}");
        }
        let failed = record
            .actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Launch { outcome: Outcome::Failed(_), .. }
                        | Action::Terminate { outcome: Outcome::Failed(_), .. }
                )
            })
            .count();
        tracing::Span::current()
            .record("launched", record.launched())
            .record("terminated", record.terminated())
            .record("failed", failed)
            .record("clamps", record.clamps.len());
        tracing::info!(
            launched = record.launched(),
            terminated = record.terminated(),
            clamps = record.clamps.len(),
            micros = record.micros,
            "tick done"
        );
        let record = Arc::new(record);
        let _ = self.ticks.send(TickReport { snapshot: snapshot_arc.clone(), record: record.clone() });
        let mut last = self.last.lock().unwrap();
        *last = match (snapshot_arc, last.take()) {
            (Some(s), _) => Some((s, record.clone())),
            (None, Some((s, _))) => Some((s, record.clone())),
            (None, None) => None,
        };
        record
    }

    /// Queue source and every provider in parallel, each under the timeout.
    /// Any failure fails the whole observation: half a picture is how busy
    /// machines get killed and fleets over-launched.
    async fn observe(&self) -> Result<Observed, String> {
        let timeout = self.config.observe_timeout;
        let names: Vec<String> = self.config.queues.iter().map(|q| q.name.clone()).collect();
        let queues = async {
            match tokio::time::timeout(timeout, self.seams.source.observe(&names)).await {
                Ok(Ok(o)) => Ok(o),
                Ok(Err(e)) => Err(format!("queue source: {e}")),
                Err(_) => Err(format!("queue source: no answer within {timeout:?}")),
            }
        };
        let lists = futures::future::join_all(self.seams.providers.iter().map(|(name, p)| async move {
            match tokio::time::timeout(timeout, p.list(&self.config.cluster)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(format!("provider {name}: listing instances failed: {e}")),
                Err(_) => Err(format!("provider {name}: no answer within {timeout:?}")),
            }
        }));
        let (queues, lists) = tokio::join!(queues, lists);
        let queues = queues?;
        let mut instances = Vec::new();
        for l in lists {
            instances.extend(l?.into_iter().filter(|i| i.state != CloudState::Terminated));
        }
        Ok(Observed { queues, instances })
    }

    async fn build_snapshot(
        &self,
        state: &mut HostState,
        observed: Observed,
        now: Millis,
        record: &mut TickRecord,
    ) -> Built {
        let cluster = &self.config.cluster;
        let configured: BTreeSet<&str> = self.config.resources.iter().map(|r| r.name.as_str()).collect();

        // Instances: what the cloud lists, plus our own launches it does not
        // list yet.
        let mut cloud: BTreeMap<String, CloudInstance> = BTreeMap::new();
        let mut unmanaged: BTreeSet<String> = BTreeSet::new();
        let grace = self.config.launch_visibility_grace.as_millis() as u64;
        let listed_keys: HashSet<&str> = observed.instances.iter().filter_map(|i| i.launch_key.as_deref()).collect();
        state.launching.retain(|key, l| !listed_keys.contains(key.as_str()) && now.saturating_sub(l.at) < grace);
        let mut launching: BTreeMap<String, u32> = BTreeMap::new();
        for (key, l) in &state.launching {
            tracing::info!(resource = %l.resource, "launch {key} got no answer and is not listed yet: counted as launching");
            *launching.entry(l.resource.clone()).or_default() += 1;
        }
        for i in observed.instances {
            if !configured.contains(i.resource.as_str()) {
                tracing::warn!(
                    instance = %i.id,
                    "instance carries this cluster's tag but resource {:?} is no longer configured: flockd leaves it alone (it still counts against max-instances); restore the resource or terminate it by hand",
                    i.resource
                );
                unmanaged.insert(i.id);
                continue;
            }
            cloud.insert(i.id.clone(), i);
        }
        state.recent_launches.retain(|id, l| !cloud.contains_key(id) && now.saturating_sub(l.at) < grace);
        for (id, l) in &state.recent_launches {
            cloud.insert(
                id.clone(),
                CloudInstance {
                    id: id.clone(),
                    resource: l.resource.clone(),
                    state: CloudState::Pending,
                    launched_at: l.at,
                    launch_key: Some(l.key.clone()),
                },
            );
        }
        let retry = self.config.termination_retry.as_millis() as u64;
        state.terminating.retain(|id, at| cloud.contains_key(id) && now.saturating_sub(*at) < retry);

        // Workers: ours by id, the rest are external capacity.
        let mut ours: HashMap<String, &Worker> = HashMap::new();
        let mut external_idle: HashMap<&str, u32> = HashMap::new();
        for w in &observed.queues.workers {
            match naming::parse_worker_id(cluster, &w.id) {
                Some((_, instance)) => {
                    ours.insert(instance.to_string(), w);
                }
                None if w.task.is_none() => {
                    for q in &w.queues {
                        *external_idle.entry(q.as_str()).or_default() += 1;
                    }
                }
                None => {}
            }
        }

        // Zombie workers: registered under our cluster, machine gone. They
        // are not capacity, and we tell the queue source to forget them. (A
        // machine left alone because its resource is gone from the config is
        // not gone: its worker stays.)
        let mut gone: Vec<(&String, &&Worker)> =
            ours.iter().filter(|(i, _)| !cloud.contains_key(*i) && !unmanaged.contains(*i)).collect();
        gone.sort_by_key(|(instance, _)| *instance);
        for (_, w) in gone {
            if !self.config.dry_run {
                match self.seams.source.unregister_worker(&w.id).await {
                    Ok(()) => tracing::info!(worker = %w.id, "unregistered worker whose machine is gone"),
                    Err(e) => {
                        tracing::warn!(worker = %w.id, "could not unregister worker whose machine is gone: {e}")
                    }
                }
            }
            record.unregistered.push(w.id.clone());
        }

        // Per-instance lookups go through maps: at 10,000 instances a linear
        // search per instance is most of the tick.
        let prices: HashMap<&str, f64> =
            self.config.resources.iter().map(|r| (r.name.as_str(), r.price_per_hour)).collect();
        let mut instances = Vec::with_capacity(cloud.len());
        let mut stopped = Vec::new();
        let mut cost = 0.0;
        for (id, c) in &cloud {
            let worker = ours.get(id);
            let mut launched_at = c.launched_at;
            if c.state == CloudState::Stopped && !state.terminating.contains_key(id) {
                stopped.push(id.clone());
            }
            let state_now = if matches!(c.state, CloudState::Stopping | CloudState::Stopped)
                || state.terminating.contains_key(id)
            {
                InstanceState::Stopping
            } else if worker.is_some() {
                state.worker_lost_since.remove(id);
                InstanceState::Running
            } else if state.registered.contains(id) {
                // Its worker was here and is gone: booting again, timed from
                // when it went missing, not from the launch.
                let since = *state.worker_lost_since.entry(id.clone()).or_insert_with(|| {
                    tracing::warn!(instance = %id, "its worker is no longer registered; counted as booting again");
                    now
                });
                launched_at = since;
                InstanceState::Booting
            } else {
                InstanceState::Booting
            };
            if worker.is_some() && !state.registered.contains(id) {
                state.registered.insert(id.clone());
                state.last_boot_ok.insert(c.resource.clone(), now);
            }
            let busy = worker.is_some_and(|w| w.task.is_some());
            let idle_since = match worker {
                Some(w) if w.task.is_none() => match state.idle_since.get(id) {
                    Some(since) => Some(*since),
                    None => {
                        state.idle_since.insert(id.clone(), now);
                        Some(now)
                    }
                },
                _ => {
                    state.idle_since.remove(id);
                    None
                }
            };
            cost += prices.get(c.resource.as_str()).copied().unwrap_or(0.0);
            instances.push(Instance {
                id: id.clone(),
                resource: c.resource.clone(),
                state: state_now,
                launched_at,
                worker: worker.map(|w| w.id.clone()),
                busy,
                idle_since,
            });
        }
        state.idle_since.retain(|id, _| cloud.contains_key(id));
        state.registered.retain(|id| cloud.contains_key(id));
        state.worker_lost_since.retain(|id, _| cloud.contains_key(id));
        let retention = self.config.failure_retention.as_millis() as u64;
        state.failures.retain(|f| now.saturating_sub(f.at) < retention);

        let depth: HashMap<&str, _> = observed.queues.queues.iter().map(|q| (q.name.as_str(), q)).collect();
        let queues = self
            .config
            .queues
            .iter()
            .map(|q| Queue {
                name: q.name.clone(),
                pending: depth.get(q.name.as_str()).map_or(0, |d| d.pending),
                oldest_wait_ms: depth.get(q.name.as_str()).map_or(0, |d| d.oldest_wait_ms),
                resources: q.resources.clone(),
                external_idle_workers: external_idle.get(q.name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let resources = self
            .config
            .resources
            .iter()
            .map(|r| Resource {
                name: r.name.clone(),
                queues: self.config.queues_of(&r.name),
                max_instances: r.max_instances,
                price_per_hour: r.price_per_hour,
                market: r.market,
                last_boot_ok: state.last_boot_ok.get(&r.name).copied(),
            })
            .collect();
        let snapshot = Snapshot {
            now,
            queues,
            resources,
            instances,
            failures: state.failures.clone(),
            budget: Budget {
                max_instances: self.config.limits.max_instances,
                max_cost_per_hour: self.config.limits.max_cost_per_hour,
                cost_per_hour: cost,
            },
        };
        Built { snapshot, unlisted: Unlisted { unmanaged: unmanaged.len() as u32, launching }, stopped }
    }

    /// Whether an observation made at `observed` is still recent enough to
    /// terminate on.
    fn still_fresh(&self, observed: Millis) -> bool {
        Duration::from_millis(self.seams.clock.now().saturating_sub(observed)) <= self.config.max_observation_age
    }

    /// `call` under the action timeout: None if no answer came in time.
    async fn within_action_timeout<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.config.action_timeout, call).await.ok()
    }

    fn resource_spec(&self, name: &str) -> Option<&ResourceSpec> {
        self.config.resources.iter().find(|r| r.name == name)
    }

    async fn act(
        &self,
        state: &mut HostState,
        by_id: &InstancesById<'_>,
        plan: &Plan,
        now: Millis,
        record: &mut TickRecord,
    ) {
        let cluster_hash = hex::encode(&Sha256::digest(self.config.cluster.as_bytes())[..4]);
        // Launches whose answer never came go first, under their own keys
        // (the guardrails counted them already): the cloud hands back the
        // machine if it made it, and makes it if not.
        let mut unanswered: HashMap<&str, Vec<(Millis, String)>> = HashMap::new();
        for (key, intent) in &state.launching {
            unanswered.entry(intent.resource.as_str()).or_default().push((intent.at, key.clone()));
        }
        for keys in unanswered.values_mut() {
            keys.sort_unstable_by(|a, b| b.cmp(a));
        }
        let mut requests = Vec::new();
        for launch in &plan.launches {
            for _ in 0..launch.count {
                let key = match unanswered.get_mut(launch.resource.as_str()).and_then(Vec::pop) {
                    Some((_, key)) => {
                        tracing::info!(resource = %launch.resource, "asking again for launch {key}, whose answer never came");
                        key
                    }
                    // The tick's time too: a crash after launching but before
                    // the tick's save replays the same tick number, and a
                    // reused key would hand back the earlier launch's machine
                    // (EC2 ClientToken).
                    None => format!("flockd-{cluster_hash}-{now}-{}-{}", state.tick, requests.len()),
                };
                requests.push((launch, key));
            }
        }
        if self.config.dry_run {
            for (launch, key) in requests {
                tracing::info!(resource = %launch.resource, "dry run, would launch: {}", launch.reason);
                record.actions.push(Action::Launch {
                    resource: launch.resource.clone(),
                    key,
                    reason: launch.reason.clone(),
                    outcome: Outcome::Skipped,
                    instance: None,
                });
            }
            for t in &plan.terminations {
                tracing::info!(instance = %t.instance, "dry run, would terminate: {}", t.reason);
                record.actions.push(termination_action(by_id, t, Outcome::Skipped));
            }
            return;
        }

        // Written down before the cloud hears of them: if flockd dies before
        // the answers come, the next start still counts these machines.
        let mut new_keys = Vec::new();
        for (launch, key) in &requests {
            if !state.launching.contains_key(key) {
                state.launching.insert(key.clone(), LaunchIntent { resource: launch.resource.clone(), at: now });
                new_keys.push(key.clone());
            }
        }
        if !new_keys.is_empty()
            && let Err(e) = self.seams.store.save(state)
        {
            tracing::error!("could not save the launches before making them, so none is made: {e:#}");
            for key in &new_keys {
                state.launching.remove(key);
            }
            for (launch, key) in requests.drain(..) {
                record.actions.push(Action::Launch {
                    resource: launch.resource.clone(),
                    key,
                    reason: launch.reason.clone(),
                    outcome: Outcome::Failed(format!("not launched: saving it first failed: {e:#}")),
                    instance: None,
                });
            }
        }

        let results: Vec<_> = futures::stream::iter(requests.into_iter().map(|(launch, key)| async move {
            let spec = self.resource_spec(&launch.resource).expect("guardrails dropped unknown resources");
            let provider = &self.seams.providers[&spec.provider];
            let request = LaunchRequest {
                cluster: self.config.cluster.clone(),
                resource: launch.resource.clone(),
                queues: self.config.queues_of(&launch.resource),
                idempotency_key: key.clone(),
            };
            (launch, key, self.within_action_timeout(provider.launch(&request)).await)
        }))
        .buffer_unordered(self.config.launch_concurrency.max(1))
        .collect()
        .await;
        for (launch, key, answer) in results {
            let result = match answer {
                Some(result) => {
                    state.launching.remove(&key);
                    result
                }
                // The machine may exist: it stays counted (state.launching)
                // until a listing shows its key or the grace passes.
                None => Err(ProviderError::Other(format!(
                    "no answer within {:?}; counted as launching until the cloud lists a machine with this key",
                    self.config.action_timeout
                ))),
            };
            let (outcome, instance) = match result {
                Ok(instance) => {
                    tracing::info!(resource = %launch.resource, instance = %instance.id, "launched: {}", launch.reason);
                    state.recent_launches.insert(
                        instance.id.clone(),
                        RecentLaunch { resource: launch.resource.clone(), at: now, key: key.clone() },
                    );
                    (Outcome::Done, Some(instance.id))
                }
                Err(e) => {
                    tracing::warn!(resource = %launch.resource, "launch failed: {e}");
                    state.failures.push(Failure {
                        resource: launch.resource.clone(),
                        kind: e.failure_kind(),
                        at: now,
                        message: e.to_string(),
                    });
                    (Outcome::Failed(e.to_string()), None)
                }
            };
            record.actions.push(Action::Launch {
                resource: launch.resource.clone(),
                key,
                reason: launch.reason.clone(),
                outcome,
                instance,
            });
        }

        if plan.terminations.is_empty() {
            return;
        }
        // The last look: a worker may have taken a task since we observed.
        let fresh = match tokio::time::timeout(self.config.observe_timeout, self.seams.source.workers()).await {
            Ok(Ok(workers)) => Ok(workers),
            Ok(Err(e)) => Err(format!("could not re-check workers before terminating: {e}")),
            Err(_) => Err("could not re-check workers before terminating: no answer in time".to_string()),
        };
        for t in &plan.terminations {
            let instance = *by_id.get(t.instance.as_str()).expect("guardrails dropped unknown instances");
            let outcome = match &fresh {
                Err(e) => Outcome::Refused(e.clone()),
                Ok(workers) => {
                    let worker_id = naming::worker_id(&self.config.cluster, &instance.resource, &instance.id);
                    match workers.iter().find(|w| w.id == worker_id).and_then(|w| w.task.as_ref()) {
                        Some(task) => Outcome::Refused(format!("its worker took task {task} after the decision")),
                        None => self.terminate(state, instance, t, now, &worker_id).await,
                    }
                }
            };
            if let Outcome::Refused(why) = &outcome {
                tracing::info!(instance = %t.instance, "not terminated: {why}");
            }
            record.actions.push(termination_action(by_id, t, outcome));
        }
    }

    async fn terminate(
        &self,
        state: &mut HostState,
        instance: &Instance,
        t: &Termination,
        now: Millis,
        worker_id: &str,
    ) -> Outcome {
        let Some(spec) = self.resource_spec(&instance.resource) else {
            return Outcome::Failed(format!("resource {:?} is not configured", instance.resource));
        };
        let call = self.seams.providers[&spec.provider].terminate(&instance.id);
        let answer = self.within_action_timeout(call).await;
        let timeout = self.config.action_timeout;
        match answer.unwrap_or_else(|| Err(ProviderError::Other(format!("no answer within {timeout:?}")))) {
            Ok(()) => {
                tracing::info!(instance = %instance.id, resource = %instance.resource, "terminated: {}", t.reason);
                state.terminating.insert(instance.id.clone(), now);
                state.idle_since.remove(&instance.id);
                state.recent_launches.remove(&instance.id);
                if t.cause == TerminationCause::BootTimeout {
                    // A machine that booted once and then lost its worker says
                    // nothing about the image: it must not feed spin-up-timeout's
                    // boot breaker.
                    let (kind, what) = if state.registered.contains(&instance.id) {
                        (FailureKind::Other, "lost its worker and it never came back")
                    } else {
                        (FailureKind::BootTimeout, "never registered its worker")
                    };
                    state.failures.push(Failure {
                        resource: instance.resource.clone(),
                        kind,
                        at: now,
                        message: format!("{} {what}", instance.id),
                    });
                }
                if instance.worker.is_some() {
                    // Without this, the dead worker counts as free capacity
                    // until the queue source times it out (prior-art #4).
                    if let Err(e) = self.seams.source.unregister_worker(worker_id).await {
                        tracing::warn!(worker = %worker_id, "could not unregister the terminated machine's worker: {e}");
                    }
                }
                Outcome::Done
            }
            Err(e) => {
                tracing::warn!(instance = %instance.id, "termination failed: {e}");
                Outcome::Failed(e.to_string())
            }
        }
    }

    /// Machines that powered off by themselves (the bootstrap powers a machine
    /// off when its agent exits) run no agent but keep their disks and a
    /// slot: delete them. A host rule, not a policy's: no plugin can forget
    /// it, and it needs no worker re-check (nothing runs there).
    async fn delete_stopped(
        &self,
        state: &mut HostState,
        by_id: &InstancesById<'_>,
        stopped: &[String],
        now: Millis,
        record: &mut TickRecord,
    ) {
        for id in stopped {
            let Some(instance) = by_id.get(id.as_str()).copied() else { continue };
            let t = Termination {
                instance: id.clone(),
                cause: TerminationCause::Other,
                reason: "powered off (its agent exited): deleting it so it stops billing".into(),
            };
            let outcome = if self.config.dry_run {
                Outcome::Skipped
            } else {
                let worker_id = naming::worker_id(&self.config.cluster, &instance.resource, &instance.id);
                let outcome = self.terminate(state, instance, &t, now, &worker_id).await;
                if matches!(outcome, Outcome::Failed(_)) {
                    // Asked again after termination-retry, not every tick.
                    state.terminating.insert(id.clone(), now);
                }
                outcome
            };
            record.actions.push(termination_action(by_id, &t, outcome));
        }
    }
}

/// Per-instance lookups through a map, built once per tick: a plan may act
/// on thousands.
type InstancesById<'a> = HashMap<&'a str, &'a Instance>;

fn instances_by_id(snapshot: &Snapshot) -> InstancesById<'_> {
    snapshot.instances.iter().map(|i| (i.id.as_str(), i)).collect()
}

fn termination_action(by_id: &InstancesById<'_>, t: &Termination, outcome: Outcome) -> Action {
    Action::Terminate {
        instance: t.instance.clone(),
        resource: by_id.get(t.instance.as_str()).map(|i| i.resource.clone()).unwrap_or_default(),
        cause: t.cause,
        reason: t.reason.clone(),
        outcome,
    }
}
