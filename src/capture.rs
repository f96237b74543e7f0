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
use std::io::Read;

/// Bytes of one chunk: many records per `read(2)` and per hand-over to the workers, small
/// enough to stay in cache while it is walked.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest captured length libpcap accepts for the link types gatescope decodes
/// (`MAXIMUM_SNAPLEN`); a larger record means a damaged file.
const MAX_CAPLEN: u32 = 262_144;

/// Record header bytes, in both chunk formats.
const REC_HDR: usize = 16;

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
    len: usize,
    pub link: i32,
    pub fmt: RecFormat,
}

impl Default for Chunk {
    fn default() -> Chunk {
        Chunk::new()
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
            len: 0,
            link: linktype::ETHERNET,
            fmt: RecFormat::Native,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The records, as stored.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Empties the chunk for records of `link` in `fmt`.
    pub fn reset(&mut self, link: i32, fmt: RecFormat) {
        self.len = 0;
        self.link = link;
        self.fmt = fmt;
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
        if self.len == 0 {
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
        let b = self.bytes();
        let h = b.get(off..off + REC_HDR)?;
        let start = off + REC_HDR;
        match self.fmt {
            RecFormat::Pcap {
                big_endian,
                nanos,
                snapshot,
            } => {
                let rd = |i: usize| {
                    let w = [h[i], h[i + 1], h[i + 2], h[i + 3]];
                    if big_endian {
                        u32::from_be_bytes(w)
                    } else {
                        u32::from_le_bytes(w)
                    }
                };
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

    /// Calls `f(offset, ts, captured bytes, length on the wire)` for every record, in order.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(u32, Ts, &[u8], u32)) {
        let mut off = 0usize;
        while let Some((ts, data, len, next)) = self.record_at(off) {
            // Offsets fit: chunks are far smaller than 4 GiB.
            f(off as u32, ts, data, len);
            off = next;
        }
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

/// A classic pcap file read in chunks.
struct PcapFile {
    file: File,
    link: i32,
    fmt: RecFormat,
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
        let mut hdr = [0u8; 24];
        let mut got = 0;
        while got < hdr.len() {
            match file.read(&mut hdr[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
        let (big_endian, nanos) = match u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) {
            0xa1b2_c3d4 => (false, false),
            0xa1b2_3c4d => (false, true),
            0xd4c3_b2a1 => (true, false),
            0x4d3c_b2a1 => (true, true),
            _ => return Ok(None),
        };
        let u16_at = |i: usize| {
            let w = [hdr[i], hdr[i + 1]];
            if big_endian {
                u16::from_be_bytes(w)
            } else {
                u16::from_le_bytes(w)
            }
        };
        let u32_at = |i: usize| {
            let w = [hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]];
            if big_endian {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        // Older versions may swap the two lengths; link types with extension bits (FCS
        // length) need libpcap's interpretation.
        let (major, minor, snaplen, lt) = (u16_at(4), u16_at(6), u32_at(16), u32_at(20));
        if (major, minor) != (2, 4) || !native_link(lt) {
            return Ok(None);
        }
        let snapshot = if snaplen == 0 || snaplen > MAX_CAPLEN {
            MAX_CAPLEN
        } else {
            snaplen
        };
        Ok(Some(PcapFile {
            file,
            link: lt as i32,
            fmt: RecFormat::Pcap {
                big_endian,
                nanos,
                snapshot,
            },
            carry: Vec::new(),
            eof: false,
            records: 0,
        }))
    }

    fn caplen(&self, h: &[u8]) -> u32 {
        let w = [h[8], h[9], h[10], h[11]];
        match self.fmt {
            RecFormat::Pcap {
                big_endian: true, ..
            } => u32::from_be_bytes(w),
            _ => u32::from_le_bytes(w),
        }
    }

    /// Whole records at the start of `b`: their length, and the problem if a record header
    /// is damaged.
    fn walk(&mut self, b: &[u8]) -> (usize, Option<String>) {
        let mut pos = 0usize;
        while let Some(h) = b.get(pos..pos + REC_HDR) {
            let caplen = self.caplen(h);
            if caplen > MAX_CAPLEN {
                return (
                    pos,
                    Some(format!(
                        "invalid packet capture length {caplen}, bigger than maximum of {MAX_CAPLEN}"
                    )),
                );
            }
            let end = pos + REC_HDR + caplen as usize;
            if end > b.len() {
                break;
            }
            pos = end;
            self.records += 1;
        }
        (pos, None)
    }

    /// Fills `chunk` with the next whole records by reading.
    fn fill(&mut self, chunk: &mut Chunk) -> Fill {
        if chunk.capacity() < CHUNK_BYTES {
            *chunk = Chunk::new();
        }
        chunk.reset(self.link, self.fmt);
        let buf = &mut chunk.buf;
        let mut len = self.carry.len();
        buf[..len].copy_from_slice(&self.carry);
        self.carry.clear();
        let mut read_error = None;
        while len < buf.len() && !self.eof {
            match self.file.read(&mut buf[len..]) {
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
        let (pos, damaged) = self.walk(&buf[..len]);
        chunk.len = pos;
        if let Some(e) = damaged.or(read_error) {
            return Fill::Stop(e);
        }
        let tail = buf.get(pos..len).unwrap_or_default();
        if !self.eof {
            self.carry.extend_from_slice(tail);
            return Fill::More;
        }
        match tail.len() {
            0 => Fill::End,
            n if n < REC_HDR => Fill::Stop(format!(
                "truncated dump file; tried to read {REC_HDR} header bytes, only got {n}"
            )),
            n => Fill::Stop(format!(
                "truncated dump file; tried to read {} captured bytes, only got {}",
                self.caplen(tail),
                n - REC_HDR
            )),
        }
    }
}

/// Reads one capture file into the analyzer. Returns an error line (naming the file and the
/// record) if the file could not be opened or was cut short; the packets read before the
/// problem have been analysed either way.
pub fn read_file(path: &str, filter: Option<&str>, analyzer: &mut Analyzer) -> Result<u64, String> {
    let shown = if path == "-" { "<stdin>" } else { path };
    if path != "-" {
        match std::fs::metadata(path) {
            Err(e) => return Err(format!("{shown}: cannot open: {e}")),
            Ok(m) if m.is_dir() => {
                return Err(format!("{shown}: is a directory, not a capture file"))
            }
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
    }
    read_libpcap(path, shown, filter, analyzer)
}

fn stopped(shown: &str, records: u64, e: &str) -> String {
    format!(
        "{shown}: stopped after record {records}: {e} (the file is truncated or corrupt; results up to that record are reported)"
    )
}

fn read_native(mut f: PcapFile, shown: &str, analyzer: &mut Analyzer) -> Result<u64, String> {
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

fn read_libpcap(
    path: &str,
    shown: &str,
    filter: Option<&str>,
    analyzer: &mut Analyzer,
) -> Result<u64, String> {
    let mut cap = pcap::Capture::from_file(path).map_err(|e| {
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
        cap.filter(f, true)
            .map_err(|e| format!("invalid filter '{f}': {e}"))?;
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
mod test {
    use super::*;

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
}
