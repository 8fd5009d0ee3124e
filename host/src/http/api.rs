//! The JSON API (`/api/v1/...`), the probes and `/metrics`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flockd_core::journal::TickRecord;
use flockd_core::{Action, InstanceState, JournalQuery, Market, Millis, Outcome};
use serde::{Deserialize, Serialize};

use super::Shared;
use super::history::V1Sample;
use super::logs::LogLine;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    // A follower serves (status, metrics) without ticking: ready. Were it
    // not, a rolling update would wait on it forever.
    let following = shared.controller.leadership().is_some_and(|l| !l.leading());
    if shared.controller.is_ready() || following {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no tick has observed the queues and the cloud successfully yet\n")
            .into_response()
    }
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.metrics.sync_policies(&shared.policies);
    shared.metrics.sync_leadership(shared.controller.leadership().as_ref());
    shared.metrics.sync_paused(shared.controller.launches_paused().is_some());
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], shared.metrics.render()).into_response()
}

#[derive(Serialize)]
pub struct Status {
    pub cluster: String,
    pub dry_run: bool,
    pub ready: bool,
    /// Set while every observation fails: nothing is decided meanwhile.
    pub blind: Option<BlindStatus>,
    /// Machines the last observation listed with launch keys this flockd
    /// never wrote: another writer shares the cluster, and launches stop.
    pub foreign_machines: Vec<String>,
    /// With a shared store: who leads (only the leader acts; a follower's
    /// status is its last view, and names the leader).
    pub leader: Option<LeaderStatus>,
    /// Since when an operator has paused launches (unix ms); terminations
    /// go on meanwhile.
    pub launches_paused_since: Option<Millis>,
    /// Whether `POST /api/*/actions/...` are on (only with `[http] token`).
    pub actions_enabled: bool,
    /// When the snapshot below was observed (unix ms).
    pub as_of: Option<Millis>,
    pub last_tick: Option<LastTick>,
    pub limits: Limits,
    pub cost_per_hour: f64,
    /// What the fleet has cost so far today and this month (UTC).
    pub spend: flockd_core::spend::Spent,
    /// The ClearML web UI, when its address is known.
    pub clearml_web: Option<String>,
    pub queues: Vec<QueueStatus>,
    pub resources: Vec<ResourceStatus>,
    pub fleet: Vec<InstanceStatus>,
    pub policies: Vec<PolicyStatus>,
    /// Hot-reload events, newest first.
    pub reloads: Vec<ReloadStatus>,
    /// Launch and boot failures the policies see (the retention window),
    /// newest first.
    pub failures: Vec<FailureStatus>,
}

#[derive(Serialize)]
pub struct FailureStatus {
    pub at: Millis,
    pub resource: String,
    pub kind: flockd_core::FailureKind,
    pub message: String,
}

#[derive(Serialize)]
pub struct LeaderStatus {
    /// Whether this flockd holds the lease and acts.
    pub leading: bool,
    /// This flockd's name in the lease.
    pub holder: String,
    /// The lease's holder as last seen.
    pub leader: Option<String>,
    /// The epoch this flockd's writes carry while leading.
    pub epoch: Option<u64>,
    pub transitions: u64,
    pub renew_failures: u64,
}

impl From<flockd_core::Leadership> for LeaderStatus {
    fn from(l: flockd_core::Leadership) -> Self {
        LeaderStatus {
            leading: l.leading(),
            holder: l.holder,
            leader: l.leader,
            epoch: l.epoch,
            transitions: l.transitions,
            renew_failures: l.renew_failures,
        }
    }
}

/// Who leads (`GET /api/v1/leader`). With the embedded store, one flockd
/// that always acts: leading, with no lease.
pub fn leader_status(shared: &Shared) -> LeaderStatus {
    shared.controller.leadership().map(LeaderStatus::from).unwrap_or(LeaderStatus {
        leading: true,
        holder: String::new(),
        leader: None,
        epoch: None,
        transitions: 0,
        renew_failures: 0,
    })
}

pub async fn leader(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(leader_status(&shared)).into_response()
}

#[derive(Serialize)]
pub struct BlindStatus {
    /// When the first failed observation of this spell began (unix ms).
    pub since: Millis,
    pub seconds: f64,
    pub failed_ticks: u64,
    pub error: String,
}

#[derive(Serialize)]
pub struct LastTick {
    pub tick: u64,
    pub at: Millis,
    /// "ok", or "observation-failed" (nothing was decided).
    pub outcome: &'static str,
    pub observation_error: Option<String>,
    pub launched: usize,
    pub terminated: usize,
    pub failed: usize,
    pub refused: usize,
    pub skipped: usize,
    pub clamps: Vec<String>,
    pub micros: u64,
    pub snapshot_digest: Option<String>,
}

#[derive(Serialize)]
pub struct Limits {
    pub max_instances: u32,
    pub max_cost_per_hour: f64,
    pub max_cost_per_day: Option<f64>,
    pub max_cost_per_month: Option<f64>,
}

