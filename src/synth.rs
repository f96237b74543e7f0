//! Synthetic captures: TCP conversations built packet by packet and written as classic pcap.
//!
//! Used by the tests, by `gatescope-gen samples` (the bundled captures in `captures/`) and by
//! `gatescope-gen bulk` (large captures for benchmarks). Depends on `etherparse` and std only.
//!
//! * [`Conversation`] builds the IPv4 or IPv6 packets of one TCP connection, with its own clock,
//!   ISNs and sequence accounting: handshake, data split into MSS segments with the peer's ACKs,
//!   FIN and RST, refused and unanswered connects, zero windows, and low-level segments for
//!   reassembly scenarios (out of order, retransmitted, overlapping, capture gaps).
//! * [`merge_by_time`] interleaves several conversations into one packet list.
//! * [`PcapWriter`] wraps IP packets in a link-layer header (Ethernet with or without an 802.1Q
//!   tag, raw IP, Linux cooked v1/v2, BSD loopback) and writes a microsecond pcap file,
//!   truncating frames to the snaplen.
//! * [`push_ethernet_ipv4_tcp`] is the allocation-free fast path for bulk generation: it writes
//!   Ethernet + IPv4 + TCP headers with both checksums straight into a reusable buffer.
//! * [`adversarial`] builds hostile and broken traffic that pushes each of gatescope's bounds.

pub mod adversarial;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, TcpHeader, TcpOptionElement,
};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::ops::{BitOr, BitOrAssign};

/// Classic pcap magic for microsecond timestamps (written little endian).
pub const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Snaplen written when none is chosen (what tcpdump uses by default).
pub const DEFAULT_SNAPLEN: u32 = 262_144;
/// Default maximum segment size (1500-byte MTU minus IPv4, TCP and the timestamp option).
pub const DEFAULT_MSS: usize = 1448;
/// Largest TCP payload that fits one IPv4 packet without options.
pub const MAX_SEGMENT: usize = 65_495;
/// Default receive window advertised by both ends.
pub const DEFAULT_WINDOW: u16 = 65_535;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// `AF_INET` in a DLT_NULL header (all BSDs and Darwin).
pub const NULL_AF_INET: u32 = 2;
/// `AF_INET6` in a DLT_NULL header as Darwin (macOS) writes it; NetBSD/OpenBSD use 24,
/// FreeBSD 28.
pub const NULL_AF_INET6: u32 = 30;
/// Linux cooked capture packet type: addressed to this host.
pub const SLL_HOST: u16 = 0;
/// Linux cooked capture packet type: sent by this host.
pub const SLL_OUTGOING: u16 = 4;
/// `ARPHRD_ETHER`.
pub const ARPHRD_ETHER: u16 = 1;
/// Interface index written in Linux cooked v2 headers.
pub const SLL2_IFINDEX: u32 = 2;

// ------------------------------------------------------------------------------------------
// Link types and the pcap writer
// ------------------------------------------------------------------------------------------

/// The link-layer header type of a capture file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// DLT_EN10MB (1): Ethernet II, optionally with one 802.1Q tag.
    Ethernet,
    /// LINKTYPE_RAW (101): the IP packet with no link header.
    Raw,
    /// DLT_LINUX_SLL (113): Linux cooked capture v1, 16-byte header.
    LinuxSll,
    /// DLT_LINUX_SLL2 (276): Linux cooked capture v2, 20-byte header.
    LinuxSll2,
    /// DLT_NULL (0): BSD loopback, a 4-byte address family in the writer's byte order.
    Null,
}

impl LinkType {
    pub const ALL: [LinkType; 5] = [
        LinkType::Ethernet,
        LinkType::Raw,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::Null,
    ];

    /// The value of the pcap header's `network` field.
    pub const fn dlt(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
            LinkType::LinuxSll => 113,
            LinkType::LinuxSll2 => 276,
            LinkType::Null => 0,
        }
    }

    pub const fn from_dlt(dlt: u32) -> Option<LinkType> {
        match dlt {
            1 => Some(LinkType::Ethernet),
            101 => Some(LinkType::Raw),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            0 => Some(LinkType::Null),
            _ => None,
        }
    }

    /// Length of the link header this writer puts in front of each IP packet.
    pub const fn header_len(self, vlan: bool) -> usize {
        match self {
            LinkType::Ethernet if vlan => 18,
            LinkType::Ethernet => 14,
            LinkType::Raw => 0,
            LinkType::LinuxSll => 16,
            LinkType::LinuxSll2 => 20,
            LinkType::Null => 4,
        }
    }
}

/// How a [`PcapWriter`] frames packets. Build with [`PcapOptions::new`] and the setters, then
/// [`PcapOptions::create`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapOptions {
    pub link: LinkType,
    pub snaplen: u32,
    /// 802.1Q VLAN id (0..=4095) for Ethernet frames.
    pub vlan: Option<u16>,
    /// The capturing host: in Linux cooked headers, packets from it are "outgoing", all others
    /// "host". Without it every packet is "host".
    pub local_ip: Option<IpAddr>,
}

impl PcapOptions {
    pub fn new(link: LinkType) -> PcapOptions {
        PcapOptions {
            link,
            snaplen: DEFAULT_SNAPLEN,
            vlan: None,
            local_ip: None,
        }
    }

    /// Frames longer than `snaplen` are cut (caplen < origlen). 0 means [`DEFAULT_SNAPLEN`].
    pub fn snaplen(mut self, snaplen: u32) -> PcapOptions {
        self.snaplen = if snaplen == 0 {
            DEFAULT_SNAPLEN
        } else {
            snaplen
        };
        self
    }

    /// Tag every Ethernet frame with an 802.1Q header carrying `vid` (PCP 0, DEI 0).
    pub fn vlan(mut self, vid: u16) -> PcapOptions {
        self.vlan = Some(vid);
        self
    }

    pub fn local_ip(mut self, ip: IpAddr) -> PcapOptions {
        self.local_ip = Some(ip);
        self
    }

    /// Writes the pcap file header to `out` and returns the writer.
    pub fn create<W: Write>(self, out: W) -> io::Result<PcapWriter<W>> {
        PcapWriter::with_options(out, self)
    }
}

/// Writes a classic little-endian pcap file (magic 0xa1b2c3d4, version 2.4, microseconds).
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    opts: PcapOptions,
    packets: u64,
    bytes: u64,
}

impl<W: Write> PcapWriter<W> {
    /// A writer with the default snaplen and no VLAN tag; writes the file header.
    pub fn new(out: W, link: LinkType) -> io::Result<PcapWriter<W>> {
        PcapWriter::with_options(out, PcapOptions::new(link))
    }

