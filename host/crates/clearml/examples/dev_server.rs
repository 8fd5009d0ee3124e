//! Runs the ClearML-compatible server in the foreground, for poking at it
//! with the real SDK or agent: `cargo run -p flockd-clearml --example dev_server -- 127.0.0.1:8008`.
//! Credentials: access key `flockd-dev`, secret `dev-secret` (not a real credential,
//! so the server refuses an address beyond loopback).

use flockd_clearml::secret::Secret;
use flockd_clearml::server::{ClearmlServer, ServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8008".into()).parse()?;
    let mut config = ServerConfig::new(listen, "flockd-dev", Secret::new("dev-secret"));
    config.persist_path = std::env::args().nth(2).map(Into::into);
    let server = ClearmlServer::start(config).await?;
    println!("ClearML-compatible server on {}", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await
}
