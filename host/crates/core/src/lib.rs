//! flockd's core: the planning types, the seams to the outside world and the
//! controller that drives one tick. Nothing here names wasmtime, WIT, AWS or
//! GCP; those live in their own crates and convert at the edge.

pub mod clock;
pub mod controller;
pub mod decider;
pub mod guardrails;
pub mod journal;
pub mod leader;
pub mod ledger;
pub mod model;
pub mod naming;
pub mod provider;
pub mod provider_layers;
pub mod queue_source;
pub mod spend;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;

pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use controller::{
    ActionError, Controller, ControllerConfig, OnShutdown, OperatorAction, QueueSpec, ResourceSpec, Seams,
};
pub use decider::{Decider, Decision, PolicyRun};
pub use guardrails::HardLimits;
pub use journal::{Action, Outcome, TickRecord};
pub use leader::{Elector, Fenced, Leadership, LeaseAnswer, LeaseBackend, LeaseTimings};
pub use model::*;
pub use provider::{
    CloudInstance, CloudProvider, CloudState, LaunchRequest, MachineFailure, ProviderError, ProviderScope,
};
pub use provider_layers::{Measured, ProviderCall, ProviderCallSink, Retrying, ThrottleBackoff, Timed};
pub use queue_source::{QueueObservation, QueueSource, QueueState, SourceError, Worker};
pub use store::{HostState, JournalQuery, MemoryStore, StateStore};
