//! A classic pcap file mapped into memory, read by all the workers at once.
//!
//! Walking the records (and decoding each frame's headers) is a stream over the whole file:
//! a third of the single-thread time, bound by memory bandwidth. So it is split, not
//! repeated: the file is cut into windows of up to [`WINDOW`] bytes, each indexed by
//! whichever worker is free — its records walked, every frame's time noted, each TCP segment
//! decoded once and listed for the worker that owns its connection. Then every worker
//! goes through all windows in order, counting every frame (so that ticks fall on the same
//! frames everywhere) and analysing only its own segments.
//!
//! A window's first record is only known once the window before has been walked (records
//! have no sync marker). Rather than wait, a worker guesses it ([`PcapFile::resync`]: a
//! chain of plausible headers) and walks from there; before any worker uses a window, its
//! start is checked against where the window before really ended, and a window that was
//! guessed wrong (a payload that looked like headers) is indexed again from the true start.
//! So a bad guess costs time, never correctness. The guessed starts also let a worker walk
//! [`WALKS`] windows at once, a record of each in turn, so that their cache misses overlap
//! ([`Mapped::records_interleaved`]).
//!
//! Each worker merges its own reports into the output under the merger's lock (see
//! `worker` in the parent module): a writing thread woken per report cost 2.5 % of the
//! two-thread wall time on the Intel VM.
//!
//! Bounded: at most [`LOOKAHEAD`] windows per worker are indexed ahead of the slowest
//! worker, windows all workers are done with are dropped, and the pages behind them are
//! given back to the kernel ([`Mapped::release`]).

use super::segs::{SegInfo, Segs};
use super::{classify, tick, Indexer, Pos, Report, ScanEnd, REPORT_RECORDS};
use crate::capture::{Mapped, Walk};
use crate::flow::FlowTable;
use crate::record::{OrderKey, Record};
use crate::session::Ctx;
use crate::summary::ReadStats;
use crate::time::Ts;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Release, Ordering::SeqCst};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes of the file per window (records are assigned to the window they start in), at most:
/// smaller files get smaller windows, at least 8 per worker, so that they are split too.
const WINDOW: usize = 512 << 10;

/// The smallest window.
const MIN_WINDOW: usize = 4 << 10;

/// Windows indexed ahead of the slowest worker, per worker: enough that nobody waits for
/// an index, few enough that they are still in the cache when analysed.
const LOOKAHEAD: usize = 8;

/// Windows a worker may analyse ahead of the slowest. The merger holds the records of
/// the fastest until the slowest has caught up, so this bounds its memory (a SYN
/// flood makes two records per frame).
const MAX_LEAD: usize = 4;

/// Windows a worker indexes at once (see [`Mapped::records_interleaved`]).
const WALKS: usize = 4;

/// The mapping is given back in steps of this many bytes.
const RELEASE_STEP: usize = 16 << 20;

/// What the workers share while reading one mapped file.
pub(super) struct Job {
    map: Mapped,
    /// Frame count, packet time and statistics before the file's first frame.
    from: Indexer,
    workers: usize,
    /// Bytes per window, and windows in the file.
    window: usize,
    windows: usize,
    /// The first record's seconds (for guessing where records start).
    first_sec: u32,
    table: Mutex<Table>,
    changed: Condvar,
    stop: AtomicBool,
    /// Per worker: a frame before which it has no records left to report. Published after
    /// every window it has nothing pending for (workers report only every so often), so
    /// that the writing thread can release the others' records.
    pub(super) marks: Vec<AtomicU64>,
}

/// The windows in flight.
struct Table {
    /// Windows `base..base + slots.len()`.
    slots: VecDeque<Slot>,
    base: usize,
    /// Windows before this one are checked: each starts where the one before ends.
    checked: usize,
    /// Where the last checked window ends (the next one must start there).
    checked_end: usize,
    /// Windows to analyse: those of the file, fewer once a checked window turns out to be
    /// the last (the file's end, or a damaged record, in it). Nothing at or past it is
    /// indexed: were it, a worker waiting for a slower one would index empty windows past
    /// the end for as long as it waits, each in a new buffer.
    windows: usize,
    /// The mapping's length.
    len: usize,
    /// Per worker: the next window it analyses.
    next: Vec<usize>,
    /// The mapping before this offset was given back.
    released: usize,
    /// Workers waiting for a change.
    waiting: usize,
    /// Windows done with, for their buffers.
    spare: Vec<Window>,
    /// Windows before this one were all taken for indexing (or checked).
    ahead: usize,
}

