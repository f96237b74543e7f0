//! Runs the analysis over a packet source, on one thread or sharded over several.
//!
//! Frames travel in [`Chunk`]s: buffers of whole capture records. A capture file is read
//! straight into them (see `capture`); frames from libpcap (live capture, standard input,
//! pcapng, BPF filters) are copied into them.
//!
//! With one thread, the calling thread walks each chunk and runs the whole chain.
//!
//! With N threads, every chunk is handed (shared, not copied) to all N workers. Every worker
//! walks every frame, so frame numbers and packet time (and with it the timer ticks, which
//! come from packet time stamps) are identical in all of them; each decodes the frame's TCP
//! header and fully processes only the connections of its own shard (a symmetric hash of the
//! 4-tuple, so both directions of a connection land on the same worker). Worker 0 alone counts
//! the reader statistics. The calling thread reads the next chunk while the workers analyse,
//! and merges their records: every record carries an [`OrderKey`] (frame, connection,
//! sequence), each worker reports after each chunk how far it got (its watermark), and records
//! below every worker's watermark are written in key order. The output is therefore
//! byte-identical to a single thread's whatever the thread count, and memory stays bounded by
//! the chunks in flight (a fixed pool).
//!
//! Time advances only by packet timestamps (and, in live mode, by the capture's read
//! timeouts): a tick every second of packet time lets connections expire and slow waits be
//! reported.

use crate::capture::Chunk;
use crate::decode::{self, Decoded, Flags, Segment};
use crate::flow::{Backend, FlowStats, FlowTable, Key};
use crate::limits::Limits;
use crate::record::{OrderKey, Record};
use crate::session::Ctx;
use crate::summary::{ReadStats, Summary};
use crate::time::Ts;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Packet time between ticks.
pub const TICK_US: i64 = 1_000_000;

/// Renders a record into the bytes an [`Output`] writes for it, on any thread.
pub type Render = Arc<dyn Fn(&Record, &mut Vec<u8>) + Send + Sync>;

/// Where records go: a report writer.
pub trait Output: Send {
    fn record(&mut self, r: &Record) -> io::Result<()>;
    fn summary(&mut self, s: &Summary) -> io::Result<()>;
    /// For outputs that write each record as self-contained bytes: how to render them, so
    /// that worker threads can do it in parallel (the bytes then go to [`Output::rendered`]).
    fn renderer(&self) -> Option<Render> {
        None
    }
    /// Writes a record that [`Output::renderer`] rendered as `bytes`.
    fn rendered(&mut self, r: &Record, bytes: &[u8]) -> io::Result<()> {
        let _ = bytes;
        self.record(r)
    }
}

/// Feeds records to the output and keeps the summary in step with what was written.
pub struct Collector {
    pub summary: Summary,
    out: Box<dyn Output>,
    /// The first write error (a closed pipe ends the run quietly).
    pub error: Option<io::Error>,
}

impl Collector {
    pub fn new(out: Box<dyn Output>) -> Collector {
        Collector {
            summary: Summary::default(),
            out,
            error: None,
        }
    }

    fn emit(&mut self, r: &Record) {
        if self.error.is_some() {
            return;
        }
        self.summary.observe(r);
        if let Err(e) = self.out.record(r) {
            self.error = Some(e);
        }
    }

    fn emit_rendered(&mut self, r: &Record, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.summary.observe(r);
        if let Err(e) = self.out.rendered(r, bytes) {
            self.error = Some(e);
        }
    }

    /// Writes the summary; returns the summary and the first write error.
    pub fn finish(mut self) -> (Summary, Option<io::Error>) {
        if self.error.is_none() {
            if let Err(e) = self.out.summary(&self.summary) {
                self.error = Some(e);
            }
        }
        (self.summary, self.error)
    }
}

/// Settings shared by every worker.
#[derive(Clone)]
pub struct Config {
    pub limits: Arc<Limits>,
    pub backends: Arc<Vec<Backend>>,
    pub threads: usize,
}

