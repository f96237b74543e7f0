//! One direction of a TCP connection, turned back into the byte stream the application wrote.
//!
//! Sequence numbers wrap at 2^32; a stream does not. Each direction maps sequence numbers to
//! 64-bit *stream offsets* (offset 0 = the first byte after the SYN, or the first byte seen when
//! the connection was picked up mid-stream), relative to the next expected offset, so wrapping
//! is never a special case.
//!
//! Delivery is in order and exactly once: the sink sees `data`, `gap` and `fin` calls whose
//! lengths add up to the stream.
//!
//! ```text
//!   delivered          next          out-of-order buffer (bounded)        fin_at
//!  ───────────────────────┼───────[hole]────[seg]──[seg]──────[hole]──[seg]──┤
//! ```
//!
//! # Policies
//! - **Retransmissions and overlaps: the first copy wins.** Bytes already delivered are never
//!   redelivered; a later segment overlapping buffered bytes is trimmed to the part not yet
//!   held. When the overlapping bytes differ (possible with buffered bytes only) the conflict
//!   is counted. This matches what the receiving host's stack did with bytes it had already
//!   queued (Linux keeps the first copy) and keeps the parser's view consistent.
//! - **Capture gaps.** Bytes the peer acknowledged but the capture never carried, bytes cut by
//!   the snaplen, and holes left when the connection ends are delivered as `gap(len)`. They are
//!   a fact about the capture, not the connection; the HTTP layer never calls them truncation.
//! - **Bounded buffer.** At most `max_ooo_bytes` and `max_ooo_segments` are held per direction.
//!   When a new segment would exceed them, the hole before the earliest buffered segment is
//!   declared a gap so the buffer can drain (the connection stays analysable and the loss is
//!   reported), rather than growing.
//! - **FIN occupies one sequence number** and ends the stream only when every byte before it
//!   has been delivered; a FIN beyond a hole waits for the hole.

use std::collections::BTreeMap;

/// Receives one direction's stream, in order.
pub trait StreamSink {
    fn data(&mut self, bytes: &[u8]);
    /// `len` bytes of the stream are missing from the capture.
    fn gap(&mut self, len: u64);
    /// The sender closed its direction (every byte before the FIN has been delivered).
    fn fin(&mut self);
}

/// A piece of stream held out of order.
#[derive(Debug)]
enum Piece {
    Data(Vec<u8>),
    /// Bytes known to exist but not captured (snaplen).
    Missing(u64),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Missing(n) => *n,
        }
    }
}

/// What a segment did, for counters and `limit_reached`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentEffect {
    /// Bytes that had been seen before (retransmission or overlap).
    pub retransmitted: u64,
    /// The segment arrived ahead of a hole.
    pub out_of_order: bool,
    /// The out-of-order buffer overflowed and a hole was declared a gap.
    pub overflowed: bool,
}

/// What one held piece costs beyond its bytes: its map entry and its buffer's allocation.
pub const PIECE_OVERHEAD: usize = 96;

#[derive(Debug)]
pub struct Reassembler {
    /// Sequence number of stream offset 0.
    base: u32,
    /// Next stream offset to deliver.
    next: u64,
    fin_at: Option<u64>,
    finished: bool,
    /// Non-overlapping pieces keyed by start offset, all beyond `next`.
    ooo: BTreeMap<u64, Piece>,
    ooo_bytes: usize,
    max_ooo_bytes: usize,
    max_ooo_segments: usize,
    /// Counters.
    pub delivered: u64,
    pub gap_bytes: u64,
    pub retransmitted_bytes: u64,
    pub overlap_conflicts: u64,
    pub out_of_order_segments: u64,
}

impl Reassembler {
    /// A stream whose offset 0 is at sequence number `base` (the SYN's sequence number + 1, or
    /// the first sequence number seen mid-stream).
    pub fn new(base: u32, max_ooo_bytes: usize, max_ooo_segments: usize) -> Reassembler {
        Reassembler {
            base,
            next: 0,
            fin_at: None,
            finished: false,
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            max_ooo_bytes,
            max_ooo_segments,
            delivered: 0,
            gap_bytes: 0,
            retransmitted_bytes: 0,
            overlap_conflicts: 0,
            out_of_order_segments: 0,
        }
    }