    /// Writes the file header. Fails on a VLAN id above 4095 or a VLAN tag on a non-Ethernet
    /// link type.
    pub fn with_options(mut out: W, opts: PcapOptions) -> io::Result<PcapWriter<W>> {
        if let Some(vid) = opts.vlan {
            if opts.link != LinkType::Ethernet || vid > 4095 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a VLAN tag (id 0..=4095) needs the Ethernet link type",
                ));
            }
        }
        let mut hdr = [0u8; 24];
        hdr[0..4].copy_from_slice(&PCAP_MAGIC_MICROS.to_le_bytes());
        hdr[4..6].copy_from_slice(&2u16.to_le_bytes());
        hdr[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone (8..12) and sigfigs (12..16) stay 0.
        hdr[16..20].copy_from_slice(&opts.snaplen.to_le_bytes());
        hdr[20..24].copy_from_slice(&opts.link.dlt().to_le_bytes());
        out.write_all(&hdr)?;
        Ok(PcapWriter {
            out,
            opts,
            packets: 0,
            bytes: 24,
        })
    }

    pub fn options(&self) -> &PcapOptions {
        &self.opts
    }

    pub fn link_type(&self) -> LinkType {
        self.opts.link
    }

    pub fn snaplen(&self) -> u32 {
        self.opts.snaplen
    }

    /// Records written so far.
    pub fn packets_written(&self) -> u64 {
        self.packets
    }

    /// Bytes written so far, file header included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Wraps `ip_packet` in this writer's link header and writes one record, cut to the
    /// snaplen. The IP version (for the ethertype or address family) is read from the first
    /// nibble; anything that is not IPv6 is labelled IPv4.
    pub fn write_packet(&mut self, ts_micros: i64, ip_packet: &[u8]) -> io::Result<()> {
        let (link, len) = link_header(&self.opts, ip_packet);
        self.write_record(ts_micros, &link[..len], ip_packet)
    }

    /// Writes every `(ts_micros, ip_packet)` in order.
    pub fn write_packets<'a, I>(&mut self, packets: I) -> io::Result<()>
    where
        I: IntoIterator<Item = &'a (i64, Vec<u8>)>,
    {
        for (ts, pkt) in packets {
            self.write_packet(*ts, pkt)?;
        }
        Ok(())
    }

    /// Writes a frame that already carries this writer's link header (bulk fast path).
    pub fn write_frame(&mut self, ts_micros: i64, frame: &[u8]) -> io::Result<()> {
        self.write_record(ts_micros, frame, &[])
    }

    fn write_record(&mut self, ts_micros: i64, head: &[u8], body: &[u8]) -> io::Result<()> {
        let secs = ts_micros.div_euclid(1_000_000);
        let micros = ts_micros.rem_euclid(1_000_000);
        let secs = u32::try_from(secs).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "timestamp outside the classic pcap range (1970..2106)",
            )
        })?;
        let orig_len = head.len() + body.len();
        let orig = u32::try_from(orig_len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
        let cap = orig.min(self.opts.snaplen);
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&secs.to_le_bytes());
        rec[4..8].copy_from_slice(&(micros as u32).to_le_bytes());
        rec[8..12].copy_from_slice(&cap.to_le_bytes());
        rec[12..16].copy_from_slice(&orig.to_le_bytes());
        self.out.write_all(&rec)?;
        let cap = cap as usize;
        let from_head = cap.min(head.len());
        self.out.write_all(&head[..from_head])?;
        let from_body = (cap - from_head).min(body.len());
        self.out.write_all(&body[..from_body])?;
        self.packets += 1;
        self.bytes += 16 + cap as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A locally administered MAC derived from an IP address's last four bytes, so that each
/// host keeps one MAC across a capture.
pub fn mac_for_ip(ip_tail: [u8; 4]) -> [u8; 6] {
    [0x02, 0x00, ip_tail[0], ip_tail[1], ip_tail[2], ip_tail[3]]
}

/// (is IPv6, source address tail, destination address tail, source IP) of an IP packet.
fn ip_endpoints(ip: &[u8]) -> (bool, [u8; 4], [u8; 4], Option<IpAddr>) {
    let tail = |r: std::ops::Range<usize>| -> [u8; 4] {
        let mut t = [0u8; 4];
        if let Some(s) = ip.get(r) {
            t.copy_from_slice(s);
        }
        t
    };
    match ip.first().map(|b| b >> 4) {
        Some(6) => {
            let src = ip.get(8..24).and_then(|s| <[u8; 16]>::try_from(s).ok());
            (true, tail(20..24), tail(36..40), src.map(IpAddr::from))
        }
        _ => {
            let src = ip.get(12..16).and_then(|s| <[u8; 4]>::try_from(s).ok());
            (false, tail(12..16), tail(16..20), src.map(IpAddr::from))
        }
    }
}

