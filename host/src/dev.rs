//! `flockd dev-server` and `flockd dev`: everything on one machine, no cloud
//! account needed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flockd_clearml::secret::{Secret, SecretRef};
use flockd_clearml::server::{ClearmlServer, ServerConfig};
use flockd_core::{InstanceState, QueueSource, SystemClock};
use flockd_sim::{Agents, PulledTask, SimWorld};
use serde_json::json;

use crate::config::ProviderKind;

/// The secret `flockd dev` and `dev-server` use when none is given. Anyone
/// can read it here, so the server then listens on loopback only.
pub const DEV_SECRET: &str = "flockd-dev-secret";

/// The server's config: the given secret reference, or the built-in secret
/// (which `ClearmlServer::start` refuses beyond loopback).
fn server_config(listen: SocketAddr, access_key: String, secret: Option<SecretRef>) -> anyhow::Result<ServerConfig> {
    Ok(match secret {
        Some(reference) => ServerConfig::with_secret_ref(listen, access_key, reference)?,
        None => ServerConfig::new(listen, access_key, Secret::new(DEV_SECRET)),
    })
}

pub async fn dev_server(
    listen: SocketAddr,
    access_key: String,
    secret_key: Option<SecretRef>,
    persist: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut config = server_config(listen, access_key, secret_key)?;
    config.persist_path = persist;
    let shutdown = crate::run::shutdown_signal()?;
    let server = ClearmlServer::start(config).await?;
    println!("ClearML-compatible API server on http://{}", server.addr());
    shutdown.await;
    server.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// The embedded default config of `flockd dev`.
pub const DEV_CONFIG: &str = include_str!("../../examples/dev.toml");

/// Options of `flockd dev`.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// A config to use instead of the embedded default.
    pub config: Option<PathBuf>,
    /// Where the ClearML-compatible server listens (port 0: any free port).
    pub clearml_listen: SocketAddr,
    /// Its secret key; None: the built-in [`DEV_SECRET`], loopback only.
    pub clearml_secret: Option<SecretRef>,
    /// Where the dashboard listens instead of the config's `[http] listen`.
    pub http_listen: Option<SocketAddr>,
    /// Enqueue a sample workload, show it scale up and down, then exit.
    pub demo: bool,
    /// How long a task runs on a simulated machine.
    pub task_secs: f64,
}

pub async fn dev(options: DevOptions) -> anyhow::Result<ExitCode> {
    // Refused before anything is created or started.
    let server_config = server_config(options.clearml_listen, DEV_ACCESS_KEY.into(), options.clearml_secret.clone())?;
    server_config.check_listen()?;
    // The demo ends by itself and Ctrl-C simply stops it; the long-running
    // mode takes signals from the start, like `flockd run`.
    let shutdown = if options.demo { None } else { Some(crate::run::shutdown_signal()?) };
    let demo_state = if options.demo { Some(tempfile::tempdir()?) } else { None };
    let mut config = match &options.config {
        Some(path) => crate::config::Config::load(path)?,
        None => crate::config::Config::parse(DEV_CONFIG, std::path::Path::new("examples/dev.toml"))?,
    };
    if options.config.is_none() {
        config.base_dir = std::env::current_dir()?;
    }
    if let Some(dir) = &demo_state {
        // A demo starts from nothing and leaves nothing behind.
        config.state_dir = dir.path().join("state");
        config.policies.watch = false;
    }
    let state_dir = config.resolve(&config.state_dir);
    std::fs::create_dir_all(&state_dir)?;

    let server = ClearmlServer::start(server_config).await?;
    let handle = server.handle();
    for q in &config.queues {
        if handle.queue_id(&q.name).is_none() {
            handle.create_queue(&q.name)?;
        }
    }
    // flockd talks to its own server exactly as to a real one: over HTTP,
    // with credentials by reference.
    let env_block = clearml_env_block(&server.url(), options.clearml_secret.as_ref());
    let secret = match options.clearml_secret {
        Some(reference) => reference,
        None => {
            let secret_file = state_dir.join("clearml-dev-secret");
            write_private(&secret_file, DEV_SECRET)?;
            SecretRef::File(secret_file)
        }
    };
    let clearml = flockd_clearml::ClearmlConfig::new(server.url(), SecretRef::File(write_key(&state_dir)?), secret);
    let source: Arc<dyn QueueSource> = Arc::new(flockd_clearml::ClearmlClient::new(&clearml)?);

    let world = SimWorld::new(
        Arc::new(SystemClock),
        Arc::new(ServerAgents { server: handle.clone(), task_ms: (options.task_secs * 1000.0) as u64 }),
    );
    // `dev` serves fake tasks from its own server: a real cloud must never
    // see them. Every provider is simulated, whatever its kind (its
    // resources' `.simulated` tables tune the machines), as in `simulate`.
    let providers = crate::simulate::simulated_providers(&config, &world, true)?.into();
    for (name, entry) in config.providers.iter().filter(|(_, p)| p.kind != ProviderKind::Simulated) {
        println!(
            "flockd dev: provider {name} (kind {}) is simulated here: nothing is launched in a real cloud (`flockd run` uses it for real)",
            entry.kind
        );
    }
    let stepper = world.spawn_stepper(Duration::from_millis(100));
    if let Some(listen) = options.http_listen {
        config.http.listen = listen.to_string();
        config.http.enabled = true;
    }

    println!("flockd dev: ClearML-compatible API on {} (access key {DEV_ACCESS_KEY:?})", server.url());
    let code = if options.demo {
        demo(&config, source, providers, &handle, &world).await?
    } else {
        println!("enqueue tasks with the clearml SDK and watch them being served; Ctrl-C stops. Its environment:");
        print!("{env_block}");
        let shutdown = shutdown.expect("installed when not a demo");
        crate::run::serve(config, source, providers, shutdown, |addr| {
            println!("flockd dev: dashboard on http://{addr}/");
        })
        .await?
    };
    stepper.abort();
    server.shutdown().await?;
    Ok(code)
}

