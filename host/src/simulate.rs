//! `flockd simulate`: replay a task trace through the real controller and
//! the real policy chain against a simulated cloud on a virtual clock, and
//! report what the fleet did and cost. See docs/simulate.md.
//!
//! Nothing here reads the wall clock: the same config and trace give the
//! same report, byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use flockd_core::guardrails::Cap;
use flockd_core::{
    Clock, CloudProvider, Controller, Decider, Decision, ManualClock, MemoryStore, Millis, Seams, Snapshot, naming,
};
use flockd_sim::{SimProviderSettings, SimQueue, SimResourceSettings, SimWorld};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ProviderKind};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The flockd config: queues, resources, limits, policies (default
    /// ./flockd.toml, or FLOCKD_CONFIG). Every provider is simulated;
    /// `[resource.NAME.simulated]` tables tune its machines.
    #[arg(long, short, env = "FLOCKD_CONFIG", default_value = "flockd.toml")]
    pub config: PathBuf,
    /// Tasks to replay, one JSON object per line: {"at": s, "queue": "q", "duration": s}.
    #[arg(long, short)]
    pub trace: PathBuf,
    /// `table` for people, `json` for scripts (keys in docs/simulate.md).
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Stop after this many simulated seconds (default: when every task has
    /// finished and the fleet is gone, at most 72 h after the last arrival).
    #[arg(long)]
    pub until_secs: Option<f64>,
    /// When virtual time starts: RFC 3339 with an offset
    /// ("2026-03-02T08:00:00+01:00"), or a date or date and time taken as
    /// UTC ("2026-03-02", "2026-03-02T07:00"). Time-of-day policies see
    /// the trace's `at` from here. Default: 2026-01-01T00:00:00Z, a Thursday.
    #[arg(long, value_parser = parse_start)]
    pub start: Option<Millis>,
    /// Show the controller's and the policies' logs (silenced by default).
    #[arg(long)]
    pub verbose: bool,
    /// Exit 0 even when some tasks never started (by default that fails the
    /// run: no policy launched for them, or the caps never left room).
    #[arg(long)]
    pub allow_unstarted: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

/// Virtual time starts here unless `--start` says otherwise
/// (2026-01-01T00:00:00Z, a Thursday), so snapshots carry plausible unix
/// times; reports count from it.
pub const ORIGIN: Millis = 1_767_225_600_000;

/// `--start`: RFC 3339, or a date (and time) in UTC.
pub fn parse_start(text: &str) -> Result<Millis, String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let utc = if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        t.to_utc()
    } else if let Some(t) = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    {
        t.and_utc()
    } else if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
    } else {
        return Err(format!(
            "{text:?} is not a time: give RFC 3339 (2026-03-02T08:00:00+01:00) or a date and time in UTC (2026-03-02T07:00, 2026-03-02)"
        ));
    };
    let ms = utc.timestamp_millis();
    if ms < 0 {
        return Err(format!("{text:?} is before 1970"));
    }
    Ok(ms as Millis)
}
/// Without `--until-secs`, how long after the last arrival the run may go on.
const DRAIN_CAP_MS: Millis = 72 * 3600 * 1000;

/// One line of a trace file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceTask {
    /// Seconds from the start of the simulation at which it is enqueued.
    pub at: f64,
    pub queue: String,
    /// Seconds it runs once a worker takes it.
    pub duration: f64,
    /// Enqueue this many identical tasks (default 1).
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

