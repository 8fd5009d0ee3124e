//! `flockd run`: the production wiring (`flockd check` is in check.rs).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use flockd_clearml::ClearmlClient;
use flockd_core::{Controller, Elector, LeaseBackend, QueueSource, Seams, StateStore, SystemClock};
use flockd_wasm::{PolicyEngine, PolicyRuntime, Reloader};

use crate::config::{Config, StoreKind};
use crate::store::RedbStore;

/// Policies: engine, chain and (if enabled) the watcher.
pub fn start_policies(config: &Config) -> anyhow::Result<(Arc<PolicyRuntime>, Option<Reloader>)> {
    let mut engine = PolicyEngine::new(config.call_limits())?;
    for entry in &config.policy {
        if let Some(ms) = entry.timeout_ms {
            engine = engine.with_timeout_for(&entry.name, std::time::Duration::from_millis(ms));
        }
    }
    let cache_dir =
        config.resolve(&config.policies.cache_dir.clone().unwrap_or_else(|| config.state_dir.join("policy-cache")));
    match flockd_wasm::CompileCache::open(&cache_dir) {
        Ok(cache) => engine = engine.with_compile_cache(cache),
        Err(e) => tracing::warn!("compiled policies will not be cached: {e}"),
    }
    let engine = Arc::new(engine);
    let specs = config.policy_specs();
    let chain = flockd_wasm::load_chain(&engine, &specs).map_err(|errors| {
        anyhow::anyhow!("policies failed to load:\n  {}", flockd_wasm::loader::lines(&errors, "\n  "))
    })?;
    for p in &chain.policies {
        tracing::info!(policy = %p.name, version = %p.digest, from = %p.origin, "policy loaded");
    }
    let runtime = Arc::new(PolicyRuntime::new(engine, chain));
    let reloader = if config.policies.watch {
        Some(Reloader::start(runtime.clone(), specs, flockd_wasm::reload::DEFAULT_DEBOUNCE)?)
    } else {
        None
    };
    Ok((runtime, reloader))
}

pub async fn run(path: &Path, dry_run: bool) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    // Checking compiles the policies: seconds for a Python one.
    let report = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || crate::check::check(&path)).await?
    };
    if report.has_errors() {
        for d in &report.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("flockd run refuses to start: fix the errors above (`flockd check --config {}`)", path.display());
        return Ok(ExitCode::from(2));
    }
    for d in &report.diagnostics {
        tracing::warn!("{d}");
    }
    let mut config = report.config.expect("checked");
    config.dry_run |= dry_run;
    let clearml = config.clearml.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no [clearml] section: flockd run needs a ClearML server (try `flockd dev` for a built-in one)",
            path.display()
        )
    })?;
    let client = ClearmlClient::new(clearml)?;
    let queues: Vec<String> = config.queues.iter().map(|q| q.name.clone()).collect();
    let created = client.ensure_queues(&queues, clearml.create_missing_queues).await?;
    if !created.is_empty() {
        tracing::info!("created missing queues: {}", created.join(", "));
    }
    let source: Arc<dyn QueueSource> = Arc::new(client);
    let scripts = crate::agent::startup_scripts(&config)?;
    let mut providers = crate::providers::build(&config, &scripts, Default::default()).await?;
    let store = open_store(&config).await?;
    // Scopes launched into before, which the config no longer names, are
    // still listed (and their machines retired) until they are empty.
    let remembered = flockd_core::store::load_state(store.state.as_ref()).await?;
    providers.retired = crate::providers::retired(&remembered, &providers.scopes).await?;
    serve_with(config, source, providers, store, shutdown, |addr| tracing::info!("dashboard and API on http://{addr}/"))
        .await
}

/// The configured store, and with PostgreSQL the leader lease it holds.
pub struct OpenedStore {
    pub state: Arc<dyn StateStore>,
    pub lease: Option<Arc<dyn LeaseBackend>>,
}

