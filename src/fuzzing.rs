//! Fuzz harnesses: the code the cargo-fuzz targets in `fuzz/` run, and that
//! `tests/fuzz_regressions.rs` replays on every input a fuzzer ever found a problem with.
//! Not part of the API.
//!
//! Each harness turns arbitrary bytes into calls on one layer, the way the layer above it
//! makes them, and checks what that layer promises besides not panicking:
//!
//! | harness      | input                                              | checks                                                              |
//! |--------------|----------------------------------------------------|---------------------------------------------------------------------|
//! | `pipeline`   | link type, settings, length-prefixed frames        | connection table within its cap, out-of-order bytes within theirs, one connection record per connection; with bit 5 of the settings, the same output with 1 and 2 threads (unless a cap was reached) |
//! | `pcap`       | settings byte, then a capture file                 | no panic, one connection record per connection; with bit 4 of the settings, the same output with 1 and 2 threads (unless a cap was reached) |
//! | `h1`         | mode, split sizes, one stream for both parsers     | progress on every step, message order, bodies match Content-Length  |
//! | `session`    | a list of client/server events                     | every exchange written once                                         |
//! | `reassembly` | a list of segments, ACKs and flushes               | delivered + gap bytes = stream offset, content, FIN once, buffer cap |
//!
//! Formats are documented on each function; `fuzz/seed-corpus.py` writes seeds in them.

use crate::capture;
use crate::decode::{self, linktype, Decoded};
use crate::flow::{Backend, FlowTable};
use crate::h1::{self, Framing, Parser, Role, Step};
use crate::limits::Limits;
use crate::pipeline::{Analyzer, Collector, Config, Output, TICK_US};
use crate::reassembly::{Reassembler, StreamSink};
use crate::record::{OrderKey, Record, Side};
use crate::report::json::JsonLines;
use crate::report::table::TableReport;
use crate::session::{CloseKind, Ctx, Emitter, Session};
use crate::summary::Summary;
use crate::time::Ts;
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every harness by name (the fuzz target and the regression-test directory are named alike).
pub const TARGETS: &[&str] = &["pipeline", "pcap", "h1", "session", "reassembly"];

/// Runs the harness called `target` on `data`. False if there is no such harness.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "pipeline" => pipeline(data),
        "pcap" => pcap(data),
        "h1" => h1(data),
        "session" => session(data),
        "reassembly" => reassembly(data),
        _ => return false,
    }
    true
}

/// 2026-01-15T10:00:00Z, where harness time starts.
const T0: i64 = 1_768_471_200_000_000;

/// Reads an input front to back; past the end every read is zero or empty.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

/// Small bounds, so that inputs a fuzzer can find reach every limit.
fn small_limits() -> Limits {
    Limits {
        max_connections: 16,
        max_ooo_bytes: 64,
        max_ooo_segments: 4,
        max_head_bytes: 64,
        head_buffer_cap: 128,
        max_headers: 4,
        max_trailer_bytes: 32,
        max_chunk_line: 16,
        max_pending: 2,
        idle_timeout_us: 10_000_000,
        slow_first_byte_us: 100_000,
        ..Limits::default()
    }
}

/// Bounds read from the input, clamped the way `cli` clamps the command line's.
fn limits_from(inp: &mut Input<'_>) -> Limits {
    let max_head_bytes = usize::from(inp.u8());
    Limits {
        max_connections: usize::from(inp.u8()).max(1),
        max_ooo_bytes: usize::from(inp.u8()),
        max_ooo_segments: usize::from(inp.u8() % 16),
        max_head_bytes,
        head_buffer_cap: usize::from(inp.u8()).max(max_head_bytes),
        max_headers: usize::from(inp.u8() % 16),
        max_trailer_bytes: usize::from(inp.u8()),
        max_chunk_line: usize::from(inp.u8()).max(3),
        max_pending: usize::from(inp.u8() % 8).max(1),
        idle_timeout_us: u64::from(inp.u8()) * 1_000_000,
        slow_first_byte_us: u64::from(inp.u8()) * 10_000,
        show_secrets: inp.u8() & 1 == 1,
        ..Limits::default()
    }
}

