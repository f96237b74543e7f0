//! Adversarial traffic: captures built to push one of gatescope's bounds each (see
//! [`crate::limits`]). `gatescope-gen adversarial KIND` writes them to a file;
//! `tests/adversarial.rs` feeds smaller ones straight into the connection table and checks that
//! state stays within the caps; `scripts/adversarial-rss.sh` measures peak memory on the full
//! sizes.
//!
//! Every packet is Ethernet + IPv4 + TCP between loopback addresses (127.0.0.0/8), built with
//! [`push_ethernet_ipv4_tcp`] into one reusable buffer and handed to a callback, so that a
//! hundred-megabyte capture is written at disk speed and never held in memory. Deterministic:
//! the same kind and count give the same bytes.

use super::{push_ethernet_ipv4_tcp, Tcp4Segment, TcpFlags};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};

/// 2026-01-15T10:00:00Z in microseconds: every capture starts here.
pub const T0: i64 = 1_768_471_200_000_000;

const MSS: usize = 1448;
const MSS_OPTION: [u8; 4] = [2, 4, (MSS >> 8) as u8, (MSS & 0xff) as u8];

/// The backend every adversarial capture talks to.
pub const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 8080);

/// One kind of hostile or broken traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attack {
    /// `count` SYNs from distinct 4-tuples, one microsecond apart, none answered.
    SynFlood,
    /// One connection whose server sends `count` segments of 1400 bytes, each beyond a
    /// one-byte hole that never fills.
    OooFlood,
    /// A response head of `count` bytes that never ends (no blank line).
    EndlessHead,
    /// A chunked body of `count` one-byte chunks, never a last chunk.
    TinyChunks,
    /// Two responses, chunk size `7fffffffffffffff` (2^63−1, the largest a gateway's signed
    /// 64-bit length holds: valid) and `8000000000000000` (2^63: too large), each followed by
    /// `count` bytes and the backend's FIN.
    HugeChunk,
    /// Two responses, Content-Length 9223372036854775807 (2^63−1: valid) and
    /// 9223372036854775808 (too large), each followed by `count` bytes of body and the
    /// backend's FIN.
    HugeContentLength,
    /// `count` pipelined requests on one connection, none answered.
    ManyPending,
    /// `count` SYNs on one 4-tuple, each with a new ISN (each starts a new connection), all
    /// at the same packet time.
    IsnChurn,
    /// `count` connections, each with one request for its own long target that the backend
    /// answers with a reset, all within seconds: every failure waits for a retry that never
    /// comes.
    RetryFlood,
}

impl Attack {
    pub const ALL: [Attack; 9] = [
        Attack::SynFlood,
        Attack::OooFlood,
        Attack::EndlessHead,
        Attack::TinyChunks,
        Attack::HugeChunk,
        Attack::HugeContentLength,
        Attack::ManyPending,
        Attack::IsnChurn,
        Attack::RetryFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::SynFlood => "syn-flood",
            Attack::OooFlood => "ooo-flood",
            Attack::EndlessHead => "endless-head",
            Attack::TinyChunks => "tiny-chunks",
            Attack::HugeChunk => "huge-chunk",
            Attack::HugeContentLength => "huge-content-length",
            Attack::ManyPending => "many-pending",
            Attack::IsnChurn => "isn-churn",
            Attack::RetryFlood => "retry-flood",
        }
    }

    pub fn from_name(s: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == s)
    }

    /// What `count` means for this kind, and its default (the full size that
    /// `scripts/adversarial-rss.sh` measures).
    pub fn default_count(self) -> u64 {
        match self {
            Attack::SynFlood => 1_000_000,
            Attack::OooFlood => 50_000,
            Attack::EndlessHead => 64 << 20,
            Attack::TinyChunks => 10_000_000,
            Attack::HugeChunk | Attack::HugeContentLength => 1 << 20,
            Attack::ManyPending => 10_000,
            Attack::IsnChurn => 2_000_000,
            Attack::RetryFlood => 100_000,
        }
    }

    /// What gatescope is expected to say about it.
    pub fn expected(self) -> &'static str {
        match self {
            Attack::SynFlood => {
                "connections beyond --max-connections evicted (counted in the summary), limit_reached max_connections once per worker; no connect_timeout (no SYN waited 1 s or was retried)"
            }
            Attack::OooFlood => {
                "limit_reached max_ooo_bytes once; holes become capture gaps; ooo_overflows counted"
            }
            Attack::EndlessHead => "head_too_large, then limit_reached head_buffer_cap",
            Attack::TinyChunks => "nothing held: the body is counted, not kept",
            Attack::HugeChunk => "truncated_body for the 2^63-1 chunk, invalid_chunk for 2^63",
            Attack::HugeContentLength => {
                "truncated_body for 2^63-1, invalid_content_length for 2^63"
            }
            Attack::ManyPending => "limit_reached max_pending once",
            Attack::IsnChurn => "one connection tracked at a time; nothing grows with the count",
            Attack::RetryFlood => {
                "reset_before_response for each; at most 65,536 wait for a retry, the rest counted as untracked (summary retries)"
            }
        }
    }
}

