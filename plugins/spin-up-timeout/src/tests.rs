use flockd_policy::testing::{snapshot, take_logs};
use flockd_policy::{FailureKind, Market, Plan, Policy, Snapshot, TerminationCause, configure};

use crate::SpinUpTimeout;

const NOW: u64 = 1_700_000_000_000;
const MIN: u64 = 60_000;

fn decide(settings: &str, snap: &Snapshot, plan: Plan) -> Plan {
    let policy: SpinUpTimeout = configure("spin-up-timeout", settings).expect("valid settings");
    policy.decide(snap, plan).expect("decide")
}

fn empty() -> Plan {
    Plan { launches: vec![], terminations: vec![] }
}

fn planned(launches: &[(&str, u32)]) -> Plan {
    let mut plan = empty();
    for (resource, count) in launches {
        plan.launch(resource, *count, "scale-up".into());
    }
    plan
}

fn counts(plan: &Plan) -> Vec<(String, u32)> {
    plan.launches.iter().map(|l| (l.resource.clone(), l.count)).collect()
}

/// gpu-spot has failed to boot `failures` times, a minute apart, the newest
/// `newest_ago` ms ago; gpu-od is the queue's second choice.
fn broken_spot(failures: u64, newest_ago: u64) -> flockd_policy::testing::SnapshotBuilder {
    let mut b = snapshot(NOW)
        .queue("gpu", 2, &["gpu-spot", "gpu-od"])
        .resource("gpu-spot", &["gpu"], 4, 1.0, Market::Spot)
        .resource("gpu-od", &["gpu"], 1, 3.0, Market::OnDemand);
    for n in (0..failures).rev() {
        b = b.failure("gpu-spot", FailureKind::BootTimeout, NOW - newest_ago - n * MIN);
    }
    b
}

#[test]
fn terminates_only_booting_instances_past_the_timeout() {
    let snap = snapshot(NOW)
        .resource("A", &["q"], 4, 1.0, Market::Spot)
        .booting("late", "A", NOW - 16 * MIN)
        .booting("fresh", "A", NOW - 14 * MIN)
        .busy("up", "A")
        .build();
    let plan = decide("", &snap, empty());
    assert_eq!(plan.terminations.len(), 1);
    assert_eq!(plan.terminations[0].instance, "late");
    assert_eq!(plan.terminations[0].cause, TerminationCause::BootTimeout);
    assert!(plan.terminations[0].reason.contains("booting for 960 s > timeout-secs 900"));
}

#[test]
fn open_breaker_removes_launches_and_reoffers_to_the_next_resource_within_its_room() {
    let snap = broken_spot(3, MIN).build();
    let plan = decide("", &snap, planned(&[("gpu-spot", 2)]));
    assert_eq!(counts(&plan), [("gpu-od".into(), 1)]);
    assert!(plan.launches[0].reason.contains("3 boot timeouts"), "{}", plan.launches[0].reason);
    let logs = take_logs();
    assert!(logs.iter().any(|(_, l)| l.contains("removed 2 planned launch(es) of gpu-spot")), "{logs:?}");
    assert!(logs.iter().any(|(_, l)| l.contains("1 launch(es) of gpu-spot not re-offered")), "{logs:?}");
}

#[test]
fn reoffer_can_be_turned_off() {
    let snap = broken_spot(3, MIN).build();
    assert!(decide(r#"{"reoffer": false}"#, &snap, planned(&[("gpu-spot", 2)])).launches.is_empty());
}

#[test]
fn fewer_failures_than_the_limit_keep_the_breaker_closed() {
    let snap = broken_spot(2, MIN).build();
    assert_eq!(counts(&decide("", &snap, planned(&[("gpu-spot", 2)]))), [("gpu-spot".into(), 2)]);
}

#[test]
fn a_timeout_terminated_this_tick_counts_towards_the_breaker() {
    let snap = broken_spot(2, MIN).booting("stuck", "gpu-spot", NOW - 20 * MIN).build();
    let plan = decide("", &snap, planned(&[("gpu-spot", 1)]));
    assert_eq!(counts(&plan), [("gpu-od".into(), 1)]);
}

#[test]
fn a_successful_boot_closes_the_breaker() {
    let snap = broken_spot(3, MIN).build();
    let mut snap_after_ok = snap.clone();
    snap_after_ok.resources[0].last_boot_ok = Some(NOW - MIN / 2);
    assert_eq!(counts(&decide("", &snap_after_ok, planned(&[("gpu-spot", 2)]))), [("gpu-spot".into(), 2)]);
    // A boot before the failures does not.
    let mut snap_ok_before = snap;
    snap_ok_before.resources[0].last_boot_ok = Some(NOW - 60 * MIN);
    assert_eq!(counts(&decide("", &snap_ok_before, planned(&[("gpu-spot", 2)]))), [("gpu-od".into(), 1)]);
}

#[test]
fn the_breaker_closes_after_the_backoff() {
    let snap = broken_spot(3, 31 * MIN).build();
    assert_eq!(counts(&decide("", &snap, planned(&[("gpu-spot", 2)]))), [("gpu-spot".into(), 2)]);
}

#[test]
fn zero_failure_limit_is_rejected() {
    let err = configure::<SpinUpTimeout>("spin-up-timeout", r#"{"max-consecutive-failures": 0}"#).err().unwrap();
    assert!(err.contains("max-consecutive-failures must be at least 1"), "{err}");
}

#[test]
fn case_file_passes() {
    flockd_policy::testing::cases::assert_case_file::<SpinUpTimeout>(include_str!("../cases.toml"));
}
