//! The ledger: what the host knows beyond the cloud's listing, and the rules
//! that keep it. Everything here is synchronous and pure over
//! [`HostState`] — no network call, no clock read, no store write — so each
//! rule is unit-tested beside it. The controller observes, asks the ledger,
//! carries out the side effects it names (workers to unregister, machines to
//! delete) and reports each answer back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sha2::{Digest, Sha256};

use crate::controller::ControllerConfig;
use crate::guardrails::Unlisted;
use crate::model::*;
use crate::naming;
use crate::provider::{CloudInstance, CloudState, MachineFailure, ProviderError};
use crate::queue_source::{QueueObservation, Worker};
use crate::store::{HostState, LaunchIntent, RecentLaunch, RememberedScope};

/// One complete look at the world: queues and workers, and every listed
/// machine of this cluster (terminated ones already left out).
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub queues: QueueObservation,
    pub instances: Vec<CloudInstance>,
    /// Instance id → the provider that listed it: the one to terminate it
    /// through (a machine in a retired scope is not its resource's
    /// provider's to terminate).
    pub listed_by: BTreeMap<String, String>,
}

/// An observation reconciled with the ledger: the snapshot the policies see
/// and what the host keeps to itself.
#[derive(Clone, Debug)]
pub struct Reconciled {
    pub snapshot: Snapshot,
    /// Machines that count against the caps but are not in the snapshot.
    pub unlisted: Unlisted,
    /// Machines the host deletes on its own: powered off, or failed.
    pub to_delete: Vec<Deletion>,
    /// Workers registered under this cluster whose machine is gone: they
    /// are not capacity, and the queue source is told to forget them
    /// (prior-art #4). Sorted.
    pub zombie_workers: Vec<String>,
    /// Listed machines carrying a launch key this store never wrote:
    /// another flockd with the same cluster launches into this fleet.
    pub foreign: Vec<String>,
    /// Instance id → the provider that listed it.
    pub listed_by: BTreeMap<String, String>,
}

/// A machine the host deletes without a policy asking: it runs no agent and
/// never will, yet bills and holds a slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Deletion {
    pub instance: String,
    /// What the cloud reported, for a machine that failed after it was
    /// made; none for one that powered itself off.
    pub failure: Option<MachineFailure>,
}

/// How long a key this store wrote is remembered after it was last listed
/// or intended: a listing that lags this much is no listing.
const OWN_KEY_MEMORY: Millis = 24 * 3600 * 1000;
/// How stale a kept key's last-seen mark may grow before it is refreshed.
const OWN_KEY_REFRESH: Millis = 3600 * 1000;

/// One machine the plan asks for, with the key it is launched under.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchSlot {
    pub resource: String,
    pub reason: String,
    pub key: String,
    /// A launch whose answer never came, asked for again under its key.
    pub resend: bool,
}

/// The rules, bound to one config.
pub struct Ledger<'c> {
    config: &'c ControllerConfig,
}

impl<'c> Ledger<'c> {
    pub fn new(config: &'c ControllerConfig) -> Self {
        Ledger { config }
    }

    fn grace(&self) -> Millis {
        self.config.launch_visibility_grace.as_millis() as Millis
    }

