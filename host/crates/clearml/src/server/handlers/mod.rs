//! One function per ClearML endpoint. Each gets the locked store and the
//! request body and returns the `data` object or an [`ApiError`]; the HTTP
//! layer wraps both in the envelope.

mod misc;
mod queues;
mod tasks;
mod workers;

use serde_json::{Map, Value, json};

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

    /// A count or a number of seconds; see [`non_negative`].
    pub fn u64(&self, field: &str) -> Result<Option<u64>, ApiError> {
        non_negative(field, self.body.get(field))
    }

    /// A list of strings; a lone string counts as a list of one.
    pub fn strings(&self, field: &str) -> Vec<String> {
        strings_of(self.body.get(field))
    }
}

/// A non-negative integer field. Absent, null or `""` is None; a number
/// (a fraction truncated, one beyond u64 saturating) or a string of digits
/// (the query string's form) is Some; anything else, a negative number
/// included, is a 400 naming the field. Users of the value must saturate,
/// not overflow: u64::MAX is a valid answer here.
pub fn non_negative(field: &str, value: Option<&Value>) -> Result<Option<u64>, ApiError> {
    let parsed = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Some(Value::String(s)) => {
            let digits = s.trim();
            digits.parse().ok().or_else(|| digits.bytes().all(|b| b.is_ascii_digit()).then_some(u64::MAX))
        }
        Some(_) => None,
    };
    match parsed {
        Some(n) => Ok(Some(n)),
        None => Err(ApiError::new(
            codes::MALFORMED_FIELDS,
            format!("field {field} must be a non-negative integer, got {}", shown(value)),
        )),
    }
}

/// A request value for an error message, cut short.
fn shown(value: Option<&Value>) -> String {
    let text = value.map_or_else(String::new, Value::to_string);
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

pub fn strings_of(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// A test-only endpoint whose handler panics, standing in for a bug.
#[cfg(test)]
pub const TEST_PANIC: &str = "flockd.test_panic";

type Handler = fn(&mut Call) -> Reply;

/// Every endpoint this server answers (`service.action`) and its handler.
pub const ROUTES: &[(&str, Handler)] = &[
    ("queues.get_all", queues::get_all),
    ("queues.get_all_ex", queues::get_all),
    ("queues.get_by_id", queues::get_by_id),
    ("queues.create", queues::create),
    ("queues.delete", queues::delete),
    ("queues.update", queues::update),
    ("queues.add_task", queues::add_task),
    ("queues.remove_task", queues::remove_task),
    ("queues.get_next_task", queues::get_next_task),
    ("queues.peek_task", queues::peek_task),
    ("queues.get_num_entries", queues::get_num_entries),
    ("queues.get_default", queues::get_default),
    ("queues.get_queue_metrics", |_| Ok(json!({"queues": []}))),
    ("workers.register", workers::register),
    ("workers.status_report", workers::status_report),
    ("workers.unregister", workers::unregister),
    ("workers.get_all", workers::get_all),
    ("workers.get_runtime_properties", |_| Ok(json!({"runtime_properties": []}))),
    ("workers.set_runtime_properties", |_| Ok(json!({"added": 0}))),
    ("tasks.create", tasks::create),
    ("tasks.validate", |_| Ok(Value::Object(Map::new()))),
    ("tasks.get_by_id", tasks::get_by_id),
    ("tasks.get_all", tasks::get_all),
    ("tasks.get_all_ex", tasks::get_all),
    ("tasks.edit", tasks::edit),
    ("tasks.update", tasks::edit),
    ("tasks.enqueue", tasks::enqueue),
    ("tasks.dequeue", tasks::dequeue),
    ("tasks.started", |call| tasks::set_status(call, "in_progress")),
    ("tasks.stopped", |call| tasks::set_status(call, "stopped")),
    ("tasks.stop", |call| tasks::set_status(call, "stopped")),
    ("tasks.completed", |call| tasks::set_status(call, "completed")),
    ("tasks.failed", |call| tasks::set_status(call, "failed")),
    ("tasks.close", |call| tasks::set_status(call, "closed")),
    ("tasks.publish", |call| tasks::set_status(call, "published")),
    ("tasks.reset", |call| tasks::set_status(call, "created")),
    ("tasks.delete", tasks::delete),
    ("tasks.ping", tasks::ping),
    ("tasks.add_or_update_artifacts", |call| tasks::merge_list(call, "execution", "artifacts", "key")),
    ("tasks.edit_hyper_params", |call| tasks::edit_section(call, "hyperparams", "hyperparams")),
    ("tasks.edit_configuration", |call| tasks::edit_section(call, "configuration", "configuration")),
    ("tasks.get_hyper_params", |call| tasks::get_section(call, "hyperparams", "params")),
    ("tasks.get_configurations", |call| tasks::get_section(call, "configuration", "configurations")),
    ("tasks.set_requirements", tasks::set_requirements),
    ("projects.create", misc::create_project),
    ("projects.get_all", misc::get_all_projects),
    ("projects.get_all_ex", misc::get_all_projects),
    ("projects.get_by_id", misc::get_project),
    ("users.get_current_user", |_| Ok(misc::current_user())),
    ("server.info", |_| Ok(misc::server_info())),
    ("server.get_stats", |_| Ok(misc::server_info())),
    ("debug.ping", |_| Ok(json!({"msg": "ClearML server (flockd compatible)"}))),
    // Logs and metrics are accepted and dropped: flockd has no use for them.
    ("events.add_batch", |call| Ok(json!({"added": call.u64("events")?.unwrap_or(0), "errors": 0}))),
    ("events.add", |_| Ok(json!({"added": 1, "errors": 0}))),
];

/// Runs the endpoint `name` (`service.action`), or None if it is unknown.
pub fn dispatch(name: &str, call: &mut Call) -> Option<Reply> {
    #[cfg(test)]
    if name == TEST_PANIC {
        panic!("{TEST_PANIC} panics on purpose");
    }
    let (_, handler) = ROUTES.iter().find(|(route, _)| *route == name)?;
    Some(handler(call))
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

/// `page` / `page_size` paging as ClearML does it (page is 0-based). A page
/// far past the end is empty, however far.
pub fn paginate<T>(items: Vec<T>, call: &Call) -> Result<Vec<T>, ApiError> {
    let Some(size) = call.u64("page_size")?.filter(|size| *size > 0) else { return Ok(items) };
    let page = call.u64("page")?.unwrap_or(0);
    let skip = usize::try_from(page.saturating_mul(size)).unwrap_or(usize::MAX);
    let take = usize::try_from(size).unwrap_or(usize::MAX);
    Ok(items.into_iter().skip(skip).take(take).collect())
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
