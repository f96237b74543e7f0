//! From a captured frame to the TCP segment it carries, zero-copy, with `etherparse` slices.
//!
//! Link types: Ethernet (802.1Q/QinQ), Linux cooked v1/v2 (`tcpdump -i any`), raw IPv4/IPv6,
//! BSD loopback (NULL/LOOP). Frames cut short by the snaplen are decoded as far as they go; the
//! TCP payload bytes that were on the wire but not in the capture are reported as `missing`
//! so reassembly can treat them as a capture gap instead of losing sync.

use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// libpcap link-layer header types (LINKTYPE_* values as stored in pcap files).
pub mod linktype {
    pub const NULL: i32 = 0;
    pub const ETHERNET: i32 = 1;
    pub const RAW_OLD_BSD: i32 = 12;
    pub const RAW_OLD_OPENBSD: i32 = 14;
    pub const RAW: i32 = 101;
    pub const LOOP: i32 = 108;
    pub const LINUX_SLL: i32 = 113;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const LINUX_SLL2: i32 = 276;

    /// Whether gatescope can decode this link type.
    pub fn supported(lt: i32) -> bool {
        matches!(
            lt,
            NULL | ETHERNET
                | RAW_OLD_BSD
                | RAW_OLD_OPENBSD
                | RAW
                | LOOP
                | LINUX_SLL
                | IPV4
                | IPV6
                | LINUX_SLL2
        )
    }
}

/// TCP control bits, as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// One TCP segment as captured.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: Flags,
    /// Raw (unscaled) window; zero is zero at any scale.
    pub window: u16,
    pub payload: &'a [u8],
    /// Payload bytes that were on the wire after `payload` but cut off by the snaplen.
    pub missing: u32,
    /// The IPv4 TTL or IPv6 hop limit as captured: the same on every packet one host sends
    /// along one path, so a reset with another came from somewhere else.
    pub ttl: u8,
}

/// An ICMP "destination unreachable" about a TCP segment: what a router or a firewall sends
/// back instead of the destination's answer (an iptables REJECT rule, firewalld's
/// `icmp-host-prohibited`, a `prohibit` or missing route, a host that does not answer ARP).
/// On a SYN it fails the connect at once: Linux turns it into the error `connect()` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreachable {
    /// Who sent the ICMP message.
    pub from: IpAddr,
    /// The quoted segment as it was sent: its ends and sequence number.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    /// The code of ICMPv4 type 3, or of ICMPv6 type 1.
    pub code: u8,
    pub v6: bool,
}

impl Unreachable {
    /// The code's name (RFC 792, 1122, 1812; RFC 4443 for ICMPv6).
    pub fn reason(&self) -> &'static str {
        match (self.v6, self.code) {
            (false, 0) => "network unreachable",
            (false, 1) => "host unreachable",
            (false, 2) => "protocol unreachable",
            (false, 3) => "port unreachable",
            (false, 5) => "source route failed",
            (false, 6) => "destination network unknown",
            (false, 7) => "destination host unknown",
            (false, 8) => "source host isolated",
            (false, 9) => "network administratively prohibited",
            (false, 10) => "host administratively prohibited",
            (false, 11) => "network unreachable for type of service",
            (false, 12) => "host unreachable for type of service",
            (false, 13) => "communication administratively prohibited",
            (false, 14) => "host precedence violation",
            (false, 15) => "precedence cutoff in effect",
            (true, 0) => "no route to destination",
            (true, 1) => "communication administratively prohibited",
            (true, 2) => "beyond scope of source address",
            (true, 3) => "address unreachable",
            (true, 4) => "port unreachable",
            (true, 5) => "source address failed ingress/egress policy",
            (true, 6) => "reject route to destination",
            _ => "unreachable (unknown code)",
        }
    }

    /// The error a Linux proxy's `connect()` gets from it, as nginx logs it (errno and
    /// strerror; the kernel's icmp_err_convert and icmpv6_err_convert tables).
    pub fn connect_error(&self) -> &'static str {
        match (self.v6, self.code) {
            (false, 0 | 6 | 9 | 11) | (true, 0) => "101: Network is unreachable",
            (false, 2) => "92: Protocol not available",
            (false, 3) | (true, 4) => "111: Connection refused",
            (false, 5) => "95: Operation not supported",
            (false, 7) => "112: Host is down",
            (false, 8) => "64: Machine is not on the network",
            (true, 1 | 5 | 6) => "13: Permission denied",
            _ => "113: No route to host",
        }
    }
}

