//! Property test of the compatible server: short sequences of requests with
//! arbitrary bodies (random keys and the real field names of every endpoint,
//! holding values of any JSON type, huge and negative numbers, ids that exist
//! and ids that do not, raw non-JSON bytes, query strings) against every
//! endpoint in [`ROUTES`](super::handlers::ROUTES) plus unknown ones, on a
//! store seeded with queues, tasks, a project and a worker.
//!
//! Every answer must be a success or a 4xx with a message: never a panic
//! (the guard in `answer` turns one into a 500, which fails here too), never
//! a 5xx, and the store must still serialise for the state file afterwards.
//!
//! The default 256 cases take a second or two. A long run (keep the debug
//! profile: release builds do not check integer overflow):
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p flockd-clearml --lib server::proptests
//! ```

use axum::http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

use super::handlers::ROUTES;
use super::store::{QueueEntry, QueueRecord, Store, WorkerRecord, iso, now_ms};
use super::tests::{KEY, SECRET, basic, logged_in, request};
use super::*;
use crate::secret::Secret;

/// Every field name some handler reads, plus a few the SDK writes.
const FIELDS: &[&str] = &[
    "id",
    "name",
    "tags",
    "system_tags",
    "search_hidden",
    "max_task_entries",
    "only_fields",
    "page",
    "page_size",
    "queue",
    "queue_name",
    "task",
    "tasks",
    "force",
    "worker",
    "queues",
    "timeout",
    "last_seen",
    "status",
    "new_status",
    "status_reason",
    "status_message",
    "project",
    "execution",
    "artifacts",
    "hyperparams",
    "configuration",
    "replace_hyperparams",
    "requirements",
    "events",
    "expiration_sec",
    "type",
    "script",
    "started",
    "completed",
    "created",
    "last_iteration",
    "entries",
    "method",
    "section",
    "key",
];

/// Strings that mean something to the seeded store or to a handler.
const WORDS: &[&str] = &[
    "",
    "q-cpu",
    "q-hidden",
    "cpu",
    "hidden",
    "default",
    "k8s-glue",
    "-k8s-glue",
    "t-queued",
    "t-running",
    "t-odd",
    "t-gone",
    "p-1",
    "w-1",
    "queued",
    "in_progress",
    "created",
    "all",
    "true",
    "1",
    "0",
    "-1",
    "18446744073709551615",
    "99999999999999999999999",
    "1e400",
    "NaN",
    "^cpu$",
    "(",
    "\\",
    "\\ ",
    "[",
    "execution.queue",
    "entries.task",
    "a..b",
    ".",
    "started",
    "1970-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999+00:00",
];

/// Mostly numbers (where the arithmetic is) and meaningful words.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        2 => any::<u64>().prop_map(Value::from),
        3 => (0u64..100).prop_map(Value::from),
        4 => select(&[0, 1, 2, u64::MAX, u64::MAX - 1, i64::MAX as u64, 1 << 63, 1 << 53, 1 << 32][..]).prop_map(Value::from),
        2 => select(&[-1, i64::MIN, i64::MIN + 1, -(1 << 53)][..]).prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        2 => select(&[0.5, -0.5, 1e300, -1e300, 1.8446744073709552e19, 9.3e18][..]).prop_map(Value::from),
        4 => select(WORDS).prop_map(Value::from),
        1 => ".{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(FIELDS), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The fields the endpoint's handler reads, so that most generated bodies
/// reach past the "missing field" checks into the handler's arithmetic.
fn fields_of(endpoint: &str) -> &'static [&'static str] {
    const PAGING: &[&str] = &["id", "name", "tags", "system_tags", "only_fields", "page", "page_size"];
    match endpoint {
        "auth.login" => &["expiration_sec"],
        "queues.get_all" | "queues.get_all_ex" => &[
            "id",
            "name",
            "tags",
            "system_tags",
            "search_hidden",
            "max_task_entries",
            "only_fields",
            "page",
            "page_size",
        ],
        "tasks.get_all" | "tasks.get_all_ex" => {
            &["id", "status", "project", "name", "only_fields", "page", "page_size"]
        }
        "projects.get_all" | "projects.get_all_ex" | "projects.get_by_id" | "projects.create" => {
            &["id", "name", "project", "only_fields"]
        }
        "tasks.create" | "tasks.edit" | "tasks.update" => &[
            "task",
            "name",
            "type",
            "status",
            "execution",
            "script",
            "started",
            "completed",
            "created",
            "project",
            "tags",
            "last_iteration",
            "id",
        ],
        "tasks.enqueue" | "tasks.dequeue" => {
            &["task", "queue", "queue_name", "new_status", "status_reason", "status_message"]
        }
        "tasks.add_or_update_artifacts" => &["task", "artifacts", "key"],
        "tasks.edit_hyper_params" | "tasks.edit_configuration" => {
            &["task", "hyperparams", "configuration", "replace_hyperparams", "section", "name"]
        }
        "tasks.get_hyper_params" | "tasks.get_configurations" => &["tasks"],
        "tasks.set_requirements" => &["task", "requirements"],
        "events.add_batch" => &["events"],
        e if e.starts_with("queues.") => &["queue", "task", "name", "tags", "system_tags", "force", "get_task_info"],
        e if e.starts_with("workers.") => {
            &["worker", "queues", "queue", "task", "timeout", "tags", "system_tags", "last_seen", "timestamp"]
        }
        e if e.starts_with("tasks.") => &["task", "force", "status_reason", "status_message"],
        _ => PAGING,
    }
}

