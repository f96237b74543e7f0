//! Packet sources: capture files (pcap and pcapng, `-` for standard input) and live
//! interfaces.
//!
//! Classic pcap files (what `tcpdump -w` writes), when no BPF filter is given, are read by
//! gatescope itself: large `read(2)` calls straight into [`Chunk`] buffers of whole records,
//! which the analysis walks in place (no per-packet copy, no per-packet call into libpcap).
//! That is several times cheaper than libpcap's buffered `fread` per record, and the same
//! buffer can be handed to every worker thread. Everything else (pcapng, standard input, BPF
//! filters, unusual pcap variants, live capture) goes through libpcap (the `pcap` crate).
//! Both paths give the analysis the same frames and time stamps; errors name the file and the
//! record so a user knows what was lost and where.

use crate::decode::linktype;
use crate::pipeline::Analyzer;
use crate::time::Ts;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, IntoRawFd};

/// Bytes of one chunk: many records per `read(2)` and per hand-over to the workers, small
/// enough to stay in cache while it is walked.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest captured length libpcap accepts for the link types gatescope decodes
/// (`MAXIMUM_SNAPLEN`); a larger record means a damaged file.
const MAX_CAPLEN: u32 = 262_144;

/// Record header bytes, in both chunk formats.
const REC_HDR: usize = 16;

/// Room for the start of a record cut by the end of the previous chunk.
const CARRY_ROOM: usize = REC_HDR + MAX_CAPLEN as usize;

/// Reads go to a page-aligned place in a chunk: into an unaligned buffer the kernel's copy
/// out of the page cache (the biggest single cost of reading) took half again as long.
const PAGE: usize = 4096;

/// Bytes of a chunk that is read into: the carry room, the alignment, the read.
const READ_CAPACITY: usize = CARRY_ROOM + PAGE + CHUNK_BYTES;

/// How the records in a chunk are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecFormat {
    /// As in a classic pcap file: seconds, micro- or nanoseconds, captured length, length on
    /// the wire (4 bytes each, in the file's byte order), then the captured bytes. Captured
    /// bytes beyond `snapshot` are skipped, as libpcap does.
    Pcap {
        big_endian: bool,
        nanos: bool,
        snapshot: u32,
    },
    /// Written by [`Chunk::push`]: time stamp (i64 µs), captured length, length on the wire
    /// (native byte order), then the captured bytes.
    Native,
}

/// A buffer of whole capture records of one link type, in capture order, filled by
/// `read(2)` or by [`Chunk::push`].
pub struct Chunk {
    buf: Box<[u8]>,
    /// The records are `buf[start..len]`.
    start: usize,
    len: usize,
    pub link: i32,
    pub fmt: RecFormat,
}

impl Default for Chunk {
    /// A chunk to read into.
    fn default() -> Chunk {
        Chunk::for_reading()
    }
}

impl Chunk {
    /// An empty chunk of [`CHUNK_BYTES`].
    pub fn new() -> Chunk {
        Chunk::with_capacity(CHUNK_BYTES)
    }

    fn with_capacity(n: usize) -> Chunk {
        Chunk {
            // Zeroed once (fresh pages from the allocator), then reused.
            buf: vec![0u8; n].into_boxed_slice(),
            start: 0,
            len: 0,
            link: linktype::ETHERNET,
            fmt: RecFormat::Native,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == self.start
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len - self.start
    }

    /// The records, as stored.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.len]
    }

    /// Empties the chunk for records of `link` in `fmt`.
    pub fn reset(&mut self, link: i32, fmt: RecFormat) {
        self.start = 0;
        self.len = 0;
        self.link = link;
        self.fmt = fmt;
    }

    /// A chunk for [`PcapFile::read_chunk`]: room for a cut record before a full read.
    pub(crate) fn for_reading() -> Chunk {
        Chunk::with_capacity(READ_CAPACITY)
    }

    /// Where reads go: page-aligned, with room for a cut record before.
    fn read_offset(&self) -> usize {
        let base = self.buf.as_ptr() as usize;
        (base + CARRY_ROOM).next_multiple_of(PAGE) - base
    }

    fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Whether a frame of `n` captured bytes fits in an empty chunk like this one.
    pub fn fits_empty(&self, n: usize) -> bool {
        REC_HDR + n <= self.capacity()
    }

    /// A chunk big enough for one frame of `n` captured bytes, however large.
    pub fn for_frame(n: usize) -> Chunk {
        Chunk::with_capacity((REC_HDR + n).max(CHUNK_BYTES))
    }

    /// Appends a frame in the [`RecFormat::Native`] layout; returns its offset. `None` (and
    /// nothing written) if it does not fit, or if the chunk holds records of another format or
    /// link type.
    pub fn push(&mut self, link: i32, ts: Ts, data: &[u8], orig_len: u32) -> Option<u32> {
        if self.is_empty() {
            self.start = 0;
            self.len = 0;
            self.link = link;
            self.fmt = RecFormat::Native;
        } else if self.link != link || self.fmt != RecFormat::Native {
            return None;
        }
        let buf = &mut self.buf;
        let at = self.len;
        let end = at + REC_HDR + data.len();
        if end > buf.len() {
            return None;
        }
        let caplen = u32::try_from(data.len()).ok()?;
        let off = u32::try_from(at).ok()?;
        let h = &mut buf[at..at + REC_HDR];
        h[..8].copy_from_slice(&ts.0.to_ne_bytes());
        h[8..12].copy_from_slice(&caplen.to_ne_bytes());
        h[12..16].copy_from_slice(&orig_len.to_ne_bytes());
        buf[at + REC_HDR..end].copy_from_slice(data);
        self.len = end;
        Some(off)
    }