/// The link header for `ip` under `opts`: bytes and length.
fn link_header(opts: &PcapOptions, ip: &[u8]) -> ([u8; 20], usize) {
    let mut h = [0u8; 20];
    let (v6, src_tail, dst_tail, src_ip) = ip_endpoints(ip);
    let ethertype = if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
    let src_mac = mac_for_ip(src_tail);
    let outgoing = opts.local_ip.is_some() && opts.local_ip == src_ip;
    let sll_type = if outgoing { SLL_OUTGOING } else { SLL_HOST };
    match opts.link {
        LinkType::Ethernet => {
            h[0..6].copy_from_slice(&mac_for_ip(dst_tail));
            h[6..12].copy_from_slice(&src_mac);
            match opts.vlan {
                Some(vid) => {
                    h[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
                    h[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
                    h[16..18].copy_from_slice(&ethertype.to_be_bytes());
                    (h, 18)
                }
                None => {
                    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
                    (h, 14)
                }
            }
        }
        LinkType::Raw => (h, 0),
        LinkType::LinuxSll => {
            h[0..2].copy_from_slice(&sll_type.to_be_bytes());
            h[2..4].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
            h[4..6].copy_from_slice(&6u16.to_be_bytes());
            h[6..12].copy_from_slice(&src_mac);
            // 12..14: the address field is 8 bytes, the last two unused.
            h[14..16].copy_from_slice(&ethertype.to_be_bytes());
            (h, 16)
        }
        LinkType::LinuxSll2 => {
            h[0..2].copy_from_slice(&ethertype.to_be_bytes());
            // 2..4 reserved, must be zero.
            h[4..8].copy_from_slice(&SLL2_IFINDEX.to_be_bytes());
            h[8..10].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
            h[10] = sll_type as u8;
            h[11] = 6;
            h[12..18].copy_from_slice(&src_mac);
            (h, 20)
        }
        LinkType::Null => {
            let af = if v6 { NULL_AF_INET6 } else { NULL_AF_INET };
            // Host byte order of the capturing machine; this writer is little endian.
            h[0..4].copy_from_slice(&af.to_le_bytes());
            (h, 4)
        }
    }
}

// ------------------------------------------------------------------------------------------
// TCP flags, PRNG, checksums
// ------------------------------------------------------------------------------------------

/// TCP header flags, as in the header's flags byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const NONE: TcpFlags = TcpFlags(0);
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

/// splitmix64: a tiny deterministic PRNG (Steele, Lea, Flood 2014), good enough for test data.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p_per_million / 1e6`.
    pub fn chance(&mut self, p_per_million: u64) -> bool {
        self.below(1_000_000) < p_per_million
    }
}

/// Adds `data` to a ones'-complement accumulator as big-endian 16-bit words (an odd last byte
/// is padded with zero). Fold the result with [`checksum_fold`].
pub fn checksum_add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_be_bytes(w);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds an accumulator from [`checksum_add`] into the final (complemented) checksum.
pub fn checksum_fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Splits an IPv4 packet into two fragments, the first carrying `first` bytes of its
/// payload (rounded down to a multiple of 8, as fragment offsets are), the way a router
/// with a smaller MTU would. `None` if it is not an IPv4 packet with a payload to split
/// there.
pub fn fragment_ipv4(packet: &[u8], first: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || ihl < 20 || packet.len() <= ihl {
        return None;
    }
    let (head, payload) = packet.split_at(ihl);
    let first = first / 8 * 8;
    if first == 0 || first >= payload.len() {
        return None;
    }
    let piece = |bytes: &[u8], offset: usize, more: bool| {
        let mut p = head.to_vec();
        let total = u16::try_from(ihl + bytes.len()).unwrap_or(u16::MAX);
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let frag = u16::try_from(offset / 8).unwrap_or(0) | if more { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum_fold(checksum_add(0, &p));
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(bytes);
        p
    };
    Some((
        piece(&payload[..first], 0, true),
        piece(&payload[first..], first, false),
    ))
}

// ------------------------------------------------------------------------------------------
// Fast path: Ethernet + IPv4 + TCP written by hand
// ------------------------------------------------------------------------------------------

/// One TCP/IPv4 segment for [`push_ethernet_ipv4_tcp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp4Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ip_id: u16,
    pub ttl: u8,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
}

/// Appends an Ethernet II frame (MACs from [`mac_for_ip`]) holding an IPv4 packet (20-byte
/// header, DF set) with a TCP segment (20 bytes + `options`) and `payload`, with correct IPv4
/// header and TCP checksums. `options` must be a multiple of 4 bytes and at most 40. Returns
/// the frame length.
pub fn push_ethernet_ipv4_tcp(
    out: &mut Vec<u8>,
    seg: &Tcp4Segment,
    options: &[u8],
    payload: &[u8],
) -> io::Result<usize> {
    if !options.len().is_multiple_of(4) || options.len() > 40 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP options must be a multiple of 4 bytes, at most 40",
        ));
    }
    let tcp_len = 20 + options.len() + payload.len();
    let total = 20 + tcp_len;
    let total16 = u16::try_from(total)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too long for IPv4"))?;
    let src = seg.src.ip().octets();
    let dst = seg.dst.ip().octets();
    let start = out.len();
    out.reserve(14 + total);

    // Ethernet II
    let mut eth = [0u8; 14];
    eth[0..6].copy_from_slice(&mac_for_ip(dst));
    eth[6..12].copy_from_slice(&mac_for_ip(src));
    eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    out.extend_from_slice(&eth);

    // IPv4
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total16.to_be_bytes());
    ip[4..6].copy_from_slice(&seg.ip_id.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = seg.ttl;
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let ip_sum = checksum_fold(checksum_add(0, &ip));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    out.extend_from_slice(&ip);

    // TCP
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&seg.src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&seg.dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    let ack = if seg.flags.contains(TcpFlags::ACK) {
        seg.ack
    } else {
        0
    };
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = (((20 + options.len()) / 4) as u8) << 4;
    tcp[13] = seg.flags.0;
    tcp[14..16].copy_from_slice(&seg.window.to_be_bytes());
    let mut acc = checksum_add(0, &src);
    acc = checksum_add(acc, &dst);
    acc += 6 + tcp_len as u64;
    acc = checksum_add(acc, &tcp);
    acc = checksum_add(acc, options);
    acc = checksum_add(acc, payload);
    let tcp_sum = checksum_fold(acc);
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    out.extend_from_slice(&tcp);
    out.extend_from_slice(options);
    out.extend_from_slice(payload);
    Ok(out.len() - start)
}

// ------------------------------------------------------------------------------------------
// Conversation
// ------------------------------------------------------------------------------------------

/// One end of a conversation. Sequence space is counted relative to `isn + 1`.
#[derive(Clone, Debug)]
struct Side {
    addr: SocketAddr,
    isn: u32,
    /// Payload bytes sent (the stream offset of the next payload byte).
    sent: u64,
    /// A FIN was sent (it occupies one sequence number after the payload).
    fin: bool,
    /// Peer sequence space this side has acknowledged, relative to the peer's `isn + 1`.
    rcv: u64,
    window: u16,
    ip_id: u16,
}

impl Side {
    fn new(addr: SocketAddr, isn: u32, ip_id: u16) -> Side {
        Side {
            addr,
            isn,
            sent: 0,
            fin: false,
            rcv: 0,
            window: DEFAULT_WINDOW,
            ip_id,
        }
    }

    /// Relative sequence number after everything sent (payload plus FIN).
    fn next_rel(&self) -> u64 {
        self.sent + u64::from(self.fin)
    }

    fn seq_at(&self, rel: u64) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(rel as u32)
    }
}

/// The IP packets of one TCP connection between a client (the proxy) and a server (the
/// backend), each stamped with the conversation's clock (microseconds since the epoch).
///
/// Every packet is emitted at the current time and moves the clock on by the segment gap
/// (default 10 µs); [`Conversation::advance`] adds idle time. Methods that emit return
/// `&mut Self` so scenarios read as a chain:
///
/// ```
/// # use gatescope::synth::Conversation;
/// let mut c = Conversation::new("10.0.0.1:40000".parse().unwrap(),
///                               "10.0.0.2:8080".parse().unwrap(), 1_768_471_200_000_000);
/// c.handshake()
///     .client_send(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
///     .advance(2_000)
///     .server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
///     .client_fin()
///     .server_fin();
/// assert_eq!(c.packets().len(), 11);
/// ```
#[derive(Clone, Debug)]
pub struct Conversation {
    client: Side,
    server: Side,
    now: i64,
    mss: usize,
    gap: i64,
    rtt: i64,
    ack_every: usize,
    ttl: u8,
    packets: Vec<(i64, Vec<u8>)>,
}

