//! Hot swap through the real `Reloader` on a real folder: new versions go
//! live, hostile ones are rejected while the last good version keeps
//! serving, removal reverts or unloads, and decisions running during swaps
//! always see one whole version.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flockd_core::{Decider, Decision};
use flockd_tests::policy::{engine, fixture, policy_dir, poll_until, publish, read, small_snapshot};
use flockd_wasm::{PolicyRuntime, PolicySpec, ReloadEvent, ReloadOutcome, Reloader, builtin, load_chain, loader};

const DEBOUNCE: Duration = Duration::from_millis(30);
const DEADLINE: Duration = Duration::from_secs(20);

fn spec(name: &str, builtin: Option<&str>, file: &Path) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        builtin: builtin.map(Into::into),
        file: Some(file.into()),
        settings: serde_json::json!({}),
    }
}

fn start(specs: &[PolicySpec]) -> (Arc<PolicyRuntime>, Reloader) {
    let engine = engine();
    let chain = load_chain(&engine, specs).expect("initial chain loads");
    let runtime = Arc::new(PolicyRuntime::new(engine, chain));
    let reloader = Reloader::start(runtime.clone(), specs.to_vec(), DEBOUNCE).expect("reloader starts");
    (runtime, reloader)
}

fn digests(runtime: &PolicyRuntime) -> Vec<String> {
    runtime.chain().policies.iter().map(|p| p.digest.clone()).collect()
}

fn wait_for_digests(runtime: &PolicyRuntime, want: &[&str], what: &str) {
    poll_until(DEADLINE, what, || (digests(runtime) == want).then_some(()));
}

fn wait_for_event(runtime: &PolicyRuntime, what: &str, pred: impl Fn(&ReloadEvent) -> bool) -> ReloadEvent {
    poll_until(DEADLINE, what, || runtime.events().into_iter().find(&pred))
}

fn launches(decision: &Decision) -> Vec<(String, u32, String)> {
    decision.plan.launches.iter().map(|l| (l.resource.clone(), l.count, l.reason.clone())).collect()
}

fn v1_plan() -> Vec<(String, u32, String)> {
    vec![("A".into(), 1, "good-v1: launch 1".into())]
}

fn v2_plan() -> Vec<(String, u32, String)> {
    vec![("A".into(), 2, "good-v2: launch 2".into())]
}

#[test]
fn a_new_version_goes_live_and_a_hostile_one_is_rejected_while_the_last_good_serves() {
    let (_keep, dir) = policy_dir();
    let file = dir.join("swap.wasm");
    let (v1, v2) = (read(fixture::GOOD_V1), read(fixture::GOOD_V2));
    let (d1, d2) = (loader::digest(&v1), loader::digest(&v2));
    publish(&file, &v1);
    let (runtime, _reloader) = start(&[spec("swap", None, &file)]);
    assert_eq!(digests(&runtime), [d1.as_str()]);
    let snapshot = Arc::new(small_snapshot());
    assert_eq!(launches(&runtime.decide(&snapshot)), v1_plan());

    publish(&file, &v2);
    wait_for_digests(&runtime, &[&d2], "good-v2 to go live");
    assert_eq!(launches(&runtime.decide(&snapshot)), v2_plan());
    let loaded = wait_for_event(&runtime, "a 'loaded' event for v2", |e| {
        e.outcome == ReloadOutcome::Loaded && e.digest.as_deref() == Some(&d2)
    });
    assert_eq!(loaded.error, None);

    // Each hostile file dropped over it is rejected with its reason; v2
    // keeps deciding throughout.
    for (hostile, reason) in [
        (fixture::LOOP_FOREVER, "timed out"),
        (fixture::TRAP, "unreachable"),
        (fixture::HUGE_PLAN, "invalid plan"),
        (fixture::OTHER_WORLD, "does not implement world flockd:policy/policy@0.1.0"),
    ] {
        let bytes = read(hostile);
        let digest = loader::digest(&bytes);
        publish(&file, &bytes);
        let event =
            wait_for_event(&runtime, &format!("{hostile} to be rejected"), |e| e.digest.as_deref() == Some(&digest));
        assert_eq!(event.outcome, ReloadOutcome::Rejected, "{event:?}");
        let error = event.error.expect("a rejection says why");
        assert!(error.contains(reason), "rejection of {hostile}: {error:?} should say {reason:?}");
        assert_eq!(digests(&runtime), [d2.as_str()], "v2 keeps serving after {hostile}");
        assert_eq!(launches(&runtime.decide(&snapshot)), v2_plan());
    }
    let counters = &runtime.counters()["swap"];
    assert_eq!(counters.reload_failures, 4);
    assert!(counters.last_error.as_deref().is_some_and(|e| e.contains("does not implement world")));
}

#[test]
fn removing_the_file_unloads_a_file_only_policy() {
    let (_keep, dir) = policy_dir();
    let file = dir.join("extra.wasm");
    let v1 = read(fixture::GOOD_V1);
    publish(&file, &v1);
    let (runtime, _reloader) = start(&[spec("extra", None, &file)]);
    assert_eq!(digests(&runtime), [loader::digest(&v1)]);

    std::fs::remove_file(&file).unwrap();
    wait_for_digests(&runtime, &[], "the chain to drop the removed policy");
    wait_for_event(&runtime, "an 'unloaded' event", |e| e.outcome == ReloadOutcome::Unloaded && e.policy == "extra");
    let decision = runtime.decide(&Arc::new(small_snapshot()));
    assert!(decision.plan.is_empty() && decision.runs.is_empty());

    // Dropping it back in loads it again.
    publish(&file, &v1);
    wait_for_digests(&runtime, &[&loader::digest(&v1)], "the policy to come back");
}

