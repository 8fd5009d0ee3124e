//! The default policies, compiled from `plugins/` by the build script.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component bytes of a built-in policy.
pub fn component(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _, _)| *n == name).map(|(_, bytes, _)| *bytes)
}

/// The case file shipped with a built-in policy (its behaviour, as tests).
pub fn cases(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _, _)| *n == name).map(|(_, _, cases)| *cases).filter(|c| !c.is_empty())
}

/// Built-in names in default chain order.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _, _)| *n)
}