/// Settings byte shared by `pipeline` and `pcap`: bits 0-1 pick the limits (default, small,
/// read from the input), bit 2 adds `--backend 8080`, bit 3 writes the table report instead
/// of JSON.
fn settings(bits: u8, inp: &mut Input<'_>) -> (Config, bool) {
    let limits = match bits & 3 {
        1 => small_limits(),
        2 => limits_from(inp),
        _ => Limits::default(),
    };
    let backends = if bits & 4 != 0 {
        vec![Backend {
            ip: None,
            port: 8080,
        }]
    } else {
        Vec::new()
    };
    let cfg = Config {
        limits: Arc::new(limits),
        backends: Arc::new(backends),
        threads: 1,
    };
    (cfg, bits & 8 != 0)
}

/// Writes every record through a real report writer into the void, and counts connections.
struct NullOutput {
    json: Option<JsonLines<io::Sink>>,
    table: Option<TableReport<io::Sink>>,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    connections: u64,
    retries: u64,
}

impl NullOutput {
    fn new(table: bool, counts: Arc<Mutex<Counts>>) -> NullOutput {
        NullOutput {
            json: (!table).then(|| JsonLines::new(io::sink(), serde_json::Map::new(), false)),
            table: table.then(|| TableReport::new(io::sink(), true)),
            counts,
        }
    }
}

impl Output for NullOutput {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        if let (Record::Connection(_), Ok(mut c)) = (r, self.counts.lock()) {
            c.connections += 1;
        }
        match (&mut self.json, &mut self.table) {
            (Some(j), _) => j.record(r),
            (_, Some(t)) => t.record(r),
            _ => Ok(()),
        }
    }

    fn retry(&mut self, c: &crate::retries::Chain) -> io::Result<()> {
        if let Ok(mut n) = self.counts.lock() {
            n.retries += 1;
        }
        match (&mut self.json, &mut self.table) {
            (Some(j), _) => j.retry(c),
            (_, Some(t)) => t.retry(c),
            _ => Ok(()),
        }
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        match (&mut self.json, &mut self.table) {
            (Some(j), _) => j.summary(s),
            (_, Some(t)) => t.summary(s),
            _ => Ok(()),
        }
    }
}

/// Link types the `pipeline` harness picks from (the last one is not supported).
const LINKS: [i32; 11] = [
    linktype::ETHERNET,
    linktype::RAW,
    linktype::LINUX_SLL,
    linktype::LINUX_SLL2,
    linktype::NULL,
    linktype::LOOP,
    linktype::IPV4,
    linktype::IPV6,
    linktype::RAW_OLD_BSD,
    linktype::RAW_OLD_OPENBSD,
    147,
];

/// Index in the `pipeline` harness's link list of a pcap link type.
pub fn link_selector(link: i32) -> Option<u8> {
    LINKS.iter().position(|&l| l == link).map(|i| i as u8)
}

/// One frame of the `pipeline` format.
pub struct Frame<'a> {
    /// Microseconds since the previous frame (negative: the clock went back).
    pub dt: i64,
    /// Bytes on the wire beyond the captured ones (cut by the snaplen).
    pub cut: u32,
    /// A live read timeout at this time instead of a packet.
    pub advance: bool,
    pub data: &'a [u8],
}

/// Encodes a time step for a frame header: 6 bits of mantissa, 2 of exponent (×2^8 each), so
/// steps from 1 µs to about 17 minutes.
pub fn encode_dt(micros: u64) -> u8 {
    for e in 0..4u8 {
        let m = micros >> (8 * u32::from(e));
        if m < 64 {
            return (e << 6) | m as u8;
        }
    }
    0xff
}

