//! Decoded TCP segments, listed per worker: what the thread that decodes a frame hands to
//! the worker that analyses its connection.
//!
//! Every segment of a capture goes through one of these lists, written on one core and read
//! on another, so its size is the cost of sharding: an entry is 56 bytes, half a decoded
//! [`Segment`] (whose two `SocketAddr`s alone take 64). IPv4 ends are kept inline; IPv6
//! pairs go to a side table the entry points into.

use crate::decode::{Flags, Segment};
use crate::time::Ts;
use std::net::{SocketAddr, SocketAddrV4};

/// One decoded segment whose payload is a part of some bytes (a chunk, or a window of a
/// mapped file), found again from an offset.
#[derive(Clone, Copy)]
pub(super) struct SegInfo {
    /// The frame's number (in a mapped file's window: its place in the window).
    pub(super) frame: u64,
    pub(super) ts: Ts,
    ends: Ends,
    seq: u32,
    ack: u32,
    /// Payload: offset from the start of the bytes it is in, and length. A chunk or window
    /// plus one record is far below 4 GiB (a record is at most 256 KiB).
    at: u32,
    len: u32,
    missing: u32,
    window: u16,
    flags: u8,
}

/// Source and destination.
#[derive(Clone, Copy)]
enum Ends {
    V4 {
        src: u32,
        dst: u32,
        sport: u16,
        dport: u16,
    },
    /// Place in [`Segs::v6`].
    V6(u32),
}

/// Per worker, the segments of its connections, in frame order.
#[derive(Default)]
pub(super) struct Segs {
    per: Vec<Vec<SegInfo>>,
    v6: Vec<(SocketAddr, SocketAddr)>,
}

impl Segs {
    /// Lists for `workers` workers, room for `cap` segments each.
    pub(super) fn new(workers: usize, cap: usize) -> Segs {
        Segs {
            per: (0..workers).map(|_| Vec::with_capacity(cap)).collect(),
            v6: Vec::new(),
        }
    }

    pub(super) fn clear(&mut self) {
        for v in &mut self.per {
            v.clear();
        }
        self.v6.clear();
    }

    /// Lists `seg` (frame `frame`, its payload a part of `base`) for the worker that owns
    /// its connection.
    #[inline]
    pub(super) fn push(&mut self, frame: u64, ts: Ts, seg: &Segment, base: &[u8]) {
        let owner = owner(super::shard_hash(&seg.src, &seg.dst), self.per.len());
        let Some(v) = self.per.get_mut(owner) else {
            return;
        };
        let ends = match (seg.src, seg.dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => Ends::V4 {
                src: s.ip().to_bits(),
                dst: d.ip().to_bits(),
                sport: s.port(),
                dport: d.port(),
            },
            pair => {
                let i = self.v6.len() as u32;
                self.v6.push(pair);
                Ends::V6(i)
            }
        };
        v.push(SegInfo {
            frame,
            ts,
            ends,
            seq: seg.seq,
            ack: seg.ack,
            // `base` holds the payload (see the field).
            at: (seg.payload.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize) as u32,
            len: seg.payload.len() as u32,
            missing: seg.missing,
            window: seg.window,
            flags: seg.flags.0,
        });
    }

    /// Worker `id`'s segments.
    pub(super) fn of(&self, id: usize) -> &[SegInfo] {
        self.per.get(id).map_or(&[], |v| &v[..])
    }

    /// The segment `m` again, its payload found in `base`.
    #[inline]
    pub(super) fn segment<'a>(&self, m: &SegInfo, base: &'a [u8]) -> Segment<'a> {
        let (src, dst) = match m.ends {
            Ends::V4 {
                src,
                dst,
                sport,
                dport,
            } => (
                SocketAddr::V4(SocketAddrV4::new(src.into(), sport)),
                SocketAddr::V4(SocketAddrV4::new(dst.into(), dport)),
            ),
            Ends::V6(i) => self.v6.get(i as usize).copied().unwrap_or((
                SocketAddr::V4(SocketAddrV4::new(0.into(), 0)),
                SocketAddr::V4(SocketAddrV4::new(0.into(), 0)),
            )),
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
            missing: m.missing,
        }
    }
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
    fn an_entry_is_half_a_decoded_segment() {
        assert_eq!(std::mem::size_of::<SegInfo>(), 56);
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
    fn ipv6_and_ipv4_segments_come_back_as_they_went_in() {
        let payload = b"xxGET / HTTP/1.1\r\n";
        let v6: SocketAddr = "[2001:db8::1]:40000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let v6b: SocketAddr = "[2001:db8::2]:80"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let v4: SocketAddr = "10.0.0.1:5555".parse().unwrap_or_else(|_| unreachable!());
        let v4b: SocketAddr = "10.0.0.2:8080".parse().unwrap_or_else(|_| unreachable!());
        let mut segs = Segs::new(2, 4);
        for (i, (s, d)) in [(v6, v6b), (v4, v4b)].into_iter().enumerate() {
            let seg = Segment {
                src: s,
                dst: d,
                seq: 7 + i as u32,
                ack: 9,
                flags: Flags(0x18),
                window: 512,
                payload: &payload[2..],
                missing: 3,
            };
            segs.push(i as u64, Ts(5), &seg, payload);
        }
        // Each went to the worker that owns its connection; find them by frame.
        let listed: Vec<SegInfo> = (0..2).flat_map(|w| segs.of(w).to_vec()).collect();
        let by_frame = |f: u64| listed.iter().find(|m| m.frame == f).copied();
        let (Some(a), Some(b)) = (by_frame(0), by_frame(1)) else {
            panic!("a segment was not listed");
        };
        let a = segs.segment(&a, payload);
        let b = segs.segment(&b, payload);
        assert_eq!(
            (a.src, a.dst, a.seq, a.payload),
            (v6, v6b, 7, &payload[2..])
        );
        assert_eq!((b.src, b.dst, b.seq, b.missing), (v4, v4b, 8, 3));
    }
}
