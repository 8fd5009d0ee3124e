//! `tasks.*`: task records are free-form JSON objects (whatever the SDK
//! writes reads back), with status and queue membership kept consistent here.

use serde_json::{Map, Value, json};

use super::{ApiError, Call, Reply, name_matcher, paginate, project_fields};
use crate::server::store::{COMPANY_ID, Object, QueueEntry, USER_ID, iso, new_id};
use crate::wire::codes;

/// Request fields that steer the call rather than describe the task.
const CONTROL_FIELDS: &[&str] = &["task", "force", "method", "status_reason", "status_message", "return_file_urls"];

pub fn create(call: &mut Call) -> Reply {
    call.str("name")?;
    let id = new_id();
    let now = iso(call.now);
    let mut task: Object = call
        .body
        .iter()
        .filter(|(k, _)| !CONTROL_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (field, value) in [
        ("id", json!(id)),
        ("status", json!("created")),
        ("created", json!(now)),
        ("last_update", json!(now)),
        ("last_change", json!(now)),
        ("status_changed", json!(now)),
        ("user", json!(USER_ID)),
        ("company", json!(COMPANY_ID)),
    ] {
        task.insert(field.into(), value);
    }
    for field in ["tags", "system_tags"] {
        task.entry(field).or_insert_with(|| json!([]));
    }
    task.entry("type").or_insert_with(|| json!("training"));
    task.entry("execution").or_insert_with(|| json!({}));
    call.store.tasks.insert(id.clone(), task);
    call.changed = true;
    Ok(json!({ "id": id }))
}

fn task_id(call: &Call) -> Result<String, ApiError> {
    let id = call.str("task")?;
    if call.store.tasks.contains_key(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::new(codes::INVALID_TASK_ID, format!("invalid task id: id={id}")))
    }
}

pub fn get_by_id(call: &mut Call) -> Reply {
    let id = task_id(call)?;
    Ok(json!({ "task": call.store.tasks[&id] }))
}

pub fn get_all(call: &mut Call) -> Reply {
    let ids = call.strings("id");
    let statuses = call.strings("status");
    let projects = call.strings("project");
    let matches_name = name_matcher(call.opt_str("name"));
    let only_fields = call.strings("only_fields");
    let mut tasks: Vec<&Object> = call
        .store
        .tasks
        .values()
        .filter(|t| ids.is_empty() || ids.iter().any(|id| t.get("id") == Some(&json!(id))))
        .filter(|t| statuses.is_empty() || statuses.iter().any(|s| t.get("status") == Some(&json!(s))))
        .filter(|t| projects.is_empty() || projects.iter().any(|p| t.get("project") == Some(&json!(p))))
        .filter(|t| matches_name(t.get("name").and_then(Value::as_str).unwrap_or("")))
        .collect();
    tasks.sort_by_key(|t| t.get("created").and_then(Value::as_str).unwrap_or("").to_string());
    let tasks: Vec<Value> = paginate(tasks, call)?.into_iter().map(|t| project_fields(t, &only_fields)).collect();
    Ok(json!({ "tasks": tasks }))
}

/// `tasks.edit` / `tasks.update`: top-level fields replace the stored ones.
pub fn edit(call: &mut Call) -> Reply {
    let id = task_id(call)?;
    let fields: Object = call
        .body
        .iter()
        .filter(|(k, _)| !CONTROL_FIELDS.contains(&k.as_str()) && k.as_str() != "id")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let now = iso(call.now);
    let task = call.store.tasks.get_mut(&id).expect("checked above");
    for (k, v) in &fields {
        task.insert(k.clone(), v.clone());
    }
    task.insert("last_update".into(), json!(now));
    call.changed = true;
    Ok(json!({ "updated": 1, "fields": fields }))
}

