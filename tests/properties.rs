//! Property tests: how the packets are cut must not change what gatescope reports.
//!
//! - Any HTTP conversation, split into segments at arbitrary points, reordered within a window,
//!   with duplicated and overlapping retransmissions, yields exactly the exchanges and
//!   findings of the same conversation sent in order.
//! - The reassembler against a byte-map model on random segment sequences.

use gatescope::pipeline::{Analyzer, Collector, Config, Output};
use gatescope::reassembly::{Reassembler, StreamSink};
use gatescope::record::Record;
use gatescope::summary::Summary;
use gatescope::time::Ts;
use proptest::prelude::*;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Record>>>);

impl Output for Sink {
    fn record(&mut self, r: &Record) -> std::io::Result<()> {
        if let Ok(mut v) = self.0.lock() {
            v.push(r.clone());
        }
        Ok(())
    }
    fn summary(&mut self, _: &Summary) -> std::io::Result<()> {
        Ok(())
    }
}

/// One direction's bytes cut into (offset, bytes) segments.
type Cut = Vec<(usize, Vec<u8>)>;

fn tcp(from_client: bool, seq: u32, ack: u32, flags: &str, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = if from_client {
        (([10, 0, 0, 1], 40000u16), ([10, 0, 0, 2], 8080u16))
    } else {
        (([10, 0, 0, 2], 8080), ([10, 0, 0, 1], 40000))
    };
    let mut b = etherparse::PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 65535);
    // Every segment but the opening SYN carries an ACK.
    if !(flags == "S" && from_client) {
        b = b.ack(ack);
    }
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'F' => b.fin(),
            _ => b,
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("packet");
    out
}

const CISN: u32 = 0xffff_ff00; // wraps inside the conversation
const SISN: u32 = 0x7fff_fff0;

/// Runs one conversation: per exchange, the request's segments then the response's, then FINs.
fn analyze(exchanges: &[(Cut, Cut)], req_total: usize, resp_total: usize) -> Vec<String> {
    let sink = Sink::default();
    let cfg = Config {
        limits: Arc::new(Default::default()),
        backends: Arc::new(Vec::new()),
        threads: 1,
    };
    let mut a = Analyzer::new(&cfg, Collector::new(Box::new(sink.clone())));
    let mut t = 1_700_000_000_000_000i64;
    let mut push = |a: &mut Analyzer, p: Vec<u8>| {
        t += 10;
        a.packet(101, Ts(t), &p, p.len() as u32);
    };
    push(&mut a, tcp(true, CISN, 0, "S", b""));
    push(&mut a, tcp(false, SISN, CISN.wrapping_add(1), "S", b""));
    push(
        &mut a,
        tcp(true, CISN.wrapping_add(1), SISN.wrapping_add(1), "", b""),
    );
    for (req, resp) in exchanges {
        for (off, bytes) in req {
            push(
                &mut a,
                tcp(
                    true,
                    CISN.wrapping_add(1 + *off as u32),
                    SISN.wrapping_add(1),
                    "",
                    bytes,
                ),
            );
        }
        for (off, bytes) in resp {
            push(
                &mut a,
                tcp(
                    false,
                    SISN.wrapping_add(1 + *off as u32),
                    CISN.wrapping_add(1),
                    "",
                    bytes,
                ),
            );
        }
    }
    let (cfin, sfin) = (
        CISN.wrapping_add(1 + req_total as u32),
        SISN.wrapping_add(1 + resp_total as u32),
    );
    push(&mut a, tcp(true, cfin, sfin, "F", b""));
    push(&mut a, tcp(false, sfin, cfin.wrapping_add(1), "F", b""));
    push(
        &mut a,
        tcp(true, cfin.wrapping_add(1), sfin.wrapping_add(1), "", b""),
    );
    let _ = a.finish(Vec::new());
    let recs = sink.0.lock().map(|v| v.clone()).unwrap_or_default();
    recs.iter()
        .map(|r| match r {
            Record::Finding(f) => format!("finding {} ex {:?}", f.kind, f.exchange),
            Record::Exchange(e) => format!(
                "exchange {} {:?} {:?} {:?} {:?} req {} resp {}",
                e.index, e.method, e.target, e.status, e.outcome, e.request_bytes, e.response_bytes
            ),
            Record::Connection(c) => {
                format!("connection {:?} {} {}", c.close, c.exchanges, c.findings)
            }
        })
        .collect()
}

fn messages() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world".to_vec()),
        (
            b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4;x=1\r\nwiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n".to_vec(),
        ),
        (b"HEAD /c HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n".to_vec()),
        (b"GET /d HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec()),
        (
            b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nxyz".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno".to_vec(),
        ),
        (b"GET /f HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdefg".to_vec()),
    ]
}