fn decode_dt(b: u8) -> i64 {
    i64::from(b & 0x3f) << (8 * u32::from(b >> 6))
}

/// Appends one frame in the `pipeline` format.
pub fn encode_frame(out: &mut Vec<u8>, dt_micros: u64, cut: u32, data: &[u8]) {
    let data = &data[..data.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.push(encode_dt(dt_micros));
    out.push(cut.min(0x3f) as u8);
    out.extend_from_slice(data);
}

fn next_frame<'a>(inp: &mut Input<'a>) -> Frame<'a> {
    let len = usize::from(inp.u16());
    let dt = decode_dt(inp.u8());
    let flags = inp.u8();
    Frame {
        dt: if flags & 0x80 != 0 { -dt } else { dt },
        cut: u32::from(flags & 0x3f),
        advance: flags & 0x40 != 0,
        data: inp.bytes(len),
    }
}

/// Frames through the whole analysis.
///
/// Format: link selector (index into a list of link types), settings byte (see `settings`;
/// bit 4 drives the connection table directly instead of the `Analyzer`, to check its bounds
/// after every packet), the limits if the settings ask for them, then frames: length (u16 LE),
/// time step (see [`encode_dt`]), flags (bit 7 the clock goes back, bit 6 a live read timeout
/// instead of a packet, bits 0-5 bytes cut by the snaplen), then the frame's bytes.
pub fn pipeline(data: &[u8]) {
    let mut inp = Input::new(data);
    let link = LINKS[usize::from(inp.u8()) % LINKS.len()];
    let bits = inp.u8();
    let (cfg, table) = settings(bits, &mut inp);
    if bits & 0x10 != 0 {
        flow_table(link, &cfg, &mut inp);
        return;
    }
    if bits & 0x20 != 0 {
        threads_agree(link, &cfg, &mut inp);
        return;
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let out = NullOutput::new(table, counts.clone());
    let mut analyzer = Analyzer::new(&cfg, Collector::new(Box::new(out)));
    let mut t = T0;
    let mut frames = 0u64;
    while !inp.is_empty() {
        let f = next_frame(&mut inp);
        t = t.saturating_add(f.dt);
        if f.advance {
            analyzer.advance(Ts(t));
            continue;
        }
        frames += 1;
        let orig = (f.data.len() as u32).saturating_add(f.cut);
        analyzer.packet(link, Ts(t), f.data, orig);
    }
    let (summary, err) = analyzer.finish(Vec::new());
    assert!(err.is_none(), "a null output failed: {err:?}");
    assert_eq!(summary.read.packets, frames);
    let (written, retries) = counts
        .lock()
        .map(|c| (c.connections, c.retries))
        .unwrap_or_default();
    assert_eq!(
        written, summary.flow.connections,
        "every connection is written once"
    );
    assert_eq!(
        retries,
        summary.retries.failed() - summary.retries.untracked,
        "every failed request's fate is written once"
    );
}

/// The same frames and read timeouts through one thread and through two (the path live
/// capture takes: frames copied into chunks, indexed by the reading thread): the same
/// output, unless a cap was reached (each worker has its share of the tables).
fn threads_agree(link: i32, cfg: &Config, inp: &mut Input<'_>) {
    // (time, the frame and its length on the wire; none: a read timeout)
    type Event = (i64, Option<(Vec<u8>, u32)>);
    let mut events: Vec<Event> = Vec::new();
    let mut t = T0;
    while !inp.is_empty() {
        let f = next_frame(inp);
        t = t.saturating_add(f.dt);
        if f.advance {
            events.push((t, None));
        } else {
            let orig = (f.data.len() as u32).saturating_add(f.cut);
            events.push((t, Some((f.data.to_vec(), orig))));
        }
    }
    let run = |threads: usize| {
        let buf = SharedBuf::default();
        let out = JsonLines::new(buf.clone(), serde_json::Map::new(), false);
        let cfg = Config {
            threads,
            ..cfg.clone()
        };
        let mut analyzer = Analyzer::new(&cfg, Collector::new(Box::new(out)));
        for (t, e) in &events {
            match e {
                None => analyzer.advance(Ts(*t)),
                Some((data, orig)) => analyzer.packet(link, Ts(*t), data, *orig),
            }
        }
        let (summary, err) = analyzer.finish(Vec::new());
        assert!(err.is_none(), "a memory output failed: {err:?}");
        let bytes = buf.0.lock().map(|v| v.clone()).unwrap_or_default();
        (bytes, summary)
    };
    let (one, s1) = run(1);
    let (two, s2) = run(2);
    assert_threads_agree((&one, &s1), (&two, &s2));
}

/// The connection table driven as `pipeline::Single` drives it, with its bounds checked after
/// every packet.
fn flow_table(link: i32, cfg: &Config, inp: &mut Input<'_>) {
    let limits = &cfg.limits;
    let mut table = FlowTable::new(limits.clone(), cfg.backends.clone(), 1);
    let cap = limits.max_connections.max(16);
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    let mut t = T0;
    let mut next_tick: Option<i64> = None;
    let mut frame = 0u64;
    let mut connections = 0u64;
    let mut count = |out: &mut Vec<(OrderKey, Record)>| {
        for (_, r) in out.drain(..) {
            if matches!(r, Record::Connection(_)) {
                connections += 1;
            }
            let _ = serde_json::to_writer(io::sink(), &r);
        }
    };
    while !inp.is_empty() {
        let f = next_frame(inp);
        t = t.saturating_add(f.dt);
        frame += 1;
        match next_tick {
            None => next_tick = Some(t.saturating_add(TICK_US)),
            Some(due) if t >= due => {
                let mut ctx = Ctx {
                    ts: Ts(t),
                    frame,
                    key_frame: frame,
                    out: &mut out,
                };
                table.tick(Ts(t), &mut ctx);
                next_tick = Some(t.saturating_add(TICK_US));
            }
            Some(_) => {}
        }
        let orig = (f.data.len() as u32).saturating_add(f.cut);
        if let Decoded::Tcp(seg) = decode::decode(link, f.data, orig) {
            let mut ctx = Ctx {
                ts: Ts(t),
                frame,
                key_frame: frame,
                out: &mut out,
            };
            table.segment(&seg, &mut ctx);
        }
        assert!(
            table.tracked() <= cap,
            "{} connections tracked, cap {cap}",
            table.tracked()
        );
        let ooo_cap = table.tracked() * 2 * limits.max_ooo_bytes;
        assert!(
            table.buffered_bytes() <= ooo_cap,
            "{} out-of-order bytes held, cap {ooo_cap}",
            table.buffered_bytes()
        );
        count(&mut out);
    }
    let mut ctx = Ctx {
        ts: Ts(t),
        frame,
        key_frame: u64::MAX,
        out: &mut out,
    };
    table.drain(&mut ctx);
    count(&mut out);
    assert_eq!(table.tracked(), 0);
    assert_eq!(
        connections, table.stats.connections,
        "every connection is written once"
    );
}

static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

/// One thread's output and two threads' are the same, unless a cap was reached: a worker
/// evicts from its own share of the tables, and then the outputs may differ.
fn assert_threads_agree(one: (&[u8], &Summary), two: (&[u8], &Summary)) {
    let capped = |s: &Summary| s.flow.evicted > 0 || s.flow.ooo_overflows > 0;
    if !capped(one.1) && !capped(two.1) {
        assert!(
            one.0 == two.0,
            "--threads 2 differs from --threads 1:\n{}\n---\n{}",
            String::from_utf8_lossy(one.0),
            String::from_utf8_lossy(two.0)
        );
    }
}

/// Output bytes shared with the harness.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The JSON Lines output of `analyze` on `path` (error lines included), and the summary.
fn json_of(path: &str, cfg: &Config) -> (Vec<u8>, Summary) {
    let buf = SharedBuf::default();
    let out = JsonLines::new(buf.clone(), serde_json::Map::new(), false);
    let mut analyzer = Analyzer::new(cfg, Collector::new(Box::new(out)));
    let read = capture::read_file(path, None, &mut analyzer);
    let errors: Vec<String> = read.err().into_iter().collect();
    let (summary, err) = analyzer.finish(errors.clone());
    assert!(err.is_none(), "a memory output failed: {err:?}");
    let mut bytes = buf.0.lock().map(|v| v.clone()).unwrap_or_default();
    for e in errors {
        bytes.extend_from_slice(e.as_bytes());
    }
    (bytes, summary)
}

/// A capture file through the readers and the whole analysis.
///
/// Format: settings byte (see `settings`; bit 4: compare one thread with two), the limits if
/// it asks for them, then the file.
pub fn pcap(data: &[u8]) {
    let mut inp = Input::new(data);
    let bits = inp.u8();
    let (cfg, table) = settings(bits, &mut inp);
    let file = inp.rest();
    let n = TEMP_FILES.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("gatescope-fuzz-{}-{n}.pcap", std::process::id()));
    if std::fs::write(&path, file).is_err() {
        return;
    }
    if bits & 16 != 0 {
        // Sharding must not change the output: the mapped file is cut into windows that the
        // workers index in parallel from guessed record starts.
        let shown = path.to_string_lossy().into_owned();
        let (one, s1) = json_of(&shown, &cfg);
        let two_cfg = Config {
            threads: 2,
            ..cfg.clone()
        };
        let (two, s2) = json_of(&shown, &two_cfg);
        let _ = std::fs::remove_file(&path);
        assert_threads_agree((&one, &s1), (&two, &s2));
        return;
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let out = NullOutput::new(table, counts.clone());
    let mut analyzer = Analyzer::new(&cfg, Collector::new(Box::new(out)));
    let read = capture::read_file(&path.to_string_lossy(), None, &mut analyzer);
    let _ = std::fs::remove_file(&path);
    let errors = read.err().into_iter().collect();
    let (summary, err) = analyzer.finish(errors);
    assert!(err.is_none(), "a null output failed: {err:?}");
    let (written, retries) = counts
        .lock()
        .map(|c| (c.connections, c.retries))
        .unwrap_or_default();
    assert_eq!(
        written, summary.flow.connections,
        "every connection is written once"
    );
    assert_eq!(
        retries,
        summary.retries.failed() - summary.retries.untracked,
        "every failed request's fate is written once"
    );
}

/// Where a parser stands in the message sequence, to check the order of its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Between,
    Started,
    Body {
        expected: Option<u64>,
        got: u64,
        /// A gap was absorbed by the body: its bytes were not seen as `Body` steps.
        lossy: bool,
    },
    /// Looking for a message start after a gap or a mid-stream start.
    Resync,
    /// Past a fatal violation: only skipped bytes follow.
    Broken,
}

