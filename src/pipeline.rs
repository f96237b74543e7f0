//! Runs the analysis over a packet source, on one thread or sharded over several.
//!
//! Sharding is by a symmetric hash of the 4-tuple, so both directions of a connection land on
//! the same worker and its packets stay in capture order. Every record carries an
//! [`OrderKey`] (frame, connection, sequence) and each worker produces records in key order; a
//! merger releases records once every worker has processed past their frame, so the output is
//! byte-identical to a single thread's whatever the thread count, and memory stays bounded
//! (records wait at most one dispatch round).
//!
//! Time advances only by packet timestamps (and, in live mode, by the capture's read
//! timeouts): a tick every second of packet time lets connections expire and slow waits be
//! reported. Ticks are broadcast to all workers at the same frame, which keeps them
//! deterministic.

use crate::decode::{self, Decoded, Flags, Segment};
use crate::flow::{Backend, FlowStats, FlowTable, Key};
use crate::limits::Limits;
use crate::record::{OrderKey, Record};
use crate::session::Ctx;
use crate::summary::{ReadStats, Summary};
use crate::time::Ts;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Packet time between ticks.
pub const TICK_US: i64 = 1_000_000;

/// Where records go: a report writer.
pub trait Output: Send {
    fn record(&mut self, r: &Record) -> io::Result<()>;
    fn summary(&mut self, s: &Summary) -> io::Result<()>;
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
            Analyzer::Single(s) => &mut s.read,
            Analyzer::Sharded(s) => &mut s.read,
        }
    }

    /// Whether output failed (e.g. the pipe closed): reading can stop.
    pub fn output_failed(&self) -> bool {
        match self {
            Analyzer::Single(s) => s.collector.error.is_some(),
            Analyzer::Sharded(s) => s.failed.load(std::sync::atomic::Ordering::Relaxed),
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

/// Decodes and counts a frame. `None` for frames that carry no TCP segment.
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

/// Everything on the calling thread.
pub struct Single {
    flow: FlowTable,
    out: Vec<(OrderKey, Record)>,
    next_tick: Option<Ts>,
    frame: u64,
    last_ts: Ts,
    pub read: ReadStats,
    collector: Collector,
}

impl Single {
    fn new(cfg: &Config, collector: Collector) -> Single {
        Single {
            flow: FlowTable::new(cfg.limits.clone(), cfg.backends.clone(), 1),
            out: Vec::with_capacity(64),
            next_tick: None,
            frame: 0,
            last_ts: Ts(0),
            read: ReadStats::default(),
            collector,
        }
    }

    fn flush(&mut self) {
        // Tick records and the packet's own share a frame: order them as the merger would.
        self.out.sort_by_key(|(k, _)| *k);
        for (_, r) in self.out.drain(..) {
            self.collector.emit(&r);
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

    fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        self.frame += 1;
        let frame = self.frame;
        self.last_ts = self.last_ts.max(ts);
        self.maybe_tick(ts, frame);
        if let Some(seg) = classify(&mut self.read, link, data, orig_len) {
            let mut ctx = Ctx {
                ts,
                frame,
                key_frame: frame,
                out: &mut self.out,
            };
            self.flow.segment(&seg, &mut ctx);
        }
        if !self.out.is_empty() {
            self.flush();
        }
    }

    fn advance(&mut self, now: Ts) {
        if now > self.last_ts {
            self.last_ts = now;
            let key = self.frame;
            self.maybe_tick(now, key);
            self.flush();
        }
    }

    fn finish(mut self, input_errors: Vec<String>) -> (Summary, Option<io::Error>) {
        let mut ctx = Ctx {
            ts: self.last_ts,
            frame: self.frame,
            key_frame: u64::MAX,
            out: &mut self.out,
        };
        self.flow.drain(&mut ctx);
        self.flush();
        let mut c = self.collector;
        c.summary.read = self.read;
        c.summary.flow = self.flow.stats.clone();
        c.summary.input_errors = input_errors;
        c.finish()
    }
}

/// A segment copied out of the capture buffer for a worker.
struct SegMeta {
    frame: u64,
    ts: Ts,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    missing: u32,
    /// Range of the payload in the batch arena.
    start: u32,
    len: u32,
}

enum Item {
    Seg(SegMeta),
    Tick { ts: Ts, frame: u64 },
}

/// Work for one worker: segments with their payloads in one arena, and how far the reader
/// had got when it sent them.
struct Batch {
    items: Vec<Item>,
    arena: Vec<u8>,
    /// Every frame up to this one that belongs to this worker is in this or an earlier batch.
    upto: u64,
    /// End of input: drain at this packet time.
    end: Option<(Ts, u64)>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            items: Vec::with_capacity(BATCH_ITEMS),
            arena: Vec::with_capacity(64 * 1024),
            upto: 0,
            end: None,
        }
    }
}

/// Records from a worker, all with key frames ≤ `upto`.
struct Output_ {
    worker: usize,
    records: Vec<(OrderKey, Record)>,
    upto: u64,
    stats: Option<FlowStats>,
}

const BATCH_ITEMS: usize = 2048;
/// Frames dispatched between rounds that flush every worker (so all watermarks advance).
const ROUND_FRAMES: u64 = 8192;

/// Connections sharded over worker threads; a merger thread writes the output in key order.
pub struct Sharded {
    workers: Vec<SyncSender<Batch>>,
    /// Emptied batches coming back from the workers, to reuse their allocations.
    recycled: Receiver<Batch>,
    handles: Vec<JoinHandle<()>>,
    merger: Option<JoinHandle<Collector>>,
    batches: Vec<Batch>,
    frame: u64,
    last_round: u64,
    next_tick: Option<Ts>,
    last_ts: Ts,
    pub read: ReadStats,
    failed: Arc<std::sync::atomic::AtomicBool>,
    flow_stats: Arc<std::sync::Mutex<FlowStats>>,
}

impl Sharded {
    fn new(cfg: &Config, collector: Collector) -> Sharded {
        let n = cfg.threads.max(2);
        let (otx, orx) = sync_channel::<Output_>(n * 4);
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flow_stats = Arc::new(std::sync::Mutex::new(FlowStats::default()));
        let mut workers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let (back_tx, back_rx) = sync_channel::<Batch>(n * 8);
        for w in 0..n {
            let (tx, rx) = sync_channel::<Batch>(4);
            let otx = otx.clone();
            let back = back_tx.clone();
            let limits = cfg.limits.clone();
            let backends = cfg.backends.clone();
            handles.push(std::thread::spawn(move || {
                worker(w, n, rx, otx, back, limits, backends)
            }));
            workers.push(tx);
        }
        drop(otx);
        let merger = {
            let failed = failed.clone();
            let flow_stats = flow_stats.clone();
            std::thread::spawn(move || merge(n, orx, collector, failed, flow_stats))
        };
        Sharded {
            workers,
            recycled: back_rx,
            handles,
            merger: Some(merger),
            batches: (0..n).map(|_| Batch::new()).collect(),
            frame: 0,
            last_round: 0,
            next_tick: None,
            last_ts: Ts(0),
            read: ReadStats::default(),
            failed,
            flow_stats,
        }
    }

    fn send(&mut self, w: usize) {
        let fresh = self.recycled.try_recv().unwrap_or_else(|_| Batch::new());
        let mut b = std::mem::replace(&mut self.batches[w], fresh);
        b.upto = self.frame;
        // A worker that died (it cannot, short of a bug) must not take the reader down.
        let _ = self.workers[w].send(b);
    }

    fn round(&mut self) {
        for w in 0..self.workers.len() {
            self.send(w);
        }
        self.last_round = self.frame;
    }

    fn maybe_tick(&mut self, ts: Ts) {
        match self.next_tick {
            None => self.next_tick = Some(Ts(ts.0 + TICK_US)),
            Some(t) if ts >= t => {
                let frame = self.frame;
                for b in &mut self.batches {
                    b.items.push(Item::Tick { ts, frame });
                }
                self.next_tick = Some(Ts(ts.0 + TICK_US));
            }
            Some(_) => {}
        }
    }

    fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        self.frame += 1;
        self.last_ts = self.last_ts.max(ts);
        self.maybe_tick(ts);
        if let Some(seg) = classify(&mut self.read, link, data, orig_len) {
            let w = (Key::new(seg.src, seg.dst).shard_hash() % self.workers.len() as u64) as usize;
            let b = &mut self.batches[w];
            let start = b.arena.len() as u32;
            b.arena.extend_from_slice(seg.payload);
            b.items.push(Item::Seg(SegMeta {
                frame: self.frame,
                ts,
                src: seg.src,
                dst: seg.dst,
                seq: seg.seq,
                ack: seg.ack,
                flags: seg.flags.0,
                window: seg.window,
                missing: seg.missing,
                start,
                len: seg.payload.len() as u32,
            }));
            if b.items.len() >= BATCH_ITEMS || b.arena.len() >= 1 << 20 {
                self.send(w);
            }
        }
        if self.frame - self.last_round >= ROUND_FRAMES {
            self.round();
        }
    }

    fn advance(&mut self, now: Ts) {
        if now > self.last_ts {
            self.last_ts = now;
            self.maybe_tick(now);
        }
        self.round();
    }

    fn finish(mut self, input_errors: Vec<String>) -> (Summary, Option<io::Error>) {
        let end = (self.last_ts, self.frame);
        for w in 0..self.workers.len() {
            self.batches[w].end = Some(end);
            self.send(w);
        }
        self.workers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        let collector = match self.merger.take().map(|m| m.join()) {
            Some(Ok(c)) => c,
            _ => {
                return (
                    Summary::default(),
                    Some(io::Error::other("the output thread failed")),
                )
            }
        };
        let mut c = collector;
        c.summary.read = self.read.clone();
        c.summary.flow = self
            .flow_stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        c.summary.input_errors = input_errors;
        c.finish()
    }
}

