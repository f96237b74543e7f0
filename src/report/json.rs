//! JSON Lines: one flat object per line, tagged by `"type"` (`finding`, `exchange`,
//! `connection`, and a final `summary`). The schema is documented in the README; field names
//! are stable. Every line is flushed in live mode so a log shipper sees findings at once.

use crate::pipeline::Output;
use crate::record::Record;
use crate::summary::Summary;
use std::io::{self, Write};

pub struct JsonLines<W: Write + Send> {
    w: W,
    /// Fields added to every line (e.g. host, interface) for log pipelines.
    extra: serde_json::Map<String, serde_json::Value>,
    flush_each: bool,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(w: W, extra: serde_json::Map<String, serde_json::Value>, flush_each: bool) -> Self {
        JsonLines {
            w,
            extra,
            flush_each,
        }
    }

    fn line(&mut self, mut v: serde_json::Value) -> io::Result<()> {
        if let serde_json::Value::Object(m) = &mut v {
            for (k, x) in &self.extra {
                m.insert(k.clone(), x.clone());
            }
        }
        serde_json::to_writer(&mut self.w, &v)?;
        self.w.write_all(b"\n")?;
        if self.flush_each {
            self.w.flush()?;
        }
        Ok(())
    }
}

impl<W: Write + Send> Output for JsonLines<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        if self.extra.is_empty() {
            serde_json::to_writer(&mut self.w, r)?;
            self.w.write_all(b"\n")?;
            if self.flush_each {
                self.w.flush()?;
            }
            return Ok(());
        }
        let v = serde_json::to_value(r).map_err(io::Error::other)?;
        self.line(v)
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.line(s.to_json())?;
        self.w.flush()
    }
}
