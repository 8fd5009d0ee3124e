//! Projects, the current user and server info: what the SDK asks on the way
//! to creating a task.

use serde_json::{Value, json};

use super::{ApiError, Call, Reply, name_matcher, project_fields};
use crate::server::store::{COMPANY_ID, COMPANY_NAME, Object, USER_ID, USER_NAME, iso, new_id};
use crate::wire::{self, codes};

pub fn create_project(call: &mut Call) -> Reply {
    let name = call.str("name")?.to_string();
    if call.store.projects.values().any(|p| p.get("name") == Some(&json!(name))) {
        return Err(ApiError::new(codes::DUPLICATE, format!("project name already exists: name={name}")));
    }
    let id = new_id();
    let mut project: Object =
        call.body.iter().filter(|(k, _)| k.as_str() != "method").map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in [
        ("id", json!(id)),
        ("created", json!(iso(call.now))),
        ("last_update", json!(iso(call.now))),
        ("user", json!(USER_ID)),
        ("company", json!(COMPANY_ID)),
        ("basename", json!(name.rsplit('/').next().unwrap_or(&name))),
    ] {
        project.insert(k.into(), v);
    }
    call.store.projects.insert(id.clone(), project);
    call.changed = true;
    Ok(json!({ "id": id }))
}

pub fn get_all_projects(call: &mut Call) -> Reply {
    let ids = call.strings("id");
    let matches_name = name_matcher(call.opt_str("name"));
    let only_fields = call.strings("only_fields");
    let projects: Vec<Value> = call
        .store
        .projects
        .values()
        .filter(|p| ids.is_empty() || ids.iter().any(|id| p.get("id") == Some(&json!(id))))
        .filter(|p| matches_name(p.get("name").and_then(Value::as_str).unwrap_or("")))
        .map(|p| project_fields(p, &only_fields))
        .collect();
    Ok(json!({ "projects": projects }))
}

pub fn get_project(call: &mut Call) -> Reply {
    let id = call.str("project")?;
    call.store
        .projects
        .get(id)
        .map(|p| json!({ "project": p }))
        .ok_or_else(|| ApiError::new(codes::INVALID_PROJECT_ID, format!("invalid project id: id={id}")))
}

pub fn current_user() -> Value {
    json!({
        "user": {
            "id": USER_ID, "name": USER_NAME, "given_name": USER_NAME, "family_name": "",
            "company": {"id": COMPANY_ID, "name": COMPANY_NAME},
            "role": "admin", "created": iso(0),
        },
        "getting_started": {},
        "settings": {"max_download_items": 1000},
    })
}

pub fn server_info() -> Value {
    json!({
        "version": wire::SERVER_VERSION,
        "build": "flockd",
        "commit": "",
        "api_version": wire::API_VERSION,
        "uid": "flockd",
    })
}
