//! Runs the analysis over a packet source, on one thread or sharded over several.
//!
//! With one thread, the calling thread walks the records (of a mapped file, or of the
//! [`Chunk`]s read from a pipe or copied from libpcap) and runs the whole chain.
//!
//! With N threads (`--threads N`), connections are sharded by a symmetric hash of the
//! 4-tuple (both directions land on the same worker), and each worker runs the flow table,
//! reassembly, HTTP and findings for its own connections:
//!
//! ```text
//!  mapped file:    a free worker indexes window k ───┐
//!                    (walk, decode once, per-worker   ├─► every worker, every window in
//!                     segment lists, frame times)     │   order: count frames, tick, analyse
//!                                                     │   its own segments, render (JSON)
//!  live, pipe, libpcap: calling thread indexes chunks ┘            │
//!                                                                   ▼
//!        merge by OrderKey below every worker's mark, write (mapped file: each worker, under
//!        the merger's lock, as it reports; other sources: the calling thread)
//! ```
//!
//! * Mapped files (`mapped`): windows are indexed in parallel from guessed record starts,
//!   each guess checked against the true chain before use.
//! * Other sources: the calling thread copies or reads frames into chunks, decodes each frame
//!   once and lends the chunk, with each worker's list of segments, to all workers; chunks
//!   come from a fixed pool, so reading waits for the workers instead of memory growing.
//! * Output: every record carries an [`OrderKey`] (frame, connection, sequence); workers
//!   render their records and hand over the bytes with what the summary counts of them; the
//!   merger writes, in key order, the records below every worker's watermark (reading a
//!   mapped file, each worker runs it for its own reports; otherwise the calling thread). Every
//!   worker counts every frame, so ticks fall on the same frames for all, and live advances
//!   are ordered as positions of their own: the output is byte-identical to a single
//!   thread's whatever the thread count (unless `--max-connections` is reached: each worker
//!   evicts from its own share of the table).
//!
//! Time advances only by packet timestamps (and, in live mode, by the capture's read
//! timeouts): a tick every second of packet time lets connections expire and slow waits be
//! reported.

use crate::capture::{Chunk, Mapped, RecFormat};
use crate::decode::{self, Decoded, Segment, Unreachable};
use crate::flow::{Backend, FlowStats, FlowTable};
use crate::limits::Limits;
use crate::record::{OrderKey, Record};
use crate::session::Ctx;
use crate::summary::{Observed, ReadStats, Summary};
use crate::time::Ts;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Acquire;
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

mod mapped;
mod segs;

