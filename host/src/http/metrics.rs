//! Prometheus metrics, updated from each tick's report and, for policy
//! reloads (which happen between ticks), again at every scrape.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flockd_core::controller::TickReport;
use flockd_core::{
    Action, FailureKind, InstanceState, Outcome, ProviderCall, ProviderCallSink, ProviderError, Snapshot,
    TerminationCause,
};
use flockd_wasm::PolicyRuntime;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every cloud call's latency and errors, by provider and call: the sink
/// `flockd run` and `flockd dev` give the controller
/// (`Controller::with_call_sink`), which measures each provider with the
/// [`Measured`](flockd_core::Measured) decorator. One per process (the
/// controller is built before the HTTP server and its registry exist); each
/// [`Metrics`] registry exports it.
pub struct ProviderCallMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
}

impl ProviderCallMetrics {
    pub fn global() -> &'static Arc<ProviderCallMetrics> {
        static GLOBAL: OnceLock<Arc<ProviderCallMetrics>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(ProviderCallMetrics::new().expect("valid metric definitions")))
    }

    fn new() -> prometheus::Result<Self> {
        Ok(ProviderCallMetrics {
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "flockd_provider_call_duration_seconds",
                    "One cloud call (launch, list, terminate), answered or failed, by provider",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
                &["provider", "call"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "flockd_provider_call_errors_total",
                    "Cloud calls that failed, by provider, call and kind (capacity, quota, throttled, auth, invalid_request, not_found, timeout, outcome_unknown, other)",
                ),
                &["provider", "call", "kind"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.errors.clone()))
    }
}

fn provider_error_label(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Capacity(_) => "capacity",
        ProviderError::Quota(_) => "quota",
        ProviderError::Throttled(_) => "throttled",
        ProviderError::Auth(_) => "auth",
        ProviderError::InvalidRequest(_) => "invalid_request",
        ProviderError::NotFound(_) => "not_found",
        ProviderError::Timeout(_) => "timeout",
        ProviderError::OutcomeUnknown(_) => "outcome_unknown",
        ProviderError::Other(_) => "other",
    }
}

impl ProviderCallSink for ProviderCallMetrics {
    fn record(&self, provider: &str, call: ProviderCall, took: Duration, error: Option<&ProviderError>) {
        self.duration.with_label_values(&[provider, call.as_str()]).observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors.with_label_values(&[provider, call.as_str(), provider_error_label(e)]).inc();
        }
    }
}

/// The states an instance is counted in, as label values.
pub const INSTANCE_STATES: [&str; 4] = ["booting", "running_busy", "running_idle", "stopping"];

pub struct Metrics {
    registry: Registry,
    queue_pending: IntGaugeVec,
    queue_oldest_wait: GaugeVec,
    instances: IntGaugeVec,
    launches: IntCounterVec,
    launch_failures: IntCounterVec,
    terminations: IntCounterVec,
    cost_per_hour: Gauge,
    cost_cap_per_hour: Gauge,
    instances_cap: IntGauge,
    tick_duration: Histogram,
    ticks: IntCounterVec,
    last_tick: Gauge,
    ready: IntGauge,
    blind_seconds: Gauge,
    foreign_machines: IntGauge,
    leader: IntGauge,
    launches_paused: IntGauge,
    lease_transitions: IntCounter,
    lease_renew_failures: IntCounter,
    clamps: IntCounter,
    policy_duration: HistogramVec,
    policy_calls: IntCounterVec,
    policy_errors: IntCounterVec,
    required_failures: IntCounterVec,
    policy_reloads: IntCounterVec,
    seen: Mutex<Seen>,
}

/// What earlier reports already counted.
#[derive(Default)]
struct Seen {
    /// Failures in the last snapshot (they stay listed for an hour).
    failures: HashSet<(String, u64, String)>,
    /// Policy → (reloads, reload failures) already counted.
    reloads: BTreeMap<String, (u64, u64)>,
}

fn state_label(i: &flockd_core::Instance) -> &'static str {
    match (i.state, i.busy) {
        (InstanceState::Booting, _) => "booting",
        (InstanceState::Running, true) => "running_busy",
        (InstanceState::Running, false) => "running_idle",
        (InstanceState::Stopping, _) => "stopping",
    }
}