pub async fn open_store(config: &Config) -> anyhow::Result<OpenedStore> {
    match config.store.kind {
        StoreKind::Embedded => Ok(OpenedStore {
            state: Arc::new(RedbStore::open(&config.resolve(&config.state_dir), config.journal_limits())?),
            lease: None,
        }),
        StoreKind::Postgres => open_postgres(config).await,
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(config: &Config) -> anyhow::Result<OpenedStore> {
    let url = config.store.url.as_ref().ok_or_else(|| anyhow::anyhow!("store.kind = \"postgres\" needs store.url"))?;
    let url = url.resolve().map_err(|e| anyhow::anyhow!("store.url: {e}"))?;
    let store = flockd_postgres::PgStore::connect(url.expose(), &config.cluster, config.journal_limits()).await?;
    let store = Arc::new(store);
    Ok(OpenedStore { state: store.clone(), lease: Some(store) })
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &Config) -> anyhow::Result<OpenedStore> {
    anyhow::bail!(
        "store.kind = \"postgres\" needs the `postgres` feature, which this flockd was built without; rebuild with default features"
    )
}

/// This process's name in the leader lease: `[store] holder`, else host
/// name, process id and start time (unique across restarts).
pub fn lease_holder(config: &Config) -> String {
    if let Some(h) = &config.store.holder {
        return h.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flockd".into());
    let started = flockd_core::Clock::now(&SystemClock);
    format!("{host}/{}/{started}", std::process::id())
}

/// A started flockd: controller and policies, not yet ticking.
pub struct Started {
    pub controller: Arc<Controller>,
    /// With a shared store: the campaign for the leader lease.
    pub elector: Option<Arc<Elector>>,
    pub policies: Arc<PolicyRuntime>,
    /// Watching the policy folder while this lives.
    pub reloader: Option<Reloader>,
}

/// Builds the controller over the given queue source and providers, with the
/// config's policy chain and store.
pub async fn start(
    config: &Config,
    source: Arc<dyn QueueSource>,
    providers: crate::providers::Providers,
) -> anyhow::Result<Started> {
    let store = open_store(config).await?;
    start_with(config, source, providers, store).await
}

pub async fn start_with(
    config: &Config,
    source: Arc<dyn QueueSource>,
    providers: crate::providers::Providers,
    store: OpenedStore,
) -> anyhow::Result<Started> {
    // On a blocking thread: compiling a Python or JavaScript policy takes
    // seconds, which must not stall the async runtime (HTTP, signals).
    let (policies, reloader) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || start_policies(&config)).await??
    };

    let OpenedStore { state: store, lease } = store;
    let mut controller_config = config.controller_config();
    let crate::providers::Providers { configured: mut seams_providers, retired, scopes } = providers;
    controller_config.scopes = scopes;
    for (name, (key, provider)) in retired {
        controller_config.retired.insert(name.clone(), key);
        seams_providers.insert(name, provider);
    }
    let controller = Controller::new(
        controller_config,
        Seams { source, providers: seams_providers, decider: policies.clone(), store, clock: Arc::new(SystemClock) },
    )
    .await?
    // Every cloud call timed and counted in `/metrics`.
    .with_call_sink(crate::http::metrics::ProviderCallMetrics::global().clone());
    let (controller, elector) = match lease {
        None => (controller, None),
        Some(lease) => {
            let elector = Arc::new(Elector::new(lease, lease_holder(config), config.store.lease_timings()));
            (controller.with_leadership(elector.watch()), Some(elector))
        }
    };
    let controller = Arc::new(controller);
    Ok(Started { controller, elector, policies, reloader })
}

/// The loop shared by `run` and `dev`: tick until `shutdown` (see
/// [`shutdown_signal`]).
pub async fn serve(
    config: Config,
    source: Arc<dyn QueueSource>,
    providers: crate::providers::Providers,
    shutdown: impl std::future::Future<Output = ()>,
    listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<ExitCode> {
    let store = open_store(&config).await?;
    serve_with(config, source, providers, store, shutdown, listening).await
}

pub async fn serve_with(
    config: Config,
    source: Arc<dyn QueueSource>,
    providers: crate::providers::Providers,
    store: OpenedStore,
    shutdown: impl std::future::Future<Output = ()>,
    listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<ExitCode> {
    let started = start_with(&config, source, providers, store).await?;
    if config.dry_run {
        tracing::warn!("dry run: plans are recorded in the journal, nothing is launched or terminated");
    }
    let http = if config.http.enabled {
        let http =
            crate::http::HttpServer::start(&config, started.controller.clone(), started.policies.clone()).await?;
        listening(http.addr());
        Some(http)
    } else {
        None
    };
    tracing::info!(cluster = %config.cluster, interval = ?config.poll_interval(), "flockd running");
    // The campaign ends (and the lease is released, so a follower takes
    // over at once) only after the controller stopped acting.
    let (stop_campaign, campaign_stopped) = tokio::sync::oneshot::channel::<()>();
    let campaign = started.elector.clone().map(|elector| {
        tracing::info!(holder = %elector.watch().borrow().holder, "campaigning for the leader lease");
        tokio::spawn(async move { elector.run(async { drop(campaign_stopped.await) }).await })
    });
    started.controller.run(config.poll_interval(), shutdown).await;
    if let Some(campaign) = campaign {
        let _ = stop_campaign.send(());
        let _ = campaign.await;
    }
    let mode = config.controller.on_shutdown;
    if started.elector.is_some() && mode != flockd_core::OnShutdown::Leave {
        // Every rolling update would shrink the fleet otherwise.
        tracing::info!(on_shutdown = mode.as_str(), "stopping: a leader hands over, it leaves the fleet as it is");
    } else if mode != flockd_core::OnShutdown::Leave {
        tracing::info!(on_shutdown = mode.as_str(), "stopping: terminating what on-shutdown names");
        match tokio::time::timeout(config.shutdown_timeout(), started.controller.shutdown_fleet(mode)).await {
            Ok(Some(record)) => {
                tracing::info!(terminated = record.terminated(), "on-shutdown terminations done")
            }
            Ok(None) => {}
            Err(_) => tracing::warn!(
                "on-shutdown terminations did not finish within shutdown-timeout-secs: exiting; the next flockd sees what is left"
            ),
        }
    }
    if let Some(http) = http {
        http.shutdown().await;
    }
    tracing::info!("stopped: in-flight cloud calls finished and state saved");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives while
/// flockd starts or runs its first tick is kept until the loop looks, instead
/// of the default action killing the process in the middle of a launch.
#[cfg(unix)]
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
