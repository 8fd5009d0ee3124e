//! The SIGKILL rounds of aws_e2e, as many as you like (a few minutes per
//! hundred):
//!
//!     cargo build -p flockd
//!     ROUNDS=200 SEED=7 cargo test -p flockd-tests --test aws_soak -- --ignored --nocapture

mod aws_harness;
mod aws_rounds;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored (ROUNDS, SEED)"]
async fn soak_sigkill_rounds() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    aws_rounds::run("soak", env("ROUNDS", 100) as usize, env("SEED", 1)).await;
}
