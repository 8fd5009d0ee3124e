//! flockd's policy runtime: WebAssembly components implementing
//! `flockd:policy@0.1.0`, compiled once, called on a fresh instance under a
//! deadline and a memory cap, chained, and hot-swapped.
//!
//! The rest of flockd sees a [`flockd_core::Decider`]; WIT and wasmtime
//! types stay inside this crate.

mod bindings;
pub mod builtin;
pub mod cache;
pub mod chain;
pub mod engine;
pub mod inspect;
pub mod loader;
pub mod reload;
mod text;

pub use cache::{CacheOutcome, CompileCache};
pub use chain::{Chain, LoadedPolicy, Origin, PolicyCounters, PolicyRuntime, ReloadEvent, ReloadOutcome};
pub use engine::{
    CallError, CallLimits, DEADLINE_PER_SNAPSHOT_ITEM, LoadError, MAX_COPIED_BYTES, MAX_LAUNCH_ENTRIES, PolicyEngine,
};
pub use loader::{ChainLoadError, PolicyLoadError, PolicySpec, load_chain};
pub use reload::Reloader;
