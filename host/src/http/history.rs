//! The last hour of the fleet, one sample per tick, for the dashboard's
//! charts. In memory only: a restart starts the charts afresh, the journal
//! keeps the decisions.

use std::collections::{BTreeMap, VecDeque};

use flockd_core::{InstanceState, Millis, Snapshot};
use serde::Serialize;

/// How far back the charts go.
pub const WINDOW_MS: Millis = 3_600_000;
/// Upper bound on samples whatever the tick rate (one a second for an hour).
const MAX_SAMPLES: usize = 3_600;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Unix ms of the observation.
    pub at: Millis,
    /// Each queue's backlog, in config order.
    pub queues: Vec<QueueSample>,
    pub cost_per_hour: f64,
    pub booting: u32,
    pub running: u32,
    pub stopping: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueSample {
    pub name: String,
    pub pending: u32,
    /// How long its oldest pending task has waited.
    pub oldest_wait_secs: f64,
}

impl Sample {
    pub fn of(snapshot: &Snapshot) -> Sample {
        let count = |s: InstanceState| snapshot.instances.iter().filter(|i| i.state == s).count() as u32;
        Sample {
            at: snapshot.now,
            queues: snapshot
                .queues
                .iter()
                .map(|q| QueueSample {
                    name: q.name.clone(),
                    pending: q.pending,
                    oldest_wait_secs: q.oldest_wait_ms as f64 / 1000.0,
                })
                .collect(),
            cost_per_hour: snapshot.budget.cost_per_hour,
            booting: count(InstanceState::Booting),
            running: count(InstanceState::Running),
            stopping: count(InstanceState::Stopping),
        }
    }
}

/// `/api/v1/history`'s sample, as it was: pending counts keyed by queue.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct V1Sample {
    pub at: Millis,
    /// Queue → pending tasks.
    pub pending: BTreeMap<String, u32>,
    pub cost_per_hour: f64,
    pub booting: u32,
    pub running: u32,
    pub stopping: u32,
}

impl From<Sample> for V1Sample {
    fn from(s: Sample) -> V1Sample {
        V1Sample {
            at: s.at,
            pending: s.queues.into_iter().map(|q| (q.name, q.pending)).collect(),
            cost_per_hour: s.cost_per_hour,
            booting: s.booting,
            running: s.running,
            stopping: s.stopping,
        }
    }
}

#[derive(Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    pub fn push(&mut self, sample: Sample) {
        let cutoff = sample.at.saturating_sub(WINDOW_MS);
        while self.samples.front().is_some_and(|s| s.at < cutoff) || self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: Millis) -> Sample {
        Sample { at: ms, queues: vec![], cost_per_hour: 0.0, booting: 0, running: 0, stopping: 0 }
    }

    #[test]
    fn keeps_one_hour() {
        let mut h = History::default();
        for t in [0, 1_000_000, 2_000_000, 3_600_000, 4_000_000] {
            h.push(at(t));
        }
        let kept: Vec<Millis> = h.samples().iter().map(|s| s.at).collect();
        assert_eq!(kept, vec![1_000_000, 2_000_000, 3_600_000, 4_000_000]);
    }
}
