//! The connection table: finds each segment's connection by 4-tuple, works out who is the
//! client (the proxy) and who is the server (the backend), runs TCP-level checks (handshake,
//! resets, zero windows, capture gaps) and feeds both reassembled directions to the
//! connection's HTTP [`Session`].
//!
//! State is bounded: at most `max_connections` connections are tracked; idle ones are expired
//! by *packet* time (so offline and live analysis agree), and when the table is full the one
//! closest to its idle deadline is evicted and reported. A closed connection leaves a small
//! tombstone for a while so that stray packets after a RST do not start phantom connections;
//! a new SYN on the same 4-tuple starts a new connection.

use crate::decode::{Segment, Unreachable};
use crate::findings::{Kind, Severity};
use crate::limits::Limits;
use crate::reassembly::{Reassembler, StreamSink};
use crate::record::{self, Close, ConnId, Record, Side};
use crate::session::{evidence, CloseKind, Ctx, Emitter, ExRef, Session};
use crate::time::Ts;
use rustc_hash::FxHashMap;
use serde_json::json;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

/// How long a closed connection's 4-tuple is remembered (packet time).
const LINGER_US: u64 = 30_000_000;

/// How long a connection finished for idleness is remembered as [`Dormant`] (packet time):
/// Envoy's default upstream idle timeout, the longest of the common pools (Google's load
/// balancers keep backend connections 600 s, AWS's NLB 350 s).
const DORMANT_US: u64 = 3_600_000_000;

/// A keep-alive connection that gatescope finished for idleness (`--idle-timeout`), kept
/// small in case the proxy reuses it: pools keep idle connections for minutes, and the
/// request that finally reuses one is where a keep-alive race happens. Without this, the
/// reuse looked like a connection picked up mid-stream: exchange 1, no idle time, so
/// neither the race's evidence nor the backend's idle timer could be read from it.
#[derive(Clone, Copy, Debug)]
struct Dormant {
    /// The finished connection's record id, its server, and its last packet.
    conn: ConnId,
    server: SocketAddr,
    last: Ts,
    /// Its exchanges, when its last response ended, and whether it was between exchanges
    /// (see [`Session::dormant`]).
    exchanges: u32,
    last_response_end: Option<Ts>,
    idle: bool,
}

/// Whether an entry `(at, k)` of the order of [`Dormant`] connections is the one remembered
/// for `k` (not one taken up again, or replaced, since).
fn current(dormant: &FxHashMap<Key, Dormant>, k: &Key, at: Ts) -> bool {
    dormant.get(k).is_some_and(|o| o.last == at)
}

/// A SYN that has had no answer for this long after its last retransmission is unanswered.
const SYN_WAIT_US: u64 = 5_000_000;
/// A SYN is reported unanswered at capture end, or when evicted, only if it waited at least
/// this long (or was retried): a shorter wait is no evidence of a timeout.
const SYN_MIN_WAIT_US: u64 = 1_000_000;

/// A backend given with `--backend`: which side is the server when the handshake is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl Backend {
    pub fn parse(s: &str) -> Result<Backend, String> {
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Backend { ip: None, port });
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Backend {
                ip: Some(sa.ip()),
                port: sa.port(),
            });
        }
        Err(format!(
            "'{s}' is not a backend; use PORT, IPv4:PORT or [IPv6]:PORT (e.g. 8080, 10.0.0.2:8080)"
        ))
    }

    fn matches(&self, a: &SocketAddr) -> bool {
        a.port() == self.port && self.ip.is_none_or(|ip| ip == a.ip())
    }
}

/// The 4-tuple, in canonical (sorted) order so both directions find the same entry.
///
/// Built, hashed and compared once per segment, so each end is packed into integers: an
/// IPv4 end into one `u64`. (A key of two `SocketAddr`s was 64 bytes to copy, hash and
/// compare, and its wide loads of just-written addresses stalled.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// Each end: address in the high 32 bits, port in the low 16.
    V4 { lo: u64, hi: u64 },
    /// Both ends IPv6 (or one of each, which no TCP connection has, but a damaged capture
    /// may show): address bits (high, low half), port. Halves, not a `u128`, whose
    /// alignment would make every key 80 bytes.
    V6 {
        lo: (u64, u64, u16),
        hi: (u64, u64, u16),
    },
}

impl Key {
    #[inline]
    pub fn new(a: SocketAddr, b: SocketAddr) -> Key {
        match (a, b) {
            (SocketAddr::V4(a), SocketAddr::V4(b)) => {
                let pack =
                    |e: SocketAddrV4| u64::from(e.ip().to_bits()) << 32 | u64::from(e.port());
                let (a, b) = (pack(a), pack(b));
                Key::V4 {
                    lo: a.min(b),
                    hi: a.max(b),
                }
            }
            (a, b) => {
                let end = |e: SocketAddr| {
                    let ip = match e.ip() {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
                        IpAddr::V6(v6) => v6.to_bits(),
                    };
                    ((ip >> 64) as u64, ip as u64, e.port())
                };
                let (a, b) = (end(a), end(b));
                Key::V6 {
                    lo: a.min(b),
                    hi: a.max(b),
                }
            }
        }
    }
}

/// Counters the summary shows; merged across workers.
#[derive(Clone, Debug, Default)]
pub struct FlowStats {
    pub connections: u64,
    pub midstream: u64,
    /// Connections finished for idleness that the proxy reused later (see [`Dormant`]).
    pub resumed: u64,
    pub evicted: u64,
    pub idle_expired: u64,
    pub retransmitted_bytes: u64,
    pub out_of_order_segments: u64,
    pub overlap_conflicts: u64,
    pub ooo_overflows: u64,
    pub gap_bytes: u64,
    pub late_packets: u64,
    /// Late packets that carried data or a SYN (not just the last ACK of a close).
    pub late_data_packets: u64,
    /// Refused connections (RST to SYN) whose SYN was answered by a SYN-ACK after all: the
    /// refusing RST came from something on the path, not the backend's listener.
    pub synack_after_refusal: u64,
    /// Of those, the ones the proxy went on with (an ACK or data after the SYN-ACK): it
    /// ignored the RST, and what followed was not analysed.
    pub refusal_ignored: u64,
    /// ICMP destination-unreachable messages about TCP segments that did not fail a
    /// tracked connect: about an established connection's segments (soft errors the
    /// connection outlives), or one gatescope does not track.
    pub unreachable_other: u64,
    /// Connects answered by ICMP destination unreachable that went on anyway (a SYN-ACK came
    /// after it: a transient error, or a proxy whose system retries after one).
    pub unreachable_outlived: u64,
    pub peak_connections: u64,
}

