//! ClearML as flockd's queue source: two calls per observation whatever
//! the number of queues (one `queues.get_all` with entries, one
//! `workers.get_all`), issued concurrently.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use flockd_core::text::printable;
use flockd_core::{QueueObservation, QueueSource, QueueState, SourceError, Worker};

use super::{ClearmlClient, ClearmlError, QueueInfo, WorkerInfo};

impl From<ClearmlError> for SourceError {
    fn from(e: ClearmlError) -> Self {
        match &e {
            ClearmlError::Api { code: 401, .. } | ClearmlError::Secret(_) => SourceError::Auth(e.to_string()),
            ClearmlError::Api { code: 500.., .. } | ClearmlError::Transport { .. } => {
                SourceError::Unreachable(e.to_string())
            }
            ClearmlError::MissingQueues(names) => SourceError::NoSuchQueue(names.join(", ")),
            _ => SourceError::Other(e.to_string()),
        }
    }
}

#[async_trait]
impl QueueSource for ClearmlClient {
    async fn observe(&self, queues: &[String]) -> Result<QueueObservation, SourceError> {
        let (found, workers) = tokio::try_join!(self.queues_by_name(queues), self.workers())?;
        // Not one configured queue there: a wiped or wrong server, not a
        // deleted queue. Deciding on it would read every machine as
        // workerless and every queue as empty.
        if found.is_empty() && !queues.is_empty() {
            return Err(SourceError::NoSuchQueue(queues.join(", ")));
        }
        let now = Utc::now().timestamp_millis();
        let mut states = Vec::with_capacity(queues.len());
        for name in queues {
            match found.iter().find(|q| &q.name == name) {
                Some(queue) => states.push(queue_state(queue, now)),
                // The server answered, and no task can wait in a queue that
                // does not exist: it has nothing pending. Failing the whole
                // observation instead would stop every other queue's
                // scale-down while the idle machines bill on.
                None => {
                    tracing::warn!(
                        queue = %name,
                        "queue {name:?} is configured but missing on the ClearML server: counted as empty; recreate it or remove it from the config"
                    );
                    states.push(QueueState { name: name.clone(), pending: 0, oldest_wait_ms: 0 });
                }
            }
        }
        Ok(QueueObservation { queues: states, workers: workers.iter().map(to_worker).collect() })
    }

    async fn workers(&self) -> Result<Vec<Worker>, SourceError> {
        Ok(ClearmlClient::workers(self).await?.iter().map(to_worker).collect())
    }

    async fn unregister_worker(&self, worker_id: &str) -> Result<(), SourceError> {
        Ok(ClearmlClient::unregister_worker(self, worker_id).await?)
    }
}

fn queue_state(queue: &QueueInfo, now_ms: i64) -> QueueState {
    let oldest = queue.entries.iter().filter_map(|e| e.added.as_deref().and_then(parse_time)).min();
    QueueState {
        name: queue.name.clone(),
        pending: queue.entries.len() as u32,
        oldest_wait_ms: oldest.map_or(0, |added| (now_ms - added).max(0) as u64),
    }
}

/// Ids and names are outside text (anyone with a key can register a worker
/// under any name): made printable here, so none forges a log line.
fn to_worker(worker: &WorkerInfo) -> Worker {
    let text = |s: &str| printable(s).into_owned();
    Worker {
        id: text(&worker.id),
        queues: worker.queues.iter().map(|q| text(q.name.as_deref().unwrap_or(&q.id))).collect(),
        task: worker.task.as_ref().filter(|t| !t.id.is_empty()).map(|t| text(&t.id)),
        registered_at: worker.register_time.as_deref().and_then(parse_time).map(|ms| ms.max(0) as u64),
    }
}