    /// The record at byte offset `off`: time stamp, captured bytes, length on the wire, and
    /// the offset of the next record. `None` past the last record.
    #[inline]
    pub fn record_at(&self, off: usize) -> Option<(Ts, &[u8], u32, usize)> {
        record_in(self.fmt, self.bytes(), off)
    }

    /// Calls `f(offset, ts, captured bytes, length on the wire)` for every record, in order.
    #[inline]
    pub fn for_each(&self, f: impl FnMut(u32, Ts, &[u8], u32)) {
        for_each_record(self.fmt, self.bytes(), f);
    }
}

/// The record at byte offset `off` of `b`, records laid out as `fmt` says: time stamp,
/// captured bytes, length on the wire, and the offset of the next record. `None` past the
/// last whole record.
#[inline]
fn record_in(fmt: RecFormat, b: &[u8], off: usize) -> Option<(Ts, &[u8], u32, usize)> {
    let h = b.get(off..off + REC_HDR)?;
    let start = off + REC_HDR;
    match fmt {
        RecFormat::Pcap {
            big_endian,
            nanos,
            snapshot,
        } => {
            let rd = |i: usize| u32_in(h, i, big_endian);
            let (sec, frac, caplen, len) = (rd(0), rd(4), rd(8), rd(12));
            let end = start + caplen as usize;
            let data = b.get(start..end)?;
            let usec = if nanos { frac / 1000 } else { frac };
            let ts = Ts::from_timeval(i64::from(sec), i64::from(usec));
            Some((ts, &data[..caplen.min(snapshot) as usize], len, end))
        }
        RecFormat::Native => {
            let ts = i64::from_ne_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
            let caplen = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
            let len = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
            let end = start + caplen as usize;
            Some((Ts(ts), b.get(start..end)?, len, end))
        }
    }
}

/// The 4 bytes of `h` at `i` (which the caller has checked are there) in a file's byte order.
#[inline(always)]
fn u32_in(h: &[u8], i: usize, big_endian: bool) -> u32 {
    let w = [h[i], h[i + 1], h[i + 2], h[i + 3]];
    if big_endian {
        u32::from_be_bytes(w)
    } else {
        u32::from_le_bytes(w)
    }
}

/// Calls `f(offset, ts, captured bytes, length on the wire)` for every whole record of `b`.
#[inline]
fn for_each_record(fmt: RecFormat, b: &[u8], mut f: impl FnMut(u32, Ts, &[u8], u32)) {
    let mut off = 0usize;
    while let Some((ts, data, len, next)) = record_in(fmt, b, off) {
        // Offsets fit: chunks and mapped windows are far smaller than 4 GiB.
        f(off as u32, ts, data, len);
        off = next;
    }
}

/// What [`PcapFile::fill`] put in its chunk.
enum Fill {
    /// Whole records; more may follow.
    More,
    /// Whole records up to the end of the file.
    End,
    /// Whole records up to a problem (truncated or damaged record, read error).
    Stop(String),
}

/// How far ahead of a walk through freshly read records their bytes are prefetched.
const PREFETCH_AHEAD: usize = 8 << 10;