/// The analysis, whatever its threading.
pub enum Analyzer {
    Single(Box<Single>),
    Sharded(Box<Sharded>),
}

impl Analyzer {
    pub fn new(cfg: &Config, collector: Collector) -> Analyzer {
        if cfg.threads <= 1 {
            Analyzer::Single(Box::new(Single::new(cfg, collector)))
        } else {
            Analyzer::Sharded(Box::new(Sharded::new(cfg, collector)))
        }
    }

    /// One captured frame of link type `link`.
    pub fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        match self {
            Analyzer::Single(s) => s.packet(link, ts, data, orig_len),
            Analyzer::Sharded(s) => s.packet(link, ts, data, orig_len),
        }
    }

    /// An empty chunk to fill with capture records and pass to [`Analyzer::chunk`].
    pub fn chunk_buffer(&mut self) -> Chunk {
        match self {
            Analyzer::Single(s) => s.spare.take().unwrap_or_default(),
            Analyzer::Sharded(s) => s.free_chunk(),
        }
    }

    /// A chunk of whole capture records, the frames that follow those already given.
    pub fn chunk(&mut self, c: Chunk) {
        match self {
            Analyzer::Single(s) => s.chunk(c),
            Analyzer::Sharded(s) => s.chunk(c),
        }
    }

    /// Packet time moved on without a packet (live read timeout).
    pub fn advance(&mut self, now: Ts) {
        match self {
            Analyzer::Single(s) => s.advance(now),
            Analyzer::Sharded(s) => s.advance(now),
        }
    }

    /// The reader's counters (live mode adds kernel statistics).
    pub fn read_stats(&mut self) -> &mut ReadStats {
        match self {
            Analyzer::Single(s) => &mut s.engine.read,
            Analyzer::Sharded(s) => &mut s.read,
        }
    }

    /// Whether output failed (e.g. the pipe closed): reading can stop.
    pub fn output_failed(&self) -> bool {
        match self {
            Analyzer::Single(s) => s.collector.error.is_some(),
            Analyzer::Sharded(s) => s.merger.collector.error.is_some(),
        }
    }

    /// End of input: finish every connection, write the summary.
    pub fn finish(self, input_errors: Vec<String>) -> (Summary, Option<io::Error>) {
        match self {
            Analyzer::Single(s) => s.finish(input_errors),
            Analyzer::Sharded(s) => s.finish(input_errors),
        }
    }
}

/// Counts a frame in the reader statistics and decodes it.
fn classify<'a>(
    read: &mut ReadStats,
    link: i32,
    data: &'a [u8],
    orig_len: u32,
) -> Option<Segment<'a>> {
    read.packets += 1;
    read.bytes += u64::from(orig_len);
    match decode::decode(link, data, orig_len) {
        Decoded::Tcp(seg) => {
            read.tcp_packets += 1;
            if seg.missing > 0 {
                read.snaplen_cut_frames += 1;
            }
            Some(seg)
        }
        Decoded::Other => {
            read.non_tcp_packets += 1;
            None
        }
        Decoded::Malformed(_) => {
            read.malformed_packets += 1;
            None
        }
    }
}

/// The analysis of every frame on one thread: frame count, packet time and ticks, the
/// connection table. Records collect in `out`.
struct Engine {
    flow: FlowTable,
    out: Vec<(OrderKey, Record)>,
    next_tick: Option<Ts>,
    frame: u64,
    last_ts: Ts,
    read: ReadStats,
}

impl Engine {
    fn new(cfg: &Config) -> Engine {
        Engine {
            flow: FlowTable::new(cfg.limits.clone(), cfg.backends.clone(), 1),
            out: Vec::with_capacity(64),
            next_tick: None,
            frame: 0,
            last_ts: Ts(0),
            read: ReadStats::default(),
        }
    }