/// Unix ms of a ClearML timestamp; the server writes RFC 3339, older ones
/// a naive UTC time.
pub(crate) fn parse_time(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_timestamp_shapes() {
        assert_eq!(parse_time("1970-01-01T00:00:01.500+00:00"), Some(1500));
        assert_eq!(parse_time("1970-01-01T00:00:02.250000"), Some(2250));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn worker_without_task_is_idle_and_empty_task_object_counts_as_none() {
        let idle: WorkerInfo = serde_json::from_str(r#"{"id":"w","task":null,"queues":null}"#).unwrap();
        assert_eq!(to_worker(&idle).task, None);
        let empty: WorkerInfo = serde_json::from_str(r#"{"id":"w","task":{},"extra":1}"#).unwrap();
        assert_eq!(to_worker(&empty).task, None);
        let busy: WorkerInfo = serde_json::from_str(
            r#"{"id":"w","task":{"id":"t1"},"queues":[{"id":"q1","name":"gpu"}],"register_time":"1970-01-01T00:00:03+00:00"}"#,
        )
        .unwrap();
        let busy = to_worker(&busy);
        assert_eq!(
            (busy.task.as_deref(), busy.queues, busy.registered_at),
            (Some("t1"), vec!["gpu".to_string()], Some(3000))
        );
    }
}

/// Property test of the response decoding (issue 10, hole 15): whatever a
/// server answers — any JSON where queues, entries and workers go, timestamps
/// of any shape and size — decoding either fails with an error or yields a
/// queue state and workers; it never panics. A long run:
/// `PROPTEST_CASES=100000 cargo test -p flockd-clearml --lib client::source::proptests`.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Any JSON value, a few levels deep, with numbers at their extremes.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,40}".prop_map(Value::from),
            timestamp().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(field(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The names the decoders read, and others.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "id",
                "name",
                "entries",
                "task",
                "added",
                "queues",
                "register_time",
                "last_activity_time",
            ])
            .prop_map(str::to_string),
            "[a-z_]{1,12}",
        ]
    }

    /// Timestamps near and far from valid: any year, offsets, fractions.
    fn timestamp() -> impl Strategy<Value = String> {
        (
            prop_oneof![4 => 1900i32..2100, 1 => 0i32..10_000, 1 => any::<i32>()],
            0u32..14,
            0u32..33,
            0u32..25,
            0u32..61,
            0u32..62,
            "(\\.[0-9]{0,12})?",
            "(Z|[+-][0-9]{2}:[0-9]{2})?",
        )
            .prop_map(|(y, mo, d, h, mi, s, frac, tz)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{tz}"))
    }

    /// Mostly what the field should hold (so whole answers decode and reach
    /// the arithmetic), sometimes anything.
    fn mostly(typical: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Value> {
        prop_oneof![4 => typical, 1 => any_json()]
    }

    fn text() -> impl Strategy<Value = Value> {
        prop_oneof![".{0,24}".prop_map(Value::from), "[ -~]{0,12}".prop_map(Value::from)]
    }

    fn entry() -> impl Strategy<Value = Value> {
        (mostly(text()), mostly(timestamp().prop_map(Value::from)), any::<bool>()).prop_map(
            |(task, added, with_added)| {
                let mut m = serde_json::Map::new();
                m.insert("task".into(), task);
                if with_added {
                    m.insert("added".into(), added);
                }
                Value::Object(m)
            },
        )
    }

    fn queue() -> impl Strategy<Value = Value> {
        (mostly(text()), mostly(text()), mostly(prop::collection::vec(entry(), 0..8).prop_map(Value::from)))
            .prop_map(|(id, name, entries)| json!({"id": id, "name": name, "entries": entries}))
    }

    fn id_name() -> impl Strategy<Value = Value> {
        (mostly(text()), mostly(text())).prop_map(|(id, name)| json!({"id": id, "name": name}))
    }

    fn worker() -> impl Strategy<Value = Value> {
        (
            mostly(text()),
            prop_oneof![Just(Value::Null), id_name(), any_json()],
            mostly(prop::collection::vec(id_name(), 0..4).prop_map(Value::from)),
            mostly(timestamp().prop_map(Value::from)),
        )
            .prop_map(|(id, task, queues, registered)| {
                json!({"id": id, "task": task, "queues": queues, "register_time": registered})
            })
    }

    proptest! {
        #[test]
        fn queue_answers_never_panic(
            queue in queue(),
            // The clock is ours; the timestamps are the server's.
            now in 0i64..=4_102_444_800_000,
        ) {
            if let Ok(info) = serde_json::from_value::<QueueInfo>(queue) {
                let state = queue_state(&info, now);
                prop_assert_eq!(state.pending as usize, info.entries.len());
            }
        }

        #[test]
        fn worker_answers_never_panic(worker in worker()) {
            if let Ok(info) = serde_json::from_value::<WorkerInfo>(worker) {
                let w = to_worker(&info);
                prop_assert!(!w.id.contains('\n'), "{:?}", w.id);
            }
        }

        #[test]
        fn any_timestamp_text_parses_or_is_refused(text in prop_oneof![timestamp(), ".{0,40}"]) {
            let _ = parse_time(&text);
        }

        #[test]
        fn any_envelope_decodes_or_is_refused(body in any_json()) {
            let text = json!({"meta": {"result_code": 200}, "data": body}).to_string();
            let _ = serde_json::from_str::<crate::wire::Envelope<Value>>(&text);
        }
    }
}
