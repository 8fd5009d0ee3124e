//! One tick: observe → snapshot → decide → guardrails → act → record.
//!
//! The controller owns no truth about what exists: every tick lists the
//! cloud by flockd's cluster tag and adopts what it finds, so a crash, a
//! restart or a lost response can never leave a machine untracked. What
//! the cloud cannot tell (idle timers, failure history) is in the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::Instrument;

use crate::clock::Clock;
use crate::decider::{Decider, Decision};
use crate::guardrails::{self, HardLimits, Unlisted};
use crate::journal::{Action, Outcome, QueueLine, TickRecord};
use crate::leader::Leadership;
use crate::ledger::{Ledger, Observation};
use crate::model::*;
use crate::naming;
use crate::provider::{CloudProvider, CloudState, LaunchRequest, ProviderError, ProviderScope};
use crate::provider_layers::{Measured, ProviderCallSink, Timed};
use crate::queue_source::{QueueSource, SourceError, Worker};
use crate::store::{HostState, RecordKind, StateStore};

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

/// Default [`ControllerConfig::action_timeout`].
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Default [`ControllerConfig::launch_visibility_grace`]; above the action
/// timeout, since `flockd check` refuses a grace shorter than it.
pub const DEFAULT_LAUNCH_VISIBILITY_GRACE: Duration = Duration::from_secs(360);

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
    /// Policies whose failure withholds a tick's launches (`required = true`):
    /// a spend guard that errors must not let the plan through unchecked.
    pub required_policies: BTreeSet<String>,
    /// Record plans, act on nothing.
    pub dry_run: bool,
    /// Configured provider name → the scope its machines live in (none for
    /// simulated ones). Remembered in the host state at the first launch.
    pub scopes: BTreeMap<String, ProviderScope>,
    /// Providers the host built for remembered scopes the config no longer
    /// names (provider name → scope key): listed, terminated through, never
    /// launched into, and forgotten once empty.
    pub retired: BTreeMap<String, String>,
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
            launch_visibility_grace: DEFAULT_LAUNCH_VISIBILITY_GRACE,
            termination_retry: Duration::from_secs(300),
            max_observation_age: Duration::from_secs(30),
            action_timeout: DEFAULT_ACTION_TIMEOUT,
            required_policies: BTreeSet::new(),
            dry_run: false,
            scopes: BTreeMap::new(),
            retired: BTreeMap::new(),
        }
    }

    /// Every queue a resource serves: those that list it.
    pub(crate) fn queues_of(&self, resource: &str) -> Vec<String> {
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
    /// The state as the store last took it: a save writes only the records
    /// that differ. Touched only while `state` is locked.
    saved: Mutex<HostState>,
    last: Mutex<Option<(Arc<Snapshot>, Arc<TickRecord>)>>,
    /// Spend so far today and this month, as of the last tick.
    spent: Mutex<crate::spend::Spent>,
    ready: AtomicBool,
    blindness: Mutex<Blindness>,
    ticks: tokio::sync::broadcast::Sender<TickReport>,
    /// With a shared store: who leads. Only the leader ticks.
    leadership: Option<tokio::sync::watch::Receiver<Leadership>>,
    /// Operator actions for the loop to run between ticks, and its end
    /// of the channel (taken by [`Controller::run`]).
    actions: tokio::sync::mpsc::Sender<ActionRequest>,
    pending_actions: Mutex<Option<tokio::sync::mpsc::Receiver<ActionRequest>>>,
    /// Mirrors `HostState::launches_paused`, readable without waiting for a tick.
    launches_paused: Mutex<Option<Millis>>,
}

/// What an operator can ask of a running flockd (the dashboard's buttons,
/// `POST /api/v1/actions/...`). Each runs as a tick of its own, on a fresh
/// observation and through the guardrails: a busy machine is never
/// terminated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Terminate every machine whose worker is idle now (of one resource).
    TerminateIdle { resource: Option<String> },
    /// Terminate this machine, unless its worker is busy.
    Terminate { instance: String },
}

struct ActionRequest {
    action: OperatorAction,
    done: tokio::sync::oneshot::Sender<Arc<TickRecord>>,
}

/// Why an operator action did not run.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("the control loop is not running")]
    NotRunning,
}

/// What flockd terminates as it stops (`[controller] on-shutdown`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnShutdown {
    /// Nothing: the next flockd adopts the fleet (today's behaviour).
    #[default]
    Leave,
    /// The machines whose worker is idle.
    Idle,
    /// Every machine whose worker is not busy, booting ones included.
    All,
}

impl OnShutdown {
    pub fn as_str(self) -> &'static str {
        match self {
            OnShutdown::Leave => "leave",
            OnShutdown::Idle => "idle",
            OnShutdown::All => "all",
        }
    }
}

