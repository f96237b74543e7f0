//! Hostile and broken traffic (`gatescope::synth::adversarial`, the captures of
//! `gatescope-gen adversarial`) fed straight into the connection table with small limits.
//! State is counted, never timed: after every few packets the table must hold no more
//! connections than `max_connections` (tombstones included) and no more out-of-order bytes
//! than connections × directions × `max_ooo_bytes`; at the end the bound that was hit must
//! have said so (a `limit_reached` finding, a summary counter).

use gatescope::decode::{self, linktype, Decoded};
use gatescope::flow::{FlowStats, FlowTable};
use gatescope::limits::Limits;
use gatescope::pipeline::{Analyzer, Collector, Config, Output, TICK_US};
use gatescope::record::{OrderKey, Record};
use gatescope::retries;
use gatescope::session::Ctx;
use gatescope::summary::Summary;
use gatescope::synth::adversarial::{self, Attack};
use gatescope::synth::Conversation;
use gatescope::time::Ts;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a run left behind, counted.
#[derive(Debug, Default)]
struct Run {
    /// Findings by kind.
    findings: BTreeMap<String, u64>,
    /// The `limit` named by each `limit_reached` finding, in order.
    limits: Vec<String>,
    connections: u64,
    exchanges: u64,
    stats: FlowStats,
    peak_tracked: usize,
    peak_buffered: usize,
    packets: u64,
}

/// Drives a connection table the way `pipeline` does (a tick every second of packet time) and
/// checks its bounds every `every` packets.
struct Driver {
    table: FlowTable,
    limits: Arc<Limits>,
    out: Vec<(OrderKey, Record)>,
    run: Run,
    next_tick: Option<i64>,
    last_ts: i64,
    every: u64,
}

impl Driver {
    fn new(limits: Limits, every: u64) -> Driver {
        let limits = Arc::new(limits);
        Driver {
            table: FlowTable::new(limits.clone(), Arc::new(Vec::new()), 1),
            limits,
            out: Vec::new(),
            run: Run::default(),
            next_tick: None,
            last_ts: 0,
            every,
        }
    }

    fn packet(&mut self, link: i32, ts: i64, data: &[u8]) {
        self.run.packets += 1;
        let frame = self.run.packets;
        self.last_ts = self.last_ts.max(ts);
        match self.next_tick {
            None => self.next_tick = Some(ts + TICK_US),
            Some(due) if ts >= due => {
                let mut ctx = Ctx {
                    ts: Ts(ts),
                    frame,
                    key_frame: frame,
                    out: &mut self.out,
                };
                self.table.tick(Ts(ts), &mut ctx);
                self.next_tick = Some(ts + TICK_US);
            }
            Some(_) => {}
        }
        if let Decoded::Tcp(seg) = decode::decode(link, data, data.len() as u32) {
            let mut ctx = Ctx {
                ts: Ts(ts),
                frame,
                key_frame: frame,
                out: &mut self.out,
            };
            self.table.segment(&seg, &mut ctx);
        }
        self.collect();
        if frame.is_multiple_of(self.every) {
            self.check();
        }
    }

    #[track_caller]
    fn check(&mut self) {
        let cap = self.limits.max_connections;
        let tracked = self.table.tracked();
        assert!(
            tracked <= cap,
            "{tracked} connections tracked, cap {cap} (packet {})",
            self.run.packets
        );
        let buffered = self.table.buffered_bytes();
        let ooo_cap = tracked * 2 * self.limits.max_ooo_bytes;
        assert!(
            buffered <= ooo_cap,
            "{buffered} out-of-order bytes held, cap {ooo_cap}"
        );
        self.run.peak_tracked = self.run.peak_tracked.max(tracked);
        self.run.peak_buffered = self.run.peak_buffered.max(buffered);
    }

    fn collect(&mut self) {
        for (_, r) in self.out.drain(..) {
            match r {
                Record::Finding(f) => {
                    *self
                        .run
                        .findings
                        .entry(f.kind.name().to_string())
                        .or_default() += 1;
                    if f.kind.name() == "limit_reached" {
                        let limit = f.evidence.get("limit").and_then(|v| v.as_str());
                        self.run.limits.push(limit.unwrap_or("?").to_string());
                    }
                }
                Record::Exchange(_) => self.run.exchanges += 1,
                Record::Connection(_) => self.run.connections += 1,
            }
        }
    }

