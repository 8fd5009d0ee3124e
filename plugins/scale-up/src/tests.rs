use flockd_policy::testing::snapshot;
use flockd_policy::{FailureKind, Market, Plan, Policy, Snapshot, configure};

use crate::ScaleUp;

const NOW: u64 = 1_700_000_000_000;

fn decide(settings: &str, snap: &Snapshot) -> Plan {
    let policy: ScaleUp = configure("scale-up", settings).expect("valid settings");
    policy.decide(snap, Plan { launches: vec![], terminations: vec![] }).expect("decide")
}

fn counts(plan: &Plan) -> Vec<(String, u32)> {
    plan.launches.iter().map(|l| (l.resource.clone(), l.count)).collect()
}

#[test]
fn three_pending_over_a_max_2_and_b_max_5_gives_2_a_and_1_b() {
    let snap = snapshot(NOW)
        .queue("q", 3, &["A", "B"])
        .resource("A", &["q"], 2, 1.0, Market::Spot)
        .resource("B", &["q"], 5, 2.0, Market::OnDemand)
        .build();
    let plan = decide("", &snap);
    assert_eq!(counts(&plan), [("A".into(), 2), ("B".into(), 1)]);
    assert!(plan.launches[0].reason.contains("3 pending"), "{}", plan.launches[0].reason);
}

#[test]
fn idle_booting_and_external_workers_reduce_the_need() {
    let snap = snapshot(NOW)
        .queue("q", 5, &["A"])
        .external_idle(1)
        .resource("A", &["q"], 10, 1.0, Market::Spot)
        .idle("i-1", "A", NOW - 1000)
        .booting("i-2", "A", NOW - 1000)
        .busy("i-3", "A")
        .build();
    assert_eq!(counts(&decide("", &snap)), [("A".into(), 2)]);
}

#[test]
fn an_idle_instance_serving_two_queues_counts_for_one_only() {
    let snap = snapshot(NOW)
        .queue("q1", 1, &["shared"])
        .queue("q2", 1, &["shared"])
        .resource("shared", &["q1", "q2"], 10, 1.0, Market::Spot)
        .idle("i-1", "shared", NOW - 1000)
        .build();
    assert_eq!(counts(&decide("", &snap)), [("shared".into(), 1)]);
}

#[test]
fn dedicated_capacity_is_claimed_before_shared() {
    // q1 can use both; q2 only the shared one. If q1 took the shared idle
    // instance, q2 would launch needlessly.
    let snap = snapshot(NOW)
        .queue("q1", 1, &["own", "shared"])
        .queue("q2", 1, &["shared"])
        .resource("shared", &["q1", "q2"], 10, 1.0, Market::Spot)
        .resource("own", &["q1"], 10, 1.0, Market::Spot)
        .idle("i-own", "own", NOW)
        .idle("i-shared", "shared", NOW)
        .build();
    assert!(decide("", &snap).launches.is_empty());
}

#[test]
fn capacity_failure_in_cool_off_falls_back_to_on_demand() {
    let snap = snapshot(NOW)
        .queue("q", 2, &["spot", "od"])
        .resource("spot", &["q"], 5, 1.0, Market::Spot)
        .resource("od", &["q"], 5, 3.0, Market::OnDemand)
        .failure("spot", FailureKind::Capacity, NOW - 60_000)
        .build();
    let plan = decide("", &snap);
    assert_eq!(counts(&plan), [("od".into(), 2)]);
    assert!(plan.launches[0].reason.contains("capacity failure 60 s ago"), "{}", plan.launches[0].reason);
    // Once the cool-off is over, spot is preferred again.
    assert_eq!(counts(&decide(r#"{"cool-off-secs": 30}"#, &snap)), [("spot".into(), 2)]);
}

#[test]
fn boot_timeouts_do_not_trigger_the_cool_off() {
    let snap = snapshot(NOW)
        .queue("q", 1, &["spot", "od"])
        .resource("spot", &["q"], 5, 1.0, Market::Spot)
        .resource("od", &["q"], 5, 3.0, Market::OnDemand)
        .failure("spot", FailureKind::BootTimeout, NOW - 60_000)
        .build();
    assert_eq!(counts(&decide("", &snap)), [("spot".into(), 1)]);
}

#[test]
fn room_counts_alive_instances_and_earlier_launches() {
    let snap = snapshot(NOW)
        .queue("q", 10, &["A"])
        .resource("A", &["q"], 4, 1.0, Market::Spot)
        .busy("i-1", "A")
        .stopping("i-2", "A")
        .build();
    let policy: ScaleUp = configure("scale-up", "{}").unwrap();
    let mut earlier = Plan { launches: vec![], terminations: vec![] };
    earlier.launch("A", 1, "warm pool".into());
    let plan = policy.decide(&snap, earlier).unwrap();
    // 4 max − 1 alive (stopping ones do not count) − 1 planned = 2 more.
    assert_eq!(counts(&plan), [("A".into(), 1), ("A".into(), 2)]);
}

#[test]
fn max_launches_per_tick_caps_the_total() {
    let snap = snapshot(NOW)
        .queue("q1", 3, &["A"])
        .queue("q2", 3, &["B"])
        .resource("A", &["q1"], 10, 1.0, Market::Spot)
        .resource("B", &["q2"], 10, 1.0, Market::Spot)
        .build();
    flockd_policy::testing::take_logs();
    assert_eq!(counts(&decide(r#"{"max-launches-per-tick": 4}"#, &snap)), [("A".into(), 3), ("B".into(), 1)]);
    let logs = flockd_policy::testing::take_logs();
    assert!(
        logs.iter().any(|(_, l)| l.contains("2 more needed than launched (max-launches-per-tick 4 reached)")),
        "{logs:?}"
    );
}

#[test]
fn unknown_setting_is_rejected_by_name() {
    let err = configure::<ScaleUp>("scale-up", r#"{"cooloff-secs": 1}"#).err().unwrap();
    assert!(err.contains("cooloff-secs"), "{err}");
}

#[test]
fn case_file_passes() {
    flockd_policy::testing::cases::assert_case_file::<ScaleUp>(include_str!("../cases.toml"));
}