    /// Stream offset of a sequence number, taken relative to the next expected byte so that
    /// wraparound is handled (valid within ±2 GiB of it).
    pub fn offset_of(&self, seq: u32) -> i64 {
        let expected = self.base.wrapping_add(self.next as u32);
        self.next as i64 + i64::from(seq.wrapping_sub(expected) as i32)
    }

    /// Next stream offset to be delivered.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Whether the FIN has been delivered.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether bytes are waiting beyond a hole.
    pub fn has_hole(&self) -> bool {
        !self.ooo.is_empty() || self.fin_at.is_some_and(|f| f > self.next)
    }

    /// Bytes held out of order.
    pub fn buffered(&self) -> usize {
        self.ooo_bytes
    }

    /// Memory held out of order: the bytes plus [`PIECE_OVERHEAD`] per piece. What the
    /// total budget (`--max-ooo-total`) counts, so that a flood of one-byte segments cannot
    /// hold a hundred times more memory than its bytes.
    pub fn footprint(&self) -> usize {
        self.ooo_bytes + self.ooo.len() * PIECE_OVERHEAD
    }

    /// Feeds one segment: `payload` at `seq`, followed by `missing` bytes cut by the snaplen,
    /// followed by a FIN if `fin`.
    pub fn segment<S: StreamSink>(
        &mut self,
        seq: u32,
        payload: &[u8],
        missing: u32,
        fin: bool,
        sink: &mut S,
    ) -> SegmentEffect {
        let mut effect = SegmentEffect::default();
        let start = self.offset_of(seq);
        let total = payload.len() as u64 + u64::from(missing);
        if fin && !self.finished && self.fin_at.is_none() {
            let at = start.saturating_add(total as i64);
            // A FIN before bytes already delivered contradicts them (the first copy wins); one
            // after them ends the stream there, and nothing held beyond it is kept.
            if at >= self.next as i64 {
                self.fin_at = Some(at as u64);
                self.drop_beyond(at as u64);
            }
        }
        // Clip anything before offset 0 (data from before the stream as we know it).
        let (start, payload, missing) = if start < 0 {
            let before = start.unsigned_abs();
            if before >= total {
                effect.retransmitted = total;
                self.retransmitted_bytes += total;
                self.try_finish(sink);
                return effect;
            }
            let cut = before.min(payload.len() as u64) as usize;
            let rest_missing = u64::from(missing) - (before - cut as u64).min(u64::from(missing));
            (0u64, &payload[cut..], rest_missing)
        } else {
            (start as u64, payload, u64::from(missing))
        };
        // Bytes past the FIN are not part of the stream (RFC 9293 §3.10.7.4: segment text
        // after a FIN is not processed).
        let (payload, missing) = match self.fin_at {
            Some(f) if start.saturating_add(payload.len() as u64 + missing) > f => {
                let room = f.saturating_sub(start);
                let keep = room.min(payload.len() as u64);
                (&payload[..keep as usize], missing.min(room - keep))
            }
            _ => (payload, missing),
        };
        let total = payload.len() as u64 + missing;

        if total > 0 {
            if start <= self.next {
                let skip = self.next - start;
                if skip >= total {
                    effect.retransmitted = total;
                } else {
                    effect.retransmitted = skip;
                    let held_from = self.ooo.first_key_value().map(|(&s, _)| s);
                    match held_from {
                        // The segment runs into bytes already held out of order: deliver up to
                        // them, and let the rest fill only the holes (the first copy wins).
                        Some(fs) if start + total > fs => {
                            let cut = fs - start;
                            let plen = payload.len() as u64;
                            let (head, rest) = payload.split_at(cut.min(plen) as usize);
                            let head_missing = cut.saturating_sub(plen).min(missing);
                            let rest_missing = missing - head_missing;
                            self.deliver_tail(head, head_missing, skip, sink);
                            effect.retransmitted += self.insert(fs, rest, rest_missing);
                            self.drain(sink);
                        }
                        _ => {
                            self.deliver_tail(payload, missing, skip, sink);
                            self.drain(sink);
                        }
                    }
                }
            } else {
                effect.out_of_order = true;
                self.out_of_order_segments += 1;
                effect.retransmitted = self.insert(start, payload, missing);
                if self.ooo_bytes > self.max_ooo_bytes || self.ooo.len() > self.max_ooo_segments {
                    effect.overflowed = true;
                    while self.ooo_bytes > self.max_ooo_bytes
                        || self.ooo.len() > self.max_ooo_segments
                    {
                        if !self.skip_to_first_piece(sink) {
                            break;
                        }
                    }
                }
            }
            self.retransmitted_bytes += effect.retransmitted;
        }
        self.try_finish(sink);
        effect
    }