pub fn command(args: SimulateArgs, global: &crate::cli::GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.config)?;
    let trace = read_trace(&args.trace, &config)?;
    let until = match args.until_secs {
        Some(s) if !(s.is_finite() && s > 0.0) => anyhow::bail!("--until-secs {s}: give a number of seconds > 0"),
        s => s.map(secs_to_ms),
    };
    let logs = args.verbose.then(|| Logs { filter: global.log.clone() });
    let report = simulate_with_logs(&config, &trace, Start { at: args.start.unwrap_or(ORIGIN), until }, logs)?;
    let text = match args.format {
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        ReportFormat::Table => report.table(),
    };
    print!("{text}");
    let unstarted = report.total.tasks_never_started;
    if unstarted > 0 && !args.allow_unstarted {
        let queues: Vec<String> = report
            .queues
            .iter()
            .filter(|q| q.tasks_never_started > 0)
            .map(|q| format!("{} ({})", q.name, q.tasks_never_started))
            .collect();
        eprintln!(
            "error: {unstarted} of {} task(s) never started, in {}: no policy in the chain launched for them (`flockd check` prints the chain) or the caps never left room. Waits leave them out, so the figures above look better than the run was. Pass --allow-unstarted to accept this",
            report.total.tasks,
            queues.join(", ")
        );
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Reads and checks a trace; errors name the file and line.
pub fn read_trace(path: &Path, config: &Config) -> anyhow::Result<Vec<TraceTask>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read trace {}", path.display()))?;
    parse_trace(&text, config).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

pub fn parse_trace(text: &str, config: &Config) -> Result<Vec<TraceTask>, String> {
    let mut tasks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let task: TraceTask = serde_json::from_str(line)
            .map_err(|e| format!("{n}: {e} (expected {{\"at\": seconds, \"queue\": name, \"duration\": seconds}})"))?;
        if !(task.at.is_finite() && task.at >= 0.0) {
            return Err(format!("{n}: at = {}: must be seconds ≥ 0 from the start", task.at));
        }
        if !(task.duration.is_finite() && task.duration >= 0.0) {
            return Err(format!("{n}: duration = {}: must be seconds ≥ 0", task.duration));
        }
        if !config.queues.iter().any(|q| q.name == task.queue) {
            return Err(format!(
                "{n}: queue {:?} is not in the config (queues: {})",
                task.queue,
                config.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(" no tasks: add one JSON object per line".into());
    }
    Ok(tasks)
}

/// Simulated providers for `config`, all sharing `world`. With `all`, every
/// provider is simulated (its resources' `.simulated` tables or defaults);
/// otherwise only those of `kind = "simulated"`.
pub fn simulated_providers(
    config: &Config,
    world: &Arc<SimWorld>,
    all: bool,
) -> anyhow::Result<BTreeMap<String, Arc<dyn CloudProvider>>> {
    let mut providers: BTreeMap<String, Arc<dyn CloudProvider>> = BTreeMap::new();
    for (name, entry) in &config.providers {
        if entry.kind != ProviderKind::Simulated && !all {
            continue;
        }
        let settings: SimProviderSettings = if entry.kind == ProviderKind::Simulated {
            toml::Value::Table(entry.settings.clone())
                .try_into()
                .map_err(|e| anyhow::anyhow!("[provider.{name}] (kind = \"simulated\"): {e}"))?
        } else {
            SimProviderSettings::default()
        };
        let mut resources = BTreeMap::new();
        for (resource, r) in config.resources.iter().filter(|(_, r)| &r.provider == name) {
            let settings: SimResourceSettings = match &r.simulated {
                Some(v) => v.clone().try_into().map_err(|e| anyhow::anyhow!("[resource.{resource}.simulated]: {e}"))?,
                None => SimResourceSettings::default(),
            };
            resources.insert(resource.clone(), settings);
        }
        let cloud = world.cloud(name, &settings, &resources).map_err(anyhow::Error::msg)?;
        providers.insert(name.clone(), Arc::new(cloud));
    }
    Ok(providers)
}

/// The policy chain, logging where the replay logs (nowhere unless
/// verbose: a replay decides thousands of times and the report is what
/// matters). Its calls may run on another thread than the replay's.
struct QuietDecider {
    inner: Arc<dyn Decider>,
    dispatch: tracing::Dispatch,
}

impl Decider for QuietDecider {
    fn decide(&self, snapshot: &Arc<Snapshot>) -> Decision {
        tracing::dispatcher::with_default(&self.dispatch, || self.inner.decide(snapshot))
    }
}

/// When a replay starts and how long it may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// Virtual time of the trace's `at = 0` (unix ms).
    pub at: Millis,
    /// Stop this long after `at` (default: when drained, or the time cap).
    pub until: Option<Millis>,
}

impl Default for Start {
    fn default() -> Self {
        Start { at: ORIGIN, until: None }
    }
}

/// `--verbose`: the controller's and the policies' logs on stderr.
pub struct Logs {
    /// An `EnvFilter` directive, e.g. `info` or `flockd=debug`.
    pub filter: String,
}

/// Log lines stamped with the replay's virtual time, not the wall clock: a
/// log line says when, in the simulated week, it happened.
struct VirtualTime(Arc<ManualClock>);

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        w.write_str(&rfc3339(self.0.now()))
    }
}