/// Starts loading the cache line of `b[0]`.
#[inline(always)]
fn prefetch(b: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(b.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = b;
}

/// A classic pcap file mapped into memory, so that several workers can walk all of its
/// records at once (see `pipeline`) without each copying it out of the page cache.
///
/// Pages behind the slowest reader are given back ([`Mapped::release`]), so that resident
/// memory stays small whatever the file size. Like every tool that maps its input (ripgrep,
/// databases), reading a file that another process truncates at the same time faults
/// (SIGBUS); gatescope then says so and exits with status 2 ([`on_sigbus`]). A pipe
/// (`cat F | gatescope analyze -`) is read with `read(2)`.
pub(crate) struct Mapped {
    ptr: *const u8,
    len: usize,
    /// Where the records begin (after the file header).
    pub data_start: usize,
    pub file: PcapFile,
}

// SAFETY: the mapping is read-only and lives until `Drop`; sharing `&[u8]` views of it
// between threads is what `&[u8]` allows anyway.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// The whole file, header included.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn link(&self) -> i32 {
        self.file.link
    }

    /// Drops the process's mapping of the pages before byte `upto` (they stay in the page
    /// cache; reading them again maps them again): no reader goes back, and without this the
    /// resident size would grow with the file.
    pub(crate) fn release(&self, from: usize, upto: usize) {
        let page = PAGE;
        let from = from.next_multiple_of(page);
        let upto = (upto.min(self.len) / page) * page;
        if upto <= from {
            return;
        }
        // SAFETY: a page-aligned range inside the mapping. MADV_DONTNEED on a shared,
        // read-only file mapping only drops page-table entries: the contents read later are
        // the file's, unchanged.
        unsafe {
            libc::madvise(
                self.ptr.add(from).cast_mut().cast(),
                upto - from,
                libc::MADV_DONTNEED,
            );
        }
    }

    /// The records that start in `[from, upto)`, `from` being a record's start: each passed
    /// to `f(ts, captured bytes, length on the wire)`. Returns where the next record starts,
    /// the records walked, and the problem that ends the file there (a cut or damaged
    /// record), if any.
    #[inline]
    pub(crate) fn records(
        &self,
        from: usize,
        upto: usize,
        mut f: impl FnMut(Ts, &[u8], u32),
    ) -> (usize, u64, Option<String>) {
        let b = self.bytes();
        let (mut p, mut n) = (from, 0u64);
        let mut ahead = p;
        while p < upto {
            // Each header's place comes from the one before: a chain of cache misses,
            // unless the lines ahead are already on their way.
            while ahead < (p + PREFETCH_AHEAD).min(b.len()) {
                if let Some(at) = b.get(ahead..) {
                    prefetch(at);
                }
                ahead += 64;
            }
            match self.file.record(b, p) {
                Ok(Some((ts, data, len, next))) => {
                    f(ts, data, len);
                    n += 1;
                    p = next;
                }
                Ok(None) => break,
                Err(e) => return (p, n, Some(e)),
            }
        }
        (p, n, None)
    }

    /// Several walks like [`Mapped::records`] at once, a record of each in turn:
    /// `f(walk, ts, captured bytes, length on the wire)`, each walk's records in order.
    ///
    /// Why: a walk is a chain of dependent loads (each header's place comes from the one
    /// before), and prefetching every line ahead to hide that pulls the whole file through
    /// the cache although only the headers are read — memory bandwidth that two cores
    /// streaming at once do not have. Taking turns, each walk's next header is requested as
    /// soon as its place is known, and arrives while the other walks are served: the misses
    /// overlap, and only the lines with headers are read.
    pub(crate) fn records_interleaved(
        &self,
        walks: &mut [Walk],
        mut f: impl FnMut(usize, Ts, &[u8], u32),
    ) {
        let b = self.bytes();
        let ahead = |p: usize| {
            // The record header and the frame's headers after it (up to ~80 bytes).
            for d in [0, 40, 80] {
                if let Some(at) = b.get(p + d..) {
                    prefetch(at);
                }
            }
        };
        for w in walks.iter() {
            ahead(w.at);
        }
        let mut live = walks.iter().filter(|w| w.at < w.upto).count();
        while live > 0 {
            for (i, w) in walks.iter_mut().enumerate() {
                if w.at >= w.upto || w.done {
                    continue;
                }
                match self.file.record(b, w.at) {
                    Ok(Some((ts, data, len, next))) => {
                        ahead(next);
                        // And a guess three records ahead: the next ones as long as this
                        // one (the full-size frames of a transfer). Right only one time in
                        // five on keep-alive traffic (ACKs come between), yet worth 2–3 % of
                        // two threads' wall time (interleaved runs), where a guess two records
                        // ahead (right twice as often) or a fixed 2 KiB gave 1–1.5 %: likely
                        // by starting the page ahead (its TLB entry) early; these VMs expose
                        // no counters to tell.
                        ahead(next.saturating_add(3 * (next - w.at)));
                        f(i, ts, data, len);
                        w.records += 1;
                        w.prev = w.at;
                        w.at = next;
                        if next >= w.upto {
                            live -= 1;
                        }
                    }
                    Ok(None) => {
                        w.done = true;
                        live -= 1;
                    }
                    Err(e) => {
                        w.problem = Some(e);
                        w.done = true;
                        live -= 1;
                    }
                }
            }
        }
    }

    /// Walks every record of the file in order, window by window: `frame(st, ts, captured
    /// bytes, length on the wire)` for each record, `between(st, offset)` after each window
    /// of about [`MAPPED_WINDOW`] bytes (false: stop). Returns the records walked, and the
    /// problem that stopped the walk (a cut or damaged record), if any.
    pub(crate) fn walk<S>(
        &self,
        st: &mut S,
        mut frame: impl FnMut(&mut S, Ts, &[u8], u32),
        mut between: impl FnMut(&mut S, usize) -> bool,
    ) -> (u64, Option<String>) {
        let end = self.bytes().len();
        let (mut off, mut records) = (self.data_start, 0u64);
        while off < end {
            let upto = off.saturating_add(MAPPED_WINDOW);
            let (next, n, problem) =
                self.records(off, upto, |ts, data, len| frame(st, ts, data, len));
            records += n;
            off = next;
            if problem.is_some() {
                return (records, problem);
            }
            if !between(st, off) {
                break;
            }
        }
        (records, None)
    }
}

/// One of the walks of [`Mapped::records_interleaved`]: the records that start in
/// `[from, upto)`, `from` being a record's start.
#[derive(Debug)]
pub(crate) struct Walk {
    /// Where the next record starts (at the end: where the record after the walk starts).
    pub(crate) at: usize,
    /// Where the record before `at` starts.
    prev: usize,
    pub(crate) upto: usize,
    pub(crate) records: u64,
    /// The end of the file, or a problem, was reached before `upto`.
    done: bool,
    /// The cut or damaged record that ended the walk (and the file).
    pub(crate) problem: Option<String>,
}

