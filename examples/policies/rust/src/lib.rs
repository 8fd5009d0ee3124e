//! Night freeze: outside working hours (UTC), remove planned launches for
//! chosen queues, so a batch queue does not scale up overnight while
//! nobody is watching the bill. Instances already running are untouched.
//!
//! A launch is removed when every queue its resource serves is frozen: a
//! resource that also serves an unfrozen queue may be launching for that one.
//!
//! Settings (JSON, kebab-case):
//! - `queues` (default `[]`, meaning every queue): the queues to freeze.
//! - `open-hour` (default 8) and `close-hour` (default 20): launches are
//!   allowed from `open-hour`:00 up to `close-hour`:00 UTC. The window may
//!   wrap midnight (`open-hour = 22, close-hour = 6`).

use flockd_policy::{Plan, Policy, Snapshot, info};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub queues: Vec<String>,
    pub open_hour: u8,
    pub close_hour: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { queues: Vec::new(), open_hour: 8, close_hour: 20 }
    }
}

pub struct NightFreeze {
    settings: Settings,
}

impl Policy for NightFreeze {
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        if settings.open_hour > 23 || settings.close_hour > 23 {
            return Err(format!(
                "open-hour {} and close-hour {} must be hours of the day, 0 to 23",
                settings.open_hour, settings.close_hour
            ));
        }
        if settings.open_hour == settings.close_hour {
            return Err(
                "open-hour equals close-hour, which leaves no time to launch; remove the policy to never freeze".into(),
            );
        }
        Ok(NightFreeze { settings })
    }

    fn decide(&self, snapshot: &Snapshot, mut plan: Plan) -> Result<Plan, String> {
        let hour = (snapshot.now / 3_600_000 % 24) as u8;
        let (open, close) = (self.settings.open_hour, self.settings.close_hour);
        let is_open = if open < close { (open..close).contains(&hour) } else { hour >= open || hour < close };
        if is_open {
            return Ok(plan);
        }
        let frozen = |queue: &String| self.settings.queues.is_empty() || self.settings.queues.contains(queue);
        plan.launches.retain(|launch| {
            let serves_only_frozen = snapshot.resource(&launch.resource).is_some_and(|r| r.queues.iter().all(frozen));
            if serves_only_frozen {
                info(&format!(
                    "night-freeze: removed launch of {} × {} at {hour}:xx UTC, outside {open}:00–{close}:00 (was: {})",
                    launch.count, launch.resource, launch.reason
                ));
            }
            !serves_only_frozen
        });
        Ok(plan)
    }
}

flockd_policy::export_policy!(NightFreeze);

#[cfg(test)]
mod tests {
    #[test]
    fn case_file_passes() {
        flockd_policy::testing::cases::assert_case_file::<super::NightFreeze>(include_str!("../cases.toml"));
    }
}
