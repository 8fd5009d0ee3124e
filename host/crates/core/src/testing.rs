//! Small in-memory fakes of the seams, for tests of the controller and of
//! anything built on it (`features = ["testing"]` outside this crate). They
//! keep no clock of their own: a scripted delay is a `tokio::time::sleep`,
//! so under paused time a test of a five-minute timeout runs in
//! microseconds.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

pub mod provider_contract;
pub mod store_behaviour;
pub mod store_contract;

use crate::clock::Clock;
use crate::provider::{CloudInstance, CloudProvider, CloudState, LaunchRequest, ProviderError};
use crate::queue_source::{QueueObservation, QueueSource, QueueState, SourceError, Worker};

/// How the fake cloud answers one launch call.
#[derive(Clone, Debug)]
pub enum LaunchAnswer {
    /// Makes the machine (or hands back the one made under the same key).
    Made,
    /// Makes the machine, then answers with this error: a 5xx or a reset
    /// connection after the cloud acted.
    MadeThenFails(ProviderError),
    /// Makes the machine and never answers.
    MadeThenHangs,
    /// Refuses without making anything.
    Refuses(ProviderError),
}

type TerminateHook = Box<dyn Fn(&str) + Send + Sync>;

/// A cloud that keeps its machines in a map, idempotent by launch key like
/// EC2's ClientToken.
#[derive(Default)]
pub struct FakeCloud {
    /// Stamps `launched_at`; without one machines are made at time 0.
    clock: Option<Arc<dyn Clock>>,
    inner: Mutex<CloudMachines>,
    /// Answers for the next launch calls, in order; then `Made`.
    script: Mutex<VecDeque<LaunchAnswer>>,
    terminate_delay: Mutex<Duration>,
    after_terminate: Mutex<Option<TerminateHook>>,
    /// Instance ids start with this ("fake" when empty): two fake clouds
    /// in one test make different ids.
    id_prefix: String,
}

#[derive(Default)]
struct CloudMachines {
    made: u32,
    machines: BTreeMap<String, CloudInstance>,
    by_key: HashMap<String, String>,
    /// Instance id → the cluster it was launched for: a listing shows only
    /// its own cluster's machines, as a real cloud's tag filter does.
    cluster_of: HashMap<String, String>,
    /// Made but not listed yet (an eventually consistent listing).
    hidden: HashSet<String>,
    hide_new: bool,
    terminated: Vec<String>,
}

impl FakeCloud {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        FakeCloud { clock: Some(clock), ..Default::default() }
    }

    /// The machine is listed as failed from now on (a pod that cannot be
    /// scheduled).
    pub fn fail_machine(&self, id: &str, failure: crate::provider::MachineFailure) {
        if let Some(m) = self.inner.lock().unwrap().machines.get_mut(id) {
            m.failure = Some(failure);
        }
    }

    /// Its instance ids start with `prefix`.
    pub fn with_ids(mut self, prefix: &str) -> Self {
        self.id_prefix = prefix.to_string();
        self
    }

    /// Queues answers for the next launch calls.
    pub fn script(&self, answers: impl IntoIterator<Item = LaunchAnswer>) {
        self.script.lock().unwrap().extend(answers);
    }

    /// New machines stay out of the listing until `reveal`.
    pub fn hide_new_machines(&self, hide: bool) {
        self.inner.lock().unwrap().hide_new = hide;
    }

    pub fn reveal(&self) {
        self.inner.lock().unwrap().hidden.clear();
    }

    /// Each terminate call takes this long (on tokio's clock).
    pub fn set_terminate_delay(&self, delay: Duration) {
        *self.terminate_delay.lock().unwrap() = delay;
    }

    /// Runs after each termination is carried out, with the instance id.
    pub fn after_terminate(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *self.after_terminate.lock().unwrap() = Some(Box::new(hook));
    }

    /// Machines ever made (a re-sent key does not make another).
    pub fn made(&self) -> u32 {
        self.inner.lock().unwrap().made
    }

    /// Machines not terminated, listed or not.
    pub fn alive(&self) -> Vec<CloudInstance> {
        self.inner.lock().unwrap().machines.values().filter(|m| m.state != CloudState::Terminated).cloned().collect()
    }

    /// Instance ids in the order they were terminated.
    pub fn terminated(&self) -> Vec<String> {
        self.inner.lock().unwrap().terminated.clone()
    }

    fn make(&self, request: &LaunchRequest) -> CloudInstance {
        let now = self.clock.as_ref().map_or(0, |c| c.now());
        let mut m = self.inner.lock().unwrap();
        if let Some(id) = m.by_key.get(&request.idempotency_key) {
            return m.machines[id].clone();
        }
        m.made += 1;
        let prefix = if self.id_prefix.is_empty() { "fake" } else { &self.id_prefix };
        let id = format!("{prefix}-{:04}", m.made);
        let instance = CloudInstance {
            id: id.clone(),
            resource: request.resource.clone(),
            state: CloudState::Running,
            launched_at: now,
            launch_key: Some(request.idempotency_key.clone()),
            failure: None,
        };
        m.by_key.insert(request.idempotency_key.clone(), id.clone());
        m.cluster_of.insert(id.clone(), request.cluster.clone());
        m.machines.insert(id.clone(), instance.clone());
        if m.hide_new {
            m.hidden.insert(id);
        }
        instance
    }
}

