//! The flockd binary's library: configuration, the command line, and the
//! wiring of queue sources, cloud providers and the policy runtime into the
//! controller from `flockd-core`.

pub mod cli;
pub mod policy_cli;