/// Feeds `data` to a parser the way `session` does (step until `NeedMore` with nothing left;
/// a response's framing set right after its head) and checks each step.
fn drive(p: &mut Parser, role: Role, method: Option<&str>, data: &[u8], seen: &mut Seen) {
    let mut d = data;
    let mut idle = 0u32;
    // Bounded: every step consumes input or is one of a few zero-length events in a row.
    while !d.is_empty() || p.owes_step() {
        let (n, step) = p.step(d);
        assert!(n <= d.len(), "consumed {n} of {}", d.len());
        d = &d[n..];
        if n == 0 {
            idle += 1;
            assert!(
                idle < 16,
                "no progress: {step:?} with {} byte(s) left",
                d.len()
            );
        } else {
            idle = 0;
        }
        if *seen == Seen::Broken {
            assert!(
                matches!(step, Step::Skipped(_) | Step::NeedMore),
                "{step:?} after the stream broke"
            );
        }
        match step {
            Step::NeedMore => {
                if d.is_empty() {
                    break;
                }
            }
            Step::MessageStart => {
                assert!(
                    matches!(seen, Seen::Between | Seen::Resync),
                    "message start while {seen:?}"
                );
                *seen = Seen::Started;
            }
            Step::Head(h) => {
                assert!(*seen == Seen::Started, "head while {seen:?}");
                let framing = match role {
                    Role::Response => {
                        let f = h1::response_framing(&h, method);
                        p.set_framing(f);
                        f
                    }
                    Role::Request => h1::request_framing(&h),
                };
                let expected = match framing {
                    Framing::Length(n) => Some(n),
                    Framing::None => Some(0),
                    _ => None,
                };
                *seen = Seen::Body {
                    expected,
                    got: 0,
                    lossy: false,
                };
            }
            Step::Body(b) => match seen {
                Seen::Body { got, .. } => *got += b,
                other => panic!("body while {other:?}"),
            },
            Step::End => {
                match *seen {
                    Seen::Body {
                        expected: Some(e),
                        got,
                        lossy: false,
                    } => assert_eq!(got, e, "body bytes of a Content-Length message"),
                    Seen::Body { .. } => {}
                    other => panic!("end while {other:?}"),
                }
                *seen = Seen::Between;
            }
            Step::Broken(_) => *seen = Seen::Broken,
            Step::Violation(_) | Step::Skipped(_) => {}
        }
    }
}