enum Slot {
    /// Not indexed yet.
    Pending,
    /// Being indexed.
    Indexing,
    Ready(Arc<Window>),
    /// Indexed from a wrong guess: to be indexed again from where the window before ends.
    Redo,
}

/// The index of one window.
struct Window {
    /// Offset of its first record (`usize::MAX`: no guess found).
    start: usize,
    /// Offset after its last record: where the next window starts.
    end: usize,
    /// The time of every frame, in order, and the latest.
    ts: Vec<Ts>,
    max_ts: Ts,
    /// Per worker: the TCP segments of its connections; payload offsets count from `start`.
    segs: Segs,
    /// Counts for these frames.
    read: ReadStats,
    records: u64,
    /// The walk stopped in this window (damaged or cut record): the file ends here.
    problem: Option<String>,
}

impl Job {
    pub(super) fn new(map: Mapped, from: Indexer, workers: usize) -> Job {
        let n = workers.max(1);
        let data = map.bytes().len().saturating_sub(map.data_start);
        let window = (data / (8 * n))
            .next_multiple_of(MIN_WINDOW)
            .clamp(MIN_WINDOW, WINDOW);
        Job::with_window(map, from, n, window)
    }

    /// A job cut into windows of `window` bytes.
    fn with_window(map: Mapped, from: Indexer, workers: usize, window: usize) -> Job {
        let n = workers.max(1);
        let first_sec = map
            .file
            .seconds_at(map.bytes(), map.data_start)
            .unwrap_or(0);
        let data_start = map.data_start;
        let total = map.bytes().len();
        let before = from.frame;
        let window = window.max(1);
        let windows = total.div_ceil(window).max(1);
        Job {
            map,
            from,
            workers: n,
            window,
            windows,
            first_sec,
            table: Mutex::new(Table {
                slots: VecDeque::new(),
                base: 0,
                checked: 0,
                checked_end: data_start,
                windows,
                len: total,
                next: vec![0; n],
                released: 0,
                waiting: 0,
                spare: Vec::new(),
                ahead: 0,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            marks: (0..n).map(|_| AtomicU64::new(before)).collect(),
        }
    }

    /// Stops every worker at its next window.
    pub(super) fn stop(&self) {
        self.stop.store(true, SeqCst);
        let _t = self.lock();
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, t: &Table) {
        if t.waiting > 0 {
            self.changed.notify_all();
        }
    }

    /// The byte range of window `k`'s record starts.
    fn span(&self, k: usize) -> (usize, usize) {
        let d = self.map.data_start;
        ((k * self.window).max(d), (k + 1) * self.window)
    }

    /// Indexes windows together (see [`Mapped::records_interleaved`]): each `(k, start,
    /// spare)` is window `k`, from `start` if known, else from a guess, into a spare's buffers
    /// if there is one.
    fn index(
        &self,
        batch: Vec<(usize, Option<usize>, Option<Box<Window>>)>,
    ) -> Vec<(usize, Window)> {
        let b = self.map.bytes();
        let n = self.workers;
        let mut wins = Vec::with_capacity(batch.len());
        let mut walks = Vec::with_capacity(batch.len());
        for (k, start, spare) in batch {
            let (lo, hi) = self.span(k);
            let start = start.or_else(|| self.map.file.resync(b, lo, hi, self.first_sec));
            // A spare's buffers are reused; the rest is set anew.
            let (mut ts, mut segs) = match spare {
                Some(w) => (w.ts, w.segs),
                None => (
                    Vec::with_capacity(self.window / 256),
                    Segs::new(n, self.window / 256),
                ),
            };
            let start_at = start.unwrap_or(usize::MAX);
            ts.clear();
            segs.clear();
            let w = Window {
                start: start_at,
                end: start_at,
                ts,
                max_ts: Ts(i64::MIN),
                segs,
                read: ReadStats::default(),
                records: 0,
                problem: None,
            };
            // No plausible start: nothing to walk; indexed again once the true one is known.
            walks.push(Walk::new(start.unwrap_or(hi), hi));
            wins.push((k, w));
        }
        let link = self.map.link();
        // Payload offsets count from each window's first record.
        let bases: Vec<&[u8]> = wins
            .iter()
            .map(|(_, w)| b.get(w.start..).unwrap_or_default())
            .collect();
        self.map
            .records_interleaved(&mut walks, |i, ts, data, len| {
                let (Some((_, w)), Some(base)) = (wins.get_mut(i), bases.get(i)) else {
                    return;
                };
                let frame = w.ts.len() as u64;
                w.ts.push(ts);
                w.max_ts = w.max_ts.max(ts);
                let mut icmp = None;
                let Some(seg) = classify(&mut w.read, link, data, len, &mut icmp) else {
                    if let Some(u) = icmp {
                        w.segs.push_unreachable(frame, ts, &u);
                    }
                    return;
                };
                w.segs.push(frame, ts, &seg, base);
            });
        for ((_, w), walk) in wins.iter_mut().zip(walks) {
            if w.start != usize::MAX {
                w.end = walk.at;
                w.records = walk.records;
                w.problem = walk.problem;
            }
        }
        wins
    }

    /// Whether window `k` is the last one to analyse.
    fn last(&self, k: usize, w: &Window) -> bool {
        w.ends_the_file(self.map.bytes().len()) || k + 1 >= self.windows
    }
}

impl Window {
    /// Nothing follows this window: the walk stopped at a damaged or cut record, or reached
    /// the end of the mapping (`len` bytes).
    fn ends_the_file(&self, len: usize) -> bool {
        self.problem.is_some() || self.end >= len
    }
}

impl Table {
    fn slot(&mut self, k: usize) -> Option<&mut Slot> {
        let i = k.checked_sub(self.base)?;
        while self.slots.len() <= i {
            self.slots.push_back(Slot::Pending);
        }
        self.slots.get_mut(i)
    }

    /// Checks the windows that can be checked now: each must start where the one before
    /// ended; a wrong guess is marked for indexing again. True if anything changed.
    fn check(&mut self) -> bool {
        let mut changed = false;
        while self.checked < self.windows {
            let k = self.checked;
            let end = self.checked_end;
            let len = self.len;
            let Some(slot) = self.slot(k) else {
                return changed;
            };
            match slot {
                Slot::Ready(w) if w.start == end => {
                    let last = w.ends_the_file(len);
                    self.checked_end = w.end;
                    self.checked += 1;
                    if last {
                        self.windows = self.checked;
                    }
                }
                Slot::Ready(_) => *slot = Slot::Redo,
                _ => return changed,
            }
            changed = true;
        }
        changed
    }

    fn slowest(&self) -> usize {
        self.next.iter().copied().min().unwrap_or(0)
    }
}

/// What a worker does next.
enum Step {
    Analyse(usize, Arc<Window>),
    /// Windows, each with its start if known and a spare to index into.
    Index(Vec<(usize, Option<usize>, Option<Box<Window>>)>),
    Done,
}

/// One worker's part of reading the mapped file: indexing its windows, analysing its
/// connections in all of them. `report` is called every few windows with the position
/// reached.
pub(super) fn run(
    id: usize,
    job: &Job,
    flow: &mut FlowTable,
    out: &mut Vec<(OrderKey, Record)>,
    tx: &SyncSender<Report>,
    mut report: impl FnMut(&mut Vec<(OrderKey, Record)>, Pos) -> bool,
) -> ScanEnd {
    // Whatever happens (even a panic), the others must not wait for this worker, and the
    // writing thread must hear that it is done.
    struct Leave<'a>(&'a Job, usize, &'a SyncSender<Report>);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.stop();
                let _ = self.2.send(Report::Scanned {
                    worker: self.1,
                    end: Err("internal error while reading".into()),
                });
            }
        }
    }
    let _leave = Leave(job, id, tx);
    let n = job.workers;
    let mut ix = Box::new(job.from.clone());
    let mut records = 0u64;
    let mut problem = None;
    let mut analysed = 0u32;
    loop {
        let step = {
            let mut t = job.lock();
            loop {
                if job.stop.load(SeqCst) {
                    break Step::Done;
                }
                if t.check() {
                    job.notify(&t);
                }
                let next = t.next.get(id).copied().unwrap_or(usize::MAX);
                if next >= t.windows {
                    break Step::Done;
                }
                if next < t.checked && next < t.slowest() + MAX_LEAD {
                    if let Some(Slot::Ready(w)) = t.slot(next) {
                        break Step::Analyse(next, w.clone());
                    }
                }
                // The window everyone waits for: whoever is free indexes it from its true
                // start; with it (or without), the next windows nobody took, within the
                // lookahead, from guessed starts — taken by whoever is free, so a worker with
                // fewer connections to analyse indexes more.
                let mut batch = Vec::new();
                let c = t.checked;
                let exact = t.checked_end;
                // Within the lookahead, as the guessed ones: a worker waiting for a slower
                // one must not index on through the file (its pages and indexes would pile
                // up until the slower one gets there).
                let limit = (t.slowest() + LOOKAHEAD * n).min(t.windows);
                let within = c < limit;
                if let Some(s @ (Slot::Pending | Slot::Redo)) = t.slot(c).filter(|_| within) {
                    *s = Slot::Indexing;
                    batch.push((c, Some(exact), t.spare.pop().map(Box::new)));
                }
                while batch.len() < WALKS && t.ahead < limit {
                    let k = t.ahead;
                    t.ahead += 1;
                    if let Some(s @ Slot::Pending) = t.slot(k) {
                        *s = Slot::Indexing;
                        batch.push((k, None, t.spare.pop().map(Box::new)));
                    }
                }
                if !batch.is_empty() {
                    break Step::Index(batch);
                }
                t.waiting += 1;
                t = job.changed.wait(t).unwrap_or_else(|e| e.into_inner());
                t.waiting -= 1;
            }
        };
        match step {
            Step::Done => break,
            Step::Index(batch) => {
                let done = job.index(batch);
                let mut t = job.lock();
                for (k, w) in done {
                    if let Some(s) = t.slot(k) {
                        *s = Slot::Ready(Arc::new(w));
                    }
                }
                job.notify(&t);
            }
            Step::Analyse(k, w) => {
                if !analyse(id, job, &w, &mut ix, flow, out, &mut report) {
                    job.stop();
                    break;
                }
                records += w.records;
                let last = job.last(k, &w);
                if last {
                    problem = w.problem.clone();
                }
                drop(w);
                forget(job, id, k + 1);
                analysed += 1;
                // Records go out in batches (each report takes the merger's lock and writes);
                // the watermark every few windows even without records, for the other
                // workers'.
                if (out.len() >= REPORT_RECORDS || analysed.is_multiple_of(32) || last)
                    && !report(out, (ix.frame, 0))
                {
                    job.stop();
                    break;
                }
                if out.is_empty() {
                    if let Some(m) = job.marks.get(id) {
                        m.store(ix.frame, Release);
                    }
                }
                if last {
                    // Nothing after a damaged record, or past the end.
                    let mut t = job.lock();
                    if let Some(x) = t.next.get_mut(id) {
                        *x = usize::MAX;
                    }
                    job.notify(&t);
                    break;
                }
            }
        }
    }
    (ix, records, problem)
}

