//! `workers.*`: agents announce themselves, report every ~30 s, and are
//! dropped after `register_timeout` seconds of silence.

use serde_json::{Value, json};

use super::{ApiError, Call, Reply, strings_of};
use crate::server::store::{COMPANY_ID, COMPANY_NAME, Store, USER_ID, USER_NAME, WorkerRecord, iso, secs_to_ms};
use crate::wire::codes;

/// Queue references are ids; a name is accepted too, and an unknown
/// reference is kept as given so a worker registered before its queue was
/// created still lists it.
fn queue_ids(store: &Store, refs: Vec<String>) -> Vec<String> {
    refs.into_iter().map(|r| resolve(store, r)).collect()
}

fn resolve(store: &Store, reference: String) -> String {
    match store.resolve_queue_id(&reference).or_else(|| store.queue_by_name(&reference).map(|q| q.id.clone())) {
        Some(id) => id,
        None => reference,
    }
}

fn timeout_secs(call: &Call) -> Result<u64, ApiError> {
    Ok(call.u64("timeout")?.filter(|t| *t > 0).unwrap_or(call.register_timeout))
}

pub fn register(call: &mut Call) -> Reply {
    let id = call.str("worker")?.to_string();
    let queues = queue_ids(call.store, call.strings("queues"));
    let (timeout, now, ip) = (timeout_secs(call)?, call.now, call.ip.clone());
    let (tags, system_tags) = (call.strings("tags"), call.strings("system_tags"));
    call.store.sweep_workers(now);
    let worker = call.store.workers.entry(id.clone()).or_insert_with(|| WorkerRecord {
        id,
        ip: ip.clone(),
        queues: Vec::new(),
        task: None,
        queue: None,
        register_time: now,
        last_activity: now,
        last_report: None,
        timeout_secs: timeout,
        tags: Vec::new(),
        system_tags: Vec::new(),
    });
    worker.queues = queues;
    worker.last_activity = now;
    worker.timeout_secs = timeout;
    worker.ip = ip;
    worker.tags = tags;
    worker.system_tags = system_tags;
    Ok(json!({}))
}

/// A report from an unregistered worker registers it: an agent whose
/// registration was swept after a network blip reappears on its next report.
pub fn status_report(call: &mut Call) -> Reply {
    let id = call.str("worker")?.to_string();
    let now = call.now;
    call.store.sweep_workers(now);
    if !call.store.workers.contains_key(&id) {
        register(call)?;
    }
    let queues = call.body.contains_key("queues").then(|| queue_ids(call.store, call.strings("queues")));
    let queue = call.opt_str("queue").map(|q| resolve(call.store, q.to_string()));
    let task = call.opt_str("task").filter(|t| !t.is_empty()).map(str::to_string);
    let tags = call.body.contains_key("tags").then(|| call.strings("tags"));
    let worker = call.store.workers.get_mut(&id).expect("registered above");
    worker.last_activity = now;
    worker.last_report = Some(now);
    worker.task = task;
    worker.queue = queue;
    if let Some(queues) = queues {
        worker.queues = queues;
    }
    if let Some(tags) = tags {
        worker.tags = tags;
    }
    Ok(json!({}))
}

pub fn unregister(call: &mut Call) -> Reply {
    let id = call.str("worker")?;
    match call.store.workers.remove(id) {
        Some(_) => Ok(json!({})),
        None => Err(ApiError::new(codes::INVALID_WORKER_ID, format!("invalid worker id: worker={id}"))),
    }
}

pub fn get_all(call: &mut Call) -> Reply {
    let now = call.now;
    call.store.sweep_workers(now);
    let last_seen_ms = call.u64("last_seen")?.map(secs_to_ms);
    let tags = strings_of(call.body.get("tags"));
    let store = &*call.store;
    let workers: Vec<Value> = store
        .workers
        .values()
        .filter(|w| last_seen_ms.is_none_or(|window| now.saturating_sub(w.last_activity) <= window))
        .filter(|w| tags.is_empty() || tags.iter().any(|t| w.tags.contains(t)))
        .map(|w| worker_json(store, w, now))
        .collect();
    Ok(json!({ "workers": workers }))
}

fn worker_json(store: &Store, w: &WorkerRecord, now: i64) -> Value {
    let queue_ref = |id: &String| -> Value {
        let queue = store.queues.get(id);
        let next = queue.and_then(|q| q.entries.first()).map(|e| {
            let name = store.tasks.get(&e.task).and_then(|t| t.get("name")).cloned();
            json!({"id": e.task, "name": name})
        });
        json!({
            "id": id,
            "name": queue.map_or(id.as_str(), |q| q.name.as_str()),
            "next_task": next,
            "num_tasks": queue.map_or(0, |q| q.entries.len()),
        })
    };
    let task = w.task.as_ref().map(|id| {
        let record = store.tasks.get(id);
        let started = record
            .and_then(|t| t.get("started"))
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis());
        json!({
            "id": id,
            "name": record.and_then(|t| t.get("name")),
            "running_time": started.map(|s| now.saturating_sub(s).max(0)),
            "last_iteration": record.and_then(|t| t.get("last_iteration")),
        })
    });
    json!({
        "id": w.id,
        "key": format!("worker_{COMPANY_ID}___{USER_ID}___{}", w.id),
        "user": {"id": USER_ID, "name": USER_NAME},
        "company": {"id": COMPANY_ID, "name": COMPANY_NAME},
        "ip": w.ip,
        "task": task,
        "queue": w.queue.as_ref().map(queue_ref),
        "queues": w.queues.iter().map(queue_ref).collect::<Vec<_>>(),
        "register_time": iso(w.register_time),
        "register_timeout": w.timeout_secs,
        "last_activity_time": iso(w.last_activity),
        "last_report_time": w.last_report.map(iso),
        "tags": w.tags,
        "system_tags": w.system_tags,
    })
}
