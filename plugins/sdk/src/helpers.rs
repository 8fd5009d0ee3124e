//! The questions every policy asks of a snapshot and a plan.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Instance, InstanceState, Launch, Plan, Resource, Snapshot, Termination, TerminationCause};

/// Whole seconds in `ms` milliseconds (rounded down), for reasons and settings.
pub fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Whole seconds from `then` to `now` (both unix ms); 0 if `then` is later.
pub fn ago_secs(now: u64, then: u64) -> u64 {
    secs(now.saturating_sub(then))
}

impl Instance {
    /// Counts against caps and costs: booting or running. A `stopping`
    /// instance is on its way out.
    pub fn is_alive(&self) -> bool {
        self.state != InstanceState::Stopping
    }

    /// Running with its worker waiting for work.
    pub fn is_idle(&self) -> bool {
        self.state == InstanceState::Running && !self.busy
    }
}

impl Snapshot {
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    pub fn queue(&self, name: &str) -> Option<&crate::Queue> {
        self.queues.iter().find(|q| q.name == name)
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// Alive (booting or running) instances of `resource`.
    pub fn alive<'a>(&'a self, resource: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances.iter().filter(move |i| i.resource == resource && i.is_alive())
    }

    pub fn alive_count(&self, resource: &str) -> u32 {
        self.alive(resource).count() as u32
    }

    /// Alive instances of every resource together.
    pub fn alive_total(&self) -> u32 {
        self.instances.iter().filter(|i| i.is_alive()).count() as u32
    }

    /// Alive instances per resource, counted in one pass (for policies that
    /// ask about every resource; [`Snapshot::alive_count`] scans the fleet).
    pub fn alive_counts(&self) -> BTreeMap<&str, u32> {
        let mut counts = BTreeMap::new();
        for instance in self.instances.iter().filter(|i| i.is_alive()) {
            *counts.entry(instance.resource.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// For every resource, the snapshot's queues it serves (by either side's
    /// list, see [`Snapshot::serves`]), in snapshot queue order, in one pass.
    pub fn served_queues(&self) -> BTreeMap<&str, Vec<&str>> {
        let queue_index: BTreeMap<&str, usize> =
            self.queues.iter().enumerate().map(|(i, q)| (q.name.as_str(), i)).collect();
        let mut served: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for resource in &self.resources {
            let indices = served.entry(resource.name.as_str()).or_default();
            indices.extend(resource.queues.iter().filter_map(|q| queue_index.get(q.as_str()).copied()));
        }
        for (i, queue) in self.queues.iter().enumerate() {
            for resource in &queue.resources {
                served.entry(resource.as_str()).or_default().push(i);
            }
        }
        served
            .into_iter()
            .map(|(resource, mut indices)| {
                indices.sort_unstable();
                indices.dedup();
                (resource, indices.into_iter().map(|i| self.queues[i].name.as_str()).collect())
            })
            .collect()
    }

    /// Whether an instance of `resource` serves `queue`, by either side's list.
    pub fn serves(&self, resource: &str, queue: &str) -> bool {
        self.resource(resource).is_some_and(|r| r.queues.iter().any(|q| q == queue))
            || self.queue(queue).is_some_and(|q| q.resources.iter().any(|r| r == resource))
    }

    /// How many more instances of `resource` fit under its max-instances,
    /// counting alive instances and the launches already in `plan` (planned
    /// terminations free nothing until they happen). 0 for an unknown resource.
    pub fn room(&self, resource: &str, plan: &Plan) -> u32 {
        self.resource(resource).map_or(0, |r| {
            r.max_instances.saturating_sub(self.alive_count(resource)).saturating_sub(plan.launch_count(resource))
        })
    }

    /// Whole seconds since `then` (unix ms) by the snapshot's clock.
    pub fn secs_since(&self, then: u64) -> u64 {
        ago_secs(self.now, then)
    }
}

impl Plan {
    /// Instances this plan launches of `resource`.
    pub fn launch_count(&self, resource: &str) -> u32 {
        self.launches.iter().filter(|l| l.resource == resource).map(|l| l.count).sum()
    }

    pub fn total_launches(&self) -> u32 {
        self.launches.iter().map(|l| l.count).sum()
    }

    pub fn is_terminating(&self, instance: &str) -> bool {
        self.terminations.iter().any(|t| t.instance == instance)
    }

    /// Ids of the instances this plan terminates, for policies that check
    /// many instances ([`Plan::is_terminating`] scans the list).
    pub fn terminating(&self) -> BTreeSet<String> {
        self.terminations.iter().map(|t| t.instance.clone()).collect()
    }

    /// Appends a launch; a count of 0 appends nothing (the host rejects it).
    pub fn launch(&mut self, resource: &str, count: u32, reason: String) {
        if count > 0 {
            self.launches.push(Launch { resource: resource.to_string(), count, reason });
        }
    }

    /// Appends a termination unless `instance` is already terminated by this
    /// plan (the host rejects duplicates). Returns whether it was appended.
    pub fn terminate(&mut self, instance: &str, cause: TerminationCause, reason: String) -> bool {
        if self.is_terminating(instance) {
            return false;
        }
        self.terminations.push(Termination { instance: instance.to_string(), cause, reason });
        true
    }

    /// What this plan's launches add to the fleet's cost per hour.
    pub fn launch_cost_per_hour(&self, snapshot: &Snapshot) -> f64 {
        self.launches
            .iter()
            .map(|l| snapshot.resource(&l.resource).map_or(0.0, |r| r.price_per_hour) * f64::from(l.count))
            .sum()
    }
}
