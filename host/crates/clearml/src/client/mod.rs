//! A ClearML API client: token login and refresh, the envelope, retries, and
//! the few typed calls flockd makes. [`ClearmlClient`] is also flockd's
//! production [`flockd_core::QueueSource`] (see `source.rs`).

mod config;
mod source;

pub use config::ClearmlConfig;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::secret::{Secret, SecretError};
use crate::wire::{self, Envelope};

/// Refresh the token when it has less than this left, as the SDK does.
const REFRESH_MARGIN_SECS: i64 = 60;
/// Statuses worth retrying: throttling and a proxy or server in trouble.
const RETRY_STATUSES: &[u16] = &[429, 502, 503, 504, 509];

#[derive(Debug, thiserror::Error)]
pub enum ClearmlError {
    #[error("ClearML {endpoint} failed with {code}/{subcode}: {msg}")]
    Api { endpoint: String, code: u16, subcode: u32, msg: String },
    #[error("ClearML {endpoint}: cannot reach {host} after {attempts} attempt(s): {reason}")]
    Transport { endpoint: String, host: String, attempts: u32, reason: String },
    #[error("ClearML {endpoint}: unexpected response: {reason}")]
    Decode { endpoint: String, reason: String },
    #[error("ClearML credentials: {0}")]
    Secret(#[from] SecretError),
    #[error("ClearML config: {0}")]
    Config(String),
    #[error(
        "ClearML queue(s) {0:?} do not exist; create them in ClearML (or let flockd create them) before serving them"
    )]
    MissingQueues(Vec<String>),
}

impl ClearmlError {
    /// The API's result code, if the server answered.
    pub fn code(&self) -> Option<(u16, u32)> {
        match self {
            ClearmlError::Api { code, subcode, .. } => Some((*code, *subcode)),
            _ => None,
        }
    }
}

/// A queue as `queues.get_all` returns it (unknown fields ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct QueueInfo {
    pub id: String,
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub entries: Vec<QueueEntryInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct QueueEntryInfo {
    pub task: String,
    /// ISO 8601, e.g. `2025-01-01T00:00:00.000+00:00`.
    #[serde(default)]
    pub added: Option<String>,
}

/// A worker as `workers.get_all` returns it (unknown fields ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    #[serde(default)]
    pub task: Option<IdName>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub queues: Vec<IdName>,
    #[serde(default)]
    pub register_time: Option<String>,
    #[serde(default)]
    pub last_activity_time: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct IdName {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

struct Token {
    value: Secret,
    /// Unix seconds.
    expires_at: i64,
}

/// Talks to one ClearML API server. Cheap to share behind an `Arc`; calls
/// may run concurrently (they share one token).
pub struct ClearmlClient {
    http: reqwest::Client,
    api_host: String,
    access_key: Secret,
    secret_key: Secret,
    max_attempts: u32,
    worker_last_seen_secs: u64,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for ClearmlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClearmlClient").field("api_host", &self.api_host).finish_non_exhaustive()
    }
}