fn cause_label(c: TerminationCause) -> &'static str {
    match c {
        TerminationCause::Idle => "idle",
        TerminationCause::BootTimeout => "boot_timeout",
        TerminationCause::Budget => "budget",
        TerminationCause::Other => "other",
    }
}

fn kind_label(k: FailureKind) -> &'static str {
    match k {
        FailureKind::Capacity => "capacity",
        FailureKind::Quota => "quota",
        FailureKind::Auth => "auth",
        FailureKind::BootTimeout => "boot_timeout",
        FailureKind::Other => "other",
    }
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Done => "done",
        Outcome::Skipped => "skipped",
        Outcome::Failed(_) => "failed",
        Outcome::Refused(_) => "refused",
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> prometheus::Result<T> {
            r.register(Box::new(m.clone()))?;
            Ok(m)
        }
        let r = &registry;
        let m = Metrics {
            queue_pending: reg(
                r,
                IntGaugeVec::new(Opts::new("flockd_queue_pending", "Tasks waiting in the queue"), &["queue"])?,
            )?,
            queue_oldest_wait: reg(
                r,
                GaugeVec::new(
                    Opts::new("flockd_queue_oldest_wait_seconds", "How long the oldest pending task has waited"),
                    &["queue"],
                )?,
            )?,
            instances: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "flockd_instances",
                        "Instances by resource and state (booting, running_busy, running_idle, stopping)",
                    ),
                    &["resource", "state"],
                )?,
            )?,
            launches: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "flockd_launches_total",
                        "Launches by resource and outcome (done, skipped in dry run, failed)",
                    ),
                    &["resource", "outcome"],
                )?,
            )?,
            launch_failures: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "flockd_launch_failures_total",
                        "Launch and boot failures by resource and kind (capacity, quota, auth, boot_timeout, other)",
                    ),
                    &["resource", "kind"],
                )?,
            )?,
            terminations: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "flockd_terminations_total",
                        "Terminations by resource, cause (idle, boot_timeout, budget, other) and outcome",
                    ),
                    &["resource", "cause", "outcome"],
                )?,
            )?,
            cost_per_hour: reg(r, Gauge::new("flockd_cost_per_hour", "What the fleet costs per hour now")?)?,
            cost_cap_per_hour: reg(
                r,
                Gauge::new("flockd_cost_cap_per_hour", "The configured hard cap on cost per hour")?,
            )?,
            instances_cap: reg(r, IntGauge::new("flockd_instances_cap", "The configured hard cap on instances")?)?,
            tick_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "flockd_tick_duration_seconds",
                        "Time of one tick: observe, decide, act, record",
                    )
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                )?,
            )?,
            ticks: reg(
                r,
                IntCounterVec::new(
                    Opts::new("flockd_ticks_total", "Ticks by result (ok, observation_failed)"),
                    &["result"],
                )?,
            )?,
            last_tick: reg(
                r,
                Gauge::new("flockd_last_tick_timestamp_seconds", "When the last tick observed (unix seconds)")?,
            )?,
            ready: reg(r, IntGauge::new("flockd_ready", "1 once a tick has observed successfully")?)?,
            blind_seconds: reg(
                r,
                Gauge::new(
                    "flockd_blind_seconds",
                    "How long every observation has failed (nothing decided while machines bill on); 0 when seeing",
                )?,
            )?,
            foreign_machines: reg(
                r,
                IntGauge::new(
                    "flockd_foreign_machines",
                    "Listed machines whose launch key this flockd never wrote (another writer on the cluster): launches stop while any is listed",
                )?,
            )?,
            leader: reg(
                r,
                IntGauge::new(
                    "flockd_leader",
                    "1 while this flockd holds the leader lease and acts (always 1 with the embedded store)",
                )?,
            )?,
            launches_paused: reg(
                r,
                IntGauge::new(
                    "flockd_launches_paused",
                    "1 while an operator has paused launches (terminations go on)",
                )?,
            )?,
            lease_transitions: reg(
                r,
                IntCounter::new(
                    "flockd_lease_transitions_total",
                    "Times this flockd became or stopped being the leader (shared store)",
                )?,
            )?,
            lease_renew_failures: reg(
                r,
                IntCounter::new(
                    "flockd_lease_renew_failures_total",
                    "Renewals of the leader lease that failed or timed out while leading",
                )?,
            )?,
            clamps: reg(
                r,
                IntCounter::new("flockd_guardrail_clamps_total", "Plan changes made by the host's hard limits")?,
            )?,
            policy_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new("flockd_policy_call_duration_seconds", "One policy's call in the chain")
                        .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]),
                    &["policy"],
                )?,
            )?,
            policy_calls: reg(
                r,
                IntCounterVec::new(Opts::new("flockd_policy_calls_total", "Policy calls"), &["policy"])?,
            )?,
            policy_errors: reg(
                r,
                IntCounterVec::new(
                    Opts::new("flockd_policy_errors_total", "Policy calls that failed (trap, timeout, invalid plan)"),
                    &["policy"],
                )?,
            )?,
            required_failures: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "flockd_required_policy_failures_total",
                        "Ticks whose launches were withheld because this required policy failed",
                    ),
                    &["policy"],
                )?,
            )?,
            policy_reloads: reg(
                r,
                IntCounterVec::new(
                    Opts::new("flockd_policy_reloads_total", "Hot reloads by result (loaded, rejected)"),
                    &["policy", "result"],
                )?,
            )?,
            seen: Mutex::new(Seen::default()),
            registry,
        };
        ProviderCallMetrics::global().register(&m.registry)?;
        Ok(m)
    }

    /// Sets the configured caps and the resource × state series to 0, so a
    /// fresh flockd exports every series before its first launch.
    pub fn init(&self, max_instances: u32, max_cost_per_hour: f64, resources: &[String], queues: &[String]) {
        self.instances_cap.set(max_instances as i64);
        self.cost_cap_per_hour.set(max_cost_per_hour);
        for r in resources {
            for s in INSTANCE_STATES {
                self.instances.with_label_values(&[r.as_str(), s]).set(0);
            }
        }
        for q in queues {
            self.queue_pending.with_label_values(&[q.as_str()]).set(0);
            self.queue_oldest_wait.with_label_values(&[q.as_str()]).set(0.0);
        }
    }

    pub fn observe(&self, report: &TickReport) {
        let record = &report.record;
        self.tick_duration.observe(record.micros as f64 / 1e6);
        let result = if record.observation_error.is_some() { "observation_failed" } else { "ok" };
        self.ticks.with_label_values(&[result]).inc();
        self.clamps.inc_by(record.clamps.len() as u64);
        self.blind_seconds.set(report.blind.as_ref().map_or(0.0, |b| b.seconds(record.at)));
        if report.snapshot.is_some() {
            self.foreign_machines.set(record.foreign_machines.len() as i64);
        }
        for action in &record.actions {
            match action {
                Action::Launch { resource, outcome, .. } => {
                    self.launches.with_label_values(&[resource.as_str(), outcome_label(outcome)]).inc();
                }
                Action::Terminate { resource, cause, outcome, .. } => {
                    self.terminations
                        .with_label_values(&[resource.as_str(), cause_label(*cause), outcome_label(outcome)])
                        .inc();
                }
            }
        }
        for policy in &record.required_failed {
            self.required_failures.with_label_values(&[policy.as_str()]).inc();
        }
        for run in &record.policies {
            let policy = run.policy.as_str();
            self.policy_duration.with_label_values(&[policy]).observe(run.micros as f64 / 1e6);
            self.policy_calls.with_label_values(&[policy]).inc();
            if run.error.is_some() {
                self.policy_errors.with_label_values(&[policy]).inc();
            }
        }
        if let Some(snapshot) = &report.snapshot {
            self.ready.set(1);
            self.last_tick.set(snapshot.now as f64 / 1e3);
            self.observe_snapshot(snapshot);
        }
    }

    fn observe_snapshot(&self, snapshot: &Snapshot) {
        for q in &snapshot.queues {
            self.queue_pending.with_label_values(&[q.name.as_str()]).set(q.pending as i64);
            self.queue_oldest_wait.with_label_values(&[q.name.as_str()]).set(q.oldest_wait_ms as f64 / 1e3);
        }
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for r in &snapshot.resources {
            for s in INSTANCE_STATES {
                counts.insert((r.name.as_str(), s), 0);
            }
        }
        for i in &snapshot.instances {
            *counts.entry((i.resource.as_str(), state_label(i))).or_default() += 1;
        }
        for ((resource, state), n) in counts {
            self.instances.with_label_values(&[resource, state]).set(n);
        }
        self.cost_per_hour.set(snapshot.budget.cost_per_hour);
        self.cost_cap_per_hour.set(snapshot.budget.max_cost_per_hour);
        self.instances_cap.set(snapshot.budget.max_instances as i64);

        let mut seen = self.seen.lock().unwrap();
        let now: HashSet<(String, u64, String)> = snapshot
            .failures
            .iter()
            .map(|f| (f.resource.clone(), f.at, format!("{:?}{}", f.kind, f.message)))
            .collect();
        for f in &snapshot.failures {
            if !seen.failures.contains(&(f.resource.clone(), f.at, format!("{:?}{}", f.kind, f.message))) {
                self.launch_failures.with_label_values(&[f.resource.as_str(), kind_label(f.kind)]).inc();
            }
        }
        seen.failures = now;
    }

    /// Brings the reload counters up to date with the runtime's.
    pub fn sync_policies(&self, policies: &PolicyRuntime) {
        let mut seen = self.seen.lock().unwrap();
        for (name, c) in policies.counters() {
            let (reloads, failures) = seen.reloads.get(&name).copied().unwrap_or_default();
            self.policy_reloads.with_label_values(&[name.as_str(), "loaded"]).inc_by(c.reloads.saturating_sub(reloads));
            self.policy_reloads
                .with_label_values(&[name.as_str(), "rejected"])
                .inc_by(c.reload_failures.saturating_sub(failures));
            seen.reloads.insert(name, (c.reloads.max(reloads), c.reload_failures.max(failures)));
        }
    }

    /// Leadership as the controller last knew it (None: embedded store,
    /// where this flockd always acts).
    pub fn sync_leadership(&self, leadership: Option<&flockd_core::Leadership>) {
        let Some(l) = leadership else {
            self.leader.set(1);
            return;
        };
        self.leader.set(l.leading() as i64);
        self.lease_transitions.inc_by(l.transitions.saturating_sub(self.lease_transitions.get()));
        self.lease_renew_failures.inc_by(l.renew_failures.saturating_sub(self.lease_renew_failures.get()));
    }

    pub fn sync_paused(&self, paused: bool) {
        self.launches_paused.set(paused as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flockd_core::TickRecord;
    use flockd_core::controller::Blind;

    use super::*;

    fn failed_tick(at: u64, blind: Option<Blind>) -> TickReport {
        let record = TickRecord {
            tick: 1,
            at,
            snapshot_digest: None,
            observation_error: Some("queue source: down".into()),
            queues: vec![],
            plan: Default::default(),
            policies: vec![],
            clamps: vec![],
            trims: vec![],
            actions: vec![],
            dry_run: false,
            required_failed: vec![],
            foreign_machines: vec![],
            unregistered: vec![],
            fleet: None,
            epoch: None,
            micros: 1,
        };
        TickReport { snapshot: None, record: Arc::new(record), blind }
    }

    fn blind_seconds(m: &Metrics) -> String {
        m.render().lines().find(|l| l.starts_with("flockd_blind_seconds ")).unwrap_or_default().to_string()
    }

    #[test]
    fn blind_seconds_follow_the_spell_and_fall_to_zero_when_it_ends() {
        let m = Metrics::new().unwrap();
        let blind = Blind { since: 1_000_000, error: "down".into(), ticks: 30 };
        m.observe(&failed_tick(1_300_000, Some(blind)));
        assert_eq!(blind_seconds(&m), "flockd_blind_seconds 300");
        m.observe(&failed_tick(1_310_000, None));
        assert_eq!(blind_seconds(&m), "flockd_blind_seconds 0");
    }
}
