use flockd_policy::testing::snapshot;
use flockd_policy::{Market, Plan, Policy, Snapshot, TerminationCause, configure};

use crate::Idle;

const NOW: u64 = 1_700_000_000_000;
const MIN: u64 = 60_000;

fn terminated(settings: &str, snap: &Snapshot) -> Vec<String> {
    let policy: Idle = configure("idle", settings).expect("valid settings");
    let plan = policy.decide(snap, Plan { launches: vec![], terminations: vec![] }).expect("decide");
    assert!(plan.terminations.iter().all(|t| t.cause == TerminationCause::Idle));
    let mut ids: Vec<String> = plan.terminations.into_iter().map(|t| t.instance).collect();
    ids.sort();
    ids
}

#[test]
fn terminates_only_instances_idle_past_the_limit_and_never_busy_or_booting() {
    let snap = snapshot(NOW)
        .resource("A", &["q"], 10, 1.0, Market::Spot)
        .idle("old", "A", NOW - 11 * MIN)
        .idle("young", "A", NOW - 9 * MIN)
        .busy("busy", "A")
        .booting("boot", "A", NOW - 60 * MIN)
        .stopping("stop", "A")
        .build();
    assert_eq!(terminated("", &snap), ["old"]);
}

#[test]
fn min_idle_keeps_the_most_recently_idle() {
    let snap = snapshot(NOW)
        .resource("A", &["q"], 10, 1.0, Market::Spot)
        .idle("oldest", "A", NOW - 30 * MIN)
        .idle("newer", "A", NOW - 12 * MIN)
        .idle("middle", "A", NOW - 20 * MIN)
        .build();
    assert_eq!(terminated(r#"{"min-idle": 1}"#, &snap), ["middle", "oldest"]);
}

#[test]
fn per_resource_override_wins_over_the_default() {
    let snap = snapshot(NOW)
        .resource("A", &["q"], 10, 1.0, Market::Spot)
        .resource("B", &["q"], 10, 1.0, Market::Spot)
        .idle("a1", "A", NOW - 3 * MIN)
        .idle("b1", "B", NOW - 3 * MIN)
        .idle("b2", "B", NOW - 4 * MIN)
        .build();
    let settings = r#"{"max-idle-secs": 120, "resources": {"B": {"min-idle": 1}}}"#;
    assert_eq!(terminated(settings, &snap), ["a1", "b2"]);
    let settings = r#"{"resources": {"A": {"max-idle-secs": 60}}}"#;
    assert_eq!(terminated(settings, &snap), ["a1"]);
}

#[test]
fn spares_one_overdue_instance_per_uncovered_pending_task() {
    let snap = snapshot(NOW)
        .queue("q", 1, &["A"])
        .resource("A", &["q"], 10, 1.0, Market::Spot)
        .idle("i1", "A", NOW - 20 * MIN)
        .idle("i2", "A", NOW - 30 * MIN)
        .build();
    assert_eq!(terminated("", &snap).len(), 1);
    assert_eq!(terminated(r#"{"spare-for-pending": false}"#, &snap).len(), 2);
}

#[test]
fn a_young_idle_instance_covers_the_pending_task_first() {
    let snap = snapshot(NOW)
        .queue("q", 1, &["A"])
        .resource("A", &["q"], 10, 1.0, Market::Spot)
        .idle("young", "A", NOW - MIN)
        .idle("old", "A", NOW - 30 * MIN)
        .build();
    assert_eq!(terminated("", &snap), ["old"]);
}

#[test]
fn reason_names_the_numbers() {
    let snap = snapshot(NOW).resource("A", &["q"], 10, 1.0, Market::Spot).idle("i", "A", NOW - 11 * MIN).build();
    let policy: Idle = configure("idle", "").unwrap();
    let plan = policy.decide(&snap, Plan { launches: vec![], terminations: vec![] }).unwrap();
    assert_eq!(plan.terminations[0].reason, "idle 660 s > max-idle-secs 600 (A: 1 idle, min-idle 0)");
}

#[test]
fn unknown_keys_are_rejected_at_both_levels() {
    let err = configure::<Idle>("idle", r#"{"max-idle": 5}"#).err().unwrap();
    assert!(err.contains("max-idle"), "{err}");
    let err = configure::<Idle>("idle", r#"{"resources": {"A": {"min_idle": 1}}}"#).err().unwrap();
    assert!(err.contains("min_idle"), "{err}");
}

#[test]
fn case_file_passes() {
    flockd_policy::testing::cases::assert_case_file::<Idle>(include_str!("../cases.toml"));
}
