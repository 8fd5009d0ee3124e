//! Table-driven policy cases: a TOML file names a policy and lists cases
//! (settings, snapshot, plan so far, what to expect). `flockd policy test`
//! runs them, and so do the tests of every built-in policy.
//!
//! ```toml
//! policy = "scale-up"      # a built-in name, or a .wasm path relative to this file
//! [[case]]
//! name = "three pending over two resources"
//! settings = { cool-off-secs = 300 }          # optional, passed to configure as JSON
//! plan = { launches = [], terminations = [] } # optional plan so far
//! [case.snapshot]                             # a flockd_core::Snapshot
//! now = 1_700_000_000_000
//! [case.expect]                               # any subset
//! launches = { A = 2, B = 1 }
//! ```
//!
//! Expectations are checked against the plan the policy returns, which
//! includes whatever it kept of the plan it was given.

mod expect;
mod file;
pub mod report;
mod run;

pub use expect::Expect;
pub use file::{Case, CaseFile, CaseFileError, PolicyRef};
pub use report::{CaseOutcome, FileOutcome};
pub use run::{run_builtin_cases, run_file};