impl Conversation {
    /// A conversation that has not started yet. ISNs are derived deterministically from the
    /// addresses and `start_micros` (see [`Conversation::seed`], [`Conversation::isn`]). If one
    /// address is IPv4 and the other IPv6, the IPv4 one is mapped (`::ffff:a.b.c.d`).
    pub fn new(client: SocketAddr, server: SocketAddr, start_micros: i64) -> Conversation {
        let (client, server) = match (client, server) {
            (SocketAddr::V4(c), SocketAddr::V6(s)) => (
                SocketAddr::new(IpAddr::V6(c.ip().to_ipv6_mapped()), c.port()),
                SocketAddr::V6(s),
            ),
            (SocketAddr::V6(c), SocketAddr::V4(s)) => (
                SocketAddr::V6(c),
                SocketAddr::new(IpAddr::V6(s.ip().to_ipv6_mapped()), s.port()),
            ),
            other => other,
        };
        let mut conv = Conversation {
            client: Side::new(client, 0, 0),
            server: Side::new(server, 0, 0),
            now: start_micros,
            mss: DEFAULT_MSS,
            gap: 10,
            rtt: 200,
            ack_every: 2,
            ttl: 64,
            packets: Vec::new(),
        };
        conv.reseed(0);
        conv
    }

    fn reseed(&mut self, seed: u64) {
        let mut h = seed ^ 0x6761_7465_7363_6f70; // "gatescop"
        let mut mix = |v: u64| {
            h = SplitMix64(h ^ v).next_u64();
        };
        for addr in [self.client.addr, self.server.addr] {
            match addr.ip() {
                IpAddr::V4(ip) => mix(u64::from(u32::from(ip))),
                IpAddr::V6(ip) => {
                    let v = u128::from(ip);
                    mix(v as u64);
                    mix((v >> 64) as u64);
                }
            }
            mix(u64::from(addr.port()));
        }
        mix(self.now as u64);
        let mut rng = SplitMix64(h);
        self.client.isn = rng.next_u32();
        self.server.isn = rng.next_u32();
        self.client.ip_id = rng.next_u64() as u16;
        self.server.ip_id = rng.next_u64() as u16;
    }

    /// Derive the ISNs (and IP ids) from `seed` as well as the addresses and start time.
    pub fn seed(mut self, seed: u64) -> Conversation {
        self.reseed(seed);
        self
    }

    /// Maximum segment size for [`Conversation::client_send`] / [`Conversation::server_send`]
    /// (clamped to 1..=[`MAX_SEGMENT`]; default [`DEFAULT_MSS`]).
    pub fn mss(mut self, mss: usize) -> Conversation {
        self.mss = mss.clamp(1, MAX_SEGMENT);
        self
    }

    /// Explicit initial sequence numbers (e.g. near `u32::MAX` to test wraparound).
    pub fn isn(mut self, client: u32, server: u32) -> Conversation {
        self.client.isn = client;
        self.server.isn = server;
        self
    }

    /// Round-trip time used between a SYN and its answer (default 200 µs).
    pub fn rtt(mut self, micros: i64) -> Conversation {
        self.rtt = micros.max(0);
        self
    }

    /// Clock step after each packet (default 10 µs).
    pub fn segment_gap(mut self, micros: i64) -> Conversation {
        self.gap = micros.max(0);
        self
    }

    /// The receiver ACKs after every `n` data segments and at the end of each send (default
    /// 2; 0 means only at the end).
    pub fn ack_every(mut self, n: usize) -> Conversation {
        self.ack_every = n;
        self
    }

    /// Receive window both ends advertise (default 65535; no window scaling).
    pub fn window(mut self, window: u16) -> Conversation {
        self.client.window = window;
        self.server.window = window;
        self
    }