use segs::Segs;

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
    /// Writes the bytes [`Output::renderer`] rendered for a record (a finding or not). Only
    /// called for outputs that have a renderer.
    fn rendered(&mut self, finding: bool, bytes: &[u8]) -> io::Result<()> {
        let _ = (finding, bytes);
        Err(io::Error::other("this output renders no records ahead"))
    }
    /// A failed request's chain of attempts has ended (see [`crate::retries`]): written
    /// right after the record that ended it.
    fn retry(&mut self, c: &crate::retries::Chain) -> io::Result<()> {
        let _ = c;
        Ok(())
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
        self.retries();
    }

    /// Writes the retry chains the last record ended.
    fn retries(&mut self) {
        for c in self.summary.retries.take_closed() {
            if self.error.is_some() {
                return;
            }
            if let Err(e) = self.out.retry(&c) {
                self.error = Some(e);
            }
        }
    }

    fn emit_rendered(&mut self, o: &Observed, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.summary.note(o);
        if let Err(e) = self.out.rendered(o.is_finding(), bytes) {
            self.error = Some(e);
        }
        self.retries();
    }

    /// Writes the summary; returns the summary and the first write error.
    pub fn finish(mut self) -> (Summary, Option<io::Error>) {
        self.summary.retries.finish();
        self.retries();
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
            Analyzer::Sharded(s) => s.spare.pop().unwrap_or_else(Chunk::for_reading),
        }
    }

    /// A chunk of whole capture records, the frames that follow those already given.
    pub fn chunk(&mut self, c: Chunk) {
        match self {
            Analyzer::Single(s) => s.chunk(c),
            Analyzer::Sharded(s) => s.chunk(c),
        }
    }

    /// A classic pcap file mapped into memory: all of its records. Returns the records read
    /// and the problem that stopped the reading, if any.
    pub(crate) fn read_mapped(&mut self, map: Mapped) -> (u64, Option<String>) {
        match self {
            Analyzer::Single(s) => s.read_mapped(map),
            Analyzer::Sharded(s) => s.read_mapped(map),
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
            Analyzer::Sharded(s) => &mut s.indexer.read,
        }
    }

    /// Whether output failed (e.g. the pipe closed): reading can stop.
    pub fn output_failed(&self) -> bool {
        match self {
            Analyzer::Single(s) => s.collector.error.is_some(),
            Analyzer::Sharded(s) => lock(&s.merger).collector.error.is_some(),
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

/// Counts a frame in the reader statistics and decodes it: its TCP segment, if it carries
/// one; an ICMP error about a TCP segment goes to `icmp` (rare: kept off the segments' path).
fn classify<'a>(
    read: &mut ReadStats,
    link: i32,
    data: &'a [u8],
    orig_len: u32,
    icmp: &mut Option<Unreachable>,
) -> Option<Segment<'a>> {
    read.packets += 1;
    read.bytes += u64::from(orig_len);
    match decode::decode(link, data, orig_len) {
        Decoded::Tcp(seg) => {
            read.tcp_packets += 1;
            if seg.missing > 0 {
                // Cut by the snaplen only if the capture kept less than the frame.
                if orig_len as usize > data.len() {
                    read.snaplen_cut_frames += 1;
                } else {
                    read.short_ip_frames += 1;
                }
            }
            Some(seg)
        }
        Decoded::Unreachable(u) => {
            read.non_tcp_packets += 1;
            *icmp = Some(u);
            None
        }
        Decoded::TcpFragment => {
            read.tcp_fragments += 1;
            None
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

/// When ticks fall: the first packet time at least [`TICK_US`] after the previous tick (or
/// after the first packet). Every thread that counts frames keeps one, and they all agree.
#[derive(Clone, Copy, Default)]
struct TickClock(Option<Ts>);

impl TickClock {
    /// Packet time is now `ts`: true if a tick is due.
    #[inline]
    fn due(&mut self, ts: Ts) -> bool {
        let due = match self.0 {
            None => false,
            Some(t) => ts >= t,
        };
        if due || self.0.is_none() {
            self.0 = Some(Ts(ts.0.saturating_add(TICK_US)));
        }
        due
    }

    /// True if no frame up to packet time `max` can be due: the clock is set, and `max`
    /// is before its next tick.
    #[inline]
    fn quiet_until(&self, max: Ts) -> bool {
        matches!(self.0, Some(t) if max < t)
    }
}

/// The analysis of every frame on one thread: frame count, packet time and ticks, the
/// connection table. Records collect in `out`.
struct Engine {
    flow: FlowTable,
    out: Vec<(OrderKey, Record)>,
    ticks: TickClock,
    frame: u64,
    last_ts: Ts,
    read: ReadStats,
}

impl Engine {
    fn new(cfg: &Config) -> Engine {
        Engine {
            flow: FlowTable::new(cfg.limits.clone(), cfg.backends.clone(), 1),
            out: Vec::with_capacity(64),
            ticks: TickClock::default(),
            frame: 0,
            last_ts: Ts(0),
            read: ReadStats::default(),
        }
    }

    fn maybe_tick(&mut self, ts: Ts, key_frame: u64) {
        if self.ticks.due(ts) {
            tick(&mut self.flow, ts, key_frame, &mut self.out);
        }
    }

    #[inline(always)]
    fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        self.frame += 1;
        let frame = self.frame;
        self.last_ts = self.last_ts.max(ts);
        self.maybe_tick(ts, frame);
        let mut icmp = None;
        let seg = classify(&mut self.read, link, data, orig_len, &mut icmp);
        let mut ctx = Ctx {
            ts,
            frame,
            key_frame: frame,
            out: &mut self.out,
        };
        match seg {
            Some(seg) => self.flow.segment(&seg, &mut ctx),
            None => {
                if let Some(u) = icmp {
                    self.flow.unreachable(&u, &mut ctx);
                }
            }
        }
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

    // Inlined into the file walk's loop, as before ICMP errors were read: left to itself
    // the compiler stopped inlining it then, and one thread lost 1–2 %.
    #[inline(always)]
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

    /// Reads a mapped classic pcap file. Returns the records read and the problem that
    /// stopped the reading, if any.
    fn read_mapped(&mut self, map: Mapped) -> (u64, Option<String>) {
        let link = map.link();
        let mut released = 0usize;
        map.walk(
            self,
            |s, ts, data, len| s.packet(link, ts, data, len),
            |s, off| {
                // Pages behind are given back, so that the resident size stays small.
                if off >= released + RELEASE_STEP {
                    map.release(released, off);
                    released = off;
                }
                s.collector.error.is_none()
            },
        )
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
    segs: Segs,
    /// Ticks, in frame order: the frame that carries it, and the packet time.
    ticks: Vec<(u64, Ts)>,
    /// Frames in the chunk, and the number of the last.
    frames: u32,
    last_frame: u64,
    /// Records should reach the output without waiting for more chunks (live capture).
    prompt: bool,
}

impl Index {
    fn clear(&mut self) {
        self.segs.clear();
        self.ticks.clear();
        self.frames = 0;
        self.prompt = false;
    }
}

/// A chunk and its index: what the workers share. Pooled.
struct Shared {
    chunk: Chunk,
    index: Index,
}

/// The chunks in circulation: a fixed number, so that reading waits for the workers instead
/// of memory growing with the file.
struct Pool {
    state: Mutex<PoolState>,
}

struct PoolState {
    free: Vec<Shared>,
    allocated: usize,
    limit: usize,
    workers: usize,
}

impl Pool {
    fn new(limit: usize, workers: usize) -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                allocated: 0,
                limit,
                workers,
            }),
        }
    }

    /// A free chunk, or `None` while all are in flight.
    fn try_take(&self) -> Option<Shared> {
        let mut st = lock(&self.state);
        if let Some(s) = st.free.pop() {
            return Some(s);
        }
        if st.allocated < st.limit {
            st.allocated += 1;
            return Some(Pool::make(st.workers));
        }
        None
    }

    /// A chunk outside the limit (when none can come back).
    fn fresh(&self) -> Shared {
        Pool::make(lock(&self.state).workers)
    }

    fn make(workers: usize) -> Shared {
        Shared {
            chunk: Chunk::for_reading(),
            index: Index {
                segs: Segs::new(workers, 0),
                ..Index::default()
            },
        }
    }

    fn give(&self, mut s: Shared) {
        s.index.clear();
        let (link, fmt) = (s.chunk.link, s.chunk.fmt);
        s.chunk.reset(link, fmt);
        lock(&self.state).free.push(s);
    }
}

