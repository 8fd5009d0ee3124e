//! The example policies in Rust, Python and JavaScript on one realistic
//! snapshot (50 queues, 200 instances): compile time cold and from the
//! on-disk cache, call latency (instantiate + configure + decide, as the
//! chain calls it), and resident memory. Figures go to BENCHMARKS.md.
//!
//!   cargo bench -p flockd-tests --bench policy_languages          (release)
//!   cargo test -p flockd-tests --bench policy_languages -- --bench (debug, as the tests run)

#[path = "../tests/example_policies/mod.rs"]
mod example_policies;

use std::sync::Arc;
use std::time::{Duration, Instant};

use example_policies::{JS, PYTHON, RUST};
use flockd_core::Plan;
use flockd_tests::policy::fleet_snapshot;
use flockd_wasm::{CacheOutcome, CallLimits, Chain, CompileCache, Origin, PolicyEngine, PolicyRuntime, loader};

const CALLS: usize = 200;

fn main() {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("policy languages ({profile} build), snapshot 50 queues / 200 instances, {CALLS} calls each");
    println!(
        "| policy | size | compile (cold) | load (cache hit) | call p50 | call p99 | call max | RSS after compile + calls |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let snapshot = fleet_snapshot(50, 200);
    for (name, example, settings) in [
        ("Rust night-freeze", &RUST, r#"{"queues":["queue-0000"]}"#),
        ("Python warm-pool", &PYTHON, r#"{"resource":"gpu-0000-spot","warm":2,"utc-offset-minutes":-600}"#),
        ("JS cheapest-first", &JS, "{}"),
    ] {
        let bytes = example.bytes();
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let rss_before = rss_bytes();

        // A generous deadline: this measures how long calls take, it does
        // not judge them.
        let limits = CallLimits { timeout: Duration::from_secs(5), ..CallLimits::default() };
        let engine = PolicyEngine::new(limits)
            .expect("engine")
            .with_compile_cache(CompileCache::open(cache_dir.path()).expect("cache"));
        let started = Instant::now();
        let (_, outcome) = engine.compile_cached(&bytes).expect("compiles");
        let cold = started.elapsed();
        assert_eq!(outcome, Some(CacheOutcome::Miss));

        // A restart: a new engine, same cache folder.
        let engine = Arc::new(
            PolicyEngine::new(limits)
                .expect("engine")
                .with_compile_cache(CompileCache::open(cache_dir.path()).expect("cache")),
        );
        let started = Instant::now();
        let (_, outcome) = engine.compile_cached(&bytes).expect("loads");
        let hit = started.elapsed();
        assert_eq!(outcome, Some(CacheOutcome::Hit));

        let policy = loader::compile(&engine, name, Origin::File(example.path().into()), &bytes)
            .expect("loads")
            .with_settings(settings);
        let runtime = PolicyRuntime::new(engine.clone(), Chain::default());
        let mut times = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let (result, report) = runtime.trial(&policy, &snapshot, &Plan::default());
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
            times.push(report.elapsed);
        }
        times.sort();
        let rss_after = rss_bytes();
        println!(
            "| {name} | {:.1} MB | {} | {} | {} | {} | {} | +{:.0} MB |",
            bytes.len() as f64 / 1e6,
            ms(cold),
            ms(hit),
            ms(times[CALLS / 2]),
            ms(times[CALLS * 99 / 100]),
            ms(times[CALLS - 1]),
            (rss_after.saturating_sub(rss_before)) as f64 / 1e6,
        );
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 { format!("{ms:.0} ms") } else { format!("{ms:.2} ms") }
}

/// Resident set size of this process (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}