/// Cuts `data` (at stream offset `base`) at the given points, then shuffles within a window
/// and adds duplicates and overlapping retransmissions.
fn mangle(
    data: &[u8],
    base: usize,
    cuts: &[usize],
    swaps: &[(usize, usize)],
    dups: &[(usize, usize, usize)],
) -> Cut {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % data.len().max(1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    let mut segs: Cut = points
        .windows(2)
        .map(|w| (base + w[0], data[w[0]..w[1]].to_vec()))
        .collect();
    for &(i, d) in swaps {
        if segs.len() > 1 {
            let i = i % segs.len();
            let j = (i + 1 + d % 3).min(segs.len() - 1);
            segs.swap(i, j);
        }
    }
    for &(a, len, at) in dups {
        if data.is_empty() {
            continue;
        }
        let a = a % data.len();
        let b = (a + 1 + len % 40).min(data.len());
        let at = at % (segs.len() + 1);
        segs.insert(at, (base + a, data[a..b].to_vec()));
    }
    segs
}

fn plain(data: &[u8], base: usize) -> Cut {
    data.chunks(1000)
        .enumerate()
        .map(|(i, c)| (base + i * 1000, c.to_vec()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn segmentation_does_not_change_the_report(
        picks in prop::collection::vec(0usize..6, 1..5),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        swaps in prop::collection::vec((any::<usize>(), any::<usize>()), 0..6),
        dups in prop::collection::vec((any::<usize>(), any::<usize>(), any::<usize>()), 0..4),
    ) {
        let msgs = messages();
        let (mut roff, mut soff) = (0usize, 0usize);
        let mut canonical = Vec::new();
        let mut mangled = Vec::new();
        for (k, &p) in picks.iter().enumerate() {
            let (req, resp) = &msgs[p];
            canonical.push((plain(req, roff), plain(resp, soff)));
            let shift = k * 7;
            let c: Vec<usize> = cuts.iter().map(|x| x.wrapping_add(shift)).collect();
            mangled.push((mangle(req, roff, &c, &swaps, &dups), mangle(resp, soff, &c, &swaps, &dups)));
            roff += req.len();
            soff += resp.len();
        }
        let want = analyze(&canonical, roff, soff);
        let got = analyze(&mangled, roff, soff);
        prop_assert_eq!(got, want);
    }
}

/// The reference: a byte map where the first write of each offset wins.
struct Model {
    bytes: Vec<Option<u8>>,
}

impl Model {
    fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if self.bytes.len() <= off + i {
                self.bytes.resize(off + i + 1, None);
            }
            if self.bytes[off + i].is_none() {
                self.bytes[off + i] = Some(b);
            }
        }
    }
    /// The contiguous prefix from 0.
    fn prefix(&self) -> Vec<u8> {
        self.bytes.iter().map_while(|b| *b).collect()
    }
}

#[derive(Default)]
struct Tape(Vec<u8>);

impl StreamSink for Tape {
    fn data(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn gap(&mut self, len: u64) {
        self.0.extend(std::iter::repeat_n(b'?', len as usize));
    }
    fn fin(&mut self) {}
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn reassembler_delivers_the_first_copy_of_every_contiguous_byte(
        base in any::<u32>(),
        segs in prop::collection::vec((0usize..300, prop::collection::vec(any::<u8>(), 0..40)), 0..40),
    ) {
        let mut r = Reassembler::new(base, 1 << 20, 1 << 10);
        let mut model = Model { bytes: Vec::new() };
        let mut tape = Tape::default();
        for (off, data) in &segs {
            r.segment(base.wrapping_add(*off as u32), data, 0, false, &mut tape);
            model.write(*off, data);
        }
        prop_assert_eq!(&tape.0, &model.prefix());
        // Flushing delivers everything else, holes as gaps, in place.
        r.flush(&mut tape);
        let full: Vec<u8> = model.bytes.iter().map(|b| b.unwrap_or(b'?')).collect();
        prop_assert_eq!(tape.0.len(), full.len());
        for (i, (&got, want)) in tape.0.iter().zip(model.bytes.iter()).enumerate() {
            if let Some(w) = want {
                prop_assert_eq!(got, *w, "byte {}", i);
            }
        }
    }

    #[test]
    fn reassembler_stays_within_its_buffer_bound(
        segs in prop::collection::vec((1usize..100_000, 1usize..2000), 0..200),
    ) {
        let mut r = Reassembler::new(0, 8192, 16);
        let mut tape = Tape::default();
        let data = vec![7u8; 2000];
        for (off, len) in segs {
            r.segment(off as u32, &data[..len], 0, false, &mut tape);
            prop_assert!(r.buffered() <= 8192);
        }
    }
}
