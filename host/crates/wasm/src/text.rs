//! Text a policy hands the host, bounded before it goes anywhere.

/// Text a policy hands back (a declined call's message, each action's
/// reason) goes into logs, the journal and the dashboard every tick: cut to
/// this, so a plugin cannot flood them.
pub const MAX_POLICY_TEXT_BYTES: usize = 1024;

/// `text` from a policy, made printable (a newline or an escape sequence
/// must not forge a log line: `flockd_core::text`), cut to at most `max`
/// bytes (on a character boundary) and marked with an ellipsis when cut.
pub(crate) fn bounded_text(text: String, max: usize) -> String {
    flockd_core::text::cut_after(flockd_core::text::printable_owned(text), max)
}