/// What a frame turned out to be.
#[derive(Debug)]
pub enum Decoded<'a> {
    Tcp(Segment<'a>),
    /// An ICMP destination unreachable quoting a TCP segment (not "fragmentation needed",
    /// which is path MTU discovery at work, nor "packet too big").
    Unreachable(Unreachable),
    /// A fragment of an IP packet that carries TCP. Fragments are not reassembled (on a
    /// proxy↔backend link they are rare: TCP segments fit the path MTU), so the segment's
    /// bytes become a capture gap; counted so that the summary can say why.
    TcpFragment,
    /// Not TCP (UDP, ARP, ICMP, fragments of other protocols...): counted and skipped.
    Other,
    /// Too short or inconsistent to decode; the reason is for the summary.
    Malformed(&'static str),
}

/// Decodes one frame. `orig_len` is the length on the wire, `data.len()` what was captured.
#[inline]
pub fn decode(link: i32, data: &[u8], orig_len: u32) -> Decoded<'_> {
    if let Some(seg) = fast_tcp(link, data) {
        return Decoded::Tcp(seg);
    }
    decode_lax(link, data, orig_len)
}

/// The common frame, decoded without etherparse: IPv4 without fragmentation or IPv6 without
/// extension headers, complete (not cut by the snaplen, length fields consistent), carrying
/// TCP, over Ethernet II, Linux cooked or raw IP. `None` for anything else, which
/// [`decode_lax`] then handles; for the frames it accepts the result is exactly
/// `decode_lax`'s (checked by a test on random and mutated frames). etherparse builds and
/// copies large slice structs per frame, which made decoding a fifth of the analysis time.
#[inline]
fn fast_tcp(link: i32, data: &[u8]) -> Option<Segment<'_>> {
    let (ether_type, ip) = match link {
        linktype::ETHERNET => (be16(data, 12)?, data.get(14..)?),
        linktype::LINUX_SLL => (be16(data, 14)?, data.get(16..)?),
        linktype::LINUX_SLL2 => (be16(data, 0)?, data.get(20..)?),
        linktype::RAW
        | linktype::RAW_OLD_BSD
        | linktype::RAW_OLD_OPENBSD
        | linktype::IPV4
        | linktype::IPV6 => match data.first()? >> 4 {
            4 => (0x0800, data),
            6 => (0x86dd, data),
            _ => return None,
        },
        _ => return None,
    };
    let (src, dst, ttl, tcp) = match ether_type {
        0x0800 => {
            let h = ip.get(..20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            // version 4, complete, not a fragment (MF clear, offset 0), protocol TCP
            if h[0] >> 4 != 4
                || ihl < 20
                || total < ihl
                || total > ip.len()
                || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0
                || h[9] != 6
            {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
            (src, dst, h[8], ip.get(ihl..total)?)
        }
        0x86dd => {
            let h = ip.get(..40)?;
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            // version 6, next header TCP (no extension headers), complete, not a jumbogram
            if h[0] >> 4 != 6 || h[6] != 6 || len == 0 || 40 + len > ip.len() {
                return None;
            }
            let a = |i: usize| -> Option<[u8; 16]> { h.get(i..i + 16)?.try_into().ok() };
            let src = IpAddr::V6(Ipv6Addr::from(a(8)?));
            let dst = IpAddr::V6(Ipv6Addr::from(a(24)?));
            (src, dst, h[7], ip.get(40..40 + len)?)
        }
        _ => return None,
    };
    let t = tcp.get(..20)?;
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    Some(Segment {
        src: SocketAddr::new(src, u16::from_be_bytes([t[0], t[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([t[2], t[3]])),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: Flags(t[13] & (Flags::FIN | Flags::SYN | Flags::RST | Flags::PSH | Flags::ACK)),
        window: u16::from_be_bytes([t[14], t[15]]),
        payload: tcp.get(doff..)?,
        missing: 0,
        ttl,
    })
}

#[inline]
fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]))
}

