//! A real flockd for the HTTP tests: the config's policy chain, the on-disk
//! store, the controller ticking in real time against a simulated cloud and
//! queue, and the HTTP server on a free loopback port.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flockd::config::Config;
use flockd::http::HttpServer;
use flockd_core::{Clock, CloudProvider, Controller, QueueSource, SystemClock};
use flockd_sim::{SimProviderSettings, SimQueue, SimResourceSettings, SimWorld};
use flockd_wasm::PolicyRuntime;

/// One queue `cpu` served by resource `cpu` on a simulated provider whose
/// machines take an hour to boot, so a launched one stays "booting".
pub const CONFIG: &str = r#"
cluster = "web"
poll-interval-secs = 0.2
state-dir = "state"

[limits]
max-instances = 4
max-cost-per-hour = 10.0

[provider.sim]
kind = "simulated"

[[queue]]
name = "cpu"
resources = ["cpu"]

[resource.cpu]
provider = "sim"
max-instances = 2
price-per-hour = 0.5

[resource.cpu.simulated]
boot-secs = 3600

[policies]
dir = "policies"

[http]
listen = "127.0.0.1:0"
"#;

pub struct Flockd {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub controller: Arc<Controller>,
    pub policies: Arc<PolicyRuntime>,
    pub queue: SimQueue,
    pub http: Option<HttpServer>,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ticking: Option<std::thread::JoinHandle<()>>,
    stepper: tokio::task::JoinHandle<()>,
    _reloader: Option<flockd_wasm::Reloader>,
}

impl Flockd {
    /// Starts everything; `extra` is appended to [`CONFIG`].
    pub async fn start(extra: &str) -> Flockd {
        Flockd::start_booting_in(extra, 3600.0).await
    }

    /// [`Flockd::start`] with machines that boot in `boot_secs` (and then
    /// take tasks).
    pub async fn start_booting_in(extra: &str, boot_secs: f64) -> Flockd {
        Flockd::start_in(tempfile::tempdir().unwrap(), extra, boot_secs).await
    }

    /// In `dir`, whose store a stopped flockd may have left (a restart).
    pub async fn start_in(dir: tempfile::TempDir, extra: &str, boot_secs: f64) -> Flockd {
        let config =
            Config::parse(&format!("{CONFIG}\n{extra}"), &dir.path().join("flockd.toml")).expect("test config");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let queue = SimQueue::new(clock.clone());
        let world = SimWorld::new(clock, Arc::new(queue.clone()));
        let resources = [("cpu".to_string(), SimResourceSettings { boot_secs, ..Default::default() })].into();
        let cloud = world.cloud("sim", &SimProviderSettings::default(), &resources).unwrap();
        let stepper = world.spawn_stepper(Duration::from_millis(50));
        let providers =
            flockd::providers::ProviderMap::from([("sim".to_string(), Arc::new(cloud) as Arc<dyn CloudProvider>)]);
        let providers = providers.into();
        let source: Arc<dyn QueueSource> = Arc::new(queue.clone());
        let started = flockd::run::start(&config, source, providers).await.expect("start flockd");
        let http =
            HttpServer::start(&config, started.controller.clone(), started.policies.clone()).await.expect("start HTTP");
        let url = format!("http://{}", http.addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = started.controller.clone();
        let interval = config.poll_interval();
        // The tick future is not `Send` for every lifetime tokio::spawn asks
        // for (its launch stream borrows), so it gets a thread of its own,
        // as it has the main thread in `flockd run`.
        let ticking = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(controller.run(interval, async {
                let _ = stopped.await;
            }))
        });
        Flockd {
            dir,
            config,
            controller: started.controller,
            policies: started.policies,
            queue,
            http: Some(http),
            url,
            stop: Some(stop),
            ticking: Some(ticking),
            stepper,
            _reloader: started.reloader,
        }
    }

    pub fn enqueue(&self, queue: &str) -> String {
        self.queue.enqueue(queue, SystemClock.now(), 600_000)
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Stops, handing back the folder with the store for a restart.
    pub async fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        self.shut_down().await;
        let empty = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, empty)
    }

    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.ticking.take() {
            tokio::task::spawn_blocking(move || t.join()).await.unwrap().expect("the ticking thread panicked");
        }
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
        self.stepper.abort();
    }
}

/// Polls `check` every 100 ms until it returns Some, or panics after `limit`.
pub async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new version of a built-in policy: the same code with a custom section
/// appended, so its digest differs and the reloader loads it as new.
pub fn rebuilt_builtin(name: &str, tag: &str) -> Vec<u8> {
    let mut bytes = flockd_wasm::builtin::component(name).expect("built-in policy").to_vec();
    let section_name = b"flockd-test";
    let mut payload = vec![section_name.len() as u8];
    payload.extend_from_slice(section_name);
    payload.extend_from_slice(tag.as_bytes());
    bytes.push(0); // custom section id
    leb128(&mut bytes, payload.len());
    bytes.extend_from_slice(&payload);
    bytes
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes a policy file the way operators should: elsewhere, then rename.
pub fn publish(path: &std::path::Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let staging = path.with_extension("partial");
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(&staging, path).unwrap();
}