#[derive(Serialize)]
pub struct QueueStatus {
    pub name: String,
    pub pending: u32,
    pub oldest_wait_secs: f64,
    pub resources: Vec<String>,
    pub external_idle_workers: u32,
}

#[derive(Serialize)]
pub struct ResourceStatus {
    pub name: String,
    pub queues: Vec<String>,
    pub max_instances: u32,
    pub price_per_hour: f64,
    pub market: Market,
    pub booting: u32,
    pub running_busy: u32,
    pub running_idle: u32,
    pub stopping: u32,
}

#[derive(Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub resource: String,
    pub state: InstanceState,
    pub busy: bool,
    /// booting, busy, idle or stopping: what a person wants to see first.
    pub activity: &'static str,
    pub launched_at: Millis,
    pub age_secs: f64,
    pub idle_secs: Option<f64>,
    pub worker: Option<String>,
    /// The ClearML task its worker runs, when busy.
    pub task: Option<String>,
    /// That task in the ClearML web UI, when its address is known.
    pub task_url: Option<String>,
    /// What it has cost since launch at its resource's price (None for a
    /// resource the config no longer has).
    pub cost_so_far: Option<f64>,
}

#[derive(Serialize)]
pub struct PolicyStatus {
    pub name: String,
    /// Its failure withholds the tick's launches.
    pub required: bool,
    pub origin: String,
    /// Content digest of the running version.
    pub version: String,
    pub loaded_at: Millis,
    pub calls: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub reloads: u64,
    pub reload_failures: u64,
    /// The settings it runs with (e.g. idle's max-idle-secs): the rules
    /// in force. `{}` for its defaults.
    pub settings: serde_json::Value,
}

#[derive(Serialize)]
pub struct ReloadStatus {
    pub at: Millis,
    pub policy: String,
    pub origin: String,
    pub outcome: &'static str,
    pub version: Option<String>,
    pub error: Option<String>,
}

