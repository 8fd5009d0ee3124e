//! Issue 10, hole 2: a plan too large to copy. Every entry of these plans
//! is valid on its own; their number, or the text they point at, is the
//! attack. The host must refuse such a plan before copying it, and its own
//! memory must not grow with what the policy returned.
//!
//! Its own test binary: the memory figure is the process's peak resident
//! set, so nothing else may run beside these tests, and they run one at a
//! time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flockd_core::Decider;
use flockd_tests::policy::{fixture, small_snapshot};
use flockd_wasm::{CallLimits, MAX_LAUNCH_ENTRIES, PolicyEngine, PolicyRuntime, PolicySpec, load_chain};

/// How much the host's peak resident memory may grow while refusing the
/// aliased plan: the guest touches under 1 MiB of its own memory, and the
/// plan as returned is 96 MiB of text.
const HOST_GROWTH_LIMIT_MIB: u64 = 48;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Peak resident memory of this process since the last reset, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib >> 10
}

/// Resets the peak to the current resident set (`clear_refs` value 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident set");
}

/// The guest needs room to build a million entries; the host's cap on the
/// guest is not what is under test here.
fn roomy_engine() -> Arc<PolicyEngine> {
    let limits = CallLimits { timeout: Duration::from_secs(10), memory_bytes: 128 << 20 };
    Arc::new(PolicyEngine::new(limits).expect("engine"))
}

fn file_spec(name: &str, path: &str, settings: serde_json::Value) -> PolicySpec {
    PolicySpec { name: name.into(), builtin: None, file: Some(path.into()), settings }
}

/// good-v1, the flooding policy, good-v2, three ticks: the flood is refused
/// with `reason`, the good policies' plans go through. Returns how much the
/// host's peak resident memory grew meanwhile, in MiB.
fn assert_refused_in_chain(path: &str, settings: serde_json::Value, reason: &str) -> u64 {
    let engine = roomy_engine();
    let no_settings = || serde_json::json!({});
    let specs = [
        file_spec("good-v1", fixture::GOOD_V1, no_settings()),
        file_spec("flood", path, settings),
        file_spec("good-v2", fixture::GOOD_V2, no_settings()),
    ];
    let chain = load_chain(&engine, &specs).expect("every policy loads");
    let runtime = PolicyRuntime::new(engine, chain);
    let snapshot = Arc::new(small_snapshot());

    reset_peak_rss();
    let before = peak_rss_mib();
    for tick in 0..3 {
        let decision = runtime.decide(&snapshot);
        let errors: Vec<Option<&str>> = decision.runs.iter().map(|r| r.error.as_deref()).collect();
        assert_eq!((errors[0], errors[2]), (None, None), "tick {tick}: the good policies run");
        let error = errors[1].expect("the flooding policy's run records its error");
        assert!(error.contains(reason), "tick {tick}: error {error:?} should say {reason:?}");
        assert!(error.len() < 1024, "the error is short: {error:?}");
        let launches: Vec<(&str, u32)> =
            decision.plan.launches.iter().map(|l| (l.resource.as_str(), l.count)).collect();
        assert_eq!(launches, [("A", 1), ("A", 2)], "tick {tick}: only the good policies' launches");
    }
    peak_rss_mib().saturating_sub(before)
}

/// A million entries (56 MB as host structures) are more than the host
/// copies out of one call: refused before the list is copied.
#[test]
fn a_million_launch_entries_are_refused_before_they_are_copied() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_refused_in_chain(
        fixture::FLOOD_PLAN,
        serde_json::json!({}),
        "the host copies at most 16 MiB out of one call",
    );
}

/// Ten thousand entries (after good-v1's one) fit what the host copies but
/// no valid plan needs them: refused whole, with the limit named.
#[test]
fn ten_thousand_launch_entries_are_refused_whole() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_refused_in_chain(
        fixture::FLOOD_PLAN,
        serde_json::json!({ "entries": 10_000 }),
        &format!("10001 launch entries; a plan holds at most {MAX_LAUNCH_ENTRIES}"),
    );
}

/// The hand-written component of `fixtures/policies/wat/aliased-plan.wat`,
/// returning `entries` launches whose reasons all point at one 32 MiB string.
fn aliased_plan(entries: u32) -> tempfile::TempPath {
    let source = include_str!("../fixtures/policies/wat/aliased-plan.wat").replace("ENTRIES", &entries.to_string());
    let wasm = wat::parse_str(&source).expect("aliased-plan.wat parses");
    let file = tempfile::Builder::new().suffix(".wasm").tempfile().expect("temp file");
    std::fs::write(file.path(), wasm).expect("write the component");
    file.into_temp_path()
}

/// Three entries whose reasons are one 32 MiB string of the guest's: 96 MiB
/// if copied (a million of them: 32 TiB). Refused before the first reason
/// is copied; the host's memory does not grow by the text.
#[test]
fn reasons_that_alias_one_huge_string_are_refused_before_they_are_copied() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let component = aliased_plan(3);
    let growth = assert_refused_in_chain(
        component.to_str().unwrap(),
        serde_json::json!({}),
        "the host copies at most 16 MiB out of one call",
    );
    assert!(
        growth < HOST_GROWTH_LIMIT_MIB,
        "peak resident memory grew by {growth} MiB over three refused plans (limit {HOST_GROWTH_LIMIT_MIB} MiB)"
    );
}
