//! Write a flockd scaling policy in Rust.
//!
//! A policy is a pure function of its settings, a [`Snapshot`] of the world and
//! the [`Plan`] built so far by the policies before it in the chain. It returns
//! the amended plan. Implement [`Policy`] and export it:
//!
//! ```ignore
//! use flockd_policy::{Plan, Policy, Snapshot};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, Default)]
//! #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
//! struct Settings { max_per_tick: Option<u32> }
//!
//! struct MyPolicy { settings: Settings }
//!
//! impl Policy for MyPolicy {
//!     type Settings = Settings;
//!     fn new(settings: Settings) -> Result<Self, String> { Ok(MyPolicy { settings }) }
//!     fn decide(&self, snapshot: &Snapshot, mut plan: Plan) -> Result<Plan, String> {
//!         // ... plan.launch(..) / plan.terminate(..)
//!         Ok(plan)
//!     }
//! }
//!
//! flockd_policy::export_policy!(MyPolicy);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`; the artifact is a component the
//! host loads directly.
//!
//! Settings arrive as JSON text. An empty string (or `null`) means "all
//! defaults"; otherwise the text must parse into `Settings`. Put
//! `#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]` on the
//! settings struct so that `{}` also means defaults, a misspelt key is an
//! error naming it, and keys read like the rest of flockd's config.

mod helpers;
mod logging;
pub mod testing;

pub use helpers::{ago_secs, secs};
pub use logging::{debug, error, info, log, warn};

/// Generated from `wit/v0.1.0/policy.wit` (world `policy`).
///
/// Authors rarely need this module: the record types are re-exported at the
/// crate root and [`export_policy!`] implements the world's exports.
#[allow(clippy::too_many_arguments)] // generated lowering code, not ours
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit/v0.1.0",
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "__flockd_export_policy_world",
        default_bindings_module: "::flockd_policy::bindings",
    });
}

// The world's `use types.{snapshot, plan}` already puts `Snapshot` and `Plan`
// at the bindings root; everything comes from `types` here so each name is
// re-exported once.
pub use bindings::flockd::policy::types::{
    Budget, Failure, FailureKind, Instance, InstanceState, Launch, LogLevel, Market, Plan, Queue, Resource, Snapshot,
    Termination, TerminationCause,
};

/// A scaling policy: built once per plugin instance from its settings, then
/// asked to amend the plan on every tick.
pub trait Policy {
    /// Parsed from the plugin's settings JSON (see the crate docs for the
    /// serde attributes every settings struct should carry).
    type Settings: serde::de::DeserializeOwned + Default;

    /// Checks the settings and builds the policy. An `Err` is shown to the
    /// operator as-is: say which setting is wrong and what would be right.
    fn new(settings: Self::Settings) -> Result<Self, String>
    where
        Self: Sized;

    /// Amends `plan` (the plan built so far) for this `snapshot`. Append to
    /// the plan rather than rebuilding it: other policies' actions are not
    /// yours to drop unless that is the policy's job. Give every action a
    /// reason a person can check, with the numbers behind it.
    fn decide(&self, snapshot: &Snapshot, plan: Plan) -> Result<Plan, String>;
}

/// Parses settings text into a policy: the body of the exported `configure`.
///
/// Public so native tests can build a policy exactly as the host would.
pub fn configure<P: Policy>(policy_name: &str, settings_json: &str) -> Result<P, String> {
    let text = settings_json.trim();
    let settings = if text.is_empty() || text == "null" {
        P::Settings::default()
    } else {
        serde_json::from_str(text).map_err(|e| format!("invalid settings for policy `{policy_name}`: {e}"))?
    };
    P::new(settings).map_err(|e| format!("invalid settings for policy `{policy_name}`: {e}"))
}

/// Exports a [`Policy`] implementation as the component's `configure` and
/// `decide`. Use it once, at the crate root of a `cdylib`.
///
/// `configure` stores the policy for the life of this instance (the host
/// calls it on every fresh instance before `decide`, and instances are never
/// shared between threads).
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[doc(hidden)]
        mod __flockd_policy_exports {
            use super::*;

            ::std::thread_local! {
                static CONFIGURED: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            pub struct Exports;

            impl $crate::bindings::Guest for Exports {
                fn configure(settings: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    let policy = $crate::configure::<$policy>(env!("CARGO_PKG_NAME"), &settings)?;
                    CONFIGURED.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(policy));
                    ::std::result::Result::Ok(())
                }

                fn decide(
                    snapshot: $crate::Snapshot,
                    plan: $crate::Plan,
                ) -> ::std::result::Result<$crate::Plan, ::std::string::String> {
                    CONFIGURED.with(|slot| match &*slot.borrow() {
                        ::std::option::Option::Some(policy) => $crate::Policy::decide(policy, &snapshot, plan),
                        ::std::option::Option::None => ::std::result::Result::Err(::std::format!(
                            "policy `{}`: decide called before configure (the host must configure every fresh instance first)",
                            env!("CARGO_PKG_NAME")
                        )),
                    })
                }
            }

            $crate::bindings::__flockd_export_policy_world!(Exports with_types_in $crate::bindings);
        }
    };
}
