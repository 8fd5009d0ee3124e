//! Policies in other languages (issue 7): the Rust, Python and JavaScript
//! examples build from their folders, pass their own case files, hot-swap into a
//! running chain without holding up a tick while they compile, come back
//! from the compile cache after a restart, and are still stopped by their
//! deadline.

mod example_policies;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use example_policies::{Example, JS, PYTHON, RUST};
use flockd::policy_cases::{CaseFile, PolicyRef, run_file};
use flockd_core::{Decider, Plan};
use flockd_tests::policy::{fleet_snapshot, policy_dir, poll_until, publish};
use flockd_wasm::{
    CacheOutcome, CallError, CallLimits, CompileCache, Origin, PolicyEngine, PolicyRuntime, PolicySpec, Reloader,
    load_chain, loader,
};

/// Settings the Python example accepts on `fleet_snapshot`.
const WARM_POOL_SETTINGS: &str = r#"{"resource": "gpu-0000-spot", "warm": 2}"#;

/// An engine for behaviour tests: compiled examples cached under target/
/// (so only the first run compiles), and a deadline that a debug build on a
/// busy machine cannot miss; the deadline itself is tested below.
fn case_engine() -> Arc<PolicyEngine> {
    let cache = case_engine_cache();
    let limits = CallLimits { timeout: Duration::from_secs(2), ..CallLimits::default() };
    Arc::new(PolicyEngine::new(limits).expect("engine").with_compile_cache(cache))
}

/// Runs an example's shipped cases.toml against the component its build.sh made.
fn assert_cases_pass(example: &Example, at_least: usize) {
    let mut file = CaseFile::read(&example.cases()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&file.policy, PolicyRef::File(p) if p.ends_with(example.component)),
        "cases.toml names the built component {}: {:?}",
        example.component,
        file.policy
    );
    file.policy = PolicyRef::File(example.path().to_path_buf());
    let outcome = run_file(&case_engine(), &file).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.cases.len() >= at_least, "{} cases, expected at least {at_least}", outcome.cases.len());
    assert!(outcome.all_passed(), "{}", outcome.render());
}

#[test]
fn the_rust_example_passes_its_cases() {
    assert_cases_pass(&RUST, 6);
}

#[test]
fn the_python_example_passes_its_cases() {
    assert_cases_pass(&PYTHON, 15);
}

#[test]
fn the_js_example_passes_its_cases() {
    assert_cases_pass(&JS, 8);
}

/// A Python policy working far longer than its deadline (a fleet 25 times
/// the usual size, a 2 ms deadline) is stopped mid-run, by its own
/// per-policy deadline; with the default deadline the same call completes.
#[test]
fn a_python_policy_past_its_own_deadline_is_stopped() {
    let bytes = PYTHON.bytes();
    let huge = fleet_snapshot(500, 5000);
    let generous = CallLimits { timeout: Duration::from_secs(20), ..CallLimits::default() };
    let cache = case_engine_cache();
    let engine = Arc::new(
        PolicyEngine::new(generous)
            .expect("engine")
            .with_compile_cache(cache)
            .with_timeout_for("warm-pool", Duration::from_millis(2)),
    );
    let runtime = PolicyRuntime::new(engine.clone(), Default::default());
    let origin = Origin::File(PYTHON.path().into());

    let tight = loader::compile(&engine, "warm-pool", origin.clone(), &bytes)
        .expect("compiles")
        .with_settings(WARM_POOL_SETTINGS);
    let (result, report) = runtime.trial(&tight, &huge, &Plan::default());
    assert_eq!(result.expect_err("stopped"), CallError::Timeout(Duration::from_millis(2)));
    assert!(
        report.elapsed < Duration::from_secs(20),
        "stopped by its own deadline, not the engine's: {:?}",
        report.elapsed
    );

    let other =
        loader::compile(&engine, "no-override", origin, &bytes).expect("compiles").with_settings(WARM_POOL_SETTINGS);
    let (result, _) = runtime.trial(&other, &huge, &Plan::default());
    result.expect("the same call completes under the engine's deadline");
}

fn case_engine_cache() -> CompileCache {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| example_policies::repo().join("target"));
    CompileCache::open(target.join("example-policies/cache")).expect("compile cache under target/")
}

/// What one tick of the decide loop saw.
struct Tick {
    started: Instant,
    took: Duration,
    policies: Vec<String>,
    errors: Vec<String>,
}

