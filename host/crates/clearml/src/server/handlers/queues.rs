//! `queues.*`: named FIFO lists of task ids.

use serde_json::{Value, json};

use super::{ApiError, Call, Reply, name_matcher, paginate, project_fields};
use crate::server::store::{QueueEntry, QueueRecord, new_id};
use crate::wire::codes;

pub fn get_all(call: &mut Call) -> Reply {
    let ids = call.strings("id");
    let name = call.opt_str("name");
    let matches_name = name_matcher(name);
    let tags = call.strings("tags");
    let system_tags = call.strings("system_tags");
    // A hidden queue shows only when asked for, by flag, id or name.
    let show_hidden = call.bool("search_hidden") || !ids.is_empty() || name.is_some();
    let max_entries = call.u64("max_task_entries")?.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let only_fields = call.strings("only_fields");

    let mut queues: Vec<&QueueRecord> = call
        .store
        .queues
        .values()
        .filter(|q| ids.is_empty() || ids.contains(&q.id))
        .filter(|q| matches_name(&q.name))
        .filter(|q| tags_match(&tags, &q.tags) && tags_match(&system_tags, &q.system_tags))
        .filter(|q| show_hidden || !q.is_hidden())
        .collect();
    queues.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));

    let queues: Vec<Value> = paginate(queues, call)?
        .into_iter()
        .map(|q| {
            let mut value = q.to_json();
            if let (Some(max), Some(entries)) = (max_entries, value["entries"].as_array_mut()) {
                entries.truncate(max);
            }
            match value {
                Value::Object(record) => project_fields(&record, &only_fields),
                other => other,
            }
        })
        .collect();
    Ok(json!({ "queues": queues }))
}

/// ClearML tag filters: a record matches if it has any listed tag and none
/// of the `-excluded` ones; an empty filter matches everything.
fn tags_match(filter: &[String], tags: &[String]) -> bool {
    let (excluded, wanted): (Vec<&String>, Vec<&String>) = filter.iter().partition(|t| t.starts_with('-'));
    let has_excluded = excluded.iter().any(|t| tags.iter().any(|have| have == &t[1..]));
    let has_wanted = wanted.is_empty() || wanted.iter().any(|t| tags.contains(t));
    !has_excluded && has_wanted
}

fn queue_id(call: &Call) -> Result<String, ApiError> {
    let given = call.str("queue")?;
    call.store
        .resolve_queue_id(given)
        .ok_or_else(|| ApiError::new(codes::INVALID_QUEUE_ID, format!("invalid queue id: id={given}")))
}

pub fn get_by_id(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    Ok(json!({ "queue": call.store.queues[&id].to_json() }))
}

pub fn create(call: &mut Call) -> Reply {
    let name = call.str("name")?.to_string();
    if call.store.queue_by_name(&name).is_some() {
        return Err(ApiError::new(
            codes::DUPLICATE,
            format!("Value combination already exists (unique field already contains this value): name={name}"),
        ));
    }
    let id = new_id();
    let record = QueueRecord {
        id: id.clone(),
        name,
        created: call.now,
        tags: call.strings("tags"),
        system_tags: call.strings("system_tags"),
        entries: Vec::new(),
    };
    call.store.queues.insert(id.clone(), record);
    call.changed = true;
    Ok(json!({ "id": id }))
}

pub fn delete(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    if !call.store.queues[&id].entries.is_empty() && !call.bool("force") {
        return Err(ApiError::new(codes::QUEUE_NOT_EMPTY, "queue is not empty: remove its tasks or pass force=true"));
    }
    call.store.queues.remove(&id);
    call.changed = true;
    Ok(json!({ "deleted": 1 }))
}

pub fn update(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    let mut fields = serde_json::Map::new();
    if let Some(name) = call.opt_str("name").map(str::to_string) {
        if call.store.queues.values().any(|q| q.name == name && q.id != id) {
            return Err(ApiError::new(codes::DUPLICATE, format!("queue name already exists: name={name}")));
        }
        fields.insert("name".into(), json!(name));
        call.store.queues.get_mut(&id).expect("resolved above").name = name;
    }
    for field in ["tags", "system_tags"] {
        if call.body.contains_key(field) {
            let values = call.strings(field);
            fields.insert(field.into(), json!(values));
            let queue = call.store.queues.get_mut(&id).expect("resolved above");
            if field == "tags" {
                queue.tags = values;
            } else {
                queue.system_tags = values;
            }
        }
    }
    call.changed = true;
    Ok(json!({ "updated": 1, "fields": fields }))
}

pub fn add_task(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    let task = call.str("task")?.to_string();
    if !call.store.tasks.contains_key(&task) {
        return Err(ApiError::new(codes::INVALID_TASK_ID, format!("invalid task id: id={task}")));
    }
    let now = call.now;
    let queue = call.store.queues.get_mut(&id).expect("resolved above");
    if queue.entries.iter().any(|e| e.task == task) {
        return Ok(json!({ "added": 0 }));
    }
    queue.entries.push(QueueEntry { task, added: now });
    call.changed = true;
    Ok(json!({ "added": 1 }))
}

pub fn remove_task(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    let task = call.str("task")?.to_string();
    let queue = call.store.queues.get_mut(&id).expect("resolved above");
    let before = queue.entries.len();
    queue.entries.retain(|e| e.task != task);
    let removed = before - queue.entries.len();
    call.changed |= removed > 0;
    Ok(json!({ "removed": removed }))
}

/// Pops the first entry whose task still exists; `{}` when there is none.
pub fn get_next_task(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    let with_task_info = call.bool("get_task_info");
    loop {
        let queue = call.store.queues.get_mut(&id).expect("resolved above");
        if queue.entries.is_empty() {
            return Ok(json!({}));
        }
        let entry = queue.entries.remove(0);
        call.changed = true;
        if !call.store.tasks.contains_key(&entry.task) {
            continue;
        }
        let mut data = json!({
            "entry": {"task": entry.task, "added": crate::server::store::iso(entry.added)}
        });
        if with_task_info {
            data["task_info"] = json!({
                "company": crate::server::store::COMPANY_ID,
                "user": crate::server::store::USER_ID,
            });
        }
        return Ok(data);
    }
}

pub fn peek_task(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    let first = call.store.queues[&id].entries.first().map(|e| e.task.clone());
    Ok(json!({ "task": first }))
}

pub fn get_num_entries(call: &mut Call) -> Reply {
    let id = queue_id(call)?;
    Ok(json!({ "num": call.store.queues[&id].entries.len() }))
}

pub fn get_default(call: &mut Call) -> Reply {
    call.store
        .queues
        .values()
        .find(|q| q.system_tags.iter().any(|t| t == "default"))
        .map(|q| json!({"id": q.id, "name": q.name}))
        .ok_or_else(|| ApiError::new(codes::NO_DEFAULT_QUEUE, "no queue is tagged as the default queue"))
}