    /// The TTL (IPv6 hop limit) of the packets emitted from now on, either side: a reset
    /// a middlebox sends carries its own.
    pub fn set_ttl(&mut self, ttl: u8) -> &mut Self {
        self.ttl = ttl;
        self
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client.addr
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn client_isn(&self) -> u32 {
        self.client.isn
    }

    pub fn server_isn(&self) -> u32 {
        self.server.isn
    }

    /// The clock: the timestamp the next packet will get.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Payload bytes a side has sent so far (its stream offset), including skipped bytes.
    pub fn sent(&self, from_client: bool) -> u64 {
        self.side(from_client).sent
    }

    /// The absolute sequence number of stream offset `rel` of a side.
    pub fn seq_of(&self, from_client: bool, rel: u64) -> u32 {
        self.side(from_client).seq_at(rel)
    }

    pub fn packets(&self) -> &[(i64, Vec<u8>)] {
        &self.packets
    }

    pub fn into_packets(self) -> Vec<(i64, Vec<u8>)> {
        self.packets
    }

    fn side(&self, from_client: bool) -> &Side {
        if from_client {
            &self.client
        } else {
            &self.server
        }
    }

    fn sides(&mut self, from_client: bool) -> (&mut Side, &mut Side) {
        if from_client {
            (&mut self.client, &mut self.server)
        } else {
            (&mut self.server, &mut self.client)
        }
    }

    /// Moves the clock forward (negative values are ignored).
    pub fn advance(&mut self, micros: i64) -> &mut Self {
        self.now = self.now.saturating_add(micros.max(0));
        self
    }

    /// Emits one segment from a side at the current time and steps the clock. The ACK number
    /// is what the sender has acknowledged so far (only set when `flags` has ACK).
    fn emit(
        &mut self,
        from_client: bool,
        seq: u32,
        flags: TcpFlags,
        payload: &[u8],
        mss_opt: bool,
    ) {
        let ttl = self.ttl;
        let mss = self.mss.min(usize::from(u16::MAX)) as u16;
        let (me, peer) = self.sides(from_client);
        let mut tcp = TcpHeader::new(me.addr.port(), peer.addr.port(), seq, me.window);
        tcp.fin = flags.contains(TcpFlags::FIN);
        tcp.syn = flags.contains(TcpFlags::SYN);
        tcp.rst = flags.contains(TcpFlags::RST);
        tcp.psh = flags.contains(TcpFlags::PSH);
        tcp.ack = flags.contains(TcpFlags::ACK);
        tcp.urg = flags.contains(TcpFlags::URG);
        tcp.ece = flags.contains(TcpFlags::ECE);
        tcp.cwr = flags.contains(TcpFlags::CWR);
        if tcp.ack {
            tcp.acknowledgment_number = peer.seq_at(me.rcv);
        }
        if mss_opt {
            // Four bytes always fit the 40-byte option space.
            let _ = tcp.set_options(&[TcpOptionElement::MaximumSegmentSize(mss)]);
        }
        let ip_id = me.ip_id;
        me.ip_id = me.ip_id.wrapping_add(1);
        let ip = match (me.addr.ip(), peer.addr.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpHeaders::Ipv4(
                Ipv4Header {
                    identification: ip_id,
                    dont_fragment: true,
                    time_to_live: ttl,
                    protocol: IpNumber::TCP,
                    source: s.octets(),
                    destination: d.octets(),
                    ..Default::default()
                },
                Default::default(),
            ),
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    IpAddr::V6(a) => a.octets(),
                };
                IpHeaders::Ipv6(
                    Ipv6Header {
                        hop_limit: ttl,
                        next_header: IpNumber::TCP,
                        source: v6(s),
                        destination: v6(d),
                        ..Default::default()
                    },
                    Default::default(),
                )
            }
        };
        let builder = PacketBuilder::ip(ip).tcp_header(tcp);
        let mut buf = Vec::with_capacity(builder.size(payload.len()));
        match builder.write(&mut buf, payload) {
            Ok(()) => self.packets.push((self.now, buf)),
            // Payloads are cut to MAX_SEGMENT before they get here.
            Err(e) => debug_assert!(false, "packet build failed: {e}"),
        }
        self.now = self.now.saturating_add(self.gap);
    }

    /// A pure ACK from `from_client` acknowledging the peer up to relative offset `rel`.
    fn emit_ack(&mut self, from_client: bool, rel: u64) {
        let (me, _) = self.sides(from_client);
        me.rcv = rel;
        let seq = me.seq_at(me.next_rel());
        self.emit(from_client, seq, TcpFlags::ACK, &[], false);
    }

    /// SYN (with the MSS option), SYN-ACK one RTT later, then the client's ACK.
    pub fn handshake(&mut self) -> &mut Self {
        self.syn_only();
        self.advance(self.rtt);
        self.client.rcv = 0;
        self.server.rcv = 0;
        let seq = self.server.isn;
        self.emit(false, seq, TcpFlags::SYN | TcpFlags::ACK, &[], true);
        let seq = self.client.seq_at(0);
        self.emit(true, seq, TcpFlags::ACK, &[], false);
        self
    }

    /// A SYN from the client (nobody answers unless the scenario does).
    pub fn syn_only(&mut self) -> &mut Self {
        let seq = self.client.isn;
        self.emit(true, seq, TcpFlags::SYN, &[], true);
        self
    }

    /// The same SYN again (the caller advances the clock by the retransmission timeout).
    pub fn syn_retransmit(&mut self) -> &mut Self {
        self.syn_only()
    }

    /// SYN, then one RTT later the server's RST+ACK (seq 0, as Linux answers a closed port).
    pub fn refused(&mut self) -> &mut Self {
        self.syn_only();
        self.advance(self.rtt);
        self.server.rcv = 0;
        self.emit(false, 0, TcpFlags::RST | TcpFlags::ACK, &[], false);
        self
    }

    /// SYN, then one RTT later an ICMP destination unreachable (`code` of ICMPv4 type 3, or
    /// of ICMPv6 type 1 for IPv6 ends) from `from` (a router or firewall; the server's own
    /// address for its host's firewall), quoting the SYN's IP header and first 8 TCP bytes.
    pub fn unreachable(&mut self, from: IpAddr, code: u8) -> &mut Self {
        self.syn_only();
        let Some((_, syn)) = self.packets.last().cloned() else {
            return self;
        };
        self.advance(self.rtt);
        let client = self.client.addr.ip();
        let mut buf = Vec::new();
        let built = match (from, client) {
            (IpAddr::V4(f), IpAddr::V4(c)) => {
                let ihl = usize::from(syn.first().map_or(5, |b| b & 0x0f)) * 4;
                let quote = syn.get(..ihl + 8).unwrap_or(&syn);
                PacketBuilder::ipv4(f.octets(), c.octets(), 64)
                    .icmpv4_raw(3, code, [0; 4])
                    .write(&mut buf, quote)
                    .is_ok()
            }
            (IpAddr::V6(f), IpAddr::V6(c)) => {
                let quote = syn.get(..48).unwrap_or(&syn);
                PacketBuilder::ipv6(f.octets(), c.octets(), 64)
                    .icmpv6_raw(1, code, [0; 4])
                    .write(&mut buf, quote)
                    .is_ok()
            }
            // Mixed families cannot be: ICMP goes back over the SYN's IP version.
            _ => false,
        };
        if built {
            self.packets.push((self.now, buf));
        }
        self.now = self.now.saturating_add(self.gap);
        self
    }

    /// Data from the client, split into MSS segments (PSH on the last); the server ACKs after
    /// every `ack_every` segments and at the end.
    pub fn client_send(&mut self, data: &[u8]) -> &mut Self {
        self.send(true, data)
    }

    /// Data from the server; see [`Conversation::client_send`].
    pub fn server_send(&mut self, data: &[u8]) -> &mut Self {
        self.send(false, data)
    }

    /// Data from either side; see [`Conversation::client_send`].
    pub fn send(&mut self, from_client: bool, data: &[u8]) -> &mut Self {
        let n = data.len().div_ceil(self.mss);
        for (i, chunk) in data.chunks(self.mss).enumerate() {
            let last = i + 1 == n;
            let (me, _) = self.sides(from_client);
            let seq = me.seq_at(me.sent);
            me.sent += chunk.len() as u64;
            let flags = if last {
                TcpFlags::ACK | TcpFlags::PSH
            } else {
                TcpFlags::ACK
            };
            self.emit(from_client, seq, flags, chunk, false);
            if last || (self.ack_every > 0 && (i + 1) % self.ack_every == 0) {
                let upto = self.side(from_client).next_rel();
                self.emit_ack(!from_client, upto);
            }
        }
        self
    }

    /// FIN+ACK from a side; if `peer_acks`, the peer ACKs it at once. Without the ACK the peer
    /// has not seen the FIN yet: its next packets still acknowledge the byte before it.
    pub fn fin(&mut self, from_client: bool, peer_acks: bool) -> &mut Self {
        let (me, _) = self.sides(from_client);
        let seq = me.seq_at(me.sent);
        me.fin = true;
        self.emit(from_client, seq, TcpFlags::FIN | TcpFlags::ACK, &[], false);
        if peer_acks {
            let upto = self.side(from_client).next_rel();
            self.emit_ack(!from_client, upto);
        }
        self
    }

    /// FIN+ACK from the client, ACKed by the server.
    pub fn client_fin(&mut self) -> &mut Self {
        self.fin(true, true)
    }

    /// FIN+ACK from the server, ACKed by the client.
    pub fn server_fin(&mut self) -> &mut Self {
        self.fin(false, true)
    }

    /// RST+ACK from a side at its next sequence number (how Linux aborts a connection).
    pub fn rst(&mut self, from_client: bool) -> &mut Self {
        let me = self.side(from_client);
        let seq = me.seq_at(me.next_rel());
        self.emit(from_client, seq, TcpFlags::RST | TcpFlags::ACK, &[], false);
        self
    }

    pub fn client_rst(&mut self) -> &mut Self {
        self.rst(true)
    }

    pub fn server_rst(&mut self) -> &mut Self {
        self.rst(false)
    }

    /// A side advertises a zero window: a pure ACK (for everything the peer sent) with
    /// window 0; the side keeps advertising 0 until [`Conversation::window_update`].
    pub fn zero_window(&mut self, from_client: bool) -> &mut Self {
        self.sides(from_client).0.window = 0;
        let upto = self.side(!from_client).next_rel();
        self.emit_ack(from_client, upto);
        self
    }

    /// The window update that ends a zero window: a pure ACK with the default window.
    pub fn window_update(&mut self, from_client: bool) -> &mut Self {
        self.sides(from_client).0.window = DEFAULT_WINDOW;
        let upto = self.side(!from_client).next_rel();
        self.emit_ack(from_client, upto);
        self
    }

    /// A segment at stream offset `rel_seq` (0 = first payload byte) with exactly `flags`.
    /// Neither the sender's next sequence number nor the peer's ACK state changes: use it for
    /// out-of-order, retransmitted or overlapping segments, then [`Conversation::skip`] the
    /// sender past the bytes and [`Conversation::ack`]. Payloads over [`MAX_SEGMENT`] are
    /// split.
    pub fn raw_segment(
        &mut self,
        from_client: bool,
        rel_seq: u64,
        payload: &[u8],
        flags: TcpFlags,
    ) -> &mut Self {
        if payload.is_empty() {
            let seq = self.side(from_client).seq_at(rel_seq);
            self.emit(from_client, seq, flags, &[], false);
        }
        let mut off = rel_seq;
        for chunk in payload.chunks(MAX_SEGMENT) {
            let seq = self.side(from_client).seq_at(off);
            self.emit(from_client, seq, flags, chunk, false);
            off += chunk.len() as u64;
        }
        self
    }

    /// Advances a side's sequence by `n` payload bytes without emitting anything: bytes the
    /// peer received but the capture missed (or that raw segments already showed). The peer
    /// counts them as received, so its next ACK covers them.
    pub fn skip(&mut self, from_client: bool, n: u64) -> &mut Self {
        let (me, peer) = self.sides(from_client);
        me.sent += n;
        peer.rcv = me.next_rel();
        self
    }

    /// A pure ACK from `from_client` for everything the other side has sent so far.
    pub fn ack(&mut self, from_client: bool) -> &mut Self {
        let upto = self.side(!from_client).next_rel();
        self.emit_ack(from_client, upto);
        self
    }

    /// A pure ACK from `from_client` for the other side's stream up to offset `rel` (use it for
    /// partial and duplicate ACKs).
    pub fn ack_upto(&mut self, from_client: bool, rel: u64) -> &mut Self {
        self.emit_ack(from_client, rel);
        self
    }
}

