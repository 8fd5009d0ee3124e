//! The controller against in-memory fakes on tokio's paused clock: every
//! timeout and slow cloud call below is virtual time. Each test names the
//! guard it protects and was seen failing with that guard taken out.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::TokioClock;
use crate::model::{Launch, Plan, Snapshot, Termination, TerminationCause};
use crate::provider_layers::{ProviderCall, ProviderCallSink};
use crate::store::{JournalQuery, MemoryStore};
use crate::testing::{FakeCloud, FakeQueues, LaunchAnswer};

const T0: Millis = 1_767_225_600_000;
const CLUSTER: &str = "c";

struct Fixture {
    clock: Arc<TokioClock>,
    cloud: Arc<FakeCloud>,
    queues: Arc<FakeQueues>,
    store: Arc<MemoryStore>,
    config: ControllerConfig,
}

impl Fixture {
    /// One queue `q` served by resource `a` (max `max`) on a fake cloud.
    fn new(max: u32) -> Self {
        let clock = Arc::new(TokioClock::new(T0));
        let config = ControllerConfig::new(
            CLUSTER,
            vec![QueueSpec { name: "q".into(), resources: vec!["a".into()] }],
            vec![ResourceSpec {
                name: "a".into(),
                provider: "fake".into(),
                max_instances: max,
                price_per_hour: 1.0,
                market: Market::OnDemand,
            }],
            HardLimits { max_instances: 100, max_cost_per_hour: 1000.0, ..Default::default() },
        );
        Fixture {
            cloud: Arc::new(FakeCloud::new(clock.clone())),
            clock,
            queues: Arc::new(FakeQueues::new()),
            store: Arc::new(MemoryStore::default()),
            config,
        }
    }

    async fn controller(&self, decider: impl Fn(&Snapshot) -> Plan + Send + Sync + 'static) -> Controller {
        self.controller_over(Arc::new(decider), self.store.clone()).await
    }

    /// A controller with this decider and store over the fixture's world.
    async fn controller_over(&self, decider: Arc<dyn Decider>, store: Arc<dyn StateStore>) -> Controller {
        let seams = Seams {
            source: self.queues.clone(),
            providers: BTreeMap::from([("fake".to_string(), self.cloud.clone() as Arc<dyn CloudProvider>)]),
            decider,
            store,
            clock: self.clock.clone(),
        };
        Controller::new(self.config.clone(), seams).await.unwrap()
    }

    /// `n` running machines of `a`, each with an idle registered worker.
    async fn idle_fleet(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for k in 0..n {
            let request = LaunchRequest {
                cluster: CLUSTER.into(),
                resource: "a".into(),
                queues: vec!["q".into()],
                idempotency_key: format!("setup-{k}"),
            };
            let i = self.cloud.launch(&request).await.unwrap();
            self.queues.register(&naming::worker_id(CLUSTER, "a", &i.id), &["q"], None);
            ids.push(i.id);
        }
        ids
    }
}

/// `n` ticks, `POLL` apart on the paused clock.
async fn ticks(controller: &Controller, n: usize) {
    for _ in 0..n {
        tokio::time::advance(POLL).await;
        controller.tick().await;
    }
}

const POLL: Duration = Duration::from_secs(10);

fn worker_of(id: &str) -> String {
    naming::worker_id(CLUSTER, "a", id)
}

/// Terminates every idle machine, in id order.
fn terminate_all_idle(s: &Snapshot) -> Plan {
    let mut idle: Vec<&str> = s.instances.iter().filter(|i| i.idle_since.is_some()).map(|i| i.id.as_str()).collect();
    idle.sort();
    Plan {
        launches: vec![],
        terminations: idle
            .into_iter()
            .map(|id| Termination { instance: id.into(), cause: TerminationCause::Idle, reason: "idle".into() })
            .collect(),
    }
}

/// Launches one machine of `a` every tick; the guardrails decide how many go.
fn one_more_a(_: &Snapshot) -> Plan {
    Plan { launches: vec![Launch { resource: "a".into(), count: 1, reason: "greedy".into() }], terminations: vec![] }
}

fn outcomes(record: &TickRecord) -> BTreeMap<String, Outcome> {
    record
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Terminate { instance, outcome, .. } => Some((instance.clone(), outcome.clone())),
            _ => None,
        })
        .collect()
}