pub fn enqueue(call: &mut Call) -> Reply {
    let id = task_id(call)?;
    let queue_id = match (call.opt_str("queue"), call.opt_str("queue_name")) {
        (Some(queue), _) if !queue.is_empty() => call
            .store
            .resolve_queue_id(queue)
            .ok_or_else(|| ApiError::new(codes::INVALID_QUEUE_ID, format!("invalid queue id: id={queue}")))?,
        // The real server creates a queue named in `queue_name` on first use.
        (_, Some(name)) if !name.is_empty() => match call.store.queue_by_name(name) {
            Some(queue) => queue.id.clone(),
            None => {
                let mut create_call = Call {
                    store: call.store,
                    body: &[("name".to_string(), json!(name))].into_iter().collect(),
                    now: call.now,
                    register_timeout: call.register_timeout,
                    ip: call.ip.clone(),
                    changed: false,
                };
                let created = super::queues::create(&mut create_call)?;
                created["id"].as_str().expect("create returns an id").to_string()
            }
        },
        _ => super::queues::get_default(call)?["id"].as_str().unwrap_or_default().to_string(),
    };
    let status = call.store.tasks[&id].get("status").and_then(Value::as_str).unwrap_or("created");
    if matches!(status, "in_progress" | "published" | "publishing") {
        return Err(ApiError::new(
            codes::INVALID_TASK_STATUS,
            format!("cannot enqueue a task in status {status}: stop or reset it first"),
        ));
    }
    call.store.remove_from_queues(&id);
    let now = call.now;
    call.store
        .queues
        .get_mut(&queue_id)
        .expect("resolved above")
        .entries
        .push(QueueEntry { task: id.clone(), added: now });
    let task = call.store.tasks.get_mut(&id).expect("checked above");
    let execution = task.entry("execution").or_insert_with(|| json!({}));
    if let Value::Object(execution) = execution {
        execution.insert("queue".into(), json!(queue_id));
    }
    let mut fields = change_status(task, "queued", call.body, call.now);
    fields.insert("execution.queue".into(), json!(queue_id));
    call.changed = true;
    Ok(json!({ "queued": 1, "updated": 1, "fields": fields }))
}

pub fn dequeue(call: &mut Call) -> Reply {
    let id = task_id(call)?;
    let removed = call.store.remove_from_queues(&id);
    if !removed {
        return Ok(json!({ "dequeued": 0, "updated": 0, "fields": {} }));
    }
    let new_status = call.opt_str("new_status").unwrap_or("created").to_string();
    let task = call.store.tasks.get_mut(&id).expect("checked above");
    let fields = change_status(task, &new_status, call.body, call.now);
    call.changed = true;
    Ok(json!({ "dequeued": 1, "updated": 1, "fields": fields }))
}

/// started / stopped / completed / failed / closed / published / reset.
pub fn set_status(call: &mut Call, status: &str) -> Reply {
    let id = task_id(call)?;
    // A task leaving the queued state by any route leaves its queue too.
    if status != "queued" {
        call.store.remove_from_queues(&id);
    }
    let task = call.store.tasks.get_mut(&id).expect("checked above");
    let mut fields = change_status(task, status, call.body, call.now);
    let now = json!(iso(call.now));
    match status {
        "in_progress" => {
            task.insert("started".into(), now.clone());
            fields.insert("started".into(), now);
        }
        "stopped" | "completed" | "failed" | "closed" => {
            task.insert("completed".into(), now.clone());
            fields.insert("completed".into(), now);
        }
        "created" => {
            task.remove("started");
            task.remove("completed");
        }
        _ => {}
    }
    call.changed = true;
    let verb = match status {
        "in_progress" => "started",
        "created" => "reset",
        _ => "updated",
    };
    let mut data = json!({ "updated": 1, "fields": fields });
    data[verb] = json!(1);
    Ok(data)
}

fn change_status(task: &mut Object, status: &str, body: &Object, now: i64) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("status".into(), json!(status));
    fields.insert("status_changed".into(), json!(iso(now)));
    fields.insert("last_update".into(), json!(iso(now)));
    for field in ["status_reason", "status_message"] {
        let value = body.get(field).cloned().unwrap_or_else(|| json!(""));
        fields.insert(field.into(), value);
    }
    for (k, v) in &fields {
        task.insert(k.clone(), v.clone());
    }
    fields
}

