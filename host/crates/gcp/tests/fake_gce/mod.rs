//! A loopback fake of the Compute Engine REST calls flockd makes: insert,
//! get, list and aggregated list (with a `labels.KEY = "VALUE"` filter and
//! page tokens) and delete of zonal instances, and zone operations. Like GCE: ids are decimal
//! strings, an insert answers a RUNNING operation that is DONE when next
//! polled, a failed insert is an operation that finishes with `error` set,
//! and a repeated requestId answers the first call's operation.
//!
//! Tests steer it in-process: `inject` a fault, read `calls` and stored
//! `instance`s.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// The call itself fails with this HTTP status and `errors[].reason`.
    Http { status: u16, reason: &'static str },
    /// The insert is accepted, and its operation finishes with this error code.
    Operation { code: &'static str },
    /// The aggregated list answers, naming this scope as unreachable.
    Unreachable { scope: &'static str },
    /// The aggregated list answers with this scope's entry replaced by a
    /// warning of this code (GCE's per-zone way of saying UNREACHABLE).
    ScopeWarning { scope: &'static str, code: &'static str },
}

#[derive(Clone, Debug)]
pub struct Fault {
    /// "insert", "get", "list", "aggregatedList", "delete".
    pub call: &'static str,
    /// Only calls in this zone; None for any zone.
    pub zone: Option<String>,
    pub kind: FaultKind,
    pub count: u32,
}

/// One call as the fake saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub call: &'static str,
    pub zone: String,
    pub query: HashMap<String, String>,
}

#[derive(Default)]
struct Fake {
    project: String,
    instances: BTreeMap<(String, String), Value>,
    operations: HashMap<String, PendingOperation>,
    operation_by_request_id: HashMap<String, String>,
    next_id: u64,
    faults: Vec<Fault>,
    calls: Vec<Call>,
}

struct PendingOperation {
    operation: Value,
    /// Set on the operation when it is DONE.
    error_code: Option<&'static str>,
}

type Shared = Arc<Mutex<Fake>>;

pub struct FakeGce {
    pub url: String,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl FakeGce {
    pub async fn start(project: &str) -> FakeGce {
        let state: Shared =
            Arc::new(Mutex::new(Fake { project: project.to_owned(), next_id: 1000, ..Fake::default() }));
        let base = "/compute/v1/projects/{project}/zones/{zone}";
        let app = Router::new()
            .route(&format!("{base}/instances"), post(insert))
            .route(&format!("{base}/instances/{{name}}"), get(get_instance).delete(delete))
            .route(&format!("{base}/operations/{{operation}}"), get(get_operation))
            .route("/compute/v1/projects/{project}/aggregated/instances", get(aggregated_list))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGce { url, state, server }
    }

    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub fn calls(&self, call: &str) -> Vec<Call> {
        self.state.lock().unwrap().calls.iter().filter(|c| c.call == call).cloned().collect()
    }

    pub fn instance(&self, zone: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().instances.get(&(zone.to_owned(), name.to_owned())).cloned()
    }

    /// The guest shut itself down (`poweroff`): GCE keeps the instance, its
    /// disks and its name, in status TERMINATED, until someone deletes it.
    pub fn power_off(&self, zone: &str, name: &str) {
        let mut fake = self.state.lock().unwrap();
        let instance = fake.instances.get_mut(&(zone.to_owned(), name.to_owned())).expect("no such instance");
        instance["status"] = json!("TERMINATED");
    }

    pub fn instance_count(&self) -> usize {
        self.state.lock().unwrap().instances.len()
    }
}

impl Drop for FakeGce {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn gce_error(status: u16, reason: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status, "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}]}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

impl Fake {
    fn record(&mut self, call: &'static str, zone: &str, query: &HashMap<String, String>) -> Option<FaultKind> {
        self.calls.push(Call { call, zone: zone.to_owned(), query: query.clone() });
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.call == call && f.count > 0 && f.zone.as_deref().is_none_or(|z| z == zone))?;
        fault.count -= 1;
        Some(fault.kind.clone())
    }

    fn zone_url(&self, zone: &str) -> String {
        format!("https://compute.googleapis.com/compute/v1/projects/{}/zones/{zone}", self.project)
    }

    fn new_operation(&mut self, zone: &str, kind: &str, target: &str, error_code: Option<&'static str>) -> Value {
        self.next_id += 1;
        let name = format!("operation-{}", self.next_id);
        let operation = json!({
            "kind": "compute#operation",
            "id": self.next_id.to_string(),
            "name": name,
            "zone": self.zone_url(zone),
            "operationType": kind,
            "targetLink": format!("{}/instances/{target}", self.zone_url(zone)),
            "status": "RUNNING",
            "progress": 0,
            "selfLink": format!("{}/operations/{name}", self.zone_url(zone)),
        });
        self.operations.insert(name, PendingOperation { operation: operation.clone(), error_code });
        operation
    }
}

async fn insert(
    State(state): State<Shared>,
    Path((_project, zone)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    axum::Json(mut body): axum::Json<Value>,
) -> Response {
    let mut fake = state.lock().unwrap();
    let fault = fake.record("insert", &zone, &query);
    if let Some(request_id) = query.get("requestId")
        && let Some(name) = fake.operation_by_request_id.get(request_id)
    {
        return axum::Json(fake.operations[name].operation.clone()).into_response();
    }
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let error_code = match fault {
        Some(FaultKind::Http { status, reason }) => {
            return gce_error(status, reason, "injected by the fake");
        }
        Some(FaultKind::Operation { code }) => Some(code),
        Some(FaultKind::Unreachable { .. } | FaultKind::ScopeWarning { .. }) | None => None,
    };
    if error_code.is_none() {
        if fake.instances.contains_key(&(zone.clone(), name.clone())) {
            let message = format!("The resource 'projects/p/zones/{zone}/instances/{name}' already exists");
            return gce_error(409, "alreadyExists", &message);
        }
        fake.next_id += 1;
        body["id"] = json!(fake.next_id.to_string());
        body["status"] = json!("RUNNING");
        body["creationTimestamp"] = json!("2026-11-24T01:02:03.456-08:00");
        body["zone"] = json!(fake.zone_url(&zone));
        body["kind"] = json!("compute#instance");
        fake.instances.insert((zone.clone(), name.clone()), body);
    }
    let operation = fake.new_operation(&zone, "insert", &name, error_code);
    if let Some(request_id) = query.get("requestId") {
        let operation_name = operation["name"].as_str().unwrap().to_owned();
        fake.operation_by_request_id.insert(request_id.clone(), operation_name);
    }
    axum::Json(operation).into_response()
}

async fn get_operation(
    State(state): State<Shared>,
    Path((_project, _zone, name)): Path<(String, String, String)>,
) -> Response {
    let mut fake = state.lock().unwrap();
    let Some(pending) = fake.operations.get_mut(&name) else {
        return gce_error(404, "notFound", &format!("operation {name} not found"));
    };
    pending.operation["status"] = json!("DONE");
    pending.operation["progress"] = json!(100);
    if let Some(code) = pending.error_code {
        let message = match code {
            "ZONE_RESOURCE_POOL_EXHAUSTED" => {
                "The zone does not have enough resources available to fulfill the request. Try a different zone."
            }
            _ => "injected by the fake",
        };
        pending.operation["error"] = json!({"errors": [{"code": code, "message": message}]});
        pending.operation["httpErrorStatusCode"] = json!(if code == "QUOTA_EXCEEDED" { 403 } else { 503 });
        pending.operation["httpErrorMessage"] = json!("SERVICE UNAVAILABLE");
    }
    axum::Json(pending.operation.clone()).into_response()
}

async fn get_instance(
    State(state): State<Shared>,
    Path((_project, zone, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut fake = state.lock().unwrap();
    if let Some(FaultKind::Http { status, reason }) = fake.record("get", &zone, &query) {
        return gce_error(status, reason, "injected by the fake");
    }
    match fake.instances.get(&(zone.clone(), name.clone())) {
        Some(instance) => axum::Json(instance.clone()).into_response(),
        None => gce_error(
            404,
            "notFound",
            &format!("The resource 'projects/p/zones/{zone}/instances/{name}' was not found"),
        ),
    }
}

async fn delete(
    State(state): State<Shared>,
    Path((_project, zone, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut fake = state.lock().unwrap();
    if let Some(FaultKind::Http { status, reason }) = fake.record("delete", &zone, &query) {
        return gce_error(status, reason, "injected by the fake");
    }
    if fake.instances.remove(&(zone.clone(), name.clone())).is_none() {
        return gce_error(
            404,
            "notFound",
            &format!("The resource 'projects/p/zones/{zone}/instances/{name}' was not found"),
        );
    }
    let operation = fake.new_operation(&zone, "delete", &name, None);
    axum::Json(operation).into_response()
}

/// `labels.KEY = "VALUE"` clauses, joined by AND (or just spaces).
fn matches_filter(instance: &Value, filter: &str) -> bool {
    let mut rest = filter.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches(['(', ' ']).trim_start_matches("AND ").trim_start();
        let Some(after) = rest.strip_prefix("labels.") else {
            panic!("the fake understands only labels.KEY = \"VALUE\" filters, got {filter:?}");
        };
        let (key, after) = after.split_once('=').expect("KEY = VALUE");
        let after = after.trim_start();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').expect("closing quote"),
            None => after.split_once([' ', ')']).unwrap_or((after, "")),
        };
        if instance["labels"][key.trim()].as_str() != Some(value) {
            return false;
        }
        rest = after.trim_start_matches([')', ' ']);
    }
    true
}

/// Instances of every zone matching `filter`; a page holds `maxResults` instances, grouped
/// by `zones/<zone>` as GCE does.
async fn aggregated_list(
    State(state): State<Shared>,
    Path(_project): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut fake = state.lock().unwrap();
    let mut unreachable = None;
    let mut scope_warning = None;
    match fake.record("aggregatedList", "", &query) {
        Some(FaultKind::Http { status, reason }) => return gce_error(status, reason, "injected by the fake"),
        Some(FaultKind::Unreachable { scope }) => unreachable = Some(scope),
        Some(FaultKind::ScopeWarning { scope, code }) => scope_warning = Some((scope, code)),
        _ => {}
    }
    let filter = query.get("filter").map(String::as_str).unwrap_or_default();
    let matching: Vec<(&String, &Value)> = fake
        .instances
        .iter()
        .filter(|(_, instance)| matches_filter(instance, filter))
        .map(|((zone, _), instance)| (zone, instance))
        .collect();
    let start: usize = query.get("pageToken").map_or(0, |t| t.parse().expect("a page token the fake issued"));
    let page_size: usize = query.get("maxResults").map_or(500, |m| m.parse().unwrap());
    let end = (start + page_size).min(matching.len());
    let mut items = serde_json::Map::new();
    for (zone, instance) in &matching[start..end] {
        let scope = items.entry(format!("zones/{zone}")).or_insert_with(|| json!({"instances": []}));
        scope["instances"].as_array_mut().unwrap().push((*instance).clone());
    }
    let mut body = json!({
        "kind": "compute#instanceAggregatedList",
        "id": format!("projects/{}/aggregated/instances", fake.project),
        "items": items,
    });
    if end < matching.len() {
        body["nextPageToken"] = json!(end.to_string());
    }
    if let Some(scope) = unreachable {
        body["unreachables"] = json!([scope]);
    }
    if let Some((scope, code)) = scope_warning {
        body["items"][scope] = json!({
            "warning": { "code": code, "message": format!("{scope} injected by the fake"), "data": [] }
        });
    }
    axum::Json(body).into_response()
}