    fn finish(mut self) -> Run {
        self.check();
        let mut ctx = Ctx {
            ts: Ts(self.last_ts),
            frame: self.run.packets,
            key_frame: u64::MAX,
            out: &mut self.out,
        };
        self.table.drain(&mut ctx);
        self.collect();
        assert_eq!(self.table.tracked(), 0);
        self.run.stats = self.table.stats.clone();
        assert_eq!(
            self.run.connections, self.run.stats.connections,
            "every connection is written once"
        );
        self.run
    }
}

fn attack(a: Attack, count: u64, limits: Limits, every: u64) -> Run {
    let mut d = Driver::new(limits, every);
    adversarial::generate(a, count, |ts, frame| {
        d.packet(linktype::ETHERNET, ts, frame);
        Ok(())
    })
    .expect("generate");
    d.finish()
}

fn small() -> Limits {
    Limits {
        max_connections: 1000,
        max_ooo_bytes: 64 * 1024,
        max_pending: 64,
        ..Limits::default()
    }
}

fn count(run: &Run, kind: &str) -> u64 {
    run.findings.get(kind).copied().unwrap_or(0)
}

#[test]
fn syn_flood_is_held_to_max_connections_and_evictions_are_counted() {
    let run = attack(Attack::SynFlood, 50_000, small(), 500);
    assert_eq!(run.peak_tracked, 1000);
    // Everything past the first thousand evicted the oldest SYN. The flood lasts 50 ms of
    // packet time: no SYN waited long enough (or was retried) to be a connect timeout.
    assert_eq!(run.stats.evicted, 49_000);
    assert_eq!(count(&run, "connect_timeout"), 0);
    assert_eq!(run.connections, 50_000);
    assert_eq!(run.limits, ["max_connections"]);
}

/// The whole analysis (one thread, small limits, no output) over an attack: its summary.
fn summarize(attack: Attack, count: u64) -> Summary {
    let cfg = Config {
        limits: Arc::new(small()),
        backends: Arc::new(Vec::new()),
        threads: 1,
    };
    let mut a = Analyzer::new(&cfg, Collector::new(Box::new(Discard)));
    adversarial::generate(attack, count, |ts, frame| {
        a.packet(linktype::ETHERNET, Ts(ts), frame, frame.len() as u32);
        Ok(())
    })
    .expect("generate");
    let (summary, err) = a.finish(Vec::new());
    assert!(err.is_none(), "{err:?}");
    summary
}

#[test]
fn syn_flood_evictions_reach_the_summary() {
    let summary = summarize(Attack::SynFlood, 5_000);
    assert_eq!(summary.flow.evicted, 4_000);
    assert!(
        summary
            .completeness_notes()
            .iter()
            .any(|n| n.contains("evicted")),
        "{:?}",
        summary.completeness_notes()
    );
    assert_eq!(summary.to_json()["tcp"]["evicted_connections"], 4_000);
}

/// A flood of failed requests no retry follows (each its own target, reset before any
/// response): at most `MAX_OPEN` wait for a retry, the rest are counted as untracked — the
/// summary says how many failures were not followed, and memory stays bounded.
#[test]
fn retry_flood_waits_for_at_most_max_open_and_counts_the_rest() {
    let flood = retries::MAX_OPEN as u64 + 1_000;
    let summary = summarize(Attack::RetryFlood, flood);
    let r = &summary.to_json()["retries"];
    assert_eq!(
        (
            r["failed_requests"].as_u64(),
            r["not_retried"].as_u64(),
            r["untracked"].as_u64()
        ),
        (Some(flood), Some(retries::MAX_OPEN as u64), Some(1_000))
    );
}

struct Discard;

impl Output for Discard {
    fn record(&mut self, _: &Record) -> std::io::Result<()> {
        Ok(())
    }
    fn summary(&mut self, _: &Summary) -> std::io::Result<()> {
        Ok(())
    }
}