    /// Folds an observation into the state (adopting listed machines,
    /// expiring what the cloud now shows or the grace has passed, timing
    /// idleness and lost workers) and builds the snapshot.
    pub fn reconcile(&self, state: &mut HostState, observed: Observation, now: Millis) -> Reconciled {
        let config = self.config;
        let cluster = &config.cluster;
        let configured: BTreeSet<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();

        // Instances: what the cloud lists, plus our own launches it does not
        // list yet.
        let mut cloud: BTreeMap<String, CloudInstance> = BTreeMap::new();
        let mut unmanaged: BTreeSet<String> = BTreeSet::new();
        let grace = self.grace();
        let listed_keys: HashSet<&str> = observed.instances.iter().filter_map(|i| i.launch_key.as_deref()).collect();
        let foreign = self.foreign_machines(state, &observed.instances, &listed_keys, now);
        state.launching.retain(|key, l| !listed_keys.contains(key.as_str()) && now.saturating_sub(l.at) < grace);
        self.keep_scopes(state, &observed.listed_by);
        let mut launching: BTreeMap<String, u32> = BTreeMap::new();
        for (key, l) in &state.launching {
            tracing::info!(resource = %l.resource, "launch {key} got no answer and is not listed yet: counted as launching");
            *launching.entry(l.resource.clone()).or_default() += 1;
        }
        for r in &config.resources {
            // Written only when it changed: this runs every tick.
            if state.last_prices.get(&r.name) != Some(&r.price_per_hour) {
                state.last_prices.insert(r.name.clone(), r.price_per_hour);
            }
        }
        // A resource never seen configured (a store older than prices) is
        // priced as the dearest one configured: the cap errs towards safety.
        let dearest = config.resources.iter().map(|r| r.price_per_hour).fold(0.0, f64::max);
        let mut unmanaged_cost = 0.0;
        let mut unmanaged_resources: BTreeSet<String> = BTreeSet::new();
        for i in observed.instances {
            if !configured.contains(i.resource.as_str()) {
                unmanaged_cost += state.last_prices.get(&i.resource).copied().unwrap_or(dearest);
                unmanaged_resources.insert(i.resource.clone());
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
        // Prices of dropped resources are kept while any of their machines is.
        state.last_prices.retain(|r, _| configured.contains(r.as_str()) || unmanaged_resources.contains(r));
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
                    failure: None,
                },
            );
        }
        let retry = config.termination_retry.as_millis() as Millis;
        state.terminating.retain(|id, at| cloud.contains_key(id) && now.saturating_sub(*at) < retry);

        // Workers: ours by id, the rest are external capacity.
        let mut ours: HashMap<String, &Worker> = HashMap::new();
        let mut external_idle_workers: Vec<&Worker> = Vec::new();
        for w in &observed.queues.workers {
            match naming::parse_worker_id(cluster, &w.id) {
                Some((_, instance)) => {
                    ours.insert(instance.to_string(), w);
                }
                None if w.task.is_none() => external_idle_workers.push(w),
                None => {}
            }
        }
        let pending: HashMap<&str, u32> = observed.queues.queues.iter().map(|q| (q.name.as_str(), q.pending)).collect();
        let external_idle = share_external_workers(&external_idle_workers, &pending);

        // Zombie workers: registered under our cluster, machine gone. (A
        // machine left alone because its resource is gone from the config is
        // not gone: its worker stays.)
        let mut zombie_workers: Vec<String> = ours
            .iter()
            .filter(|(i, _)| !cloud.contains_key(*i) && !unmanaged.contains(*i))
            .map(|(_, w)| w.id.clone())
            .collect();
        zombie_workers.sort();