/// One stream through a request parser and a response parser, cut at arbitrary points, with
/// capture gaps.
///
/// Format: mode byte (bits 0-1 the method the response answers: none, GET, HEAD, CONNECT;
/// bit 2 small limits; bit 3 start mid-stream), four split bytes used in turn (n < 0xf0: a
/// piece of n + 1 bytes; n >= 0xf0: n - 0xef bytes lost to a gap), then the stream.
pub fn h1(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let splits = [inp.u8(), inp.u8(), inp.u8(), inp.u8()];
    let stream = inp.rest();
    let limits = if mode & 4 != 0 {
        small_limits()
    } else {
        Limits::default()
    };
    let method = [None, Some("GET"), Some("HEAD"), Some("CONNECT")][usize::from(mode & 3)];
    for role in [Role::Request, Role::Response] {
        let mut p = Parser::new(role, &limits);
        let mut seen = Seen::Between;
        if mode & 8 != 0 {
            p.resync();
            seen = Seen::Resync;
        }
        let mut pos = 0;
        let mut k = 0;
        while pos < stream.len() {
            let s = splits[k % splits.len()];
            k += 1;
            let left = stream.len() - pos;
            if s >= 0xf0 {
                let g = usize::from(s - 0xef).min(left);
                pos += g;
                if p.gap(g as u64) {
                    if let Seen::Body { lossy, .. } = &mut seen {
                        *lossy = true;
                    }
                } else {
                    assert!(p.is_resyncing(), "a gap that is not absorbed resyncs");
                    seen = Seen::Resync;
                }
                drive(&mut p, role, method, &[], &mut seen);
                continue;
            }
            let n = (usize::from(s) + 1).min(left);
            drive(&mut p, role, method, &stream[pos..pos + n], &mut seen);
            pos += n;
        }
    }
}