fn unix_ms(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

pub fn status(shared: &Shared) -> Status {
    let config = shared.controller.config();
    let last = shared.controller.last();
    let snapshot = last.as_ref().map(|(s, _)| s.clone());
    let record = last.as_ref().map(|(_, r)| r.clone());
    let now = snapshot.as_ref().map_or(0, |s| s.now);

    let fleet: Vec<InstanceStatus> =
        snapshot
            .iter()
            .flat_map(|s| s.instances.iter())
            .map(|i| (i, secs(now.saturating_sub(i.launched_at))))
            .map(|(i, age_secs)| InstanceStatus {
                id: i.id.clone(),
                resource: i.resource.clone(),
                state: i.state,
                busy: i.busy,
                activity: match (i.state, i.busy) {
                    (InstanceState::Booting, _) => "booting",
                    (InstanceState::Running, true) => "busy",
                    (InstanceState::Running, false) => "idle",
                    (InstanceState::Stopping, _) => "stopping",
                },
                launched_at: i.launched_at,
                age_secs,
                idle_secs: i.idle_since.map(|t| secs(now.saturating_sub(t))),
                worker: i.worker.clone(),
                task: i.task.clone(),
                task_url: i.task.as_ref().zip(shared.clearml_web.as_ref()).map(|(task, web)| {
                    format!("{}/projects/*/experiments/{task}/output/log", web.trim_end_matches('/'))
                }),
                cost_so_far: snapshot
                    .as_ref()
                    .and_then(|s| s.resource(&i.resource))
                    .map(|r| r.price_per_hour * age_secs / 3600.0),
            })
            .collect();
    let count = |resource: &str, activity: &str| {
        fleet.iter().filter(|i| i.resource == resource && i.activity == activity).count() as u32
    };
    let resources = config
        .resources
        .iter()
        .map(|r| ResourceStatus {
            name: r.name.clone(),
            queues: config.queues.iter().filter(|q| q.resources.contains(&r.name)).map(|q| q.name.clone()).collect(),
            max_instances: r.max_instances,
            price_per_hour: r.price_per_hour,
            market: r.market,
            booting: count(&r.name, "booting"),
            running_busy: count(&r.name, "busy"),
            running_idle: count(&r.name, "idle"),
            stopping: count(&r.name, "stopping"),
        })
        .collect();
    let queues = config
        .queues
        .iter()
        .map(|q| {
            let seen = snapshot.as_ref().and_then(|s| s.queues.iter().find(|x| x.name == q.name));
            QueueStatus {
                name: q.name.clone(),
                pending: seen.map_or(0, |x| x.pending),
                oldest_wait_secs: seen.map_or(0.0, |x| secs(x.oldest_wait_ms)),
                resources: q.resources.clone(),
                external_idle_workers: seen.map_or(0, |x| x.external_idle_workers),
            }
        })
        .collect();

    let counters = shared.policies.counters();
    let policies = shared
        .policies
        .chain()
        .policies
        .iter()
        .map(|p| {
            let c = counters.get(&p.name).cloned().unwrap_or_default();
            PolicyStatus {
                required: config.required_policies.contains(&p.name),
                name: p.name.clone(),
                origin: p.origin.to_string(),
                version: p.digest.clone(),
                loaded_at: unix_ms(p.loaded_at),
                calls: c.calls,
                errors: c.errors,
                last_error: c.last_error,
                reloads: c.reloads,
                reload_failures: c.reload_failures,
                settings: serde_json::from_str(&p.settings_json).unwrap_or_else(|_| serde_json::json!({})),
            }
        })
        .collect();
    let reloads = shared
        .policies
        .events()
        .into_iter()
        .rev()
        .map(|e| ReloadStatus {
            at: unix_ms(e.at),
            policy: e.policy,
            origin: e.origin.to_string(),
            outcome: e.outcome.as_str(),
            version: e.digest,
            error: e.error,
        })
        .collect();

    let last_at = record.as_ref().map(|r| r.at);
    let foreign_machines = record.as_ref().map(|r| r.foreign_machines.clone()).unwrap_or_default();
    let last_tick = record.map(|r| {
        let outcomes = |f: fn(&Outcome) -> bool| {
            r.actions
                .iter()
                .filter(|a| match a {
                    Action::Launch { outcome, .. } | Action::Terminate { outcome, .. } => f(outcome),
                })
                .count()
        };
        LastTick {
            tick: r.tick,
            at: r.at,
            outcome: if r.observation_error.is_some() { "observation-failed" } else { "ok" },
            observation_error: r.observation_error.clone(),
            launched: r.launched(),
            terminated: r.terminated(),
            failed: outcomes(|o| matches!(o, Outcome::Failed(_))),
            refused: outcomes(|o| matches!(o, Outcome::Refused(_))),
            skipped: outcomes(|o| matches!(o, Outcome::Skipped)),
            clamps: r.clamps.clone(),
            micros: r.micros,
            snapshot_digest: r.snapshot_digest.clone(),
        }
    });

    Status {
        cluster: config.cluster.clone(),
        dry_run: config.dry_run,
        ready: shared.controller.is_ready(),
        blind: shared.controller.blind().map(|b| BlindStatus {
            seconds: b.seconds(last_at.unwrap_or(b.since)),
            since: b.since,
            failed_ticks: b.ticks,
            error: b.error,
        }),
        foreign_machines,
        leader: shared.controller.leadership().map(LeaderStatus::from),
        launches_paused_since: shared.controller.launches_paused(),
        actions_enabled: shared.actions_enabled,
        as_of: snapshot.as_ref().map(|s| s.now),
        last_tick,
        limits: Limits {
            max_instances: config.limits.max_instances,
            max_cost_per_hour: config.limits.max_cost_per_hour,
            max_cost_per_day: config.limits.max_cost_per_day,
            max_cost_per_month: config.limits.max_cost_per_month,
        },
        cost_per_hour: snapshot.as_ref().map_or(0.0, |s| s.budget.cost_per_hour),
        spend: shared.controller.spent(),
        clearml_web: shared.clearml_web.clone(),
        failures: snapshot
            .iter()
            .flat_map(|s| s.failures.iter().rev())
            .map(|f| FailureStatus { at: f.at, resource: f.resource.clone(), kind: f.kind, message: f.message.clone() })
            .collect(),
        queues,
        resources,
        fleet,
        policies,
        reloads,
    }
}

pub async fn status_json(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(status(&shared))
}

#[derive(Deserialize)]
pub struct DecisionsQuery {
    /// Records to return (default 50, at most 1000).
    pub limit: Option<usize>,
    /// Only ticks that launched or acted on this instance.
    pub instance: Option<String>,
    /// Only ticks that did or refused something, or failed to observe.
    #[serde(default)]
    pub acted: bool,
}

/// How far back `acted=true` looks for ticks that did something.
const ACTED_SCAN: usize = 5_000;
pub const MAX_DECISIONS: usize = 1_000;

pub async fn decisions(state: State<Arc<Shared>>, query: Query<DecisionsQuery>) -> Response {
    match decision_records(state, query).await {
        Ok(records) => Json(records).into_response(),
        Err(response) => response,
    }
}

/// The journal records a decisions query asks for, newest first.
pub async fn decision_records(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<DecisionsQuery>,
) -> Result<Vec<TickRecord>, Response> {
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_DECISIONS);
    let store = shared.controller.store().clone();
    let query = JournalQuery { limit: if q.acted { ACTED_SCAN } else { limit }, instance: q.instance };
    let acted = q.acted;
    match store.journal(&query).await {
        Ok(records) => Ok(records.into_iter().filter(|r| !acted || r.acted()).take(limit).collect()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the journal: {e:#}\n")).into_response()),
    }
}

pub async fn history(State(shared): State<Arc<Shared>>) -> Json<Vec<V1Sample>> {
    Json(shared.history.lock().unwrap().samples().into_iter().map(V1Sample::from).collect())
}

#[derive(Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub after: u64,
}

#[derive(Serialize)]
pub struct Logs {
    pub lines: Vec<LogLine>,
    /// Pass as `after` next time.
    pub next: u64,
}

pub async fn logs(State(shared): State<Arc<Shared>>, Query(q): Query<LogsQuery>) -> Json<Logs> {
    let (lines, next) = shared.logs.since(q.after);
    Json(Logs { lines, next })
}