/// Interleaves the packets of several conversations by timestamp. Stable: packets with equal
/// timestamps keep conversation order, then emission order.
pub fn merge_by_time(conversations: Vec<Conversation>) -> Vec<(i64, Vec<u8>)> {
    let mut all: Vec<(i64, Vec<u8>)> = conversations
        .into_iter()
        .flat_map(Conversation::into_packets)
        .collect();
    all.sort_by_key(|(ts, _)| *ts);
    all
}

#[cfg(test)]
mod test {
    use super::*;
    use etherparse::{LinuxSllHeader, NetSlice, SlicedPacket, TransportSlice};

    const T0: i64 = 1_768_471_200_000_000;

    fn v4() -> Conversation {
        Conversation::new(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            T0,
        )
    }

    /// A decoded TCP segment, with its checksum verified.
    #[derive(Debug)]
    struct Seg {
        src_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        payload: Vec<u8>,
        mss: Option<u16>,
    }

    fn decode(ip: &[u8]) -> Seg {
        let p = SlicedPacket::from_ip(ip).expect("parses");
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not TCP")
        };
        let sum = match p.net.expect("net") {
            NetSlice::Ipv4(v4) => {
                let h = v4.header();
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
            }
            NetSlice::Ipv6(v6) => {
                let h = v6.header();
                tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
            }
            NetSlice::Arp(_) => panic!("arp"),
        };
        assert_eq!(sum, tcp.checksum(), "TCP checksum");
        let mut flags = 0;
        for (b, v) in [
            (tcp.fin(), 1),
            (tcp.syn(), 2),
            (tcp.rst(), 4),
            (tcp.psh(), 8),
            (tcp.ack(), 16),
        ] {
            if b {
                flags |= v;
            }
        }
        let mss = tcp.options_iterator().find_map(|o| match o {
            Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
            _ => None,
        });
        Seg {
            src_port: tcp.source_port(),
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            flags,
            window: tcp.window_size(),
            payload: tcp.payload().to_vec(),
            mss,
        }
    }

    fn segs(c: &Conversation) -> Vec<Seg> {
        c.packets().iter().map(|(_, p)| decode(p)).collect()
    }

    #[test]
    fn handshake_data_fin() {
        let mut c = v4().isn(1000, 5000).mss(100);
        c.handshake();
        c.client_send(&[b'a'; 250]);
        c.server_send(b"hello");
        c.client_fin().server_fin();
        let s = segs(&c);
        // SYN, SYN-ACK, ACK
        assert_eq!((s[0].flags, s[0].seq, s[0].mss), (2, 1000, Some(100)));
        assert_eq!((s[1].flags, s[1].seq, s[1].ack), (0x12, 5000, 1001));
        assert_eq!((s[2].flags, s[2].seq, s[2].ack), (0x10, 1001, 5001));
        // 3 client segments: 100, 100 (+ server ACK), 50 with PSH (+ server ACK)
        assert_eq!(
            (s[3].seq, s[3].payload.len(), s[3].flags),
            (1001, 100, 0x10)
        );
        assert_eq!((s[4].seq, s[4].payload.len()), (1101, 100));
        assert_eq!(
            (s[5].src_port, s[5].ack, s[5].payload.len()),
            (8080, 1201, 0)
        );
        assert_eq!((s[6].seq, s[6].payload.len(), s[6].flags), (1201, 50, 0x18));
        assert_eq!((s[7].src_port, s[7].ack), (8080, 1251));
        assert_eq!(
            (s[8].seq, s[8].ack, &s[8].payload[..]),
            (5001, 1251, &b"hello"[..])
        );
        assert_eq!((s[9].src_port, s[9].ack), (40000, 5006));
        // client FIN, server ACK, server FIN, client ACK
        assert_eq!((s[10].flags, s[10].seq), (0x11, 1251));
        assert_eq!((s[11].src_port, s[11].ack), (8080, 1252));
        assert_eq!((s[12].flags, s[12].seq, s[12].ack), (0x11, 5006, 1252));
        assert_eq!((s[13].seq, s[13].ack), (1252, 5007));
        assert_eq!(s.len(), 14);
        // timestamps never go back, and the SYN-ACK waits one RTT
        let ts: Vec<i64> = c.packets().iter().map(|p| p.0).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ts[0], T0);
        assert_eq!(ts[1], T0 + 10 + 200);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut c = v4().isn(u32::MAX - 10, u32::MAX - 1000);
        c.handshake();
        c.client_send(&[b'x'; 20]);
        c.server_send(&[b'y'; 3000]);
        let s = segs(&c);
        assert_eq!(s[3].seq, u32::MAX - 9);
        assert_eq!(s[4].ack, 10); // (MAX - 9) + 20 wraps to 10
        let last_data = s
            .iter()
            .rev()
            .find(|x| x.src_port == 8080 && !x.payload.is_empty());
        let last_data = last_data.unwrap();
        let end = last_data.seq.wrapping_add(last_data.payload.len() as u32);
        assert_eq!(end, (u32::MAX - 999).wrapping_add(3000));
        assert_eq!(s.last().unwrap().ack, end);
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let mut c = Conversation::new(
            "[fd00::1]:40000".parse().unwrap(),
            "[fd00::2]:8080".parse().unwrap(),
            T0,
        );
        c.handshake().client_send(b"GET / HTTP/1.1\r\n\r\n");
        assert!(segs(&c).iter().all(|s| s.window == DEFAULT_WINDOW));
        let p = SlicedPacket::from_ip(&c.packets()[3].1).unwrap();
        assert!(matches!(p.net, Some(NetSlice::Ipv6(_))));

        let mut m = Conversation::new(
            "10.0.0.1:40000".parse().unwrap(),
            "[fd00::2]:8080".parse().unwrap(),
            T0,
        );
        m.handshake();
        assert_eq!(m.client_addr().to_string(), "[::ffff:10.0.0.1]:40000");
        segs(&m);
    }

    #[test]
    fn isns_are_deterministic_and_seeded() {
        let a = v4();
        let b = v4();
        assert_eq!(
            (a.client_isn(), a.server_isn()),
            (b.client_isn(), b.server_isn())
        );
        let c = v4().seed(7);
        assert_ne!(a.client_isn(), c.client_isn());
    }

    #[test]
    fn refused_timeout_rst_zero_window() {
        let mut c = v4().isn(100, 900);
        c.refused();
        let s = segs(&c);
        assert_eq!((s[1].flags, s[1].seq, s[1].ack), (0x14, 0, 101));

        let mut c = v4().isn(100, 900);
        c.syn_only().advance(1_000_000).syn_retransmit();
        let s = segs(&c);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].seq, s[1].seq, s[1].flags), (100, 100, 2));
        assert!(c.packets()[1].0 - c.packets()[0].0 >= 1_000_000);

        let mut c = v4().isn(100, 900);
        c.handshake().client_send(b"abc").server_rst();
        let s = segs(&c);
        let r = s.last().unwrap();
        assert_eq!((r.flags, r.seq, r.ack), (0x14, 901, 104));

        let mut c = v4().isn(100, 900);
        c.handshake()
            .server_send(b"abcd")
            .zero_window(true)
            .advance(2_000_000)
            .window_update(true);
        let s = segs(&c);
        let n = s.len();
        assert_eq!((s[n - 2].window, s[n - 2].ack), (0, 905));
        assert_eq!((s[n - 1].window, s[n - 1].ack), (DEFAULT_WINDOW, 905));
    }

    #[test]
    fn raw_segments_skip_and_acks() {
        let mut c = v4().isn(100, 900);
        c.handshake();
        c.raw_segment(false, 10, b"later", TcpFlags::ACK)
            .raw_segment(false, 0, b"0123456789", TcpFlags::ACK | TcpFlags::PSH)
            .ack_upto(true, 5);
        assert_eq!(c.sent(false), 0);
        c.skip(false, 15).ack(true);
        c.skip(false, 1000); // a gap: the next data ACK covers it
        c.server_send(b"tail");
        let s = segs(&c);
        assert_eq!((s[3].seq, &s[3].payload[..]), (911, &b"later"[..]));
        assert_eq!(s[4].seq, 901);
        assert_eq!(s[5].ack, 906);
        assert_eq!(s[6].ack, 916);
        assert_eq!(s[7].seq, 901 + 1015);
        assert_eq!(s[8].ack, 901 + 1019);
        // unacked FIN: the client's next data still acks the byte before the FIN
        let mut c = v4().isn(100, 900);
        c.handshake().fin(false, false).client_send(b"GET");
        let s = segs(&c);
        assert_eq!((s[3].flags, s[3].seq), (0x11, 901));
        assert_eq!((s[4].seq, s[4].ack), (101, 901));
        assert_eq!(s[5].ack, 104);
    }

    #[test]
    fn merge_is_stable_by_time() {
        let mut a = v4();
        let mut b = Conversation::new(
            "10.0.0.1:40001".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            T0 + 5,
        );
        a.handshake();
        b.handshake();
        let merged = merge_by_time(vec![a.clone(), b.clone()]);
        assert_eq!(merged.len(), 6);
        assert!(merged.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(merged[0], a.packets()[0]);
        assert_eq!(merged[1], b.packets()[0]);
    }

    /// (ts_sec, ts_usec, caplen, origlen, data)
    type Rec = (u32, u32, u32, u32, Vec<u8>);

    fn read_pcap(bytes: &[u8]) -> (u32, u32, Vec<Rec>) {
        let le = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!(le(0), PCAP_MAGIC_MICROS);
        assert_eq!(&bytes[4..8], &[2, 0, 4, 0]);
        assert_eq!(le(8), 0);
        assert_eq!(le(12), 0);
        let (snap, dlt) = (le(16), le(20));
        let mut recs = Vec::new();
        let mut o = 24;
        while o < bytes.len() {
            let (s, us, cap, orig) = (le(o), le(o + 4), le(o + 8), le(o + 12));
            let data = bytes[o + 16..o + 16 + cap as usize].to_vec();
            recs.push((s, us, cap, orig, data));
            o += 16 + cap as usize;
        }
        (snap, dlt, recs)
    }

    fn one_packet_conv() -> Conversation {
        let mut c = v4();
        c.handshake();
        c
    }

    #[test]
    fn pcap_header_and_ethernet() {
        let c = one_packet_conv();
        let mut w = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
        w.write_packets(c.packets()).unwrap();
        assert_eq!(w.packets_written(), 3);
        let n = w.bytes_written();
        let bytes = w.into_inner().unwrap();
        assert_eq!(n, bytes.len() as u64);
        let (snap, dlt, recs) = read_pcap(&bytes);
        assert_eq!((snap, dlt), (DEFAULT_SNAPLEN, 1));
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].0 as i64, T0 / 1_000_000);
        assert_eq!(recs[0].1, 0);
        assert_eq!(recs[1].1, 210);
        let p = SlicedPacket::from_ethernet(&recs[0].4).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
            panic!("no ethernet")
        };
        assert_eq!(eth.source(), [2, 0, 10, 0, 0, 1]);
        assert_eq!(eth.destination(), [2, 0, 10, 0, 0, 2]);
        assert_eq!(eth.payload().payload, &c.packets()[0].1[..]);
    }

    #[test]
    fn pcap_vlan_and_snaplen() {
        let mut c = v4();
        c.handshake().server_send(&[b'z'; 1000]);
        let mut w = PcapOptions::new(LinkType::Ethernet)
            .vlan(100)
            .snaplen(200)
            .create(Vec::new())
            .unwrap();
        w.write_packets(c.packets()).unwrap();
        let (snap, _, recs) = read_pcap(&w.into_inner().unwrap());
        assert_eq!(snap, 200);
        let (.., cap, orig, data) = &recs[3];
        assert_eq!((*cap, *orig), (200, 18 + 40 + 1000));
        assert_eq!(&data[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(&data[16..18], &[0x08, 0x00]);
        let (.., cap, orig, data) = &recs[0];
        assert_eq!(cap, orig);
        let p = SlicedPacket::from_ethernet(data).unwrap();
        assert_eq!(p.vlan_ids()[0].value(), 100);
        assert!(matches!(p.transport, Some(TransportSlice::Tcp(_))));
        // a VLAN tag on anything but Ethernet is refused
        assert!(PcapOptions::new(LinkType::Raw)
            .vlan(1)
            .create(Vec::new())
            .is_err());
    }

    #[test]
    fn pcap_other_link_types() {
        let c = one_packet_conv();
        let ip = &c.packets()[0].1;
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        for link in LinkType::ALL {
            let mut w = PcapOptions::new(link)
                .local_ip(local)
                .create(Vec::new())
                .unwrap();
            w.write_packets(c.packets()).unwrap();
            let (_, dlt, recs) = read_pcap(&w.into_inner().unwrap());
            assert_eq!(LinkType::from_dlt(dlt), Some(link));
            let d = &recs[0].4;
            let hl = link.header_len(false);
            assert_eq!(d.len(), hl + ip.len());
            assert_eq!(&d[hl..], &ip[..]);
            match link {
                LinkType::LinuxSll => {
                    let (h, rest) = LinuxSllHeader::from_slice(d).unwrap();
                    assert_eq!(rest, &ip[..]);
                    assert_eq!(h.sender_address_valid_length, 6);
                    assert_eq!(&h.sender_address[..6], &[2, 0, 10, 0, 0, 1]);
                    assert_eq!(u16::from_be_bytes([d[0], d[1]]), SLL_OUTGOING);
                    let p = SlicedPacket::from_linux_sll(d).unwrap();
                    assert!(matches!(p.transport, Some(TransportSlice::Tcp(_))));
                    // the SYN-ACK comes from the server: "to us"
                    let d1 = &recs[1].4;
                    assert_eq!(u16::from_be_bytes([d1[0], d1[1]]), SLL_HOST);
                }
                LinkType::LinuxSll2 => {
                    assert_eq!(&d[0..4], &[0x08, 0x00, 0, 0]);
                    assert_eq!(&d[4..8], &SLL2_IFINDEX.to_be_bytes());
                    assert_eq!(&d[8..10], &[0, 1]);
                    assert_eq!(d[10] as u16, SLL_OUTGOING);
                    assert_eq!(d[11], 6);
                    assert_eq!(&d[12..20], &[2, 0, 10, 0, 0, 1, 0, 0]);
                }
                LinkType::Null => assert_eq!(&d[0..4], &[2, 0, 0, 0]),
                LinkType::Raw => {
                    SlicedPacket::from_ip(d).unwrap();
                }
                LinkType::Ethernet => {
                    SlicedPacket::from_ethernet(d).unwrap();
                }
            }
        }
        // IPv6 over NULL and SLL2
        let mut c6 = Conversation::new(
            "[fd00::1]:1".parse().unwrap(),
            "[fd00::2]:2".parse().unwrap(),
            T0,
        );
        c6.syn_only();
        let mut w = PcapWriter::new(Vec::new(), LinkType::Null).unwrap();
        w.write_packets(c6.packets()).unwrap();
        let (_, _, recs) = read_pcap(&w.into_inner().unwrap());
        assert_eq!(&recs[0].4[0..4], &NULL_AF_INET6.to_le_bytes());
        let mut w = PcapWriter::new(Vec::new(), LinkType::LinuxSll2).unwrap();
        w.write_packets(c6.packets()).unwrap();
        let (_, _, recs) = read_pcap(&w.into_inner().unwrap());
        assert_eq!(&recs[0].4[0..2], &[0x86, 0xdd]);
    }

    #[test]
    fn timestamps_out_of_range_are_errors() {
        let mut w = PcapWriter::new(Vec::new(), LinkType::Raw).unwrap();
        assert!(w.write_packet(-1, &[0x45]).is_err());
        assert!(w.write_packet(i64::MAX, &[0x45]).is_err());
        assert!(w.write_packet(1_999_999, &[0x45]).is_ok());
    }

    #[test]
    fn fast_path_matches_etherparse() {
        let seg = Tcp4Segment {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.1.2:8080".parse().unwrap(),
            ip_id: 77,
            ttl: 64,
            seq: 0xfffffff0,
            ack: 12345,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window: 501,
        };
        for len in [0usize, 1, 7, 8, 9, 1460] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut out = vec![0xee; 3];
            let n = push_ethernet_ipv4_tcp(&mut out, &seg, &[], &payload).unwrap();
            assert_eq!(n, 54 + len);
            let frame = &out[3..];
            let p = SlicedPacket::from_ethernet(frame).unwrap();
            let seg_d = decode(&frame[14..]);
            assert_eq!(
                (seg_d.seq, seg_d.ack, seg_d.flags),
                (0xfffffff0, 12345, 0x18)
            );
            assert_eq!(seg_d.payload, payload);
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!()
            };
            assert_eq!(ip.header().identification(), 77);
            assert!(ip.header().dont_fragment());
        }
        // SYN with an MSS option
        let syn = Tcp4Segment {
            flags: TcpFlags::SYN,
            ..seg
        };
        let mut out = Vec::new();
        push_ethernet_ipv4_tcp(&mut out, &syn, &[2, 4, 0x05, 0xb4], &[]).unwrap();
        let d = decode(&out[14..]);
        assert_eq!((d.flags, d.ack, d.mss), (2, 0, Some(1460)));
        assert!(push_ethernet_ipv4_tcp(&mut out, &syn, &[1, 1, 1], &[]).is_err());
        assert!(push_ethernet_ipv4_tcp(&mut out, &syn, &[], &vec![0; 70_000]).is_err());
    }

    #[test]
    fn checksum_of_known_vector() {
        // RFC 1071 example words 0001 f203 f4f5 f6f7 -> sum ddf2, checksum 220d
        assert_eq!(
            checksum_fold(checksum_add(
                0,
                &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]
            )),
            0x220d
        );
        assert_eq!(
            checksum_fold(checksum_add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6])),
            checksum_fold(checksum_add(
                0,
                &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0x00]
            ))
        );
    }

    #[test]
    fn prng_ranges() {
        let mut r = SplitMix64::new(1);
        for _ in 0..1000 {
            let v = r.range(3, 5);
            assert!((3..=5).contains(&v));
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(SplitMix64::new(9).next_u64(), SplitMix64::new(9).next_u64());
    }
}