/// A field's value: mostly a scalar, sometimes a nested structure.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![3 => leaf(), 1 => json_value()]
}

fn key(own: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(own).prop_map(String::from),
        1 => select(FIELDS).prop_map(String::from),
        1 => "[a-z_.]{1,10}",
    ]
}

fn endpoint() -> impl Strategy<Value = String> {
    let known: Vec<&str> = ROUTES.iter().map(|(name, _)| *name).collect();
    prop_oneof![
        10 => select(known).prop_map(String::from),
        1 => select(&["auth.login", "debug.ping", "server.info"][..]).prop_map(String::from),
        1 => "[a-z]{1,8}\\.[a-z_]{0,12}",
    ]
}

/// A body as bytes: mostly a JSON object of the endpoint's own fields,
/// sometimes other JSON or no JSON at all.
fn body(own: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::btree_map(key(own), field_value(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect()).to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// One request: endpoint, credentials, query string, body.
fn request_parts() -> impl Strategy<Value = (String, Auth, String, Vec<u8>)> {
    endpoint().prop_flat_map(|endpoint| {
        let own = fields_of(&endpoint);
        (Just(endpoint), auth(), query(own), body(own))
    })
}

/// `?k=v&k2` with field names and raw values (JSON-looking or not).
fn query(own: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => prop::collection::vec((select(own), "[a-z0-9\\-]{0,20}"), 1..4).prop_map(|pairs| {
            let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("?{}", pairs.join("&"))
        }),
    ]
}

#[derive(Clone, Debug)]
enum Auth {
    Token,
    Basic,
    WrongBasic,
    None,
    Garbage(String),
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        12 => Just(Auth::Token),
        1 => Just(Auth::Basic),
        1 => Just(Auth::WrongBasic),
        1 => Just(Auth::None),
        1 => "[ -~]{0,30}".prop_map(Auth::Garbage),
    ]
}

fn headers(auth: &Auth, token: &HeaderMap) -> HeaderMap {
    match auth {
        Auth::Token => token.clone(),
        Auth::Basic => basic(KEY, SECRET),
        Auth::WrongBasic => basic(KEY, "not-the-secret"),
        Auth::None => HeaderMap::new(),
        Auth::Garbage(text) => {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(text) {
                headers.insert(header::AUTHORIZATION, value);
            }
            headers
        }
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("literal objects only"),
    }
}

/// Queues (one the default, one hidden, one entry pointing at a deleted
/// task), tasks in several states (one with odd field types), a project and
/// a busy worker.
fn seeded_store() -> Store {
    let now = now_ms();
    let mut store = Store::default();
    let queue = |id: &str, name: &str, tags: &[&str], system_tags: &[&str], tasks: &[&str]| QueueRecord {
        id: id.into(),
        name: name.into(),
        created: 1,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        system_tags: system_tags.iter().map(|t| t.to_string()).collect(),
        entries: tasks.iter().map(|t| QueueEntry { task: t.to_string(), added: 1 }).collect(),
    };
    store.queues.insert("q-cpu".into(), queue("q-cpu", "cpu", &[], &["default"], &["t-queued", "t-gone"]));
    store.queues.insert("q-hidden".into(), queue("q-hidden", "hidden", &["k8s-glue"], &[], &[]));
    let task = |id: &str, extra: Value| {
        let mut task = object(json!({"id": id, "name": id, "created": iso(1), "execution": {}, "tags": []}));
        task.extend(object(extra));
        (id.to_string(), task)
    };
    store.tasks.extend([
        task("t-queued", json!({"status": "queued", "execution": {"queue": "q-cpu"}})),
        task("t-running", json!({"status": "in_progress", "started": iso(now - 5000), "last_iteration": 3})),
        task(
            "t-odd",
            json!({"status": 5, "execution": "x", "script": [], "hyperparams": [1], "configuration": "c",
                   "started": "not a date", "created": 7, "name": {"n": 1}}),
        ),
    ]);
    store.projects.insert("p-1".into(), object(json!({"id": "p-1", "name": "proj/sub"})));
    store.workers.insert(
        "w-1".into(),
        WorkerRecord {
            id: "w-1".into(),
            ip: "127.0.0.1".into(),
            queues: vec!["q-cpu".into(), "no-such-queue".into()],
            task: Some("t-running".into()),
            queue: Some("q-cpu".into()),
            register_time: now,
            last_activity: now,
            last_report: Some(now),
            timeout_secs: 600,
            tags: vec![],
            system_tags: vec![],
        },
    );
    store
}

proptest! {
    #[test]
    fn arbitrary_requests_get_a_success_or_a_4xx_with_a_message(
        requests in prop::collection::vec(request_parts(), 1..12),
    ) {
        let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), KEY, Secret::new(SECRET));
        let shared = Shared::new(&config, seeded_store());
        let token = logged_in(&shared);
        for (endpoint, auth, query, body) in &requests {
            let reply = request(&shared, endpoint, &headers(auth, &token), query, body);
            if let Err(e) = reply {
                prop_assert!(
                    (400..500).contains(&e.code),
                    "{endpoint}{query} {}: answered {} {}", String::from_utf8_lossy(body), e.code, e.msg
                );
                prop_assert!(!e.msg.trim().is_empty(), "{endpoint}{query}: {} without a message", e.code);
            }
        }
        let store = shared.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        prop_assert!(serde_json::to_vec_pretty(&*store).is_ok(), "the state file can no longer be written");
    }
}
