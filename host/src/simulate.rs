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
use flockd_core::{
    Clock, CloudProvider, Controller, Decider, Decision, ManualClock, MemoryStore, Millis, Seams, Snapshot, naming,
};
use flockd_sim::{SimProviderSettings, SimQueue, SimResourceSettings, SimWorld};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ProviderKind};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The flockd config: queues, resources, limits, policies. Every provider
    /// is simulated; `[resource.NAME.simulated]` tables tune its machines.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Tasks to replay, one JSON object per line: {"at": s, "queue": "q", "duration": s}.
    #[arg(long, short)]
    pub trace: PathBuf,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Stop after this many simulated seconds (default: when every task has
    /// finished and the fleet is gone, at most 72 h after the last arrival).
    #[arg(long)]
    pub until_secs: Option<f64>,
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

/// Virtual time starts here (2026-01-01T00:00:00Z), so snapshots carry
/// plausible unix times; reports count from it.
pub const ORIGIN: Millis = 1_767_225_600_000;
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

pub fn command(args: SimulateArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.config)?;
    let trace = read_trace(&args.trace, &config)?;
    let until = match args.until_secs {
        Some(s) if !(s.is_finite() && s > 0.0) => anyhow::bail!("--until-secs {s}: give a number of seconds > 0"),
        s => s.map(secs_to_ms),
    };
    let report = simulate(&config, &trace, until, args.verbose)?;
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

/// The policy chain, silenced unless verbose: a replay decides thousands of
/// times and the report is what matters.
struct QuietDecider {
    inner: Arc<dyn Decider>,
    dispatch: Option<tracing::Dispatch>,
}

impl Decider for QuietDecider {
    fn decide(&self, snapshot: &Arc<Snapshot>) -> Decision {
        match &self.dispatch {
            Some(d) => tracing::dispatcher::with_default(d, || self.inner.decide(snapshot)),
            None => self.inner.decide(snapshot),
        }
    }
}

pub fn simulate(config: &Config, trace: &[TraceTask], until: Option<Millis>, verbose: bool) -> anyhow::Result<Report> {
    let dispatch = (!verbose).then(tracing::Dispatch::none);
    let run = || -> anyhow::Result<Report> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        runtime.block_on(replay(config, trace, until, dispatch.clone()))
    };
    match &dispatch {
        Some(d) => tracing::dispatcher::with_default(d, run),
        None => run(),
    }
}

async fn replay(
    config: &Config,
    trace: &[TraceTask],
    until: Option<Millis>,
    quiet: Option<tracing::Dispatch>,
) -> anyhow::Result<Report> {
    let clock = Arc::new(ManualClock::new(ORIGIN));
    let queue = SimQueue::new(clock.clone());
    let world = SimWorld::new(clock.clone(), Arc::new(queue.clone()));
    let providers = simulated_providers(config, &world, true)?;

    let mut last_arrival = ORIGIN;
    for task in trace {
        let at = ORIGIN + secs_to_ms(task.at);
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
        Arc::new(QuietDecider { inner: Arc::new(flockd_wasm::PolicyRuntime::new(engine, chain)), dispatch: quiet });

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
    let stop_at = until.map(|u| ORIGIN + u);
    let cap = last_arrival + DRAIN_CAP_MS;
    let mut ticks = 0u64;
    let ended = loop {
        let now = clock.now();
        world.step();
        controller.tick().await;
        ticks += 1;
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
    Ok(Report::build(config, &queue, &world, end, ticks, ended))
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
    pub tasks: u32,
    pub tasks_finished: u32,
    pub tasks_never_started: u32,
    pub tasks_interrupted: u32,
    pub tasks_killed_by_termination: u32,
    #[serde(flatten)]
    pub waits: Waits,
}

impl Report {
    fn build(config: &Config, queue: &SimQueue, world: &SimWorld, end: Millis, ticks: u64, ended: Ended) -> Report {
        let stats = world.stats(end);
        let tasks = queue.tasks();
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
            tasks_finished: tasks.iter().filter(|t| t.finished_at.is_some()).count() as u32,
            tasks_never_started: tasks.iter().filter(|t| t.first_started.is_none()).count() as u32,
            tasks_interrupted: sum(|r| r.tasks_interrupted),
            tasks_killed_by_termination: sum(|r| r.tasks_killed_by_termination),
            waits: waits(tasks.iter().filter_map(|t| t.wait_ms())),
        };
        Report { simulated_secs: round3((end - ORIGIN) as f64 / 1000.0), ticks, ended, resources, queues, total }
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
        let _ = writeln!(out, "simulated {:.1} h in {} ticks ({ended})\n", self.simulated_secs / 3600.0, self.ticks);
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
                secs(r.waits.wait_p50_secs),
                secs(r.waits.wait_p95_secs),
                secs(r.waits.wait_max_secs)
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
            secs(t.waits.wait_p50_secs),
            secs(t.waits.wait_p95_secs),
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
                secs(q.waits.wait_p50_secs),
                secs(q.waits.wait_p95_secs),
                wait_cell(q.waits.wait_max_secs, q.tasks_never_started)
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
    if never_started > 0 { format!("{never_started} never") } else { secs(s) }
}

fn secs(s: f64) -> String {
    format!("{s:.1}s")
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

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn secs_to_ms(s: f64) -> Millis {
    (s * 1000.0).round() as Millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let w = waits((1..=100).map(|s| s * 1000));
        assert_eq!((w.wait_p50_secs, w.wait_p95_secs, w.wait_max_secs), (50.0, 95.0, 100.0));
        assert_eq!(waits(std::iter::empty()), Waits::default());
    }
}