/// Decodes any frame with etherparse.
fn decode_lax(link: i32, data: &[u8], orig_len: u32) -> Decoded<'_> {
    let lax = match link {
        linktype::ETHERNET => match LaxSlicedPacket::from_ethernet(data) {
            Ok(p) => match pppoe_payload(&p) {
                Some((ether_type, ip)) => LaxSlicedPacket::from_ether_type(ether_type, ip),
                None => p,
            },
            Err(_) => return Decoded::Malformed("frame shorter than an Ethernet header"),
        },
        linktype::LINUX_SLL => {
            // 16-byte header; protocol (an EtherType for IP) in the last two bytes.
            let Some(hdr) = data.get(..16) else {
                return Decoded::Malformed("frame shorter than a Linux cooked (SLL) header");
            };
            let proto = u16::from_be_bytes([hdr[14], hdr[15]]);
            LaxSlicedPacket::from_ether_type(EtherType(proto), &data[16..])
        }
        linktype::LINUX_SLL2 => {
            // 20-byte header; protocol first.
            let Some(hdr) = data.get(..20) else {
                return Decoded::Malformed("frame shorter than a Linux cooked v2 (SLL2) header");
            };
            let proto = u16::from_be_bytes([hdr[0], hdr[1]]);
            LaxSlicedPacket::from_ether_type(EtherType(proto), &data[20..])
        }
        linktype::RAW
        | linktype::RAW_OLD_BSD
        | linktype::RAW_OLD_OPENBSD
        | linktype::IPV4
        | linktype::IPV6 => match LaxSlicedPacket::from_ip(data) {
            Ok(p) => p,
            Err(_) => return Decoded::Malformed("raw IP frame without a valid IP header"),
        },
        linktype::NULL | linktype::LOOP => {
            // 4-byte address family: host byte order for NULL, network order for LOOP.
            // AF_INET is 2 everywhere; AF_INET6 is 10, 24, 28 or 30 depending on the OS.
            let Some(hdr) = data.get(..4) else {
                return Decoded::Malformed("frame shorter than a loopback header");
            };
            let le = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let be = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let family = if le < 256 { le } else { be };
            match family {
                2 | 10 | 24 | 28 | 30 => match LaxSlicedPacket::from_ip(&data[4..]) {
                    Ok(p) => p,
                    Err(_) => return Decoded::Malformed("loopback frame without an IP header"),
                },
                _ => return Decoded::Other,
            }
        }
        _ => return Decoded::Malformed("unsupported link type"),
    };
    from_lax(lax, orig_len.saturating_sub(data.len() as u32))
}

/// PPPoE session frames (EtherType 0x8864) carry IP after a 6-byte PPPoE header and a 2-byte
/// PPP protocol field; etherparse stops at the EtherType, so step over them here.
fn pppoe_payload<'a>(p: &LaxSlicedPacket<'a>) -> Option<(EtherType, &'a [u8])> {
    if p.net.is_some() {
        return None;
    }
    let payload = match p.link_exts.last() {
        Some(etherparse::LaxLinkExtSlice::Vlan(v)) => v.payload(),
        _ => match &p.link {
            Some(etherparse::LinkSlice::Ethernet2(e)) => e.payload(),
            _ => return None,
        },
    };
    if payload.ether_type != EtherType(0x8864) {
        return None;
    }
    let body = payload.payload;
    let proto = u16::from_be_bytes([*body.get(6)?, *body.get(7)?]);
    let ether_type = match proto {
        0x0021 => EtherType::IPV4,
        0x0057 => EtherType::IPV6,
        _ => return None,
    };
    Some((ether_type, body.get(8..)?))
}

