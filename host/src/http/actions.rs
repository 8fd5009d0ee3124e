//! `POST /api/v1/actions/...`: what an operator does from the dashboard or
//! a script — pause and resume launches, shut down the idle machines now,
//! terminate one machine. Each termination runs as a tick of its own
//! through the guardrails, so a busy machine is never terminated.
//!
//! These change the fleet, so they are off unless `[http] token` is set,
//! and a request must not be one a web page elsewhere could make the
//! browser send (cross-site request forgery). Such a page cannot add an
//! `Authorization: Bearer` header or a JSON body without a CORS preflight,
//! which flockd never grants; but a browser re-sends the dashboard's Basic
//! credentials on its own, so a request authenticated that way must also
//! come from the dashboard's own origin (`Origin` equal to the `Host` it
//! was sent to). Every action needs `Content-Type: application/json`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flockd_core::journal::{Action, Outcome};
use flockd_core::{Millis, OperatorAction, TickRecord};
use serde::{Deserialize, Serialize};

use super::Shared;

/// An action's body: which resource (shut-down-idle) or instance (terminate).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub instance: Option<String>,
}

/// What an action did.
#[derive(Debug, Serialize)]
pub struct ActionAnswer {
    /// Since when launches are paused (unix ms), after this action.
    pub launches_paused_since: Option<Millis>,
    /// The tick the termination ran as, if it was one.
    pub tick: Option<u64>,
    pub terminated: Vec<String>,
    /// Instance → why it was kept (its worker busy, the observation failed…).
    pub refused: Vec<Refusal>,
    pub failed: Vec<Refusal>,
}

#[derive(Debug, Serialize)]
pub struct Refusal {
    pub instance: String,
    pub why: String,
}

/// Why an action was not run, as its answer: `{"error": …}` with a status.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    Refused(status, message.into()).into_response()
}

/// Ok when this request may act; the refusal otherwise.
fn admitted(shared: &Shared, headers: &HeaderMap) -> Result<(), Refused> {
    if !shared.actions_enabled {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            "actions are off: they change the fleet, so they need [http] token to be set".into(),
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(Refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the action as Content-Type: application/json".into(),
        ));
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(' ').next().is_some_and(|s| s.eq_ignore_ascii_case("basic")));
    if basic {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let same = match (host, origin) {
            (Some(host), Some(origin)) => {
                origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
            }
            _ => false,
        };
        if !same {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "refused: an action authenticated by the browser's saved credentials must come from the dashboard's own page (Origin); scripts send Authorization: Bearer <token>".into(),
            ));
        }
    }
    if let Some(l) = shared.controller.leadership()
        && !l.leading()
    {
        let leader = l.leader.as_deref().unwrap_or("none seen yet");
        return Err(Refused(
            StatusCode::CONFLICT,
            format!("this flockd is a follower and does not act; ask the leader ({leader})"),
        ));
    }
    Ok(())
}

/// The body, or `{}` when there is none.
fn target(body: &str) -> Result<Target, Refused> {
    if body.trim().is_empty() {
        return Ok(Target::default());
    }
    serde_json::from_str(body).map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("the body does not read: {e}")))
}

pub async fn pause(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    set_paused(&shared, &headers, true).await
}

pub async fn resume(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    set_paused(&shared, &headers, false).await
}

async fn set_paused(shared: &Shared, headers: &HeaderMap, paused: bool) -> Response {
    if let Err(refused) = admitted(shared, headers) {
        return refused.into_response();
    }
    match shared.controller.pause_launches(paused).await {
        Ok(since) => Json(ActionAnswer {
            launches_paused_since: since,
            tick: None,
            terminated: vec![],
            refused: vec![],
            failed: vec![],
        })
        .into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, format!("could not save the pause: {e:#}")),
    }
}

pub async fn shutdown_idle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    if let Err(refused) = admitted(&shared, &headers) {
        return refused.into_response();
    }
    let target = match target(&body) {
        Ok(t) => t,
        Err(bad) => return bad.into_response(),
    };
    if let Some(r) = &target.resource
        && !shared.controller.config().resources.iter().any(|x| &x.name == r)
    {
        return refuse(StatusCode::NOT_FOUND, format!("no resource {r:?} in the config"));
    }
    run(&shared, OperatorAction::TerminateIdle { resource: target.resource }, None).await
}

pub async fn terminate(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    if let Err(refused) = admitted(&shared, &headers) {
        return refused.into_response();
    }
    let Some(instance) = (match target(&body) {
        Ok(t) => t.instance,
        Err(bad) => return bad.into_response(),
    }) else {
        return refuse(StatusCode::BAD_REQUEST, "name the machine: {\"instance\": \"ID\"}");
    };
    run(&shared, OperatorAction::Terminate { instance: instance.clone() }, Some(instance)).await
}

/// Has the loop run `action` and answers with what it did. `named`: the one
/// instance asked for, whose absence is a 404 and refusal a 409.
async fn run(shared: &Shared, action: OperatorAction, named: Option<String>) -> Response {
    // An observation plus cloud calls, each under its own deadline.
    let limit = Duration::from_secs(900);
    let record = match tokio::time::timeout(limit, shared.controller.request(action)).await {
        Ok(Ok(record)) => record,
        Ok(Err(e)) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => return refuse(StatusCode::GATEWAY_TIMEOUT, "the action did not finish within 15 minutes"),
    };
    if let Some(error) = &record.observation_error {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("nothing done: the observation failed: {error}"));
    }
    let answer = answer(shared, &record);
    if let Some(id) = named {
        // The tick's own snapshot: whether the machine exists.
        let found = shared.controller.last().is_some_and(|(s, r)| r.tick == record.tick && s.instance(&id).is_some());
        if !found {
            return refuse(StatusCode::NOT_FOUND, format!("no machine {id:?} in this cluster's fleet"));
        }
        if !answer.terminated.contains(&id) {
            return (StatusCode::CONFLICT, Json(answer)).into_response();
        }
    }
    Json(answer).into_response()
}

fn answer(shared: &Shared, record: &TickRecord) -> ActionAnswer {
    let mut a = ActionAnswer {
        launches_paused_since: shared.controller.launches_paused(),
        tick: Some(record.tick),
        terminated: vec![],
        refused: vec![],
        failed: vec![],
    };
    for action in &record.actions {
        let Action::Terminate { instance, outcome, .. } = action else { continue };
        match outcome {
            Outcome::Done | Outcome::Skipped => a.terminated.push(instance.clone()),
            Outcome::Refused(why) => a.refused.push(Refusal { instance: instance.clone(), why: why.clone() }),
            Outcome::Failed(why) => a.failed.push(Refusal { instance: instance.clone(), why: why.clone() }),
        }
    }
    // Planned but never tried: the guardrails kept it. Their line that
    // names it says why (shown, not decided on).
    for planned in &record.plan.terminations {
        if record.mentions(&planned.instance) {
            continue;
        }
        let why = record.clamps.iter().find(|c| c.contains(&planned.instance)).cloned().unwrap_or_default();
        a.refused.push(Refusal { instance: planned.instance.clone(), why });
    }
    a
}
