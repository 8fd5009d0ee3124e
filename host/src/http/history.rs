//! The last hour of the fleet, one sample per tick, for the dashboard's
//! charts. Each sample is read off a tick's journal record, so at start the
//! charts are filled from the journal: a restart does not blank them.

use std::collections::{BTreeMap, VecDeque};

use flockd_core::journal::ResourceLine;
use flockd_core::{Millis, TickRecord};
use serde::Serialize;

/// How far back the charts go.
pub const WINDOW_MS: Millis = 3_600_000;
/// Upper bound on samples whatever the tick rate (one a second for an hour).
pub const MAX_SAMPLES: usize = 3_600;

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
    /// Per resource: machines booting, busy, idle and stopping.
    pub resources: Vec<ResourceLine>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueSample {
    pub name: String,
    pub pending: u32,
    /// How long its oldest pending task has waited.
    pub oldest_wait_secs: f64,
}

impl Sample {
    /// What a tick's record says of the fleet; none for a tick that saw
    /// nothing (or a record written before ticks kept their fleet).
    pub fn of(record: &TickRecord) -> Option<Sample> {
        let fleet = record.fleet.as_ref()?;
        let sum = |f: fn(&ResourceLine) -> u32| fleet.resources.iter().map(f).sum();
        Some(Sample {
            at: record.at,
            queues: record
                .queues
                .iter()
                .map(|q| QueueSample {
                    name: q.name.clone(),
                    pending: q.pending,
                    oldest_wait_secs: q.oldest_wait_ms as f64 / 1000.0,
                })
                .collect(),
            cost_per_hour: fleet.cost_per_hour,
            booting: sum(|r| r.booting),
            running: sum(|r| r.busy + r.idle),
            stopping: sum(|r| r.stopping),
            resources: fleet.resources.clone(),
        })
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

    /// The last hour before `now` from journal records (newest first, as
    /// the store gives them).
    pub fn from_journal(records: &[TickRecord], now: Millis) -> History {
        let mut history = History::default();
        let since = now.saturating_sub(WINDOW_MS);
        for sample in records.iter().rev().filter(|r| r.at >= since).filter_map(Sample::of) {
            history.push(sample);
        }
        history
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: Millis) -> Sample {
        Sample { at: ms, queues: vec![], cost_per_hour: 0.0, booting: 0, running: 0, stopping: 0, resources: vec![] }
    }

    /// The charts are rebuilt from the journal at start: the last hour of
    /// ticks that observed, in time order, per resource.
    #[test]
    fn the_last_hour_comes_back_from_the_journal() {
        use flockd_core::journal::{FleetLine, QueueLine};
        let record = |at: Millis, busy: u32| TickRecord {
            at,
            queues: vec![QueueLine { name: "q".into(), pending: 2, oldest_wait_ms: 30_000 }],
            fleet: Some(FleetLine {
                cost_per_hour: 1.5,
                resources: vec![ResourceLine { name: "gpu".into(), booting: 1, busy, idle: 0, stopping: 0 }],
            }),
            ..Default::default()
        };
        let blind = TickRecord { at: 5_000_000, observation_error: Some("down".into()), ..Default::default() };
        // Newest first, as a store answers; one record is older than an hour.
        let journal = [record(6_000_000, 3), blind, record(4_000_000, 2), record(1_000_000, 1)];
        let history = History::from_journal(&journal, 6_100_000);
        let samples = history.samples();
        assert_eq!(samples.iter().map(|s| s.at).collect::<Vec<_>>(), vec![4_000_000, 6_000_000]);
        assert_eq!((samples[1].booting, samples[1].running), (1, 3));
        assert_eq!(samples[1].resources[0].busy, 3);
        assert_eq!(samples[0].queues[0].oldest_wait_secs, 30.0);
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
