//! Hostile policies are contained: each fails its own call with a reason
//! that says what happened, and the chain around it keeps deciding (the
//! failing policy's input plan passes on unchanged).

use std::sync::Arc;
use std::time::Duration;

use flockd_core::{Decider, Plan, Snapshot};
use flockd_tests::policy::{engine, engine_with_timeout, fixture, read, small_snapshot};
use flockd_wasm::{
    CallError, CallLimits, Chain, LoadError, Origin, PolicyEngine, PolicyLoadError, PolicyRuntime, PolicySpec,
    load_chain, loader,
};

fn file_spec(name: &str, path: &str) -> PolicySpec {
    PolicySpec { name: name.into(), builtin: None, file: Some(path.into()), settings: serde_json::json!({}) }
}

/// The hostile policy alone, called the way the chain calls it.
fn call_alone(path: &str) -> CallError {
    call_alone_within(engine(), path)
}

fn call_alone_within(engine: Arc<PolicyEngine>, path: &str) -> CallError {
    let policy =
        loader::compile(&engine, "hostile", Origin::File(path.into()), &read(path)).expect("compiles and links");
    let runtime = PolicyRuntime::new(engine, Chain::default());
    let (result, _) = runtime.trial(&policy, &small_snapshot(), &Plan::default());
    result.expect_err("a hostile policy must fail its call")
}

/// good-v1, then the hostile policy, then good-v2: v2 must see v1's plan,
/// untouched by the failure between them.
fn assert_chain_survives(path: &str, reason: &str) {
    assert_chain_survives_within(engine(), path, reason)
}

fn assert_chain_survives_within(engine: Arc<PolicyEngine>, path: &str, reason: &str) {
    let specs =
        [file_spec("good-v1", fixture::GOOD_V1), file_spec("hostile", path), file_spec("good-v2", fixture::GOOD_V2)];
    let chain = load_chain(&engine, &specs).expect("every policy loads (configure is fine)");
    let runtime = PolicyRuntime::new(engine, chain);
    let snapshot = Arc::new(small_snapshot());
    for tick in 0..2 {
        let decision = runtime.decide(&snapshot);
        let launches: Vec<(&str, u32, &str)> =
            decision.plan.launches.iter().map(|l| (l.resource.as_str(), l.count, l.reason.as_str())).collect();
        assert_eq!(launches, [("A", 1, "good-v1: launch 1"), ("A", 2, "good-v2: launch 2")], "tick {tick}");
        let errors: Vec<Option<&str>> = decision.runs.iter().map(|r| r.error.as_deref()).collect();
        assert_eq!(errors[0], None);
        assert_eq!(errors[2], None);
        let error = errors[1].expect("the hostile policy's run records its error");
        assert!(error.contains(reason), "error {error:?} should say {reason:?}");
    }
    let counters = runtime.counters();
    assert_eq!((counters["hostile"].calls, counters["hostile"].errors), (2, 2));
    assert_eq!(counters["good-v2"].errors, 0);
}

#[test]
fn an_endless_loop_times_out_and_the_chain_goes_on() {
    // The engine's deadline plus its allowance per snapshot item (one queue
    // and one resource here).
    let deadline = Duration::from_millis(100) + 2 * flockd_wasm::DEADLINE_PER_SNAPSHOT_ITEM;
    let engine = || engine_with_timeout(Duration::from_millis(100));
    assert_eq!(call_alone_within(engine(), fixture::LOOP_FOREVER), CallError::Timeout(deadline));
    assert_chain_survives_within(engine(), fixture::LOOP_FOREVER, &format!("timed out after {deadline:?}"));
}

/// The engine's deadline grows with the snapshot (a large fleet must not make
/// every built-in time out), but a policy's own deadline is taken as given.
#[test]
fn the_engine_deadline_grows_with_the_snapshot_and_a_policys_own_does_not() {
    let base = Duration::from_millis(20);
    let mut big = small_snapshot();
    big.instances = (0..2_000)
        .map(|i| flockd_core::Instance {
            id: format!("i-{i}"),
            resource: "A".into(),
            state: flockd_core::InstanceState::Running,
            launched_at: 0,
            worker: None,
            busy: false,
            idle_since: None,
            task: None,
        })
        .collect();
    let engine = engine_with_timeout(base);
    let policy =
        loader::compile(&engine, "hostile", Origin::File(fixture::LOOP_FOREVER.into()), &read(fixture::LOOP_FOREVER))
            .expect("compiles");
    let runtime = PolicyRuntime::new(engine, Chain::default());
    let (result, _) = runtime.trial(&policy, &big, &Plan::default());
    let grown = base + 2_002 * flockd_wasm::DEADLINE_PER_SNAPSHOT_ITEM;
    assert_eq!(result.expect_err("stopped"), CallError::Timeout(grown));

    let own = Arc::new(
        PolicyEngine::new(CallLimits { timeout: base, ..CallLimits::default() })
            .unwrap()
            .with_timeout_for("hostile", base),
    );
    let policy =
        loader::compile(&own, "hostile", Origin::File(fixture::LOOP_FOREVER.into()), &read(fixture::LOOP_FOREVER))
            .expect("compiles");
    let runtime = PolicyRuntime::new(own, Chain::default());
    let (result, _) = runtime.trial(&policy, &big, &Plan::default());
    assert_eq!(result.expect_err("stopped"), CallError::Timeout(base));
}

#[test]
fn a_memory_bomb_hits_the_memory_limit_and_the_chain_goes_on() {
    // A generous deadline, so that on a loaded machine the memory cap, not
    // the clock, is what stops it.
    let limits = CallLimits { timeout: Duration::from_secs(5), memory_bytes: 16 << 20 };
    let engine = || Arc::new(PolicyEngine::new(limits).unwrap());
    let error = call_alone_within(engine(), fixture::MEMORY_BOMB);
    assert_eq!(error, CallError::OutOfMemory(16 << 20));
    assert_eq!(error.to_string(), "memory limit of 16 MiB exceeded");
    assert_chain_survives_within(engine(), fixture::MEMORY_BOMB, "memory limit");
}