/// What a finished tick hands to observers (metrics, the dashboard).
#[derive(Clone, Debug)]
pub struct TickReport {
    /// What the policies saw; None when observation failed.
    pub snapshot: Option<Arc<Snapshot>>,
    pub record: Arc<TickRecord>,
    /// Set while observations keep failing.
    pub blind: Option<Blind>,
}

/// The host cannot see: every observation since `since` failed, so it has
/// decided nothing since — and idle machines bill on. Said loudly (status,
/// `flockd_blind_seconds`, the dashboard, the log) because from outside it
/// looks like calm.
#[derive(Clone, Debug, PartialEq)]
pub struct Blind {
    /// When the first failed observation of this spell began (unix ms).
    pub since: Millis,
    /// The last observation's error.
    pub error: String,
    /// Failed ticks in a row.
    pub ticks: u64,
}

impl Blind {
    pub fn seconds(&self, now: Millis) -> f64 {
        now.saturating_sub(self.since) as f64 / 1000.0
    }
}

/// The first "still blind" warning, one minute into the spell.
fn first_blind_warning(since: Millis) -> Millis {
    since + 60_000
}

/// The next one: the time blind so far again, at most an hour later.
fn next_blind_warning(since: Millis, last: Millis) -> Millis {
    last + last.saturating_sub(since).clamp(60_000, 3_600_000)
}

#[derive(Default)]
struct Blindness {
    spell: Option<Blind>,
    next_warning: Millis,
}

/// Tick reports buffered per subscriber; one that falls further behind
/// misses the oldest (and is told so by the channel).
const TICK_REPORTS_BUFFERED: usize = 64;

/// Why a tick could not observe: it then decides nothing.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("queue source: {0}")]
    QueueSource(#[source] SourceError),
    #[error("queue source: no answer within {0:?}")]
    QueueSourceTimeout(Duration),
    #[error("provider {provider}: listing instances failed: {error}")]
    Listing { provider: String, error: ProviderError },
    #[error("provider {provider}: no answer within {after:?}")]
    ListingTimeout { provider: String, after: Duration },
}

impl Controller {
    /// Checks the config against the seams and loads the host state.
    pub async fn new(config: ControllerConfig, mut seams: Seams) -> anyhow::Result<Self> {
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
        let state = crate::store::load_state(seams.store.as_ref()).await?;
        let saved = state.clone();
        let launches_paused = state.launches_paused;
        let (actions, pending_actions) = tokio::sync::mpsc::channel(8);
        let spent = crate::spend::spent(&state.spend, seams.clock.now());
        // Every cloud call under its deadline, whatever provider it is.
        let (list, act) = (config.observe_timeout, config.action_timeout);
        for provider in seams.providers.values_mut() {
            *provider = Arc::new(Timed::new(provider.clone(), list, act));
        }
        Ok(Controller {
            config,
            seams,
            state: tokio::sync::Mutex::new(state),
            saved: Mutex::new(saved),
            last: Mutex::new(None),
            spent: Mutex::new(spent),
            ready: AtomicBool::new(false),
            blindness: Mutex::new(Blindness::default()),
            ticks: tokio::sync::broadcast::channel(TICK_REPORTS_BUFFERED).0,
            leadership: None,
            actions,
            pending_actions: Mutex::new(Some(pending_actions)),
            launches_paused: Mutex::new(launches_paused),
        })
    }

    /// Since when launches are paused, if they are.
    pub fn launches_paused(&self) -> Option<Millis> {
        *self.launches_paused.lock().unwrap()
    }