impl FlowStats {
    pub fn merge(&mut self, o: &FlowStats) {
        self.connections += o.connections;
        self.midstream += o.midstream;
        self.resumed += o.resumed;
        self.evicted += o.evicted;
        self.idle_expired += o.idle_expired;
        self.retransmitted_bytes += o.retransmitted_bytes;
        self.out_of_order_segments += o.out_of_order_segments;
        self.overlap_conflicts += o.overlap_conflicts;
        self.ooo_overflows += o.ooo_overflows;
        self.gap_bytes += o.gap_bytes;
        self.late_packets += o.late_packets;
        self.late_data_packets += o.late_data_packets;
        self.synack_after_refusal += o.synack_after_refusal;
        self.refusal_ignored += o.refusal_ignored;
        self.unreachable_other += o.unreachable_other;
        self.unreachable_outlived += o.unreachable_outlived;
        self.peak_connections += o.peak_connections;
    }
}

#[derive(Debug, Default)]
struct Dir {
    reasm: Option<Reassembler>,
    /// Payload bytes seen (including retransmissions).
    bytes: u64,
    fin: bool,
    rst: bool,
    /// A zero window advertised by this direction's sender (its receive buffer is full).
    zero_since: Option<(Ts, u64)>,
    zero_reported: bool,
    gaps: u32,
    first_gap: Option<(Ts, u64, u64)>,
    /// The out-of-order buffer overflowed (reported once).
    overflow_reported: bool,
    /// Any segment of this direction was captured (a capture of one direction only, from
    /// asymmetric routing or a one-sided filter, knows the other only from its ACKs).
    seen: bool,
    /// The TTL (hop limit) of this direction's first segment that was not a reset.
    ttl: Option<u8>,
}

#[derive(Debug)]
struct Syn {
    at: (Ts, u64),
    last: Ts,
    count: u32,
    isn: u32,
}

impl Syn {
    /// The capture shows the proxy waiting on this SYN: it was retransmitted, or `now` is a
    /// second or more after it (what makes an unanswered SYN a timeout and an answered one
    /// a slow connect).
    fn waited(&self, now: Ts) -> bool {
        self.count >= 2 || now.micros_since(self.at.0) >= SYN_MIN_WAIT_US
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    start: Ts,
    last: Ts,
    /// Sender of direction 0.
    a: SocketAddr,
    b: SocketAddr,
    dirs: [Dir; 2],
    /// Index of the client→server direction, once known.
    client: Option<usize>,
    syn: Option<Syn>,
    synack: bool,
    session: Option<Session>,
    packets: u64,
    first_fin: Option<usize>,
    rst_by: Option<usize>,
    /// The first reset's TTL and when it came (boxed: most connections have none).
    rst: Option<Box<(u8, (Ts, u64))>>,
    refused: bool,
    /// The ICMP destination unreachable that answered the SYN, and when it came (boxed: a
    /// rare event should not widen every connection's state).
    unreachable: Option<Box<(Unreachable, (Ts, u64))>>,
    /// Any payload seen from the server.
    server_spoke: bool,
    /// What this connection's heads in progress count in the table's [`HeadBudget`].
    heads_held: usize,
    /// The connection finished for idleness that this one continues (boxed: rare).
    resumes: Option<Box<Dormant>>,
}

#[derive(Debug)]
enum Entry {
    Live(Box<Conn>),
    /// A tombstone: the connection ended at `at`; `isn` is its SYN's.
    Closed {
        at: Ts,
        isn: Option<u32>,
        refusal: Refusal,
    },
}

/// What followed a refusal (RST to SYN), as far as a tombstone can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Not refused, or nothing more to say.
    None,
    /// Refused; no SYN-ACK yet.
    Refused,
    /// A SYN-ACK answered the SYN after the RST.
    SynAcked,
}

/// Routes one direction's reassembled stream into the session.
struct SideSink<'s, 'c, 'o> {
    session: &'s mut Session,
    side: Side,
    ctx: &'c mut Ctx<'o>,
    /// The server's acknowledgement of the client stream, carried by this segment.
    server_ack: Option<u64>,
    gaps: u32,
    first_gap: Option<(Ts, u64, u64)>,
    offset: u64,
}

impl StreamSink for SideSink<'_, '_, '_> {
    fn data(&mut self, bytes: &[u8]) {
        self.offset += bytes.len() as u64;
        match self.side {
            Side::Client => self.session.client_data(bytes, self.ctx),
            Side::Server => self.session.server_data(bytes, self.ctx),
        }
    }
    fn gap(&mut self, len: u64) {
        self.gaps += 1;
        if self.first_gap.is_none() {
            self.first_gap = Some((self.ctx.ts, self.ctx.frame, self.offset));
        }
        self.offset += len;
        self.session.gap(self.side, len, self.ctx);
    }
    fn fin(&mut self) {
        match self.side {
            Side::Client => self.session.client_close(CloseKind::Fin, self.ctx),
            Side::Server => self
                .session
                .server_close(CloseKind::Fin, self.server_ack, self.ctx),
        }
    }
}

pub struct FlowTable {
    conns: FxHashMap<Key, Entry>,
    /// Deadlines, checked lazily: an entry is re-pushed if the connection was active since.
    deadlines: BinaryHeap<Reverse<(Ts, ConnId, Key)>>,
    limits: Arc<Limits>,
    backends: Arc<Vec<Backend>>,
    pub stats: FlowStats,
    max_connections: usize,
    ooo: OooBudget,
    heads: HeadBudget,
    /// Connections finished for idleness, by 4-tuple, and the order they were finished in
    /// (to forget them after [`DORMANT_US`], or the oldest beyond `max_connections`);
    /// an order entry that is not [`current`] is stale.
    dormant: FxHashMap<Key, Dormant>,
    dormant_order: std::collections::VecDeque<(Ts, Key)>,
}

/// Bytes of heads still being collected by all of a table's connections, against
/// `max_head_total`: without it, every open connection could hold two stalled heads of
/// `head_buffer_cap` (13 GB at the defaults).
#[derive(Debug, Default)]
struct HeadBudget {
    held: usize,
    cap: usize,
}

impl HeadBudget {
    /// Takes the connection's heads in progress into the total after a segment; if the
    /// total is over the cap, the connection gives its heads up.
    #[inline]
    fn account(&mut self, c: &mut Conn, ctx: &mut Ctx<'_>) {
        let Some(session) = c.session.as_mut() else {
            return;
        };
        let now = session.heads_in_progress();
        if now == c.heads_held {
            return;
        }
        self.held = self.held - c.heads_held.min(self.held) + now;
        c.heads_held = now;
        if self.held > self.cap && now > 0 {
            session.shed_heads(self.cap, ctx);
            let left = session.heads_in_progress();
            self.held = self.held - now.min(self.held) + left;
            c.heads_held = left;
        }
    }
}

/// Out-of-order bytes held by all of a table's connections, against `max_ooo_total`.
#[derive(Debug, Default)]
struct OooBudget {
    held: usize,
    cap: usize,
}