#[async_trait]
impl CloudProvider for FakeCloud {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        let answer = self.script.lock().unwrap().pop_front().unwrap_or(LaunchAnswer::Made);
        match answer {
            LaunchAnswer::Refuses(e) => Err(e),
            LaunchAnswer::Made => Ok(self.make(request)),
            LaunchAnswer::MadeThenFails(e) => {
                self.make(request);
                Err(e)
            }
            LaunchAnswer::MadeThenHangs => {
                self.make(request);
                std::future::pending().await
            }
        }
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        let m = self.inner.lock().unwrap();
        Ok(m.machines
            .values()
            .filter(|i| i.state != CloudState::Terminated && !m.hidden.contains(&i.id))
            .filter(|i| m.cluster_of.get(&i.id).is_some_and(|c| c == cluster))
            .cloned()
            .collect())
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let delay = *self.terminate_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        {
            let mut m = self.inner.lock().unwrap();
            if let Some(i) = m.machines.get_mut(instance_id)
                && i.state != CloudState::Terminated
            {
                i.state = CloudState::Terminated;
                m.terminated.push(instance_id.to_string());
            }
        }
        if let Some(hook) = &*self.after_terminate.lock().unwrap() {
            hook(instance_id);
        }
        Ok(())
    }
}

/// A queue server: pending counts per queue and a worker list the test
/// edits directly.
#[derive(Default)]
pub struct FakeQueues {
    queues: Mutex<BTreeMap<String, u32>>,
    workers: Mutex<BTreeMap<String, Worker>>,
    unregistered: Mutex<Vec<String>>,
    down: Mutex<Option<String>>,
}

impl FakeQueues {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_pending(&self, queue: &str, pending: u32) {
        self.queues.lock().unwrap().insert(queue.to_string(), pending);
    }

    /// Registers (or replaces) a worker.
    pub fn register(&self, id: &str, queues: &[&str], task: Option<&str>) {
        self.workers.lock().unwrap().insert(
            id.to_string(),
            Worker {
                id: id.to_string(),
                queues: queues.iter().map(|q| q.to_string()).collect(),
                task: task.map(str::to_string),
                registered_at: None,
            },
        );
    }

    /// Gives a registered worker a task (None: it finished).
    pub fn set_task(&self, id: &str, task: Option<&str>) {
        if let Some(w) = self.workers.lock().unwrap().get_mut(id) {
            w.task = task.map(str::to_string);
        }
    }

    /// Drops a worker from the list, as a lapsed heartbeat would.
    pub fn drop_worker(&self, id: &str) {
        self.workers.lock().unwrap().remove(id);
    }

    /// Every call fails with this until `up`.
    pub fn go_down(&self, why: &str) {
        *self.down.lock().unwrap() = Some(why.to_string());
    }

    pub fn up(&self) {
        *self.down.lock().unwrap() = None;
    }

    pub fn unregistered(&self) -> Vec<String> {
        self.unregistered.lock().unwrap().clone()
    }

    fn check_up(&self) -> Result<(), SourceError> {
        match &*self.down.lock().unwrap() {
            Some(why) => Err(SourceError::Unreachable(why.clone())),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl QueueSource for FakeQueues {
    async fn observe(&self, queues: &[String]) -> Result<QueueObservation, SourceError> {
        self.check_up()?;
        let pending = self.queues.lock().unwrap();
        Ok(QueueObservation {
            queues: queues
                .iter()
                .map(|q| QueueState {
                    name: q.clone(),
                    pending: pending.get(q).copied().unwrap_or(0),
                    oldest_wait_ms: 0,
                })
                .collect(),
            workers: self.workers.lock().unwrap().values().cloned().collect(),
        })
    }

    async fn unregister_worker(&self, worker_id: &str) -> Result<(), SourceError> {
        self.check_up()?;
        self.workers.lock().unwrap().remove(worker_id);
        self.unregistered.lock().unwrap().push(worker_id.to_string());
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<Worker>, SourceError> {
        self.check_up()?;
        Ok(self.workers.lock().unwrap().values().cloned().collect())
    }
}