impl Walk {
    pub(crate) fn new(from: usize, upto: usize) -> Walk {
        Walk {
            at: from,
            prev: from,
            upto,
            records: 0,
            done: false,
            problem: None,
        }
    }
}

/// A file truncated by another process while mapped faults on the lost pages: instead of
/// dying silently, say what happened and what to do, and exit with status 2 (only
/// async-signal-safe calls in the handler).
fn on_sigbus() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn handler(_: libc::c_int) {
        const MSG: &[u8] = b"gatescope: a capture file shrank while it was being read (another process truncated it, e.g. tcpdump -W reusing the name); read such files through a pipe: cat FILE | gatescope analyze -\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is static.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(2);
        }
    }
    ONCE.call_once(|| {
        // SAFETY: installs a handler for SIGBUS; the sigaction struct is fully initialised
        // (zeroed, then the handler and an empty mask).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `PcapFile::map`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast_mut().cast(), self.len);
        }
    }
}

/// Bytes of a mapped file walked between two looks at the world (other workers, output,
/// pages to give back).
pub(crate) const MAPPED_WINDOW: usize = 256 << 10;

/// A classic pcap file read in chunks.
pub(crate) struct PcapFile {
    file: File,
    link: i32,
    fmt: RecFormat,
    /// Where the records begin, for positioned reads; `None` for a pipe.
    data_start: Option<u64>,
    /// The start of a record cut by the end of the previous chunk.
    carry: Vec<u8>,
    eof: bool,
    /// Whole records read so far.
    records: u64,
}

/// Link types read without libpcap (the file's LINKTYPE_ value is what `decode` expects for
/// these; other values are left to libpcap's mapping).
fn native_link(lt: u32) -> bool {
    matches!(
        lt as i32,
        linktype::NULL
            | linktype::ETHERNET
            | linktype::RAW
            | linktype::LOOP
            | linktype::LINUX_SLL
            | linktype::IPV4
            | linktype::IPV6
            | linktype::LINUX_SLL2
    )
}

impl PcapFile {
    /// Opens `path` if it is a classic pcap file gatescope reads itself (version 2.4, micro- or
    /// nanosecond time stamps, either byte order, a link type it decodes). `Ok(None)`: leave
    /// it to libpcap, which also words the error if it is no capture at all.
    fn open(path: &str, shown: &str) -> Result<Option<PcapFile>, String> {
        let mut file = File::open(path).map_err(|e| format!("{shown}: cannot open: {e}"))?;
        let hdr = read_header(&mut file);
        Ok(PcapFile::from_header(file, &hdr).ok())
    }

