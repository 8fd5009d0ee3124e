//! Log lines through the host, the one thing a policy may import.

use crate::LogLevel;

/// Sends a line to the host's log (tagged there with the plugin's name).
///
/// Outside wasm (native unit tests) the line is kept for
/// [`crate::testing::take_logs`] instead.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_family = "wasm")]
    crate::bindings::flockd::policy::host::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    crate::testing::record_log(level, message);
}

pub fn debug(message: &str) {
    log(LogLevel::Debug, message)
}

pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

pub fn error(message: &str) {
    log(LogLevel::Error, message)
}
