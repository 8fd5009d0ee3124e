//! Terse snapshots for native unit tests of a policy's logic.
//!
//! ```ignore
//! let snap = snapshot(NOW)
//!     .queue("q", 3, &["A", "B"])
//!     .resource("A", &["q"], 2, 1.0, Market::Spot)
//!     .idle("i-1", "A", NOW - 60_000)
//!     .build();
//! ```

use std::cell::RefCell;

#[cfg(feature = "cases")]
pub mod cases;

use crate::{Budget, Failure, FailureKind, Instance, InstanceState, LogLevel, Market, Queue, Resource, Snapshot};

pub fn snapshot(now: u64) -> SnapshotBuilder {
    SnapshotBuilder(Snapshot {
        now,
        queues: Vec::new(),
        resources: Vec::new(),
        instances: Vec::new(),
        failures: Vec::new(),
        budget: Budget { max_instances: u32::MAX, max_cost_per_hour: f64::INFINITY, cost_per_hour: 0.0 },
    })
}

pub struct SnapshotBuilder(Snapshot);

impl SnapshotBuilder {
    pub fn queue(mut self, name: &str, pending: u32, resources: &[&str]) -> Self {
        self.0.queues.push(Queue {
            name: name.into(),
            pending,
            oldest_wait_ms: 0,
            resources: strings(resources),
            external_idle_workers: 0,
        });
        self
    }

    /// Sets external-idle-workers of the queue added last.
    pub fn external_idle(mut self, workers: u32) -> Self {
        self.0.queues.last_mut().expect("add a queue first").external_idle_workers = workers;
        self
    }

    pub fn resource(
        mut self,
        name: &str,
        queues: &[&str],
        max_instances: u32,
        price_per_hour: f64,
        market: Market,
    ) -> Self {
        self.0.resources.push(Resource {
            name: name.into(),
            queues: strings(queues),
            max_instances,
            price_per_hour,
            market,
            last_boot_ok: None,
        });
        self
    }

    /// Sets last-boot-ok of the resource added last.
    pub fn last_boot_ok(mut self, at: u64) -> Self {
        self.0.resources.last_mut().expect("add a resource first").last_boot_ok = Some(at);
        self
    }

    pub fn instance(mut self, instance: Instance) -> Self {
        self.0.instances.push(instance);
        self
    }

    /// A running instance whose worker has been idle since `idle_since`.
    pub fn idle(self, id: &str, resource: &str, idle_since: u64) -> Self {
        let mut i = instance(id, resource, InstanceState::Running, 0);
        i.worker = Some(format!("worker-{id}"));
        i.idle_since = Some(idle_since);
        self.instance(i)
    }

    /// A running instance whose worker is running a task.
    pub fn busy(self, id: &str, resource: &str) -> Self {
        let mut i = instance(id, resource, InstanceState::Running, 0);
        i.worker = Some(format!("worker-{id}"));
        i.busy = true;
        self.instance(i)
    }

    pub fn booting(self, id: &str, resource: &str, launched_at: u64) -> Self {
        self.instance(instance(id, resource, InstanceState::Booting, launched_at))
    }

    pub fn stopping(self, id: &str, resource: &str) -> Self {
        self.instance(instance(id, resource, InstanceState::Stopping, 0))
    }

    pub fn failure(mut self, resource: &str, kind: FailureKind, at: u64) -> Self {
        self.0.failures.push(Failure { resource: resource.into(), kind, at, message: String::new() });
        self
    }

    pub fn budget(mut self, max_instances: u32, max_cost_per_hour: f64, cost_per_hour: f64) -> Self {
        self.0.budget = Budget { max_instances, max_cost_per_hour, cost_per_hour };
        self
    }

    pub fn build(self) -> Snapshot {
        self.0
    }
}

pub fn instance(id: &str, resource: &str, state: InstanceState, launched_at: u64) -> Instance {
    Instance {
        id: id.into(),
        resource: resource.into(),
        state,
        launched_at,
        worker: None,
        busy: false,
        idle_since: None,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

thread_local! {
    static LOGS: RefCell<Vec<(LogLevel, String)>> = const { RefCell::new(Vec::new()) };
}

#[cfg_attr(target_family = "wasm", allow(dead_code))]
pub(crate) fn record_log(level: LogLevel, message: &str) {
    LOGS.with(|logs| logs.borrow_mut().push((level, message.to_string())));
}

/// Lines logged on this thread since the last call (native builds only).
pub fn take_logs() -> Vec<(LogLevel, String)> {
    LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}