/// A lock that survives a panic elsewhere (the state it guards stays consistent: every
/// critical section here is a handful of assignments).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A chunk lent to the workers; back to the pool when the last of them drops it.
struct Lease {
    shared: Option<Shared>,
    pool: Arc<Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            self.pool.give(s);
        }
    }
}

/// From the calling thread (or a reading thread) to a worker.
enum Work {
    Frames(Arc<Lease>),
    /// Live read timeout: packet time is `now`, a tick is due or not; `upto` is the position.
    Advance {
        now: Ts,
        tick: bool,
        frame: u64,
        upto: Pos,
    },
    /// Walk the whole of a mapped file (every worker does), analysing this worker's
    /// connections.
    Scan(Arc<mapped::Job>, Arc<Mutex<Merger>>),
    /// End of input, at this packet time and frame.
    End {
        last_ts: Ts,
        frame: u64,
    },
}

/// Where the analysis stands: frames processed, then live advances since the last frame.
/// Records produced at a position are ordered after those of every earlier position.
type Pos = (u64, u32);

/// A record as it travels from a worker to the writing thread.
enum Item {
    /// Rendered by the worker (see [`Output::renderer`]): what the summary counts of it, and
    /// where its bytes are in its batch's buffer. The record itself stays (and is freed) on
    /// the worker: no heap data crosses threads but the buffer.
    Bytes { obs: Observed, from: u32, to: u32 },
    /// The record, for outputs that format records themselves (the table).
    Full(Box<Record>),
}

/// A batch of records from one worker, in the order produced.
struct Batch {
    items: Vec<(OrderKey, Item)>,
    /// The rendered bytes of the batch's [`Item::Bytes`].
    bytes: Vec<u8>,
}

/// Renders a batch of records with `render`, if any.
fn render(records: &mut Vec<(OrderKey, Record)>, render: &Option<Render>) -> Batch {
    let mut bytes = Vec::new();
    let items = records
        .drain(..)
        .map(|(k, r)| match render {
            Some(f) => {
                let from = bytes.len() as u32;
                f(&r, &mut bytes);
                let to = bytes.len() as u32;
                let obs = Observed::of(&r);
                (k, Item::Bytes { obs, from, to })
            }
            None => (k, Item::Full(Box::new(r))),
        })
        .collect();
    Batch { items, bytes }
}