fn from_lax(p: LaxSlicedPacket<'_>, cut: u32) -> Decoded<'_> {
    // Bytes of the IP payload the header declares but the capture does not hold (snaplen):
    // taken from the IP length, not the frame length, so link trailers and padding never count.
    let (src_ip, dst_ip, ttl, fragmented, missing, carries_tcp) = match &p.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            let pl = v4.payload();
            let declared = usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4);
            let missing = if pl.incomplete && h.total_len() > 0 {
                declared.saturating_sub(pl.payload.len())
            } else {
                0
            };
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.ttl(),
                pl.fragmented,
                missing,
                pl.ip_number == IpNumber::TCP,
            )
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            let pl = v6.payload();
            let declared =
                usize::from(h.payload_length()).saturating_sub(v6.extensions().slice().len());
            let missing = if pl.incomplete && h.payload_length() > 0 {
                declared.saturating_sub(pl.payload.len())
            } else {
                0
            };
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.hop_limit(),
                pl.fragmented,
                missing,
                pl.ip_number == IpNumber::TCP,
            )
        }
        _ => return Decoded::Other,
    };
    let _ = cut;
    if fragmented {
        return if carries_tcp {
            Decoded::TcpFragment
        } else {
            Decoded::Other
        };
    }
    match p.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let mut flags = 0u8;
            for (set, bit) in [
                (tcp.fin(), Flags::FIN),
                (tcp.syn(), Flags::SYN),
                (tcp.rst(), Flags::RST),
                (tcp.psh(), Flags::PSH),
                (tcp.ack(), Flags::ACK),
            ] {
                if set {
                    flags |= bit;
                }
            }
            Decoded::Tcp(Segment {
                src: SocketAddr::new(src_ip, tcp.source_port()),
                dst: SocketAddr::new(dst_ip, tcp.destination_port()),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                flags: Flags(flags),
                window: tcp.window_size(),
                payload: tcp.payload(),
                missing: u32::try_from(missing).unwrap_or(u32::MAX),
                ttl,
            })
        }
        Some(TransportSlice::Icmpv4(icmp)) if icmp.type_u8() == 3 && icmp.code_u8() != 4 => {
            quoted(src_ip, icmp.code_u8(), false, icmp.payload())
        }
        Some(TransportSlice::Icmpv6(icmp)) if icmp.type_u8() == 1 => {
            quoted(src_ip, icmp.code_u8(), true, icmp.payload())
        }
        Some(_) => Decoded::Other,
        None => {
            let is_tcp = p
                .net
                .as_ref()
                .and_then(|n| n.ip_payload_ref())
                .is_some_and(|pl| pl.ip_number == IpNumber::TCP);
            if is_tcp {
                Decoded::Malformed("TCP header cut short (snaplen or corrupt frame)")
            } else {
                Decoded::Other
            }
        }
    }
}

