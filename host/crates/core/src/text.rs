//! Text that comes from outside (a policy's reasons and log lines, a cloud's
//! error messages, names a queue server reports) ends up in the text log,
//! the journal and the dashboard's log tail. A newline or an escape sequence
//! in it would forge a log line or repaint a terminal, so every edge where
//! such text enters passes it through [`printable`].

use std::borrow::Cow;

/// `text` with every control character (newlines, carriage returns, tabs,
/// escape sequences, other C0/C1 codes) written as a visible escape, so it
/// stays on one line and shows what was sent. Text without any is returned
/// as it is, without a copy.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`printable`], owning.
pub fn printable_owned(text: String) -> String {
    match printable(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

/// `text` cut to at most `max` bytes on a character boundary, the cut marked
/// (the mark included in `max`).
pub fn cut(text: String, max: usize) -> String {
    shorten(text, max, max.saturating_sub('…'.len_utf8()))
}

/// `text` longer than `max` bytes: its first `max` bytes (on a character
/// boundary), then the mark after them.
pub fn cut_after(text: String, max: usize) -> String {
    shorten(text, max, max)
}

fn shorten(mut text: String, limit: usize, keep: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut end = keep;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes_and_the_rest_stays() {
        assert!(matches!(printable("plain text, ünïcode ✓"), Cow::Borrowed(_)));
        assert_eq!(
            printable("ok\n2026-12-02T00:00:00Z  INFO flockd: forged\r\x1b[2K\u{85}"),
            "ok\\n2026-12-02T00:00:00Z  INFO flockd: forged\\r\\u{1b}[2K\\u{85}"
        );
        assert!(!printable_owned("a\nb\tc".into()).chars().any(char::is_control));
    }

    #[test]
    fn cut_text_ends_on_a_character_boundary_and_is_marked() {
        assert_eq!(cut("short".into(), 10), "short");
        let cut_text = cut("ééééé".into(), 6);
        assert!(cut_text.len() <= 6, "{cut_text:?}");
        assert_eq!(cut_text, "é…");
    }
}