/// A whole HTTP conversation's events through a `Session`, as the flow layer delivers them.
///
/// Format: mode byte (bit 0 small limits, bit 1 the client side starts mid-stream, bit 2 the
/// server side), then events, each an opcode byte (low 3 bits) and its operands:
/// 0/1 client/server data (length u16 LE, bytes); 2/3 client/server gap (length u8 + 1, times
/// 2^20 if bit 7); 4/5 client/server close (FIN, or RST if bit 7, which ends the connection;
/// a server close carries an ACK offset u8 if bit 6); 6 a timer tick after u8 × 50 ms;
/// 7 time passes, u8 ms.
pub fn session(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let limits = if mode & 1 != 0 {
        small_limits()
    } else {
        Limits::default()
    };
    let client = SocketAddr::from(([10, 0, 0, 1], 40000));
    let server = SocketAddr::from(([10, 0, 0, 2], 8080));
    let mut s = Session::new(
        Emitter::new(1, client, server),
        &limits,
        mode & 2 != 0,
        mode & 4 != 0,
    );
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    let mut written: HashSet<u32> = HashSet::new();
    let mut t = T0;
    let mut frame = 0u64;
    let (mut client_fin, mut server_fin) = (false, false);
    let mut check = |out: &mut Vec<(OrderKey, Record)>| {
        for (_, r) in out.drain(..) {
            if let Record::Exchange(e) = &r {
                assert!(
                    written.insert(e.index),
                    "exchange {} written twice",
                    e.index
                );
            }
            let _ = serde_json::to_writer(io::sink(), &r);
        }
    };
    while !inp.is_empty() {
        let op = inp.u8();
        frame += 1;
        t += 10;
        let mut ctx = Ctx {
            ts: Ts(t),
            frame,
            key_frame: frame,
            out: &mut out,
        };
        match op & 7 {
            0 | 1 => {
                let len = usize::from(inp.u16());
                let bytes = inp.bytes(len);
                if op & 7 == 0 && !client_fin {
                    s.client_data(bytes, &mut ctx);
                } else if op & 7 == 1 && !server_fin {
                    s.server_data(bytes, &mut ctx);
                }
            }
            2 | 3 => {
                let mut len = u64::from(inp.u8()) + 1;
                if op & 0x80 != 0 {
                    len <<= 20;
                }
                if op & 7 == 2 && !client_fin {
                    s.gap(Side::Client, len, &mut ctx);
                } else if op & 7 == 3 && !server_fin {
                    s.gap(Side::Server, len, &mut ctx);
                }
            }
            4 | 5 => {
                let how = if op & 0x80 != 0 {
                    CloseKind::Rst
                } else {
                    CloseKind::Fin
                };
                if op & 7 == 4 {
                    client_fin = true;
                    s.client_close(how, &mut ctx);
                } else {
                    let ack = (op & 0x40 != 0).then(|| u64::from(inp.u8()));
                    server_fin = true;
                    s.server_close(how, ack, &mut ctx);
                }
                if how == CloseKind::Rst {
                    break;
                }
            }
            6 => {
                t += i64::from(inp.u8()) * 50_000;
                ctx.ts = Ts(t);
                s.tick(Ts(t), &mut ctx);
            }
            _ => t += i64::from(inp.u8()) * 1_000,
        }
        check(&mut out);
    }
    let mut ctx = Ctx {
        ts: Ts(t),
        frame,
        key_frame: u64::MAX,
        out: &mut out,
    };
    s.finish(Ts(t), &mut ctx);
    check(&mut out);
}