    fn maybe_tick(&mut self, ts: Ts, key_frame: u64) {
        match self.next_tick {
            None => self.next_tick = Some(Ts(ts.0 + TICK_US)),
            Some(t) if ts >= t => {
                let mut ctx = Ctx {
                    ts,
                    frame: key_frame,
                    key_frame,
                    out: &mut self.out,
                };
                self.flow.tick(ts, &mut ctx);
                self.next_tick = Some(Ts(ts.0 + TICK_US));
            }
            Some(_) => {}
        }
    }

    #[inline]
    fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        self.frame += 1;
        let frame = self.frame;
        self.last_ts = self.last_ts.max(ts);
        self.maybe_tick(ts, frame);
        let Some(seg) = classify(&mut self.read, link, data, orig_len) else {
            return;
        };
        let mut ctx = Ctx {
            ts,
            frame,
            key_frame: frame,
            out: &mut self.out,
        };
        self.flow.segment(&seg, &mut ctx);
    }

    /// Packet time moved on without a packet. True if it did move.
    fn advance(&mut self, now: Ts) -> bool {
        if now <= self.last_ts {
            return false;
        }
        self.last_ts = now;
        let key = self.frame;
        self.maybe_tick(now, key);
        true
    }

    /// End of input: every open connection is finished.
    fn drain(&mut self) {
        let mut ctx = Ctx {
            ts: self.last_ts,
            frame: self.frame,
            key_frame: u64::MAX,
            out: &mut self.out,
        };
        self.flow.drain(&mut ctx);
    }
}

/// Everything on the calling thread.
pub struct Single {
    engine: Engine,
    collector: Collector,
    /// The last chunk, for reuse.
    spare: Option<Chunk>,
}

impl Single {
    fn new(cfg: &Config, collector: Collector) -> Single {
        Single {
            engine: Engine::new(cfg),
            collector,
            spare: None,
        }
    }

    fn flush(&mut self) {
        // Tick records and the packet's own share a frame: order them as the merger would.
        self.engine.out.sort_unstable_by_key(|(k, _)| *k);
        for (_, r) in self.engine.out.drain(..) {
            self.collector.emit(&r);
        }
    }

    #[inline]
    fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        self.engine.packet(link, ts, data, orig_len);
        if !self.engine.out.is_empty() {
            self.flush();
        }
    }

    fn chunk(&mut self, c: Chunk) {
        let link = c.link;
        c.for_each(|_, ts, data, len| self.packet(link, ts, data, len));
        self.spare = Some(c);
    }

    fn advance(&mut self, now: Ts) {
        if self.engine.advance(now) {
            self.flush();
        }
    }

    fn finish(mut self, input_errors: Vec<String>) -> (Summary, Option<io::Error>) {
        self.engine.drain();
        self.flush();
        let mut c = self.collector;
        c.summary.read = self.engine.read;
        c.summary.flow = self.engine.flow.stats.clone();
        c.summary.input_errors = input_errors;
        c.finish()
    }
}

/// What each worker analyses in a chunk, and where the ticks fall: built by the calling
/// thread, which decodes every frame once (it counts them anyway), so that a worker touches
/// only the segments of its own connections, and never parses a header again.
#[derive(Default)]
struct Index {
    /// Per worker: the TCP segments of its connections, in frame order.
    segs: Vec<Vec<SegInfo>>,
    /// Ticks, in frame order: the frame that carries it, and the packet time.
    ticks: Vec<(u64, Ts)>,
    /// Frames in the chunk, and the number of the last.
    frames: u32,
    last_frame: u64,
}

impl Index {
    fn clear(&mut self) {
        for v in &mut self.segs {
            v.clear();
        }
        self.ticks.clear();
        self.frames = 0;
    }
}

/// A decoded TCP segment whose payload is in the chunk.
#[derive(Clone, Copy)]
struct SegInfo {
    frame: u64,
    ts: Ts,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    /// Payload: offset in the chunk and length.
    at: u32,
    len: u32,
    missing: u32,
    window: u16,
    flags: u8,
}