/// This worker's part of one window: every frame counted, its own segments analysed.
/// Records are reported as soon as there are [`REPORT_RECORDS`] (a flood can make
/// thousands in a window). False if the output failed (nobody reads it any more).
fn analyse(
    id: usize,
    job: &Job,
    w: &Window,
    ix: &mut Indexer,
    flow: &mut FlowTable,
    out: &mut Vec<(OrderKey, Record)>,
    report: &mut impl FnMut(&mut Vec<(OrderKey, Record)>, Pos) -> bool,
) -> bool {
    let base = job.map.bytes().get(w.start..).unwrap_or_default();
    let mine = w.segs.of(id);
    let visit = |m: &SegInfo, frame: u64, flow: &mut FlowTable, out: &mut Vec<_>| {
        let mut ctx = Ctx {
            ts: w.segs.ts(m),
            frame,
            key_frame: frame,
            out,
        };
        w.segs.analyse(m, base, flow, &mut ctx);
    };
    if ix.ticks.quiet_until(w.max_ts) {
        // No tick falls in this window (the usual case: ticks are seconds of packet time
        // apart): only this worker's segments need a visit, not every frame.
        let first = ix.frame;
        for m in mine {
            let frame = first + w.segs.frame(m) + 1;
            visit(m, frame, flow, out);
            if out.len() >= REPORT_RECORDS && !report(out, (frame, 0)) {
                return false;
            }
        }
        ix.skip(w.ts.len() as u64, w.max_ts);
    } else {
        let mut j = 0;
        for (i, &ts) in w.ts.iter().enumerate() {
            if ix.count(ts) {
                tick(flow, ts, ix.frame, out);
            }
            while let Some(m) = mine.get(j).filter(|m| w.segs.frame(m) == i as u64) {
                j += 1;
                visit(m, ix.frame, flow, out);
            }
            if out.len() >= REPORT_RECORDS && !report(out, (ix.frame, 0)) {
                return false;
            }
        }
    }
    // The frames are counted once, by worker 0 (whose counters the reading thread keeps).
    if id == 0 {
        ix.read.add(&w.read);
    }
    true
}