    /// A reader of `file`, whose first bytes, `hdr`, were read already; the file back if
    /// they are not the header of a pcap file gatescope reads itself.
    fn from_header(file: File, hdr: &[u8]) -> Result<PcapFile, File> {
        let Ok(hdr) = <&[u8; 24]>::try_from(hdr) else {
            return Err(file);
        };
        let (big_endian, nanos) = match u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) {
            0xa1b2_c3d4 => (false, false),
            0xa1b2_3c4d => (false, true),
            0xd4c3_b2a1 => (true, false),
            0x4d3c_b2a1 => (true, true),
            _ => return Err(file),
        };
        let u16_at = |i: usize| {
            let w = [hdr[i], hdr[i + 1]];
            if big_endian {
                u16::from_be_bytes(w)
            } else {
                u16::from_le_bytes(w)
            }
        };
        let u32_at = |i: usize| u32_in(hdr, i, big_endian);
        // Older versions may swap the two lengths; link types with extension bits (FCS
        // length) need libpcap's interpretation.
        let (major, minor, snaplen, lt) = (u16_at(4), u16_at(6), u32_at(16), u32_at(20));
        if (major, minor) != (2, 4) || !native_link(lt) {
            return Err(file);
        }
        let snapshot = if snaplen == 0 || snaplen > MAX_CAPLEN {
            MAX_CAPLEN
        } else {
            snaplen
        };
        // Chunks can be read at known offsets (by several threads) from a regular file, not
        // from a pipe.
        let mut file = file;
        let seekable = file.metadata().is_ok_and(|m| m.is_file());
        let data_start = if seekable {
            file.stream_position().ok()
        } else {
            None
        };
        Ok(PcapFile {
            file,
            link: lt as i32,
            fmt: RecFormat::Pcap {
                big_endian,
                nanos,
                snapshot,
            },
            data_start,
            carry: Vec::new(),
            eof: false,
            records: 0,
        })
    }

    /// Maps the file into memory for [`Mapped`] reading; the reader back if it is not a
    /// regular file with records, or cannot be mapped (then it is read in chunks).
    pub(crate) fn map(self) -> Result<Mapped, PcapFile> {
        let Some(data_start) = self.data_start else {
            return Err(self);
        };
        let len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return Err(self),
        };
        let (Ok(len), Ok(data_start)) = (usize::try_from(len), usize::try_from(data_start)) else {
            return Err(self);
        };
        if len <= data_start {
            return Err(self);
        }
        let Some(ptr) = map_read_only(&self.file, len) else {
            return Err(self);
        };
        Ok(Mapped {
            ptr,
            len,
            data_start,
            file: self,
        })
    }

    fn big_endian(&self) -> bool {
        matches!(
            self.fmt,
            RecFormat::Pcap {
                big_endian: true,
                ..
            }
        )
    }

    /// The captured length in record header `h` (16 bytes).
    fn caplen(&self, h: &[u8]) -> u32 {
        u32_in(h, 8, self.big_endian())
    }

    /// Whole records at the start of `b`: their length, and the problem if a record header
    /// is damaged.
    fn walk(&mut self, b: &[u8]) -> (usize, Option<String>) {
        let (pos, n, damaged) = self.whole_records(b);
        self.records += n;
        (pos, damaged)
    }

    /// Whole records at the start of `b`: their length, their number, and the problem if a
    /// record header is damaged (the records before it are whole).
    fn whole_records(&self, b: &[u8]) -> (usize, u64, Option<String>) {
        let mut pos = 0usize;
        let mut n = 0u64;
        let mut ahead = 0usize;
        while let Some(h) = b.get(pos..pos + REC_HDR) {
            // Just read, the bytes are not in the cache (the kernel's copy of large reads
            // bypasses it), and each header's place comes from the one before: a chain of
            // cache misses, unless the lines ahead are already on their way.
            while ahead < (pos + PREFETCH_AHEAD).min(b.len()) {
                prefetch(&b[ahead..]);
                ahead += 64;
            }
            let caplen = self.caplen(h);
            if caplen > MAX_CAPLEN {
                return (pos, n, Some(self.damaged(caplen)));
            }
            let end = pos + REC_HDR + caplen as usize;
            if end > b.len() {
                break;
            }
            pos = end;
            n += 1;
        }
        (pos, n, None)
    }

    /// The record at byte `p` of `b` (the whole file): time stamp, captured bytes, length on
    /// the wire, offset of the next record. `Ok(None)` exactly at the end of `b`; `Err` with
    /// libpcap's words for a damaged or cut record.
    #[inline]
    #[allow(clippy::type_complexity)]
    fn record<'a>(
        &self,
        b: &'a [u8],
        p: usize,
    ) -> Result<Option<(Ts, &'a [u8], u32, usize)>, String> {
        let Some(h) = b.get(p..p + REC_HDR) else {
            let tail = b.get(p..).unwrap_or_default();
            return if tail.is_empty() {
                Ok(None)
            } else {
                Err(self.cut_record(tail))
            };
        };
        let caplen = self.caplen(h);
        if caplen > MAX_CAPLEN {
            return Err(self.damaged(caplen));
        }
        match record_in(self.fmt, b, p) {
            Some(r) => Ok(Some(r)),
            None => Err(self.cut_record(b.get(p..).unwrap_or_default())),
        }
    }

    fn damaged(&self, caplen: u32) -> String {
        // libpcap's words, so that both readers say the same
        let snapshot = match self.fmt {
            RecFormat::Pcap { snapshot, .. } => snapshot,
            RecFormat::Native => MAX_CAPLEN,
        };
        format!("invalid packet capture length {caplen}, bigger than snaplen of {snapshot}")
    }

    /// The seconds of the record at `p`, if a whole header is there.
    pub(crate) fn seconds_at(&self, b: &[u8], p: usize) -> Option<u32> {
        let h = b.get(p..p + 4)?;
        Some(u32_in(h, 0, self.big_endian()))
    }

    /// A guess at the first record boundary at or after `from` (before `upto`) in `b`, the
    /// whole file, for reading a file from its middle: a place where several plausible
    /// record headers follow each other (time near `near_sec`, lengths within the
    /// snapshot). Only a guess — a payload can look like headers — so the reader checks it
    /// against the true chain of records before using what it read (see `pipeline`).
    pub(crate) fn resync(
        &self,
        b: &[u8],
        from: usize,
        upto: usize,
        near_sec: u32,
    ) -> Option<usize> {
        const CHAIN: usize = 4;
        const NEAR: u32 = 30 * 86_400;
        let (big_endian, nanos, snapshot) = match self.fmt {
            RecFormat::Pcap {
                big_endian,
                nanos,
                snapshot,
            } => (big_endian, nanos, snapshot),
            RecFormat::Native => return None,
        };
        let rd = |h: &[u8], i: usize| u32_in(h, i, big_endian);
        let frac_max = if nanos { 1_000_000_000 } else { 1_000_000 };
        let plausible = |p: usize| -> Option<usize> {
            let h = b.get(p..p + REC_HDR)?;
            let (sec, frac, caplen, len) = (rd(h, 0), rd(h, 4), rd(h, 8), rd(h, 12));
            let ok = sec.abs_diff(near_sec) <= NEAR
                && frac < frac_max
                && caplen > 0
                && caplen <= snapshot
                && caplen <= len
                && len <= MAX_CAPLEN;
            ok.then_some(p + REC_HDR + caplen as usize)
        };
        (from..upto.min(b.len())).find(|&start| {
            let mut p = start;
            for _ in 0..CHAIN {
                if p == b.len() {
                    return true;
                }
                match plausible(p) {
                    Some(next) if next <= b.len() => p = next,
                    _ => return false,
                }
            }
            true
        })
    }

    /// What is wrong with a file that ends with `tail`, the start of a record.
    fn cut_record(&self, tail: &[u8]) -> String {
        match tail.len() {
            n if n < REC_HDR => {
                format!("truncated dump file; tried to read {REC_HDR} header bytes, only got {n}")
            }
            n => format!(
                "truncated dump file; tried to read {} captured bytes, only got {}",
                self.caplen(tail),
                n - REC_HDR
            ),
        }
    }

    /// Fills `chunk` with the next whole records by reading.
    fn fill(&mut self, chunk: &mut Chunk) -> Fill {
        if chunk.capacity() < READ_CAPACITY {
            *chunk = Chunk::for_reading();
        }
        chunk.reset(self.link, self.fmt);
        let at = chunk.read_offset();
        let buf = &mut chunk.buf;
        // The start of a record cut by the previous chunk goes just before the read.
        let carry = self.carry.len().min(at);
        let start = at - carry;
        buf[start..at].copy_from_slice(&self.carry[..carry]);
        self.carry.clear();
        let end = at + CHUNK_BYTES;
        let mut len = at;
        let mut read_error = None;
        while len < end && !self.eof {
            match self.file.read(&mut buf[len..end]) {
                Ok(0) => self.eof = true,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    read_error = Some(format!("error reading dump file: {e}"));
                    break;
                }
            }
        }
        // Whole records only; a record can never exceed a chunk (MAX_CAPLEN < CHUNK_BYTES).
        let (pos, damaged) = self.walk(&buf[start..len]);
        chunk.start = start;
        chunk.len = start + pos;
        if let Some(e) = damaged.or(read_error) {
            return Fill::Stop(e);
        }
        let tail = buf.get(start + pos..len).unwrap_or_default();
        if !self.eof {
            self.carry.extend_from_slice(tail);
            return Fill::More;
        }
        if tail.is_empty() {
            Fill::End
        } else {
            Fill::Stop(self.cut_record(tail))
        }
    }
}

