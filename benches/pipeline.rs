//! Micro-benchmarks of the hot path, and the whole pipeline per megabyte of capture.
//!
//! `cargo bench --bench pipeline` (or `make bench`) measures; `cargo test --all-targets` runs
//! every benchmark once, as a test. Inputs are generated in memory with `gatescope::synth`, so
//! nothing here depends on files outside the repository.
//!
//! * `reassembly/*`: one direction's stream through [`Reassembler`], in order and with every
//!   other segment swapped (out-of-order buffering).
//! * `h1/*`: a response head parsed by [`Parser`]; bodies framed by Content-Length and by
//!   chunked encoding (counted, never copied).
//! * `decode/*`: one Ethernet/IPv4/TCP frame to a segment.
//! * `pipeline/*`: a capture of keep-alive exchanges (Ethernet, ~1,500-byte frames) through the
//!   whole analysis with JSON output to a sink: from frames in memory (no reading), and from a
//!   capture file with one and two threads.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gatescope::capture;
use gatescope::decode::{self, linktype};
use gatescope::h1::{Framing, Parser, Role, Step};
use gatescope::limits::Limits;
use gatescope::pipeline::{Analyzer, Collector, Config, Output};
use gatescope::reassembly::{Reassembler, StreamSink};
use gatescope::record::Record;
use gatescope::report::json::JsonLines;
use gatescope::summary::Summary;
use gatescope::synth::{merge_by_time, Conversation, LinkType, PcapWriter, SplitMix64};
use gatescope::time::Ts;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// Counts what a stream delivers.
#[derive(Default)]
struct Count(u64);

impl StreamSink for Count {
    fn data(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
    fn gap(&mut self, len: u64) {
        self.0 += len;
    }
    fn fin(&mut self) {}
}

const MSS: usize = 1448;

fn reassembly(c: &mut Criterion) {
    let payload = vec![b'x'; MSS];
    let segments = 1024u32;
    let mut g = c.benchmark_group("reassembly");
    g.throughput(Throughput::Bytes(u64::from(segments) * MSS as u64));
    let limits = Limits::default();
    g.bench_function("in_order", |b| {
        b.iter(|| {
            let mut r = Reassembler::new(1000, limits.max_ooo_bytes, limits.max_ooo_segments);
            let mut sink = Count::default();
            for i in 0..segments {
                let seq = 1000u32.wrapping_add(i * MSS as u32);
                r.segment(seq, &payload, 0, false, &mut sink);
            }
            black_box(sink.0)
        })
    });
    g.bench_function("pairs_swapped", |b| {
        b.iter(|| {
            let mut r = Reassembler::new(1000, limits.max_ooo_bytes, limits.max_ooo_segments);
            let mut sink = Count::default();
            for i in (0..segments).step_by(2) {
                for j in [i + 1, i] {
                    let seq = 1000u32.wrapping_add(j * MSS as u32);
                    r.segment(seq, &payload, 0, false, &mut sink);
                }
            }
            black_box(sink.0)
        })
    });
    g.finish();
}

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 15 Jan 2026 10:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 65536\r\nConnection: keep-alive\r\nCache-Control: no-cache\r\nX-Request-Id: 3f2c9a1e-7b4d-4e8a-9c1f-5d6e7f8a9b0c\r\nVary: Accept-Encoding\r\n\r\n";

/// Steps `p` through `data` until everything is consumed; returns the steps taken.
fn run(p: &mut Parser, data: &[u8]) -> usize {
    let mut d = data;
    let mut steps = 0;
    while !d.is_empty() || p.owes_step() {
        let (n, step) = p.step(d);
        d = &d[n..];
        steps += 1;
        match step {
            Step::Head(h) => {
                black_box(&h);
                p.set_framing(Framing::Length(0));
            }
            Step::NeedMore if d.is_empty() => break,
            _ => {}
        }
    }
    steps
}

fn h1(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("h1");
    g.throughput(Throughput::Bytes(RESPONSE_HEAD.len() as u64));
    g.bench_function("response_head", |b| {
        b.iter(|| {
            let mut p = Parser::new(Role::Response, &limits);
            black_box(run(&mut p, black_box(RESPONSE_HEAD)))
        })
    });
    let body = vec![b'{'; 64 * 1024];
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("content_length_body", |b| {
        b.iter(|| {
            let mut p = Parser::new(Role::Response, &limits);
            p.set_framing(Framing::Length(body.len() as u64));
            let mut steps = 0;
            for part in body.chunks(MSS) {
                let (n, _) = p.step(part);
                steps += n;
            }
            black_box(steps)
        })
    });
    // 64 KiB in 4 KiB chunks, as an upstream that flushes per write sends it.
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b'x'; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    g.throughput(Throughput::Bytes(chunked.len() as u64));
    g.bench_function("chunked_body", |b| {
        b.iter(|| {
            let mut p = Parser::new(Role::Response, &limits);
            p.set_framing(Framing::Chunked);
            let mut steps = 0;
            for part in chunked.chunks(MSS) {
                let mut d = part;
                while !d.is_empty() {
                    let (n, _) = p.step(d);
                    d = &d[n..];
                    steps += 1;
                }
            }
            black_box(steps)
        })
    });
    g.finish();
}

/// A capture of `conns` keep-alive connections with `exchanges` each, as Ethernet frames.
fn capture(conns: u16, exchanges: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut all = Vec::new();
    for i in 0..conns {
        let client: SocketAddr = SocketAddr::from(([10, 0, 0, 1], 32768 + i));
        let server: SocketAddr = SocketAddr::from(([10, 0, 0, 2 + (i % 4) as u8], 8080));
        let mut conv =
            Conversation::new(client, server, 1_768_471_200_000_000 + i64::from(i) * 50).seed(seed);
        conv.handshake();
        for _ in 0..exchanges {
            let len = rng.range(200, 60_000) as usize;
            let req = format!(
                "GET /api/v1/items/{} HTTP/1.1\r\nHost: backend\r\nUser-Agent: bench\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
                rng.below(1_000_000)
            );
            conv.client_send(req.as_bytes());
            conv.advance(rng.range(100, 3_000) as i64);
            let mut resp = format!(
                "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
            )
            .into_bytes();
            resp.resize(resp.len() + len, b' ');
            conv.server_send(&resp);
            conv.advance(rng.range(100, 2_000) as i64);
        }
        conv.client_fin();
        conv.server_fin();
        all.push(conv);
    }
    let packets = merge_by_time(all);
    let mut w = PcapWriter::new(Vec::new(), LinkType::Ethernet).expect("pcap header");
    w.write_packets(&packets).expect("in memory");
    w.into_inner().expect("in memory")
}

/// Frames of a classic little-endian pcap: (ts µs, frame, length on the wire).
fn frames(pcap: &[u8]) -> Vec<(i64, &[u8], u32)> {
    let mut out = Vec::new();
    let mut pos = 24;
    while let Some(h) = pcap.get(pos..pos + 16) {
        let f = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let caplen = f(8) as usize;
        let Some(data) = pcap.get(pos + 16..pos + 16 + caplen) else {
            break;
        };
        out.push((i64::from(f(0)) * 1_000_000 + i64::from(f(4)), data, f(12)));
        pos += 16 + caplen;
    }
    out
}

fn decode_frames(c: &mut Criterion) {
    let pcap = capture(1, 4, 1);
    let all = frames(&pcap);
    let Some(&(_, frame, len)) = all.iter().find(|(_, f, _)| f.len() > 1000) else {
        return;
    };
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ethernet_ipv4_tcp", |b| {
        b.iter(|| black_box(decode::decode(linktype::ETHERNET, black_box(frame), len)))
    });
    g.finish();
}