        // Per-instance lookups go through maps: at 10,000 instances a linear
        // search per instance is most of the tick.
        let prices: HashMap<&str, f64> = config.resources.iter().map(|r| (r.name.as_str(), r.price_per_hour)).collect();
        let mut instances = Vec::with_capacity(cloud.len());
        let mut to_delete = Vec::new();
        let mut cost = 0.0;
        for (id, c) in &cloud {
            let worker = ours.get(id);
            let mut launched_at = c.launched_at;
            // A failed machine whose worker runs a task after all is left
            // alone: no busy worker is killed on the cloud's word.
            let failed = c.failure.as_ref().filter(|_| worker.is_none_or(|w| w.task.is_none()));
            if !state.terminating.contains_key(id) {
                if c.state == CloudState::Stopped {
                    to_delete.push(Deletion { instance: id.clone(), failure: None });
                } else if let Some(f) = failed {
                    tracing::warn!(instance = %id, resource = %c.resource, "the cloud reports it failed: {}", f.message);
                    to_delete.push(Deletion { instance: id.clone(), failure: Some(f.clone()) });
                }
            }
            let state_now = if matches!(c.state, CloudState::Stopping | CloudState::Stopped)
                || failed.is_some()
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
                Some(w) if w.task.is_none() => Some(*state.idle_since.entry(id.clone()).or_insert(now)),
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
                task: worker.and_then(|w| w.task.clone()),
            });
        }
        state.idle_since.retain(|id, _| cloud.contains_key(id));
        state.registered.retain(|id| cloud.contains_key(id));
        state.worker_lost_since.retain(|id, _| cloud.contains_key(id));
        let retention = config.failure_retention.as_millis() as Millis;
        state.failures.retain(|f| now.saturating_sub(f.at) < retention);

        let depth: HashMap<&str, _> = observed.queues.queues.iter().map(|q| (q.name.as_str(), q)).collect();
        let queues = config
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
        let resources = config
            .resources
            .iter()
            .map(|r| Resource {
                name: r.name.clone(),
                queues: config.queues_of(&r.name),
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
                max_instances: config.limits.max_instances,
                max_cost_per_hour: config.limits.max_cost_per_hour,
                cost_per_hour: cost + unmanaged_cost,
            },
        };
        Reconciled {
            snapshot,
            unlisted: Unlisted {
                unmanaged: unmanaged.len() as u32,
                unmanaged_cost_per_hour: unmanaged_cost,
                launching,
            },
            to_delete,
            zombie_workers,
            foreign,
            listed_by: observed.listed_by,
        }
    }

    /// Keeps the remembered scopes: a configured one's settings follow the
    /// config (what a retired lister is built from later); a retired one
    /// whose provider listed nothing, while no launch is unanswered, is
    /// empty and forgotten.
    fn keep_scopes(&self, state: &mut HostState, listed_by: &BTreeMap<String, String>) {
        for (provider, scope) in &self.config.scopes {
            if let Some(remembered) = state.scopes.get_mut(&scope.key())
                && (remembered.scope != *scope || &remembered.provider != provider)
            {
                remembered.scope = scope.clone();
                remembered.provider = provider.clone();
            }
        }
        if !state.launching.is_empty() {
            // An unanswered launch may yet appear in a retired scope.
            return;
        }
        for (provider, key) in &self.config.retired {
            if state.scopes.contains_key(key) && !listed_by.values().any(|p| p == provider) {
                tracing::info!(
                    "no machine of this cluster is left in {key}, which the config no longer names: no longer listing it"
                );
                state.scopes.remove(key);
            }
        }
    }

    /// Keeps `own_keys` (adopting a first listing, refreshing what is listed
    /// or intended, forgetting what has been gone a day) and names the
    /// listed machines whose key this store never wrote.
    fn foreign_machines(
        &self,
        state: &mut HostState,
        listed: &[CloudInstance],
        listed_keys: &HashSet<&str>,
        now: Millis,
    ) -> Vec<String> {
        if !state.own_keys_complete {
            state.own_keys.extend(listed_keys.iter().map(|k| (k.to_string(), now)));
            state.own_keys_complete = true;
        }
        let mut foreign: Vec<String> = listed
            .iter()
            .filter(|i| {
                i.launch_key
                    .as_ref()
                    .is_some_and(|k| !state.own_keys.contains_key(k) && !state.launching.contains_key(k))
            })
            .map(|i| i.id.clone())
            .collect();
        foreign.sort();
        let launching = &state.launching;
        for (key, seen) in state.own_keys.iter_mut() {
            // Refreshed hourly, not every tick: each refresh is a record
            // written, and a day's memory needs no finer mark.
            if now.saturating_sub(*seen) >= OWN_KEY_REFRESH
                && (listed_keys.contains(key.as_str()) || launching.contains_key(key))
            {
                *seen = now;
            }
        }
        state.own_keys.retain(|_, seen| now.saturating_sub(*seen) < OWN_KEY_MEMORY);
        foreign
    }

    /// One slot per machine the plan launches. Launches whose answer never
    /// came go first, under their own keys (the guardrails counted them
    /// already): the cloud hands back the machine if it made it, and makes
    /// it if not. The rest get new keys.
    pub fn launch_slots(&self, state: &HostState, plan: &Plan, now: Millis) -> Vec<LaunchSlot> {
        let cluster_hash = hex::encode(&Sha256::digest(self.config.cluster.as_bytes())[..4]);
        let mut unanswered: HashMap<&str, Vec<(Millis, &str)>> = HashMap::new();
        for (key, intent) in &state.launching {
            unanswered.entry(intent.resource.as_str()).or_default().push((intent.at, key.as_str()));
        }
        for keys in unanswered.values_mut() {
            // Oldest last, so pop() takes it first.
            keys.sort_unstable_by(|a, b| b.cmp(a));
        }
        let mut slots = Vec::new();
        for launch in &plan.launches {
            for _ in 0..launch.count {
                let (key, resend) = match unanswered.get_mut(launch.resource.as_str()).and_then(Vec::pop) {
                    Some((_, key)) => (key.to_string(), true),
                    // The tick's time too: a crash after launching but before
                    // the tick's save replays the same tick number, and a
                    // reused key would hand back the earlier launch's machine
                    // (EC2 ClientToken).
                    None => (format!("flockd-{cluster_hash}-{now}-{}-{}", state.tick, slots.len()), false),
                };
                slots.push(LaunchSlot {
                    resource: launch.resource.clone(),
                    reason: launch.reason.clone(),
                    key,
                    resend,
                });
            }
        }
        slots
    }

    /// Writes the intent of each new launch down; the caller saves the state
    /// before any cloud call. Returns the keys that were new.
    pub fn intend(&self, state: &mut HostState, slots: &[LaunchSlot], now: Millis) -> Vec<String> {
        let mut new_keys = Vec::new();
        for slot in slots {
            if !state.launching.contains_key(&slot.key) {
                state.launching.insert(slot.key.clone(), LaunchIntent { resource: slot.resource.clone(), at: now });
                state.own_keys.insert(slot.key.clone(), now);
                new_keys.push(slot.key.clone());
            }
            self.remember_scope_of(state, &slot.resource, now);
        }
        new_keys
    }

    /// Remembers the scope `resource`'s machines are launched into, so it is
    /// listed for as long as it holds any, whatever the config says later.
    fn remember_scope_of(&self, state: &mut HostState, resource: &str, now: Millis) {
        let Some(spec) = self.config.resources.iter().find(|r| r.name == resource) else { return };
        let Some(scope) = self.config.scopes.get(&spec.provider) else { return };
        let key = scope.key();
        if let std::collections::btree_map::Entry::Vacant(entry) = state.scopes.entry(key) {
            tracing::info!("first launch into {}: remembered, and listed until it is empty", entry.key());
            entry.insert(RememberedScope { provider: spec.provider.clone(), scope: scope.clone(), since: now });
        }
    }

    /// Takes back intents that were never sent (saving them failed).
    pub fn withdraw(&self, state: &mut HostState, keys: &[String]) {
        for key in keys {
            state.launching.remove(key);
            state.own_keys.remove(key);
        }
    }

    /// The cloud answered a launch at `at` (or the action timeout did, as
    /// [`ProviderError::Timeout`]). A machine that may exist keeps counting
    /// for the visibility grace from `at`, the moment its answer came or
    /// should have: stamped with the tick's start instead, a launch cut by
    /// a timeout longer than the grace was forgotten at the next tick.
    pub fn launch_answered(
        &self,
        state: &mut HostState,
        slot: &LaunchSlot,
        answer: &Result<CloudInstance, ProviderError>,
        at: Millis,
    ) {
        match answer {
            Ok(instance) => {
                state.launching.remove(&slot.key);
                state.recent_launches.insert(
                    instance.id.clone(),
                    RecentLaunch { resource: slot.resource.clone(), at, key: slot.key.clone() },
                );
            }
            Err(e) => {
                if e.may_have_taken_effect() {
                    // A 5xx, a reset or a timeout: the machine may be there.
                    // It stays counted, and the next launch of its resource
                    // re-sends this key, which makes the cloud hand it back.
                    state.launching.insert(slot.key.clone(), LaunchIntent { resource: slot.resource.clone(), at });
                } else {
                    state.launching.remove(&slot.key);
                }
                state.failures.push(Failure {
                    resource: slot.resource.clone(),
                    kind: e.failure_kind(),
                    at,
                    message: e.to_string(),
                });
            }
        }
    }

    /// The cloud carried out a termination at `now`.
    pub fn terminated(&self, state: &mut HostState, instance: &Instance, cause: TerminationCause, now: Millis) {
        state.terminating.insert(instance.id.clone(), now);
        state.idle_since.remove(&instance.id);
        state.recent_launches.remove(&instance.id);
        if cause == TerminationCause::BootTimeout {
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
    }

    /// Deleting a powered-off machine failed: ask again after
    /// termination-retry, not every tick.
    pub fn deletion_failed(&self, state: &mut HostState, instance: &str, now: Millis) {
        state.terminating.insert(instance.to_string(), now);
    }

    /// A machine the cloud reported failed is deleted: its failure counts
    /// against its resource, so policies (spin-up-timeout's breaker,
    /// scale-up's fallback) steer to another one.
    pub fn machine_failed(&self, state: &mut HostState, instance: &Instance, failure: &MachineFailure, now: Millis) {
        state.failures.push(Failure {
            resource: instance.resource.clone(),
            kind: failure.kind,
            at: now,
            message: format!("{}: {}", instance.id, failure.message),
        });
    }
}