/// A replay with no logs.
pub fn simulate(config: &Config, trace: &[TraceTask], start: Start, verbose: bool) -> anyhow::Result<Report> {
    simulate_with_logs(config, trace, start, verbose.then(|| Logs { filter: "info".into() }))
}

pub fn simulate_with_logs(
    config: &Config,
    trace: &[TraceTask],
    start: Start,
    logs: Option<Logs>,
) -> anyhow::Result<Report> {
    let clock = Arc::new(ManualClock::new(start.at));
    let dispatch = match logs {
        None => tracing::Dispatch::none(),
        Some(logs) => tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&logs.filter)
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_timer(VirtualTime(clock.clone()))
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .finish(),
        ),
    };
    tracing::dispatcher::with_default(&dispatch, || -> anyhow::Result<Report> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        runtime.block_on(replay(config, trace, start, clock.clone(), dispatch.clone()))
    })
}

async fn replay(
    config: &Config,
    trace: &[TraceTask],
    start: Start,
    clock: Arc<ManualClock>,
    logs: tracing::Dispatch,
) -> anyhow::Result<Report> {
    let origin = start.at;
    let queue = SimQueue::new(clock.clone());
    let world = SimWorld::new(clock.clone(), Arc::new(queue.clone()));
    let providers = simulated_providers(config, &world, true)?;

    let mut last_arrival = origin;
    for task in trace {
        let at = origin + secs_to_ms(task.at);
        last_arrival = last_arrival.max(at);
        for _ in 0..task.count {
            queue.enqueue(&task.queue, at, secs_to_ms(task.duration));
        }
    }

    // A policy's wall-clock deadline would make a loaded machine decide
    // differently from an idle one; a replay gives every call time enough.
    let mut limits = config.call_limits();
    limits.timeout = limits.timeout.max(Duration::from_secs(10));
    let engine = Arc::new(flockd_wasm::PolicyEngine::new(limits)?);
    let chain = flockd_wasm::load_chain(&engine, &config.policy_specs())
        .map_err(|errors| anyhow::anyhow!(flockd_wasm::loader::lines(&errors, "\n")))?;
    let decider =
        Arc::new(QuietDecider { inner: Arc::new(flockd_wasm::PolicyRuntime::new(engine, chain)), dispatch: logs });

    let mut controller_config = config.controller_config();
    // The point of a replay is to see what flockd would do.
    controller_config.dry_run = false;
    let controller = Controller::new(
        controller_config,
        Seams {
            source: Arc::new(queue.clone()),
            providers,
            decider,
            store: Arc::new(MemoryStore::with_journal_cap(1)),
            clock: clock.clone(),
        },
    )
    .await?;

    let poll = secs_to_ms(config.poll_interval_secs).max(1);
    let stop_at = start.until.map(|u| origin + u);
    let cap = last_arrival + DRAIN_CAP_MS;
    let mut ticks = 0u64;
    let mut why = WhyWaited::default();
    let ended = loop {
        let now = clock.now();
        world.step();
        let record = controller.tick().await;
        ticks += 1;
        why.count(config, &record, &world.alive_by_resource(), poll);
        if stop_at.is_some_and(|s| now + poll > s) {
            break Ended::UntilSecs;
        }
        if stop_at.is_none() && now >= last_arrival && queue.all_finished() && world.alive() == 0 {
            break Ended::Drained;
        }
        if stop_at.is_none() && now + poll > cap {
            break Ended::TimeCap;
        }
        clock.advance(poll);
    };
    let end = match stop_at {
        Some(s) => {
            clock.set(s);
            world.step();
            s
        }
        None => clock.now(),
    };
    Ok(Report::build(config, &queue, &world, Span { origin, end }, ticks, ended, &why))
}

/// What held launches back, counted tick by tick.
#[derive(Default)]
struct WhyWaited {
    /// Resource → launches cut by each cap.
    cut: BTreeMap<String, LaunchesCut>,
    /// Resource → time with as many machines as its max-instances.
    at_own_cap_ms: BTreeMap<String, Millis>,
    at_global_cap_ms: Millis,
    at_cost_cap_ms: Millis,
}