/// Writes every frame of an attack to `emit` as (timestamp µs, Ethernet frame). Returns the
/// number of frames.
pub fn generate<F>(attack: Attack, count: u64, emit: F) -> io::Result<u64>
where
    F: FnMut(i64, &[u8]) -> io::Result<()>,
{
    let mut w = Wire {
        emit,
        buf: Vec::with_capacity(2048),
        ts: T0,
        frames: 0,
    };
    match attack {
        Attack::SynFlood => syn_flood(&mut w, count)?,
        Attack::OooFlood => ooo_flood(&mut w, count)?,
        Attack::EndlessHead => endless_head(&mut w, count)?,
        Attack::TinyChunks => tiny_chunks(&mut w, count)?,
        Attack::HugeChunk => {
            let heads: [&[u8]; 2] = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000000\r\n",
            ];
            huge(&mut w, &heads, count)?
        }
        Attack::HugeContentLength => {
            let heads: [&[u8]; 2] = [
                b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n",
            ];
            huge(&mut w, &heads, count)?
        }
        Attack::ManyPending => many_pending(&mut w, count)?,
        Attack::IsnChurn => isn_churn(&mut w, count)?,
        Attack::RetryFlood => retry_flood(&mut w, count)?,
    }
    Ok(w.frames)
}

/// Writes an attack as a pcap file (Ethernet, microseconds) into `out`. Returns the number of
/// frames.
pub fn write_pcap<W: Write>(attack: Attack, count: u64, out: W) -> io::Result<u64> {
    let mut pcap = super::PcapOptions::new(super::LinkType::Ethernet)
        .snaplen(65_535)
        .create(out)?;
    let n = generate(attack, count, |ts, frame| pcap.write_frame(ts, frame))?;
    pcap.flush()?;
    Ok(n)
}

struct Wire<F> {
    emit: F,
    buf: Vec<u8>,
    ts: i64,
    frames: u64,
}

impl<F: FnMut(i64, &[u8]) -> io::Result<()>> Wire<F> {
    fn frame(&mut self, seg: &Tcp4Segment, options: &[u8], payload: &[u8]) -> io::Result<()> {
        self.buf.clear();
        push_ethernet_ipv4_tcp(&mut self.buf, seg, options, payload)?;
        (self.emit)(self.ts, &self.buf)?;
        self.frames += 1;
        self.ts += 10;
        Ok(())
    }
}

/// One connection's sequence accounting (offsets relative to ISN + 1).
struct Conn {
    client: SocketAddrV4,
    c_isn: u32,
    s_isn: u32,
    c_next: u64,
    s_next: u64,
    ip_id: u16,
}