/// Worker `id` goes on to window `next`: windows every worker is done with are dropped,
/// and the mapping behind them given back.
fn forget(job: &Job, id: usize, next: usize) {
    let mut t = job.lock();
    if let Some(x) = t.next.get_mut(id) {
        *x = next;
    }
    let slowest = t.slowest();
    let mut upto = None;
    while t.base < slowest.min(t.checked) {
        if let Some(Slot::Ready(w)) = t.slots.pop_front() {
            upto = Some(w.end);
            // Nobody holds it any more (every worker is past it): its buffers are reused.
            if let Ok(w) = Arc::try_unwrap(w) {
                t.spare.push(w);
            }
        }
        t.base += 1;
    }
    let mut release = None;
    if let Some(end) = upto {
        if end != usize::MAX && end >= t.released + RELEASE_STEP {
            release = Some((t.released, end));
            t.released = end;
        }
    }
    job.notify(&t);
    drop(t);
    if let Some((from, upto)) = release {
        job.map.release(from, upto);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::capture::test::mapped;
    use crate::limits::Limits;
    use std::time::{Duration, Instant};

    /// A worker that has to wait for a slower one (more threads than cores, a busy core)
    /// indexes no further than the lookahead: neither its memory nor the file's resident
    /// pages grow with the file while it waits.
    #[test]
    fn a_worker_waiting_for_a_slower_one_indexes_only_the_lookahead() {
        // 3,000 records of 1,000 bytes in 4 KiB windows: over 700 windows.
        let (map, _) = mapped("lookahead", &[1000; 3000]);
        let n = 2;
        let job = Arc::new(Job::with_window(map, Indexer::default(), n, MIN_WINDOW));
        assert!(job.windows > 700);
        // Worker 0 alone: worker 1 never starts, so worker 0 analyses MAX_LEAD windows and
        // then waits for it.
        let (tx, _rx) = std::sync::mpsc::sync_channel(1024);
        let worker = {
            let job = job.clone();
            std::thread::spawn(move || {
                let limits = Arc::new(Limits::default());
                let mut flow = FlowTable::new(limits, Arc::new(Vec::new()), n);
                let mut out = Vec::new();
                run(0, &job, &mut flow, &mut out, &tx, |out, _| {
                    out.clear();
                    true
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let (indexed, checked) = loop {
            let t = job.lock();
            if t.waiting == 1 || Instant::now() > deadline {
                let indexed = t
                    .slots
                    .iter()
                    .filter(|s| !matches!(s, Slot::Pending))
                    .count();
                break (indexed, t.checked);
            }
            drop(t);
            std::thread::sleep(Duration::from_millis(1));
        };
        job.stop();
        let _ = worker.join();
        assert!(
            indexed <= LOOKAHEAD * n && checked <= LOOKAHEAD * n,
            "{indexed} windows indexed, {checked} checked, while waiting (lookahead {})",
            LOOKAHEAD * n
        );
    }
}