impl FlowTable {
    /// `share` divides `max_connections` when connections are sharded over workers.
    pub fn new(limits: Arc<Limits>, backends: Arc<Vec<Backend>>, share: usize) -> FlowTable {
        let max_connections = (limits.max_connections / share.max(1)).max(16);
        let ooo = OooBudget {
            held: 0,
            cap: (limits.max_ooo_total / share.max(1)).max(limits.max_ooo_bytes),
        };
        let heads = HeadBudget {
            held: 0,
            cap: (limits.max_head_total / share.max(1)).max(limits.head_buffer_cap),
        };
        FlowTable {
            conns: FxHashMap::default(),
            deadlines: BinaryHeap::new(),
            limits,
            backends,
            stats: FlowStats::default(),
            max_connections,
            ooo,
            heads,
            dormant: FxHashMap::default(),
            dormant_order: std::collections::VecDeque::new(),
        }
    }

    /// Connections currently tracked (tombstones included).
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Total out-of-order bytes held by all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns
            .values()
            .map(|e| match e {
                Entry::Live(c) => c
                    .dirs
                    .iter()
                    .map(|d| d.reasm.as_ref().map_or(0, |r| r.buffered()))
                    .sum(),
                Entry::Closed { .. } => 0,
            })
            .sum()
    }

    fn deadline(&self, e: &Entry) -> Ts {
        match e {
            // Saturating: a capture's timestamps can be anywhere in i64 (pcapng).
            Entry::Closed { at, .. } => Ts(at.0.saturating_add_unsigned(LINGER_US)),
            Entry::Live(c) if c.syn.is_some() && !c.synack && !c.server_spoke => {
                Ts(c.last.0.saturating_add_unsigned(SYN_WAIT_US))
            }
            Entry::Live(c) => {
                let idle = self.limits.idle_timeout_us;
                Ts(c.last.0.saturating_add_unsigned(idle))
            }
        }
    }

    /// Processes one TCP segment.
    pub fn segment(&mut self, seg: &Segment<'_>, ctx: &mut Ctx<'_>) {
        let key = Key::new(seg.src, seg.dst);
        let is_new_syn = seg.flags.syn() && !seg.flags.ack();
        // Nearly every segment: one of a live connection that does not start a new one. One
        // hash lookup instead of three (the table lookups were a tenth of the analysis time).
        if !is_new_syn {
            if let Some(Entry::Live(c)) = self.conns.get_mut(&key) {
                let done = Self::update(
                    c,
                    seg,
                    &self.limits,
                    &self.backends,
                    &mut self.stats,
                    &mut self.ooo,
                    ctx,
                );
                self.heads.account(c, ctx);
                if done {
                    self.close(key, ctx);
                }
                return;
            }
        }
        let mut replace = false;
        match self.conns.get_mut(&key) {
            // A SYN with a new ISN on a 4-tuple we still think is open: the old one ended
            // without us seeing it (or is being reused); start over.
            Some(Entry::Live(c)) if is_new_syn => {
                let same_syn = c.syn.as_ref().is_some_and(|s| s.isn == seg.seq)
                    && c.client.is_some_and(|d| (d == 0) == (seg.src == c.a));
                replace = !same_syn;
            }
            Some(Entry::Live(_)) => {}
            Some(Entry::Closed { isn, refusal, .. }) => {
                if is_new_syn && *isn != Some(seg.seq) {
                    self.conns.remove(&key);
                } else {
                    self.stats.late_packets += 1;
                    // The last ACK of a close is late by nature; data or a SYN-ACK is not.
                    if !seg.payload.is_empty() || seg.flags.syn() {
                        self.stats.late_data_packets += 1;
                    }
                    // The backend's own answer to the refused SYN, after the refusal; then
                    // whether the proxy went on. Each counted once per connection.
                    let answers_syn = isn.is_some_and(|i| seg.ack == i.wrapping_add(1));
                    match *refusal {
                        Refusal::Refused if seg.flags.syn() && seg.flags.ack() && answers_syn => {
                            *refusal = Refusal::SynAcked;
                            self.stats.synack_after_refusal += 1;
                        }
                        Refusal::SynAcked
                            if !seg.flags.syn()
                                && !seg.flags.rst()
                                && seg.flags.ack()
                                && isn.is_some_and(|i| seg.seq == i.wrapping_add(1)) =>
                        {
                            *refusal = Refusal::None;
                            self.stats.refusal_ignored += 1;
                        }
                        _ => {}
                    }
                    return;
                }
            }
            None => {}
        }
        if replace {
            if let Some(Entry::Live(c)) = self.conns.remove(&key) {
                self.finish(*c, None, ctx);
            }
        }
        if !self.conns.contains_key(&key) {
            if seg.flags.rst() && !self.dormant.contains_key(&key) {
                // A RST for a connection we do not know: nothing to analyse. (One for a
                // connection finished for idleness continues it: a backend or a load
                // balancer resetting connections idle longer than `--idle-timeout`, an
                // AWS NLB's 350 s, is its `idle_close`.)
                self.stats.late_packets += 1;
                return;
            }
            if self.conns.len() >= self.max_connections {
                self.evict_one(ctx);
            }
            let conn = Conn {
                id: ctx.frame,
                start: ctx.ts,
                last: ctx.ts,
                a: seg.src,
                b: seg.dst,
                dirs: [Dir::default(), Dir::default()],
                client: None,
                syn: None,
                synack: false,
                session: None,
                packets: 0,
                first_fin: None,
                rst_by: None,
                rst: None,
                refused: false,
                unreachable: None,
                server_spoke: false,
                heads_held: 0,
                // A new SYN on the 4-tuple starts afresh.
                resumes: self
                    .dormant
                    .remove(&key)
                    .filter(|_| !is_new_syn)
                    .map(Box::new),
            };
            self.stats.connections += 1;
            let entry = Entry::Live(Box::new(conn));
            let dl = self.deadline(&entry);
            self.deadlines.push(Reverse((dl, ctx.frame, key)));
            self.conns.insert(key, entry);
            self.stats.peak_connections = self.stats.peak_connections.max(self.conns.len() as u64);
            self.compact_deadlines();
        }
        let Some(Entry::Live(c)) = self.conns.get_mut(&key) else {
            return;
        };
        let done = Self::update(
            c,
            seg,
            &self.limits,
            &self.backends,
            &mut self.stats,
            &mut self.ooo,
            ctx,
        );
        self.heads.account(c, ctx);
        if done {
            self.close(key, ctx);
        }
    }

    /// An ICMP destination unreachable about a segment. One that answers a connection's SYN
    /// fails the connect (Linux aborts it at once: the proxy's `connect()` returns the error,
    /// and nginx answers 502); reported when the connection ends unanswered, so that a SYN
    /// retried and answered after it is not called a failure.
    #[cold]
    #[inline(never)]
    pub fn unreachable(&mut self, u: &Unreachable, ctx: &mut Ctx<'_>) {
        let key = Key::new(u.src, u.dst);
        let Some(Entry::Live(c)) = self.conns.get_mut(&key) else {
            self.stats.unreachable_other += 1;
            return;
        };
        let from_client = c
            .client
            .is_some_and(|d| (if d == 0 { c.a } else { c.b }) == u.src);
        let answers_syn = !c.synack
            && !c.server_spoke
            && from_client
            && c.syn.as_ref().is_some_and(|s| s.isn == u.seq);
        if answers_syn && c.unreachable.is_none() {
            c.unreachable = Some(Box::new((*u, (ctx.ts, ctx.frame))));
            c.last = c.last.max(ctx.ts);
        } else if !answers_syn {
            self.stats.unreachable_other += 1;
        }
    }

    /// What an idle connection leaves for its continuation: only a keep-alive connection
    /// that is open both ways and has had an exchange (one that is closing, or never
    /// carried a request, has nothing to continue).
    fn dormant_of(c: &Conn) -> Option<Dormant> {
        let s = c.session.as_ref()?;
        let (exchanges, last_response_end, idle) = s.dormant();
        let client = c.client?;
        let open = c.rst_by.is_none() && !c.dirs[0].fin && !c.dirs[1].fin;
        (open && exchanges > 0).then_some(Dormant {
            conn: c.id,
            server: if client == 0 { c.b } else { c.a },
            last: c.last,
            exchanges,
            last_response_end,
            idle,
        })
    }

    fn remember(&mut self, key: Key, d: Dormant) {
        if self.dormant.len() >= self.max_connections {
            while let Some((at, k)) = self.dormant_order.pop_front() {
                if current(&self.dormant, &k, at) {
                    self.dormant.remove(&k);
                    break;
                }
            }
        }
        self.dormant_order.push_back((d.last, key));
        self.dormant.insert(key, d);
    }

    /// Forgets connections finished for idleness more than [`DORMANT_US`] before `now`.
    fn forget_dormant(&mut self, now: Ts) {
        while let Some(&(at, k)) = self.dormant_order.front() {
            if Ts(at.0.saturating_add_unsigned(DORMANT_US)) > now {
                break;
            }
            self.dormant_order.pop_front();
            if current(&self.dormant, &k, at) {
                self.dormant.remove(&k);
            }
        }
        // Stale order entries (taken up again, or replaced) would pile up behind fresh ones
        // only as long as those are remembered: at most one per idle expiry in that time.
        if self.dormant_order.len() > 2 * self.dormant.len() + 1024 {
            let dormant = &self.dormant;
            self.dormant_order
                .retain(|(at, k)| current(dormant, k, *at));
        }
    }

    /// The connection is over: writes it and leaves a tombstone.
    fn close(&mut self, key: Key, ctx: &mut Ctx<'_>) {
        if let Some(Entry::Live(c)) = self.conns.remove(&key) {
            let isn = c.syn.as_ref().map(|s| s.isn);
            let refusal = if c.refused {
                Refusal::Refused
            } else {
                Refusal::None
            };
            let at = ctx.ts;
            self.finish(*c, None, ctx);
            let entry = Entry::Closed { at, isn, refusal };
            let dl = self.deadline(&entry);
            self.deadlines.push(Reverse((dl, ctx.frame, key)));
            self.conns.insert(key, entry);
        }
    }

    /// Applies a segment to its connection. Returns true when the connection is over.
    fn update(
        c: &mut Conn,
        seg: &Segment<'_>,
        limits: &Limits,
        backends: &[Backend],
        stats: &mut FlowStats,
        ooo: &mut OooBudget,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let d = if seg.src == c.a { 0 } else { 1 };
        c.packets += 1;
        c.last = ctx.ts;
        c.dirs[d].seen = true;
        let flags = seg.flags;
        if c.dirs[d].ttl.is_none() && !flags.rst() {
            c.dirs[d].ttl = Some(seg.ttl);
        }
        // The handshake's answer, the first time: how long the backend took to accept.
        let first_synack = flags.syn() && flags.ack() && !c.synack;

        if flags.syn() {
            if flags.ack() {
                c.synack = true;
                if c.client.is_none() {
                    c.client = Some(1 - d);
                }
            } else {
                c.client.get_or_insert(d);
                match &mut c.syn {
                    Some(s) if s.isn == seg.seq => {
                        s.count += 1;
                        s.last = ctx.ts;
                    }
                    _ => {
                        c.syn = Some(Syn {
                            at: (ctx.ts, ctx.frame),
                            last: ctx.ts,
                            count: 1,
                            isn: seg.seq,
                        })
                    }
                }
            }
            if c.dirs[d].reasm.is_none() {
                c.dirs[d].reasm = Some(Reassembler::new(
                    seg.seq.wrapping_add(1),
                    limits.max_ooo_bytes,
                    limits.max_ooo_segments,
                ));
            }
        }

        if flags.ack() && !flags.rst() {
            // The client's ACK of the handshake: the server answered the SYN even if the
            // capture missed its SYN-ACK (a capture of one direction only).
            if !flags.syn()
                && c.client == Some(d)
                && c.syn
                    .as_ref()
                    .is_some_and(|s| s.isn.wrapping_add(1) == seg.seq)
            {
                c.synack = true;
            }
            // The other direction, not captured yet, sends next what this segment
            // acknowledges: its stream starts there, so that bytes acknowledged but never
            // captured become a gap instead of going unnoticed.
            let o = 1 - d;
            if c.dirs[o].reasm.is_none() {
                c.dirs[o].reasm = Some(Reassembler::new(
                    seg.ack,
                    limits.max_ooo_bytes,
                    limits.max_ooo_segments,
                ));
            }
        }

        // Roles are needed before any byte reaches HTTP.
        let has_payload = !seg.payload.is_empty() || seg.missing > 0;
        if c.client.is_none() && (has_payload || flags.fin() || flags.rst()) {
            c.client = Some(match c.resumes.as_deref() {
                Some(r) => usize::from(c.a == r.server),
                None => guess_client(c, d, seg.payload, backends),
            });
        }
        let Some(client_dir) = c.client else {
            // Pure ACKs before anything else: remember where the stream starts.
            if c.dirs[d].reasm.is_none() {
                c.dirs[d].reasm = Some(Reassembler::new(
                    seg.seq,
                    limits.max_ooo_bytes,
                    limits.max_ooo_segments,
                ));
            }
            return false;
        };
        if c.session.is_none() {
            let (client, server) = if client_dir == 0 {
                (c.a, c.b)
            } else {
                (c.b, c.a)
            };
            // Without the handshake, both streams may start in the middle of a message.
            let midstream = c.syn.is_none() && !c.synack;
            let mut session = Session::new(
                Emitter::new(c.id, client, server),
                limits,
                midstream,
                midstream,
            );
            match c.resumes.as_deref() {
                Some(r) => {
                    stats.resumed += 1;
                    session.resume(r.exchanges, r.last_response_end, r.idle);
                }
                None if midstream => stats.midstream += 1,
                None => {}
            }
            c.session = Some(session);
        }
        let side = if d == client_dir {
            Side::Client
        } else {
            Side::Server
        };
        if first_synack && side == Side::Server {
            if let (Some(syn), Some(s)) = (&c.syn, c.session.as_mut()) {
                slow_connect_finding(s, syn, c.unreachable.as_deref(), ctx);
            }
        }
        if side == Side::Server && has_payload {
            c.server_spoke = true;
            if let Some(s) = c.session.as_mut() {
                s.server_segment(ctx.ts);
            }
        }

        // Zero window: the sender of this segment has no room to receive.
        if !flags.rst() && !flags.syn() {
            let dir = &mut c.dirs[d];
            if seg.window == 0 {
                dir.zero_since.get_or_insert((ctx.ts, ctx.frame));
            } else if let Some((since, frame)) = dir.zero_since.take() {
                if !dir.zero_reported {
                    dir.zero_reported = true;
                    if let Some(s) = c.session.as_mut() {
                        zero_window_finding(s, side, since, frame, Some(ctx.ts), ctx);
                    }
                }
            }
        }

        if flags.rst() {
            c.dirs[d].rst = true;
            if c.rst_by.is_none() {
                c.rst = Some(Box::new((seg.ttl, (ctx.ts, ctx.frame))));
            }
            c.rst_by.get_or_insert(d);
            if side == Side::Server && c.syn.is_some() && !c.synack && !c.server_spoke {
                c.refused = true;
            }
            // A RST proves bytes were sent like a FIN does: its sequence number is where its
            // sender's stream ended, its ACK what the sender had received. Bytes before
            // either that the capture never carried are a capture gap, delivered before the
            // reset ends the streams, so that the reset does not read as the backend cutting
            // off (or the proxy giving up on) bytes that were in fact sent.
            if let Some(session) = c.session.as_mut() {
                if flags.ack() {
                    let o = 1 - d;
                    sent_upto(
                        &mut c.dirs[o],
                        session,
                        side.other(),
                        seg.ack,
                        true,
                        ooo,
                        ctx,
                    );
                }
                sent_upto(&mut c.dirs[d], session, side, seg.seq, false, ooo, ctx);
            }
            return true;
        }

        let Some(session) = c.session.as_mut() else {
            return false;
        };
        // Stream data (and FIN) of this direction.
        if c.dirs[d].reasm.is_none() {
            c.dirs[d].reasm = Some(Reassembler::new(
                seg.seq,
                limits.max_ooo_bytes,
                limits.max_ooo_segments,
            ));
        }
        // The server's ACK, as an offset in the client stream (for keep-alive race timing).
        let server_ack = if side == Side::Server && flags.ack() {
            c.dirs[client_dir]
                .reasm
                .as_ref()
                .map(|r| r.offset_of(seg.ack).max(0) as u64)
        } else {
            None
        };
        // This segment's ACK covers the other direction: ACKed bytes never seen are a gap.
        // Taken before the segment's own data and FIN: the ACK speaks of what the sender had
        // received before it sent them (a proxy's FIN that acknowledges a response the
        // capture missed must not read as the proxy giving up on it).
        if flags.ack() {
            let o = 1 - d;
            sent_upto(
                &mut c.dirs[o],
                session,
                side.other(),
                seg.ack,
                true,
                ooo,
                ctx,
            );
        }
        if has_payload || flags.fin() {
            let seq = if flags.syn() {
                seg.seq.wrapping_add(1)
            } else {
                seg.seq
            };
            let dir = &mut c.dirs[d];
            dir.bytes += seg.payload.len() as u64;
            if let Some(r) = dir.reasm.as_mut() {
                let mut sink = SideSink {
                    session,
                    side,
                    ctx,
                    server_ack,
                    gaps: 0,
                    first_gap: None,
                    offset: r.next_offset(),
                };
                let held_before = r.footprint();
                let eff = r.segment(seq, seg.payload, seg.missing, flags.fin(), &mut sink);
                ooo.held = (ooo.held + r.footprint()).saturating_sub(held_before);
                let over_total = ooo.held > ooo.cap && r.footprint() > 0;
                if over_total {
                    // Every connection together holds too much out-of-order data: this one
                    // gives its buffer up (its holes become capture gaps).
                    let held = r.footprint();
                    r.flush_holes(&mut sink);
                    ooo.held = ooo.held.saturating_sub(held);
                }
                let (gaps, first_gap) = (sink.gaps, sink.first_gap);
                stats.retransmitted_bytes += eff.retransmitted;
                if eff.out_of_order {
                    stats.out_of_order_segments += 1;
                }
                if eff.overflowed || over_total {
                    stats.ooo_overflows += 1;
                    if !dir.overflow_reported {
                        dir.overflow_reported = true;
                        let (limit, value) = if over_total {
                            ("max_ooo_total", limits.max_ooo_total)
                        } else {
                            ("max_ooo_bytes", limits.max_ooo_bytes)
                        };
                        let msg = format!(
                            "more out-of-order data than gatescope holds ({limit} {value}) in the {} direction; the hole was treated as a capture gap",
                            side.as_str()
                        );
                        session.em.finding(
                            ctx,
                            Kind::LimitReached,
                            Severity::Warning,
                            &ExRef::default(),
                            None,
                            msg,
                            evidence(
                                json!({"limit": limit, "value": value, "direction": side.as_str()}),
                            ),
                        );
                    }
                }
                dir.gaps += gaps;
                if dir.first_gap.is_none() {
                    dir.first_gap = first_gap;
                }
                if flags.fin() {
                    dir.fin = true;
                }
            }
        }
        for dd in 0..2 {
            if c.dirs[dd].reasm.as_ref().is_some_and(|r| r.finished()) && c.first_fin.is_none() {
                c.first_fin = Some(dd);
            }
        }
        let finished = |dir: &Dir| dir.reasm.as_ref().is_some_and(|r| r.finished());
        finished(&c.dirs[0]) && finished(&c.dirs[1])
    }

    /// Ends a connection: flushes both streams, reports what is still open, writes its record.
    fn finish(&mut self, mut c: Conn, reason: Option<Close>, ctx: &mut Ctx<'_>) {
        self.heads.held = self.heads.held.saturating_sub(c.heads_held);
        let now = c.last.max(ctx.ts);
        if c.client.is_none() {
            c.client = Some(guess_client(&c, 0, &[], &self.backends));
        }
        let client_dir = c.client.unwrap_or(0);
        let (client, server) = if client_dir == 0 {
            (c.a, c.b)
        } else {
            (c.b, c.a)
        };
        let mut session = c.session.take().unwrap_or_else(|| {
            Session::new(Emitter::new(c.id, client, server), &self.limits, true, true)
        });
        // Deliver whatever is still buffered, holes as gaps.
        for d in 0..2 {
            let side = if d == client_dir {
                Side::Client
            } else {
                Side::Server
            };
            let dir = &mut c.dirs[d];
            if let Some(r) = dir.reasm.as_mut() {
                let mut sink = SideSink {
                    session: &mut session,
                    side,
                    ctx,
                    server_ack: None,
                    gaps: 0,
                    first_gap: None,
                    offset: r.next_offset(),
                };
                self.ooo.held = self.ooo.held.saturating_sub(r.footprint());
                r.flush(&mut sink);
                let (gaps, first_gap) = (sink.gaps, sink.first_gap);
                dir.gaps += gaps;
                if dir.first_gap.is_none() {
                    dir.first_gap = first_gap;
                }
            }
        }
        // Resets end both streams at once.
        if let Some(d) = c.rst_by {
            let side = if d == client_dir {
                Side::Client
            } else {
                Side::Server
            };
            match side {
                Side::Client => session.client_close(CloseKind::Rst, ctx),
                Side::Server => session.server_close(CloseKind::Rst, None, ctx),
            }
        }
        if let (Some(d), Some(&(rst_ttl, at))) = (c.rst_by, c.rst.as_deref()) {
            if let Some(ttl) = c.dirs[d].ttl.filter(|&t| t != rst_ttl) {
                let (who, side) = if d == client_dir {
                    ("the proxy", "client")
                } else {
                    ("the backend", "server")
                };
                session.em.finding(
                    ctx,
                    Kind::MiddleboxReset,
                    Severity::Warning,
                    &ExRef::default(),
                    Some(at),
                    format!(
                        "the reset that ended the connection, from {who}'s address, came with TTL {rst_ttl} where {who}'s other packets had {ttl}: something on the path sent it (a load balancer's or firewall's idle timeout, conntrack), not {who} itself"
                    ),
                    evidence(json!({"side": side, "rst_ttl": rst_ttl, "ttl": ttl})),
                );
            }
        }
        let no_answer = c.syn.is_some() && !c.synack && !c.server_spoke;
        if c.unreachable.is_some() && !no_answer {
            self.stats.unreachable_outlived += 1;
        }
        // No answer and no reset: an unanswered SYN, or one an ICMP error failed.
        let unanswered = no_answer && c.rst_by.is_none();
        let rejected = c.unreachable.as_deref().filter(|_| unanswered);
        let mut timed_out = false;
        if reason == Some(Close::Evicted) && self.stats.evicted == 1 {
            // The first eviction of this table (of each worker's share with several threads):
            // the analysis is partial from here on; later evictions are counted in the
            // summary and marked on their connection records, not repeated as findings.
            session.em.finding(
                ctx,
                Kind::LimitReached,
                Severity::Warning,
                &ExRef::default(),
                None,
                format!(
                    "more connections open at once than gatescope tracks (max_connections {}): this one, the closest to its idle deadline, was evicted and reported as it stood; later evictions are counted in the summary",
                    self.limits.max_connections
                ),
                evidence(json!({"limit": "max_connections", "value": self.limits.max_connections})),
            );
        }
        if c.refused {
            let syn = c.syn.as_ref();
            let tries = syn.map_or(1, |s| s.count);
            session.em.finding(
                ctx,
                Kind::ConnectRefused,
                Severity::Error,
                &ExRef::default(),
                None,
                format!("backend {server} refused the connection (RST to SYN)"),
                evidence(json!({"syn_sent": tries})),
            );
        } else if let Some((u, at)) = rejected {
            let tries = c.syn.as_ref().map_or(1, |s| s.count);
            session.em.finding_with_hint(
                ctx,
                Kind::ConnectUnreachable,
                Severity::Error,
                &ExRef::default(),
                Some(*at),
                format!(
                    "SYN to {server} answered by ICMP destination unreachable ({}) from {}: {}; the proxy's connect failed at once ({})",
                    u.reason(),
                    u.from,
                    if u.from == server.ip() {
                        "the backend's host (or its firewall) rejected the connection"
                    } else {
                        "a router or firewall on the path rejected the connection"
                    },
                    u.connect_error()
                ),
                evidence(json!({
                    "icmp_from": u.from.to_string(),
                    "icmp_type": if u.v6 { 1 } else { 3 },
                    "icmp_code": u.code,
                    "reason": u.reason(),
                    "connect_error": u.connect_error(),
                    "syn_sent": tries,
                })),
                crate::findings::unreachable_hint(u.connect_error()),
            );
        } else if unanswered {
            if let Some(s) = &c.syn {
                // Only a wait the capture shows: a SYN evicted to make room (a burst of new
                // connections, a flood) may have been answered a moment later.
                if s.waited(now) {
                    timed_out = true;
                    session.em.finding(
                        ctx,
                        Kind::ConnectTimeout,
                        Severity::Error,
                        &ExRef::default(),
                        Some(s.at),
                        format!(
                            "SYN to {server} never answered ({} attempt(s) over {:.1} s)",
                            s.count,
                            s.last.micros_since(s.at.0) as f64 / 1e6
                        ),
                        evidence(json!({"syn_sent": s.count, "waited_ms": now.ms_since(s.at.0)})),
                    );
                }
            }
        }
        for d in 0..2 {
            let side = if d == client_dir {
                Side::Client
            } else {
                Side::Server
            };
            if let Some((since, frame)) = c.dirs[d].zero_since {
                if !c.dirs[d].zero_reported {
                    zero_window_finding(&mut session, side, since, frame, None, ctx);
                }
            }
        }
        let gap_total: u64 = c
            .dirs
            .iter()
            .map(|d| d.reasm.as_ref().map_or(0, |r| r.gap_bytes))
            .sum();
        if gap_total > 0 {
            let mut ev = serde_json::Map::new();
            let mut first: Option<(Ts, u64)> = None;
            for d in 0..2 {
                let side = if d == client_dir {
                    "to_server"
                } else {
                    "to_client"
                };
                let dir = &c.dirs[d];
                let bytes = dir.reasm.as_ref().map_or(0, |r| r.gap_bytes);
                if bytes > 0 {
                    let (ts, frame, off) = dir.first_gap.unwrap_or((now, ctx.frame, 0));
                    if first.is_none_or(|f| (ts, frame) < f) {
                        first = Some((ts, frame));
                    }
                    ev.insert(
                        side.to_string(),
                        json!({"bytes": bytes, "gaps": dir.gaps, "first_at_offset": off}),
                    );
                }
            }
            self.stats.gap_bytes += gap_total;
            // One direction with no packet at all: the capture saw one side only.
            let unseen = (0..2).find(|&d| !c.dirs[d].seen);
            let msg = match unseen {
                Some(d) => {
                    let (who, other) = if d == client_dir {
                        ("client", "server")
                    } else {
                        ("server", "client")
                    };
                    let lost = c.dirs[d].reasm.as_ref().map_or(0, |r| r.gap_bytes);
                    format!(
                        "the capture holds no packet from the {who}: only one direction was captured (asymmetric routing, or a capture filter on one address); the {lost} byte(s) the {other} acknowledged from it are missing. Not a backend fault: capture both directions (e.g. tcpdump 'host {}')",
                        server.ip()
                    )
                }
                None => format!(
                    "{gap_total} byte(s) of this connection are missing from the capture (not a backend fault: findings nearby have low confidence)"
                ),
            };
            if unseen.is_some() {
                ev.insert("one_direction_only".to_string(), json!(true));
            }
            session.em.finding(
                ctx,
                Kind::CaptureGap,
                Severity::Warning,
                &ExRef {
                    low_confidence: true,
                    ..ExRef::default()
                },
                first,
                msg,
                ev,
            );
        }
        for d in &c.dirs {
            if let Some(r) = &d.reasm {
                self.stats.overlap_conflicts += r.overlap_conflicts;
            }
        }
        session.finish(now, ctx);
        let close = if c.refused {
            Close::Refused
        } else if rejected.is_some() {
            Close::Unreachable
        } else if unanswered && (timed_out || reason != Some(Close::Evicted)) {
            Close::Unanswered
        } else if let Some(d) = c.rst_by {
            Close::Reset {
                by: if d == client_dir {
                    Side::Client
                } else {
                    Side::Server
                },
            }
        } else if c.dirs[0].fin && c.dirs[1].fin {
            Close::Fin {
                first: if c.first_fin == Some(client_dir) {
                    Side::Client
                } else {
                    Side::Server
                },
            }
        } else if let Some(r) = reason {
            r
        } else if c.dirs[client_dir].fin {
            Close::HalfClosed { by: Side::Client }
        } else if c.dirs[1 - client_dir].fin {
            Close::HalfClosed { by: Side::Server }
        } else {
            Close::CaptureEnd
        };
        let resumes = c.resumes.as_deref().map(|r| record::Resumes {
            conn: r.conn,
            idle_ms: c.start.ms_since(r.last),
        });
        let midstream = c.syn.is_none() && !c.synack && resumes.is_none();
        let rec = record::Connection {
            id: c.id,
            client,
            server,
            start: c.start,
            end: c.last,
            close,
            midstream,
            resumes,
            idle_close: session
                .idle_close()
                .map(|(by, idle_ms)| record::IdleClose { by, idle_ms }),
            bytes_to_server: c.dirs[client_dir].bytes,
            bytes_to_client: c.dirs[1 - client_dir].bytes,
            gap_bytes: gap_total,
            packets: c.packets,
            exchanges: session.exchanges,
            findings: session.em.findings,
            errors: session.em.errors,
        };
        session.em.push(ctx, Record::Connection(rec));
    }

    /// Deadlines of connections that were replaced on their 4-tuple are dropped only when they
    /// come due: a 4-tuple that starts connection after connection while packet time stands
    /// still (a SYN flood with changing ISNs) grew the heap with the capture. When it holds far
    /// more entries than the table, it is rebuilt from the table (amortised O(1) per
    /// connection).
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() <= 2 * self.conns.len() + 1024 {
            return;
        }
        let live: Vec<Reverse<(Ts, ConnId, Key)>> = self
            .conns
            .iter()
            .map(|(k, e)| {
                let id = match e {
                    Entry::Live(c) => c.id,
                    // Tombstones are not matched by id.
                    Entry::Closed { .. } => 0,
                };
                Reverse((self.deadline(e), id, *k))
            })
            .collect();
        self.deadlines = BinaryHeap::from(live);
    }

    /// Evicts the connection closest to its idle deadline.
    fn evict_one(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(Reverse((dl, id, key))) = self.deadlines.pop() {
            let Some(entry) = self.conns.get(&key) else {
                continue;
            };
            let current = self.deadline(entry);
            let same = match entry {
                Entry::Live(c) => c.id == id,
                Entry::Closed { .. } => true,
            };
            if !same {
                continue;
            }
            if current > dl {
                self.deadlines.push(Reverse((current, id, key)));
                continue;
            }
            match self.conns.remove(&key) {
                Some(Entry::Live(c)) => {
                    self.stats.evicted += 1;
                    self.finish(*c, Some(Close::Evicted), ctx);
                }
                Some(Entry::Closed { .. }) | None => {}
            }
            return;
        }
    }

    /// Packet time is now `now`: report slow waits and expire idle connections. Records come
    /// out ordered by connection id, so the result does not depend on hash order.
    pub fn tick(&mut self, now: Ts, ctx: &mut Ctx<'_>) {
        let start = ctx.out.len();
        let mut expired: Vec<(ConnId, Key)> = Vec::new();
        while let Some(Reverse((dl, id, key))) = self.deadlines.peek().copied() {
            if dl > now {
                break;
            }
            self.deadlines.pop();
            let Some(entry) = self.conns.get(&key) else {
                continue;
            };
            if let Entry::Live(c) = entry {
                if c.id != id {
                    continue;
                }
            }
            let current = self.deadline(entry);
            if current > now {
                self.deadlines.push(Reverse((current, id, key)));
                continue;
            }
            match entry {
                Entry::Closed { .. } => {
                    self.conns.remove(&key);
                }
                Entry::Live(_) => expired.push((id, key)),
            }
        }
        expired.sort_unstable();
        for (_, key) in expired {
            if let Some(Entry::Live(c)) = self.conns.remove(&key) {
                self.stats.idle_expired += 1;
                let syn_only = c.syn.is_some() && !c.synack && !c.server_spoke;
                let reason = if syn_only {
                    None
                } else {
                    Some(Close::IdleTimeout)
                };
                let dormant = Self::dormant_of(&c);
                self.finish(*c, reason, ctx);
                if let Some(d) = dormant {
                    self.remember(key, d);
                }
            }
        }
        self.forget_dormant(now);
        for e in self.conns.values_mut() {
            if let Entry::Live(c) = e {
                if let Some(s) = c.session.as_mut() {
                    if s.response_owed() {
                        s.tick(now, ctx);
                    }
                }
            }
        }
        ctx.out[start..].sort_by_key(|(k, _)| *k);
    }

    /// End of input: finish every open connection, in connection order.
    pub fn drain(&mut self, ctx: &mut Ctx<'_>) {
        let mut live: Vec<(ConnId, Key)> = self
            .conns
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Live(c) => Some((c.id, *k)),
                Entry::Closed { .. } => None,
            })
            .collect();
        live.sort_unstable();
        for (_, key) in live {
            if let Some(Entry::Live(c)) = self.conns.remove(&key) {
                self.finish(*c, Some(Close::CaptureEnd), ctx);
            }
        }
        self.conns.clear();
        self.deadlines.clear();
    }
}

