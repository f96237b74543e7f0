//! A connect that an ICMP "destination unreachable" fails: a firewall's REJECT rule, a
//! `prohibit` route, a router with no route to the backend. A Linux proxy's `connect()`
//! returns the error at once and nginx answers 502 ("connect() failed (113: No route to
//! host) while connecting to upstream"); without reading the ICMP, the capture looks like an
//! unanswered SYN — a timeout, a 504, the wrong diagnosis. Each test is one such
//! conversation and what the user sees for it.

mod common;
use common::*;
use gatescope::synth::{Conversation, TcpFlags};
use serde_json::{json, Value};
use std::net::IpAddr;

const FIREWALL: &str = "10.0.0.254";

fn conn(client: &str, server: &str) -> Conversation {
    Conversation::new(
        client.parse().expect("addr"),
        server.parse().expect("addr"),
        1_700_000_000_000_000,
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Exit code, every record, and the connect_unreachable finding (or `Null`).
fn analyse(c: Conversation) -> (i32, Vec<Value>, Value) {
    let (_d, p) = write_conversation(c);
    let (code, recs, _) = analyze_json(&[&p], &[]);
    let f = first_finding(&recs, "connect_unreachable");
    (code, recs, f)
}

/// What the user reads of a connect_unreachable finding: who rejected, why, and the error
/// and log line the proxy got.
fn seen(f: &Value) -> Value {
    json!({
        "from": f["evidence"]["icmp_from"],
        "reason": f["evidence"]["reason"],
        "error": f["evidence"]["connect_error"],
        "nginx": f["hint"]["nginx"],
        "status": f["hint"]["nginx_status"],
    })
}

/// firewalld's default: "communication administratively prohibited" from a firewall on
/// the path. An error (exit code 1), not a timeout, with the line nginx logs.
#[test]
fn a_firewall_reject_on_the_path_is_connect_unreachable_not_a_timeout() {
    let mut c = conn("10.0.0.1:41000", "10.0.0.2:8080");
    c.unreachable(ip(FIREWALL), 13);
    let (code, recs, f) = analyse(c);
    assert_eq!(
        (code, finding_set(&recs), seen(&f)),
        (
            1,
            vec![("connect_unreachable".to_string(), 0)],
            json!({
                "from": FIREWALL,
                "reason": "communication administratively prohibited",
                "error": "113: No route to host",
                "nginx": "connect() failed (113: No route to host) while connecting to upstream",
                "status": 502,
            })
        )
    );
}

/// iptables' REJECT default, on the backend's own host: "port unreachable" from the
/// backend's address, which the proxy gets as a refusal; the message says it was the
/// backend's host.
#[test]
fn a_reject_on_the_backend_host_says_so_and_reads_as_a_refusal_to_the_proxy() {
    let mut c = conn("10.0.0.1:41001", "10.0.0.2:8080");
    c.unreachable(ip("10.0.0.2"), 3);
    let (_, recs, f) = analyse(c);
    let conn = &of_type(&recs, "connection")[0];
    assert_eq!(
        (
            seen(&f)["error"].clone(),
            f["message"]
                .as_str()
                .is_some_and(|m| m.contains("the backend's host (or its firewall)")),
            conn["close"].clone(),
        ),
        (json!("111: Connection refused"), true, json!("unreachable"))
    );
}

/// IPv6: ICMPv6 "administratively prohibited" is EACCES to the proxy.
#[test]
fn icmpv6_administratively_prohibited_is_permission_denied() {
    let mut c = conn("[2001:db8::1]:41002", "[2001:db8::2]:8080");
    c.unreachable(ip("2001:db8::fe"), 1);
    let (_, _, f) = analyse(c);
    assert_eq!(
        seen(&f),
        json!({
            "from": "2001:db8::fe",
            "reason": "communication administratively prohibited",
            "error": "13: Permission denied",
            "nginx": "connect() failed (13: Permission denied) while connecting to upstream",
            "status": 502,
        })
    );
}

/// A transient error: the SYN is sent again a second later and answered, and the exchange
/// completes. No failure: a slow connect (the proxy waited) that names the ICMP's sender,
/// and the summary counts the ICMP that did not end the connect.
#[test]
fn an_unreachable_the_connect_outlived_is_only_counted() {
    let mut c = conn("10.0.0.1:41003", "10.0.0.2:8080");
    c.unreachable(ip(FIREWALL), 1).advance(1_000_000);
    c.handshake()
        .client_send(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
        .server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let (code, recs, _) = analyse(c);
    let summary = &of_type(&recs, "summary")[0];
    let slow = first_finding(&recs, "slow_connect");
    assert_eq!(
        (
            code,
            finding_set(&recs),
            slow["evidence"]["icmp_from"].clone(),
            summary["tcp"]["unreachable_outlived"].clone()
        ),
        (
            0,
            vec![("slow_connect".to_string(), 0)],
            json!(FIREWALL),
            json!(1)
        )
    );
}

/// An ICMP error about a segment of an established connection is a soft error the
/// connection outlives (Linux only records it): counted, never a finding.
#[test]
fn an_unreachable_about_an_established_connection_is_not_a_finding() {
    let mut c = conn("10.0.0.1:41004", "10.0.0.2:8080");
    c.handshake()
        .client_send(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n");
    // A router's complaint about the request segment: its IP header and first 8 TCP bytes
    // (from the same segment built on a twin conversation) inside an ICMP host unreachable.
    let mut other = conn("10.0.0.1:41004", "10.0.0.2:8080");
    other.raw_segment(true, 1, b"GET", TcpFlags::ACK | TcpFlags::PSH);
    let (_, data) = other.packets()[0].clone();
    let quoted = &data[..28];
    let mut icmp = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 0, 0, 254], [10, 0, 0, 1], 64)
        .icmpv4_raw(3, 1, [0; 4])
        .write(&mut icmp, quoted)
        .expect("icmp");
    let mut packets = c.into_packets();
    let t = packets.last().map_or(0, |p| p.0) + 100;
    packets.push((t, icmp));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("est.pcap");
    let file = std::fs::File::create(&path).expect("create");
    let mut w =
        gatescope::synth::PcapWriter::new(file, gatescope::synth::LinkType::Raw).expect("pcap");
    w.write_packets(&packets).expect("write");
    drop(w);
    let (_, recs, _) = analyze_json(&[&path], &[]);
    let summary = &of_type(&recs, "summary")[0];
    assert_eq!(
        (
            first_finding(&recs, "connect_unreachable"),
            summary["tcp"]["unreachable_other"].clone(),
        ),
        (Value::Null, json!(1))
    );
}

/// "Fragmentation needed" is path MTU discovery at work, not a failed connect.
#[test]
fn fragmentation_needed_is_not_a_failed_connect() {
    let mut c = conn("10.0.0.1:41005", "10.0.0.2:8080");
    c.unreachable(ip(FIREWALL), 4);
    let (_, recs, f) = analyse(c);
    let summary = &of_type(&recs, "summary")[0];
    assert_eq!(
        (f, summary["tcp"]["unreachable_other"].clone()),
        (Value::Null, json!(0))
    );
}

/// The usual capture filter, on the backend's TCP port, still lets the ICMP through: the
/// reject that explains the failed connect is not filtered away.
#[test]
fn a_filter_on_the_backend_port_keeps_the_icmp_that_explains_the_failure() {
    let mut c = conn("10.0.0.1:41006", "10.0.0.2:8080");
    c.unreachable(ip(FIREWALL), 10);
    let (_d, p) = write_conversation(c);
    let (code, recs, _) = analyze_json(&[&p], &["-f", "tcp port 8080"]);
    assert_eq!(
        (code, finding_set(&recs)),
        (1, vec![("connect_unreachable".to_string(), 0)])
    );
}