impl WhyWaited {
    /// One tick, which stands for the `poll` until the next: its trims, and
    /// whether the fleet it left sits at a cap.
    fn count(
        &mut self,
        config: &Config,
        record: &flockd_core::TickRecord,
        alive_by_resource: &BTreeMap<String, u32>,
        poll: Millis,
    ) {
        for t in &record.trims {
            let cut = self.cut.entry(t.resource.clone()).or_default();
            let n = t.asked.saturating_sub(t.allowed);
            match t.by {
                Cap::ResourceInstances => cut.by_resource_max_instances += n,
                Cap::GlobalInstances => cut.by_global_max_instances += n,
                Cap::CostPerHour => cut.by_cost_cap += n,
                Cap::CostPerDay | Cap::CostPerMonth => cut.by_day_or_month_budget += n,
            }
        }
        let mut alive = 0;
        let mut cost = 0.0;
        for (name, r) in &config.resources {
            let n = alive_by_resource.get(name).copied().unwrap_or(0);
            alive += n;
            cost += f64::from(n) * r.price();
            if n >= r.max_instances {
                *self.at_own_cap_ms.entry(name.clone()).or_default() += poll;
            }
        }
        if alive >= config.limits.max_instances {
            self.at_global_cap_ms += poll;
        }
        // At the cost cap: not even the cheapest priced machine fits.
        let cheapest = config.resources.values().map(|r| r.price()).filter(|p| *p > 0.0).min_by(f64::total_cmp);
        if cheapest.is_some_and(|p| cost + p > config.limits.max_cost_per_hour + 1e-9) {
            self.at_cost_cap_ms += poll;
        }
    }
}

/// Launches the guardrails cut, by the cap that cut them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LaunchesCut {
    /// By the resource's own `max-instances`.
    pub by_resource_max_instances: u32,
    /// By `[limits] max-instances`.
    pub by_global_max_instances: u32,
    /// By `[limits] max-cost-per-hour`.
    pub by_cost_cap: u32,
    /// By `[limits] max-cost-per-day` or `max-cost-per-month`.
    pub by_day_or_month_budget: u32,
}

impl LaunchesCut {
    fn add(self, o: LaunchesCut) -> LaunchesCut {
        LaunchesCut {
            by_resource_max_instances: self.by_resource_max_instances + o.by_resource_max_instances,
            by_global_max_instances: self.by_global_max_instances + o.by_global_max_instances,
            by_cost_cap: self.by_cost_cap + o.by_cost_cap,
            by_day_or_month_budget: self.by_day_or_month_budget + o.by_day_or_month_budget,
        }
    }
}