/// A chunk and its index, shared by all workers.
struct Shared {
    chunk: Chunk,
    index: Index,
}

/// From the calling thread to a worker.
enum Work {
    Frames(Arc<Shared>),
    /// Live read timeout: packet time is `now`, a tick is due or not; `upto` is the position.
    Advance {
        now: Ts,
        tick: bool,
        frame: u64,
        upto: Pos,
    },
    /// End of input, at this packet time and frame.
    End {
        last_ts: Ts,
        frame: u64,
    },
}

/// Where the analysis stands: frames processed, then live advances since the last frame.
/// Records produced at a position are ordered after those of every earlier position.
type Pos = (u64, u32);

/// A record, and its output bytes if the output renders records ahead (see
/// [`Output::renderer`]).
type Rendered = (OrderKey, Record, Option<Box<[u8]>>);

/// Renders a batch of records with `render`, if any.
fn render(
    records: &mut Vec<(OrderKey, Record)>,
    render: &Option<Render>,
    buf: &mut Vec<u8>,
) -> Vec<Rendered> {
    records
        .drain(..)
        .map(|(k, r)| {
            let bytes = render.as_ref().map(|f| {
                buf.clear();
                f(&r, buf);
                buf.as_slice().into()
            });
            (k, r, bytes)
        })
        .collect()
}

/// From a worker to the calling thread.
enum Report {
    /// Records produced since the last report, all at positions ≤ `upto`; `adv` is the
    /// advance that produced them (0: frames).
    Records {
        worker: usize,
        adv: u32,
        records: Vec<Rendered>,
        upto: Pos,
    },
    /// A chunk every worker is done with.
    Free(Box<Shared>),
    /// End of input: the last records (connections open at the end) and the counters.
    Done {
        worker: usize,
        records: Vec<Rendered>,
        flow: Box<FlowStats>,
    },
}

/// Chunks in flight per worker (beyond these the reader waits): enough to keep every worker
/// busy while the reader fills the next, few enough to bound memory.
const CHUNKS_PER_WORKER: usize = 2;

/// Connections sharded over worker threads; the calling thread reads, indexes each chunk,
/// and writes the output.
pub struct Sharded {
    workers: Vec<Sender<Work>>,
    handles: Vec<JoinHandle<()>>,
    reports: Receiver<Report>,
    /// Chunks back from the workers, and the indexes that went with them.
    free: Vec<Chunk>,
    free_index: Vec<Index>,
    allocated: usize,
    max_chunks: usize,
    /// Frames from [`Analyzer::packet`] not yet handed over.
    filling: Option<(Chunk, Index)>,
    frame: u64,
    last_ts: Ts,
    next_tick: Option<Ts>,
    /// Effective live advances since the last frame.
    adv: u32,
    pub read: ReadStats,
    merger: Merger,
    /// A worker is gone (a bug): chunks sent to it never come back.
    broken: bool,
}

impl Sharded {
    fn new(cfg: &Config, collector: Collector) -> Sharded {
        let n = cfg.threads.max(2);
        let (report_tx, reports) = channel::<Report>();
        let mut workers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let renderer = collector.out.renderer();
        for w in 0..n {
            let (tx, rx) = channel::<Work>();
            let report = report_tx.clone();
            let flow = FlowTable::new(cfg.limits.clone(), cfg.backends.clone(), n);
            let renderer = renderer.clone();
            handles.push(std::thread::spawn(move || {
                worker(w, flow, rx, report, renderer)
            }));
            workers.push(tx);
        }
        Sharded {
            workers,
            handles,
            reports,
            free: Vec::new(),
            free_index: Vec::new(),
            allocated: 0,
            max_chunks: n * CHUNKS_PER_WORKER + 2,
            filling: None,
            frame: 0,
            last_ts: Ts(0),
            next_tick: None,
            adv: 0,
            read: ReadStats::default(),
            merger: Merger::new(n, collector),
            broken: false,
        }
    }

