//! The flockd binary's library: configuration, the command line, and the
//! wiring of queue sources, cloud providers and the policy runtime into the
//! controller from `flockd-core`.

pub mod agent;
pub mod check;
pub mod cli;
pub mod config;
pub mod dev;
pub mod http;
pub mod journal_cli;
pub mod policy_cases;
pub mod policy_cli;
pub mod providers;
pub mod run;
pub mod simulate;
pub mod store;
pub mod toml_location;