const DEV_ACCESS_KEY: &str = "flockd-dev";

/// The `CLEARML_*` variables a clearml SDK or agent needs to talk to `dev`'s
/// server, as `export` lines ready to paste. The secret itself appears only
/// when it is the built-in development secret (which serves loopback only);
/// a secret given by reference is pasted as that reference.
fn clearml_env_block(url: &str, secret: Option<&SecretRef>) -> String {
    let secret = match secret {
        None => DEV_SECRET.to_string(),
        Some(SecretRef::Env(name)) => format!("\"${name}\""),
        Some(SecretRef::File(path)) => format!("\"$(cat '{}')\"", path.display().to_string().replace('\'', "'\\''")),
    };
    format!(
        "  export CLEARML_API_HOST={url}\n  export CLEARML_WEB_HOST={url}\n  export CLEARML_FILES_HOST={url}\n  export CLEARML_API_ACCESS_KEY={DEV_ACCESS_KEY}\n  export CLEARML_API_SECRET_KEY={secret}\n"
    )
}

fn write_key(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("clearml-dev-access-key");
    write_private(&path, DEV_ACCESS_KEY)?;
    Ok(path)
}

fn write_private(path: &std::path::Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(value.as_bytes())?;
    Ok(())
}

/// A sample workload: a burst on `cpu`, then work on `gpu`; the fleet must
/// scale up for it and back down to nothing once it is done.
async fn demo(
    config: &crate::config::Config,
    source: Arc<dyn QueueSource>,
    providers: crate::providers::Providers,
    server: &flockd_clearml::server::ServerHandle,
    world: &Arc<SimWorld>,
) -> anyhow::Result<ExitCode> {
    let started = crate::run::start(config, source, providers).await?;
    let controller = started.controller.clone();
    let interval = config.poll_interval();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut enqueued = 0;
    let plan: &[(u64, &str, usize)] = &[(0, "cpu", 4), (2, "gpu", 3), (6, "cpu", 2)];
    let begin = Instant::now();
    let (mut peak, mut launched, mut terminated) = (0usize, 0usize, 0usize);
    let mut last_line = String::new();
    println!("demo: enqueueing 9 tasks; watch machines boot, take them, idle and shut down");
    loop {
        let elapsed = begin.elapsed().as_secs();
        for (at, queue, n) in plan {
            if *at <= elapsed
                && enqueued < plan.iter().take_while(|(a, _, _)| a <= at).map(|(_, _, n)| n).sum::<usize>()
            {
                for i in 0..*n {
                    let task = server.create_task(&format!("demo {queue} task {}", enqueued + i + 1))?;
                    server.enqueue(&task, queue)?;
                }
                enqueued += n;
            }
        }
        let record = controller.tick().await;
        launched += record.launched();
        terminated += record.terminated();
        let alive = world.alive();
        peak = peak.max(alive);
        let done = server.tasks().iter().filter(|t| t.status == "completed").count();
        let line = format!(
            "t={:>3}s  queued: {}  machines: {}  tasks done: {done}/{enqueued}",
            begin.elapsed().as_secs(),
            record.queues.iter().map(|q| format!("{}={}", q.name, q.pending)).collect::<Vec<_>>().join(" "),
            describe_fleet(&controller),
        );
        if line[8..] != last_line.get(8..).unwrap_or_default()[..] {
            println!("{line}");
        }
        last_line = line;
        for action in &record.actions {
            println!("        {}", describe_action(action));
        }
        if enqueued == 9 && done == 9 && alive == 0 {
            println!(
                "demo done in {} s: 9 tasks finished, {launched} machines launched (peak {peak}), {terminated} terminated, 0 left running",
                begin.elapsed().as_secs()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            eprintln!("demo did not finish within 240 s: {done}/9 tasks done, {alive} machines alive");
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(interval).await;
    }
}

fn describe_fleet(controller: &flockd_core::Controller) -> String {
    let Some((snapshot, _)) = controller.last() else { return "?".into() };
    let count = |f: &dyn Fn(&flockd_core::Instance) -> bool| snapshot.instances.iter().filter(|i| f(i)).count();
    format!(
        "{} booting, {} busy, {} idle, {} stopping",
        count(&|i| i.state == InstanceState::Booting),
        count(&|i| i.state == InstanceState::Running && i.busy),
        count(&|i| i.state == InstanceState::Running && !i.busy),
        count(&|i| i.state == InstanceState::Stopping),
    )
}

fn describe_action(action: &flockd_core::Action) -> String {
    match action {
        flockd_core::Action::Launch { resource, reason, outcome, instance, .. } => {
            format!("launch {resource} → {} ({outcome:?}): {reason}", instance.as_deref().unwrap_or("-"))
        }
        flockd_core::Action::Terminate { instance, reason, outcome, .. } => {
            format!("terminate {instance} ({outcome:?}): {reason}")
        }
    }
}

/// Simulated machines' agents, acting on the in-process ClearML server
/// through the same endpoints `clearml-agent` calls.
struct ServerAgents {
    server: flockd_clearml::server::ServerHandle,
    task_ms: u64,
}

impl ServerAgents {
    fn queue_ids(&self, queues: &[String]) -> Vec<String> {
        queues.iter().filter_map(|q| self.server.queue_id(q)).collect()
    }
}

impl Agents for ServerAgents {
    fn register(&self, worker: &str, queues: &[String], _now: u64) {
        if let Err(e) =
            self.server.call("workers.register", json!({ "worker": worker, "queues": self.queue_ids(queues) }))
        {
            tracing::warn!(worker, "simulated agent could not register: {e:#}");
        }
    }

    fn pull(&self, worker: &str, queues: &[String], now: u64) -> Option<PulledTask> {
        for queue in self.queue_ids(queues) {
            let Ok(data) = self.server.call("queues.get_next_task", json!({ "queue": queue })) else { continue };
            let Some(task) = data["entry"]["task"].as_str().map(str::to_string) else { continue };
            let _ = self.server.call("tasks.started", json!({ "task": task }));
            let _ = self.server.call(
                "workers.status_report",
                json!({ "worker": worker, "timestamp": now, "task": task, "queue": queue, "queues": self.queue_ids(queues) }),
            );
            return Some(PulledTask { id: task, duration_ms: self.task_ms });
        }
        None
    }

    fn finish(&self, worker: &str, task: &str, now: u64) {
        let _ = self.server.call("tasks.completed", json!({ "task": task }));
        let _ = self.server.call("workers.status_report", json!({ "worker": worker, "timestamp": now }));
    }

    fn requeue(&self, _worker: &str, task: &str, _now: u64) {
        let queue = self.server.task(task).and_then(|t| t.queue);
        let _ = self.server.call("tasks.stopped", json!({ "task": task }));
        if let Some(queue) = queue {
            let _ = self.server.call("tasks.enqueue", json!({ "task": task, "queue": queue }));
        }
    }

    fn unregister(&self, _worker: &str, _now: u64) {
        // A machine that vanished sends nothing: like the real server, this
        // one keeps the worker until it times out, unless flockd
        // unregisters it (which it does for machines it terminates).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_block_holds_only_the_builtin_secret_and_pastes_references_as_such() {
        let url = "http://127.0.0.1:8008";
        let builtin = clearml_env_block(url, None);
        assert!(builtin.contains("export CLEARML_API_HOST=http://127.0.0.1:8008\n"), "{builtin}");
        assert!(builtin.contains(&format!("export CLEARML_API_SECRET_KEY={DEV_SECRET}\n")), "{builtin}");
        let env = clearml_env_block(url, Some(&SecretRef::Env("MY_SECRET".into())));
        assert!(env.contains("export CLEARML_API_SECRET_KEY=\"$MY_SECRET\"\n"), "{env}");
        assert!(!env.contains(DEV_SECRET), "{env}");
        let file = clearml_env_block(url, Some(&SecretRef::File("/run/it's".into())));
        assert!(file.contains(r#"export CLEARML_API_SECRET_KEY="$(cat '/run/it'\''s')""#), "{file}");
    }
}