fn worker(
    id: usize,
    n: usize,
    rx: Receiver<Batch>,
    out: SyncSender<Output_>,
    back: SyncSender<Batch>,
    limits: Arc<Limits>,
    backends: Arc<Vec<Backend>>,
) {
    let mut flow = FlowTable::new(limits, backends, n);
    let mut records = Vec::new();
    while let Ok(mut batch) = rx.recv() {
        for item in &batch.items {
            match item {
                Item::Seg(m) => {
                    let payload = &batch.arena[m.start as usize..(m.start + m.len) as usize];
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
                        out: &mut records,
                    };
                    flow.segment(&seg, &mut ctx);
                }
                Item::Tick { ts, frame } => {
                    let mut ctx = Ctx {
                        ts: *ts,
                        frame: *frame,
                        key_frame: *frame,
                        out: &mut records,
                    };
                    flow.tick(*ts, &mut ctx);
                }
            }
        }
        let mut stats = None;
        let mut upto = batch.upto;
        if let Some((ts, frame)) = batch.end {
            let mut ctx = Ctx {
                ts,
                frame,
                key_frame: u64::MAX,
                out: &mut records,
            };
            flow.drain(&mut ctx);
            stats = Some(flow.stats.clone());
            upto = u64::MAX;
        }
        let done = stats.is_some();
        batch.items.clear();
        batch.arena.clear();
        batch.end = None;
        // The reader may have enough spare batches; then this one is simply dropped.
        let _ = back.try_send(batch);
        let msg = Output_ {
            worker: id,
            records: std::mem::take(&mut records),
            upto,
            stats,
        };
        if out.send(msg).is_err() || done {
            break;
        }
    }
}

