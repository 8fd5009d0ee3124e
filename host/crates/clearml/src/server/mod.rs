//! A ClearML-compatible API server: enough of the real one for the `clearml`
//! SDK, `clearml-agent` and flockd's own client to create, enqueue, pull and
//! finish tasks and to register workers. It backs `flockd dev` and the tests.
//!
//! Anyone who can log in can make an agent run any command, so the server
//! refuses to listen beyond loopback with a secret written in code
//! ([`SecretSource::BuiltIn`]); compares credentials in constant time; and
//! answers a request that makes a handler panic (a bug) with a 500 while
//! the store stays usable for every later request.
//!
//! State lives in memory; with `persist_path` queues, tasks and projects are
//! also written (temp file + rename) after every change, so a restart keeps
//! them. Workers are not persisted: live agents re-register on their next
//! report.

mod handlers;
mod http;
#[cfg(test)]
mod proptests;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::secret::{Secret, SecretError, SecretRef};
use crate::wire::codes;
use handlers::{ApiError, Call, Reply, dispatch};
use store::{Object, Store, now_ms, write_atomically};

/// How to run the compatible server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free one (see [`RunningServer::addr`]).
    pub listen: SocketAddr,
    /// The one credential pair `auth.login` accepts.
    pub access_key: String,
    pub secret_key: Secret,
    /// Where `secret_key` came from; decides whether `listen` may be beyond loopback.
    pub secret_source: SecretSource,
    /// JSON file keeping queues, tasks and projects across restarts.
    pub persist_path: Option<PathBuf>,
    /// Seconds of silence after which a worker is dropped (the real server's default is 600).
    pub register_timeout_secs: u64,
    /// Lifetime of issued tokens unless the client asks for less (30 days, as the real server).
    pub token_lifetime_secs: u64,
}

/// Where the server's secret key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in code: `flockd dev`'s built-in development secret, a test's
    /// key. Anyone can read it, so the server serves on loopback only.
    BuiltIn,
    /// Resolved from an `env:NAME` / `file:PATH` reference an operator chose:
    /// the server may listen on any address.
    Reference(SecretRef),
}

impl ServerConfig {
    /// A server whose secret is written in code ([`SecretSource::BuiltIn`]):
    /// [`ClearmlServer::start`] refuses a `listen` address beyond loopback.
    pub fn new(listen: SocketAddr, access_key: impl Into<String>, secret_key: Secret) -> Self {
        ServerConfig {
            listen,
            access_key: access_key.into(),
            secret_key,
            secret_source: SecretSource::BuiltIn,
            persist_path: None,
            register_timeout_secs: 600,
            token_lifetime_secs: 30 * 24 * 3600,
        }
    }

    /// A server whose secret an operator gave by reference; it may listen anywhere.
    pub fn with_secret_ref(
        listen: SocketAddr,
        access_key: impl Into<String>,
        secret: SecretRef,
    ) -> Result<Self, SecretError> {
        let mut config = ServerConfig::new(listen, access_key, secret.resolve()?);
        config.secret_source = SecretSource::Reference(secret);
        Ok(config)
    }

    /// Refuses to serve beyond loopback with a secret anyone can read in the
    /// source: with a local provider, logging in means running commands on
    /// this machine. [`ClearmlServer::start`] checks this before binding.
    pub fn check_listen(&self) -> anyhow::Result<()> {
        let loopback = self.listen.ip().to_canonical().is_loopback();
        if loopback || matches!(self.secret_source, SecretSource::Reference(_)) {
            return Ok(());
        }
        anyhow::bail!(
            "refusing to serve the ClearML-compatible API on {listen}: that address is reachable from other \
             machines, and the secret key is a built-in one anyone can read in flockd's source, so anyone who \
             reaches the port could log in and have tasks run. Listen on loopback (127.0.0.1:{port} or \
             [::1]:{port}), or give a secret key by reference, `env:NAME` or `file:PATH` \
             (`flockd dev --clearml-secret`, `flockd dev-server --secret-key`)",
            listen = self.listen,
            port = self.listen.port(),
        )
    }
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    access_key: String,
    secret_key: Secret,
    /// Derived from the secret key so tokens survive a restart.
    signing_key: Mutex<Vec<u8>>,
    register_timeout: u64,
    token_lifetime_secs: u64,
    state_changed: Notify,
    /// Endpoints clients called that this server does not implement.
    unknown_endpoints: Mutex<BTreeSet<String>>,
}