impl ClearmlClient {
    /// Resolves the credentials and builds the HTTP client; does not call the
    /// server (the first call logs in).
    pub fn new(config: &ClearmlConfig) -> Result<Self, ClearmlError> {
        let api_host = config.api_host.trim_end_matches('/').to_string();
        if !(api_host.starts_with("http://") || api_host.starts_with("https://")) {
            return Err(ClearmlError::Config(format!("api-host {api_host:?} must start with http:// or https://")));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.request_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(config.request_timeout_secs.clamp(1, 10)))
            .build()
            .map_err(|e| ClearmlError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(ClearmlClient {
            http,
            api_host,
            access_key: config.access_key.resolve()?,
            secret_key: config.secret_key.resolve()?,
            max_attempts: config.max_attempts.max(1),
            worker_last_seen_secs: config.worker_last_seen_secs,
            token: Mutex::new(None),
        })
    }

    pub fn api_host(&self) -> &str {
        &self.api_host
    }

    /// Calls `service.action` with a JSON body and decodes `data` into `T`.
    /// Logs in first if needed, and once more if the server answers 401.
    pub async fn call<T: DeserializeOwned>(&self, endpoint: &str, body: &Value) -> Result<T, ClearmlError> {
        let mut logged_in_again = false;
        loop {
            let token = self.token().await?;
            match self.send(endpoint, &Auth::Bearer(&token), body).await {
                Err(ClearmlError::Api { code: 401, .. }) if !logged_in_again => {
                    logged_in_again = true;
                    *self.token.lock().await = None;
                }
                other => {
                    let data = other?;
                    return serde_json::from_value(data)
                        .map_err(|e| ClearmlError::Decode { endpoint: endpoint.to_string(), reason: e.to_string() });
                }
            }
        }
    }

    /// A valid token, logging in when there is none or it expires within a minute.
    async fn token(&self) -> Result<Secret, ClearmlError> {
        let mut slot = self.token.lock().await;
        let now = chrono::Utc::now().timestamp();
        if let Some(token) = slot.as_ref().filter(|t| t.expires_at - now > REFRESH_MARGIN_SECS) {
            return Ok(token.value.clone());
        }
        let data = self.send("auth.login", &Auth::Basic, &json!({})).await?;
        let value = data.get("token").and_then(Value::as_str).ok_or_else(|| ClearmlError::Decode {
            endpoint: "auth.login".into(),
            reason: "no data.token in the login response".into(),
        })?;
        // A token without a readable `exp` is used once and refreshed next call.
        let expires_at = crate::token::decode_unverified(value)
            .and_then(|claims| claims.get("exp").and_then(Value::as_i64))
            .unwrap_or(now);
        let token = Token { value: Secret::new(value), expires_at };
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    /// One call with bounded retries on throttling, overload and timeouts.
    async fn send(&self, endpoint: &str, auth: &Auth<'_>, body: &Value) -> Result<Value, ClearmlError> {
        let url = format!("{}/v{}/{endpoint}", self.api_host, wire::API_VERSION);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self.http.post(&url).json(body);
            let request = match auth {
                Auth::Basic => request.header(
                    reqwest::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        STANDARD.encode(format!("{}:{}", self.access_key.expose(), self.secret_key.expose()))
                    ),
                ),
                Auth::Bearer(token) => request.bearer_auth(token.expose()),
            };
            let retry_reason = match request.send().await {
                Ok(response) if RETRY_STATUSES.contains(&response.status().as_u16()) => {
                    format!("HTTP {}", response.status())
                }
                Ok(response) => return self.decode(endpoint, response).await,
                Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => without_url(&e),
                Err(e) => {
                    return Err(self.transport_error(endpoint, attempt, without_url(&e)));
                }
            };
            if attempt >= self.max_attempts {
                return Err(self.transport_error(endpoint, attempt, retry_reason));
            }
            let backoff = Duration::from_millis(250 << (attempt - 1).min(4));
            tracing::debug!(endpoint, attempt, reason = %retry_reason, ?backoff, "retrying ClearML call");
            tokio::time::sleep(backoff).await;
        }
    }

