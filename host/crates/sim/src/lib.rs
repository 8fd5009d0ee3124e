//! A simulated cloud and queue server on a clock someone else moves.
//!
//! [`SimWorld`] holds every simulated machine. Its [`SimCloud`] handles are
//! the [`flockd_core::CloudProvider`]s; what the agent on a booted machine does
//! goes through [`Agents`], which [`SimQueue`] implements together with
//! [`flockd_core::QueueSource`] (another implementation can put a real queue
//! server behind the same machines). Nothing moves until [`SimWorld::step`]:
//! a replay sets a [`flockd_core::ManualClock`] and steps between ticks; real-time
//! mode uses the system clock and [`SimWorld::spawn_stepper`].
//!
//! Same settings, same seed, same calls at the same clock readings: same
//! world, down to instance ids (`sim-000001`, …) and task ids.

mod queue;
mod settings;
mod world;

pub use queue::{Agents, PulledTask, SimQueue, TaskRecord};
pub use settings::{Outage, OutageError, SimProviderSettings, SimResourceSettings};
pub use world::{ResourceStats, SimCloud, SimWorld};