/// To the calling thread.
enum Report {
    /// Records produced since the last report, all at positions ≤ `upto`; `adv` is the
    /// advance that produced them (0: frames).
    Records {
        worker: usize,
        adv: u32,
        records: Batch,
        upto: Pos,
    },
    /// End of input: the last records (connections open at the end) and the counters.
    Done {
        worker: usize,
        records: Batch,
        flow: Box<FlowStats>,
    },
    /// A worker has walked the whole mapped file (or stopped): its frame count and
    /// reader statistics, the records in the file and the problem that ended it (`Err`: the
    /// worker failed).
    Scanned {
        worker: usize,
        end: Result<ScanEnd, String>,
    },
}

/// How a worker's walk of a mapped file ended: the frame count and reader statistics after
/// it, the whole records read, and the problem that stopped it (a cut or damaged record).
type ScanEnd = (Box<Indexer>, u64, Option<String>);

/// Frame counting, packet time and ticks, and the decoding that decides which worker gets a
/// segment: done once per frame, in frame order, by whichever thread holds it (or, for a
/// mapped file, by every worker, which all count alike).
#[derive(Default, Clone)]
struct Indexer {
    frame: u64,
    last_ts: Ts,
    ticks: TickClock,
    /// Effective live advances since the last frame.
    adv: u32,
    read: ReadStats,
}

impl Indexer {
    /// Counts and decodes one frame (`data`, part of `base`, the chunk's records), and puts
    /// its segment on the list of the worker that analyses its connection.
    #[inline]
    fn frame(&mut self, ix: &mut Index, base: &[u8], link: i32, ts: Ts, data: &[u8], len: u32) {
        if self.count(ts) {
            ix.ticks.push((self.frame, ts));
        }
        ix.frames += 1;
        ix.last_frame = self.frame;
        let mut icmp = None;
        let Some(seg) = classify(&mut self.read, link, data, len, &mut icmp) else {
            if let Some(u) = icmp {
                ix.segs.push_unreachable(self.frame, ts, &u);
            }
            return;
        };
        // The payload is a part of the chunk (`data` is).
        ix.segs.push(self.frame, ts, &seg, base);
    }

    /// Counts `frames` frames in which no tick falls, the latest at packet time `max`.
    #[inline]
    fn skip(&mut self, frames: u64, max: Ts) {
        if frames > 0 {
            self.frame += frames;
            self.adv = 0;
            self.last_ts = self.last_ts.max(max);
        }
    }

    /// Counts a frame at packet time `ts`; true if a tick is due before it is analysed.
    #[inline]
    fn count(&mut self, ts: Ts) -> bool {
        self.frame += 1;
        self.adv = 0;
        self.last_ts = self.last_ts.max(ts);
        self.ticks.due(ts)
    }

    /// All the records of `s`'s chunk.
    fn chunk(&mut self, s: &mut Shared) {
        let Shared { chunk, index } = s;
        let (link, base) = (chunk.link, chunk.bytes());
        chunk.for_each(|_, ts, data, len| self.frame(index, base, link, ts, data, len));
    }
}