/// Guard: each machine's worker is re-read right before its own terminate
/// call (controller `act`). Ten idle machines are terminated one after
/// another, each call taking 5 s; the fifth machine's worker takes a task
/// after the first call — it must be spared, the other nine go.
#[tokio::test(start_paused = true)]
async fn a_worker_that_takes_a_task_during_a_slow_termination_batch_is_spared() {
    let f = Fixture::new(20);
    let ids = f.idle_fleet(10).await;
    let controller = f.controller(terminate_all_idle).await;
    // First tick sees them idle; they have been idle long enough for the
    // closure (it terminates any idle machine).
    f.cloud.set_terminate_delay(Duration::from_secs(5));
    let fifth = ids[4].clone();
    let queues = f.queues.clone();
    f.cloud.after_terminate(move |_| queues.set_task(&worker_of(&fifth), Some("task-late")));

    let record = controller.tick().await;
    let outcomes = outcomes(&record);
    assert_eq!(outcomes.len(), 10, "{record:#?}");
    assert!(
        matches!(&outcomes[&ids[4]], Outcome::Refused(why) if why.contains("task-late")),
        "the fifth machine's worker took a task mid-batch and was killed: {:?}",
        outcomes[&ids[4]]
    );
    let terminated = f.cloud.terminated();
    assert_eq!(terminated.len(), 9, "{terminated:?}");
    assert!(!terminated.contains(&ids[4]));
}

/// Guard: a worker that is gone from the fresh list right before its
/// machine's termination is not "idle" (it may have restarted into a task
/// under a new registration): the termination is refused.
#[tokio::test(start_paused = true)]
async fn a_machine_whose_worker_vanished_since_the_decision_is_not_terminated() {
    let f = Fixture::new(5);
    let ids = f.idle_fleet(2).await;
    let controller = f.controller(terminate_all_idle).await;
    f.cloud.set_terminate_delay(Duration::from_secs(5));
    let second = ids[1].clone();
    let queues = f.queues.clone();
    f.cloud.after_terminate(move |_| queues.drop_worker(&worker_of(&second)));

    let record = controller.tick().await;
    let outcomes = outcomes(&record);
    assert_eq!(outcomes[&ids[0]], Outcome::Done);
    assert!(matches!(&outcomes[&ids[1]], Outcome::Refused(_)), "{:?}", outcomes[&ids[1]]);
    assert_eq!(f.cloud.terminated(), vec![ids[0].clone()]);
}

/// Guard: a launch cut by the action timeout keeps counting for the whole
/// grace *after* the timeout (its intent is stamped when the answer should
/// have come, not at the tick's start). The grace is set to the shortest
/// `flockd check` allows, the action timeout itself. The cloud made the
/// machine and lists it only much later.
#[tokio::test(start_paused = true)]
async fn a_launch_cut_by_the_action_timeout_is_not_forgotten_while_the_cloud_hides_it() {
    let mut f = Fixture::new(1);
    f.config.launch_visibility_grace = f.config.action_timeout;
    f.cloud.script([LaunchAnswer::MadeThenHangs]);
    f.cloud.hide_new_machines(true);
    let controller = f.controller(one_more_a).await;

    let first = controller.tick().await;
    assert!(matches!(&first.actions[..], [Action::Launch { outcome: Outcome::Failed(_), .. }]), "{:#?}", first.actions);
    // The tick waited out the action timeout (300 s of virtual time).
    assert!(f.clock.now() - T0 >= 300_000);
    ticks(&controller, 20).await;
    assert_eq!(f.cloud.made(), 1, "a second machine past a's max of 1: {:?}", f.cloud.alive());
    f.cloud.reveal();
    ticks(&controller, 1).await;
    assert_eq!(f.cloud.made(), 1);
}

/// Guard: a launch answered with an error that does not say whether the
/// machine was made (a 5xx after the cloud acted) keeps its intent; only
/// definite refusals drop it. The cloud hides the machine for several ticks.
#[tokio::test(start_paused = true)]
async fn a_launch_answered_with_an_unknown_outcome_keeps_counting() {
    let f = Fixture::new(1);
    f.cloud.script([LaunchAnswer::MadeThenFails(ProviderError::Other("HTTP 503 Service Unavailable".into()))]);
    f.cloud.hide_new_machines(true);
    let controller = f.controller(one_more_a).await;

    controller.tick().await;
    ticks(&controller, 6).await;
    assert_eq!(f.cloud.made(), 1, "a second machine past a's max of 1: {:?}", f.cloud.alive());
    f.cloud.reveal();
    ticks(&controller, 1).await;
    assert_eq!(f.cloud.made(), 1);
    assert!(controller.host_state().await.launching.is_empty());
}

/// And a definite refusal drops it: nothing was made, so nothing counts,
/// and the next tick may launch again.
#[tokio::test(start_paused = true)]
async fn a_definitely_refused_launch_does_not_hold_a_slot() {
    let f = Fixture::new(1);
    f.cloud.script([LaunchAnswer::Refuses(ProviderError::Capacity("none left".into()))]);
    let controller = f.controller(one_more_a).await;

    controller.tick().await;
    assert!(controller.host_state().await.launching.is_empty());
    ticks(&controller, 1).await;
    assert_eq!(f.cloud.made(), 1);
}