    /// The peer acknowledged everything before `ack`. Acknowledged bytes the capture never
    /// carried are a capture gap: deliver it so the parser does not wait for them forever.
    pub fn acked<S: StreamSink>(&mut self, ack: u32, sink: &mut S) {
        let mut upto = self.offset_of(ack);
        if let Some(f) = self.fin_at {
            upto = upto.min(f as i64);
        }
        if upto <= self.next as i64 {
            return;
        }
        let upto = upto as u64;
        while self.next < upto {
            let hole_end = self
                .ooo
                .first_key_value()
                .map_or(upto, |(&s, _)| s.min(upto));
            if hole_end > self.next {
                let len = hole_end - self.next;
                self.emit_gap(len, sink);
            }
            self.drain(sink);
            if self.ooo.is_empty() && self.next >= upto {
                break;
            }
        }
        self.try_finish(sink);
    }

    /// The connection is over (RST, idle, end of capture): whatever is buffered is delivered
    /// with the holes before it as gaps, up to the FIN if one was seen.
    pub fn flush<S: StreamSink>(&mut self, sink: &mut S) {
        while self.skip_to_first_piece(sink) {}
        if let Some(f) = self.fin_at {
            if f > self.next {
                let len = f - self.next;
                self.emit_gap(len, sink);
            }
        }
        self.try_finish(sink);
    }

    /// Gives up the out-of-order buffer: every hole before buffered data becomes a gap and
    /// the data is delivered (a FIN beyond the buffer still waits).
    pub fn flush_holes<S: StreamSink>(&mut self, sink: &mut S) {
        while self.skip_to_first_piece(sink) {}
        self.try_finish(sink);
    }

    /// Forgets buffered bytes at or past stream offset `end` (where the FIN is).
    fn drop_beyond(&mut self, end: u64) {
        for (_, piece) in self.ooo.split_off(&end) {
            if let Piece::Data(d) = piece {
                self.ooo_bytes -= d.len();
            }
        }
        if let Some(mut last) = self.ooo.last_entry() {
            // Starts before `end`, so at least one byte is kept.
            let keep = end - *last.key();
            match last.get_mut() {
                Piece::Data(d) if d.len() as u64 > keep => {
                    self.ooo_bytes -= d.len() - keep as usize;
                    d.truncate(keep as usize);
                }
                Piece::Missing(n) if *n > keep => *n = keep,
                _ => {}
            }
        }
    }

    fn emit_gap<S: StreamSink>(&mut self, len: u64, sink: &mut S) {
        self.next += len;
        self.gap_bytes += len;
        sink.gap(len);
    }

    fn deliver_tail<S: StreamSink>(
        &mut self,
        payload: &[u8],
        missing: u64,
        skip: u64,
        sink: &mut S,
    ) {
        let plen = payload.len() as u64;
        if skip < plen {
            let bytes = &payload[skip as usize..];
            self.next += bytes.len() as u64;
            self.delivered += bytes.len() as u64;
            sink.data(bytes);
        }
        let missing_left = missing - skip.saturating_sub(plen).min(missing);
        if missing_left > 0 {
            self.emit_gap(missing_left, sink);
        }
    }

    /// Declares the hole before the first buffered piece a gap and drains. Returns false if
    /// nothing was buffered.
    fn skip_to_first_piece<S: StreamSink>(&mut self, sink: &mut S) -> bool {
        let Some((&start, _)) = self.ooo.first_key_value() else {
            return false;
        };
        if start > self.next {
            let len = start - self.next;
            self.emit_gap(len, sink);
        }
        self.drain(sink);
        true
    }

    /// Delivers buffered pieces that have become contiguous.
    fn drain<S: StreamSink>(&mut self, sink: &mut S) {
        while let Some(entry) = self.ooo.first_entry() {
            let start = *entry.key();
            if start > self.next {
                break;
            }
            let piece = entry.remove();
            let len = piece.len();
            if let Piece::Data(d) = &piece {
                self.ooo_bytes -= d.len();
            }
            let skip = self.next - start;
            if skip >= len {
                continue;
            }
            match piece {
                Piece::Data(d) => self.deliver_tail(&d, 0, skip, sink),
                Piece::Missing(n) => self.emit_gap(n - skip, sink),
            }
        }
    }