/// A hash of a connection's two ends that is the same for both directions (so that both
/// land on the same worker), cheaper than hashing a [`crate::flow::Key`]: the two ends
/// folded together by XOR (symmetric), then one SplitMix64 finaliser, so that the high bits
/// that pick the worker depend on every address and port bit. Only the load balance
/// depends on it, never the output.
#[inline]
fn shard_hash(a: &SocketAddr, b: &SocketAddr) -> u64 {
    fn end(a: &SocketAddr) -> u64 {
        let ip = match a {
            SocketAddr::V4(v4) => u64::from(v4.ip().to_bits()),
            SocketAddr::V6(v6) => {
                let x = v6.ip().to_bits();
                (x as u64) ^ ((x >> 64) as u64).rotate_left(17)
            }
        };
        ip ^ (u64::from(a.port()) << 48)
    }
    let mut z = (end(a) ^ end(b)) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hands a chunk to every worker; only they hold it then, so that the last one to finish
/// with it gives it back to the pool. False if a worker is gone (a bug).
fn dispatch(workers: &[Sender<Work>], pool: &Arc<Pool>, s: Shared) -> bool {
    if s.index.frames == 0 {
        pool.give(s);
        return true;
    }
    let mut lease = Some(Arc::new(Lease {
        shared: Some(s),
        pool: pool.clone(),
    }));
    let mut ok = true;
    for (i, w) in workers.iter().enumerate() {
        let this = if i + 1 == workers.len() {
            lease.take()
        } else {
            lease.clone()
        };
        if let Some(this) = this {
            ok &= w.send(Work::Frames(this)).is_ok();
        }
    }
    ok
}

/// Chunks in flight per worker (beyond these, reading waits): enough to keep every worker
/// busy while the next are read, few enough to bound memory.
const CHUNKS_PER_WORKER: usize = 2;

/// Reports queued per worker before it waits for the writing thread.
const REPORTS_QUEUED: usize = 4;

/// Connections sharded over worker threads. Capture files are read by several threads at
/// once (each reads its chunks, then, in turn, walks and indexes them); other sources are
/// indexed by the calling thread, which also writes the output.
pub struct Sharded {
    workers: Vec<Sender<Work>>,
    handles: Vec<JoinHandle<()>>,
    reports: Receiver<Report>,
    pool: Arc<Pool>,
    /// Frames from [`Analyzer::packet`] not yet handed over.
    filling: Option<Shared>,
    indexer: Indexer,
    /// Shared with the workers while they read a mapped file: they merge and write their
    /// own reports (no wake-up of this thread per report).
    merger: Arc<Mutex<Merger>>,
    /// A buffer for [`Analyzer::chunk_buffer`].
    spare: Vec<Chunk>,
}

impl Sharded {
    fn new(cfg: &Config, collector: Collector) -> Sharded {
        let n = cfg.threads.max(2);
        // Bounded: workers wait for the writing thread rather than queue records without end
        // (a SYN flood makes a record per packet).
        let (report_tx, reports) = sync_channel::<Report>(REPORTS_QUEUED * n);
        let mut workers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let renderer = collector.out.renderer();
        for w in 0..n {
            let (tx, rx) = channel::<Work>();
            let report = report_tx.clone();
            let flow = FlowTable::new(cfg.limits.clone(), cfg.backends.clone(), n);
            let renderer = renderer.clone();
            handles.push(spawn(format!("gs-worker-{w}"), move || {
                worker(w, flow, rx, report, renderer)
            }));
            workers.push(tx);
        }
        Sharded {
            workers,
            handles,
            reports,
            pool: Arc::new(Pool::new(n * CHUNKS_PER_WORKER + 1, n)),
            filling: None,
            indexer: Indexer::default(),
            merger: Arc::new(Mutex::new(Merger::new(n, collector))),
            spare: Vec::new(),
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
            } => lock(&self.merger).records(worker, adv, records, upto),
            Report::Done {
                worker,
                records,
                flow,
            } => {
                let mut m = lock(&self.merger);
                m.flow.merge(&flow);
                m.records(worker, 0, records, (u64::MAX, u32::MAX));
            }
            // Only [`Sharded::read_mapped`] waits for these.
            Report::Scanned { .. } => {}
        }
    }

    /// Handles the reports that are waiting, without blocking, and writes what it can.
    fn poll(&mut self) {
        while let Ok(r) = self.reports.try_recv() {
            self.handle(r);
        }
        lock(&self.merger).release();
    }

    fn send(&mut self, s: Shared) {
        // A worker that died (it cannot, short of a bug) must not take the reader down.
        let _ = dispatch(&self.workers, &self.pool, s);
    }

    fn flush_filling(&mut self) {
        if let Some(s) = self.filling.take() {
            self.send(s);
        }
    }

    /// A chunk from the pool, writing output while waiting for one (the workers that
    /// hold the chunks may be waiting for this thread to take their reports).
    fn take(&mut self) -> Shared {
        self.poll();
        let mut s = loop {
            if let Some(s) = self.pool.try_take() {
                break s;
            }
            match self
                .reports
                .recv_timeout(std::time::Duration::from_millis(1))
            {
                Ok(r) => {
                    self.handle(r);
                    lock(&self.merger).release();
                }
                Err(RecvTimeoutError::Timeout) => {}
                // No worker left to give chunks back or report: cannot happen while this
                // thread holds their channels.
                Err(RecvTimeoutError::Disconnected) => break self.pool.fresh(),
            }
        };
        s.chunk.reset(s.chunk.link, RecFormat::Native);
        s
    }

    fn packet(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) {
        let mut s = match self.filling.take() {
            Some(s) => s,
            None => self.take(),
        };
        let off = match s.chunk.push(link, ts, data, orig_len) {
            Some(off) => off,
            None => {
                self.send(s);
                s = self.take();
                if !s.chunk.fits_empty(data.len()) {
                    s.chunk = Chunk::for_frame(data.len());
                }
                // An empty chunk big enough takes any frame; should it not, the frame is
                // still counted (as in any chunk) but carries nothing.
                match s.chunk.push(link, ts, data, orig_len) {
                    Some(off) => off,
                    None => {
                        let Shared { index, .. } = &mut s;
                        self.indexer.frame(index, &[], link, ts, &[], orig_len);
                        self.filling = Some(s);
                        return;
                    }
                }
            }
        };
        // Decoded from the chunk's copy, so that the payload is found in the chunk.
        let Shared { chunk, index } = &mut s;
        index.prompt = true;
        if let Some((ts, data, len, _)) = chunk.record_at(off as usize) {
            self.indexer
                .frame(index, chunk.bytes(), link, ts, data, len);
        }
        self.filling = Some(s);
    }

    /// A chunk read elsewhere (not by [`Sharded::read_mapped`]).
    fn chunk(&mut self, c: Chunk) {
        self.flush_filling();
        let mut s = self.take();
        let old = std::mem::replace(&mut s.chunk, c);
        if self.spare.is_empty() {
            self.spare.push(old);
        }
        self.indexer.chunk(&mut s);
        self.send(s);
        self.poll();
    }

    fn advance(&mut self, now: Ts) {
        self.flush_filling();
        let ix = &mut self.indexer;
        if now > ix.last_ts {
            ix.last_ts = now;
            let tick = ix.ticks.due(now);
            ix.adv += 1;
            let upto = (ix.frame, ix.adv);
            for w in &self.workers {
                let _ = w.send(Work::Advance {
                    now,
                    tick,
                    frame: upto.0,
                    upto,
                });
            }
        }
        self.poll();
    }

    /// Reads a mapped classic pcap file: every worker walks all of it (see the module
    /// doc) and merges its own reports; this thread takes their last reports and ends.
    /// Returns the records read and the problem that stopped the reading, if any.
    fn read_mapped(&mut self, map: Mapped) -> (u64, Option<String>) {
        self.flush_filling();
        let n = self.workers.len();
        let job = Arc::new(mapped::Job::new(map, self.indexer.clone(), n));
        let mut sent = 0;
        for w in &self.workers {
            if w.send(Work::Scan(job.clone(), self.merger.clone())).is_ok() {
                sent += 1;
            }
        }
        if sent < n {
            // A worker is gone (a bug): no one may wait for it.
            job.stop();
        }
        let mut result: Option<(usize, Box<Indexer>, u64, Option<String>)> = None;
        let mut problem = None;
        let mut done = 0;
        // Handles a report; 1 if it says a worker is done.
        let mut take = |me: &mut Sharded, r: Report| match r {
            Report::Scanned { worker, end } => {
                match end {
                    // Every worker counts the same frames: worker 0's count is kept.
                    Ok((ix, records, stop)) => {
                        if result.as_ref().is_none_or(|r| worker < r.0) {
                            result = Some((worker, ix, records, stop));
                        }
                    }
                    Err(e) => problem = Some(e),
                }
                1
            }
            r => {
                me.handle(r);
                0
            }
        };
        while done < sent {
            match self.reports.recv() {
                Ok(r) => done += take(self, r),
                Err(_) => break,
            }
            // How far the workers with nothing to report are (they do not report every
            // window), read before the queue is drained: whatever a worker reported before
            // publishing its mark is then in hand.
            let marks: Vec<u64> = job.marks.iter().map(|m| m.load(Acquire)).collect();
            while let Ok(r) = self.reports.try_recv() {
                done += take(self, r);
            }
            let mut m = lock(&self.merger);
            m.mark(marks.iter().copied());
            m.release();
            let failed = m.collector.error.is_some();
            drop(m);
            if failed {
                // Nobody reads the output any more: stop reading.
                job.stop();
            }
        }
        match result {
            Some((_, ix, records, stop)) => {
                self.indexer = *ix;
                (records, stop.or(problem))
            }
            None => (
                0,
                problem.or(Some("internal error: no worker read the file".into())),
            ),
        }
    }

    fn finish(mut self, input_errors: Vec<String>) -> (Summary, Option<io::Error>) {
        self.flush_filling();
        for w in &self.workers {
            let _ = w.send(Work::End {
                last_ts: self.indexer.last_ts,
                frame: self.indexer.frame,
            });
        }
        self.workers.clear();
        // Until every worker has reported its end (the channel closes when all are gone).
        while let Ok(r) = self.reports.recv() {
            self.handle(r);
        }
        lock(&self.merger).release();
        let mut failed = false;
        for h in self.handles.drain(..) {
            failed |= h.join().is_err();
        }
        // Every worker is gone, and with it every other handle on the merger.
        let merger = match Arc::try_unwrap(self.merger) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(_) => {
                return (
                    Summary::default(),
                    Some(io::Error::other(
                        "internal error: the merger is still shared",
                    )),
                )
            }
        };
        let Merger {
            mut collector,
            flow,
            ..
        } = merger;
        if failed {
            return (
                collector.summary,
                Some(io::Error::other("a worker thread failed")),
            );
        }
        collector.summary.read = self.indexer.read;
        collector.summary.flow = flow;
        collector.summary.input_errors = input_errors;
        collector.finish()
    }
}

