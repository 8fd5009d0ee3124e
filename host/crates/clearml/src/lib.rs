//! flockd's ClearML side.
//!
//! - [`client`]: [`ClearmlClient`], the API client flockd runs against a real
//!   ClearML server. It logs in with an access/secret key pair, refreshes its
//!   token before expiry and once on a 401, retries 429/502/503/504/509 and
//!   timeouts a bounded number of times, and implements
//!   [`flockd_core::QueueSource`] in two API calls per observation.
//! - [`server`]: [`ClearmlServer`], a ClearML-compatible API server that the
//!   real `clearml` SDK and `clearml-agent` talk to; it backs `flockd dev` and
//!   the tests.
//! - [`bootstrap`]: the start-up script a launched machine runs to become a
//!   `clearml-agent` worker whose id carries its instance id.
//! - [`secret`]: `env:NAME` / `file:PATH` credential references.
//!
//! # Client
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use flockd_clearml::{ClearmlClient, ClearmlConfig, secret::SecretRef};
//! use flockd_core::QueueSource;
//!
//! let config = ClearmlConfig::new(
//!     "https://api.clear.ml",
//!     "env:CLEARML_API_ACCESS_KEY".parse()?,
//!     "env:CLEARML_API_SECRET_KEY".parse()?,
//! );
//! let client = ClearmlClient::new(&config)?; // resolves the secrets, no network yet
//! client.ensure_queues(&["gpu".into()], false).await?; // fails listing missing queues
//! let observation = client.observe(&["gpu".into()]).await?;
//! # Ok(()) }
//! ```
//!
//! # Server
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use flockd_clearml::server::{ClearmlServer, ServerConfig};
//! use flockd_clearml::secret::Secret;
//!
//! let mut config = ServerConfig::new("127.0.0.1:8008".parse()?, "flockd-dev", Secret::new("dev-secret"));
//! config.persist_path = Some("clearml-state.json".into());
//! let server = ClearmlServer::start(config).await?;
//! let handle = server.handle(); // in-process API
//! handle.create_queue("cpu")?;
//! let task = handle.create_task("train")?;
//! handle.enqueue(&task, "cpu")?;
//! assert_eq!(handle.queue_depth("cpu"), Some(1));
//! server.shutdown().await?; // graceful, final state flush
//! # Ok(()) }
//! ```
//!
//! The server answers every call the `clearml` SDK 2.1.12 and `clearml-agent`
//! 3.0.3 make to create, enqueue, pull, run and finish a task and to
//! register, report and unregister a worker (proven by the tests in
//! `tests/real_clients.rs`). Any `/vX.Y/` prefix or none, GET with a JSON
//! body, the meta/data envelope on every answer. An endpoint it does not
//! know answers 404 in the envelope, is logged, and is listed by
//! [`ServerHandle::unknown_endpoints`]. The in-process API
//! ([`ServerHandle`]): `call(endpoint, body)` for any endpoint, plus
//! `create_queue`, `queue_id`, `queue_depth`, `create_task`, `enqueue`,
//! `tasks`, `task`, `workers`, `revoke_tokens`.
//!
//! Logging in lets a client have tasks run, so a server whose secret is
//! written in code ([`ServerConfig::new`], [`SecretSource::BuiltIn`]) serves
//! on loopback only; [`ServerConfig::with_secret_ref`] (a secret by `env:` /
//! `file:` reference) may listen anywhere. Keys are compared in constant
//! time; a bad request field is a 400 naming it; a handler that panics (a
//! bug) gets its request a 500 and leaves the state usable.
//!
//! # Bootstrap
//!
//! ```no_run
//! # fn demo() -> Result<(), flockd_clearml::bootstrap::BootstrapError> {
//! use flockd_clearml::bootstrap::*;
//! use flockd_clearml::secret::Secret;
//!
//! let mut settings = BootstrapSettings::new(
//!     "https://api.clear.ml", "https://app.clear.ml", "https://files.clear.ml",
//!     Secret::new("resolved access key"), Secret::new("resolved secret key"),
//! );
//! settings.docker_image = Some("nvidia/cuda:12.4.1-runtime-ubuntu22.04".into());
//! let prefix = flockd_core::naming::worker_id_prefix("prod", "gpu-spot");
//! let script = render_startup_script(&settings, &["gpu".into(), "gpu-high".into()], &prefix)?;
//! check_user_data_size(&script, EC2_USER_DATA_LIMIT)?; // EC2 only
//! # Ok(()) }
//! ```
//!
//! The script powers the machine off when the agent exits or anything
//! before it fails. For that to end the machine's billing, the provider must
//! launch EC2 instances with `InstanceInitiatedShutdownBehavior=terminate`
//! (a stopped instance still costs its disks), and on GCE treat a
//! `TERMINATED` (stopped) instance as gone and delete it. On GCE the worker
//! id carries the instance *name*; on EC2 the `i-…` id.

pub mod bootstrap;
pub mod client;
pub mod secret;
pub mod server;
pub mod token;
pub mod wire;

pub use client::{ClearmlClient, ClearmlConfig, ClearmlError};
pub use server::{ClearmlServer, RunningServer, SecretSource, ServerConfig, ServerHandle};
