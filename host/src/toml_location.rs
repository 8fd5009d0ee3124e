//! Where a key of a TOML document is written, so an error about a value can
//! point at its line and column, not only name it.

use toml::de::{DeTable, DeValue};

/// Line and column, both from 1 (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The location of a byte offset in `text`.
pub fn at_offset(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 }
}

/// Where the key at `path` is written: each element is a table key or, for
/// an array (like `[[queue]]`), an index. Falls back to the deepest part of
/// the path that exists; None when not even the first does (or the text is
/// not TOML).
pub fn locate(text: &str, path: &[&str]) -> Option<Location> {
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut found: Option<usize> = None;
    let mut rest = path;
    while let Some((key, tail)) = rest.split_first() {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *key) else { break };
        // A key's own span is where it is written (`max-instances = 0`,
        // or the `gpu` of `[resource.gpu]`).
        found = Some(k.span().start);
        rest = tail;
        let mut value = v;
        // Arrays: the next element of the path is an index.
        while let DeValue::Array(items) = value.get_ref() {
            let Some(index) = rest.first().and_then(|i| i.parse::<usize>().ok()) else { break };
            let Some(item) = items.get(index) else { break };
            found = Some(item.span().start);
            rest = &rest[1..];
            value = item;
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|offset| at_offset(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "cluster = \"x\"\n\n[limits]\nmax-instances = 0\n\n[[queue]]\nname = \"a\"\nresources = [\"r1\", \"r2\"]\n\n[[queue]]\nname = \"b\"\n\n[resource.gpu]\nprovider = \"p\"\n";

    #[test]
    fn finds_keys_tables_and_array_elements() {
        assert_eq!(locate(DOC, &["cluster"]), Some(Location { line: 1, column: 1 }));
        assert_eq!(locate(DOC, &["limits", "max-instances"]), Some(Location { line: 4, column: 1 }));
        assert_eq!(locate(DOC, &["queue", "1", "name"]), Some(Location { line: 11, column: 1 }));
        assert_eq!(locate(DOC, &["queue", "0", "resources", "1"]).map(|l| l.line), Some(8));
        assert_eq!(locate(DOC, &["resource", "gpu", "provider"]), Some(Location { line: 14, column: 1 }));
        assert_eq!(locate(DOC, &["resource", "gpu", "nope"]).map(|l| l.line), Some(13), "deepest existing part");
        assert_eq!(locate(DOC, &["nothing"]), None);
    }

    #[test]
    fn offsets_count_characters() {
        assert_eq!(at_offset("a\nbé c", 6), Location { line: 2, column: 4 });
    }
}
