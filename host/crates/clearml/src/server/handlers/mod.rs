//! One function per ClearML endpoint. Each gets the locked store and the
//! request body and returns the `data` object or an [`ApiError`]; the HTTP
//! layer wraps both in the envelope.

mod misc;
mod queues;
mod tasks;
mod workers;

use serde_json::{Map, Value};

use super::store::{Object, Store};
use crate::wire::codes;

/// An error the API answers with: HTTP status = `result_code`, plus subcode.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub subcode: u32,
    pub msg: String,
}

impl ApiError {
    pub fn new((code, subcode): (u16, u32), msg: impl Into<String>) -> Self {
        ApiError { code, subcode, msg: msg.into() }
    }
}

pub type Reply = Result<Value, ApiError>;

/// What a handler may look at and change.
pub struct Call<'a> {
    pub store: &'a mut Store,
    pub body: &'a Object,
    /// Unix ms, read once per request.
    pub now: i64,
    /// Seconds of silence before a worker is dropped, unless it asked for another.
    pub register_timeout: u64,
    /// Peer address, shown as a worker's `ip`.
    pub ip: String,
    /// Set by handlers that changed persisted state.
    pub changed: bool,
}

impl<'a> Call<'a> {
    pub fn str(&self, field: &str) -> Result<&'a str, ApiError> {
        self.opt_str(field)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::new(codes::MISSING_FIELD, format!("missing required field: {field}")))
    }

    pub fn opt_str(&self, field: &str) -> Option<&'a str> {
        let body: &'a Object = self.body;
        body.get(field).and_then(Value::as_str)
    }

    pub fn bool(&self, field: &str) -> bool {
        match self.body.get(field) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true" || s == "1",
            _ => false,
        }
    }

    pub fn u64(&self, field: &str) -> Option<u64> {
        match self.body.get(field) {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    }

    /// A list of strings; a lone string counts as a list of one.
    pub fn strings(&self, field: &str) -> Vec<String> {
        strings_of(self.body.get(field))
    }
}

pub fn strings_of(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Runs the endpoint `name` (`service.action`), or None if it is unknown.
pub fn dispatch(name: &str, call: &mut Call) -> Option<Reply> {
    let reply = match name {
        "queues.get_all" | "queues.get_all_ex" => queues::get_all(call),
        "queues.get_by_id" => queues::get_by_id(call),
        "queues.create" => queues::create(call),
        "queues.delete" => queues::delete(call),
        "queues.update" => queues::update(call),
        "queues.add_task" => queues::add_task(call),
        "queues.remove_task" => queues::remove_task(call),
        "queues.get_next_task" => queues::get_next_task(call),
        "queues.peek_task" => queues::peek_task(call),
        "queues.get_num_entries" => queues::get_num_entries(call),
        "queues.get_default" => queues::get_default(call),
        "queues.get_queue_metrics" => Ok(serde_json::json!({"queues": []})),

        "workers.register" => workers::register(call),
        "workers.status_report" => workers::status_report(call),
        "workers.unregister" => workers::unregister(call),
        "workers.get_all" => workers::get_all(call),
        "workers.get_runtime_properties" => Ok(serde_json::json!({"runtime_properties": []})),
        "workers.set_runtime_properties" => Ok(serde_json::json!({"added": 0})),

        "tasks.create" => tasks::create(call),
        "tasks.validate" => Ok(Value::Object(Map::new())),
        "tasks.get_by_id" => tasks::get_by_id(call),
        "tasks.get_all" | "tasks.get_all_ex" => tasks::get_all(call),
        "tasks.edit" | "tasks.update" => tasks::edit(call),
        "tasks.enqueue" => tasks::enqueue(call),
        "tasks.dequeue" => tasks::dequeue(call),
        "tasks.started" => tasks::set_status(call, "in_progress"),
        "tasks.stopped" | "tasks.stop" => tasks::set_status(call, "stopped"),
        "tasks.completed" => tasks::set_status(call, "completed"),
        "tasks.failed" => tasks::set_status(call, "failed"),
        "tasks.close" => tasks::set_status(call, "closed"),
        "tasks.publish" => tasks::set_status(call, "published"),
        "tasks.reset" => tasks::set_status(call, "created"),
        "tasks.delete" => tasks::delete(call),
        "tasks.ping" => tasks::ping(call),
        "tasks.add_or_update_artifacts" => tasks::merge_list(call, "execution", "artifacts", "key"),
        "tasks.edit_hyper_params" => tasks::edit_section(call, "hyperparams", "hyperparams"),
        "tasks.edit_configuration" => tasks::edit_section(call, "configuration", "configuration"),
        "tasks.get_hyper_params" => tasks::get_section(call, "hyperparams", "params"),
        "tasks.get_configurations" => tasks::get_section(call, "configuration", "configurations"),
        "tasks.set_requirements" => tasks::set_requirements(call),

        "projects.create" => misc::create_project(call),
        "projects.get_all" | "projects.get_all_ex" => misc::get_all_projects(call),
        "projects.get_by_id" => misc::get_project(call),
        "users.get_current_user" => Ok(misc::current_user()),
        "server.info" | "server.get_stats" => Ok(misc::server_info()),
        "debug.ping" => Ok(serde_json::json!({"msg": "ClearML server (flockd compatible)"})),
        // Logs and metrics are accepted and dropped: flockd has no use for them.
        "events.add_batch" => Ok(serde_json::json!({"added": call.u64("events").unwrap_or(0), "errors": 0})),
        "events.add" => Ok(serde_json::json!({"added": 1, "errors": 0})),
        _ => return None,
    };
    Some(reply)
}

/// Copies the dotted `only_fields` paths of `record` (plus `id`), or all of
/// it when none are asked for.
pub fn project_fields(record: &Object, only_fields: &[String]) -> Value {
    if only_fields.is_empty() {
        return Value::Object(record.clone());
    }
    let mut out = Map::new();
    if let Some(id) = record.get("id") {
        out.insert("id".into(), id.clone());
    }
    for path in only_fields {
        let parts: Vec<&str> = path.split('.').collect();
        if let Some(value) = lookup(record, &parts) {
            insert_path(&mut out, &parts, value.clone());
        }
    }
    Value::Object(out)
}

fn lookup<'a>(record: &'a Object, parts: &[&str]) -> Option<&'a Value> {
    let (first, rest) = parts.split_first()?;
    let value = record.get(*first)?;
    if rest.is_empty() {
        return Some(value);
    }
    lookup(value.as_object()?, rest)
}

