//! Decoded TCP segments, listed per worker: what the thread that decodes a frame hands to
//! the worker that analyses its connection.
//!
//! Every segment of a capture goes through one of these lists, written on one core and read
//! on another, so its size is the cost of sharding: an entry is 44 bytes, not half a decoded
//! [`Segment`] (whose two `SocketAddr`s alone take 64). IPv4 ends are kept inline, frame and
//! time relative to the list's first; IPv6 pairs and times far from the first go to side
//! tables the entry points into.

use crate::decode::{Flags, Segment, Unreachable};
use crate::flow::FlowTable;
use crate::session::Ctx;
use crate::time::Ts;
use std::net::{SocketAddr, SocketAddrV4};

/// One decoded segment whose payload is a part of some bytes (a chunk, or a window of a
/// mapped file), found again from an offset.
#[derive(Clone, Copy)]
pub(super) struct SegInfo {
    /// The frame's number after the list's first frame (see [`Segs::frame`]).
    frame: u32,
    /// Microseconds after the list's first time; with [`FAR_TS`], a place in [`Segs::far`]
    /// (see [`Segs::ts`]).
    dt: u32,
    /// IPv4 source and destination; with [`V6`], `src` is a place in [`Segs::v6`]; with
    /// [`UNREACHABLE`], in [`Segs::icmp`].
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    /// Payload: offset from the start of the bytes it is in, and length. A chunk or window
    /// plus one record is far below 4 GiB (a record is at most 256 KiB).
    at: u32,
    len: u32,
    /// Bytes missing (at most an IP packet's 65,535: 24 bits) and, in the top 8 bits, the
    /// TTL.
    missing_ttl: u32,
    window: u16,
    flags: u8,
    /// [`V6`], [`FAR_TS`] and [`UNREACHABLE`] bits.
    kind: u8,
}

/// The most [`SegInfo::missing_ttl`] counts of missing bytes.
const MISSING_MAX: u32 = 0x00ff_ffff;

/// The ends are IPv6 (or mixed): in [`Segs::v6`].
const V6: u8 = 1;
/// The time is not within 71 minutes after the list's first (a long pause in a live
/// capture, a clock stepped back): in [`Segs::far`].
const FAR_TS: u8 = 2;
/// Not a segment but an ICMP error about one (rare): in [`Segs::icmp`].
const UNREACHABLE: u8 = 4;

/// Per worker, the segments of its connections, in frame order.
#[derive(Default)]
pub(super) struct Segs {
    per: Vec<Vec<SegInfo>>,
    v6: Vec<(SocketAddr, SocketAddr)>,
    far: Vec<Ts>,
    icmp: Vec<Unreachable>,
    /// The first listed segment's frame and time, which the entries count from.
    frame0: u64,
    ts0: Option<Ts>,
    /// The CPU has PREFETCHW (see [`prefetch_write`]).
    write_hint: bool,
}

impl Segs {
    /// Lists for `workers` workers, room for `cap` segments each.
    pub(super) fn new(workers: usize, cap: usize) -> Segs {
        Segs {
            per: (0..workers).map(|_| Vec::with_capacity(cap)).collect(),
            write_hint: has_prefetchw(),
            ..Segs::default()
        }
    }

    pub(super) fn clear(&mut self) {
        for v in &mut self.per {
            v.clear();
        }
        self.v6.clear();
        self.far.clear();
        self.icmp.clear();
        self.ts0 = None;
    }

    /// Frame and time as an entry counts them (see [`SegInfo::frame`], [`SegInfo::dt`]),
    /// and the kind bits for the time.
    #[inline]
    fn relative(&mut self, frame: u64, ts: Ts) -> (u32, u32, u8) {
        let ts0 = match self.ts0 {
            Some(t) => t,
            None => {
                self.ts0 = Some(ts);
                self.frame0 = frame;
                ts
            }
        };
        let frame = frame.wrapping_sub(self.frame0) as u32;
        match u32::try_from(ts.0.wrapping_sub(ts0.0)) {
            Ok(d) => (frame, d, 0),
            Err(_) => {
                self.far.push(ts);
                (frame, (self.far.len() - 1) as u32, FAR_TS)
            }
        }
    }