impl Shared {
    fn new(config: &ServerConfig, store: Store) -> Shared {
        let signing_key = Sha256::new()
            .chain_update(b"flockd-clearml-token\0")
            .chain_update(config.access_key.as_bytes())
            .chain_update(b"\0")
            .chain_update(config.secret_key.expose().as_bytes())
            .finalize()
            .to_vec();
        Shared {
            store: Mutex::new(store),
            access_key: config.access_key.clone(),
            secret_key: config.secret_key.clone(),
            signing_key: Mutex::new(signing_key),
            register_timeout: config.register_timeout_secs,
            token_lifetime_secs: config.token_lifetime_secs,
            state_changed: Notify::new(),
            unknown_endpoints: Mutex::new(BTreeSet::new()),
        }
    }

    fn signing_key(&self) -> Vec<u8> {
        lock(&self.signing_key).clone()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Runs the endpoint on the store; None if there is no such endpoint.
    ///
    /// A handler that panics (a bug: request data must only ever lead to an
    /// [`ApiError`]) is caught here, while the lock is still held, so the
    /// mutex is not poisoned; the request gets a 500 saying so and every
    /// later request is served as usual.
    fn run(&self, endpoint: &str, body: &Object, ip: String) -> Option<Reply> {
        let mut store = self.store();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut call = Call {
                store: &mut store,
                body,
                now: now_ms(),
                register_timeout: self.register_timeout,
                ip,
                changed: false,
            };
            dispatch(endpoint, &mut call).map(|reply| (reply, call.changed))
        }));
        drop(store);
        match outcome {
            Ok(Some((reply, changed))) => {
                if changed {
                    self.state_changed.notify_one();
                }
                Some(reply)
            }
            Ok(None) => None,
            Err(panic) => {
                let what = panic_message(&*panic);
                tracing::error!(endpoint, panic = %what, "clearml server: handler panicked (a bug); answering 500");
                // It may have changed the store before panicking: save what is there.
                self.state_changed.notify_one();
                Some(Err(ApiError::new(
                    codes::INTERNAL,
                    format!(
                        "internal error in {endpoint}: {what} (a bug in flockd's ClearML server; please report it)"
                    ),
                )))
            }
        }
    }
}

/// Locks `mutex` even if a thread panicked while holding it. Handlers run
/// under [`Shared::run`]'s guard, so this is for panics elsewhere; what such
/// a panic left behind is plain records (queues, tasks, workers), and serving
/// them beats failing every later request on a poisoned lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| {
        mutex.clear_poison();
        poisoned.into_inner()
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "a panic without a message",
    }
}

pub struct ClearmlServer;

impl ClearmlServer {
    /// Binds, loads persisted state if any, and serves until
    /// [`RunningServer::shutdown`].
    ///
    /// Refuses a `listen` address beyond loopback unless the secret was given
    /// by reference (see [`ServerConfig::check_listen`]).
    pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
        config.check_listen()?;
        let store = match &config.persist_path {
            Some(path) => Store::load(path)?,
            None => Store::default(),
        };
        let shared = Arc::new(Shared::new(&config, store));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} for the ClearML server", config.listen))?;
        let addr = listener.local_addr()?;

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = axum::Router::new().fallback(http::handle).with_state(shared.clone());
        let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
        let server_task = tokio::spawn(async move { serve.await.context("ClearML server stopped with an error") });
        let (saver_stop, saver_task) = match config.persist_path.clone() {
            Some(path) => {
                let (stop_tx, stop_rx) = oneshot::channel();
                (Some(stop_tx), Some(tokio::spawn(save_on_change(shared.clone(), path, stop_rx))))
            }
            None => (None, None),
        };
        tracing::info!(%addr, "ClearML-compatible server listening");
        Ok(RunningServer {
            addr,
            handle: ServerHandle { shared },
            stop_tx: Some(stop_tx),
            server_task: Some(server_task),
            saver_stop,
            saver_task,
            persist_path: config.persist_path,
        })
    }
}

/// Writes the state file after changes; a burst of changes coalesces into
/// one write because `Notify` keeps at most one pending permit. Stops between
/// writes, never during one, so the final save in `shutdown` has the file to itself.
async fn save_on_change(shared: Arc<Shared>, path: PathBuf, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = shared.state_changed.notified() => {}
        }
        if let Err(e) = save(&shared, &path).await {
            tracing::error!(path = %path.display(), error = %e, "cannot save ClearML server state");
        }
    }
}

async fn save(shared: &Shared, path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = {
        let store = shared.store();
        serde_json::to_vec_pretty(&*store)?
    };
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await??;
    Ok(())
}