    /// Buffers `payload` (+`missing`) at `start` > next, trimmed against what is already held.
    /// Returns how many bytes were already held (overlap).
    fn insert(&mut self, start: u64, payload: &[u8], missing: u64) -> u64 {
        let plen = payload.len() as u64;
        let end = start + plen + missing;
        let mut overlap = 0u64;
        let mut pos = start;
        // Walk the existing pieces that intersect [start, end) and fill only the holes.
        let existing: Vec<(u64, u64)> = self
            .ooo
            .range(..end)
            .rev()
            .take_while(|(&s, p)| s + p.len() > start)
            .map(|(&s, p)| (s, p.len()))
            .collect();
        let mut spans = existing;
        spans.sort_unstable();
        for (s, len) in spans {
            let e = s + len;
            if s > pos {
                self.put(pos, s.min(end), start, payload);
            }
            let ov_start = pos.max(s);
            let ov_end = end.min(e);
            if ov_end > ov_start {
                overlap += ov_end - ov_start;
                self.count_conflict(s, ov_start, ov_end, start, payload);
            }
            pos = pos.max(e);
            if pos >= end {
                break;
            }
        }
        if pos < end {
            self.put(pos, end, start, payload);
        }
        overlap
    }

    /// Stores the part [from, to) of a segment that starts at `seg_start`.
    fn put(&mut self, from: u64, to: u64, seg_start: u64, payload: &[u8]) {
        let plen = payload.len() as u64;
        let data_end = (seg_start + plen).min(to);
        if from < data_end {
            let a = (from - seg_start) as usize;
            let b = (data_end - seg_start) as usize;
            self.ooo_bytes += b - a;
            self.ooo.insert(from, Piece::Data(payload[a..b].to_vec()));
        }
        let miss_from = from.max(seg_start + plen);
        if miss_from < to {
            self.ooo.insert(miss_from, Piece::Missing(to - miss_from));
        }
    }

    fn count_conflict(
        &mut self,
        held_start: u64,
        from: u64,
        to: u64,
        seg_start: u64,
        payload: &[u8],
    ) {
        let Some(Piece::Data(held)) = self.ooo.get(&held_start) else {
            return;
        };
        let plen = payload.len() as u64;
        let to = to.min(seg_start + plen);
        if from >= to {
            return;
        }
        let new = &payload[(from - seg_start) as usize..(to - seg_start) as usize];
        let old = &held[(from - held_start) as usize..(to - held_start) as usize];
        if new != old {
            self.overlap_conflicts += 1;
        }
    }

    fn try_finish<S: StreamSink>(&mut self, sink: &mut S) {
        if !self.finished && self.fin_at == Some(self.next) {
            self.finished = true;
            sink.fin();
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// Records what the sink saw, with gaps as `?` runs so tests can compare one string.
    #[derive(Default)]
    struct Tape {
        out: Vec<u8>,
        gaps: Vec<u64>,
        fin: bool,
    }

    impl StreamSink for Tape {
        fn data(&mut self, bytes: &[u8]) {
            assert!(!self.fin, "data after fin");
            self.out.extend_from_slice(bytes);
        }
        fn gap(&mut self, len: u64) {
            self.gaps.push(len);
            self.out.extend(std::iter::repeat_n(b'?', len as usize));
        }
        fn fin(&mut self) {
            assert!(!self.fin, "fin twice");
            self.fin = true;
        }
    }

    fn r(base: u32) -> Reassembler {
        Reassembler::new(base, 1 << 20, 64)
    }

    #[test]
    fn in_order_segments_are_delivered_as_is() {
        let (mut ra, mut t) = (r(1000), Tape::default());
        ra.segment(1000, b"hello ", 0, false, &mut t);
        ra.segment(1006, b"world", 0, true, &mut t);
        assert_eq!(t.out, b"hello world");
        assert!(t.fin);
    }

    #[test]
    fn out_of_order_segments_wait_for_the_hole() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(6, b"world", 0, false, &mut t);
        assert_eq!(t.out, b"");
        ra.segment(0, b"hello ", 0, false, &mut t);
        assert_eq!(t.out, b"hello world");
        assert_eq!(ra.out_of_order_segments, 1);
    }

    #[test]
    fn retransmission_with_different_bytes_keeps_the_first_copy() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(0, b"abcdef", 0, false, &mut t);
        let e = ra.segment(0, b"XXXXXXgh", 0, false, &mut t);
        assert_eq!(t.out, b"abcdefgh");
        assert_eq!(e.retransmitted, 6);
    }

