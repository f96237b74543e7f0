//! JSON Lines: one flat object per line, tagged by `"type"` (`finding`, `exchange`,
//! `connection`, `retry`, and a final `summary`). The schema is documented in the README; field names
//! are stable. In live mode every finding is flushed at once so a log shipper sees it while
//! the incident lasts; exchange and connection lines are flushed with it or within 100 ms of
//! the previous flush (a write per exchange would cost more than the analysis under load).

use crate::pipeline::Output;
use crate::record::Record;
use crate::summary::Summary;
use std::io::{self, Write};

pub struct JsonLines<W: Write + Send> {
    w: W,
    /// Fields added to every line (e.g. host, interface) for log pipelines.
    extra: serde_json::Map<String, serde_json::Value>,
    flush_each: bool,
    last_flush: std::time::Instant,
    /// A line is serialised here, then written at once (serde_json's many small writes into
    /// the `BufWriter` cost more than the copy).
    line_buf: Vec<u8>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(w: W, extra: serde_json::Map<String, serde_json::Value>, flush_each: bool) -> Self {
        JsonLines {
            w,
            extra,
            flush_each,
            last_flush: std::time::Instant::now(),
            line_buf: Vec::with_capacity(1024),
        }
    }

    fn line(&mut self, mut v: serde_json::Value, urgent: bool) -> io::Result<()> {
        if let serde_json::Value::Object(m) = &mut v {
            for (k, x) in &self.extra {
                // Never over a field of the record (`--tag` refuses those names anyway).
                m.entry(k.clone()).or_insert_with(|| x.clone());
            }
        }
        serde_json::to_writer(&mut self.w, &v)?;
        self.w.write_all(b"\n")?;
        self.maybe_flush(urgent)
    }

    /// One record's line: serialised straight into the line buffer (its fields in their
    /// declared order), or through a `Value` when `--tag` fields are to be added.
    fn write<T: serde::Serialize + ?Sized>(&mut self, r: &T, urgent: bool) -> io::Result<()> {
        if self.extra.is_empty() {
            self.line_buf.clear();
            serde_json::to_writer(&mut self.line_buf, r)?;
            self.line_buf.push(b'\n');
            self.w.write_all(&self.line_buf)?;
            return self.maybe_flush(urgent);
        }
        let v = serde_json::to_value(r).map_err(io::Error::other)?;
        self.line(v, urgent)
    }

    fn maybe_flush(&mut self, urgent: bool) -> io::Result<()> {
        if self.flush_each
            && (urgent || self.last_flush.elapsed() >= std::time::Duration::from_millis(100))
        {
            self.w.flush()?;
            self.last_flush = std::time::Instant::now();
        }
        Ok(())
    }
}

/// One record's line, as `JsonLines::record` writes it.
fn render(r: &Record, extra: &serde_json::Map<String, serde_json::Value>, out: &mut Vec<u8>) {
    // `out` holds the lines rendered before this one (a worker's batch): only this line may
    // be taken back.
    let start = out.len();
    let written = if extra.is_empty() {
        serde_json::to_writer(&mut *out, r)
    } else {
        serde_json::to_value(r).and_then(|mut v| {
            if let serde_json::Value::Object(m) = &mut v {
                for (k, x) in extra {
                    m.entry(k.clone()).or_insert_with(|| x.clone());
                }
            }
            serde_json::to_writer(&mut *out, &v)
        })
    };
    // Records hold no maps with non-string keys nor failing Serialize impls; should that
    // change, the line is left out rather than written half.
    if written.is_err() {
        out.truncate(start);
        return;
    }
    out.push(b'\n');
}

impl<W: Write + Send> Output for JsonLines<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        self.write(r, matches!(r, Record::Finding(_)))
    }

    /// Lines are rendered by the worker threads when there are several (serialising was a
    /// tenth of the work, and it would otherwise all fall on the thread that writes).
    fn renderer(&self) -> Option<crate::pipeline::Render> {
        let extra = self.extra.clone();
        Some(std::sync::Arc::new(move |r: &Record, out: &mut Vec<u8>| {
            render(r, &extra, out)
        }))
    }

    fn rendered(&mut self, finding: bool, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.maybe_flush(finding)
    }

    fn retry(&mut self, c: &crate::retries::Chain) -> io::Result<()> {
        self.write(&c.record(), true)
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.line(s.to_json(), true)?;
        self.w.flush()
    }
}
