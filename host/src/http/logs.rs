//! The dashboard's live log tail: the last lines flockd logged, formatted
//! exactly as on stderr (same formatter, no colours), kept in a ring.
//!
//! The tail is a second `fmt` layer whose writer appends to [`LogTail`]
//! instead of a file, so what the dashboard shows is what an operator would
//! read in the journal of the service, and nothing more.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

/// Lines kept for the dashboard.
pub const TAIL_LINES: usize = 500;

#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    /// Increases by one per line, so a poller asks only for what is new.
    pub seq: u64,
    pub line: String,
}

#[derive(Default)]
struct Ring {
    next_seq: u64,
    lines: VecDeque<LogLine>,
}

/// A bounded ring of formatted log lines. Cheap to clone.
#[derive(Clone)]
pub struct LogTail {
    ring: Arc<Mutex<Ring>>,
    capacity: usize,
}

impl LogTail {
    pub fn new(capacity: usize) -> Self {
        LogTail { ring: Default::default(), capacity: capacity.max(1) }
    }

    pub fn push(&self, line: &str) {
        let mut ring = self.ring.lock().unwrap();
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.lines.len() == self.capacity {
            ring.lines.pop_front();
        }
        ring.lines.push_back(LogLine { seq, line: line.to_string() });
    }

    /// Lines with `seq >= after`, oldest first, and the seq to ask from next.
    pub fn since(&self, after: u64) -> (Vec<LogLine>, u64) {
        let ring = self.ring.lock().unwrap();
        (ring.lines.iter().filter(|l| l.seq >= after).cloned().collect(), ring.next_seq)
    }

    /// A `fmt` layer that writes into this tail, formatted like stderr's
    /// (`json` as JSON objects, otherwise plain text without colours).
    pub fn layer<S>(&self, json: bool) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(PlainFields::default())
            .with_writer(self.clone());
        if json { Box::new(layer.json()) } else { Box::new(layer) }
    }
}

/// The default field formatter under a type of its own. Formatted span
/// fields are cached per formatter type, so sharing stderr's would hand the
/// tail stderr's colour codes.
#[derive(Default)]
pub struct PlainFields(tracing_subscriber::fmt::format::DefaultFields);

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for PlainFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

/// The process-wide tail that `flockd`'s logging feeds (installed by
/// `cli::init_logging`); the HTTP server reads it.
pub fn global() -> &'static LogTail {
    static TAIL: OnceLock<LogTail> = OnceLock::new();
    TAIL.get_or_init(|| LogTail::new(TAIL_LINES))
}

/// One event's bytes; pushed as lines when the formatter is done with it.
pub struct EventWriter {
    tail: LogTail,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.lines().filter(|l| !l.is_empty()) {
            self.tail.push(line);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTail {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter { tail: self.clone(), buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_the_last_lines_formatted_and_numbered() {
        let tail = LogTail::new(3);
        // Beside a colouring stderr layer, as in flockd.
        let coloured = tracing_subscriber::fmt::layer().with_ansi(true).with_writer(std::io::sink);
        let subscriber = tracing_subscriber::registry().with(coloured).with(tail.layer(false));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("tick", tick = 7);
            let _entered = span.enter();
            for i in 0..5 {
                tracing::info!(n = i, "line {i}");
            }
        });
        let (lines, next) = tail.since(0);
        assert_eq!(next, 5);
        assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![2, 3, 4], "oldest dropped");
        assert!(lines[2].line.contains("line 4") && lines[2].line.contains("INFO"), "{:?}", lines[2]);
        assert!(!lines[2].line.contains('\u{1b}'), "no colour codes: {:?}", lines[2]);
        assert!(lines[2].line.contains("tick{tick=7}"), "span fields, plain: {:?}", lines[2]);
        let (newer, _) = tail.since(4);
        assert_eq!(newer.len(), 1);
    }
}