/// A replay's virtual start and end.
#[derive(Clone, Copy)]
struct Span {
    origin: Millis,
    end: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ended {
    /// Every task finished and the fleet scaled to zero.
    Drained,
    /// `--until-secs` was reached.
    UntilSecs,
    /// 72 h after the last arrival, work or machines were still left.
    TimeCap,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// Virtual time of the trace's `at = 0`, RFC 3339 in UTC.
    pub start: String,
    pub simulated_secs: f64,
    pub ticks: u64,
    pub ended: Ended,
    pub resources: Vec<ResourceReport>,
    pub queues: Vec<QueueReport>,
    pub total: TotalReport,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Waits {
    pub wait_p50_secs: f64,
    pub wait_p95_secs: f64,
    pub wait_max_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ResourceReport {
    pub name: String,
    pub instance_hours: f64,
    pub cost: f64,
    pub launches: u32,
    pub launch_failures: u32,
    pub terminations: u32,
    pub spot_reclaims: u32,
    pub peak_instances: u32,
    /// Tasks whose first run started on this resource, and their waits.
    pub tasks_started: u32,
    pub tasks_finished: u32,
    pub tasks_interrupted: u32,
    pub tasks_killed_by_termination: u32,
    #[serde(flatten)]
    pub waits: Waits,
    /// Machine time with an agent and no task.
    pub idle_hours: f64,
    /// Time this resource had as many machines as its max-instances.
    pub secs_at_max_instances: f64,
    pub launches_cut: LaunchesCut,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct QueueReport {
    pub name: String,
    pub tasks: u32,
    pub tasks_finished: u32,
    pub tasks_never_started: u32,
    pub tasks_interrupted: u32,
    #[serde(flatten)]
    pub waits: Waits,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TotalReport {
    pub instance_hours: f64,
    pub cost: f64,
    pub launches: u32,
    pub launch_failures: u32,
    pub terminations: u32,
    pub spot_reclaims: u32,
    pub peak_instances: u32,
    /// Tasks that arrived before the run's end.
    pub tasks: u32,
    /// Tasks of the trace that arrive after `--until-secs`: left out.
    pub tasks_after_the_end: u32,
    pub tasks_finished: u32,
    pub tasks_never_started: u32,
    pub tasks_interrupted: u32,
    pub tasks_killed_by_termination: u32,
    #[serde(flatten)]
    pub waits: Waits,
    pub idle_hours: f64,
    /// Time the fleet had `[limits] max-instances` machines.
    pub secs_at_global_max_instances: f64,
    /// Time the fleet's cost left no room for even the cheapest machine.
    pub secs_at_cost_cap: f64,
    pub launches_cut: LaunchesCut,
}

impl Report {
    fn build(
        config: &Config,
        queue: &SimQueue,
        world: &SimWorld,
        span: Span,
        ticks: u64,
        ended: Ended,
        why: &WhyWaited,
    ) -> Report {
        let end = span.end;
        let stats = world.stats(end);
        // A run cut by --until-secs reports the tasks that arrived before its
        // end; those the trace has after it were never part of it.
        let (tasks, after_the_end): (Vec<_>, Vec<_>) = queue.tasks().into_iter().partition(|t| t.enqueued_at <= end);
        let started_on = |t: &flockd_sim::TaskRecord| {
            t.first_started
                .as_ref()
                .and_then(|(_, w)| naming::parse_worker_id(&config.cluster, w))
                .map(|(r, _)| r.to_string())
        };
        let resources: Vec<ResourceReport> = config
            .resources
            .iter()
            .map(|(name, r)| {
                let s = stats.get(name).cloned().unwrap_or_default();
                let hours = s.instance_ms as f64 / 3_600_000.0;
                let mine: Vec<_> = tasks.iter().filter(|t| started_on(t).as_deref() == Some(name.as_str())).collect();
                ResourceReport {
                    name: name.clone(),
                    instance_hours: round3(hours),
                    cost: round3(hours * r.price()),
                    launches: s.launches,
                    launch_failures: s.launch_failures,
                    terminations: s.terminations,
                    spot_reclaims: s.reclaimed,
                    peak_instances: s.peak_instances,
                    tasks_started: mine.len() as u32,
                    tasks_finished: s.tasks_finished,
                    tasks_interrupted: s.tasks_interrupted,
                    tasks_killed_by_termination: s.tasks_killed_by_termination,
                    waits: waits(mine.iter().filter_map(|t| t.wait_ms())),
                    idle_hours: round3(s.idle_ms as f64 / 3_600_000.0),
                    secs_at_max_instances: round3(
                        why.at_own_cap_ms.get(name).copied().unwrap_or(0).min(end - span.origin) as f64 / 1000.0,
                    ),
                    launches_cut: why.cut.get(name).copied().unwrap_or_default(),
                }
            })
            .collect();
        let queues = config
            .queues
            .iter()
            .map(|q| {
                let mine: Vec<_> = tasks.iter().filter(|t| t.queue == q.name).collect();
                QueueReport {
                    name: q.name.clone(),
                    tasks: mine.len() as u32,
                    tasks_finished: mine.iter().filter(|t| t.finished_at.is_some()).count() as u32,
                    tasks_never_started: mine.iter().filter(|t| t.first_started.is_none()).count() as u32,
                    tasks_interrupted: mine.iter().map(|t| t.interruptions).sum(),
                    waits: waits(mine.iter().filter_map(|t| t.wait_ms())),
                }
            })
            .collect();
        let sum = |f: fn(&ResourceReport) -> u32| resources.iter().map(f).sum::<u32>();
        let hours: f64 = stats.values().map(|s| s.instance_ms as f64 / 3_600_000.0).sum();
        let cost: f64 = config
            .resources
            .iter()
            .map(|(name, r)| stats.get(name).map_or(0.0, |s| s.instance_ms as f64 / 3_600_000.0 * r.price()))
            .sum();
        let total = TotalReport {
            instance_hours: round3(hours),
            cost: round3(cost),
            launches: sum(|r| r.launches),
            launch_failures: sum(|r| r.launch_failures),
            terminations: sum(|r| r.terminations),
            spot_reclaims: sum(|r| r.spot_reclaims),
            peak_instances: world.peak_instances(),
            tasks: tasks.len() as u32,
            tasks_after_the_end: after_the_end.len() as u32,
            tasks_finished: tasks.iter().filter(|t| t.finished_at.is_some()).count() as u32,
            tasks_never_started: tasks.iter().filter(|t| t.first_started.is_none()).count() as u32,
            tasks_interrupted: sum(|r| r.tasks_interrupted),
            tasks_killed_by_termination: sum(|r| r.tasks_killed_by_termination),
            waits: waits(tasks.iter().filter_map(|t| t.wait_ms())),
            idle_hours: round3(stats.values().map(|s| s.idle_ms as f64 / 3_600_000.0).sum()),
            secs_at_global_max_instances: round3(why.at_global_cap_ms.min(end - span.origin) as f64 / 1000.0),
            secs_at_cost_cap: round3(why.at_cost_cap_ms.min(end - span.origin) as f64 / 1000.0),
            launches_cut: resources.iter().fold(LaunchesCut::default(), |a, r| a.add(r.launches_cut)),
        };
        Report {
            start: rfc3339(span.origin),
            simulated_secs: round3((end - span.origin) as f64 / 1000.0),
            ticks,
            ended,
            resources,
            queues,
            total,
        }
    }

    /// The human-readable form.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let ended = match self.ended {
            Ended::Drained => "every task finished and the fleet scaled to zero",
            Ended::UntilSecs => "--until-secs reached",
            Ended::TimeCap => "72 h after the last arrival, with work or machines left",
        };
        let _ = writeln!(
            out,
            "simulated {} from {} in {} ticks ({ended})\n",
            duration(self.simulated_secs),
            self.start,
            self.ticks
        );
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "resource",
            "inst-hours",
            "cost",
            "launches",
            "failed",
            "termin.",
            "reclaim",
            "peak",
            "finished",
            "interr.",
            "wait-p50",
            "wait-p95",
            "wait-max"
        );
        for r in &self.resources {
            let _ = writeln!(
                out,
                "{:<20} {:>10.3} {:>10.3} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
                r.name,
                r.instance_hours,
                r.cost,
                r.launches,
                r.launch_failures,
                r.terminations,
                r.spot_reclaims,
                r.peak_instances,
                r.tasks_finished,
                r.tasks_interrupted,
                duration(r.waits.wait_p50_secs),
                duration(r.waits.wait_p95_secs),
                duration(r.waits.wait_max_secs)
            );
        }
        let t = &self.total;
        let _ = writeln!(
            out,
            "{:<20} {:>10.3} {:>10.3} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "total",
            t.instance_hours,
            t.cost,
            t.launches,
            t.launch_failures,
            t.terminations,
            t.spot_reclaims,
            t.peak_instances,
            t.tasks_finished,
            t.tasks_interrupted,
            duration(t.waits.wait_p50_secs),
            duration(t.waits.wait_p95_secs),
            wait_cell(t.waits.wait_max_secs, t.tasks_never_started)
        );
        let _ = writeln!(
            out,
            "\n{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "queue", "tasks", "finished", "interr.", "wait-p50", "wait-p95", "wait-max"
        );
        for q in &self.queues {
            let _ = writeln!(
                out,
                "{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
                q.name,
                q.tasks,
                q.tasks_finished,
                q.tasks_interrupted,
                duration(q.waits.wait_p50_secs),
                duration(q.waits.wait_p95_secs),
                wait_cell(q.waits.wait_max_secs, q.tasks_never_started)
            );
        }
        let _ = writeln!(
            out,
            "\n{:<20} {:>10} {:>12} {:>9} {:>11} {:>9}",
            "why tasks waited", "idle-hours", "at-max-inst", "cut-own", "cut-global", "cut-cost"
        );
        for r in &self.resources {
            let _ = writeln!(
                out,
                "{:<20} {:>10.3} {:>12} {:>9} {:>11} {:>9}",
                r.name,
                r.idle_hours,
                duration(r.secs_at_max_instances),
                r.launches_cut.by_resource_max_instances,
                r.launches_cut.by_global_max_instances,
                r.launches_cut.by_cost_cap
            );
        }
        let _ = writeln!(
            out,
            "{:<20} {:>10.3} {:>12} {:>9} {:>11} {:>9}",
            "total",
            t.idle_hours,
            "",
            t.launches_cut.by_resource_max_instances,
            t.launches_cut.by_global_max_instances,
            t.launches_cut.by_cost_cap
        );
        let _ = writeln!(
            out,
            "the fleet was at the global max-instances for {} and at the cost cap for {}",
            duration(t.secs_at_global_max_instances),
            duration(t.secs_at_cost_cap)
        );
        if t.tasks_after_the_end > 0 {
            let _ = writeln!(
                out,
                "\n{} task(s) of the trace arrive after --until-secs and are left out",
                t.tasks_after_the_end
            );
        }
        if t.tasks_never_started > 0 {
            let _ = writeln!(out, "\n{} task(s) never started", t.tasks_never_started);
        }
        if t.tasks_killed_by_termination > 0 {
            let _ = writeln!(
                out,
                "\n{} task(s) were killed by a termination flockd asked for",
                t.tasks_killed_by_termination
            );
        }
        out
    }
}

/// A wait column; where tasks never started, the longest wait is theirs
/// (unbounded), so the cell says how many instead of a time.
fn wait_cell(s: f64, never_started: u32) -> String {
    if never_started > 0 { format!("{never_started} never") } else { duration(s) }
}

/// A duration for people: 12.5s, 4m05s, 2h09m.
fn duration(secs: f64) -> String {
    if secs < 59.95 {
        return format!("{:.1}s", if secs > 0.0 { secs } else { 0.0 });
    }
    let whole = secs.round() as u64;
    if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, whole % 3600 / 60)
    }
}

