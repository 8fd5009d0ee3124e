//! `/api/v2/...`: the v1 answers with kebab-case keys, like the config and
//! `simulate --format json`. v1 stays, unchanged, for one release.
//!
//! The answers are built once (in `api`) and their keys renamed here. That
//! is safe because no v2 answer holds a map keyed by data (a queue or
//! resource name would be renamed too): lists of objects carry names as
//! values. The history, whose v1 samples key pending counts by queue, is
//! reshaped into such a list first. A test below keeps it so.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::Shared;
use super::api;

/// Object keys `snake_case` → `kebab-case`, at every depth.
pub fn kebab(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k.replace('_', "-"), kebab(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(kebab).collect()),
        other => other,
    }
}

fn json(value: impl serde::Serialize) -> Response {
    match serde_json::to_value(value) {
        Ok(v) => Json(kebab(v)).into_response(),
        Err(e) => {
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}\n")).into_response()
        }
    }
}

pub async fn status(State(shared): State<Arc<Shared>>) -> Response {
    json(api::status(&shared))
}

pub async fn decisions(state: State<Arc<Shared>>, query: Query<api::DecisionsQuery>) -> Response {
    match api::decision_records(state, query).await {
        Ok(records) => json(records),
        Err(response) => response,
    }
}

pub async fn history(State(shared): State<Arc<Shared>>) -> Response {
    json(shared.history.lock().unwrap().samples())
}

/// An answer of v1 with its JSON keys in kebab-case.
async fn kebab_answer(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "cannot read the answer\n").into_response();
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => (parts.status, Json(kebab(v))).into_response(),
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

pub async fn pause(state: State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    kebab_answer(super::actions::pause(state, headers).await).await
}

pub async fn resume(state: State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    kebab_answer(super::actions::resume(state, headers).await).await
}

pub async fn shutdown_idle(state: State<Arc<Shared>>, headers: axum::http::HeaderMap, body: String) -> Response {
    kebab_answer(super::actions::shutdown_idle(state, headers, body).await).await
}

pub async fn terminate(state: State<Arc<Shared>>, headers: axum::http::HeaderMap, body: String) -> Response {
    kebab_answer(super::actions::terminate(state, headers, body).await).await
}

pub async fn leader(State(shared): State<Arc<Shared>>) -> Response {
    json(api::leader_status(&shared))
}

pub async fn logs(state: State<Arc<Shared>>, query: Query<api::LogsQuery>) -> Response {
    json(api::logs(state, query).await.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_renamed_at_every_depth_and_values_never() {
        let v1 = serde_json::json!({"cost_per_hour": 1, "fleet": [{"idle_secs": 2, "id": "i_1"}], "last_tick": {"snapshot_digest": "a_b"}});
        let v2 = kebab(v1);
        assert_eq!(
            v2,
            serde_json::json!({"cost-per-hour": 1, "fleet": [{"idle-secs": 2, "id": "i_1"}], "last-tick": {"snapshot-digest": "a_b"}})
        );
    }

    /// Names are values in every v2 answer: a queue called `gpu_a100` in the
    /// history keeps its name.
    #[test]
    fn the_history_carries_queue_names_as_values() {
        let record = flockd_core::TickRecord {
            at: 5,
            queues: vec![flockd_core::journal::QueueLine { name: "gpu_a100".into(), pending: 3, oldest_wait_ms: 0 }],
            fleet: Some(flockd_core::journal::FleetLine {
                cost_per_hour: 0.0,
                resources: vec![flockd_core::journal::ResourceLine { name: "a_b".into(), ..Default::default() }],
            }),
            ..Default::default()
        };
        let v2 = kebab(serde_json::to_value(super::super::history::Sample::of(&record).unwrap()).unwrap());
        assert_eq!(v2["queues"][0]["name"], "gpu_a100", "{v2}");
        assert_eq!(v2["queues"][0]["pending"], 3, "{v2}");
        assert_eq!(v2["resources"][0]["name"], "a_b", "{v2}");
    }
}