fn merge(
    n: usize,
    rx: Receiver<Output_>,
    mut collector: Collector,
    failed: Arc<std::sync::atomic::AtomicBool>,
    flow_stats: Arc<std::sync::Mutex<FlowStats>>,
) -> Collector {
    let mut queues: Vec<std::collections::VecDeque<(OrderKey, Record)>> =
        (0..n).map(|_| Default::default()).collect();
    let mut upto = vec![0u64; n];
    let mut ready: Vec<(OrderKey, Record)> = Vec::new();
    while let Ok(msg) = rx.recv() {
        queues[msg.worker].extend(msg.records);
        upto[msg.worker] = upto[msg.worker].max(msg.upto);
        if let Some(s) = msg.stats {
            if let Ok(mut total) = flow_stats.lock() {
                total.merge(&s);
            }
        }
        let w = upto.iter().copied().min().unwrap_or(0);
        for q in &mut queues {
            while q.front().is_some_and(|(k, _)| k.frame <= w) {
                if let Some(r) = q.pop_front() {
                    ready.push(r);
                }
            }
        }
        if !ready.is_empty() {
            ready.sort_by_key(|(k, _)| *k);
            for (_, r) in ready.drain(..) {
                collector.emit(&r);
            }
            if collector.error.is_some() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    collector
}