/// How far past the delivered bytes a RST's sequence number may point and still count as
/// proof of bytes sent: more than any real send window (tens of MB at most), far less than
/// the 2 GiB a random number would reach half the time.
const MAX_RST_LEAD: i64 = 64 << 20;

/// Everything before sequence number `upto` of `dir`'s stream was sent (an ACK of it, or the
/// sequence number of its sender's RST): bytes before it that the capture never carried are
/// delivered to the session as a capture gap, so the parser does not wait for them and no
/// close reads as cutting them off.
///
/// `from_ack`: `upto` is the peer's acknowledgement, which for a direction the capture never
/// carried may also cover its FIN.
#[inline]
fn sent_upto(
    dir: &mut Dir,
    session: &mut Session,
    side: Side,
    upto: u32,
    from_ack: bool,
    ooo: &mut OooBudget,
    ctx: &mut Ctx<'_>,
) {
    let Some(r) = dir.reasm.as_mut() else {
        return;
    };
    if !from_ack && r.offset_of(upto) - r.next_offset() as i64 > MAX_RST_LEAD {
        // A RST's sequence number further ahead than any send window: not this stream's
        // (a middlebox's reset with a made-up number). No gap is invented from it.
        return;
    }
    let mut sink = SideSink {
        session,
        side,
        ctx,
        server_ack: None,
        gaps: 0,
        first_gap: None,
        offset: r.next_offset(),
    };
    let held_before = r.footprint();
    if from_ack
        && !dir.seen
        && !r.finished()
        && r.buffered() == 0
        && r.offset_of(upto) == r.next_offset() as i64 + 1
    {
        // A direction the capture never carried: its FIN is known only as one more
        // acknowledged sequence number after its data. Taken as the FIN (not a byte of
        // data), so that it closes the stream and is not counted as a missing byte.
        r.segment(upto.wrapping_sub(1), &[], 0, true, &mut sink);
        dir.fin = true;
    }
    r.acked(upto, &mut sink);
    ooo.held = ooo
        .held
        .saturating_sub(held_before - r.footprint().min(held_before));
    let (gaps, first_gap) = (sink.gaps, sink.first_gap);
    dir.gaps += gaps;
    if dir.first_gap.is_none() {
        dir.first_gap = first_gap;
    }
}