pub fn delete(call: &mut Call) -> Reply {
    let id = task_id(call)?;
    call.store.remove_from_queues(&id);
    call.store.tasks.remove(&id);
    call.changed = true;
    Ok(json!({ "deleted": true, "updated_children": 0, "updated_models": 0 }))
}

pub fn ping(call: &mut Call) -> Reply {
    task_id(call)?;
    Ok(json!({}))
}

/// `tasks.add_or_update_artifacts`: upserts items of `task.<parent>.<list>` by `key`.
pub fn merge_list(call: &mut Call, parent: &str, list: &str, key: &str) -> Reply {
    let id = task_id(call)?;
    let items = call.body.get(list).and_then(Value::as_array).cloned().unwrap_or_default();
    let task = call.store.tasks.get_mut(&id).expect("checked above");
    let parent = task.entry(parent).or_insert_with(|| json!({}));
    let Value::Object(parent) = parent else { return Ok(json!({"updated": 0})) };
    let stored = parent.entry(list).or_insert_with(|| json!([]));
    let Value::Array(stored) = stored else { return Ok(json!({"updated": 0})) };
    for item in &items {
        match stored.iter_mut().find(|s| s.get(key) == item.get(key)) {
            Some(existing) => *existing = item.clone(),
            None => stored.push(item.clone()),
        }
    }
    call.changed = true;
    Ok(json!({ "updated": items.len() }))
}

/// `tasks.edit_hyper_params` / `edit_configuration`: merges sections by name.
pub fn edit_section(call: &mut Call, field: &str, request_field: &str) -> Reply {
    let id = task_id(call)?;
    let replace = call.opt_str("replace_hyperparams").is_some_and(|r| r == "all");
    let items = call.body.get(request_field).and_then(Value::as_array).cloned().unwrap_or_default();
    let task = call.store.tasks.get_mut(&id).expect("checked above");
    let stored = task.entry(field).or_insert_with(|| json!({}));
    if replace || !stored.is_object() {
        *stored = json!({});
    }
    let Value::Object(sections) = stored else { unreachable!("made an object above") };
    for item in &items {
        let section = item.get("section").and_then(Value::as_str).unwrap_or("");
        let name = item.get("name").and_then(Value::as_str).unwrap_or("");
        if field == "hyperparams" {
            let entry = sections.entry(section).or_insert_with(|| json!({}));
            if let Value::Object(entry) = entry {
                entry.insert(name.into(), item.clone());
            }
        } else {
            sections.insert(name.into(), item.clone());
        }
    }
    call.changed = true;
    Ok(json!({ "updated": 1 }))
}

pub fn get_section(call: &mut Call, field: &str, response_field: &str) -> Reply {
    let ids = call.strings("tasks");
    let result: Vec<Value> = ids
        .iter()
        .filter_map(|id| call.store.tasks.get(id).map(|t| (id, t)))
        .map(|(id, t)| {
            let mut items = Vec::new();
            if let Some(Value::Object(sections)) = t.get(field) {
                for value in sections.values() {
                    match (field, value) {
                        ("hyperparams", Value::Object(params)) => items.extend(params.values().cloned()),
                        _ => items.push(value.clone()),
                    }
                }
            }
            let key = if field == "hyperparams" { "hyperparams" } else { "configuration" };
            json!({ "task": id, key: items })
        })
        .collect();
    Ok(json!({ response_field: result }))
}

pub fn set_requirements(call: &mut Call) -> Reply {
    let id = task_id(call)?;
    let requirements = call.body.get("requirements").cloned().unwrap_or(Value::Null);
    let task = call.store.tasks.get_mut(&id).expect("checked above");
    let script = task.entry("script").or_insert_with(|| json!({}));
    if let Value::Object(script) = script {
        script.insert("requirements".into(), requirements);
    }
    call.changed = true;
    Ok(json!({ "updated": 1 }))
}