    /// Lists `seg` (frame `frame`, its payload a part of `base`) for the worker that owns
    /// its connection. Frames come in order, and a list holds those of one chunk or window:
    /// far fewer than 2^32 after its first.
    #[inline]
    pub(super) fn push(&mut self, frame: u64, ts: Ts, seg: &Segment, base: &[u8]) {
        let owner = owner(super::shard_hash(&seg.src, &seg.dst), self.per.len());
        let (frame, dt, mut kind) = self.relative(frame, ts);
        let (src, dst, sport, dport) = match (seg.src, seg.dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                (s.ip().to_bits(), d.ip().to_bits(), s.port(), d.port())
            }
            pair => {
                kind |= V6;
                self.v6.push(pair);
                ((self.v6.len() - 1) as u32, 0, 0, 0)
            }
        };
        let Some(v) = self.per.get_mut(owner) else {
            return;
        };
        if self.write_hint {
            prefetch_write(v, AHEAD);
        }
        v.push(SegInfo {
            frame,
            dt,
            src,
            dst,
            sport,
            dport,
            seq: seg.seq,
            ack: seg.ack,
            // `base` holds the payload (see the field).
            at: (seg.payload.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize) as u32,
            len: seg.payload.len() as u32,
            missing_ttl: seg.missing.min(MISSING_MAX) | u32::from(seg.ttl) << 24,
            window: seg.window,
            flags: seg.flags.0,
            kind,
        });
    }

    /// Lists an ICMP error about a segment for the worker that owns the segment's
    /// connection.
    #[cold]
    pub(super) fn push_unreachable(&mut self, frame: u64, ts: Ts, u: &Unreachable) {
        let owner = owner(super::shard_hash(&u.src, &u.dst), self.per.len());
        let (frame, dt, kind) = self.relative(frame, ts);
        self.icmp.push(*u);
        let at = (self.icmp.len() - 1) as u32;
        if let Some(v) = self.per.get_mut(owner) {
            v.push(SegInfo {
                frame,
                dt,
                src: at,
                dst: 0,
                sport: 0,
                dport: 0,
                seq: 0,
                ack: 0,
                at: 0,
                len: 0,
                missing_ttl: 0,
                window: 0,
                flags: 0,
                kind: kind | UNREACHABLE,
            });
        }
    }

    /// The frame number `push` was given for `m`.
    #[inline]
    pub(super) fn frame(&self, m: &SegInfo) -> u64 {
        self.frame0.wrapping_add(u64::from(m.frame))
    }

    /// The packet time `push` was given for `m`.
    #[inline]
    pub(super) fn ts(&self, m: &SegInfo) -> Ts {
        if m.kind & FAR_TS == 0 {
            Ts(self.ts0.map_or(0, |t| t.0).wrapping_add(i64::from(m.dt)))
        } else {
            self.far.get(m.dt as usize).copied().unwrap_or(Ts(0))
        }
    }

    /// Worker `id`'s segments.
    pub(super) fn of(&self, id: usize) -> &[SegInfo] {
        self.per.get(id).map_or(&[], |v| &v[..])
    }

    /// Hands what `m` lists to the connection table: a segment (its payload found in
    /// `base`) or an ICMP error.
    #[inline]
    pub(super) fn analyse(&self, m: &SegInfo, base: &[u8], flow: &mut FlowTable, ctx: &mut Ctx) {
        if m.kind & UNREACHABLE == 0 {
            flow.segment(&self.segment(m, base), ctx);
        } else if let Some(u) = self.icmp.get(m.src as usize) {
            flow.unreachable(u, ctx);
        }
    }

    /// The ICMP error `m` lists, if it lists one.
    #[cfg(test)]
    fn unreachable_of(&self, m: &SegInfo) -> Option<Unreachable> {
        (m.kind & UNREACHABLE != 0)
            .then(|| self.icmp.get(m.src as usize).copied())
            .flatten()
    }

    /// The segment `m` again, its payload found in `base`.
    #[inline]
    fn segment<'a>(&self, m: &SegInfo, base: &'a [u8]) -> Segment<'a> {
        let (src, dst) = if m.kind & V6 == 0 {
            (
                SocketAddr::V4(SocketAddrV4::new(m.src.into(), m.sport)),
                SocketAddr::V4(SocketAddrV4::new(m.dst.into(), m.dport)),
            )
        } else {
            self.v6.get(m.src as usize).copied().unwrap_or((
                SocketAddr::V4(SocketAddrV4::new(0.into(), 0)),
                SocketAddr::V4(SocketAddrV4::new(0.into(), 0)),
            ))
        };
        let at = m.at as usize;
        Segment {
            src,
            dst,
            seq: m.seq,
            ack: m.ack,
            flags: Flags(m.flags),
            window: m.window,
            payload: base.get(at..at + m.len as usize).unwrap_or_default(),
            missing: m.missing_ttl & MISSING_MAX,
            ttl: (m.missing_ttl >> 24) as u8,
        }
    }
}

/// Entries ahead of the one being written whose line [`Segs::push`] asks for.
const AHEAD: usize = 4;