#[test]
fn removing_an_override_reverts_to_the_built_in() {
    let (_keep, dir) = policy_dir();
    let file = dir.join("scale-up.wasm");
    let builtin_digest = loader::digest(builtin::component("scale-up").expect("scale-up is built in"));
    let (runtime, _reloader) = start(&[spec("scale-up", Some("scale-up"), &file)]);
    assert_eq!(digests(&runtime), [builtin_digest.as_str()], "no file yet: the built-in serves");

    let v1 = read(fixture::GOOD_V1);
    publish(&file, &v1);
    wait_for_digests(&runtime, &[&loader::digest(&v1)], "the file to override the built-in");

    std::fs::remove_file(&file).unwrap();
    wait_for_digests(&runtime, &[&builtin_digest], "the built-in to come back");
    wait_for_event(&runtime, "a 'reverted to built-in' event", |e| e.outcome == ReloadOutcome::RevertedToBuiltin);
}

#[test]
fn a_zero_byte_write_is_rejected_and_the_real_write_after_it_wins() {
    let (_keep, dir) = policy_dir();
    let file = dir.join("swap.wasm");
    let (v1, v2) = (read(fixture::GOOD_V1), read(fixture::GOOD_V2));
    publish(&file, &v1);
    let (runtime, _reloader) = start(&[spec("swap", None, &file)]);

    // Written in place (the way `cp` does it), not renamed: the truncation
    // is visible on its own.
    std::fs::write(&file, b"").unwrap();
    let event = wait_for_event(&runtime, "the empty file to be rejected", |e| e.outcome == ReloadOutcome::Rejected);
    assert!(event.error.as_deref().is_some_and(|e| e.contains("empty file")), "{event:?}");
    assert_eq!(digests(&runtime), [loader::digest(&v1)]);

    std::fs::write(&file, &v2).unwrap();
    wait_for_digests(&runtime, &[&loader::digest(&v2)], "the real write to go live");

    // Truncate-then-write in quick succession ends on the real content too.
    std::fs::write(&file, b"").unwrap();
    std::fs::write(&file, &v1).unwrap();
    wait_for_digests(&runtime, &[&loader::digest(&v1)], "the quick rewrite to end on v1");
}

#[test]
fn decisions_during_swaps_always_see_one_whole_version() {
    const THREADS: usize = 4;
    const SWAPS: usize = 12;
    let (_keep, dir) = policy_dir();
    let file = dir.join("swap.wasm");
    let versions = [read(fixture::GOOD_V1), read(fixture::GOOD_V2)];
    let digests_by_version = [loader::digest(&versions[0]), loader::digest(&versions[1])];
    publish(&file, &versions[0]);
    let (runtime, _reloader) = start(&[spec("swap", None, &file)]);
    let snapshot = Arc::new(small_snapshot());
    let stop = Arc::new(AtomicBool::new(false));

    let deciders: Vec<_> = (0..THREADS)
        .map(|_| {
            let (runtime, snapshot, stop, digests) =
                (runtime.clone(), snapshot.clone(), stop.clone(), digests_by_version.clone());
            std::thread::spawn(move || {
                let mut seen = [0usize; 2];
                while !stop.load(Ordering::Relaxed) {
                    let decision = runtime.decide(&snapshot);
                    assert_eq!(decision.runs.len(), 1);
                    let run = &decision.runs[0];
                    assert_eq!(run.error, None, "no call fails during a swap");
                    let version = digests.iter().position(|d| *d == run.version).expect("a known version ran");
                    let expected = if version == 0 { v1_plan() } else { v2_plan() };
                    assert_eq!(launches(&decision), expected, "the plan is wholly the version that ran");
                    seen[version] += 1;
                }
                seen
            })
        })
        .collect();

    for swap in 1..=SWAPS {
        let next = swap % 2;
        publish(&file, &versions[next]);
        wait_for_digests(&runtime, &[&digests_by_version[next]], &format!("swap {swap} to go live"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = [0usize; 2];
    for decider in deciders {
        let counts = decider.join().expect("a decider thread failed its checks");
        seen[0] += counts[0];
        seen[1] += counts[1];
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both versions decided during the swaps: {seen:?}");
    assert_eq!(runtime.counters()["swap"].errors, 0);
    assert_eq!(runtime.counters()["swap"].reloads, SWAPS as u64);
}

#[test]
fn a_swap_never_mixes_two_policies_of_one_chain() {
    // Two policies from two files; swapping one leaves the other untouched
    // and the chain order as configured.
    let (_keep, dir) = policy_dir();
    let (first, second) = (dir.join("first.wasm"), dir.join("second.wasm"));
    let (v1, v2) = (read(fixture::GOOD_V1), read(fixture::GOOD_V2));
    publish(&first, &v1);
    publish(&second, &v1);
    let (runtime, _reloader) = start(&[spec("first", None, &first), spec("second", None, &second)]);
    publish(&second, &v2);
    wait_for_digests(&runtime, &[&loader::digest(&v1), &loader::digest(&v2)], "only the second policy to change");
    let decision = runtime.decide(&Arc::new(small_snapshot()));
    assert_eq!(launches(&decision), [v1_plan(), v2_plan()].concat());
    let names: Vec<&str> = decision.runs.iter().map(|r| r.policy.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
}
