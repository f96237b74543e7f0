//! Bounds that protect gatescope's memory say so when they bite.

use gatescope::decode::{Flags, Segment};
use gatescope::flow::FlowTable;
use gatescope::limits::Limits;
use gatescope::record::{OrderKey, Record};
use gatescope::session::Ctx;
use gatescope::time::Ts;
use std::sync::Arc;

mod common;
use common::*;
use gatescope::synth::{merge_by_time, Conversation, LinkType, PcapWriter};

fn seg<'a>(src: &str, dst: &str, seq: u32, ack: u32, flags: u8, payload: &'a [u8]) -> Segment<'a> {
    Segment {
        src: src.parse().expect("addr"),
        dst: dst.parse().expect("addr"),
        seq,
        ack,
        flags: Flags(flags),
        window: 65535,
        payload,
        missing: 0,
        ttl: 64,
    }
}

/// Feeds one segment to `table` as the next frame (packet time = frame number).
fn feed(
    table: &mut FlowTable,
    frame: &mut u64,
    s: &Segment<'_>,
    out: &mut Vec<(OrderKey, Record)>,
) {
    *frame += 1;
    let mut ctx = Ctx {
        ts: Ts(*frame as i64),
        frame: *frame,
        key_frame: *frame,
        out,
    };
    table.segment(s, &mut ctx);
}

