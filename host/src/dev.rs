//! `flockd dev-server` and `flockd dev`: everything on one machine, no cloud
//! account needed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use flockd_clearml::secret::{Secret, SecretRef};
use flockd_clearml::server::{ClearmlServer, ServerConfig};

/// The secret `flockd dev` uses when none is given. It protects nothing but
/// a loopback development server.
pub const DEV_SECRET: &str = "flockd-dev-secret";

pub async fn dev_server(listen: SocketAddr, access_key: String, secret_key: Option<String>, persist: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let secret = match secret_key {
        Some(r) => r.parse::<SecretRef>()?.resolve()?,
        None => Secret::new(DEV_SECRET),
    };
    let mut config = ServerConfig::new(listen, access_key, secret);
    config.persist_path = persist;
    let server = ClearmlServer::start(config).await?;
    println!("ClearML-compatible API server on http://{}", server.addr());
    crate::run::shutdown_signal().await;
    server.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