    #[test]
    fn overlapping_out_of_order_segments_keep_the_first_copy() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(4, b"efgh", 0, false, &mut t);
        ra.segment(2, b"CDEFGHij", 0, false, &mut t);
        assert_eq!(ra.overlap_conflicts, 1);
        ra.segment(0, b"ab", 0, false, &mut t);
        assert_eq!(t.out, b"abCDefghij");
    }

    #[test]
    fn sequence_numbers_wrap_without_a_seam() {
        let base = u32::MAX - 3;
        let (mut ra, mut t) = (r(base), Tape::default());
        ra.segment(base, b"0123", 0, false, &mut t);
        ra.segment(base.wrapping_add(8), b"89", 0, true, &mut t);
        ra.segment(0, b"4567", 0, false, &mut t);
        assert_eq!(t.out, b"0123456789");
        assert!(t.fin);
        assert_eq!(ra.next_offset(), 10);
    }

    #[test]
    fn fin_with_data_ends_the_stream_after_the_data() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(0, b"bye", 0, true, &mut t);
        assert_eq!(t.out, b"bye");
        assert!(t.fin);
    }

    #[test]
    fn fin_beyond_a_hole_does_not_end_the_stream() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(0, b"ab", 0, false, &mut t);
        ra.segment(4, b"ef", 0, true, &mut t);
        assert!(!t.fin);
        ra.segment(2, b"cd", 0, false, &mut t);
        assert_eq!(t.out, b"abcdef");
        assert!(t.fin);
    }

    #[test]
    fn acked_but_unseen_bytes_become_a_gap() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(0, b"ab", 0, false, &mut t);
        ra.segment(6, b"gh", 0, false, &mut t);
        ra.acked(8, &mut t);
        assert_eq!(t.out, b"ab????gh");
        assert_eq!(t.gaps, vec![4]);
        assert_eq!(ra.gap_bytes, 4);
    }

    #[test]
    fn ack_of_the_fin_is_not_a_gap() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(0, b"ab", 0, true, &mut t);
        ra.acked(3, &mut t);
        assert!(t.gaps.is_empty());
        assert!(t.fin);
    }

    #[test]
    fn snaplen_cut_bytes_are_a_gap_in_place() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(0, b"ab", 3, false, &mut t);
        ra.segment(5, b"fg", 0, false, &mut t);
        assert_eq!(t.out, b"ab???fg");
        // The same, out of order.
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(5, b"fg", 0, false, &mut t);
        ra.segment(0, b"ab", 3, false, &mut t);
        assert_eq!(t.out, b"ab???fg");
    }

    #[test]
    fn buffer_overflow_declares_the_hole_a_gap() {
        let mut ra = Reassembler::new(0, 4, 64);
        let mut t = Tape::default();
        ra.segment(10, b"kl", 0, false, &mut t);
        let e = ra.segment(12, b"mnop", 0, false, &mut t);
        assert!(e.overflowed);
        assert_eq!(t.out, b"??????????klmnop");
        assert!(ra.buffered() <= 4);
    }

    #[test]
    fn flush_delivers_what_is_buffered_and_gaps_up_to_the_fin() {
        let (mut ra, mut t) = (r(0), Tape::default());
        ra.segment(0, b"a", 0, false, &mut t);
        ra.segment(3, b"d", 0, false, &mut t);
        ra.segment(6, b"", 0, true, &mut t);
        ra.flush(&mut t);
        assert_eq!(t.out, b"a??d??");
        assert!(t.fin);
    }

    #[test]
    fn data_before_the_stream_start_is_dropped() {
        let (mut ra, mut t) = (r(100), Tape::default());
        ra.segment(96, b"xxxxab", 0, false, &mut t);
        assert_eq!(t.out, b"ab");
    }
}