/// Guard: while observation keeps failing the host decides nothing, and it
/// says for how long (controller `blind`), in every tick report and to
/// anyone who asks, until an observation succeeds again.
#[tokio::test(start_paused = true)]
async fn how_long_the_host_has_been_blind_is_known_until_it_sees_again() {
    let f = Fixture::new(2);
    f.idle_fleet(1).await;
    let controller = f.controller(terminate_all_idle).await;
    let mut reports = controller.subscribe();
    f.queues.go_down("connection refused");

    let first_failure = f.clock.now();
    controller.tick().await;
    ticks(&controller, 30).await;
    let blind = controller.blind().expect("blind after 31 failed observations");
    assert_eq!(blind.since, first_failure);
    assert!(blind.error.contains("connection refused"), "{blind:?}");
    assert_eq!(blind.seconds(f.clock.now()), 300.0);
    let mut last = None;
    while let Ok(r) = reports.try_recv() {
        last = Some(r);
    }
    assert_eq!(last.unwrap().blind.map(|b| b.since), Some(first_failure));
    assert!(f.cloud.terminated().is_empty(), "decided while blind");

    f.queues.up();
    ticks(&controller, 1).await;
    assert_eq!(controller.blind(), None);
}

/// The "still blind" warning comes at growing intervals, not every tick.
#[test]
fn blind_warnings_come_after_one_two_four_minutes_then_hourly_at_most() {
    let mut at = Vec::new();
    let mut next = first_blind_warning(0);
    for _ in 0..9 {
        at.push(next / 60_000);
        next = next_blind_warning(0, next);
    }
    assert_eq!(at, vec![1, 2, 4, 8, 16, 32, 64, 124, 184]);
}

/// A chain whose `budget` run failed this tick, with the plan the rest of
/// the chain made: one launch and one termination.
struct BudgetFails;

impl Decider for BudgetFails {
    fn decide(&self, snapshot: &Arc<Snapshot>) -> crate::decider::Decision {
        let mut plan = one_more_a(snapshot);
        plan.terminations = terminate_all_idle(snapshot).terminations;
        let run = |policy: &str, error: Option<&str>| crate::decider::PolicyRun {
            policy: policy.into(),
            version: "v".into(),
            micros: 1,
            error: error.map(str::to_string),
            logs: vec![],
        };
        crate::decider::Decision {
            plan,
            runs: vec![run("scale-up", None), run("budget", Some("timed out after 50 ms"))],
        }
    }
}

/// Guard: when a policy marked `required` fails, its input plan must not
/// pass on as if it had agreed: that tick launches nothing (terminations
/// still go, they only save money), and the record says why.
#[tokio::test(start_paused = true)]
async fn a_failed_required_policy_withholds_the_ticks_launches_but_not_its_terminations() {
    let mut f = Fixture::new(5);
    f.config.required_policies = ["budget".to_string()].into();
    let ids = f.idle_fleet(1).await;
    let controller = f.controller_over(Arc::new(BudgetFails), f.store.clone()).await;

    let record = controller.tick().await;
    assert_eq!(f.cloud.made(), 1, "launched although the required budget policy failed: {record:#?}");
    assert_eq!(f.cloud.terminated(), ids, "terminations go on");
    assert_eq!(record.required_failed, vec!["budget".to_string()]);
    assert!(record.clamps.iter().any(|c| c.contains("required policy budget failed")), "{:?}", record.clamps);

    // The same failure in a policy that is not required passes the plan on.
    f.config.required_policies.clear();
    let controller = f.controller_over(Arc::new(BudgetFails), f.store.clone()).await;
    ticks(&controller, 1).await;
    assert_eq!(f.cloud.made(), 2);
}