/// Queue → idle workers flockd did not launch (on-premise machines, say)
/// counted for it. Each worker counts once, for one of the queues it
/// serves: a worker serving two queues takes one task, not one of each.
/// The workers serving fewest queues are placed first, each on its queue
/// with the most pending tasks not yet covered; once no queue it serves
/// has any, on its first queue (it is idle capacity there all the same).
fn share_external_workers<'a>(workers: &[&'a Worker], pending: &HashMap<&str, u32>) -> HashMap<&'a str, u32> {
    let mut order: Vec<&&Worker> = workers.iter().collect();
    order.sort_by_key(|w| w.queues.len());
    let mut counted: HashMap<&'a str, u32> = HashMap::new();
    for w in order {
        let uncovered = |q: &str, counted: &HashMap<&str, u32>| {
            pending.get(q).copied().unwrap_or(0).saturating_sub(counted.get(q).copied().unwrap_or(0))
        };
        // `rev`: among equals, the first queue the worker names.
        let neediest =
            w.queues.iter().rev().max_by_key(|q| uncovered(q, &counted)).filter(|q| uncovered(q, &counted) > 0);
        if let Some(q) = neediest.or(w.queues.first()) {
            *counted.entry(q.as_str()).or_default() += 1;
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{QueueSpec, ResourceSpec};
    use crate::guardrails::HardLimits;

    fn external(id: &str, queues: &[&str]) -> Worker {
        Worker {
            id: id.into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            task: None,
            registered_at: None,
        }
    }

    /// Guard: an idle worker we did not launch counts once, not once per
    /// queue it serves (issue 15, item 8): two queues with a task each and
    /// one such worker still need one machine.
    #[test]
    fn an_external_worker_serving_two_queues_counts_once() {
        let both = external("onprem-1", &["a", "b"]);
        let pending = HashMap::from([("a", 1), ("b", 1)]);
        let counted = share_external_workers(&[&both], &pending);
        assert_eq!(counted.values().sum::<u32>(), 1, "{counted:?}");

        // The specialist takes its own queue; the generalist the other.
        let only_a = external("onprem-2", &["a"]);
        let counted = share_external_workers(&[&both, &only_a], &pending);
        assert_eq!((counted.get("a"), counted.get("b")), (Some(&1), Some(&1)), "{counted:?}");

        // With nothing pending it is still idle capacity, on its first queue.
        let counted = share_external_workers(&[&both], &HashMap::new());
        assert_eq!(counted, HashMap::from([("a", 1)]));
        // A worker goes where the uncovered work is.
        let counted = share_external_workers(&[&both], &HashMap::from([("a", 0), ("b", 3)]));
        assert_eq!(counted, HashMap::from([("b", 1)]));
    }

    const CLUSTER: &str = "c";

    fn config() -> ControllerConfig {
        ControllerConfig::new(
            CLUSTER,
            vec![QueueSpec { name: "q".into(), resources: vec!["a".into()] }],
            vec![ResourceSpec {
                name: "a".into(),
                provider: "p".into(),
                max_instances: 5,
                price_per_hour: 2.0,
                market: Market::OnDemand,
            }],
            HardLimits { max_instances: 10, max_cost_per_hour: 100.0, ..Default::default() },
        )
    }

    fn machine(id: &str, resource: &str, key: Option<&str>) -> CloudInstance {
        CloudInstance {
            id: id.into(),
            resource: resource.into(),
            state: CloudState::Running,
            launched_at: 0,
            launch_key: key.map(str::to_string),
            failure: None,
        }
    }

    fn worker(instance: &str, task: Option<&str>) -> Worker {
        Worker {
            id: naming::worker_id(CLUSTER, "a", instance),
            queues: vec!["q".into()],
            task: task.map(str::to_string),
            registered_at: None,
        }
    }

    fn look(instances: Vec<CloudInstance>, workers: Vec<Worker>) -> Observation {
        Observation { queues: QueueObservation { queues: vec![], workers }, instances, listed_by: BTreeMap::new() }
    }

    fn slot(key: &str) -> LaunchSlot {
        LaunchSlot { resource: "a".into(), reason: "r".into(), key: key.into(), resend: false }
    }

    /// Guard: a retired scope is forgotten only when it listed nothing and
    /// no launch is unanswered (one may yet appear there); a configured
    /// scope's remembered settings follow the config.
    #[test]
    fn a_retired_scope_is_forgotten_only_when_empty_with_no_launch_unanswered() {
        let scope = |place: &str, settings: &str| crate::provider::ProviderScope {
            kind: "aws".into(),
            place: place.into(),
            settings: settings.into(),
        };
        let mut config = config();
        config.scopes = BTreeMap::from([("p".to_string(), scope("region B", "{\"v\":1}"))]);
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        ledger.intend(&mut state, &[slot("k1")], 1_000);
        config.scopes = BTreeMap::from([("p".to_string(), scope("region B", "{\"v\":2}"))]);
        config.retired = BTreeMap::from([("old".to_string(), "aws: region A".to_string())]);
        state.scopes.insert(
            "aws: region A".into(),
            RememberedScope { provider: "p".into(), scope: scope("region A", "{}"), since: 0 },
        );
        let ledger = Ledger::new(&config);
        ledger.reconcile(&mut state, look(vec![], vec![]), 2_000);
        assert!(state.scopes.contains_key("aws: region A"), "k1 is unanswered and may appear there");
        assert_eq!(state.scopes["aws: region B"].scope.settings, "{\"v\":2}");

        let mut listed = look(vec![machine("i-1", "a", Some("k1"))], vec![]);
        listed.listed_by.insert("i-1".into(), "old".into());
        ledger.reconcile(&mut state, listed, 3_000);
        assert!(state.scopes.contains_key("aws: region A"), "it still holds i-1");
        ledger.reconcile(&mut state, look(vec![], vec![]), 4_000);
        assert!(!state.scopes.contains_key("aws: region A"), "empty, nothing unanswered: forgotten");
        assert!(state.scopes.contains_key("aws: region B"), "a configured scope stays");
    }

    #[test]
    fn an_intent_counts_until_a_listing_shows_its_key() {
        let config = config();
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        ledger.intend(&mut state, &[slot("k1")], 1_000);
        let r = ledger.reconcile(&mut state, look(vec![], vec![]), 2_000);
        assert_eq!(r.unlisted.launching.get("a"), Some(&1));
        let r = ledger.reconcile(&mut state, look(vec![machine("i-1", "a", Some("k1"))], vec![]), 3_000);
        assert!(r.unlisted.launching.is_empty());
        assert!(state.launching.is_empty());
        assert_eq!(r.snapshot.instances.len(), 1);
    }

    #[test]
    fn only_definite_refusals_drop_an_intent_and_the_rest_are_restamped_at_the_answer() {
        let config = config();
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        let slots = [slot("refused"), slot("unknown"), slot("timeout"), slot("made")];
        ledger.intend(&mut state, &slots, 1_000);
        ledger.launch_answered(&mut state, &slots[0], &Err(ProviderError::Quota("q".into())), 5_000);
        ledger.launch_answered(&mut state, &slots[1], &Err(ProviderError::OutcomeUnknown("503".into())), 6_000);
        ledger.launch_answered(&mut state, &slots[2], &Err(ProviderError::Timeout("t".into())), 7_000);
        ledger.launch_answered(&mut state, &slots[3], &Ok(machine("i-9", "a", Some("made"))), 8_000);
        let kept: Vec<(&str, Millis)> = state.launching.iter().map(|(k, i)| (k.as_str(), i.at)).collect();
        assert_eq!(kept, vec![("timeout", 7_000), ("unknown", 6_000)]);
        assert_eq!(state.recent_launches["i-9"].at, 8_000);
        assert_eq!(state.failures.len(), 3);
    }

    #[test]
    fn unanswered_launches_are_sent_again_oldest_first_before_new_keys() {
        let config = config();
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        ledger.intend(&mut state, &[slot("new")], 2_000);
        ledger.intend(&mut state, &[slot("old")], 1_000);
        let plan = Plan {
            launches: vec![Launch { resource: "a".into(), count: 3, reason: "r".into() }],
            terminations: vec![],
        };
        let slots = ledger.launch_slots(&state, &plan, 9_000);
        let keys: Vec<(&str, bool)> = slots.iter().map(|s| (s.key.as_str(), s.resend)).collect();
        assert_eq!(&keys[..2], &[("old", true), ("new", true)]);
        assert!(!keys[2].1 && keys[2].0.contains("-9000-"), "{keys:?}");
    }

    #[test]
    fn idle_timers_start_at_the_first_idle_look_and_reset_when_busy() {
        let config = config();
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        let m = || vec![machine("i-1", "a", None)];
        let r = ledger.reconcile(&mut state, look(m(), vec![worker("i-1", None)]), 1_000);
        assert_eq!(r.snapshot.instances[0].idle_since, Some(1_000));
        let r = ledger.reconcile(&mut state, look(m(), vec![worker("i-1", None)]), 2_000);
        assert_eq!(r.snapshot.instances[0].idle_since, Some(1_000));
        let r = ledger.reconcile(&mut state, look(m(), vec![worker("i-1", Some("t"))]), 3_000);
        assert!(r.snapshot.instances[0].busy && r.snapshot.instances[0].idle_since.is_none());
        let r = ledger.reconcile(&mut state, look(m(), vec![worker("i-1", None)]), 4_000);
        assert_eq!(r.snapshot.instances[0].idle_since, Some(4_000));
    }

    #[test]
    fn workers_of_gone_machines_are_zombies_but_not_those_of_unconfigured_resources() {
        let config = config();
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        let old = Worker { id: naming::worker_id(CLUSTER, "old", "i-2"), ..worker("i-2", None) };
        let r = ledger.reconcile(
            &mut state,
            look(vec![machine("i-2", "old", None)], vec![worker("i-gone", None), old]),
            1_000,
        );
        assert_eq!(r.zombie_workers, vec![naming::worker_id(CLUSTER, "a", "i-gone")]);
        assert_eq!(r.unlisted.unmanaged, 1);
        assert!(r.snapshot.instances.is_empty());
    }

    #[test]
    fn a_registered_worker_that_goes_missing_counts_as_booting_from_that_moment() {
        let config = config();
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        let m = || vec![machine("i-1", "a", None)];
        ledger.reconcile(&mut state, look(m(), vec![worker("i-1", None)]), 1_000);
        let r = ledger.reconcile(&mut state, look(m(), vec![]), 5_000);
        let i = &r.snapshot.instances[0];
        assert_eq!((i.state, i.launched_at), (InstanceState::Booting, 5_000));
        assert_eq!(state.last_boot_ok.get("a"), Some(&1_000));
    }

    #[test]
    fn keys_this_store_never_wrote_are_foreign_but_a_first_listing_is_adopted() {
        let config = config();
        let ledger = Ledger::new(&config);
        let mut state = HostState::default();
        let r = ledger.reconcile(&mut state, look(vec![machine("i-1", "a", Some("before"))], vec![]), 1_000);
        assert!(r.foreign.is_empty(), "a new store adopts what it first sees");
        ledger.intend(&mut state, &[slot("mine")], 2_000);
        let listed = vec![
            machine("i-1", "a", Some("before")),
            machine("i-2", "a", Some("mine")),
            machine("i-3", "old", Some("theirs")),
            machine("i-4", "a", None),
        ];
        let r = ledger.reconcile(&mut state, look(listed, vec![]), 3_000);
        assert_eq!(r.foreign, vec!["i-3".to_string()]);
        // A key gone from every listing for a day is forgotten.
        ledger.reconcile(&mut state, look(vec![], vec![]), 3_000 + OWN_KEY_MEMORY);
        assert!(state.own_keys.is_empty(), "{:?}", state.own_keys);
    }
}