    /// Pauses or resumes launches (terminations go on either way). Kept in
    /// the store, so a pause survives a restart (and, with a shared store,
    /// a change of leader). Returns since when they are paused.
    pub async fn pause_launches(&self, paused: bool) -> anyhow::Result<Option<Millis>> {
        let mut state = self.state.lock().await;
        let before = state.launches_paused;
        state.launches_paused = match (paused, before) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(self.seams.clock.now()),
            (false, _) => None,
        };
        if let Err(e) = self.save(&state, Some(&[RecordKind::LaunchesPaused])).await {
            state.launches_paused = before;
            return Err(e);
        }
        *self.launches_paused.lock().unwrap() = state.launches_paused;
        tracing::warn!(paused, "launches {} by an operator", if paused { "paused" } else { "resumed" });
        Ok(state.launches_paused)
    }

    /// Has the control loop run `action` between its ticks, and waits for
    /// the tick it ran as.
    pub async fn request(&self, action: OperatorAction) -> Result<Arc<TickRecord>, ActionError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.actions.send(ActionRequest { action, done }).await.map_err(|_| ActionError::NotRunning)?;
        answer.await.map_err(|_| ActionError::NotRunning)
    }

    /// One tick whose plan is `action`'s instead of the policies'.
    async fn run_action(&self, action: &OperatorAction, epoch: Option<u64>) -> Arc<TickRecord> {
        let wanted = |i: &Instance| match action {
            OperatorAction::TerminateIdle { resource } => {
                i.state == InstanceState::Running && !i.busy && resource.as_ref().is_none_or(|r| &i.resource == r)
            }
            OperatorAction::Terminate { instance } => &i.id == instance,
        };
        let reason = match action {
            OperatorAction::TerminateIdle { .. } => "an operator shut down the idle machines",
            OperatorAction::Terminate { .. } => "an operator terminated this machine",
        };
        let plan = |snapshot: &Snapshot| terminate_where(snapshot, wanted, reason);
        self.next_tick(Some(&plan), epoch, |tick| tracing::info_span!("operator", tick, action = ?action)).await
    }

    /// Ticks only while `leadership` says this process leads (a shared
    /// store with a leader lease; see [`crate::leader`]).
    pub fn with_leadership(mut self, leadership: tokio::sync::watch::Receiver<Leadership>) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Who leads, with a shared store; None with an embedded one.
    pub fn leadership(&self) -> Option<Leadership> {
        self.leadership.as_ref().map(|l| l.borrow().clone())
    }

    /// Reads the host state back from the store: a new leader's first step,
    /// since another process may have led (and written) meanwhile. The next
    /// tick then reconciles the cloud listing and the unanswered intents
    /// before deciding.
    pub async fn reload_state(&self) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        let loaded = crate::store::load_state(self.seams.store.as_ref()).await?;
        *self.spent.lock().unwrap() = crate::spend::spent(&loaded.spend, self.seams.clock.now());
        *self.saved.lock().unwrap() = loaded.clone();
        *self.launches_paused.lock().unwrap() = loaded.launches_paused;
        *state = loaded;
        Ok(())
    }

    /// Reports every cloud call (its duration and error, a deadline's
    /// included) to `sink`, e.g. the host's `/metrics`.
    pub fn with_call_sink(mut self, sink: Arc<dyn ProviderCallSink>) -> Self {
        for (name, provider) in self.seams.providers.iter_mut() {
            // Around the deadline, so a call cut by it is measured too.
            *provider = Arc::new(Measured::new(name.clone(), provider.clone(), sink.clone()));
        }
        self
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

    /// What the fleet has cost today and this month (UTC), as of the last
    /// tick; kept in the store across restarts.
    pub fn spent(&self) -> crate::spend::Spent {
        *self.spent.lock().unwrap()
    }

    /// Set while every observation fails (since when, and why).
    pub fn blind(&self) -> Option<Blind> {
        self.blindness.lock().unwrap().spell.clone()
    }

    /// Every tick's report from now on, in order.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TickReport> {
        self.ticks.subscribe()
    }

    pub async fn host_state(&self) -> HostState {
        self.state.lock().await.clone()
    }

    /// Ticks every `interval` until `shutdown` resolves. A tick is never cut
    /// short by shutdown: it waits for cloud calls in flight, then state is
    /// saved. With a leader lease, it ticks only while leading: it waits for
    /// the lease, reloads the state, and stops at once when the lease is
    /// lost (a tick in flight is dropped: its launch intents are already in
    /// the store, where the next leader counts them).
    pub async fn run(&self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut actions = self.pending_actions.lock().unwrap().take();
        'terms: loop {
            let epoch = match &self.leadership {
                None => None,
                Some(leadership) => {
                    let mut leadership = leadership.clone();
                    let epoch = tokio::select! {
                        _ = &mut shutdown => break,
                        l = leadership.wait_for(|l| l.leading()) => match l {
                            Ok(l) => l.epoch,
                            Err(_) => break, // the campaign ended
                        },
                    };
                    if let Err(e) = self.reload_state().await {
                        tracing::error!("leading, but the store could not be read; retrying: {e:#}");
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(interval) => continue,
                        }
                    }
                    epoch
                }
            };
            let lost = async {
                match (epoch, &self.leadership) {
                    (Some(epoch), Some(l)) => crate::leader::lost(l.clone(), epoch).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::pin!(lost);
            loop {
                // A signal that came during start-up (or a tick) stops here,
                // before another tick starts launching.
                if futures::FutureExt::now_or_never(shutdown.as_mut()).is_some() {
                    break 'terms;
                }
                let started = tokio::time::Instant::now();
                tokio::select! {
                    biased;
                    _ = &mut lost => continue 'terms,
                    _ = self.tick_as(epoch) => {}
                }
                // Until the next tick: operator actions run as they come.
                loop {
                    tokio::select! {
                        _ = &mut shutdown => break 'terms,
                        _ = &mut lost => continue 'terms,
                        Some(request) = next_action(&mut actions) => {
                            let record = self.run_action(&request.action, epoch).await;
                            let _ = request.done.send(record);
                        }
                        _ = tokio::time::sleep_until(started + interval) => break,
                    }
                }
            }
        }
    }

    pub async fn tick(&self) -> Arc<TickRecord> {
        self.tick_as(None).await
    }

    /// One tick, under the lease's `epoch` when leading.
    async fn tick_as(&self, epoch: Option<u64>) -> Arc<TickRecord> {
        self.next_tick(None, epoch, |tick| {
            tracing::info_span!(
                "tick",
                tick,
                launched = tracing::field::Empty,
                terminated = tracing::field::Empty,
                failed = tracing::field::Empty,
                clamps = tracing::field::Empty
            )
        })
        .await
    }

    /// Numbers the next tick and runs it in the span `span` makes of its
    /// number; `plan`, when given, stands in for the policy chain.
    async fn next_tick(
        &self,
        plan: Option<&(dyn Fn(&Snapshot) -> Plan + Sync)>,
        epoch: Option<u64>,
        span: impl FnOnce(u64) -> tracing::Span,
    ) -> Arc<TickRecord> {
        let mut state = self.state.lock().await;
        state.tick += 1;
        let span = span(state.tick);
        self.tick_locked(&mut state, plan, epoch).instrument(span).await
    }

    /// What flockd does to the fleet as it stops (`[controller]
    /// on-shutdown`): one last tick, on a fresh observation, whose plan
    /// terminates the machines `mode` names instead of asking the policies.
    /// The guardrails hold as on any tick: a busy machine is never
    /// terminated, nor anything on a failed observation.
    pub async fn shutdown_fleet(&self, mode: OnShutdown) -> Option<Arc<TickRecord>> {
        let wanted: fn(&Instance) -> bool = match mode {
            OnShutdown::Leave => return None,
            OnShutdown::Idle => |i| i.state == InstanceState::Running && !i.busy,
            OnShutdown::All => |i| i.state != InstanceState::Stopping && !i.busy,
        };
        let reason = format!("on-shutdown = {}: flockd is stopping", mode.as_str());
        let plan = move |snapshot: &Snapshot| terminate_where(snapshot, wanted, &reason);
        Some(
            self.next_tick(Some(&plan), None, |tick| tracing::info_span!("shutdown", tick, mode = mode.as_str())).await,
        )
    }

    /// One tick; `plan`, when given, stands in for the policy chain.
    async fn tick_locked(
        &self,
        state: &mut HostState,
        plan: Option<&(dyn Fn(&Snapshot) -> Plan + Sync)>,
        epoch: Option<u64>,
    ) -> Arc<TickRecord> {
        let started = Instant::now();
        let now = self.seams.clock.now();
        let mut record =
            TickRecord { tick: state.tick, at: now, dry_run: self.config.dry_run, epoch, ..Default::default() };
        let ledger = Ledger::new(&self.config);
        let drained = self.drained(state);
        let reconciled = match self.observe(&drained).await {
            Err(e) => {
                // Its text is the queue server's or a cloud's: made printable.
                let e = crate::text::printable_owned(e.to_string());
                tracing::warn!("observation failed, deciding nothing this tick: {e}");
                self.went_blind(now, &e);
                record.observation_error = Some(e);
                None
            }
            Ok(observed) => {
                self.sees_again(now);
                let reconciled = ledger.reconcile(state, observed, now);
                self.unregister_zombies(&reconciled.zombie_workers, &mut record).await;
                Some(reconciled)
            }
        };
        let (snapshot, unlisted, to_delete, listed_by) = match reconciled {
            Some(r) => {
                record.foreign_machines = r.foreign;
                (Some(r.snapshot), r.unlisted, r.to_delete, r.listed_by)
            }
            None => (None, Unlisted::default(), Vec::new(), BTreeMap::new()),
        };
        let snapshot_arc = snapshot.map(Arc::new);
        // Spend up to now, before deciding: the daily and monthly budgets
        // clamp on it. The fleet's cost per hour as observed; when blind,
        // the last one goes on (the machines bill whether or not flockd
        // sees them).
        crate::spend::meter(&mut state.spend, now, snapshot_arc.as_ref().map(|s| s.budget.cost_per_hour));
        let spent = crate::spend::spent(&state.spend, now);
        *self.spent.lock().unwrap() = spent;
        if let Some(snapshot) = &snapshot_arc {
            self.ready.store(true, Ordering::Relaxed);
            record.snapshot_digest = Some(snapshot.digest());
            record.queues = snapshot
                .queues
                .iter()
                .map(|q| QueueLine { name: q.name.clone(), pending: q.pending, oldest_wait_ms: q.oldest_wait_ms })
                .collect();
            record.fleet = Some(crate::journal::FleetLine::of(snapshot));

            let decision = match plan {
                Some(plan) => Decision { plan: plan(snapshot), runs: vec![] },
                None => {
                    let decider = self.seams.decider.clone();
                    let input = snapshot.clone();
                    match tokio::task::spawn_blocking(move || decider.decide(&input)).await {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!("the policy chain panicked; acting on nothing this tick: {e}");
                            Default::default()
                        }
                    }
                }
            };
            // One launch per resource from here on: a plan of thousands of
            // entries for one resource (each valid alone) is acted on,
            // clamped and journaled as one line.
            let mut plan = decision.plan.with_launches_merged();
            record.plan = plan.clone();
            // A required policy that failed did not pass this plan: it may
            // still save money (terminations) but must not spend any.
            for run in decision.runs.iter().filter(|r| self.config.required_policies.contains(&r.policy)) {
                let Some(error) = &run.error else { continue };
                record.required_failed.push(run.policy.clone());
                withhold_launches(&mut plan, &mut record, &format!("required policy {} failed: {error}", run.policy));
            }
            record.policies = decision.runs;
            if !record.foreign_machines.is_empty() {
                let why = format!(
                    "{} listed machine(s) of cluster {:?} carry launch keys this flockd never wrote ({}): another flockd with the same cluster and another store is launching into this fleet, and both would apply the full caps. Stop the other one; launches resume once its machines are gone (the idle rules retire them, or terminate them by hand)",
                    record.foreign_machines.len(),
                    self.config.cluster,
                    record.foreign_machines.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                );
                withhold_launches(&mut plan, &mut record, &why);
            }
            if state.launches_paused.is_some() {
                withhold_launches(
                    &mut plan,
                    &mut record,
                    "launches are paused by an operator (resume them from the dashboard or POST /api/v1/actions/resume)",
                );
            }

            // A slow decision makes the observation stale: launches may still
            // go (limits are re-checked against the same counts), but nothing
            // is terminated on an old picture.
            let fresh = self.still_fresh(now);
            let periods = crate::spend::Periods::at(now, spent);
            let clamped = guardrails::clamp(&plan, snapshot, &self.config.limits, &unlisted, &periods, fresh);
            for c in &clamped.clamps {
                tracing::info!("guardrail: {c}");
            }
            record.clamps.extend(clamped.clamps);
            record.trims.extend(clamped.trims);
            let fleet = Fleet::new(snapshot, &listed_by);
            self.act(state, &fleet, &clamped.plan, now, &mut record).await;
            // Launches may have taken a while: on an old picture, leave the
            // stopped machines for the next tick (someone may have restarted one).
            if self.still_fresh(now) {
                self.delete_on_its_own(state, &fleet, &to_delete, now, &mut record).await;
            }
        }

        record.micros = started.elapsed().as_micros() as u64;
        if let Err(e) = self.save(state, None).await {
            tracing::error!("could not save host state: {e:#}");
        }
        if let Err(e) = self.seams.store.append(&record).await {
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
        let _ =
            self.ticks.send(TickReport { snapshot: snapshot_arc.clone(), record: record.clone(), blind: self.blind() });
        let mut last = self.last.lock().unwrap();
        *last = match (snapshot_arc, last.take()) {
            (Some(s), _) => Some((s, record.clone())),
            (None, Some((s, _))) => Some((s, record.clone())),
            (None, None) => None,
        };
        record
    }

    /// Writes what changed in `state` since the last save, record by record
    /// — only records of `kinds` when given (a launch's intent goes out on
    /// its own, before the cloud call).
    async fn save(&self, state: &HostState, kinds: Option<&[RecordKind]>) -> anyhow::Result<()> {
        let mut writes = state.changes_since(&self.saved.lock().unwrap());
        if let Some(kinds) = kinds {
            writes.retain(|w| kinds.contains(&w.key().kind));
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.seams.store.write(&writes).await?;
        self.saved.lock().unwrap().take_records(state, writes.iter().map(|w| w.key()));
        Ok(())
    }

    /// An observation failed at `now`: the spell starts or goes on, with a
    /// warning at growing intervals (1, 2, 4 … minutes in, then hourly).
    fn went_blind(&self, now: Millis, error: &str) {
        let mut b = self.blindness.lock().unwrap();
        let since = b.spell.as_ref().map_or(now, |s| s.since);
        let ticks = b.spell.as_ref().map_or(0, |s| s.ticks) + 1;
        if b.spell.is_none() {
            b.next_warning = first_blind_warning(since);
        }
        b.spell = Some(Blind { since, error: error.to_string(), ticks });
        if now >= b.next_warning {
            let fleet = self.last.lock().unwrap().as_ref().map(|(s, _)| (s.instances.len(), s.budget.cost_per_hour));
            let (machines, cost) = fleet.unwrap_or_default();
            tracing::warn!(
                blind_secs = now.saturating_sub(since) / 1000,
                "blind for {}: every observation for {ticks} ticks failed, so nothing is launched or terminated while {machines} machine(s) bill on ({cost:.2}/h at the last look); last error: {error}",
                crate::model::human_duration(now.saturating_sub(since)),
            );
            while b.next_warning <= now {
                b.next_warning = next_blind_warning(since, b.next_warning);
            }
        }
    }

    fn sees_again(&self, now: Millis) {
        if let Some(spell) = self.blindness.lock().unwrap().spell.take() {
            tracing::info!(
                "observing again after {} blind ({} failed ticks)",
                crate::model::human_duration(now.saturating_sub(spell.since)),
                spell.ticks
            );
        }
    }

    /// Queue source and every provider in parallel, each under the timeout.
    /// Any failure fails the whole observation: half a picture is how busy
    /// machines get killed and fleets over-launched.
    async fn observe(&self, drained: &BTreeSet<&str>) -> Result<Observation, ObserveError> {
        let timeout = self.config.observe_timeout;
        let names: Vec<String> = self.config.queues.iter().map(|q| q.name.clone()).collect();
        let queues = async {
            match tokio::time::timeout(timeout, self.seams.source.observe(&names)).await {
                Ok(Ok(o)) => Ok(o),
                Ok(Err(e)) => Err(ObserveError::QueueSource(e)),
                Err(_) => Err(ObserveError::QueueSourceTimeout(timeout)),
            }
        };
        // Configured providers first: a machine that a retired scope lists
        // too is theirs to terminate.
        let mut providers: Vec<_> =
            self.seams.providers.iter().filter(|(name, _)| !drained.contains(name.as_str())).collect();
        providers.sort_by_key(|(name, _)| self.config.retired.contains_key(name.as_str()));
        let lists = futures::future::join_all(providers.into_iter().map(|(name, p)| async move {
            match p.list(&self.config.cluster).await {
                Ok(v) => Ok((name, v)),
                Err(ProviderError::Timeout(_)) => {
                    Err(ObserveError::ListingTimeout { provider: name.clone(), after: timeout })
                }
                Err(error) => Err(ObserveError::Listing { provider: name.clone(), error }),
            }
        }));
        let (queues, lists) = tokio::join!(queues, lists);
        let queues = queues?;
        let mut instances = Vec::new();
        let mut listed_by = BTreeMap::new();
        for l in lists {
            let (name, listed) = l?;
            for i in listed.into_iter().filter(|i| i.state != CloudState::Terminated) {
                if !listed_by.contains_key(&i.id) {
                    listed_by.insert(i.id.clone(), name.clone());
                    instances.push(i);
                }
            }
        }
        Ok(Observation { queues, instances, listed_by })
    }

    /// Retired providers whose scope has been found empty and forgotten:
    /// no longer listed.
    fn drained<'a>(&'a self, state: &HostState) -> BTreeSet<&'a str> {
        self.config
            .retired
            .iter()
            .filter(|(_, key)| !state.scopes.contains_key(*key))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The provider to act on `instance` through: the one that listed it, or
    /// (a launch not listed yet) its resource's.
    fn provider_of(&self, fleet: &Fleet<'_>, instance: &Instance) -> Option<&Arc<dyn CloudProvider>> {
        let name = match fleet.listed_by.get(&instance.id) {
            Some(name) => name,
            None => &self.resource_spec(&instance.resource)?.provider,
        };
        self.seams.providers.get(name)
    }

    /// Carries out what reconciling asked for: workers whose machine is gone
    /// are unregistered so they stop counting as capacity.
    async fn unregister_zombies(&self, zombies: &[String], record: &mut TickRecord) {
        for worker in zombies {
            if !self.config.dry_run {
                match self.seams.source.unregister_worker(worker).await {
                    Ok(()) => tracing::info!(worker = %worker, "unregistered worker whose machine is gone"),
                    Err(e) => {
                        tracing::warn!(worker = %worker, "could not unregister worker whose machine is gone: {e}")
                    }
                }
            }
            record.unregistered.push(worker.clone());
        }
    }

    /// Whether an observation made at `observed` is still recent enough to
    /// terminate on.
    fn still_fresh(&self, observed: Millis) -> bool {
        Duration::from_millis(self.seams.clock.now().saturating_sub(observed)) <= self.config.max_observation_age
    }

    fn resource_spec(&self, name: &str) -> Option<&ResourceSpec> {
        self.config.resources.iter().find(|r| r.name == name)
    }

    async fn act(&self, state: &mut HostState, fleet: &Fleet<'_>, plan: &Plan, now: Millis, record: &mut TickRecord) {
        let ledger = Ledger::new(&self.config);
        let mut slots = ledger.launch_slots(state, plan, now);
        for slot in slots.iter().filter(|s| s.resend) {
            tracing::info!(resource = %slot.resource, "asking again for launch {}, whose answer never came", slot.key);
        }
        if self.config.dry_run {
            for slot in slots {
                tracing::info!(resource = %slot.resource, "dry run, would launch: {}", slot.reason);
                record.actions.push(Action::Launch {
                    resource: slot.resource,
                    key: slot.key,
                    reason: slot.reason,
                    outcome: Outcome::Skipped,
                    instance: None,
                });
            }
            for t in &plan.terminations {
                tracing::info!(instance = %t.instance, "dry run, would terminate: {}", t.reason);
                record.actions.push(termination_action(fleet, t, Outcome::Skipped));
            }
            return;
        }

        // Written down before the cloud hears of them: if flockd dies before
        // the answers come, the next start still counts these machines.
        let new_keys = ledger.intend(state, &slots, now);
        if !new_keys.is_empty()
            && let Err(e) =
                self.save(state, Some(&[RecordKind::Launching, RecordKind::OwnKey, RecordKind::Scope])).await
        {
            tracing::error!("could not save the launches before making them, so none is made: {e:#}");
            ledger.withdraw(state, &new_keys);
            for slot in slots.drain(..) {
                record.actions.push(Action::Launch {
                    resource: slot.resource,
                    key: slot.key,
                    reason: slot.reason,
                    outcome: Outcome::Failed(format!("not launched: saving it first failed: {e:#}")),
                    instance: None,
                });
            }
        }

        let results: Vec<_> = futures::stream::iter(slots.into_iter().map(|slot| async move {
            let spec = self.resource_spec(&slot.resource).expect("guardrails dropped unknown resources");
            let provider = &self.seams.providers[&spec.provider];
            let request = LaunchRequest {
                cluster: self.config.cluster.clone(),
                resource: slot.resource.clone(),
                queues: self.config.queues_of(&slot.resource),
                idempotency_key: slot.key.clone(),
            };
            let answer = provider.launch(&request).await;
            (slot, answer, self.seams.clock.now())
        }))
        .buffer_unordered(self.config.launch_concurrency.max(1))
        .collect()
        .await;
        for (slot, answer, at) in results {
            ledger.launch_answered(state, &slot, &answer, at);
            let (outcome, instance) = match answer {
                Ok(instance) => {
                    tracing::info!(resource = %slot.resource, instance = %instance.id, "launched: {}", slot.reason);
                    (Outcome::Done, Some(instance.id))
                }
                Err(e) => {
                    tracing::warn!(resource = %slot.resource, "launch failed: {e}");
                    (Outcome::Failed(e.to_string()), None)
                }
            };
            record.actions.push(Action::Launch {
                resource: slot.resource,
                key: slot.key,
                reason: slot.reason,
                outcome,
                instance,
            });
        }

        if plan.terminations.is_empty() {
            return;
        }
        // The last look, machine by machine: terminations run one after
        // another and each may take minutes, so a worker idle at the start
        // of the batch may have taken a task by the time its turn comes.
        for t in &plan.terminations {
            let instance = fleet.get(&t.instance).expect("guardrails dropped unknown instances");
            let worker_id = naming::worker_id(&self.config.cluster, &instance.resource, &instance.id);
            let outcome = match self.worker_right_now(&worker_id).await {
                Err(e) => Outcome::Refused(e),
                Ok(Some(Worker { task: Some(task), .. })) => {
                    Outcome::Refused(format!("its worker took task {task} after the decision"))
                }
                // A worker that was there when we decided and is gone now is
                // not known to be idle (it may be re-registering mid-task).
                Ok(None) if instance.worker.is_some() => Outcome::Refused(format!(
                    "its worker {worker_id} is no longer registered, so it is not known to be idle"
                )),
                Ok(_) => self.terminate(state, fleet, instance, t, now, &worker_id).await,
            };
            if let Outcome::Refused(why) = &outcome {
                tracing::info!(instance = %t.instance, "not terminated: {why}");
            }
            record.actions.push(termination_action(fleet, t, outcome));
        }
    }

    /// The worker as the queue source lists it now, for the last look
    /// before a termination.
    async fn worker_right_now(&self, worker_id: &str) -> Result<Option<Worker>, String> {
        match tokio::time::timeout(self.config.observe_timeout, self.seams.source.workers()).await {
            Ok(Ok(workers)) => Ok(workers.into_iter().find(|w| w.id == worker_id)),
            Ok(Err(e)) => Err(format!("could not re-check its worker before terminating: {e}")),
            Err(_) => Err("could not re-check its worker before terminating: no answer in time".to_string()),
        }
    }

    async fn terminate(
        &self,
        state: &mut HostState,
        fleet: &Fleet<'_>,
        instance: &Instance,
        t: &Termination,
        now: Millis,
        worker_id: &str,
    ) -> Outcome {
        let Some(provider) = self.provider_of(fleet, instance) else {
            return Outcome::Failed(format!("resource {:?} is not configured", instance.resource));
        };
        match provider.terminate(&instance.id).await {
            Ok(()) => {
                tracing::info!(instance = %instance.id, resource = %instance.resource, "terminated: {}", t.reason);
                Ledger::new(&self.config).terminated(state, instance, t.cause, now);
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
    /// off when its agent exits) or that the cloud reports failed (a pod
    /// that cannot be scheduled) run no agent but bill and hold a slot:
    /// delete them. A host rule, not a policy's: no plugin can forget it,
    /// and it needs no worker re-check (no agent runs there; a failed
    /// machine whose worker is busy is not in the list).
    async fn delete_on_its_own(
        &self,
        state: &mut HostState,
        fleet: &Fleet<'_>,
        to_delete: &[crate::ledger::Deletion],
        now: Millis,
        record: &mut TickRecord,
    ) {
        for deletion in to_delete {
            let id = &deletion.instance;
            let Some(instance) = fleet.get(id) else { continue };
            let reason = match &deletion.failure {
                Some(f) => format!("the cloud reports it failed ({}): deleting it", f.message),
                None => "powered off (its agent exited): deleting it so it stops billing".into(),
            };
            let t = Termination { instance: id.clone(), cause: TerminationCause::Other, reason };
            let outcome = if self.config.dry_run {
                Outcome::Skipped
            } else {
                let worker_id = naming::worker_id(&self.config.cluster, &instance.resource, &instance.id);
                let outcome = self.terminate(state, fleet, instance, &t, now, &worker_id).await;
                let ledger = Ledger::new(&self.config);
                match (&outcome, &deletion.failure) {
                    (Outcome::Failed(_), _) => ledger.deletion_failed(state, id, now),
                    (Outcome::Done, Some(failure)) => ledger.machine_failed(state, instance, failure, now),
                    _ => {}
                }
                outcome
            };
            record.actions.push(termination_action(fleet, &t, outcome));
        }
    }
}

/// A plan that terminates the machines `wanted` picks, for `reason`.
fn terminate_where(snapshot: &Snapshot, wanted: impl Fn(&Instance) -> bool, reason: &str) -> Plan {
    Plan {
        launches: vec![],
        terminations: snapshot
            .instances
            .iter()
            .filter(|i| wanted(i))
            .map(|i| Termination { instance: i.id.clone(), cause: TerminationCause::Other, reason: reason.to_string() })
            .collect(),
    }
}

/// The next operator action; never, without a channel.
async fn next_action(actions: &mut Option<tokio::sync::mpsc::Receiver<ActionRequest>>) -> Option<ActionRequest> {
    match actions {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Drops every launch of `plan`, with a clamp line saying why (nothing when
/// it launches nothing).
fn withhold_launches(plan: &mut Plan, record: &mut TickRecord, why: &str) {
    if plan.launches.is_empty() {
        return;
    }
    let message = format!("withheld {} launch(es): {why}", plan.total_launches());
    tracing::warn!("{message}");
    record.clamps.push(message);
    plan.launches.clear();
}

/// The machines a tick acts on: looked up through a map built once per
/// tick (a plan may name thousands), each with the provider that listed it.
struct Fleet<'a> {
    by_id: HashMap<&'a str, &'a Instance>,
    /// Instance id → provider name (see [`Observation::listed_by`]).
    listed_by: &'a BTreeMap<String, String>,
}

impl<'a> Fleet<'a> {
    fn new(snapshot: &'a Snapshot, listed_by: &'a BTreeMap<String, String>) -> Self {
        Fleet { by_id: snapshot.instances.iter().map(|i| (i.id.as_str(), i)).collect(), listed_by }
    }

    fn get(&self, id: &str) -> Option<&'a Instance> {
        self.by_id.get(id).copied()
    }
}

fn termination_action(fleet: &Fleet<'_>, t: &Termination, outcome: Outcome) -> Action {
    Action::Terminate {
        instance: t.instance.clone(),
        resource: fleet.get(&t.instance).map(|i| i.resource.clone()).unwrap_or_default(),
        cause: t.cause,
        reason: t.reason.clone(),
        outcome,
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