/// Guard: two flockd processes with the same cluster but separate stores (a
/// second copy started by mistake) would each apply the full caps. A listed
/// machine carrying a launch key this store never wrote means another
/// writer: launches stop until it is gone, and the record says why.
#[tokio::test(start_paused = true)]
async fn a_machine_launched_by_another_writer_stops_launches() {
    let f = Fixture::new(5);
    let first = f.controller(one_more_a).await;
    first.tick().await;
    assert_eq!(f.cloud.made(), 1);

    // A second flockd on the same fleet with its own store adopts what it
    // finds at its first look, then launches on its own.
    let second = f.controller_over(Arc::new(one_more_a), Arc::new(MemoryStore::default())).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    second.tick().await;
    assert_eq!(f.cloud.made(), 2);

    tokio::time::advance(Duration::from_secs(10)).await;
    let record = first.tick().await;
    assert_eq!(f.cloud.made(), 2, "the first flockd launched beside another writer: {record:#?}");
    assert_eq!(record.foreign_machines.len(), 1, "{record:#?}");
    assert!(record.clamps.iter().any(|c| c.contains("another flockd")), "{:?}", record.clamps);

    // Once the other writer's machine is gone, launching resumes.
    for id in &record.foreign_machines {
        f.cloud.terminate(id).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let record = first.tick().await;
    assert!(record.foreign_machines.is_empty());
    assert_eq!(f.cloud.made(), 3);
}

/// Guard: a machine of a resource dropped from the config still bills at
/// the price it had, so renaming a resource cannot double the spend past
/// the cost cap (the ledger keeps each resource's last known price).
#[tokio::test(start_paused = true)]
async fn renaming_a_resource_does_not_open_room_under_the_cost_cap() {
    let mut f = Fixture::new(5);
    f.config.resources[0].price_per_hour = 10.0;
    f.config.limits.max_cost_per_hour = 15.0;
    let before = f.controller(one_more_a).await;
    before.tick().await;
    assert_eq!(f.cloud.made(), 1);
    drop(before);

    // Same store, resource `a` renamed `b` at the same price.
    f.config.resources[0].name = "b".into();
    f.config.queues[0].resources = vec!["b".into()];
    let after = f
        .controller(|_: &Snapshot| Plan {
            launches: vec![Launch { resource: "b".into(), count: 1, reason: "greedy".into() }],
            terminations: vec![],
        })
        .await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let record = after.tick().await;
    assert_eq!(f.cloud.made(), 1, "a second machine took the spend to 20/h against a cap of 15/h: {record:#?}");
    assert!(record.clamps.iter().any(|c| c.contains("cost cap")), "{:?}", record.clamps);
}

/// Guard: a plan of thousands of launch entries for one resource (each valid
/// alone, as a policy may return) is acted on, clamped and journaled as one
/// line per resource, so the tick's record stays small whatever the chain
/// returned (issue 10, hole 2).
#[tokio::test(start_paused = true)]
async fn ten_thousand_launch_entries_for_one_resource_become_one_line() {
    let f = Fixture::new(3);
    let controller = f
        .controller(|_: &Snapshot| Plan {
            launches: vec![Launch { resource: "a".into(), count: 1, reason: "one more".into() }; 10_000],
            terminations: vec![],
        })
        .await;
    let record = controller.tick().await;
    assert_eq!(f.cloud.made(), 3, "the resource's cap still holds");
    assert_eq!(
        record.plan.launches.len(),
        1,
        "journaled as one launch: {:?}",
        &record.plan.launches[..2.min(record.plan.launches.len())]
    );
    assert_eq!(record.plan.launches[0].count, 10_000);
    assert_eq!(record.clamps.len(), 1, "one clamp line: {:?}", &record.clamps[..3.min(record.clamps.len())]);
    let journaled = serde_json::to_string(&*record).unwrap();
    assert!(journaled.len() < 8 * 1024, "the record is {} bytes", journaled.len());
}

/// Guard: a cloud call cut by the action timeout is measured (as a timeout),
/// not lost with the dropped call: the sink sits outside the deadline.
#[tokio::test(start_paused = true)]
async fn a_call_cut_by_its_deadline_is_measured_as_a_timeout() {
    #[derive(Default)]
    struct Kinds(Mutex<Vec<(ProviderCall, bool)>>);
    impl ProviderCallSink for Kinds {
        fn record(&self, _: &str, call: ProviderCall, _: Duration, error: Option<&ProviderError>) {
            self.0.lock().unwrap().push((call, matches!(error, Some(ProviderError::Timeout(_)))));
        }
    }
    let f = Fixture::new(1);
    f.cloud.script([LaunchAnswer::MadeThenHangs]);
    let sink = Arc::new(Kinds::default());
    let controller = f.controller(one_more_a).await.with_call_sink(sink.clone());
    controller.tick().await;
    let recorded = sink.0.lock().unwrap().clone();
    assert!(recorded.contains(&(ProviderCall::Launch, true)), "{recorded:?}");
    assert!(recorded.contains(&(ProviderCall::List, false)), "{recorded:?}");
}

/// Guard: every scope launched into is remembered (ledger
/// `remember_scope_of`), and one the config no longer names is listed and
/// acted on through its own provider (controller `observe`, `provider_of`)
/// until it is empty (ledger `keep_scopes`) (issue 10, hole 3). Two machines
/// in region A, the config moves to region B with the same caps: no machine
/// in B while A's two count; once the idle rule has retired them through
/// A's provider, B launches and A is forgotten.
#[tokio::test(start_paused = true)]
async fn machines_in_a_scope_the_config_no_longer_names_count_and_are_retired() {
    let mut f = Fixture::new(2);
    f.config.limits.max_instances = 2;
    let scope = |place: &str| ProviderScope { kind: "fake".into(), place: place.into(), settings: "{}".into() };
    f.config.scopes = BTreeMap::from([("fake".to_string(), scope("region A"))]);
    let greedy_and_idle = |s: &Snapshot| Plan { launches: one_more_a(s).launches, ..terminate_all_idle(s) };
    let in_a = f.controller(greedy_and_idle).await;
    ticks(&in_a, 3).await;
    let machines_in_a: Vec<String> = f.cloud.alive().into_iter().map(|i| i.id).collect();
    assert_eq!(machines_in_a.len(), 2);
    drop(in_a);
    assert!(
        crate::store::load_state(&*f.store).await.unwrap().scopes.contains_key("fake: region A"),
        "the scope launched into is remembered"
    );

    let region_b = Arc::new(FakeCloud::new(f.clock.clone()).with_ids("b"));
    f.config.scopes = BTreeMap::from([("fake".to_string(), scope("region B"))]);
    f.config.retired = BTreeMap::from([("fake in region A".to_string(), "fake: region A".to_string())]);
    let seams = Seams {
        source: f.queues.clone(),
        providers: BTreeMap::from([
            ("fake".to_string(), region_b.clone() as Arc<dyn CloudProvider>),
            ("fake in region A".to_string(), f.cloud.clone() as Arc<dyn CloudProvider>),
        ]),
        decider: Arc::new(greedy_and_idle),
        store: f.store.clone(),
        clock: f.clock.clone(),
    };
    let in_b = Controller::new(f.config.clone(), seams).await.unwrap();
    ticks(&in_b, 3).await;
    assert_eq!(region_b.made(), 0, "region A's two machines count against max-instances 2");

    for id in &machines_in_a {
        f.queues.register(&worker_of(id), &["q"], None);
    }
    ticks(&in_b, 2).await;
    assert_eq!(f.cloud.terminated(), machines_in_a, "the idle rule retires them through region A's provider");
    ticks(&in_b, 3).await;
    assert_eq!(region_b.made(), 2, "region B launches once region A is empty");
    assert!(!in_b.host_state().await.scopes.contains_key("fake: region A"), "an empty retired scope is forgotten");
}

/// A memory store that keeps every write it was given.
#[derive(Default)]
struct WriteLog {
    inner: MemoryStore,
    writes: Mutex<Vec<Vec<crate::store::StateChange>>>,
}

#[async_trait::async_trait]
impl StateStore for WriteLog {
    async fn load(&self) -> anyhow::Result<crate::store::Records> {
        self.inner.load().await
    }
    async fn write(&self, changes: &[crate::store::StateChange]) -> anyhow::Result<()> {
        self.writes.lock().unwrap().push(changes.to_vec());
        self.inner.write(changes).await
    }
    async fn append(&self, record: &TickRecord) -> anyhow::Result<()> {
        self.inner.append(record).await
    }
    async fn journal(&self, query: &crate::store::JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
        self.inner.journal(query).await
    }
}

/// Guard: the store is written record by record (controller `save`): the
/// intent saved before a launch is that intent and its key alone — what a
/// database store writes on its own under a leader's epoch — not the whole
/// state (here 60 fresh idle timers), which follows at the tick's end; and
/// a tick that changes nothing writes nothing.
#[tokio::test(start_paused = true)]
async fn a_launch_intent_is_written_on_its_own_and_an_idle_tick_writes_nothing() {
    let f = Fixture::new(300);
    f.idle_fleet(60).await;
    let store = Arc::new(WriteLog::default());
    let launch_once = Arc::new(AtomicBool::new(true));
    let decider = {
        let launch_once = launch_once.clone();
        move |s: &Snapshot| if launch_once.swap(false, Ordering::SeqCst) { one_more_a(s) } else { Plan::default() }
    };
    let controller = f.controller_over(Arc::new(decider), store.clone()).await;
    controller.tick().await;
    let writes = store.writes.lock().unwrap().clone();
    assert_eq!(writes.len(), 2, "the intent, then the rest: {:?}", writes.iter().map(Vec::len).collect::<Vec<_>>());
    let kinds: BTreeSet<RecordKind> = writes[0].iter().map(|w| w.key().kind).collect();
    assert_eq!(kinds, BTreeSet::from([RecordKind::Launching, RecordKind::OwnKey]), "{:?}", writes[0]);
    assert!(writes[1].iter().filter(|w| w.key().kind == RecordKind::IdleSince).count() == 60);

    // The new machine is listed (its unlisted-launch record goes), then
    // nothing moves: the tick number and today's spend alone are written,
    // not the fleet's 61 launch keys each time they are seen.
    ticks(&controller, 2).await;
    let writes = store.writes.lock().unwrap().clone();
    let last: Vec<RecordKind> = writes.last().unwrap().iter().map(|w| w.key().kind).collect();
    assert_eq!(last, vec![RecordKind::Tick, RecordKind::Spend], "{:?}", writes.last());
}

/// Guard: what the fleet cost today is metered tick by tick and kept in the
/// store (controller `tick_locked` → `spend::meter`, `HostState.spend`): a
/// restart continues the day's figure instead of starting from zero, which
/// a daily budget or "spent today" would otherwise forget.
#[tokio::test(start_paused = true)]
async fn spend_so_far_today_is_metered_and_survives_a_restart() {
    let f = Fixture::new(10);
    f.idle_fleet(3).await;
    let controller = f.controller(|_| Plan::default()).await;
    controller.tick().await;
    // Three machines at 1/h for 360 ticks of 10 s: an hour.
    ticks(&controller, 360).await;
    let spent = controller.spent();
    assert!((spent.today - 3.0).abs() < 1e-9, "{spent:?}");
    assert_eq!(spent.today, spent.this_month);
    drop(controller);

    let restarted = f.controller(|_| Plan::default()).await;
    assert_eq!(restarted.spent(), spent, "read back from the store at start");
    ticks(&restarted, 360).await;
    assert!((restarted.spent().today - 6.0).abs() < 1e-9, "{:?}", restarted.spent());
}

/// Guard: a machine the cloud reports failed after it was made (a pod that
/// cannot be scheduled) is deleted by the host and its failure counts
/// against its resource (ledger `reconcile` → `to_delete`, controller
/// `delete_on_its_own`, ledger `machine_failed`) — unless its worker runs a
/// task. Without it the machine would count as booting until
/// spin-up-timeout gave up on it, holding its slot and billing.
#[tokio::test(start_paused = true)]
async fn a_machine_the_cloud_reports_failed_is_deleted_and_counts_as_a_failure() {
    let f = Fixture::new(2);
    let ids = f.idle_fleet(2).await;
    f.queues.set_task(&worker_of(&ids[1]), Some("t1"));
    let failure = |m: &str| crate::provider::MachineFailure { kind: FailureKind::Capacity, message: m.into() };
    f.cloud.fail_machine(&ids[0], failure("0/3 nodes are available: insufficient nvidia.com/gpu"));
    f.cloud.fail_machine(&ids[1], failure("evicted"));
    let controller = f.controller(|_: &Snapshot| Plan::default()).await;
    ticks(&controller, 1).await;
    assert_eq!(f.cloud.terminated(), vec![ids[0].clone()], "the failed machine goes; the busy one stays");
    ticks(&controller, 1).await;
    let (snapshot, _) = controller.last().unwrap();
    let failures: Vec<(&str, FailureKind)> = snapshot.failures.iter().map(|f| (f.resource.as_str(), f.kind)).collect();
    assert_eq!(failures, vec![("a", FailureKind::Capacity)], "{:?}", snapshot.failures);
    assert!(snapshot.failures[0].message.contains("insufficient nvidia.com/gpu"));
}

/// Guard: the daily budget reaches the guardrails with the day's spend so
/// far (controller `tick_locked` → `spend::Periods` → `guardrails::clamp`):
/// a launch whose machine would take the day past it is refused, with the
/// reason in the journal; a looser budget lets it through.
#[tokio::test(start_paused = true)]
async fn a_launch_that_would_pass_the_daily_budget_is_refused() {
    let hours_left = crate::spend::Periods::at(T0 + 10_000, Default::default()).day_hours_left;
    for (limit, launched) in [(3.5 * hours_left, 0), (4.0 * hours_left + 0.5, 1)] {
        let mut f = Fixture::new(10);
        f.config.limits.max_cost_per_day = Some(limit);
        f.idle_fleet(3).await;
        let controller = f.controller(one_more_a).await;
        tokio::time::advance(POLL).await;
        let record = controller.tick().await;
        assert_eq!(record.launched(), launched, "budget {limit:.2}: {:?}", record.clamps);
        if launched == 0 {
            assert!(record.clamps.iter().any(|c| c.contains("daily budget")), "{:?}", record.clamps);
        }
    }
}

/// Guard: `[controller] on-shutdown` (controller `shutdown_fleet`): `leave`
/// terminates nothing, `idle` the idle machines, `all` every machine whose
/// worker is not busy (booting ones too); a busy machine never, whatever the
/// mode, and each termination says why in the journal.
#[tokio::test(start_paused = true)]
async fn on_shutdown_terminates_what_its_mode_names_and_never_a_busy_machine() {
    for (mode, left) in [(OnShutdown::Leave, 4), (OnShutdown::Idle, 2), (OnShutdown::All, 1)] {
        let f = Fixture::new(10);
        f.idle_fleet(2).await;
        let launch = |key: &str| LaunchRequest {
            cluster: CLUSTER.into(),
            resource: "a".into(),
            queues: vec!["q".into()],
            idempotency_key: key.into(),
        };
        let busy = f.cloud.launch(&launch("busy")).await.unwrap();
        f.queues.register(&worker_of(&busy.id), &["q"], Some("task-1"));
        f.cloud.launch(&launch("booting")).await.unwrap();
        let controller = f.controller(|_| Plan::default()).await;
        ticks(&controller, 1).await;
        assert_eq!(f.cloud.alive().len(), 4);

        let record = controller.shutdown_fleet(mode).await;
        let alive: Vec<String> = f.cloud.alive().into_iter().map(|i| i.id).collect();
        assert_eq!(alive.len(), left, "{mode:?}: {alive:?}");
        assert!(alive.contains(&busy.id), "{mode:?}: the busy machine is never terminated");
        if let Some(record) = record {
            assert_eq!(record.terminated(), 4 - left, "{:?}", record.actions);
            let reasons = record.actions.iter().filter_map(|a| match a {
                Action::Terminate { reason, .. } => Some(reason.as_str()),
                Action::Launch { .. } => None,
            });
            assert!(reasons.clone().all(|r| r.contains("on-shutdown")), "{:?}", reasons.collect::<Vec<_>>());
        }
    }
}

/// Leadership set by hand (the elector is tested in `leader`).
fn leadership(holder: &str) -> tokio::sync::watch::Sender<Leadership> {
    tokio::sync::watch::channel(Leadership { holder: holder.into(), ..Default::default() }).0
}

fn lead(l: &tokio::sync::watch::Sender<Leadership>, epoch: Option<u64>) {
    l.send_modify(|l| l.epoch = epoch);
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_ticks_and_a_new_leader_starts_from_the_shared_state() {
    let f = Fixture::new(3);
    f.queues.set_pending("q", 10);
    let (la, lb) = (leadership("a"), leadership("b"));
    // Both start on the same (empty) shared store; b before a launched anything.
    let a = Arc::new(f.controller(one_more_a).await.with_leadership(la.subscribe()));
    let b = Arc::new(f.controller(one_more_a).await.with_leadership(lb.subscribe()));
    let run = |c: Arc<Controller>| tokio::spawn(async move { c.run(POLL, std::future::pending()).await });
    let (run_a, run_b) = (run(a.clone()), run(b.clone()));

    // b leads first, then a, then b again: b's memory of the state is
    // stale by a's launch, which only the shared store knows.
    lead(&lb, Some(1));
    tokio::time::sleep(POLL / 2).await;
    lead(&lb, None);
    lead(&la, Some(2));
    tokio::time::sleep(POLL).await;
    lead(&la, None);
    lead(&lb, Some(3));
    tokio::time::sleep(POLL * 5).await;

    let journal = f.store.journal(&JournalQuery::default()).await.unwrap();
    assert!(journal.iter().all(|r| r.epoch.is_some()), "a process that did not lead ticked");
    let by = |epoch| journal.iter().filter(|r| r.epoch == Some(epoch)).map(|r| r.launched()).sum::<usize>();
    assert_eq!((by(1), by(2), by(3)), (1, 1, 1), "one launch a term, then the cap held");
    assert!(
        journal.iter().all(|r| r.foreign_machines.is_empty()),
        "b took a's machine for another writer's: it did not read the shared state"
    );
    assert_eq!(f.cloud.alive().len(), 3);
    run_a.abort();
    run_b.abort();
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_loses_the_lease_stops_in_the_middle_of_a_tick() {
    let f = Fixture::new(3);
    let la = leadership("a");
    let a = Arc::new(f.controller(terminate_all_idle).await.with_leadership(la.subscribe()));
    let ids = f.idle_fleet(4).await;
    f.cloud.set_terminate_delay(Duration::from_secs(5));
    lead(&la, Some(1));
    let run_a = tokio::spawn({
        let a = a.clone();
        async move { a.run(POLL, std::future::pending()).await }
    });
    // The first terminate call is under way; the lease is lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    lead(&la, None);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(f.cloud.terminated().len() <= 1, "terminated {:?} of {ids:?} after losing the lease", f.cloud.terminated());
    run_a.abort();
}

/// Guard: a pause withholds every launch the chain asks for (the check in
/// `tick_locked`) while terminations go on, and it is kept in the store.
#[tokio::test(start_paused = true)]
async fn paused_launches_stay_paused_across_a_restart_while_terminations_go_on() {
    let f = Fixture::new(5);
    f.queues.set_pending("q", 3);
    let ids = f.idle_fleet(1).await;
    let launch_and_retire = |s: &Snapshot| Plan { launches: one_more_a(s).launches, ..terminate_all_idle(s) };
    let controller = f.controller(launch_and_retire).await;
    let since = controller.pause_launches(true).await.unwrap();
    assert_eq!(since, Some(T0));
    let record = controller.tick().await;
    assert_eq!(record.launched(), 0, "{record:#?}");
    assert!(record.clamps.iter().any(|c| c.contains("paused by an operator")), "{:?}", record.clamps);
    assert_eq!(f.cloud.terminated(), ids, "terminations go on while launches are paused");

    // A new process on the same store is still paused.
    let restarted = f.controller(launch_and_retire).await;
    assert_eq!(restarted.launches_paused(), Some(T0));
    ticks(&restarted, 1).await;
    assert_eq!(f.cloud.made(), 1, "only the idle fleet's machine was ever made");
    assert_eq!(restarted.pause_launches(false).await.unwrap(), None);
    ticks(&restarted, 1).await;
    assert_eq!(f.cloud.made(), 2, "resumed: the chain's launch goes");
}

/// Guard: operator actions go through the guardrails like any plan — a
/// busy machine is refused, the idle ones of the named resource go.
#[tokio::test(start_paused = true)]
async fn an_operator_cannot_terminate_a_busy_machine_and_shuts_down_the_idle_ones() {
    let f = Fixture::new(5);
    let ids = f.idle_fleet(3).await;
    f.queues.set_task(&worker_of(&ids[0]), Some("training"));
    let controller = Arc::new(f.controller(|_| Plan::default()).await);
    let run = tokio::spawn({
        let c = controller.clone();
        async move { c.run(POLL, std::future::pending()).await }
    });

    let busy = controller.request(OperatorAction::Terminate { instance: ids[0].clone() }).await.unwrap();
    assert!(f.cloud.terminated().is_empty(), "a busy machine was terminated: {busy:#?}");
    assert!(busy.clamps.iter().any(|c| c.contains(&ids[0])), "the refusal says which: {:?}", busy.clamps);

    let other = controller.request(OperatorAction::TerminateIdle { resource: Some("b".into()) }).await.unwrap();
    assert!(other.actions.is_empty() && f.cloud.terminated().is_empty(), "{other:#?}");
    let idle = controller.request(OperatorAction::TerminateIdle { resource: Some("a".into()) }).await.unwrap();
    assert_eq!(idle.terminated(), 2, "{idle:#?}");
    let mut terminated = f.cloud.terminated();
    terminated.sort();
    assert_eq!(terminated, ids[1..].to_vec());
    run.abort();
}

/// Launches what the queue needs beyond the idle workers flockd did not
/// launch (as scale-up does).
fn beyond_external_idle(s: &Snapshot) -> Plan {
    let q = &s.queues[0];
    let count = q.pending.saturating_sub(q.external_idle_workers);
    let launches = (count > 0).then(|| Launch { resource: "a".into(), count, reason: "beyond on-prem".into() });
    Plan { launches: launches.into_iter().collect(), terminations: vec![] }
}

/// The on-premise path (issue 15, item 8): an idle worker flockd did not
/// launch holds a launch back; once it takes a task, the cloud is asked.
#[tokio::test(start_paused = true)]
async fn an_idle_on_premise_worker_holds_back_a_launch_until_it_is_busy() {
    let f = Fixture::new(5);
    f.queues.set_pending("q", 1);
    f.queues.register("onprem-gpu-1", &["q", "other"], None);
    let controller = f.controller(beyond_external_idle).await;
    ticks(&controller, 2).await;
    assert_eq!(f.cloud.made(), 0, "launched while an on-premise worker was idle");
    let (snapshot, _) = controller.last().unwrap();
    assert_eq!(snapshot.queues[0].external_idle_workers, 1);

    f.queues.set_task("onprem-gpu-1", Some("someone-elses-task"));
    ticks(&controller, 1).await;
    assert_eq!(f.cloud.made(), 1, "the on-premise worker is busy: the task needs a machine");
}