/// The four built-ins decide in a loop (every 10 ms, like a controller on a
/// short interval) while the Python example is dropped into the watched
/// folder. It goes live once compiled, and the loop never waited for it:
/// every tick during the compile ran the old chain promptly. Then a
/// restart finds it compiled in the cache.
#[test]
fn a_python_policy_hot_swaps_in_without_holding_up_a_tick_and_survives_a_restart() {
    let bytes = PYTHON.bytes();
    let (_dir, folder) = policy_dir();
    let cache_dir = tempfile::tempdir().expect("tempdir");
    // A fresh cache: the swap below really compiles (seconds), and fills it.
    let new_engine = || {
        Arc::new(
            PolicyEngine::new(CallLimits::default())
                .expect("engine")
                .with_compile_cache(CompileCache::open(cache_dir.path()).expect("cache"))
                .with_timeout_for("warm-pool", Duration::from_secs(1)),
        )
    };
    let builtins: Vec<PolicySpec> = flockd_wasm::builtin::names().map(PolicySpec::builtin).collect();
    let warm_pool = PolicySpec {
        name: "warm-pool".into(),
        builtin: None,
        file: Some(folder.join("warm-pool.wasm")),
        settings: serde_json::from_str(WARM_POOL_SETTINGS).unwrap(),
    };
    let specs: Vec<PolicySpec> = builtins.iter().cloned().chain([warm_pool.clone()]).collect();

    let engine = new_engine();
    let runtime = Arc::new(PolicyRuntime::new(engine.clone(), load_chain(&engine, &builtins).expect("built-ins load")));
    let _reloader =
        Reloader::start(runtime.clone(), specs.clone(), Duration::from_millis(50)).expect("watch the folder");

    let snapshot = Arc::new(fleet_snapshot(10, 40));
    let ticks = Arc::new(Mutex::new(Vec::<Tick>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (runtime, snapshot, ticks, stop) = (runtime.clone(), snapshot.clone(), ticks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let decision = runtime.decide(&snapshot);
                let took = started.elapsed();
                ticks.lock().unwrap().push(Tick {
                    started,
                    took,
                    policies: decision.runs.iter().map(|r| r.policy.clone()).collect(),
                    errors: decision.runs.iter().filter_map(|r| r.error.clone()).collect(),
                });
                // The controller's interval, not a wait for anything.
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    poll_until(Duration::from_secs(10), "the first tick", || (!ticks.lock().unwrap().is_empty()).then_some(()));

    let published = Instant::now();
    let published_at = SystemTime::now();
    publish(&folder.join("warm-pool.wasm"), &bytes);
    poll_until(Duration::from_secs(180), "the Python policy to go live", || {
        runtime.chain().policies.iter().any(|p| p.name == "warm-pool").then_some(())
    });
    let live = Instant::now();
    poll_until(Duration::from_secs(30), "a tick that ran the Python policy", || {
        ticks.lock().unwrap().iter().any(|t| t.policies.iter().any(|p| p == "warm-pool")).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    ticker.join().expect("the decide loop never panicked");

    let event = runtime.events().into_iter().find(|e| e.policy == "warm-pool").expect("a reload event");
    assert_eq!((event.outcome, event.error), (flockd_wasm::ReloadOutcome::Loaded, None));
    assert!(event.at >= published_at);

    let ticks = ticks.lock().unwrap();
    // Between publishing and the swap: up to the first tick that ran the new
    // chain (`live` is when polling noticed the swap, a little after it, so a
    // tick may already have run the new chain before `live`).
    let swapped = ticks.iter().position(|t| t.policies.iter().any(|p| p == "warm-pool")).unwrap_or(ticks.len());
    let during: Vec<&Tick> = ticks[..swapped].iter().filter(|t| t.started >= published && t.started < live).collect();
    // The compile takes seconds; ticks every ~10 ms kept coming meanwhile.
    assert!(
        during.len() >= 20,
        "only {} ticks in the {:?} between publishing and going live: the loop waited for the compile",
        during.len(),
        live - published
    );
    for tick in &during {
        assert_eq!(tick.policies, ["scale-up", "spin-up-timeout", "idle", "budget"], "the old chain, whole");
        assert!(tick.errors.is_empty(), "old chain failed while the new version compiled: {:?}", tick.errors);
    }
    let slowest = during.iter().map(|t| t.took).max().unwrap();
    assert!(slowest < Duration::from_millis(500), "a decide took {slowest:?} while the new version compiled");
    let gaps = during.windows(2).map(|w| w[1].started - w[0].started).max().unwrap();
    assert!(gaps < Duration::from_secs(1), "the decide loop stalled for {gaps:?} while the new version compiled");
    let with_python = ticks.iter().find(|t| t.policies.iter().any(|p| p == "warm-pool")).unwrap();
    assert!(with_python.errors.is_empty(), "the swapped-in chain decides cleanly: {:?}", with_python.errors);

    // A restart: a new engine on the same cache folder loads the compiled
    // policy instead of compiling it, and the whole chain decides.
    let engine = new_engine();
    let (_, outcome) = engine.compile_cached(&bytes).expect("loads");
    assert_eq!(outcome, Some(CacheOutcome::Hit));
    let chain = load_chain(&engine, &specs).expect("the chain with the Python policy loads");
    let decision = PolicyRuntime::new(engine, chain).decide(&snapshot);
    let runs: Vec<(&str, Option<&str>)> =
        decision.runs.iter().map(|r| (r.policy.as_str(), r.error.as_deref())).collect();
    assert_eq!(runs.last(), Some(&("warm-pool", None)));
}
