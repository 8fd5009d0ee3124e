//! Spin-up timeout and a circuit breaker for resources that never boot.
//!
//! 1. Every instance still `booting` more than `timeout-secs` after its launch
//!    is terminated (cause `boot-timeout`); the host records each as a
//!    `boot-timeout` failure.
//! 2. A resource's breaker is open when it has at least
//!    `max-consecutive-failures` boot-timeout failures after its
//!    `last-boot-ok` (all of them if it never booted), and the newest is less
//!    than `backoff-secs` old. Boot-timeout terminations already in the plan
//!    (including the ones from step 1) count as failures at `now`, so the
//!    breaker opens on the tick of the failure that trips it. An instance of
//!    the resource registering its worker (a newer `last-boot-ok`) closes it;
//!    so does the backoff running out, after which one more timeout reopens it.
//! 3. While a resource's breaker is open its launches are removed from the plan
//!    (with a warning in the host log saying why) and, if `reoffer` is on, the
//!    removed count is offered to the resources after it in the preference
//!    order of each queue it serves, skipping open breakers and respecting each
//!    resource's room (max-instances − alive − planned).
//!
//! Settings (JSON, kebab-case):
//! - `timeout-secs` (default 900)
//! - `max-consecutive-failures` (default 3, at least 1)
//! - `backoff-secs` (default 1800)
//! - `reoffer` (default true)

use std::collections::BTreeMap;

use flockd_policy::{
    FailureKind, InstanceState, Plan, Policy, Resource, Snapshot, Termination, TerminationCause, warn,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub timeout_secs: u64,
    pub max_consecutive_failures: u32,
    pub backoff_secs: u64,
    pub reoffer: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { timeout_secs: 900, max_consecutive_failures: 3, backoff_secs: 1800, reoffer: true }
    }
}

pub struct SpinUpTimeout {
    settings: Settings,
}

impl Policy for SpinUpTimeout {
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        if settings.max_consecutive_failures == 0 {
            return Err(
                "max-consecutive-failures must be at least 1 (it is the failure count that opens the breaker)".into()
            );
        }
        Ok(SpinUpTimeout { settings })
    }

    fn decide(&self, snapshot: &Snapshot, mut plan: Plan) -> Result<Plan, String> {
        let timeout_ms = self.settings.timeout_secs.saturating_mul(1000);
        let terminating = plan.terminating();
        for instance in &snapshot.instances {
            let booting_ms = snapshot.now.saturating_sub(instance.launched_at);
            if instance.state == InstanceState::Booting
                && booting_ms > timeout_ms
                && !terminating.contains(&instance.id)
            {
                let reason = format!(
                    "booting for {} s > timeout-secs {} (no worker registered, or its worker went missing)",
                    booting_ms / 1000,
                    self.settings.timeout_secs
                );
                plan.terminations.push(Termination {
                    instance: instance.id.clone(),
                    cause: TerminationCause::BootTimeout,
                    reason,
                });
            }
        }

        // Boot-timeout terminations in the plan, per resource: failures as of now.
        let resource_of: BTreeMap<&str, &str> =
            snapshot.instances.iter().map(|i| (i.id.as_str(), i.resource.as_str())).collect();
        let mut timeouts_now: BTreeMap<&str, usize> = BTreeMap::new();
        for t in plan.terminations.iter().filter(|t| t.cause == TerminationCause::BootTimeout) {
            if let Some(resource) = resource_of.get(t.instance.as_str()) {
                *timeouts_now.entry(resource).or_default() += 1;
            }
        }
        let open: Vec<(&str, String)> = snapshot
            .resources
            .iter()
            .filter_map(|r| {
                let now = timeouts_now.get(r.name.as_str()).copied().unwrap_or(0);
                self.open_breaker(snapshot, r, now).map(|why| (r.name.as_str(), why))
            })
            .collect();
        for (resource, why) in &open {
            let removed = plan.launch_count(resource);
            if removed == 0 {
                continue;
            }
            plan.launches.retain(|l| l.resource != *resource);
            warn(&format!("spin-up-timeout: removed {removed} planned launch(es) of {resource}: {why}"));
            if self.settings.reoffer {
                self.reoffer(snapshot, &mut plan, resource, removed, why, &open);
            }
        }
        Ok(plan)
    }
}

impl SpinUpTimeout {
    /// Why `resource`'s breaker is open, if it is, given `timeouts_now`
    /// boot-timeout terminations of it in the plan.
    fn open_breaker(&self, snapshot: &Snapshot, resource: &Resource, timeouts_now: usize) -> Option<String> {
        let last_ok = resource.last_boot_ok;
        let since_ok = snapshot
            .failures
            .iter()
            .filter(|f| f.resource == resource.name && f.kind == FailureKind::BootTimeout)
            .map(|f| f.at)
            .filter(|at| last_ok.is_none_or(|ok| *at > ok));
        let (recorded, newest_recorded) = since_ok.fold((0, None), |(n, newest), at| (n + 1, newest.max(Some(at))));
        let failures = recorded + timeouts_now;
        let newest = if timeouts_now > 0 { snapshot.now } else { newest_recorded? };
        let newest_age_ms = snapshot.now.saturating_sub(newest);
        if failures < self.settings.max_consecutive_failures as usize
            || newest_age_ms >= self.settings.backoff_secs.saturating_mul(1000)
        {
            return None;
        }
        let since = match last_ok {
            Some(ok) => format!("since its last successful boot {} s ago", snapshot.secs_since(ok)),
            None => "and no successful boot on record".to_string(),
        };
        Some(format!(
            "breaker open: {failures} boot timeouts {since} (max-consecutive-failures {}), newest {} s ago (backoff-secs {})",
            self.settings.max_consecutive_failures,
            newest_age_ms / 1000,
            self.settings.backoff_secs
        ))
    }

    /// Offers `count` launches removed from `tripped` to the next resources
    /// of the queues it serves.
    fn reoffer(
        &self,
        snapshot: &Snapshot,
        plan: &mut Plan,
        tripped: &str,
        count: u32,
        why: &str,
        open: &[(&str, String)],
    ) {
        let mut left = count;
        for queue in snapshot.queues.iter().filter(|q| snapshot.serves(tripped, &q.name)) {
            let after_tripped = queue.resources.iter().skip_while(|r| *r != tripped).skip(1);
            for next in after_tripped {
                if left == 0 {
                    return;
                }
                if open.iter().any(|(name, _)| name == next) {
                    continue;
                }
                let take = left.min(snapshot.room(next, plan));
                let reason = format!(
                    "queue {}: {take} of {count} launch(es) moved from {tripped} to its next choice {next} ({why})",
                    queue.name
                );
                plan.launch(next, take, reason);
                left -= take;
            }
        }
        if left > 0 {
            warn(&format!(
                "spin-up-timeout: {left} launch(es) of {tripped} not re-offered: no later resource in its queues has room"
            ));
        }
    }
}

flockd_policy::export_policy!(SpinUpTimeout);

#[cfg(test)]
mod tests;