/// The `limit` named by each `limit_reached` finding written, as JSON text.
fn limits_hit(out: &[(OrderKey, Record)]) -> Vec<String> {
    out.iter()
        .filter_map(|(_, r)| match r {
            Record::Finding(f) if f.kind.name() == "limit_reached" => {
                f.evidence.get("limit").map(|v| v.to_string())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn out_of_order_data_of_all_connections_together_is_capped() {
    let limits = Limits {
        max_ooo_bytes: 16 * 1024,
        max_ooo_total: 40 * 1024,
        ..Limits::default()
    };
    let mut table = FlowTable::new(Arc::new(limits), Arc::new(Vec::new()), 1);
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    let chunk = vec![b'x'; 1000];
    let mut frame = 0;
    for conn in 0..3u16 {
        let client = format!("10.0.0.1:{}", 40000 + conn);
        let server = "10.0.0.2:8080";
        let mut step = |s: Segment<'_>, out: &mut Vec<(OrderKey, Record)>| {
            feed(&mut table, &mut frame, &s, out)
        };
        step(seg(&client, server, 100, 0, Flags::SYN, b""), &mut out);
        step(
            seg(server, &client, 500, 101, Flags::SYN | Flags::ACK, b""),
            &mut out,
        );
        // 15 segments of 1000 bytes beyond a 10-byte hole (within the per-direction cap).
        for i in 0..15u32 {
            step(
                seg(server, &client, 511 + i * 1000, 101, Flags::ACK, &chunk),
                &mut out,
            );
        }
    }
    assert!(
        table.buffered_bytes() <= 40 * 1024,
        "held {}",
        table.buffered_bytes()
    );
    let limits_hit = limits_hit(&out);
    assert_eq!(limits_hit, vec!["\"max_ooo_total\"".to_string()]);
}

#[test]
fn a_flood_of_tiny_out_of_order_segments_counts_their_bookkeeping_against_the_total() {
    // 20 connections × 200 one-byte segments beyond a hole: 4,000 bytes of data, far under
    // the 64 KiB total, but each held piece costs a map entry and an allocation too.
    let limits = Limits {
        max_ooo_total: 64 * 1024,
        ..Limits::default()
    };
    let mut table = FlowTable::new(Arc::new(limits), Arc::new(Vec::new()), 1);
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    let mut frame = 0;
    for conn in 0..20u16 {
        let client = format!("10.0.0.1:{}", 41000 + conn);
        let server = "10.0.0.2:8080";
        let mut step = |s: Segment<'_>, out: &mut Vec<(OrderKey, Record)>| {
            feed(&mut table, &mut frame, &s, out)
        };
        step(seg(&client, server, 100, 0, Flags::SYN, b""), &mut out);
        step(
            seg(server, &client, 500, 101, Flags::SYN | Flags::ACK, b""),
            &mut out,
        );
        // Every other byte: no two pieces touch, none fills the hole at 501.
        for i in 0..200u32 {
            step(
                seg(server, &client, 503 + 2 * i, 101, Flags::ACK, b"x"),
                &mut out,
            );
        }
    }
    let limits_hit = limits_hit(&out);
    assert!(
        limits_hit.contains(&"\"max_ooo_total\"".to_string()),
        "{limits_hit:?}"
    );
}

#[test]
fn heads_that_never_end_are_held_to_a_total_across_connections() {
    // Ten backends each send 3,000 bytes of a response head with no end: under the
    // per-head cap, but 30,000 bytes together against a 16 KiB total.
    let limits = Limits {
        head_buffer_cap: 4096,
        max_head_total: 16 * 1024,
        ..Limits::default()
    };
    let mut table = FlowTable::new(Arc::new(limits), Arc::new(Vec::new()), 1);
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    head.resize(3000, b'x');
    let mut frame = 0;
    for conn in 0..10u16 {
        let client = format!("10.0.0.1:{}", 42000 + conn);
        let server = "10.0.0.2:8080";
        let mut step = |s: Segment<'_>, out: &mut Vec<(OrderKey, Record)>| {
            feed(&mut table, &mut frame, &s, out)
        };
        let req = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";
        step(seg(&client, server, 100, 0, Flags::SYN, b""), &mut out);
        step(
            seg(server, &client, 500, 101, Flags::SYN | Flags::ACK, b""),
            &mut out,
        );
        step(seg(&client, server, 101, 501, Flags::ACK, req), &mut out);
        step(
            seg(
                server,
                &client,
                501,
                101 + req.len() as u32,
                Flags::ACK,
                &head,
            ),
            &mut out,
        );
    }
    let limits_hit = limits_hit(&out);
    // The connections that pushed the total over gave their heads up, and said so.
    assert!(!limits_hit.is_empty(), "no limit_reached");
    assert!(
        limits_hit.iter().all(|l| l == "\"max_head_total\""),
        "{limits_hit:?}"
    );
}

/// A response gatescope stopped framing because of its own bound (120 headers: nginx takes
/// them; a 5000-byte trailer) says so with `limit_reached`, and nothing more: the proxy closing
/// the idle keep-alive connection 2 s later is not an abandoned response, since gatescope no
/// longer knows whether the response was complete.
#[test]
fn a_stream_no_longer_framed_because_of_a_limit_gets_no_verdict() {
    let many_headers: Vec<u8> = [
        b"HTTP/1.1 200 OK\r\n".to_vec(),
        (0..120)
            .flat_map(|i| format!("X-H{i}: v\r\n").into_bytes())
            .collect(),
        b"Content-Length: 5\r\n\r\nhello".to_vec(),
    ]
    .concat();
    let big_trailer: Vec<u8> = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: ".to_vec(),
        vec![b'v'; 5000],
        b"\r\n\r\n".to_vec(),
    ]
    .concat();
    for (port, resp) in [(42000u16, many_headers), (42001, big_trailer)] {
        let mut c = gatescope::synth::Conversation::new(
            format!("10.0.0.1:{port}").parse().expect("addr"),
            "10.0.0.2:8080".parse().expect("addr"),
            1_700_000_000_000_000,
        );
        c.handshake()
            .client_send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .server_send(&resp)
            .advance(2_000_000)
            .client_fin()
            .server_fin();
        let (_d, path) = write_conversation(c);
        let (code, recs, _) = analyze_json(&[&path], &[]);
        assert_eq!(
            finding_set(&recs),
            vec![("limit_reached".to_string(), 1)],
            "port {port}"
        );
        assert_eq!(code, 0, "port {port}");
    }
}

/// A burst of new connections larger than `--max-connections`: the SYNs evicted to make room
/// were all answered 4 ms later. Eviction says the bound was hit; it does not claim a
/// connect timeout the capture never showed.
#[test]
fn connections_evicted_at_max_connections_are_a_limit_not_connect_timeouts() {
    let start = 1_700_000_000_000_000;
    let conversations = (0..20u16)
        .map(|i| {
            let client = format!("10.0.0.1:{}", 40000 + i).parse().expect("addr");
            let server = "10.0.0.2:8080".parse().expect("addr");
            let mut c = Conversation::new(client, server, start + i64::from(i) * 10).rtt(4_000);
            c.handshake();
            c
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("burst.pcap");
    let file = std::fs::File::create(&path).expect("create");
    let mut w = PcapWriter::new(file, LinkType::Ethernet).expect("pcap");
    w.write_packets(&merge_by_time(conversations))
        .expect("write");
    drop(w);
    let (code, recs, _) = analyze_json(&[&path], &["--threads", "1", "--max-connections", "16"]);
    assert_eq!(finding_set(&recs), vec![("limit_reached".to_string(), 0)]);
    assert_eq!(code, 0);
}