/// Starts a named thread (names show in `top -H` and `perf`).
fn spawn<F: FnOnce() + Send + 'static>(name: String, f: F) -> JoinHandle<()> {
    let b = std::thread::Builder::new().name(name);
    match b.spawn(f) {
        Ok(h) => h,
        // Naming cannot fail short of an interior NUL; spawning at all can, and then there is
        // nothing to fall back on.
        Err(e) => panic!("cannot start a thread: {e}"),
    }
}

/// A worker walking a mapped file reports once it holds this many records.
const REPORT_RECORDS: usize = 1024;

/// Single-thread reading gives the mapping back in steps of this many bytes.
const RELEASE_STEP: usize = 4 << 20;

fn tick(flow: &mut FlowTable, ts: Ts, frame: u64, out: &mut Vec<(OrderKey, Record)>) {
    let mut ctx = Ctx {
        ts,
        frame,
        key_frame: frame,
        out,
    };
    flow.tick(ts, &mut ctx);
}

/// A worker reports after at most this many chunks while more are queued (and always before
/// it waits for work): fewer reports are fewer wake-ups of the writing thread.
const REPORT_EVERY: u32 = 8;

fn worker(
    id: usize,
    mut flow: FlowTable,
    rx: Receiver<Work>,
    tx: SyncSender<Report>,
    renderer: Option<Render>,
) {
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    // Chunks done since the last report, and how far they went.
    let mut unreported = 0u32;
    // The last chunk came from a live source: report as soon as the queue is empty.
    let mut prompt = false;
    let mut upto: Pos = (0, 0);
    let report = |out: &mut Vec<(OrderKey, Record)>, adv: u32, upto: Pos| {
        let records = render(out, &renderer);
        tx.send(Report::Records {
            worker: id,
            adv,
            records,
            upto,
        })
        .is_ok()
    };
    loop {
        let work = match rx.try_recv() {
            Ok(w) => w,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                // Nothing queued: in live mode, say how far this worker got before waiting,
                // so that records go out promptly. (Reading a file, reports every few chunks
                // are enough, and each wakes the writing thread.)
                if unreported > 0 && prompt {
                    unreported = 0;
                    if !report(&mut out, 0, upto) {
                        return;
                    }
                }
                match rx.recv() {
                    Ok(w) => w,
                    Err(_) => return,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
        };
        match work {
            Work::Frames(lease) => {
                let Some(Shared { chunk, index }) = lease.shared.as_ref() else {
                    continue;
                };
                let bytes = chunk.bytes();
                let mut ticks = index.ticks.iter().peekable();
                for m in index.segs.of(id) {
                    let m_frame = index.segs.frame(m);
                    while let Some(&&(frame, ts)) = ticks.peek() {
                        if frame > m_frame {
                            break;
                        }
                        ticks.next();
                        tick(&mut flow, ts, frame, &mut out);
                    }
                    let mut ctx = Ctx {
                        ts: index.segs.ts(m),
                        frame: m_frame,
                        key_frame: m_frame,
                        out: &mut out,
                    };
                    index.segs.analyse(m, bytes, &mut flow, &mut ctx);
                }
                for &(frame, ts) in ticks {
                    tick(&mut flow, ts, frame, &mut out);
                }
                upto = (index.last_frame, 0);
                prompt = index.prompt;
                drop(lease);
                unreported += 1;
                if unreported >= REPORT_EVERY {
                    unreported = 0;
                    if !report(&mut out, 0, upto) {
                        return;
                    }
                }
            }
            Work::Advance {
                now,
                tick,
                frame,
                upto: at,
            } => {
                // The frames' records first: they come before the advance's.
                if unreported > 0 {
                    unreported = 0;
                    if !report(&mut out, 0, upto) {
                        return;
                    }
                }
                if tick {
                    self::tick(&mut flow, now, frame, &mut out);
                }
                upto = at;
                if !report(&mut out, at.1, at) {
                    return;
                }
            }
            Work::Scan(job, merger) => {
                if unreported > 0 {
                    unreported = 0;
                    if !report(&mut out, 0, upto) {
                        return;
                    }
                }
                // Reports are merged and written here, under the merger's lock: the
                // workers' marks are read after this worker's records are in, so whatever
                // a worker reported before publishing its mark is in hand.
                let end = mapped::run(id, &job, &mut flow, &mut out, &tx, |out, at| {
                    let records = render(out, &renderer);
                    let mut m = lock(&merger);
                    m.records(id, 0, records, at);
                    m.mark(job.marks.iter().map(|x| x.load(Acquire)));
                    m.release();
                    m.collector.error.is_none()
                });
                drop(merger);
                drop(job);
                upto = (end.0.frame, 0);
                prompt = false;
                if !report(&mut out, 0, upto) {
                    return;
                }
                if tx
                    .send(Report::Scanned {
                        worker: id,
                        end: Ok(end),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Work::End { last_ts, frame } => {
                if unreported > 0 && !report(&mut out, 0, upto) {
                    return;
                }
                let mut ctx = Ctx {
                    ts: last_ts,
                    frame,
                    key_frame: u64::MAX,
                    out: &mut out,
                };
                flow.drain(&mut ctx);
                let records = render(&mut out, &renderer);
                let _ = tx.send(Report::Done {
                    worker: id,
                    records,
                    flow: Box::new(flow.stats.clone()),
                });
                return;
            }
        }
    }
}

/// A record waiting in the merger: the advance that produced it, its key, the record, and
/// the buffer its bytes are in.
type Queued = (u32, OrderKey, Item, Arc<Vec<u8>>);

/// Orders the workers' records as one thread would have written them.
struct Merger {
    /// Per worker: records in the order produced.
    queues: Vec<VecDeque<Queued>>,
    upto: Vec<Pos>,
    ready: Vec<Queued>,
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

    fn records(&mut self, w: usize, adv: u32, records: Batch, upto: Pos) {
        let (Some(q), Some(u)) = (self.queues.get_mut(w), self.upto.get_mut(w)) else {
            return;
        };
        let bytes = Arc::new(records.bytes);
        q.extend(
            records
                .items
                .into_iter()
                .map(|(k, item)| (adv, k, item, bytes.clone())),
        );
        *u = (*u).max(upto);
    }

    /// Worker `w` has no records before frame `marks[w]` still to come.
    fn mark(&mut self, marks: impl IntoIterator<Item = u64>) {
        for (u, m) in self.upto.iter_mut().zip(marks) {
            *u = (*u).max((m, 0));
        }
    }

    /// Writes every record below all watermarks, in key order.
    fn release(&mut self) {
        let w = self.upto.iter().copied().min().unwrap_or((0, 0));
        for q in &mut self.queues {
            while q.front().is_some_and(|(a, k, _, _)| (k.frame, *a) <= w) {
                if let Some(r) = q.pop_front() {
                    self.ready.push(r);
                }
            }
        }
        if self.ready.is_empty() {
            return;
        }
        self.ready
            .sort_unstable_by_key(|(a, k, _, _)| (k.frame, *a, k.conn, k.seq));
        for (_, _, item, buf) in self.ready.drain(..) {
            match item {
                Item::Bytes { obs, from, to } => {
                    let b = buf.get(from as usize..to as usize).unwrap_or_default();
                    self.collector.emit_rendered(&obs, b);
                }
                Item::Full(r) => self.collector.emit(&r),
            }
        }
    }
}
