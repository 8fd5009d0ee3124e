use flockd_policy::testing::{snapshot, take_logs};
use flockd_policy::{Market, Plan, Policy, Snapshot, TerminationCause, configure};

use crate::BudgetPolicy;

const NOW: u64 = 1_700_000_000_000;

fn decide(snap: &Snapshot, plan: Plan) -> Plan {
    let policy: BudgetPolicy = configure("budget", "{}").expect("valid settings");
    policy.decide(snap, plan).expect("decide")
}

fn planned(launches: &[(&str, u32)]) -> Plan {
    let mut plan = Plan { launches: vec![], terminations: vec![] };
    for (resource, count) in launches {
        plan.launch(resource, *count, format!("want {count} {resource}"));
    }
    plan
}

fn counts(plan: &Plan) -> Vec<(String, u32)> {
    plan.launches.iter().map(|l| (l.resource.clone(), l.count)).collect()
}

/// Queue q prefers A (1.0/h) over B (2.0/h).
fn two_resources() -> flockd_policy::testing::SnapshotBuilder {
    snapshot(NOW).queue("q", 10, &["A", "B"]).resource("A", &["q"], 10, 1.0, Market::Spot).resource(
        "B",
        &["q"],
        10,
        2.0,
        Market::OnDemand,
    )
}

#[test]
fn global_max_trims_the_least_preferred_resource_first() {
    let mut b = two_resources().budget(10, f64::INFINITY, 0.0);
    for n in 0..7 {
        b = b.busy(&format!("i-{n}"), "A");
    }
    // B comes first in the plan but is the queue's second choice.
    let plan = decide(&b.build(), planned(&[("B", 2), ("A", 2)]));
    assert_eq!(counts(&plan), [("B".into(), 1), ("A".into(), 2)]);
    assert!(plan.launches[0].reason.contains("[budget: 2 → 1: budget max-instances 10 with 7 alive and 4 planned]"));
    let logs = take_logs();
    assert!(logs.iter().any(|(_, l)| l.contains("trimmed 1 of 2 × B")), "{logs:?}");
}

#[test]
fn equal_preference_trims_the_later_launch_first_and_drops_it_at_zero() {
    let snap = snapshot(NOW)
        .queue("q1", 5, &["A"])
        .queue("q2", 5, &["C"])
        .resource("A", &["q1"], 10, 1.0, Market::Spot)
        .resource("C", &["q2"], 10, 1.0, Market::Spot)
        .budget(3, f64::INFINITY, 0.0)
        .build();
    assert_eq!(counts(&decide(&snap, planned(&[("A", 2), ("C", 2)]))), [("A".into(), 2), ("C".into(), 1)]);
    assert_eq!(counts(&decide(&snap, planned(&[("A", 3), ("C", 2)]))), [("A".into(), 3)]);
}

#[test]
fn per_resource_max_counts_alive_and_ignores_planned_terminations() {
    let snap = two_resources()
        .resource("small", &["q"], 3, 1.0, Market::Spot)
        .idle("i-1", "small", NOW)
        .busy("i-2", "small")
        .stopping("i-3", "small")
        .build();
    let mut plan = planned(&[("small", 1), ("small", 2)]);
    plan.terminate("i-1", TerminationCause::Idle, "idle".into());
    let plan = decide(&snap, plan);
    assert_eq!(counts(&plan), [("small".into(), 1)]);
    assert_eq!(plan.terminations.len(), 1, "terminations are kept");
}

#[test]
fn cost_cap_trims_the_fewest_instances_that_fit() {
    let snap = two_resources().budget(100, 15.0, 10.0).build();
    // 10 + 2×1.0 + 3×2.0 = 18 > 15: two B (4.0) go, leaving 14.
    let plan = decide(&snap, planned(&[("A", 2), ("B", 3)]));
    assert_eq!(counts(&plan), [("A".into(), 2), ("B".into(), 1)]);
    assert!(plan.launches[1].reason.contains("max-cost-per-hour 15.00 with 10.00/h alive and 8.00/h planned"));
}

#[test]
fn cost_exactly_at_the_cap_is_allowed() {
    let snap = two_resources().budget(100, 0.3, 0.1).resource("cheap", &["q"], 10, 0.1, Market::Spot).build();
    assert_eq!(counts(&decide(&snap, planned(&[("cheap", 2)]))), [("cheap".into(), 2)]);
}

#[test]
fn within_every_cap_nothing_changes() {
    let snap = two_resources().budget(10, 100.0, 1.0).build();
    let before = planned(&[("A", 2), ("B", 1)]);
    assert_eq!(decide(&snap, before.clone()), before);
}

#[test]
fn any_setting_is_rejected() {
    let err = configure::<BudgetPolicy>("budget", r#"{"max-instances": 3}"#).err().unwrap();
    assert!(err.contains("max-instances"), "{err}");
}

#[test]
fn case_file_passes() {
    flockd_policy::testing::cases::assert_case_file::<BudgetPolicy>(include_str!("../cases.toml"));
}