/// The backend answered the SYN, but late: after retransmitted SYNs (the first ones were
/// dropped — a full listen queue, `net.ipv4.tcp_max_syn_backlog`, a firewall) or a second
/// or more after it. Each retransmission adds 1 s, then 2, 4…: exactly the connect times that
/// run into a short `proxy_connect_timeout` (504) and otherwise show as slow requests. After
/// an ICMP error about the SYN (`icmp`), the wait is that error's: said, with who sent it.
fn slow_connect_finding(
    s: &mut Session,
    syn: &Syn,
    icmp: Option<&(Unreachable, (Ts, u64))>,
    ctx: &mut Ctx<'_>,
) {
    if !syn.waited(ctx.ts) {
        return;
    }
    let ms = ctx.ts.ms_since(syn.at.0);
    let mut ev = json!({"syn_sent": syn.count, "connect_ms": ms});
    let msg = if let Some((u, _)) = icmp {
        ev["icmp_from"] = json!(u.from.to_string());
        ev["reason"] = json!(u.reason());
        format!(
            "the backend answered the proxy's SYN only after {} attempts, {ms:.0} ms after the first, which an ICMP destination unreachable ({}) from {} had answered: a transient reject or route change on the way",
            syn.count,
            u.reason(),
            u.from
        )
    } else if syn.count >= 2 {
        format!(
            "the backend answered the proxy's SYN only after {} attempts, {ms:.0} ms after the first: the earlier SYNs went unanswered (the backend's listen queue full, or SYNs dropped on the way)",
            syn.count
        )
    } else {
        format!(
            "the backend answered the proxy's SYN {ms:.0} ms after it: a connect that slow points at an overloaded backend host or a slow path"
        )
    };
    s.em.finding(
        ctx,
        Kind::SlowConnect,
        Severity::Warning,
        &ExRef::default(),
        Some(syn.at),
        msg,
        evidence(ev),
    );
}

