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
//! # Bootstrap
//!
//! [`bootstrap::render_startup_script`] renders a bash script that works as
//! EC2 user data and as a GCE `startup-script`; check it with
//! [`bootstrap::check_user_data_size`] before handing it to EC2.

pub mod bootstrap;
pub mod client;
pub mod secret;
pub mod server;
pub mod token;
pub mod wire;

pub use client::{ClearmlClient, ClearmlConfig, ClearmlError};
pub use server::{ClearmlServer, RunningServer, ServerConfig, ServerHandle};