/// Milliseconds per GB that touching one byte of every page of `path`'s mapping takes:
/// the cost of mapping the file's page cache, which gatescope pays once per page.
///
/// Why it is measured: it depends on how the kernel holds the file, not on gatescope. The
/// project's 2-core VM took 10–30 ms/GB when the pages sat in large folios (a file just
/// read back from disk) and 90–180 ms/GB in small ones (after memory reclaim split them),
/// and the speed of one thread and the two-thread ratio move with it. `benches/compare.sh`
/// prints it (through `gatescope-gen page-touch`) so that a run says what it measured.
/// Like any reader of the mapping, the pages are read from disk first if they are not
/// cached.
pub fn page_touch_ms_per_gb(path: &std::path::Path) -> std::io::Result<f64> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::other("file too large to map"))?;
    if len == 0 {
        return Ok(0.0);
    }
    let ptr = map_read_only(&file, len).ok_or_else(std::io::Error::last_os_error)?;
    let start = std::time::Instant::now();
    let mut sum = 0u8;
    for off in (0..len).step_by(PAGE) {
        // SAFETY: `off < len`, inside the mapping; a volatile read so that it is not elided.
        sum ^= unsafe { std::ptr::read_volatile(ptr.add(off)) };
    }
    let took = start.elapsed();
    std::hint::black_box(sum);
    // SAFETY: the mapping made above, unmapped once; nothing refers to it any more.
    unsafe {
        libc::munmap(ptr.cast_mut().cast(), len);
    }
    Ok(took.as_secs_f64() * 1e3 / (len as f64 / 1e9))
}

/// Maps `len` bytes of `file` read-only and shared (the page cache itself, no copy), with
/// the SIGBUS handler in place for a file truncated under the mapping. `None` if it cannot
/// be mapped (`errno` says why).
fn map_read_only(file: &File, len: usize) -> Option<*const u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh read-only mapping of `len` bytes of an open file; the kernel picks
    // the address. Failure is checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED || ptr.is_null() {
        return None;
    }
    on_sigbus();
    Some(ptr.cast::<u8>().cast_const())
}

/// Reads one capture file into the analyzer. Returns an error line (naming the file and the
/// record) if the file could not be opened or was cut short; the packets read before the
/// problem have been analysed either way.
pub fn read_file(path: &str, filter: Option<&str>, analyzer: &mut Analyzer) -> Result<u64, String> {
    let shown = if path == "-" { "<stdin>" } else { path };
    if path == "-" {
        if filter.is_none() {
            return read_stdin(analyzer);
        }
        return read_libpcap(LibpcapSource::Path(path), shown, filter, analyzer);
    }
    match std::fs::metadata(path) {
        Err(e) => return Err(format!("{shown}: cannot open: {e}")),
        Ok(m) if m.is_dir() => return Err(format!("{shown}: is a directory, not a capture file")),
        Ok(m) if m.len() == 0 => {
            return Err(format!("{shown}: empty file (0 bytes): not a capture"))
        }
        Ok(_) => {}
    }
    if filter.is_none() {
        if let Some(f) = PcapFile::open(path, shown)? {
            return read_native(f, shown, analyzer);
        }
    }
    read_libpcap(LibpcapSource::Path(path), shown, filter, analyzer)
}

