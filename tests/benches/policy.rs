//! Policy runtime figures (BENCHMARKS.md, "Policy runtime (issue 2)"):
//!
//! 1. `decide` of the default chain (the four built-ins) at 50 queues / 200
//!    instances and 1,000 queues / 10,000 instances, p50/p99, with each
//!    policy's share;
//! 2. the fixed cost of one call: a trivial policy (good-v1) on an empty
//!    snapshot, i.e. instantiate + configure + decide, and its parts;
//! 3. file change → new version live through the real `Reloader` (default
//!    debounce), p50 of 20 swaps, from the rename to the chain digest change;
//! 4. resident memory (VmRSS) of a fresh process with the default chain
//!    loaded and one decision made.
//!
//! `cargo bench -p flockd-tests --bench policy [-- chain|call|swap|rss]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use flockd_core::{Decider, Plan, Snapshot};
use flockd_tests::policy::{fixture, fleet_snapshot, policy_dir, publish, read};
use flockd_wasm::reload::DEFAULT_DEBOUNCE;
use flockd_wasm::{CallLimits, Chain, Origin, PolicyEngine, PolicyRuntime, PolicySpec, Reloader, load_chain, loader};

const RSS_CHILD: &str = "FLOCKD_BENCH_RSS_CHILD";

fn main() {
    if std::env::var_os(RSS_CHILD).is_some() {
        rss_child();
        return;
    }
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if wants("rss") {
        rss();
    }
    if wants("call") {
        fixed_call_cost();
    }
    if wants("chain") {
        chain_decide(50, 200, 3_000);
        chain_decide(1_000, 10_000, 60);
    }
    if wants("swap") {
        swap_latency(20);
    }
}

/// Production limits but a deadline that never cuts a benchmark call short
/// (whether the production deadline holds is reported, not assumed).
fn generous() -> CallLimits {
    CallLimits { timeout: Duration::from_secs(10), ..CallLimits::default() }
}

fn default_chain() -> Arc<PolicyRuntime> {
    let engine = Arc::new(PolicyEngine::new(generous()).unwrap());
    let specs: Vec<PolicySpec> = flockd_wasm::builtin::names().map(PolicySpec::builtin).collect();
    Arc::new(PolicyRuntime::new(engine.clone(), load_chain(&engine, &specs).unwrap()))
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Stats { p50: at(0.50), p99: at(0.99), mean }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn chain_decide(queues: usize, instances: usize, iterations: usize) {
    let runtime = default_chain();
    let snapshot = Arc::new(fleet_snapshot(queues, instances));
    let warm = runtime.decide(&snapshot);
    for run in &warm.runs {
        assert_eq!(run.error, None, "{} failed on the benchmark snapshot", run.policy);
    }
    let names: Vec<String> = warm.runs.iter().map(|r| r.policy.clone()).collect();
    let mut totals = Vec::with_capacity(iterations);
    let mut per_policy: Vec<Vec<Duration>> = vec![Vec::with_capacity(iterations); names.len()];
    for _ in 0..iterations {
        let started = Instant::now();
        let decision = runtime.decide(&snapshot);
        totals.push(started.elapsed());
        for (i, run) in decision.runs.iter().enumerate() {
            per_policy[i].push(Duration::from_micros(run.micros));
        }
    }
    // The same snapshot converted once, to separate the host's conversion.
    let started = Instant::now();
    for _ in 0..iterations.min(200) {
        std::hint::black_box(snapshot_to_wit_cost(&snapshot));
    }
    let convert = started.elapsed() / iterations.min(200) as u32;
    let s = stats(totals);
    println!(
        "chain decide   {queues:>5} queues / {instances:>6} instances: p50 {}  p99 {}  mean {}  ({} calls; plan: {} launches, {} terminations)",
        us(s.p50),
        us(s.p99),
        us(s.mean),
        iterations,
        warm.plan.total_launches(),
        warm.plan.terminations.len()
    );
    for (name, samples) in names.iter().zip(per_policy) {
        let max = samples.iter().max().copied().unwrap_or_default();
        let s = stats(samples);
        println!("    {name:<16} p50 {}  p99 {}  max {}", us(s.p50), us(s.p99), us(max));
    }
    println!("    (snapshot JSON encode, for scale: {})", us(convert));
}

/// A stand-in for the size of the snapshot: its JSON encoding.
fn snapshot_to_wit_cost(snapshot: &Snapshot) -> usize {
    serde_json::to_vec(snapshot).unwrap().len()
}

fn fixed_call_cost() {
    let engine = Arc::new(PolicyEngine::new(generous()).unwrap());
    let bytes = read(fixture::GOOD_V1);
    let started = Instant::now();
    let policy = loader::compile(&engine, "good-v1", Origin::File(fixture::GOOD_V1.into()), &bytes).unwrap();
    let compile = started.elapsed();
    let runtime = PolicyRuntime::new(engine, Chain::default());
    let empty = Snapshot::default();
    let mut samples = Vec::with_capacity(5_000);
    for i in 0..5_500 {
        let started = Instant::now();
        let (result, _) = runtime.trial(&policy, &empty, &Plan::default());
        let elapsed = started.elapsed();
        result.unwrap();
        if i >= 500 {
            samples.push(elapsed);
        }
    }
    let fixed = stats(samples);
    // The same trivial policy on the benchmark snapshots: what moving the
    // snapshot into a fresh instance costs, before any policy logic.
    for (queues, instances, iterations) in [(50, 200, 2_000), (1_000, 10_000, 40)] {
        let snapshot = fleet_snapshot(queues, instances);
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let (result, _) = runtime.trial(&policy, &snapshot, &Plan::default());
            samples.push(started.elapsed());
            result.unwrap();
        }
        let s = stats(samples);
        println!(
            "trivial policy (good-v1) on {queues} queues / {instances} instances: p50 {}  p99 {}",
            us(s.p50),
            us(s.p99)
        );
    }
    let s = fixed;
    println!(
        "fixed call cost (good-v1, empty snapshot: instantiate + configure + decide): p50 {}  p99 {}  mean {}  (compile once: {:.1} ms)",
        us(s.p50),
        us(s.p99),
        us(s.mean),
        compile.as_secs_f64() * 1e3
    );
}