#[test]
fn a_panic_is_a_trap_and_the_chain_goes_on() {
    let error = call_alone(fixture::TRAP);
    assert!(matches!(&error, CallError::Trap(text) if text.contains("unreachable")), "{error:?}");
    assert_chain_survives(fixture::TRAP, "trapped");
}

#[test]
fn a_plan_for_a_million_unknown_instances_is_refused_and_the_chain_goes_on() {
    let error = call_alone(fixture::HUGE_PLAN);
    assert!(matches!(&error, CallError::InvalidPlan(text) if text.contains("unknown resource \"nope\"")), "{error:?}");
    assert_chain_survives(fixture::HUGE_PLAN, "invalid plan");
}

#[test]
fn a_component_of_another_world_is_refused_at_load() {
    let engine = engine();
    let error = engine.compile(&read(fixture::OTHER_WORLD)).err().expect("must not link");
    assert!(matches!(error, LoadError::WrongWorld(_)), "{error:?}");
    let errors =
        load_chain(&engine, &[file_spec("good-v1", fixture::GOOD_V1), file_spec("other", fixture::OTHER_WORLD)])
            .err()
            .expect("a chain with a foreign component does not load half-way");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0].error, PolicyLoadError::Component(LoadError::WrongWorld(_))) && errors[0].policy == "other",
        "{errors:?}"
    );
    let text = errors[0].to_string();
    assert!(
        text.starts_with("policy \"other\": ") && text.contains("does not implement world flockd:policy/policy@0.1.0"),
        "{text}"
    );
}

#[test]
fn empty_and_truncated_files_are_refused_with_their_reason() {
    let engine = engine();
    assert!(matches!(engine.compile(&[]), Err(LoadError::Empty)));
    let whole = read(fixture::GOOD_V1);
    // Cut right after the 8-byte header, it is an empty component: it parses,
    // and is refused for what it lacks.
    assert!(matches!(engine.compile(&whole[..8]), Err(LoadError::WrongWorld(e)) if e.contains("configure")));
    for cut in [9, 100, whole.len() / 2, whole.len() - 1] {
        let error =
            engine.compile(&whole[..cut]).err().unwrap_or_else(|| panic!("a file cut at {cut} bytes must not load"));
        assert!(matches!(error, LoadError::Invalid(_)), "cut at {cut}: {error:?}");
    }
    assert!(matches!(engine.compile(b"not wasm at all"), Err(LoadError::Invalid(_))));
}

#[test]
fn a_hostile_policy_cannot_hurt_the_next_decision() {
    // A trap poisons the instance it happened in; every call gets a fresh
    // one, so the same policy decides again (and fails again) cleanly, and
    // the good policy after it is unaffected on an empty snapshot too.
    let engine = engine();
    let chain =
        load_chain(&engine, &[file_spec("trap", fixture::TRAP), file_spec("good-v1", fixture::GOOD_V1)]).unwrap();
    let runtime = PolicyRuntime::new(engine, chain);
    for snapshot in [small_snapshot(), Snapshot::default(), small_snapshot()] {
        let decision = runtime.decide(&Arc::new(snapshot.clone()));
        assert!(decision.runs[0].error.is_some());
        assert_eq!(decision.runs[1].error, None);
        assert_eq!(decision.plan.total_launches(), u32::from(!snapshot.resources.is_empty()));
    }
}

/// Guard: text a policy sends (reasons, log lines, decline messages) is
/// made printable where it enters the host (`flockd_wasm` `bounded_text`),
/// so a newline and a fake log prefix cannot forge a line in the text log,
/// the journal or the dashboard's log tail, and no escape sequence reaches
/// a terminal.
#[test]
fn text_from_a_policy_cannot_forge_a_log_line() {
    let engine = engine();
    let runtime =
        PolicyRuntime::new(engine.clone(), load_chain(&engine, &[file_spec("forged", fixture::FORGED_TEXT)]).unwrap());
    let one_line = |what: &str, text: &str| {
        assert!(!text.chars().any(char::is_control), "{what} carries a control character: {text:?}");
        assert!(text.contains("\\n2026-12-02T00:00:00.000000Z  INFO flockd:"), "{what} lost what was sent: {text:?}");
    };

    let decision = runtime.decide(&Arc::new(small_snapshot()));
    assert_eq!(decision.runs[0].error, None);
    one_line("the reason", &decision.plan.launches[0].reason);
    one_line("the log line", &decision.runs[0].logs[0]);

    let declined = runtime.decide(&Arc::new(Snapshot::default()));
    one_line("the decline message", declined.runs[0].error.as_deref().expect("declines without queues"));
}

/// A component whose memory starts larger than the cap is refused at load,
/// with the limit in the message, before any of its code runs.
#[test]
fn a_memory_that_starts_past_the_cap_is_refused_at_load() {
    // The hand-written component of the plan-flood tests, its memory grown
    // from 60 MiB to 125 MiB.
    let source = include_str!("../fixtures/policies/wat/aliased-plan.wat")
        .replace("ENTRIES", "1")
        .replace("(memory (export \"memory\") 960)", "(memory (export \"memory\") 2000)");
    let error = engine().compile(&wat::parse_str(&source).expect("parses")).err().expect("refused");
    assert!(
        matches!(&error, LoadError::Invalid(text) if text.contains("minimum byte size of 131072000 which exceeds the limit")),
        "{error:?}"
    );
}