/// The first 24 bytes of `r`, or fewer at its end.
fn read_header(r: &mut impl Read) -> Vec<u8> {
    let mut hdr = vec![0u8; 24];
    let mut got = 0;
    while got < hdr.len() {
        match r.read(&mut hdr[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    hdr.truncate(got);
    hdr
}

/// Standard input: a classic pcap stream is read like a file (in positioned chunks when
/// standard input is a regular file); anything else goes to libpcap, through a pipe that first
/// gives it back the bytes looked at.
fn read_stdin(analyzer: &mut Analyzer) -> Result<u64, String> {
    let shown = "<stdin>";
    let fd = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return read_libpcap(LibpcapSource::Path("-"), shown, None, analyzer),
    };
    let mut file = File::from(fd);
    let hdr = read_header(&mut file);
    let file = match PcapFile::from_header(file, &hdr) {
        Ok(f) => return read_native(f, shown, analyzer),
        Err(file) => file,
    };
    let (rd, mut wr) = std::io::pipe().map_err(|e| format!("{shown}: cannot make a pipe: {e}"))?;
    let pump = std::thread::spawn(move || {
        let mut file = file;
        // Stops when libpcap closes its end (it read what it wanted).
        if wr.write_all(&hdr).is_ok() {
            let _ = std::io::copy(&mut file, &mut wr);
        }
    });
    let read = read_libpcap(LibpcapSource::Fd(rd.into()), shown, None, analyzer);
    // After a whole read the pump has hit the end of stdin. After a failure it may be
    // blocked writing to a pipe nobody reads (libpcap does not close a descriptor it refused):
    // waiting for it would hang on any input larger than the pipe; it ends with the process.
    if read.is_ok() {
        let _ = pump.join();
    }
    read
}

enum LibpcapSource<'a> {
    Path(&'a str),
    Fd(std::os::fd::OwnedFd),
}

fn stopped(shown: &str, records: u64, e: &str) -> String {
    if e.contains("different from the type of the first interface") {
        // A valid pcapng from `dumpcap -i eth0 -i tun0` or joined sections: libpcap reads
        // one link type per file. Not damage: say how to get the parts through.
        return format!(
            "{shown}: stopped after record {records}: its interfaces have different link types ({e}), which libpcap cannot read in one file; split it per interface (e.g. tshark -r {shown} -Y 'frame.interface_id == 1' -w part1.pcapng) and give the parts to gatescope together"
        );
    }
    format!(
        "{shown}: stopped after record {records}: {e} (the file is truncated or corrupt; results up to that record are reported)"
    )
}

fn read_native(mut f: PcapFile, shown: &str, analyzer: &mut Analyzer) -> Result<u64, String> {
    // A regular file is mapped: no copy out of the page cache, and with several workers
    // every one walks it (see `pipeline`).
    match f.map() {
        Ok(m) => {
            return match analyzer.read_mapped(m) {
                (records, None) => Ok(records),
                (records, Some(e)) => Err(stopped(shown, records, &e)),
            }
        }
        Err(back) => f = back,
    }
    loop {
        if analyzer.output_failed() {
            return Ok(f.records);
        }
        let mut chunk = analyzer.chunk_buffer();
        let fill = f.fill(&mut chunk);
        analyzer.chunk(chunk);
        match fill {
            Fill::More => {}
            Fill::End => return Ok(f.records),
            Fill::Stop(e) => return Err(stopped(shown, f.records, &e)),
        }
    }
}

/// Applies the user's BPF filter, widened to ICMP destination-unreachable messages: a filter
/// on the backend's TCP port (the usual one) would drop the firewall rejects that explain a
/// failed connect (`connect_unreachable`), and they are few. If the widened filter does not
/// compile, the user's own (whose error, if any, is then the one reported).
pub fn apply_filter<T: pcap::Activated + ?Sized>(
    cap: &mut pcap::Capture<T>,
    filter: &str,
) -> Result<(), pcap::Error> {
    let wide = format!(
        "({filter}) or (icmp[icmptype] == icmp-unreach) or (ip6[6] == 58 and ip6[40] == 1)"
    );
    if cap.filter(&wide, true).is_ok() {
        return Ok(());
    }
    cap.filter(filter, true)
}

fn read_libpcap(
    src: LibpcapSource<'_>,
    shown: &str,
    filter: Option<&str>,
    analyzer: &mut Analyzer,
) -> Result<u64, String> {
    let cap = match src {
        LibpcapSource::Path(path) => pcap::Capture::from_file(path),
        // SAFETY: the descriptor is ours alone and handed over; libpcap closes it.
        LibpcapSource::Fd(fd) => unsafe { pcap::Capture::from_raw_fd(fd.into_raw_fd()) },
    };
    let mut cap = cap.map_err(|e| {
        format!("{shown}: not a readable pcap/pcapng capture ({e}); check that it was written by tcpdump -w or dumpcap")
    })?;
    let link = cap.get_datalink().0;
    if !linktype::supported(link) {
        let name = cap
            .get_datalink()
            .get_name()
            .unwrap_or_else(|_| "unknown".into());
        return Err(format!(
            "{shown}: unsupported link type {link} ({name}); gatescope decodes Ethernet, Linux cooked (-i any), raw IP and BSD loopback captures"
        ));
    }
    if let Some(f) = filter {
        apply_filter(&mut cap, f).map_err(|e| format!("invalid filter '{f}': {e}"))?;
    }
    let mut records = 0u64;
    loop {
        if analyzer.output_failed() {
            return Ok(records);
        }
        match cap.next_packet() {
            Ok(p) => {
                records += 1;
                let ts = Ts::from_timeval(p.header.ts.tv_sec, p.header.ts.tv_usec);
                analyzer.packet(link, ts, p.data, p.header.len);
            }
            Err(pcap::Error::NoMorePackets) => return Ok(records),
            Err(pcap::Error::TimeoutExpired) => continue,
            Err(e) => return Err(stopped(shown, records, &e.to_string())),
        }
    }
}

#[cfg(test)]
pub(crate) mod test {
    use super::*;

    #[test]
    fn page_touch_times_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("pages");
        std::fs::write(&path, vec![7u8; 64 << 10]).unwrap_or_else(|e| panic!("{e}"));
        let ms = page_touch_ms_per_gb(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(ms.is_finite() && ms >= 0.0, "{ms}");
        let missing = page_touch_ms_per_gb(&dir.path().join("none"));
        assert_eq!(
            missing.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn native_records_round_trip() {
        let mut c = Chunk::new();
        assert_eq!(c.push(1, Ts(5), b"abc", 10), Some(0));
        assert_eq!(c.push(1, Ts(-7), b"", 0), Some(19));
        assert_eq!(
            c.push(101, Ts(8), b"x", 1),
            None,
            "another link type, another chunk"
        );
        let mut seen = Vec::new();
        c.for_each(|off, ts, d, l| seen.push((off, ts.0, d.to_vec(), l)));
        assert_eq!(
            seen,
            vec![(0, 5, b"abc".to_vec(), 10), (19, -7, Vec::new(), 0)]
        );
    }

    #[test]
    fn pcap_records_are_cut_at_the_snapshot_and_scaled_to_micros() {
        let mut c = Chunk::new();
        c.reset(
            1,
            RecFormat::Pcap {
                big_endian: true,
                nanos: true,
                snapshot: 2,
            },
        );
        let mut rec = Vec::new();
        for v in [7u32, 123_456_789, 3, 60] {
            rec.extend_from_slice(&v.to_be_bytes());
        }
        rec.extend_from_slice(b"xyz");
        c.buf[..rec.len()].copy_from_slice(&rec);
        c.len = rec.len();
        let mut seen = Vec::new();
        c.for_each(|_, ts, d, l| seen.push((ts.0, d.to_vec(), l)));
        assert_eq!(seen, vec![(7_123_456, b"xy".to_vec(), 60)]);
    }

    /// A classic little-endian pcap file of records with payloads of `sizes` bytes (each
    /// filled with its index), mapped.
    pub(crate) fn mapped(name: &str, sizes: &[usize]) -> (Mapped, Vec<usize>) {
        let mut b = Vec::new();
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, 1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut starts = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            starts.push(b.len());
            for v in [1_700_000_000u32, i as u32, n as u32, n as u32] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend(std::iter::repeat_n(i as u8, n));
        }
        let path =
            std::env::temp_dir().join(format!("gatescope-{}-{name}.pcap", std::process::id()));
        std::fs::write(&path, &b).unwrap_or_else(|e| panic!("{e}"));
        let shown = path.display().to_string();
        let file = PcapFile::open(&shown, &shown)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("not a pcap file"));
        let _ = std::fs::remove_file(&path);
        match file.map() {
            Ok(m) => (m, starts),
            Err(_) => panic!("cannot map"),
        }
    }

    #[test]
    fn interleaved_walks_see_each_range_s_records_in_order() {
        let sizes: Vec<usize> = (0..40).map(|i| 60 + (i * 37) % 1500).collect();
        let (m, starts) = mapped("interleaved", &sizes);
        let end = m.bytes().len();
        // Three walks: records 0..10, 10..25, 25..; the last runs to the end of the file.
        let mut walks = vec![
            Walk::new(starts[0], starts[10]),
            Walk::new(starts[10], starts[25] - 1),
            Walk::new(starts[25], end + 100),
        ];
        let mut seen: Vec<Vec<u8>> = vec![Vec::new(); 3];
        m.records_interleaved(&mut walks, |w, _, data, len| {
            assert_eq!(data.len(), len as usize);
            seen[w].push(data.first().copied().unwrap_or(0));
        });
        let ids = |r: std::ops::Range<u8>| r.collect::<Vec<u8>>();
        assert_eq!(seen, vec![ids(0..10), ids(10..25), ids(25..40)]);
        let ends: Vec<(usize, u64, bool)> = walks
            .iter()
            .map(|w| (w.at, w.records, w.problem.is_some()))
            .collect();
        assert_eq!(
            ends,
            vec![
                (starts[10], 10, false),
                (starts[25], 15, false),
                (end, 15, false)
            ]
        );
    }

    #[test]
    fn a_damaged_record_ends_only_its_own_walk() {
        let (m, starts) = mapped("damaged", &[100, 100, 100, 100]);
        // A wrong guess for walk 0: 8 bytes into record 1, its "captured length" is the
        // payload's 0x01010101 bytes, far beyond any snapshot length.
        let mut walks = vec![
            Walk::new(starts[1] + 8, starts[2]),
            Walk::new(starts[2], starts[3] + 1),
        ];
        let mut n = [0; 2];
        m.records_interleaved(&mut walks, |w, _, _, _| n[w] += 1);
        assert!(walks[0].problem.is_some(), "{:?}", walks[0]);
        assert_eq!(
            (n, walks[1].records, walks[1].at),
            ([0, 2], 2, m.bytes().len())
        );
    }
}