/// A server that is serving. Dropping it stops the listener without the final
/// state flush; call [`RunningServer::shutdown`] to stop cleanly.
pub struct RunningServer {
    addr: SocketAddr,
    handle: ServerHandle,
    stop_tx: Option<oneshot::Sender<()>>,
    server_task: Option<JoinHandle<anyhow::Result<()>>>,
    saver_stop: Option<oneshot::Sender<()>>,
    saver_task: Option<JoinHandle<()>>,
    persist_path: Option<PathBuf>,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, what clients use as their api host.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// In-process access to the server's state (for `flockd dev` and tests).
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Stops accepting requests, lets in-flight ones finish, then writes the
    /// state file one last time.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop_tx.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.server_task.take() {
            task.await??;
        }
        if let Some(stop) = self.saver_stop.take() {
            let _ = stop.send(());
        }
        if let Some(saver) = self.saver_task.take() {
            saver.await?;
        }
        if let Some(path) = &self.persist_path {
            save(&self.handle.shared, path).await?;
        }
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_tx.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.saver_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A task as the in-process API reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSummary {
    pub id: String,
    pub name: String,
    pub status: String,
    /// The queue id it was last enqueued to.
    pub queue: Option<String>,
}

/// A worker as the in-process API reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSummary {
    pub id: String,
    /// Queue names (or ids, for queues that do not exist).
    pub queues: Vec<String>,
    pub task: Option<String>,
}

/// Calls the server's own endpoints in process: same rules, no HTTP, no auth.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Runs one endpoint (e.g. `"queues.create"`) with a JSON object body and
    /// returns its `data`, or the error message the API would answer.
    pub fn call(&self, endpoint: &str, body: Value) -> anyhow::Result<Value> {
        let body: Map<String, Value> = match body {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => anyhow::bail!("{endpoint}: body must be a JSON object, got {other}"),
        };
        let reply = self
            .shared
            .run(endpoint, &body, "127.0.0.1".into())
            .ok_or_else(|| anyhow::anyhow!("unknown endpoint {endpoint}"))?;
        reply.map_err(|e| anyhow::anyhow!("{endpoint} failed ({}/{}): {}", e.code, e.subcode, e.msg))
    }

    /// Creates a queue and returns its id.
    pub fn create_queue(&self, name: &str) -> anyhow::Result<String> {
        let data = self.call("queues.create", json!({ "name": name }))?;
        Ok(data["id"].as_str().unwrap_or_default().to_string())
    }

    /// The id of the queue named `name`, if it exists.
    pub fn queue_id(&self, name: &str) -> Option<String> {
        let store = self.shared.store();
        store.queue_by_name(name).map(|q| q.id.clone())
    }

    /// Creates a task (status `created`) and returns its id.
    pub fn create_task(&self, name: &str) -> anyhow::Result<String> {
        let data = self.call("tasks.create", json!({ "name": name, "type": "training" }))?;
        Ok(data["id"].as_str().unwrap_or_default().to_string())
    }

    /// Enqueues a task by queue name (the queue is created if missing).
    pub fn enqueue(&self, task_id: &str, queue_name: &str) -> anyhow::Result<()> {
        self.call("tasks.enqueue", json!({ "task": task_id, "queue_name": queue_name }))?;
        Ok(())
    }

    /// Endpoints that clients called and this server answered with 404:
    /// what to implement next when a new client version appears.
    pub fn unknown_endpoints(&self) -> Vec<String> {
        lock(&self.shared.unknown_endpoints).iter().cloned().collect()
    }

    /// Invalidates every token issued so far: clients must log in again.
    pub fn revoke_tokens(&self) {
        *lock(&self.shared.signing_key) = rand::random::<[u8; 32]>().to_vec();
    }

    /// Number of entries in the named queue, None if there is no such queue.
    pub fn queue_depth(&self, name: &str) -> Option<usize> {
        let store = self.shared.store();
        store.queue_by_name(name).map(|q| q.entries.len())
    }

    pub fn tasks(&self) -> Vec<TaskSummary> {
        let store = self.shared.store();
        let text = |t: &Map<String, Value>, k: &str| t.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        store
            .tasks
            .values()
            .map(|t| TaskSummary {
                id: text(t, "id"),
                name: text(t, "name"),
                status: text(t, "status"),
                queue: t.get("execution").and_then(|e| e.get("queue")).and_then(Value::as_str).map(str::to_string),
            })
            .collect()
    }

    pub fn task(&self, id: &str) -> Option<TaskSummary> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// Live workers (the register-timeout sweep applied).
    pub fn workers(&self) -> Vec<WorkerSummary> {
        let mut store = self.shared.store();
        store.sweep_workers(now_ms());
        store
            .workers
            .values()
            .map(|w| WorkerSummary {
                id: w.id.clone(),
                queues: w.queues.iter().map(|q| store.queues.get(q).map_or(q.clone(), |q| q.name.clone())).collect(),
                task: w.task.clone(),
            })
            .collect()
    }
}