    /// Handles one report.
    fn handle(&mut self, r: Report) {
        match r {
            Report::Records {
                worker,
                adv,
                records,
                upto,
            } => self.merger.records(worker, adv, records, upto),
            Report::Free(s) => {
                let Shared { chunk, mut index } = *s;
                index.clear();
                self.free.push(chunk);
                self.free_index.push(index);
            }
            Report::Done {
                worker,
                records,
                flow,
            } => {
                self.merger.flow.merge(&flow);
                self.merger
                    .records(worker, 0, records, (u64::MAX, u32::MAX));
            }
        }
    }

    /// Handles the reports that are waiting, without blocking, and writes what it can.
    fn poll(&mut self) {
        while let Ok(r) = self.reports.try_recv() {
            self.handle(r);
        }
        self.merger.release();
    }

    /// A free chunk; waits for the workers (writing their records meanwhile) when all are in
    /// flight.
    fn free_chunk(&mut self) -> Chunk {
        self.poll();
        loop {
            if let Some(mut c) = self.free.pop() {
                c.reset(c.link, c.fmt);
                return c;
            }
            if self.allocated < self.max_chunks || self.broken {
                self.allocated += 1;
                return Chunk::new();
            }
            match self.reports.recv() {
                Ok(r) => {
                    self.handle(r);
                    self.merger.release();
                }
                // Every worker is gone (a bug); do not hang.
                Err(_) => self.broken = true,
            }
        }
    }

    fn new_index(&mut self) -> Index {
        let mut ix = self.free_index.pop().unwrap_or_default();
        ix.segs.resize_with(self.workers.len(), Vec::new);
        ix
    }