impl Conn {
    fn new(port: u16) -> Conn {
        Conn::from(
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), port),
            u32::from(port),
        )
    }

    /// Connection `i` of many: 50 000 ports per client address, client addresses from
    /// 127.1.0.0 up (as in the SYN flood), so that no 4-tuple is reused.
    fn numbered(i: u64) -> Conn {
        let host = u32::from(Ipv4Addr::new(127, 1, 0, 0)) + (i / 50_000) as u32;
        let client = SocketAddrV4::new(Ipv4Addr::from(host), 10_000 + (i % 50_000) as u16);
        Conn::from(client, i as u32)
    }

    fn from(client: SocketAddrV4, seed: u32) -> Conn {
        let p = seed;
        Conn {
            client,
            c_isn: p.wrapping_mul(0x9e37_79b9),
            s_isn: p.wrapping_mul(0x85eb_ca6b) ^ 0x5bd1_e995,
            c_next: 0,
            s_next: 0,
            ip_id: 1,
        }
    }

    /// A segment from one side at relative offset `rel` (`None`: the SYN's own number),
    /// acknowledging everything the peer has sent.
    fn seg(&mut self, from_client: bool, rel: Option<u64>, flags: TcpFlags) -> Tcp4Segment {
        let (src, dst, isn, peer_isn, peer_next) = if from_client {
            (self.client, SERVER, self.c_isn, self.s_isn, self.s_next)
        } else {
            (SERVER, self.client, self.s_isn, self.c_isn, self.c_next)
        };
        self.ip_id = self.ip_id.wrapping_add(1);
        Tcp4Segment {
            src,
            dst,
            ip_id: self.ip_id,
            ttl: 64,
            seq: match rel {
                Some(r) => isn.wrapping_add(1).wrapping_add(r as u32),
                None => isn,
            },
            ack: peer_isn.wrapping_add(1).wrapping_add(peer_next as u32),
            flags,
            window: 65_535,
        }
    }

    fn handshake<F: FnMut(i64, &[u8]) -> io::Result<()>>(
        &mut self,
        w: &mut Wire<F>,
    ) -> io::Result<()> {
        let syn = self.seg(true, None, TcpFlags::SYN);
        w.frame(&syn, &MSS_OPTION, &[])?;
        let synack = self.seg(false, None, TcpFlags::SYN | TcpFlags::ACK);
        w.frame(&synack, &MSS_OPTION, &[])?;
        let ack = self.seg(true, Some(0), TcpFlags::ACK);
        w.frame(&ack, &[], &[])
    }

    /// `data` from one side in MSS segments; the peer ACKs every 16 segments and at the end.
    fn send<F: FnMut(i64, &[u8]) -> io::Result<()>>(
        &mut self,
        w: &mut Wire<F>,
        from_client: bool,
        data: &[u8],
    ) -> io::Result<()> {
        for (i, chunk) in data.chunks(MSS).enumerate() {
            let rel = if from_client {
                self.c_next
            } else {
                self.s_next
            };
            let seg = self.seg(from_client, Some(rel), TcpFlags::ACK | TcpFlags::PSH);
            w.frame(&seg, &[], chunk)?;
            if from_client {
                self.c_next += chunk.len() as u64;
            } else {
                self.s_next += chunk.len() as u64;
            }
            if i % 16 == 15 {
                self.ack(w, !from_client)?;
            }
        }
        self.ack(w, !from_client)
    }

    fn ack<F: FnMut(i64, &[u8]) -> io::Result<()>>(
        &mut self,
        w: &mut Wire<F>,
        from_client: bool,
    ) -> io::Result<()> {
        let rel = if from_client {
            self.c_next
        } else {
            self.s_next
        };
        let seg = self.seg(from_client, Some(rel), TcpFlags::ACK);
        w.frame(&seg, &[], &[])
    }

    fn fin<F: FnMut(i64, &[u8]) -> io::Result<()>>(
        &mut self,
        w: &mut Wire<F>,
        from_client: bool,
    ) -> io::Result<()> {
        let rel = if from_client {
            self.c_next
        } else {
            self.s_next
        };
        let seg = self.seg(from_client, Some(rel), TcpFlags::FIN | TcpFlags::ACK);
        w.frame(&seg, &[], &[])?;
        if from_client {
            self.c_next += 1;
        } else {
            self.s_next += 1;
        }
        self.ack(w, !from_client)
    }
}

const GET: &[u8] = b"GET /attack HTTP/1.1\r\nHost: backend\r\n\r\n";

fn syn_flood<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    count: u64,
) -> io::Result<()> {
    for i in 0..count {
        // 50 000 ports per client address, client addresses from 127.1.0.0 up.
        let host = u32::from(Ipv4Addr::new(127, 1, 0, 0)) + (i / 50_000) as u32;
        let client = SocketAddrV4::new(Ipv4Addr::from(host), 10_000 + (i % 50_000) as u16);
        let seg = Tcp4Segment {
            src: client,
            dst: SERVER,
            ip_id: i as u16,
            ttl: 64,
            seq: (i as u32).wrapping_mul(0x9e37_79b9),
            ack: 0,
            flags: TcpFlags::SYN,
            window: 65_535,
        };
        w.ts = T0 + i as i64;
        w.frame(&seg, &MSS_OPTION, &[])?;
    }
    Ok(())
}

fn isn_churn<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    count: u64,
) -> io::Result<()> {
    let client = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 40_004);
    for i in 0..count {
        let seg = Tcp4Segment {
            src: client,
            dst: SERVER,
            ip_id: i as u16,
            ttl: 64,
            seq: (i as u32).wrapping_mul(0x9e37_79b9),
            ack: 0,
            flags: TcpFlags::SYN,
            window: 65_535,
        };
        w.ts = T0;
        w.frame(&seg, &MSS_OPTION, &[])?;
    }
    Ok(())
}