/// Closed connections leave tombstones (so that stray packets after a close start nothing);
/// they count against `max_connections` too and must make room for new connections.
#[test]
fn tombstones_count_against_max_connections() {
    let mut d = Driver::new(small(), 50);
    for i in 0..5_000u32 {
        let client = format!("127.0.0.1:{}", 20_000 + i).parse().expect("addr");
        let server = "127.0.0.2:8080".parse().expect("addr");
        let mut c = Conversation::new(client, server, adversarial::T0 + i64::from(i) * 1_000);
        c.handshake()
            .client_send(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
            .server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .client_fin()
            .server_fin();
        for (ts, p) in c.packets() {
            d.packet(linktype::RAW, *ts, p);
        }
    }
    let run = d.finish();
    assert_eq!(run.peak_tracked, 1000);
    assert_eq!(run.connections, 5_000);
    assert_eq!(run.exchanges, 5_000);
    // Only tombstones were pushed out: no live connection was cut short.
    assert_eq!(run.stats.evicted, 0);
    assert!(run.findings.is_empty(), "{:?}", run.findings);
}

/// A 4-tuple that starts connection after connection (a new ISN each time) while packet time
/// stands still: one connection tracked at a time (that nothing else grows is measured by
/// `scripts/adversarial-rss.sh`).
#[test]
fn isn_churn_on_one_four_tuple_keeps_one_entry() {
    let run = attack(Attack::IsnChurn, 20_000, small(), 100);
    assert_eq!(run.peak_tracked, 1);
    assert_eq!(run.connections, 20_000);
    assert_eq!(run.stats.evicted, 0);
}

#[test]
fn ooo_flood_is_held_to_max_ooo_bytes_and_said_once() {
    let run = attack(Attack::OooFlood, 2_000, small(), 50);
    assert!(run.peak_buffered <= 64 * 1024, "{}", run.peak_buffered);
    assert!(run.peak_buffered > 32 * 1024, "the buffer was used");
    assert_eq!(run.limits, vec!["max_ooo_bytes".to_string()]);
    assert!(
        run.stats.ooo_overflows > 1_000,
        "{}",
        run.stats.ooo_overflows
    );
    assert_eq!(run.stats.out_of_order_segments, 2_000);
    // The never-filled holes (byte 0 and one between every two segments) are capture gaps.
    assert_eq!(run.stats.gap_bytes, 2_000);
    assert_eq!(count(&run, "capture_gap"), 1);
}

#[test]
fn endless_head_is_head_too_large_then_limit_reached() {
    let limits = Limits {
        head_buffer_cap: 64 * 1024,
        ..small()
    };
    let run = attack(Attack::EndlessHead, 1 << 20, limits, 100);
    assert_eq!(count(&run, "head_too_large"), 1);
    assert_eq!(run.limits, vec!["head_buffer_cap".to_string()]);
    assert_eq!(run.peak_tracked, 1);
}

#[test]
fn tiny_chunks_hold_nothing() {
    let run = attack(Attack::TinyChunks, 200_000, small(), 100);
    assert_eq!(run.peak_tracked, 1);
    assert_eq!(run.peak_buffered, 0);
    assert!(run.findings.is_empty(), "{:?}", run.findings);
    assert_eq!(run.exchanges, 1);
}

#[test]
fn huge_chunk_sizes_are_framed_or_rejected() {
    let run = attack(Attack::HugeChunk, 100_000, small(), 10);
    // 7fffffffffffffff is the largest valid size: the backend's FIN cuts the body short.
    assert_eq!(count(&run, "truncated_body"), 1);
    // 8000000000000000 does not fit a gateway's signed 64-bit length.
    assert_eq!(count(&run, "invalid_chunk"), 1);
    assert_eq!(run.exchanges, 2);
}

#[test]
fn huge_content_lengths_are_framed_or_rejected() {
    let run = attack(Attack::HugeContentLength, 100_000, small(), 10);
    assert_eq!(count(&run, "truncated_body"), 1);
    assert_eq!(count(&run, "invalid_content_length"), 1);
    assert_eq!(run.exchanges, 2);
}

#[test]
fn many_pending_requests_are_held_to_max_pending_and_said_once() {
    let run = attack(Attack::ManyPending, 2_000, small(), 10);
    assert_eq!(run.limits, vec!["max_pending".to_string()]);
    // Every request is written once: the ones pushed out of the queue, then the rest.
    assert_eq!(run.exchanges, 2_000);
}