    /// Counts and decodes one frame (`data`, at `base` + `off` in its chunk), and notes
    /// which worker analyses it.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn index_frame(
        &mut self,
        ix: &mut Index,
        base: &[u8],
        link: i32,
        ts: Ts,
        data: &[u8],
        len: u32,
    ) {
        self.frame += 1;
        self.adv = 0;
        self.last_ts = self.last_ts.max(ts);
        ix.frames += 1;
        ix.last_frame = self.frame;
        match self.next_tick {
            None => self.next_tick = Some(Ts(ts.0 + TICK_US)),
            Some(t) if ts >= t => {
                ix.ticks.push((self.frame, ts));
                self.next_tick = Some(Ts(ts.0 + TICK_US));
            }
            Some(_) => {}
        }
        let Some(seg) = classify(&mut self.read, link, data, len) else {
            return;
        };
        let w = (Key::new(seg.src, seg.dst).shard_hash() % self.workers.len() as u64) as usize;
        // The payload is a part of the chunk (`data` is).
        let at = (seg.payload.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        let (Ok(at), Ok(plen)) = (u32::try_from(at), u32::try_from(seg.payload.len())) else {
            return;
        };
        if let Some(v) = ix.segs.get_mut(w) {
            v.push(SegInfo {
                frame: self.frame,
                ts,
                src: seg.src,
                dst: seg.dst,
                seq: seg.seq,
                ack: seg.ack,
                at,
                len: plen,
                missing: seg.missing,
                window: seg.window,
                flags: seg.flags.0,
            });
        }
    }

    fn send(&mut self, chunk: Chunk, index: Index) {
        if index.frames == 0 {
            self.free.push(chunk);
            self.free_index.push(index);
            return;
        }
        // Only the workers hold the chunk, so that the last one to finish with it gives it back.
        let mut s = Some(Arc::new(Shared { chunk, index }));
        let n = self.workers.len();
        for (i, w) in self.workers.iter().enumerate() {
            let this = if i + 1 == n { s.take() } else { s.clone() };
            if let Some(this) = this {
                // A worker that died (it cannot, short of a bug) must not take the reader down
                // nor make it wait for chunks that will not come back.
                if w.send(Work::Frames(this)).is_err() {
                    self.broken = true;
                }
            }
        }
    }

    fn flush_filling(&mut self) {
        if let Some((c, ix)) = self.filling.take() {
            self.send(c, ix);
        }
    }

    fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        let (mut c, mut ix) = match self.filling.take() {
            Some(f) => f,
            None => (self.free_chunk(), self.new_index()),
        };
        let off = match c.push(link, ts, data, orig_len) {
            Some(off) => off,
            None => {
                self.send(c, ix);
                c = self.free_chunk();
                if !c.fits_empty(data.len()) {
                    c = Chunk::for_frame(data.len());
                }
                ix = self.new_index();
                // An empty chunk big enough takes any frame; should it not, the frame is
                // still counted (as in any chunk) but carries nothing.
                match c.push(link, ts, data, orig_len) {
                    Some(off) => off,
                    None => {
                        self.index_frame(&mut ix, &[], link, ts, &[], orig_len);
                        self.filling = Some((c, ix));
                        return;
                    }
                }
            }
        };
        // Decoded from the chunk's copy, so that the payload is found in the chunk.
        if let Some((ts, data, len, _)) = c.record_at(off as usize) {
            self.index_frame(&mut ix, c.bytes(), link, ts, data, len);
        }
        self.filling = Some((c, ix));
    }

    fn chunk(&mut self, c: Chunk) {
        self.flush_filling();
        let mut ix = self.new_index();
        let link = c.link;
        let base = c.bytes();
        c.for_each(|_, ts, data, len| self.index_frame(&mut ix, base, link, ts, data, len));
        self.send(c, ix);
        self.poll();
    }

    fn advance(&mut self, now: Ts) {
        self.flush_filling();
        if now > self.last_ts {
            self.last_ts = now;
            let tick = match self.next_tick {
                None => {
                    self.next_tick = Some(Ts(now.0 + TICK_US));
                    false
                }
                Some(t) if now >= t => {
                    self.next_tick = Some(Ts(now.0 + TICK_US));
                    true
                }
                Some(_) => false,
            };
            self.adv += 1;
            for w in &self.workers {
                let _ = w.send(Work::Advance {
                    now,
                    tick,
                    frame: self.frame,
                    upto: (self.frame, self.adv),
                });
            }
        }
        self.poll();
    }

    fn finish(mut self, input_errors: Vec<String>) -> (Summary, Option<io::Error>) {
        self.flush_filling();
        for w in &self.workers {
            let _ = w.send(Work::End {
                last_ts: self.last_ts,
                frame: self.frame,
            });
        }
        self.workers.clear();
        // Until every worker has reported its end (the channel closes when all are gone).
        while let Ok(r) = self.reports.recv() {
            self.handle(r);
        }
        self.merger.release();
        let mut failed = false;
        for h in self.handles.drain(..) {
            failed |= h.join().is_err();
        }
        let Merger {
            mut collector,
            flow,
            ..
        } = self.merger;
        if failed {
            return (
                collector.summary,
                Some(io::Error::other("a worker thread failed")),
            );
        }
        collector.summary.read = self.read;
        collector.summary.flow = flow;
        collector.summary.input_errors = input_errors;
        collector.finish()
    }
}

fn tick(flow: &mut FlowTable, ts: Ts, frame: u64, out: &mut Vec<(OrderKey, Record)>) {
    let mut ctx = Ctx {
        ts,
        frame,
        key_frame: frame,
        out,
    };
    flow.tick(ts, &mut ctx);
}

