//! A keep-alive connection idle for longer than `--idle-timeout` (300 s) and then reused:
//! pools keep idle connections for minutes (Envoy an hour, Google's load balancers 600 s),
//! and the request that reuses one is where a keep-alive race happens. gatescope has
//! finished the connection by then; its continuation is reported as resuming it, with the
//! exchanges numbered on and the idle time measured from its last response.

mod common;

use common::*;
use gatescope::synth::Conversation;
use serde_json::Value;

const IDLE_S: i64 = 400;

/// One exchange, `IDLE_S` seconds of nothing, then `reuse` on the same connection.
fn reused_after_idle(reuse: impl FnOnce(&mut Conversation)) -> Vec<Value> {
    let client = "10.0.0.1:40000".parse().expect("addr");
    let server = "10.0.0.2:8080".parse().expect("addr");
    let mut c = Conversation::new(client, server, 1_700_000_000_000_000);
    c.handshake();
    c.client_send(b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n");
    c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    c.advance(IDLE_S * 1_000_000);
    reuse(&mut c);
    let (_dir, path) = write_conversation(c);
    let (_, one, err) = analyze_json(&[&path], &["--threads", "1", "--all"]);
    assert!(!err.contains("panic"), "{err}");
    let (_, two, _) = analyze_json(&[&path], &["--threads", "2", "--all"]);
    assert_eq!(one, two, "the same report with one and two threads");
    one
}

#[test]
fn a_race_on_a_connection_reused_after_a_long_idle_has_its_idle_time() {
    let records = reused_after_idle(|c| {
        c.server_fin();
        c.advance(1_000);
        c.client_send(b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n");
        c.server_rst();
    });
    let race = first_finding(&records, "keepalive_race");
    let idle_ms = race["evidence"]["idle_before_request_ms"]
        .as_f64()
        .unwrap_or(0.0);
    assert_eq!(
        (race["exchange"].clone(), (idle_ms / 1000.0).round()),
        (Value::from(2), IDLE_S as f64),
        "{race}"
    );
}

#[test]
fn the_continuation_names_the_connection_it_resumes() {
    let records = reused_after_idle(|c| {
        c.client_send(b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n");
        c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    let conns = of_type(&records, "connection");
    let summary: Vec<_> = conns
        .iter()
        .map(|c| {
            (
                c["close"].clone(),
                c["midstream"].clone(),
                c["resumes"]["conn"].clone(),
                c["resumes"]["idle_ms"]
                    .as_f64()
                    .map(|ms| (ms / 1000.0).round()),
            )
        })
        .collect();
    let first = conns.first().map(|c| c["id"].clone()).unwrap_or_default();
    assert_eq!(
        summary,
        vec![
            (
                Value::from("idle_timeout"),
                Value::from(false),
                Value::Null,
                None
            ),
            (
                Value::from("capture_end"),
                Value::from(false),
                first,
                Some(IDLE_S as f64)
            ),
        ],
        "{conns:?}"
    );
    let second: Vec<_> = of_type(&records, "exchange")
        .iter()
        .map(|e| (e["index"].clone(), e["outcome"].clone()))
        .collect();
    assert_eq!(
        second,
        vec![
            (Value::from(1), Value::from("complete")),
            (Value::from(2), Value::from("complete"))
        ]
    );
    assert!(
        finding_set(&records).is_empty(),
        "{:?}",
        finding_set(&records)
    );
}

/// A load balancer between proxy and backend (an AWS NLB: 350 s) resets connections idle
/// longer than its timeout, after gatescope has finished them for idleness: the reset
/// continues the connection, whose record says the backend side closed it idle, and after
/// how long — not a late packet.
#[test]
fn a_reset_after_a_long_idle_is_the_connections_idle_close() {
    let records = reused_after_idle(|c| {
        c.server_rst();
    });
    let closes: Vec<_> = of_type(&records, "connection")
        .iter()
        .map(|c| {
            (
                c["close"].clone(),
                c["idle_close"]["by"].clone(),
                c["idle_close"]["idle_ms"]
                    .as_f64()
                    .map(|ms| (ms / 1000.0).round()),
            )
        })
        .collect();
    assert_eq!(
        closes,
        vec![
            (Value::from("idle_timeout"), Value::Null, None),
            (
                serde_json::json!({"reset": {"by": "server"}}),
                Value::from("server"),
                Some(IDLE_S as f64)
            ),
        ],
        "{closes:?}"
    );
}

/// Three connections reset after 350 s of idle (an AWS NLB's idle timeout): the summary
/// names the timer and what it most likely is.
#[test]
fn resets_after_350_s_of_idle_are_named_as_a_load_balancers_idle_timeout() {
    let server = "10.0.0.2:8080".parse().expect("addr");
    let packets = (0..3u16)
        .flat_map(|i| {
            let client = format!("10.0.0.1:{}", 41000 + i).parse().expect("addr");
            let mut c = Conversation::new(
                client,
                server,
                1_700_000_000_000_000 + i64::from(i) * 9_000_000,
            );
            c.handshake();
            c.client_send(b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n");
            c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            c.advance(350_000_000);
            c.server_rst();
            c.into_packets()
        })
        .collect();
    let (_dir, path) = write_packets(packets);
    let (_, records, _) = analyze_json(&[&path], &[]);
    let timers: Vec<_> = of_type(&records, "summary")[0]["timeouts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t["message"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        timers.len() == 1
            && timers[0].starts_with("3 of 3 backend closes of idle keep-alive connections")
            && timers[0].contains("came 350.0 s after")
            && timers[0].contains("Network Load Balancer's TCP idle timeout"),
        "{timers:?}"
    );
}

#[test]
fn a_new_handshake_on_the_same_ports_is_a_new_connection() {
    let records = reused_after_idle(|c| {
        // The proxy's new connection happens to get the same source port.
        c.handshake();
        c.client_send(b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n");
        c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    let resumes: Vec<_> = of_type(&records, "connection")
        .iter()
        .map(|c| c["resumes"].clone())
        .collect();
    assert_eq!(resumes, vec![Value::Null, Value::Null]);
}

/// Idle connections are remembered at most `--max-connections` at a time, the oldest
/// forgotten first: 30 connections go idle one after another with room for 16; when the
/// first and the last are reused, only the last one's continuation resumes it.
#[test]
fn only_the_most_recent_idle_connections_are_remembered() {
    let server: std::net::SocketAddr = "10.0.0.2:8080".parse().expect("addr");
    let t0 = 1_700_000_000_000_000i64;
    let conv = |i: u16, start: i64| {
        let client = format!("10.0.0.1:{}", 40000 + i).parse().expect("addr");
        Conversation::new(client, server, start)
    };
    let mut packets = Vec::new();
    // Every 25 s a connection with one exchange, then idle: no more than 12 are open at
    // once, and all have been finished for idleness by the time two are reused.
    for i in 0..30u16 {
        let mut c = conv(i, t0 + i64::from(i) * 25_000_000);
        c.handshake();
        c.client_send(b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n");
        c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        packets.extend(c.into_packets());
    }
    let reuse_at = t0 + 30 * 25_000_000 + 400_000_000;
    for (n, i) in [0u16, 29].into_iter().enumerate() {
        // The same 4-tuple and sequence numbers go on where the first exchange left them.
        let mut c = conv(i, t0 + i64::from(i) * 25_000_000);
        c.handshake();
        c.client_send(b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n");
        c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let skip = c.packets().len();
        c.advance(reuse_at + n as i64 * 1_000_000 - c.now());
        c.client_send(b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n");
        c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        packets.extend(c.into_packets().into_iter().skip(skip));
    }
    let (_dir, path) = write_packets(packets);
    let (_, records, _) = analyze_json(
        &[&path],
        &["--threads", "1", "--all", "--max-connections", "16"],
    );
    let continuations: Vec<_> = of_type(&records, "connection")
        .iter()
        .filter(|c| c["start"].as_str() > Some("2023-11-14T22:30"))
        .map(|c| {
            (
                c["client"].clone(),
                c["midstream"].clone(),
                c["resumes"].is_object(),
            )
        })
        .collect();
    assert_eq!(
        continuations,
        vec![
            (Value::from("10.0.0.1:40000"), Value::from(true), false),
            (Value::from("10.0.0.1:40029"), Value::from(false), true),
        ],
        "{:?}",
        finding_set(&records)
    );
    assert!(finding_set(&records)
        .iter()
        .all(|(k, _)| k != "limit_reached"));
}
