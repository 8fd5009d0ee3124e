//! The generated bindings for `flockd:policy@0.1.0` and the conversions from
//! and to the core types. Nothing outside this crate sees a WIT type.

use flockd_core as core;

wasmtime::component::bindgen!({
    path: "../../../wit/v0.1.0",
    world: "policy",
});

pub(crate) use Policy as PolicyBindings;
pub(crate) use PolicyPre as PolicyBindingsPre;
pub(crate) use flockd::policy::types as wit;

fn market(m: core::Market) -> wit::Market {
    match m {
        core::Market::Spot => wit::Market::Spot,
        core::Market::OnDemand => wit::Market::OnDemand,
    }
}

fn state(s: core::InstanceState) -> wit::InstanceState {
    match s {
        core::InstanceState::Booting => wit::InstanceState::Booting,
        core::InstanceState::Running => wit::InstanceState::Running,
        core::InstanceState::Stopping => wit::InstanceState::Stopping,
    }
}

fn failure_kind(k: core::FailureKind) -> wit::FailureKind {
    match k {
        core::FailureKind::Capacity => wit::FailureKind::Capacity,
        core::FailureKind::Quota => wit::FailureKind::Quota,
        core::FailureKind::Auth => wit::FailureKind::Auth,
        core::FailureKind::BootTimeout => wit::FailureKind::BootTimeout,
        core::FailureKind::Other => wit::FailureKind::Other,
    }
}

fn cause_to_wit(c: core::TerminationCause) -> wit::TerminationCause {
    match c {
        core::TerminationCause::Idle => wit::TerminationCause::Idle,
        core::TerminationCause::BootTimeout => wit::TerminationCause::BootTimeout,
        core::TerminationCause::Budget => wit::TerminationCause::Budget,
        core::TerminationCause::Other => wit::TerminationCause::Other,
    }
}

fn cause_from_wit(c: wit::TerminationCause) -> core::TerminationCause {
    match c {
        wit::TerminationCause::Idle => core::TerminationCause::Idle,
        wit::TerminationCause::BootTimeout => core::TerminationCause::BootTimeout,
        wit::TerminationCause::Budget => core::TerminationCause::Budget,
        wit::TerminationCause::Other => core::TerminationCause::Other,
    }
}

pub(crate) fn snapshot_to_wit(s: &core::Snapshot) -> wit::Snapshot {
    wit::Snapshot {
        now: s.now,
        queues: s
            .queues
            .iter()
            .map(|q| wit::Queue {
                name: q.name.clone(),
                pending: q.pending,
                oldest_wait_ms: q.oldest_wait_ms,
                resources: q.resources.clone(),
                external_idle_workers: q.external_idle_workers,
            })
            .collect(),
        resources: s
            .resources
            .iter()
            .map(|r| wit::Resource {
                name: r.name.clone(),
                queues: r.queues.clone(),
                max_instances: r.max_instances,
                price_per_hour: r.price_per_hour,
                market: market(r.market),
                last_boot_ok: r.last_boot_ok,
            })
            .collect(),
        instances: s
            .instances
            .iter()
            .map(|i| wit::Instance {
                id: i.id.clone(),
                resource: i.resource.clone(),
                state: state(i.state),
                launched_at: i.launched_at,
                worker: i.worker.clone(),
                busy: i.busy,
                idle_since: i.idle_since,
            })
            .collect(),
        failures: s
            .failures
            .iter()
            .map(|f| wit::Failure {
                resource: f.resource.clone(),
                kind: failure_kind(f.kind),
                at: f.at,
                message: f.message.clone(),
            })
            .collect(),
        budget: wit::Budget {
            max_instances: s.budget.max_instances,
            max_cost_per_hour: s.budget.max_cost_per_hour,
            cost_per_hour: s.budget.cost_per_hour,
        },
    }
}

pub(crate) fn plan_to_wit(p: &core::Plan) -> wit::Plan {
    wit::Plan {
        launches: p
            .launches
            .iter()
            .map(|l| wit::Launch { resource: l.resource.clone(), count: l.count, reason: l.reason.clone() })
            .collect(),
        terminations: p
            .terminations
            .iter()
            .map(|t| wit::Termination {
                instance: t.instance.clone(),
                cause: cause_to_wit(t.cause),
                reason: t.reason.clone(),
            })
            .collect(),
    }
}

/// The plan a policy returned, each reason cut to `max_reason` bytes.
pub(crate) fn plan_from_wit(p: wit::Plan, max_reason: usize) -> core::Plan {
    let reason = |r: String| crate::text::bounded_text(r, max_reason);
    core::Plan {
        launches: p
            .launches
            .into_iter()
            .map(|l| core::Launch { resource: l.resource, count: l.count, reason: reason(l.reason) })
            .collect(),
        terminations: p
            .terminations
            .into_iter()
            .map(|t| core::Termination {
                instance: t.instance,
                cause: cause_from_wit(t.cause),
                reason: reason(t.reason),
            })
            .collect(),
    }
}