    async fn decode(&self, endpoint: &str, response: reqwest::Response) -> Result<Value, ClearmlError> {
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| ClearmlError::Decode {
            endpoint: endpoint.to_string(),
            reason: format!("cannot read body: {}", without_url(&e)),
        })?;
        let envelope: Envelope<Value> = serde_json::from_slice(&bytes).map_err(|e| ClearmlError::Decode {
            endpoint: endpoint.to_string(),
            reason: format!("HTTP {status}, body is not a ClearML envelope ({e})"),
        })?;
        let code = if envelope.meta.result_code == 0 { status } else { envelope.meta.result_code };
        if code != 200 || status != 200 {
            return Err(ClearmlError::Api {
                endpoint: endpoint.to_string(),
                code: if status != 200 { status } else { code },
                subcode: envelope.meta.result_subcode,
                msg: envelope.meta.result_msg,
            });
        }
        Ok(match envelope.data {
            Some(Value::Null) | None => json!({}),
            Some(data) => data,
        })
    }

    fn transport_error(&self, endpoint: &str, attempts: u32, reason: String) -> ClearmlError {
        ClearmlError::Transport { endpoint: endpoint.to_string(), host: self.api_host.clone(), attempts, reason }
    }

    /// The queues with exactly these names, in one call whatever their number.
    pub async fn queues_by_name(&self, names: &[String]) -> Result<Vec<QueueInfo>, ClearmlError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let alternatives: Vec<String> = names.iter().map(|n| regex::escape(n)).collect();
        let body = json!({
            "name": format!("^(?:{})$", alternatives.join("|")),
            "only_fields": ["id", "name", "entries"],
            "search_hidden": true,
        });
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            queues: Vec<QueueInfo>,
        }
        let reply: Reply = self.call("queues.get_all", &body).await?;
        // The server matched a regex; keep only exact names in case it is loose.
        Ok(reply.queues.into_iter().filter(|q| names.contains(&q.name)).collect())
    }

    /// Creates a queue and returns its id.
    pub async fn create_queue(&self, name: &str) -> Result<String, ClearmlError> {
        #[derive(Deserialize)]
        struct Reply {
            id: String,
        }
        let reply: Reply = self.call("queues.create", &json!({ "name": name })).await?;
        Ok(reply.id)
    }

    /// Checks that every named queue exists. With `create`, makes the missing
    /// ones and returns their names; without, fails with
    /// [`ClearmlError::MissingQueues`] listing them.
    pub async fn ensure_queues(&self, names: &[String], create: bool) -> Result<Vec<String>, ClearmlError> {
        let existing = self.queues_by_name(names).await?;
        let mut missing: Vec<String> =
            names.iter().filter(|n| !existing.iter().any(|q| &q.name == *n)).cloned().collect();
        missing.dedup();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        if !create {
            return Err(ClearmlError::MissingQueues(missing));
        }
        for name in &missing {
            match self.create_queue(name).await {
                // Someone else created it between our look and our create: fine.
                Err(e) if e.code() == Some(wire::codes::DUPLICATE) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(missing)
    }

    /// Workers seen within the configured `worker-last-seen-secs`.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, ClearmlError> {
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            workers: Vec<WorkerInfo>,
        }
        let body = json!({ "last_seen": self.worker_last_seen_secs });
        Ok(self.call::<Reply>("workers.get_all", &body).await?.workers)
    }

    /// Forgets a worker. One the server does not know (already gone) is Ok.
    pub async fn unregister_worker(&self, worker_id: &str) -> Result<(), ClearmlError> {
        match self.call::<Value>("workers.unregister", &json!({ "worker": worker_id })).await {
            Err(e) if e.code() == Some(wire::codes::INVALID_WORKER_ID) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Creates a task (status `created`) and returns its id.
    pub async fn create_task(&self, name: &str, task_type: &str) -> Result<String, ClearmlError> {
        #[derive(Deserialize)]
        struct Reply {
            id: String,
        }
        let body = json!({ "name": name, "type": task_type });
        Ok(self.call::<Reply>("tasks.create", &body).await?.id)
    }

    /// Enqueues a task into the queue with this name.
    pub async fn enqueue_task(&self, task_id: &str, queue_name: &str) -> Result<(), ClearmlError> {
        let body = json!({ "task": task_id, "queue_name": queue_name });
        self.call::<Value>("tasks.enqueue", &body).await.map(drop)
    }
}

enum Auth<'a> {
    Basic,
    Bearer(&'a Secret),
}

/// reqwest errors print the URL; ours carry no secrets, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    if let Some(url) = e.url() {
        message = message.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