fn worker(
    id: usize,
    mut flow: FlowTable,
    rx: Receiver<Work>,
    tx: Sender<Report>,
    renderer: Option<Render>,
) {
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    let mut buf = Vec::new();
    while let Ok(work) = rx.recv() {
        match work {
            Work::Frames(s) => {
                let Shared { chunk, index } = &*s;
                let bytes = chunk.bytes();
                let mut ticks = index.ticks.iter().peekable();
                for m in index.segs.get(id).map_or(&[][..], |v| &v[..]) {
                    while let Some(&&(frame, ts)) = ticks.peek() {
                        if frame > m.frame {
                            break;
                        }
                        ticks.next();
                        tick(&mut flow, ts, frame, &mut out);
                    }
                    let payload = bytes
                        .get(m.at as usize..m.at as usize + m.len as usize)
                        .unwrap_or_default();
                    let seg = Segment {
                        src: m.src,
                        dst: m.dst,
                        seq: m.seq,
                        ack: m.ack,
                        flags: Flags(m.flags),
                        window: m.window,
                        payload,
                        missing: m.missing,
                    };
                    let mut ctx = Ctx {
                        ts: m.ts,
                        frame: m.frame,
                        key_frame: m.frame,
                        out: &mut out,
                    };
                    flow.segment(&seg, &mut ctx);
                }
                for &(frame, ts) in ticks {
                    tick(&mut flow, ts, frame, &mut out);
                }
                let report = Report::Records {
                    worker: id,
                    adv: 0,
                    records: render(&mut out, &renderer, &mut buf),
                    upto: (index.last_frame, 0),
                };
                if tx.send(report).is_err() {
                    return;
                }
                if let Some(s) = Arc::into_inner(s) {
                    let _ = tx.send(Report::Free(Box::new(s)));
                }
            }
            Work::Advance {
                now,
                tick,
                frame,
                upto,
            } => {
                if tick {
                    self::tick(&mut flow, now, frame, &mut out);
                }
                let report = Report::Records {
                    worker: id,
                    adv: upto.1,
                    records: render(&mut out, &renderer, &mut buf),
                    upto,
                };
                if tx.send(report).is_err() {
                    return;
                }
            }
            Work::End { last_ts, frame } => {
                let mut ctx = Ctx {
                    ts: last_ts,
                    frame,
                    key_frame: u64::MAX,
                    out: &mut out,
                };
                flow.drain(&mut ctx);
                let _ = tx.send(Report::Done {
                    worker: id,
                    records: render(&mut out, &renderer, &mut buf),
                    flow: Box::new(flow.stats.clone()),
                });
                return;
            }
        }
    }
}

/// Orders the workers' records as one thread would have written them.
struct Merger {
    /// Per worker: (advance, record), in the order produced.
    queues: Vec<VecDeque<(u32, Rendered)>>,
    upto: Vec<Pos>,
    ready: Vec<(u32, Rendered)>,
    collector: Collector,
    flow: FlowStats,
}

impl Merger {
    fn new(n: usize, collector: Collector) -> Merger {
        Merger {
            queues: (0..n).map(|_| VecDeque::new()).collect(),
            upto: vec![(0, 0); n],
            ready: Vec::new(),
            collector,
            flow: FlowStats::default(),
        }
    }

    fn records(&mut self, w: usize, adv: u32, records: Vec<Rendered>, upto: Pos) {
        let (Some(q), Some(u)) = (self.queues.get_mut(w), self.upto.get_mut(w)) else {
            return;
        };
        q.extend(records.into_iter().map(|r| (adv, r)));
        *u = (*u).max(upto);
    }

    /// Writes every record below all watermarks, in key order.
    fn release(&mut self) {
        let w = self.upto.iter().copied().min().unwrap_or((0, 0));
        for q in &mut self.queues {
            while q.front().is_some_and(|(a, (k, _, _))| (k.frame, *a) <= w) {
                if let Some(r) = q.pop_front() {
                    self.ready.push(r);
                }
            }
        }
        if self.ready.is_empty() {
            return;
        }
        self.ready
            .sort_unstable_by_key(|(a, (k, _, _))| (k.frame, *a, k.conn, k.seq));
        for (_, (_, r, bytes)) in self.ready.drain(..) {
            match bytes {
                Some(b) => self.collector.emit_rendered(&r, &b),
                None => self.collector.emit(&r),
            }
        }
    }
}