/// JSON Lines into nothing (serialisation included, as in `--format json > /dev/null`).
fn json_sink() -> Box<dyn Output> {
    Box::new(JsonLines::new(io::sink(), serde_json::Map::new(), false))
}

/// Keeps the summary's exchange count, to check the run did its work.
struct Checked(Box<dyn Output>);

impl Output for Checked {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        self.0.record(r)
    }
    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.0.summary(s)
    }
    fn renderer(&self) -> Option<gatescope::pipeline::Render> {
        self.0.renderer()
    }
    fn rendered(&mut self, finding: bool, bytes: &[u8]) -> io::Result<()> {
        self.0.rendered(finding, bytes)
    }
}

fn config(threads: usize) -> Config {
    Config {
        limits: Arc::new(Limits::default()),
        backends: Arc::new(Vec::new()),
        threads,
    }
}

fn pipeline(c: &mut Criterion) {
    let pcap = capture(64, 24, 7);
    let all = frames(&pcap);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.pcap");
    std::fs::write(&path, &pcap).expect("write capture");
    let path = path.to_string_lossy().into_owned();
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(pcap.len() as u64));
    g.bench_function("frames_1_thread", |b| {
        b.iter(|| {
            let mut a = Analyzer::new(&config(1), Collector::new(Box::new(Checked(json_sink()))));
            for &(ts, frame, len) in &all {
                a.packet(linktype::ETHERNET, Ts(ts), frame, len);
            }
            let (summary, _) = a.finish(Vec::new());
            assert_eq!(summary.exchanges, 64 * 24);
        })
    });
    for threads in [1, 2] {
        g.bench_function(format!("file_{threads}_thread"), |b| {
            b.iter(|| {
                let mut a = Analyzer::new(
                    &config(threads),
                    Collector::new(Box::new(Checked(json_sink()))),
                );
                let read = capture::read_file(&path, None, &mut a);
                assert!(read.is_ok(), "{read:?}");
                let (summary, _) = a.finish(Vec::new());
                assert_eq!(summary.exchanges, 64 * 24);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, reassembly, h1, decode_frames, pipeline);
criterion_main!(benches);