/// Asks for the line of `v`'s entry `ahead` places past its end, for writing, if the vector
/// has room there.
///
/// Why: the lists' buffers are reused window after window, and their lines were last read
/// by the worker that analysed them, on the other core. A plain store to such a line waits
/// for the other core to give it up, and the index walk stalls behind its stores: the
/// entries' first stores were the most sampled instructions of two threads' walk. Asking a
/// few entries ahead overlaps that hand-over with the walk (two threads: −2 % wall time,
/// −10 ms of CPU per GB, interleaved runs; see benches/PERFORMANCE.md).
///
/// PREFETCHW through `asm!`: `_mm_prefetch` with `_MM_HINT_ET0` compiles to nothing
/// unless the whole crate is built for CPUs that have it; callers check
/// [`has_prefetchw`].
#[inline(always)]
fn prefetch_write<T>(v: &Vec<T>, ahead: usize) {
    #[cfg(target_arch = "x86_64")]
    if v.len() + ahead < v.capacity() {
        // SAFETY: an address inside the vector's allocation; the CPU has the instruction
        // (`has_prefetchw`); a prefetch is a hint that changes nothing architecturally and
        // cannot fault.
        unsafe {
            std::arch::asm!(
                "prefetchw [{0}]",
                in(reg) v.as_ptr().add(v.len() + ahead),
                options(nostack, preserves_flags, readonly)
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, ahead);
}

/// Whether the CPU has PREFETCHW (CPUID 8000_0001h, ECX bit 8), asked once: CPUID is a
/// trip to the hypervisor in a VM.
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            // Extended leaves are read only if the CPU reports them.
            __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The worker (of `n`) that owns a connection with shard hash `hash`: the hash scaled to
/// `0..n` by its high bits, a multiplication where `%` would be a division per frame.
#[inline]
fn owner(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_44_bytes() {
        assert_eq!(std::mem::size_of::<SegInfo>(), 44);
    }

    #[test]
    fn owners_cover_every_worker_and_only_them() {
        let mut seen = [0u32; 3];
        for i in 0..3000u64 {
            let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            seen[owner(h, 3)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 900), "{seen:?}");
        assert_eq!(owner(u64::MAX, 1), 0);
    }

    #[test]
    fn segments_come_back_as_they_went_in() {
        let payload = b"xxGET / HTTP/1.1\r\n";
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap_or_else(|_| unreachable!());
        let (v6, v6b) = (addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:80"));
        let (v4, v4b) = (addr("10.0.0.1:5555"), addr("10.0.0.2:8080"));
        // Frames far into a capture; times: the first, one later, one two hours on (past
        // what an entry counts), one gone back before the first.
        let first = 5_000_000_000u64;
        let times = [
            Ts(1_700_000_000_000_000),
            Ts(1_700_000_000_250_000),
            Ts(1_700_007_200_000_000),
            Ts(1_699_999_999_000_000),
        ];
        let ends = [(v6, v6b), (v4, v4b), (v4b, v4), (v6b, v6)];
        let mut segs = Segs::new(2, 4);
        for (i, ((s, d), ts)) in ends.into_iter().zip(times).enumerate() {
            let seg = Segment {
                src: s,
                dst: d,
                seq: 7 + i as u32,
                ack: 9,
                flags: Flags(0x18),
                window: 512,
                payload: &payload[2..],
                missing: 3,
                ttl: 60 + i as u8,
            };
            segs.push(first + i as u64, ts, &seg, payload);
        }
        // And an ICMP error about the first connection's SYN.
        let icmp = Unreachable {
            from: "2001:db8::fe".parse().unwrap_or_else(|_| unreachable!()),
            src: v6,
            dst: v6b,
            seq: 7,
            code: 1,
            v6: true,
        };
        segs.push_unreachable(first + 4, times[1], &icmp);
        // Each went to the worker that owns its connection (both directions to the same);
        // put them back in frame order.
        let mut listed: Vec<SegInfo> = (0..2).flat_map(|w| segs.of(w).to_vec()).collect();
        listed.sort_by_key(|m| segs.frame(m));
        let back: Vec<_> = listed
            .iter()
            .map(|m| match segs.unreachable_of(m) {
                None => {
                    let s = segs.segment(m, payload);
                    let more = (s.seq, s.missing, s.ttl, s.payload);
                    (segs.frame(m), segs.ts(m), s.src, s.dst, more)
                }
                Some(u) => (
                    segs.frame(m),
                    segs.ts(m),
                    u.src,
                    u.dst,
                    (u.seq, 0, 0, &[][..]),
                ),
            })
            .collect();
        let mut sent: Vec<_> = ends
            .iter()
            .zip(times)
            .enumerate()
            .map(|(i, (&(s, d), ts))| {
                let more = (7 + i as u32, 3, 60 + i as u8, &payload[2..]);
                (first + i as u64, ts, s, d, more)
            })
            .collect();
        sent.push((first + 4, times[1], v6, v6b, (7, 0, 0, &[][..])));
        assert_eq!(back, sent);
    }
}