fn ooo_flood<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    count: u64,
) -> io::Result<()> {
    let mut c = Conn::new(40_000);
    c.handshake(w)?;
    c.send(w, true, GET)?;
    let payload = [b'o'; 1400];
    for i in 0..count {
        // Byte 0 and one byte between every two segments are never sent.
        let rel = 1 + i * 1401;
        let seg = c.seg(false, Some(rel), TcpFlags::ACK);
        w.frame(&seg, &[], &payload)?;
        if i % 64 == 63 {
            // The proxy keeps acknowledging only what it has: duplicate ACKs.
            c.ack(w, true)?;
        }
    }
    Ok(())
}

fn endless_head<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    bytes: u64,
) -> io::Result<()> {
    let mut c = Conn::new(40_001);
    c.handshake(w)?;
    c.send(w, true, GET)?;
    let mut head = Vec::with_capacity(MSS * 64);
    head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let mut sent = 0u64;
    let mut line = 0u64;
    while sent < bytes {
        while head.len() < MSS * 32 {
            line += 1;
            let _ = write!(head, "X-Filler-{line:08}: ");
            head.extend_from_slice(&[b'a'; 72]);
            head.extend_from_slice(b"\r\n");
        }
        let n = (head.len() as u64).min(bytes - sent) as usize;
        c.send(w, false, &head[..n])?;
        sent += n as u64;
        head.drain(..n);
    }
    Ok(())
}

fn tiny_chunks<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    chunks: u64,
) -> io::Result<()> {
    let mut c = Conn::new(40_002);
    c.handshake(w)?;
    c.send(w, true, GET)?;
    c.send(
        w,
        false,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    const PER_SEND: u64 = 4096;
    let block: Vec<u8> = b"1\r\nx\r\n".repeat(PER_SEND as usize);
    let mut left = chunks;
    while left > 0 {
        let n = left.min(PER_SEND);
        c.send(w, false, &block[..n as usize * 6])?;
        left -= n;
    }
    Ok(())
}

fn huge<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    heads: &[&[u8]],
    body: u64,
) -> io::Result<()> {
    let filler = vec![b'b'; 64 * 1024];
    for (i, head) in heads.iter().enumerate() {
        let mut c = Conn::new(40_010 + i as u16);
        c.handshake(w)?;
        c.send(w, true, GET)?;
        c.send(w, false, head)?;
        let mut left = body;
        while left > 0 {
            let n = left.min(filler.len() as u64) as usize;
            c.send(w, false, &filler[..n])?;
            left -= n as u64;
        }
        c.fin(w, false)?;
        c.fin(w, true)?;
    }
    Ok(())
}

fn retry_flood<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    count: u64,
) -> io::Result<()> {
    let filler = [b'q'; 600];
    let mut request = Vec::with_capacity(1024);
    for i in 0..count {
        let mut c = Conn::numbered(i);
        c.handshake(w)?;
        request.clear();
        let _ = write!(request, "GET /retry/{i}/");
        request.extend_from_slice(&filler);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: backend\r\n\r\n");
        c.send(w, true, &request)?;
        let rst = c.seg(false, Some(c.s_next), TcpFlags::RST | TcpFlags::ACK);
        w.frame(&rst, &[], &[])?;
    }
    Ok(())
}

fn many_pending<F: FnMut(i64, &[u8]) -> io::Result<()>>(
    w: &mut Wire<F>,
    requests: u64,
) -> io::Result<()> {
    let mut c = Conn::new(40_003);
    c.handshake(w)?;
    let mut batch = Vec::with_capacity(MSS * 16);
    for i in 0..requests {
        let _ = write!(batch, "GET /pending/{i} HTTP/1.1\r\nHost: backend\r\n\r\n");
        if batch.len() >= MSS * 15 || i + 1 == requests {
            c.send(w, true, &batch)?;
            batch.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn every_attack_is_deterministic_and_named() {
        for a in Attack::ALL {
            assert_eq!(Attack::from_name(a.name()), Some(a));
            let mut one = Vec::new();
            let mut two = Vec::new();
            write_pcap(a, 3, &mut one).expect("write");
            write_pcap(a, 3, &mut two).expect("write");
            assert_eq!(one, two, "{}", a.name());
            assert!(one.len() > 24, "{}", a.name());
        }
    }
}