fn zero_window_finding(
    s: &mut Session,
    side: Side,
    since: Ts,
    frame: u64,
    until: Option<Ts>,
    ctx: &mut Ctx<'_>,
) {
    let who = match side {
        Side::Client => "the proxy",
        Side::Server => "the backend",
    };
    let (msg, stall) = match until {
        Some(t) => {
            let ms = t.ms_since(since);
            (
                format!(
                    "{who} advertised a zero receive window; the transfer stalled for {ms:.0} ms"
                ),
                Some(ms),
            )
        }
        None => (
            format!("{who} advertised a zero receive window and it never reopened"),
            None,
        ),
    };
    s.em.finding(
        ctx,
        Kind::ZeroWindow,
        Severity::Warning,
        &ExRef::default(),
        Some((since, frame)),
        msg,
        evidence(json!({"receiver": side.as_str(), "stall_ms": stall})),
    );
}

/// Decides which direction is client→server when the handshake was not seen: `--backend`
/// first, then who speaks HTTP, then ports (the lower, or a well-known one, is the server).
fn guess_client(c: &Conn, d: usize, payload: &[u8], backends: &[Backend]) -> usize {
    let (src, dst) = if d == 0 { (c.a, c.b) } else { (c.b, c.a) };
    if backends.iter().any(|b| b.matches(&dst)) {
        return d;
    }
    if backends.iter().any(|b| b.matches(&src)) {
        return 1 - d;
    }
    if payload.starts_with(b"HTTP/") {
        return 1 - d;
    }
    if crate::h1::looks_like_request(payload) {
        return d;
    }
    if dst.port() < src.port() {
        d
    } else {
        1 - d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!("{s}"))
    }

    #[test]
    fn a_key_is_the_same_both_ways_and_tells_connections_apart() {
        let (a, b, c) = (
            addr("10.0.0.1:5555"),
            addr("10.0.0.2:80"),
            addr("10.0.0.1:80"),
        );
        let (v6a, v6b) = (addr("[::ffff:10.0.0.1]:5555"), addr("[2001:db8::2]:80"));
        assert_eq!(Key::new(a, b), Key::new(b, a));
        assert_eq!(Key::new(v6a, v6b), Key::new(v6b, v6a));
        assert_ne!(Key::new(a, b), Key::new(c, b));
        assert_ne!(Key::new(a, b), Key::new(a, c));
        // Address and port do not blur into each other.
        assert_ne!(
            Key::new(addr("10.0.0.1:1"), b),
            Key::new(addr("10.0.0.0:1"), b)
        );
        // An IPv4 end and its IPv6-mapped form are not the same connection.
        assert_ne!(Key::new(a, b), Key::new(v6a, b));
        assert_ne!(Key::new(a, b), Key::new(v6a, addr("[::ffff:10.0.0.2]:80")));
    }
}