fn swap_latency(swaps: usize) {
    let (_keep, dir) = policy_dir();
    let file = dir.join("swap.wasm");
    let versions = [read(fixture::GOOD_V1), read(fixture::GOOD_V2)];
    let digests = [loader::digest(&versions[0]), loader::digest(&versions[1])];
    publish(&file, &versions[0]);
    let engine = Arc::new(PolicyEngine::new(CallLimits::default()).unwrap());
    let specs = vec![PolicySpec {
        name: "swap".into(),
        builtin: None,
        file: Some(file.clone()),
        settings: serde_json::json!({}),
    }];
    let runtime = Arc::new(PolicyRuntime::new(engine.clone(), load_chain(&engine, &specs).unwrap()));
    let _reloader = Reloader::start(runtime.clone(), specs, DEFAULT_DEBOUNCE).unwrap();
    let mut samples = Vec::with_capacity(swaps);
    for swap in 1..=swaps {
        let next = swap % 2;
        let started = Instant::now();
        publish(&file, &versions[next]);
        let deadline = started + Duration::from_secs(10);
        while runtime.chain().policies[0].digest != digests[next] {
            assert!(Instant::now() < deadline, "swap {swap} never went live");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(started.elapsed());
    }
    let s = stats(samples);
    println!(
        "file change → new version live (Reloader, debounce {} ms, {swaps} swaps): p50 {:.1} ms  p99 {:.1} ms",
        DEFAULT_DEBOUNCE.as_millis(),
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3
    );
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs in a fresh child process so nothing else this benchmark did counts.
fn rss_child() {
    let before = vm_rss_kib();
    let runtime = default_chain();
    let loaded = vm_rss_kib();
    let decision = runtime.decide(&Arc::new(fleet_snapshot(50, 200)));
    assert!(decision.runs.iter().all(|r| r.error.is_none()));
    let decided = vm_rss_kib();
    // What of that is heap the compiler freed but glibc kept.
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { malloc_trim(0) };
    println!("{before} {loaded} {decided} {}", vm_rss_kib());
}

fn rss() {
    let out = std::process::Command::new(std::env::current_exe().unwrap()).env(RSS_CHILD, "1").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let kib: Vec<u64> = text.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "resident memory (VmRSS): {:.1} MiB at start, {:.1} MiB with the default chain compiled, {:.1} MiB after one decision at 50/200, {:.1} MiB after malloc_trim",
        mib(kib[0]),
        mib(kib[1]),
        mib(kib[2]),
        mib(kib[3])
    );
}