/// Nearest-rank percentiles of waits, in seconds.
fn waits(ms: impl Iterator<Item = Millis>) -> Waits {
    let mut v: Vec<Millis> = ms.collect();
    if v.is_empty() {
        return Waits::default();
    }
    v.sort_unstable();
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let s = |ms: Millis| round3(ms as f64 / 1000.0);
    Waits { wait_p50_secs: s(rank(0.50)), wait_p95_secs: s(rank(0.95)), wait_max_secs: s(*v.last().unwrap()) }
}

/// Three decimals, and never `-0`: a report shows no negative zero.
fn round3(x: f64) -> f64 {
    let r = (x * 1000.0).round() / 1000.0;
    if r == 0.0 { 0.0 } else { r }
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn secs_to_ms(s: f64) -> Millis {
    (s * 1000.0).round() as Millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let cases =
            [(0.0, "0.0s"), (-0.0, "0.0s"), (12.34, "12.3s"), (59.96, "1m00s"), (245.0, "4m05s"), (7740.0, "2h09m")];
        for (secs, text) in cases {
            assert_eq!(duration(secs), text, "{secs}");
        }
        assert!(round3(-0.0001).is_sign_positive(), "no -0 in a report");
    }

    #[test]
    fn start_times_parse_with_an_offset_or_as_utc() {
        assert_eq!(parse_start("2026-01-01T00:00:00Z"), Ok(ORIGIN));
        assert_eq!(parse_start("2026-01-01"), Ok(ORIGIN));
        assert_eq!(parse_start("2026-01-01T01:00:00+01:00"), Ok(ORIGIN));
        assert_eq!(parse_start("2026-01-01T08:30"), Ok(ORIGIN + 8 * 3_600_000 + 30 * 60_000));
        let err = parse_start("monday").unwrap_err();
        assert!(err.contains("RFC 3339") && err.contains("\"monday\""), "{err}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let w = waits((1..=100).map(|s| s * 1000));
        assert_eq!((w.wait_p50_secs, w.wait_p95_secs, w.wait_max_secs), (50.0, 95.0, 100.0));
        assert_eq!(waits(std::iter::empty()), Waits::default());
    }
}
