//! Every bundled sample capture (captures/, made by `gatescope-gen samples`) gives exactly
//! the findings its scenario describes (captures/README.md), on the exchange it describes.

mod common;
use common::*;

/// Kinds that are errors (exit code 1) in the samples: a gateway would have answered 502/504
/// or passed on a broken response.
const ERROR_KINDS: &[&str] = &[
    "connect_refused",
    "connect_timeout",
    "connect_unreachable",
    "reset_before_response",
    "reset_during_request",
    "closed_before_response",
    "truncated_head",
    "truncated_body",
    "malformed_status_line",
    "malformed_header",
    "head_too_large",
    "invalid_content_length",
    "duplicate_content_length",
    "content_length_with_chunked",
    "unsupported_transfer_encoding",
    "invalid_chunk",
    "abandoned_by_client",
    "keepalive_race",
    // Its sample is a backend answering cleartext HTTP with TLS: a mismatch, an error (the
    // proxy itself speaking TLS would only be a warning).
    "unsupported_protocol",
];

/// (file stem, exchanges, expected findings as (kind, exchange index or 0)).
type Sample = (&'static str, usize, &'static [(&'static str, u64)]);

const EXPECTED: &[Sample] = &[
    // Benign: nothing at all.
    ("benign_100_continue", 1, &[]),
    ("benign_chunked", 1, &[]),
    ("benign_close_delimited", 1, &[]),
    ("benign_head_204_304", 3, &[]),
    ("benign_ipv6", 2, &[]),
    ("benign_keepalive", 3, &[]),
    ("benign_linux_sll", 2, &[]),
    ("benign_linux_sll2", 2, &[]),
    ("benign_null_loopback", 2, &[]),
    ("benign_ooo_retrans", 2, &[]),
    ("benign_pipelined", 3, &[]),
    ("benign_raw_ip", 2, &[]),
    ("benign_rst_after_response", 1, &[]),
    ("benign_seq_wrap", 2, &[]),
    ("benign_vlan", 2, &[]),
    ("midstream_pickup", 2, &[]),
    ("port_reuse", 2, &[]),
    // One fault each.
    (
        "abandoned_by_client",
        1,
        &[("abandoned_by_client", 1), ("slow_first_byte", 1)],
    ),
    ("backend_error_status", 1, &[("backend_error_status", 1)]),
    ("capture_gap", 3, &[("capture_gap", 0)]),
    (
        "closed_before_response",
        1,
        &[("closed_before_response", 1)],
    ),
    ("connect_refused", 0, &[("connect_refused", 0)]),
    ("connect_timeout", 0, &[("connect_timeout", 0)]),
    ("connect_unreachable", 0, &[("connect_unreachable", 0)]),
    ("middlebox_reset", 1, &[("middlebox_reset", 0)]),
    (
        "content_length_with_chunked",
        1,
        &[("content_length_with_chunked", 1)],
    ),
    (
        "duplicate_content_length",
        1,
        &[("duplicate_content_length", 1)],
    ),
    ("excess_data", 1, &[("excess_data", 1)]),
    ("head_too_large", 1, &[("head_too_large", 1)]),
    ("http09_response", 1, &[("malformed_status_line", 1)]),
    ("invalid_chunk", 1, &[("invalid_chunk", 1)]),
    (
        "invalid_content_length",
        1,
        &[("invalid_content_length", 1)],
    ),
    ("keepalive_race", 2, &[("keepalive_race", 2)]),
    ("keepalive_race_retried", 3, &[("keepalive_race", 2)]),
    ("malformed_header_no_colon", 1, &[("malformed_header", 1)]),
    ("malformed_header_nul", 1, &[("malformed_header", 1)]),
    ("malformed_header_obs_fold", 1, &[("malformed_header", 1)]),
    (
        "malformed_header_space_before_colon",
        1,
        &[("malformed_header", 1)],
    ),
    ("malformed_status_line", 1, &[("malformed_status_line", 1)]),
    ("reset_before_response", 1, &[("reset_before_response", 1)]),
    ("slow_first_byte", 1, &[("slow_first_byte", 1)]),
    ("snaplen_truncated", 2, &[("capture_gap", 0)]),
    ("truncated_body_chunked", 1, &[("truncated_body", 1)]),
    ("truncated_body_cl", 1, &[("truncated_body", 1)]),
    ("truncated_body_rst", 1, &[("truncated_body", 1)]),
    ("truncated_head", 1, &[("truncated_head", 1)]),
    ("unsolicited_response", 2, &[("unsolicited_response", 2)]),
    (
        "unsupported_transfer_encoding",
        1,
        &[("unsupported_transfer_encoding", 1)],
    ),
    ("zero_window", 1, &[("zero_window", 0)]),
    ("unsupported_protocol", 1, &[("unsupported_protocol", 1)]),
    ("slow_connect", 1, &[("slow_connect", 0)]),
    ("early_response", 1, &[("early_response", 1)]),
    (
        "reset_during_request",
        1,
        &[("early_response", 1), ("reset_during_request", 1)],
    ),
    // The README's demo: a small backend pool with several faults at once.
    (
        "demo",
        8,
        &[
            ("connect_refused", 0),
            ("keepalive_race", 2),
            ("slow_first_byte", 1),
            ("truncated_body", 1),
        ],
    ),
];

#[test]
fn every_bundled_capture_gives_exactly_its_findings() {
    let dir = repo().join("captures");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("captures/")
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "pcap" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = EXPECTED.iter().map(|(n, _, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "captures/ and this table must list the same samples"
    );

    let mut failures = Vec::new();
    for (name, exchanges, findings) in EXPECTED {
        let path = dir.join(format!("{name}.pcap"));
        let (code, recs, err) = analyze_json(&[&path], &[]);
        let got = finding_set(&recs);
        let mut want: Vec<(String, u64)> =
            findings.iter().map(|(k, i)| (k.to_string(), *i)).collect();
        want.sort();
        let n = of_type(&recs, "exchange").len();
        // The exit code a script sees follows from the expected findings alone.
        let want_error = want.iter().any(|(k, _)| ERROR_KINDS.contains(&k.as_str()));
        let want_code = if want_error { 1 } else { 0 };
        if got != want || n != *exchanges || code != want_code {
            failures.push(format!(
                "{name}: findings {got:?} (want {want:?}), exchanges {n} (want {exchanges}), exit {code} (want {want_code}) {err}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_finding_kind_is_produced_by_some_bundled_capture() {
    let produced: std::collections::BTreeSet<&str> = EXPECTED
        .iter()
        .flat_map(|(_, _, f)| f.iter().map(|(k, _)| *k))
        .collect();
    for k in gatescope::findings::Kind::ALL {
        // Two kinds are about gatescope itself or the proxy's requests, covered elsewhere
        // (tests/adversarial.rs, tests/shared_captures.rs).
        if matches!(k.name(), "limit_reached" | "malformed_request") {
            continue;
        }
        assert!(
            produced.contains(k.name()),
            "no bundled capture produces {}",
            k.name()
        );
    }
}

#[test]
fn truncated_body_evidence_says_how_much_and_who_ended_it() {
    let (_, recs, _) = analyze_json(&[&repo().join("captures/truncated_body_cl.pcap")], &[]);
    let f = &of_type(&recs, "finding")[0];
    assert_eq!(f["evidence"]["framing"], "content-length");
    assert_eq!(f["evidence"]["expected"], 5000);
    assert_eq!(f["evidence"]["received"], 2000);
    assert_eq!(f["evidence"]["ended_by"], "server FIN");
    assert_eq!(f["hint"]["haproxy"], "SD");
    assert!(
        f["next_step"]
            .as_str()
            .is_some_and(|s| s.contains("Content-Length")),
        "{f}"
    );
}

/// In the body phase nginx has already sent the backend's status line to the client: it
/// cannot answer 502 any more, the client gets a truncated response (README, e2e table).
#[test]
fn body_phase_faults_leave_the_backends_status_to_the_client() {
    for (name, kind) in [
        ("truncated_body_cl", "truncated_body"),
        ("truncated_body_chunked", "truncated_body"),
        ("invalid_chunk", "invalid_chunk"),
    ] {
        let (_, recs, _) = analyze_json(&[&repo().join(format!("captures/{name}.pcap"))], &[]);
        let f = of_type(&recs, "finding")
            .into_iter()
            .find(|f| f["kind"] == kind)
            .cloned()
            .unwrap_or_default();
        assert_eq!(f["hint"]["nginx_status"], 0, "{name}: {f}");
    }
}

#[test]
fn keepalive_race_evidence_has_the_idle_time_and_the_fin_timing() {
    let (_, recs, _) = analyze_json(&[&repo().join("captures/keepalive_race.pcap")], &[]);
    let f = &of_type(&recs, "finding")[0];
    let idle = f["evidence"]["idle_before_request_ms"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((4800.0..5000.0).contains(&idle), "{f}");
    assert_eq!(f["method"], "GET");
}

/// The race, then nginx's retry of the reset GET on a new connection, answered 200: the
/// race is still an error, and the summary says the client most likely got the 200.
#[test]
fn a_retried_keepalive_race_is_answered_by_the_retry() {
    let (code, recs, _) =
        analyze_json(&[&repo().join("captures/keepalive_race_retried.pcap")], &[]);
    let r = &of_type(&recs, "summary")[0]["retries"];
    assert_eq!(
        (
            code,
            &r["answered"],
            &r["chains"][0]["kind"],
            &r["chains"][0]["status"],
            &r["chains"][0]["attempts"][0]["server"]
        ),
        (
            1,
            &serde_json::json!(1),
            &serde_json::json!("keepalive_race"),
            &serde_json::json!(200),
            &serde_json::json!("10.0.0.2:8080")
        )
    );
}

#[test]
fn capture_gap_is_never_reported_as_truncation() {
    for name in ["capture_gap", "snaplen_truncated"] {
        let (_, recs, _) = analyze_json(&[&repo().join(format!("captures/{name}.pcap"))], &[]);
        let kinds = finding_set(&recs);
        assert!(
            kinds.iter().all(|(k, _)| !k.starts_with("truncated")),
            "{name}: {kinds:?}"
        );
        let f = of_type(&recs, "finding")
            .into_iter()
            .find(|f| f["kind"] == "capture_gap")
            .cloned()
            .unwrap_or_default();
        assert_eq!(f["confidence"], "low");
    }
}

#[test]
fn table_report_of_the_demo_shows_the_summary_and_the_connection_blocks() {
    let out = run(&[
        "analyze",
        &repo().join("captures/demo.pcap").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "keepalive_race",
        "truncated_body",
        "connect_refused",
        "ttfb p50",
        "wireshark: ip.addr==",
        "nginx:   upstream prematurely closed connection",
        "HAProxy: SD · Envoy: UC",
        "what to check next:",
        "keepalive_timeout",
    ] {
        assert!(text.contains(needle), "table lacks {needle:?}:\n{text}");
    }
}

fn conv(port: u16) -> gatescope::synth::Conversation {
    gatescope::synth::Conversation::new(
        format!("10.0.0.1:{port}").parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    )
}

const GET: &[u8] = b"GET /slow HTTP/1.1\r\nHost: b\r\n\r\n";
const HEAD_5000: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\npart";

/// Once the status line reached nginx it has been passed on: a read timeout in the body is
/// logged "while reading upstream" and cuts the response, it cannot become a 504. The timer
/// runs between two reads, so the idle time since the backend's last byte is what matters.
#[test]
fn a_proxy_close_during_the_body_is_a_read_timeout_measured_from_the_last_byte() {
    let mut c = conv(41000);
    c.handshake().client_send(GET).advance(20_000_000);
    c.server_send(HEAD_5000).advance(30_000_000).client_rst();
    let (_d, path) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&path], &[]);
    let f = first_finding(&recs, "abandoned_by_client");
    assert_eq!(f["hint"]["nginx_status"], 0, "{f}");
    assert!(
        f["hint"]["nginx"]
            .as_str()
            .unwrap_or_default()
            .contains("while reading upstream"),
        "{f}"
    );
    let idle = f["evidence"]["idle_before_close_ms"]
        .as_f64()
        .unwrap_or(0.0);
    let total = f["evidence"]["since_request_ms"].as_f64().unwrap_or(0.0);
    assert!((29_000.0..31_000.0).contains(&idle), "{f}");
    assert!((49_000.0..51_000.0).contains(&total), "{f}");
}

/// A close a fraction of a millisecond after the request is no timeout of any gateway: the
/// proxy aborted (its client went away), which nginx logs as 499.
#[test]
fn a_proxy_close_far_below_any_timeout_is_an_abort_not_a_504() {
    let mut c = conv(41001);
    c.handshake().client_send(GET).client_fin();
    let (_d, path) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&path], &[]);
    let f = first_finding(&recs, "abandoned_by_client");
    assert_eq!(f["hint"]["nginx_status"], 499, "{f}");
    assert!(
        !f["message"].as_str().unwrap_or_default().contains("504"),
        "{f}"
    );
}

#[test]
fn bytes_that_never_form_a_request_get_no_abandonment_verdict() {
    let mut c = gatescope::synth::Conversation::new(
        "10.0.0.1:40100".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.handshake().client_send(&[0u8; 14]).advance(2_000);
    c.client_fin().server_fin();
    let (_d, path) = write_conversation(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![]);
    assert_eq!(code, 0);
}

/// Writes one proxy->backend conversation to a capture: `request`, `response`, then the
/// backend's FIN and the proxy's.
fn conversation(request: &[u8], response: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    use gatescope::synth::{Conversation, LinkType, PcapWriter};
    let mut c = Conversation::new(
        "10.0.0.1:40000".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.handshake().client_send(request).advance(1000);
    c.server_send(response)
        .advance(1000)
        .server_fin()
        .client_fin();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.pcap");
    let file = std::fs::File::create(&path).expect("create");
    let mut w = PcapWriter::new(file, LinkType::Ethernet).expect("pcap");
    w.write_packets(&c.into_packets()).expect("write");
    drop(w);
    (dir, path)
}

#[test]
fn a_non_http_reply_cut_by_a_fin_is_a_malformed_status_line_not_a_truncated_head() {
    let (_d, path) = conversation(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"xzscxc#$#AzMTax4wGxA5DSBkODw8e3d3PCsADwwXfXdienNreXM=$#$vxxd",
    );
    let (_, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(
        finding_set(&recs),
        vec![("malformed_status_line".to_string(), 1)]
    );
}

#[test]
fn a_tls_or_http2_leg_is_named_as_such_not_reported_as_backend_errors() {
    let mut client_hello = vec![0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0];
    client_hello.extend_from_slice(&[0; 183]);
    let mut server_hello = vec![0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76];
    server_hello.extend_from_slice(&[0; 300]);
    let h2_client: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let h2_server: &[u8] = b"\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64";
    let mut got = Vec::new();
    for (request, response) in [
        (&client_hello[..], &server_hello[..]),
        (h2_client, h2_server),
    ] {
        let (_d, path) = conversation(request, response);
        let (code, recs, _) = analyze_json(&[&path], &[]);
        let severities: Vec<String> = of_type(&recs, "finding")
            .iter()
            .map(|f| format!("{} {}", f["kind"], f["severity"]))
            .collect();
        got.push((code, severities));
    }
    let want = (0, vec![r#""unsupported_protocol" "warning""#.to_string()]);
    assert_eq!(got, [want.clone(), want]);
}

/// The proxy sends a body without Content-Length: the backend reads it as a second request
/// and answers 400. That exchange is named (a warning: the proxy's bytes, not the backend's
/// fault), and the body itself, which may hold credentials, stays out of the output.
#[test]
fn a_request_body_without_content_length_answered_400_is_named_and_hidden() {
    let (_d, path) = conversation(
        b"POST /login HTTP/1.1\r\nHost: b\r\n\r\nuser=ann&password=hunter2",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
          HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let (code, recs, _) = analyze_json(&[&path], &[]);
    let findings: Vec<String> = of_type(&recs, "finding")
        .iter()
        .map(|f| format!("{} {} {}", f["kind"], f["severity"], f["exchange"]))
        .collect();
    let shown = serde_json::Value::Array(recs.clone()).to_string();
    assert_eq!(
        (code, findings, shown.contains("hunter2")),
        (
            0,
            vec![r#""malformed_request" "warning" 2"#.to_string()],
            false
        )
    );
}

/// A capture started after the proxy opened its (encrypted) connections: no handshake to
/// recognise, only TLS records each way. The leg is named as encrypted once, and nothing
/// else is said about it (no exchange, no error).
#[test]
fn an_encrypted_leg_picked_up_mid_stream_is_named_once() {
    use gatescope::synth::Conversation;
    let record = |len: u16, fill: u8| {
        let mut r = vec![0x17, 3, 3];
        r.extend_from_slice(&len.to_be_bytes());
        r.resize(5 + usize::from(len), fill);
        r
    };
    let mut c = Conversation::new(
        "10.0.0.1:40000".parse().expect("addr"),
        "10.0.0.2:443".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.skip(true, 5_000).skip(false, 90_000);
    for i in 0..4u8 {
        c.client_send(&record(180, i)).advance(1_000);
        c.server_send(&record(2_400, i)).advance(1_000);
    }
    let (_dir, path) = write_conversation(c);
    let (code, recs, _) = analyze_json(&[&path], &["--backend", "443"]);
    let findings: Vec<String> = of_type(&recs, "finding")
        .iter()
        .map(|f| {
            format!(
                "{} {} {}",
                f["kind"], f["severity"], f["evidence"]["midstream"]
            )
        })
        .collect();
    assert_eq!(
        (code, findings, of_type(&recs, "exchange").len()),
        (
            0,
            vec![r#""unsupported_protocol" "warning" true"#.to_string()],
            0
        )
    );
}

/// The same for a cleartext HTTP/2 leg (Envoy or a gRPC client to its backend, h2c): the
/// capture sees HEADERS, DATA and WINDOW_UPDATE frames, never a request line. Named once as
/// HTTP/2, and nothing else is said about it.
#[test]
fn an_h2c_leg_picked_up_mid_stream_is_named_once_as_http2() {
    use gatescope::synth::Conversation;
    let frame = |kind: u8, flags: u8, stream: u32, len: usize| {
        let mut f = (len as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(9 + len, 0x41);
        f
    };
    let mut c = Conversation::new(
        "10.0.0.1:40000".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.skip(true, 5_000).skip(false, 90_000);
    for stream in [101u32, 103, 105] {
        // A gRPC call: request HEADERS + DATA, response HEADERS + DATA + trailers.
        c.client_send(&[frame(1, 0x04, stream, 60), frame(0, 0x01, stream, 120)].concat())
            .advance(1_000);
        c.server_send(
            &[
                frame(1, 0x04, stream, 30),
                frame(0, 0, stream, 2_000),
                frame(1, 0x05, stream, 20),
            ]
            .concat(),
        )
        .advance(1_000);
        c.client_send(&frame(8, 0, 0, 4)).advance(1_000);
    }
    let (_dir, path) = write_conversation(c);
    let (code, recs, _) = analyze_json(&[&path], &["--backend", "8080"]);
    let findings: Vec<String> = of_type(&recs, "finding")
        .iter()
        .map(|f| {
            format!(
                "{} {} {} {}",
                f["kind"], f["severity"], f["evidence"]["protocol"], f["evidence"]["midstream"]
            )
        })
        .collect();
    assert_eq!(
        (code, findings, of_type(&recs, "exchange").len()),
        (
            0,
            vec![r#""unsupported_protocol" "warning" "HTTP/2" true"#.to_string()],
            0
        )
    );
}

#[test]
fn a_cleartext_answer_to_the_proxys_tls_handshake_is_a_protocol_mismatch() {
    // proxy_pass https:// to a plain-HTTP backend: the ClientHello gets a 400 in cleartext.
    let mut client_hello = vec![0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0];
    client_hello.extend_from_slice(&[0; 183]);
    let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (_d, path) = conversation(&client_hello, answer);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    let findings: Vec<String> = of_type(&recs, "finding")
        .iter()
        .map(|f| format!("{} {}", f["kind"], f["severity"]))
        .collect();
    assert_eq!(
        findings,
        [
            r#""unsupported_protocol" "warning""#,
            r#""unsupported_protocol" "error""#
        ]
    );
    assert_eq!(code, 1);
}
