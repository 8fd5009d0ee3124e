//! flockd's HTTP surface: Prometheus `/metrics`, the status API
//! (`/api/v1/status`, `/api/v1/decisions`), the probes (`/healthz`,
//! `/readyz`) and the dashboard at `/`.
//!
//! Everything here reads what the controller already keeps (its last
//! snapshot and record, the journal, the policy runtime's counters); the
//! only state of its own is what a tick report adds to metrics and to the
//! charts' one-hour history. Loopback by default; any other address needs a
//! token, so a fleet's picture is never open to a network by accident.

mod actions;
pub(crate) mod api;
mod auth;
mod dashboard;
pub mod history;
pub mod logs;
pub(crate) mod metrics;
mod v2;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use flockd_core::Controller;
use flockd_wasm::PolicyRuntime;
use tokio::sync::broadcast::error::RecvError;

use crate::config::HttpSection;

pub use api::{Status, status};
pub use v2::kebab;

/// What every handler reads.
pub struct Shared {
    controller: Arc<Controller>,
    policies: Arc<PolicyRuntime>,
    metrics: metrics::Metrics,
    history: Mutex<history::History>,
    logs: logs::LogTail,
    /// The ClearML web UI, when its address is known: the dashboard links
    /// each busy machine's task there.
    clearml_web: Option<String>,
    /// Whether the mutating `/api/*/actions/...` are on: only with a token.
    actions_enabled: bool,
}

/// A running HTTP server; stops when [`HttpServer::shutdown`] is called or
/// it is dropped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
    feeding: tokio::task::JoinHandle<()>,
}

/// Where to listen and with which token, checked: a non-loopback address
/// without a token is refused here, before anything binds.
pub struct Listen {
    pub addrs: Vec<SocketAddr>,
    pub token: Option<auth::Token>,
}

impl Listen {
    pub async fn resolve(section: &HttpSection) -> anyhow::Result<Listen> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(section.listen.as_str())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "[http] listen = {:?}: not an address to listen on ({e}); write e.g. \"127.0.0.1:9090\"",
                    section.listen
                )
            })?
            .collect();
        anyhow::ensure!(!addrs.is_empty(), "[http] listen = {:?} resolves to no address", section.listen);
        let token = match &section.token {
            None => None,
            Some(reference) => {
                Some(auth::Token::new(&reference.resolve().map_err(|e| anyhow::anyhow!("[http] token: {e}"))?))
            }
        };
        if token.is_none() && addrs.iter().any(|a| !a.ip().is_loopback()) {
            anyhow::bail!(
                "[http] listen = {:?} is reachable from other machines but [http] has no token: set token = \"env:FLOCKD_HTTP_TOKEN\" (or a file: reference), or listen on 127.0.0.1",
                section.listen
            );
        }
        Ok(Listen { addrs, token })
    }
}

impl HttpServer {
    /// Binds, starts serving, and starts following the controller's ticks.
    /// Call before the controller starts ticking so no tick is missed.
    pub async fn start(
        flockd: &crate::config::Config,
        controller: Arc<Controller>,
        policies: Arc<PolicyRuntime>,
    ) -> anyhow::Result<HttpServer> {
        let section = &flockd.http;
        let listen = Listen::resolve(section).await?;
        let listener = tokio::net::TcpListener::bind(listen.addrs.as_slice())
            .await
            .map_err(|e| anyhow::anyhow!("[http] cannot listen on {}: {e}", section.listen))?;
        let addr = listener.local_addr()?;

        let metrics = metrics::Metrics::new()?;
        let config = controller.config();
        metrics.init(
            config.limits.max_instances,
            config.limits.max_cost_per_hour,
            &config.resources.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            &config.queues.iter().map(|q| q.name.clone()).collect::<Vec<_>>(),
        );
        // The charts' last hour, from the journal: a restart does not blank them.
        let records = controller
            .store()
            .journal(&flockd_core::JournalQuery { limit: history::MAX_SAMPLES, instance: None })
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("the charts start empty: the journal could not be read: {e:#}");
                vec![]
            });
        let now = flockd_core::Clock::now(&flockd_core::SystemClock);
        let history = history::History::from_journal(&records, now);
        let shared = Arc::new(Shared {
            controller: controller.clone(),
            policies,
            metrics,
            history: Mutex::new(history),
            logs: logs::global().clone(),
            clearml_web: flockd.clearml_web_host(),
            actions_enabled: listen.token.is_some(),
        });
        let feeding = tokio::spawn(follow_ticks(shared.clone()));

        let app = router(shared, listen.token);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        tracing::info!("HTTP: dashboard, status API and metrics on http://{addr}");
        Ok(HttpServer { addr, stop: Some(stop), serving: Some(serving), feeding })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serving) = self.serving.take() {
            let _ = serving.await;
        }
        self.feeding.abort();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.feeding.abort();
    }
}

fn router(shared: Arc<Shared>, token: Option<auth::Token>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/api/v1/status", get(api::status_json))
        .route("/api/v1/decisions", get(api::decisions))
        .route("/api/v1/history", get(api::history))
        .route("/api/v1/logs", get(api::logs))
        .route("/api/v1/leader", get(api::leader))
        .route("/api/v2/status", get(v2::status))
        .route("/api/v2/decisions", get(v2::decisions))
        .route("/api/v2/history", get(v2::history))
        .route("/api/v2/logs", get(v2::logs))
        .route("/api/v2/leader", get(v2::leader))
        .route("/api/v1/actions/pause", post(actions::pause))
        .route("/api/v1/actions/resume", post(actions::resume))
        .route("/api/v1/actions/shutdown-idle", post(actions::shutdown_idle))
        .route("/api/v1/actions/terminate", post(actions::terminate))
        .route("/api/v2/actions/pause", post(v2::pause))
        .route("/api/v2/actions/resume", post(v2::resume))
        .route("/api/v2/actions/shutdown-idle", post(v2::shutdown_idle))
        .route("/api/v2/actions/terminate", post(v2::terminate))
        .merge(dashboard::routes())
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(token, auth::guard))
}

/// Feeds metrics and the charts from every tick report.
async fn follow_ticks(shared: Arc<Shared>) {
    let mut ticks = shared.controller.subscribe();
    loop {
        match ticks.recv().await {
            Ok(report) => {
                shared.metrics.observe(&report);
                shared.metrics.sync_policies(&shared.policies);
                if let Some(sample) = history::Sample::of(&report.record) {
                    shared.history.lock().unwrap().push(sample);
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!("metrics fell {missed} ticks behind; their counts are missing from the counters")
            }
            Err(RecvError::Closed) => return,
        }
    }
}