fn insert_path(out: &mut Object, parts: &[&str], value: Value) {
    match parts {
        [] => {}
        [last] => {
            out.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let child = out.entry(*first).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(child) = child {
                insert_path(child, rest, value);
            }
        }
    }
}

/// A ClearML name filter is a regex in Python's dialect; the agent sends
/// `re.escape(name)`, which escapes spaces and other characters Rust's regex
/// rejects escaped, so those escapes are rewritten first. A pattern that
/// still does not compile falls back to an exact match rather than failing.
pub fn name_matcher(pattern: Option<&str>) -> impl Fn(&str) -> bool {
    let compiled = pattern.map(|p| (p.to_string(), regex::Regex::new(&from_python_regex(p)).ok()));
    move |name: &str| match &compiled {
        None => true,
        Some((_, Some(re))) => re.is_match(name),
        Some((raw, None)) => raw == name,
    }
}

/// `\<punctuation or space>` → that character, escaped the way Rust's regex
/// accepts (or bare, where it needs no escape). `\d`, `\n` and friends stay.
fn from_python_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next)) if !next.is_ascii_alphanumeric() => {
                chars.next();
                out.push_str(&regex::escape(&next.to_string()));
            }
            ('\\', Some(next)) => {
                chars.next();
                out.push('\\');
                out.push(next);
            }
            _ => out.push(c),
        }
    }
    out
}

/// `page` / `page_size` paging as ClearML does it (page is 0-based).
pub fn paginate<T>(items: Vec<T>, call: &Call) -> Vec<T> {
    match call.u64("page_size") {
        Some(size) if size > 0 => {
            let page = call.u64("page").unwrap_or(0) as usize;
            items.into_iter().skip(page * size as usize).take(size as usize).collect()
        }
        _ => items,
    }
}

#[cfg(test)]
mod tests {
    use super::name_matcher;

    #[test]
    fn python_re_escaped_names_match_exactly_what_they_escape() {
        // re.escape("cpu a") and re.escape("team-1.gpu[x]#&~") as the agent sends them.
        let matches = name_matcher(Some(r"cpu\ a"));
        assert!(matches("cpu a") && !matches("cpu-a"));
        let matches = name_matcher(Some(r"^team\-1\.gpu\[x\]\#\&\~$"));
        assert!(matches("team-1.gpu[x]#&~") && !matches("team-1Xgpu[x]#&~"));
        let matches = name_matcher(Some(r"^q\d$"));
        assert!(matches("q1") && !matches("qa"));
    }
}