/// The TCP segment an ICMP error quotes: the IP header it was sent with and at least the
/// first 8 bytes of its TCP header (ports and sequence number), all RFC 792 guarantees.
#[cold]
#[inline(never)]
fn quoted(from: IpAddr, code: u8, v6: bool, q: &[u8]) -> Decoded<'_> {
    let (src, dst, tcp) = match (v6, q.first().map(|b| b >> 4)) {
        (false, Some(4)) => {
            let ihl = usize::from(q[0] & 0x0f) * 4;
            // The quoted packet must be TCP, and the first (or only) fragment.
            let first_fragment = q
                .get(6..8)
                .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x1fff == 0);
            if ihl < 20 || q.get(9) != Some(&6) || !first_fragment {
                return Decoded::Other;
            }
            let (Some(s), Some(d)) = (q.get(12..16), q.get(16..20)) else {
                return Decoded::Other;
            };
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            (ip(s), ip(d), q.get(ihl..))
        }
        (true, Some(6)) => {
            // Only a segment right after the fixed header (no extension headers).
            if q.get(6) != Some(&6) {
                return Decoded::Other;
            }
            let ip = |b: Option<&[u8]>| {
                let b: [u8; 16] = b?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            let (Some(s), Some(d)) = (ip(q.get(8..24)), ip(q.get(24..40))) else {
                return Decoded::Other;
            };
            (s, d, q.get(40..))
        }
        _ => return Decoded::Other,
    };
    let Some(t) = tcp.and_then(|t| t.get(..8)) else {
        return Decoded::Other;
    };
    Decoded::Unreachable(Unreachable {
        from,
        src: SocketAddr::new(src, u16::from_be_bytes([t[0], t[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([t[2], t[3]])),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        code,
        v6,
    })
}

#[cfg(test)]
mod test {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_v4(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 8080, 1000, 65535)
            .ack(7)
            .psh();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn raw_ipv4_tcp_is_decoded() {
        let pkt = tcp_v4(b"GET / HTTP/1.1\r\n\r\n");
        let Decoded::Tcp(s) = decode(linktype::RAW, &pkt, pkt.len() as u32) else {
            panic!("not decoded as TCP");
        };
        assert_eq!(s.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(s.dst, "10.0.0.2:8080".parse().unwrap());
        assert_eq!(s.seq, 1000);
        assert!(s.flags.ack());
        assert_eq!(s.payload, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.missing, 0);
    }

    #[test]
    fn fragments_of_tcp_packets_are_told_apart_from_other_traffic() {
        let pkt = tcp_v4(&[b'x'; 100]);
        let Some((first, rest)) = crate::synth::fragment_ipv4(&pkt, 48) else {
            panic!("not split");
        };
        for f in [&first, &rest] {
            assert!(matches!(
                decode(linktype::RAW, f, f.len() as u32),
                Decoded::TcpFragment
            ));
        }
        // IPv6: a fragment header (44) whose next header is TCP (6), first fragment.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 24, 44, 64];
        v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        v6.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 7]);
        v6.extend_from_slice(&[0u8; 16]);
        assert!(matches!(
            decode(linktype::RAW, &v6, v6.len() as u32),
            Decoded::TcpFragment
        ));
        // A fragment of anything else (UDP here) is just not TCP.
        let mut udp = first.clone();
        udp[9] = 17;
        assert!(matches!(
            decode(linktype::RAW, &udp, udp.len() as u32),
            Decoded::Other
        ));
    }

    /// An ICMPv4 destination unreachable (`code`) from 10.0.0.254 quoting `quote`.
    fn icmp_v4(code: u8, quote: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 254], [10, 0, 0, 1], 64)
            .icmpv4_raw(3, code, [0; 4])
            .write(&mut out, quote)
            .unwrap();
        out
    }

    #[test]
    fn an_icmp_unreachable_names_the_quoted_tcp_segment() {
        let syn = tcp_v4(b"");
        let pkt = icmp_v4(13, &syn[..28]);
        let Decoded::Unreachable(u) = decode(linktype::RAW, &pkt, pkt.len() as u32) else {
            panic!("not decoded as an unreachable");
        };
        assert_eq!(
            (u.from, u.src, u.dst, u.seq, u.reason(), u.connect_error()),
            (
                "10.0.0.254".parse().unwrap(),
                "10.0.0.1:40000".parse().unwrap(),
                "10.0.0.2:8080".parse().unwrap(),
                1000,
                "communication administratively prohibited",
                "113: No route to host"
            )
        );
    }

    #[test]
    fn icmp_errors_that_name_no_tcp_segment_are_other_traffic() {
        let syn = tcp_v4(b"");
        let mut udp = syn[..28].to_vec();
        udp[9] = 17;
        let mut later_fragment = syn[..28].to_vec();
        later_fragment[7] = 0x10;
        for (what, pkt) in [
            ("fragmentation needed", icmp_v4(4, &syn[..28])),
            ("quote cut inside the TCP header", icmp_v4(1, &syn[..26])),
            ("quote cut inside the IP header", icmp_v4(1, &syn[..12])),
            ("a UDP datagram quoted", icmp_v4(1, &udp)),
            ("a later fragment quoted", icmp_v4(1, &later_fragment)),
        ] {
            assert!(
                matches!(
                    decode(linktype::RAW, &pkt, pkt.len() as u32),
                    Decoded::Other
                ),
                "{what}"
            );
        }
    }

    /// Every cut and every single-byte change of an ICMP error quoting a SYN (IPv4 and
    /// IPv6) decodes without a panic, and only the whole message names a segment.
    #[test]
    fn damaged_icmp_errors_are_not_a_panic() {
        let syn = tcp_v4(b"");
        let mut quote6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        quote6.extend_from_slice(&[1; 16]);
        quote6.extend_from_slice(&[2; 16]);
        quote6.extend_from_slice(&syn[20..28]);
        let mut v6 = Vec::new();
        PacketBuilder::ipv6([2; 16], [1; 16], 64)
            .icmpv6_raw(1, 1, [0; 4])
            .write(&mut v6, &quote6)
            .unwrap();
        for pkt in [icmp_v4(13, &syn[..28]), v6] {
            let names: Vec<bool> = (0..=pkt.len())
                .map(|cut| {
                    let p = &pkt[..cut];
                    matches!(
                        decode(linktype::RAW, p, pkt.len() as u32),
                        Decoded::Unreachable(_)
                    )
                })
                .collect();
            let only_whole: Vec<bool> = (0..=pkt.len()).map(|cut| cut == pkt.len()).collect();
            assert_eq!(names, only_whole);
            for i in 0..pkt.len() {
                for v in [0u8, 1, 6, 0x45, 0x60, 0xff] {
                    let mut p = pkt.clone();
                    p[i] = v;
                    let _ = decode(linktype::RAW, &p, p.len() as u32);
                }
            }
        }
    }

    #[test]
    fn snaplen_cut_counts_missing_payload() {
        let pkt = tcp_v4(&[b'x'; 100]);
        let cut = &pkt[..60];
        let Decoded::Tcp(s) = decode(linktype::RAW, cut, pkt.len() as u32) else {
            panic!("not decoded as TCP");
        };
        assert_eq!(s.payload.len(), 20);
        assert_eq!(s.missing, 80);
    }

    #[test]
    fn linux_sll_and_null_headers() {
        let ip = tcp_v4(b"x");
        let mut sll = vec![0u8; 16];
        sll[14] = 0x08;
        sll.extend_from_slice(&ip);
        assert!(matches!(
            decode(linktype::LINUX_SLL, &sll, sll.len() as u32),
            Decoded::Tcp(_)
        ));
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&ip);
        assert!(matches!(
            decode(linktype::NULL, &null, null.len() as u32),
            Decoded::Tcp(_)
        ));
    }

    /// The fast path agrees with etherparse on every frame it accepts, and accepts the
    /// common ones: well-formed frames of every shape (options, VLAN, IPv6, each link type)
    /// and the same frames with random bytes changed, cut or padded.
    #[test]
    fn fast_path_agrees_with_etherparse() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut accepted = 0;
        for i in 0..60_000u32 {
            let r = rnd();
            let payload: Vec<u8> = (0..(r % 64) as usize).map(|j| j as u8).collect();
            let tcp = |b: etherparse::PacketBuilderStep<etherparse::IpHeaders>| {
                let t = b.tcp(1000 + (r >> 8) as u16 % 100, 8080, (r >> 16) as u32, 512);
                let t = if r & 1 != 0 {
                    t.syn()
                } else {
                    t.ack((r >> 24) as u32)
                };
                let t = if r & 2 != 0 { t.fin() } else { t };
                let t = if r & 4 != 0 { t.rst() } else { t.psh() };
                if r & 8 != 0 {
                    t.options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
                        .unwrap_or_else(|_| unreachable!())
                } else {
                    t
                }
            };
            let v6 = (r >> 40) % 3 == 0;
            let (link, mut frame) = match (r >> 44) % 4 {
                0 => {
                    let b = PacketBuilder::ethernet2([1; 6], [2; 6]);
                    let ip = if v6 {
                        b.ipv6([1; 16], [2; 16], 64)
                    } else {
                        b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    };
                    let mut out = Vec::new();
                    let _ = tcp(ip).write(&mut out, &payload);
                    if (r >> 50) % 4 == 0 {
                        // an 802.1Q tag: etherparse's path
                        let inner = [out[12], out[13]];
                        out.splice(12..14, [0x81, 0x00, 0x00, 0x05, inner[0], inner[1]]);
                    }
                    (linktype::ETHERNET, out)
                }
                n => {
                    let ip = if v6 {
                        PacketBuilder::ipv6([1; 16], [2; 16], 64)
                    } else {
                        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    };
                    let mut out = Vec::new();
                    let _ = tcp(ip).write(&mut out, &payload);
                    match n {
                        1 => (linktype::RAW, out),
                        2 => {
                            let mut sll = vec![0u8; 16];
                            sll[14..16].copy_from_slice(&[
                                if v6 { 0x86 } else { 0x08 },
                                if v6 { 0xdd } else { 0 },
                            ]);
                            sll.extend_from_slice(&out);
                            (linktype::LINUX_SLL, sll)
                        }
                        _ => {
                            let mut sll2 = vec![0u8; 20];
                            sll2[0..2].copy_from_slice(&[
                                if v6 { 0x86 } else { 0x08 },
                                if v6 { 0xdd } else { 0 },
                            ]);
                            sll2.extend_from_slice(&out);
                            (linktype::LINUX_SLL2, sll2)
                        }
                    }
                }
            };
            let orig = frame.len() as u32;
            // Every other frame is damaged: bytes changed, cut short, or padded.
            if i % 2 == 1 && !frame.is_empty() {
                for _ in 0..1 + rnd() % 3 {
                    let at = (rnd() % frame.len() as u64) as usize;
                    let v = rnd() as u8;
                    match rnd() % 4 {
                        0 => frame.truncate(at),
                        1 => frame.extend(std::iter::repeat_n(v, at % 7)),
                        _ => frame[at] = v,
                    }
                    if frame.is_empty() {
                        break;
                    }
                }
            }
            let orig = orig.max(frame.len() as u32);
            if let Some(fast) = fast_tcp(link, &frame) {
                accepted += 1;
                let lax = decode_lax(link, &frame, orig);
                assert_eq!(
                    format!("{:?}", Decoded::Tcp(fast)),
                    format!("{lax:?}"),
                    "link {link}, frame {frame:02x?}"
                );
            } else if i % 2 == 0 && (r >> 50) % 4 != 0 {
                panic!("a well-formed frame took the slow path: link {link}, {frame:02x?}");
            }
        }
        assert!(accepted > 30_000, "{accepted}");
    }

    #[test]
    fn garbage_is_not_a_panic() {
        for lt in [0, 1, 101, 113, 276, 999] {
            for len in 0..64 {
                let junk: Vec<u8> = (0..len).map(|i| (i * 37 + lt as usize) as u8).collect();
                let _ = decode(lt, &junk, len as u32 + 10);
            }
        }
    }
}