/// The byte at stream offset `o` of the reassembly harness's stream.
fn stream_byte(o: u64) -> u8 {
    (o.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Checks what a reassembler delivers against the stream it was cut from.
#[derive(Default)]
struct Tally {
    data: u64,
    gaps: u64,
    fin: bool,
    /// A segment with bytes that differ from the stream was fed: content is not checked.
    dirty: bool,
}

impl StreamSink for Tally {
    fn data(&mut self, bytes: &[u8]) {
        assert!(!self.fin, "data after the FIN");
        assert!(!bytes.is_empty(), "empty data call");
        if !self.dirty {
            for (i, &b) in bytes.iter().enumerate() {
                let o = self.data + self.gaps + i as u64;
                assert_eq!(b, stream_byte(o), "byte at stream offset {o}");
            }
        }
        self.data += bytes.len() as u64;
    }
    fn gap(&mut self, len: u64) {
        assert!(!self.fin, "gap after the FIN");
        assert!(len > 0, "empty gap");
        self.gaps += len;
    }
    fn fin(&mut self) {
        assert!(!self.fin, "FIN delivered twice");
        self.fin = true;
    }
}

/// Segments, ACKs and flushes on one reassembler.
///
/// Format: base sequence number (u32 LE), buffer bytes (u8 × 16 + 1), buffer segments
/// (u8 % 32 + 1), then operations, each an opcode byte and its operands. Opcode low 2 bits:
/// 0 a segment at an offset from the next expected byte (i16 LE), 3 a segment at an absolute
/// sequence number (u32 LE); both then take a length (u8), snaplen-cut bytes (u8, times 256 if
/// bit 4), FIN if bit 5, and with bit 6 their own bytes from the input instead of the
/// stream's. 1 an ACK at an offset from the next expected byte (i16 LE); 2 the connection
/// ends (flush).
pub fn reassembly(data: &[u8]) {
    let mut inp = Input::new(data);
    let base = inp.u32();
    let max_bytes = usize::from(inp.u8()) * 16 + 1;
    let max_segments = usize::from(inp.u8() % 32) + 1;
    let mut r = Reassembler::new(base, max_bytes, max_segments);
    let mut sink = Tally::default();
    let mut fin_at: Option<u64> = None;
    while !inp.is_empty() {
        let op = inp.u8();
        match op & 3 {
            0 | 3 => {
                let seq = if op & 3 == 0 {
                    let rel = i64::from(inp.u16() as i16);
                    base.wrapping_add((r.next_offset() as i64 + rel) as u32)
                } else {
                    inp.u32()
                };
                let len = usize::from(inp.u8());
                let mut missing = u32::from(inp.u8());
                if op & 0x10 != 0 {
                    missing <<= 8;
                }
                let fin = op & 0x20 != 0;
                let start = r.offset_of(seq);
                let payload: Vec<u8> = if op & 0x40 != 0 {
                    let own = inp.bytes(len).to_vec();
                    let matches = own
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == stream_byte((start + i as i64) as u64));
                    if !matches && start + (own.len() as i64) > r.next_offset() as i64 {
                        sink.dirty = true;
                    }
                    own
                } else {
                    (0..len)
                        .map(|i| stream_byte((start + i as i64) as u64))
                        .collect()
                };
                if fin && fin_at.is_none() && !r.finished() {
                    let at = start + payload.len() as i64 + i64::from(missing);
                    if at >= r.next_offset() as i64 {
                        fin_at = Some(at as u64);
                    }
                }
                r.segment(seq, &payload, missing, fin, &mut sink);
            }
            1 => {
                let rel = i64::from(inp.u16() as i16);
                let ack = base.wrapping_add((r.next_offset() as i64 + rel) as u32);
                r.acked(ack, &mut sink);
            }
            _ => {
                r.flush(&mut sink);
                assert_eq!(r.buffered(), 0, "bytes held after a flush");
            }
        }
        assert!(
            r.buffered() <= max_bytes,
            "{} bytes held, cap {max_bytes}",
            r.buffered()
        );
        assert_eq!(
            sink.data + sink.gaps,
            r.next_offset(),
            "delivered + gap bytes = stream offset"
        );
        assert_eq!(r.delivered, sink.data);
        assert_eq!(r.gap_bytes, sink.gaps);
        assert_eq!(r.finished(), sink.fin);
        if sink.fin {
            assert_eq!(
                Some(r.next_offset()),
                fin_at,
                "the FIN ends the stream where it was"
            );
        }
    }
    r.flush(&mut sink);
    assert_eq!(r.buffered(), 0);
    assert_eq!(sink.data + sink.gaps, r.next_offset());
    if fin_at.is_some() {
        assert!(sink.fin, "a FIN was seen but never delivered");
    }
}
