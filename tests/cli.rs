//! The command line as a user meets it: exit codes, broken input files, standard input,
//! closed pipes, bad flags. Each test is one scenario and checks what the user sees.

mod common;
use common::*;
use gatescope::synth::TcpFlags;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

fn write_tmp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).expect("write");
    (dir, p)
}

#[test]
fn clean_capture_exits_0_with_one_complete_exchange() {
    let pcap = pcap_bytes(
        101,
        &simple_conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    );
    let (_d, p) = write_tmp("ok.pcap", &pcap);
    let (code, recs, _) = analyze_json(&[&p], &[]);
    assert_eq!(code, 0);
    let ex = of_type(&recs, "exchange");
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0]["outcome"], "complete");
    assert_eq!(ex[0]["status"], 200);
    assert!(finding_set(&recs).is_empty());
}

#[test]
fn error_finding_exits_1() {
    // Content-Length 10, 2 bytes, then the backend's FIN: a truncated body.
    let pcap = pcap_bytes(
        101,
        &conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", true),
    );
    let (_d, p) = write_tmp("trunc.pcap", &pcap);
    let (code, recs, _) = analyze_json(&[&p], &[]);
    assert_eq!(code, 1);
    assert_eq!(finding_set(&recs), vec![("truncated_body".to_string(), 1)]);
    let f = &of_type(&recs, "finding")[0];
    assert_eq!(f["evidence"]["expected"], 10);
    assert_eq!(f["evidence"]["received"], 2);
}

#[test]
fn zero_length_file_is_named_and_exits_2() {
    let (_d, p) = write_tmp("empty.pcap", b"");
    let (code, _, err) = analyze_json(&[&p], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("empty.pcap") && err.contains("empty file"),
        "{err}"
    );
}

#[test]
fn file_that_is_not_a_capture_is_named_and_exits_2() {
    let (_d, p) = write_tmp("notes.txt", b"this is not a capture at all, just text\n");
    let (code, _, err) = analyze_json(&[&p], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("notes.txt") && err.contains("not a readable pcap"),
        "{err}"
    );
}

#[test]
fn truncated_capture_keeps_results_before_the_cut_and_exits_2() {
    let mut pcap = pcap_bytes(
        101,
        &simple_conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    );
    // Cut in the middle of the last record.
    pcap.truncate(pcap.len() - 20);
    let (_d, p) = write_tmp("cut.pcap", &pcap);
    let (code, recs, err) = analyze_json(&[&p], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cut.pcap") && err.contains("record 7"),
        "{err}"
    );
    // The exchange completed before the cut is still reported.
    assert_eq!(of_type(&recs, "exchange").len(), 1);
    assert_eq!(of_type(&recs, "summary").len(), 1);
}

#[test]
fn unknown_link_type_is_named_and_other_files_still_analysed() {
    let bad = pcap_bytes(147, &[(0, vec![1, 2, 3, 4])]);
    let good = pcap_bytes(
        101,
        &simple_conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    );
    let (_d1, pb) = write_tmp("usb.pcap", &bad);
    let (_d2, pg) = write_tmp("good.pcap", &good);
    let (code, recs, err) = analyze_json(&[&pb, &pg], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("usb.pcap") && err.contains("unsupported link type 147"),
        "{err}"
    );
    assert_eq!(of_type(&recs, "exchange").len(), 1);
}

#[test]
fn standard_input_is_read_with_dash() {
    let pcap = pcap_bytes(
        101,
        &simple_conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    );
    let mut child = Command::new(bin())
        .args(["analyze", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&pcap)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"type\":\"exchange\""))
            .count(),
        1
    );
}

#[test]
fn bad_flag_exits_2_with_usage() {
    let out = run(&["analyze", "--slow-first-byte", "soon", "x.pcap"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}

#[test]
fn closed_pipe_ends_quietly() {
    // Many connections so output exceeds the pipe buffer; the reader closes after one line.
    let mut pkts = Vec::new();
    for i in 0..300u32 {
        let mut conv = simple_conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        for (k, (ts, p)) in conv.iter_mut().enumerate() {
            *ts += i64::from(i) * 10_000 + k as i64;
            // Distinct client ports: rewrite the source/dest port of client packets.
            let port = (40000 + i as u16).to_be_bytes();
            let ihl = ((p[0] & 0x0f) * 4) as usize;
            let from_client = p[12..16] == [10, 0, 0, 1];
            let at = if from_client { ihl } else { ihl + 2 };
            p[at..at + 2].copy_from_slice(&port);
        }
        pkts.extend(conv);
    }
    let pcap = pcap_bytes(101, &pkts);
    let (_d, p) = write_tmp("many.pcap", &pcap);
    // pipefail: the pipeline's status is gatescope's, not head's.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} analyze --format json --all {} | head -n 1",
            bin(),
            p.display()
        ))
        .output()
        .expect("bash");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // Not a failed run (2), nor a signal: the reader went away, that is all.
    let code = out.status.code();
    assert!(matches!(code, Some(0 | 1)), "exit {code:?}: {err}");
}

#[test]
fn proxy_closing_first_on_an_incomplete_body_is_abandonment() {
    // Same bytes, but the proxy closes first and the backend sends nothing more.
    let pcap = pcap_bytes(
        101,
        &conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", false),
    );
    let (_d, p) = write_tmp("abandon.pcap", &pcap);
    let (code, recs, _) = analyze_json(&[&p], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        finding_set(&recs),
        vec![("abandoned_by_client".to_string(), 1)]
    );
}

#[test]
fn live_on_a_missing_interface_names_it_and_exits_2() {
    let out = run(&["live", "-i", "nonexist0", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nonexist0"), "{err}");
}

#[test]
fn a_tag_cannot_overwrite_any_field_gatescope_writes() {
    let demo = repo().join("captures/demo.pcap");
    let (code, recs, _) = analyze_json(&[&demo], &["--all"]);
    assert_eq!(code, 1);
    let mut keys: Vec<String> = recs
        .iter()
        .filter_map(|r| r.as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    assert!(keys.contains(&"type".to_string()), "{keys:?}");
    for k in keys {
        let tag = format!("{k}=x");
        let out = run(&["analyze", "--format", "json", "--tag", &tag, "-"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--tag {tag}: {err}");
        assert!(err.contains("field of gatescope"), "--tag {tag}: {err}");
    }
    // Any other key is added to every line.
    let (_, recs, _) = analyze_json(&[&demo], &["--tag", "host=web1"]);
    assert!(recs.iter().all(|r| r["host"] == "web1"));
}

#[test]
fn a_thread_count_out_of_range_is_a_usage_error() {
    for n in ["0", "100000"] {
        let out = run(&["analyze", "--threads", n, "captures/demo.pcap"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("thread count from 1 to 256"), "{err}");
    }
}

#[test]
fn the_table_keeps_a_late_error_when_there_are_more_connections_than_it_shows() {
    use gatescope::synth::{Conversation, LinkType, PcapWriter};
    const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";
    let mut packets = Vec::new();
    // 300 slow answers (warnings), then one truncated body (an error) at the very end.
    for i in 0..301u16 {
        let client = format!("10.0.0.1:{}", 20_000 + i).parse().expect("addr");
        let mut c = Conversation::new(
            client,
            "10.0.0.2:8080".parse().expect("addr"),
            1_700_000_000_000_000 + i64::from(i) * 100_000,
        );
        c.handshake().client_send(REQ).advance(50_000);
        if i < 300 {
            c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            c.client_fin().server_fin();
        } else {
            c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok");
            c.server_fin().client_fin();
        }
        packets.extend(c.into_packets());
    }
    packets.sort_by_key(|(t, _)| *t);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("many.pcap");
    let mut w =
        PcapWriter::new(std::fs::File::create(&p).expect("create"), LinkType::Raw).expect("pcap");
    w.write_packets(&packets).expect("write");
    drop(w);
    let out = run(&[
        "analyze",
        "--slow-first-byte",
        "10ms",
        p.to_str().expect("utf-8 path"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("ERROR truncated_body"), "{text}");
    assert!(
        text.contains("and 101 more connection(s) with findings"),
        "{text}"
    );
}

#[test]
fn a_bound_reached_is_named_in_the_summary_notes() {
    let demo = repo().join("captures/demo.pcap");
    let (_, recs, _) = analyze_json(&[&demo], &["--max-headers", "0"]);
    let summary = of_type(&recs, "summary");
    let notes = summary[0]["notes"].to_string();
    assert!(notes.contains("limit_reached"), "{notes}");
}

#[test]
fn data_after_a_connection_ended_is_named_in_the_summary_notes() {
    let mut c = gatescope::synth::Conversation::new(
        "10.0.0.1:40200".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.handshake()
        .client_send(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n");
    // A reset ends the connection; the answer that follows is not analysed, and says so.
    c.advance(1000).server_rst().advance(1000);
    c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let (_d, path) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&path], &[]);
    let summary = of_type(&recs, "summary");
    assert_eq!(summary[0]["tcp"]["late_data_packets"], 1);
    let notes = summary[0]["notes"].to_string();
    assert!(notes.contains("1 TCP packet(s) with data"), "{notes}");
}

#[test]
fn a_whole_frame_shorter_than_its_ip_length_is_not_blamed_on_the_snaplen() {
    let mut packets = simple_conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    // The response (the 5th packet) declares 100 more bytes than it carries; the capture
    // kept the whole frame (caplen == len), so this is not a snaplen cut.
    let (_, resp) = &mut packets[4];
    let total = u16::from_be_bytes([resp[2], resp[3]]) + 100;
    resp[2..4].copy_from_slice(&total.to_be_bytes());
    let pcap = pcap_bytes(101, &packets);
    let (_d, p) = write_tmp("short.pcap", &pcap);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    let summary = &of_type(&recs, "summary")[0];
    assert_eq!(summary["read"]["short_ip_frames"], 1);
    assert_eq!(summary["read"]["snaplen_cut_frames"], 0);
    let notes = summary["notes"].to_string();
    assert!(notes.contains("not the snaplen"), "{notes}");
}

#[test]
fn timestamps_running_backwards_are_named_in_the_summary_notes() {
    // The same conversation, its packets stamped in decreasing time (a bad merge).
    let packets: Vec<(i64, Vec<u8>)> =
        simple_conversation(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .into_iter()
            .map(|(t, p)| (1_700_000_000_000_000 - t, p))
            .collect();
    let pcap = pcap_bytes(101, &packets);
    let (_d, p) = write_tmp("backwards.pcap", &pcap);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    let notes = of_type(&recs, "summary")[0]["notes"].to_string();
    assert!(notes.contains("timestamps run backwards"), "{notes}");
}

/// The human report's tables fit a wide terminal (a table wrapped by the terminal cannot be
/// read): a long request target is cut (the JSON keeps it whole), the gateways' long words
/// are wrapped, and a backend with many kinds of findings lists them one per line instead of
/// in one row hundreds of characters wide.
#[test]
fn the_table_fits_a_terminal_whatever_the_targets_and_findings() {
    let mut c = gatescope::synth::Conversation::new(
        "10.0.0.1:40300".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: b\r\n\r\n", "a".repeat(180));
    c.handshake().client_send(long.as_bytes()).advance(1_000);
    c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok");
    c.server_fin().client_fin();
    let (_dir, long_target) = write_conversation(c);
    let mut args = vec!["analyze".to_string()];
    for e in std::fs::read_dir(repo().join("captures")).expect("captures/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "pcap") {
            args.push(p.display().to_string());
        }
    }
    args.push(long_target.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("truncated_body"), "{text}");
    let widest = text
        .lines()
        .filter(|l| l.contains('│'))
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    assert!(widest <= 140, "a table {widest} characters wide:\n{text}");
}

/// A response whose head comes at once and whose body takes two seconds: the exchange's row
/// shows both the first byte and the total, so a slow download is not mistaken for a fast
/// answer.
#[test]
fn the_table_shows_how_long_a_whole_exchange_took() {
    let mut c = gatescope::synth::Conversation::new(
        "10.0.0.1:40400".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.handshake()
        .client_send(b"GET /export HTTP/1.1\r\nHost: b\r\n\r\n")
        .advance(1_000);
    c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        .advance(2_000_000);
    c.server_send(b"done").advance(1_000);
    c.client_fin().server_fin();
    let (_dir, p) = write_conversation(c);
    let out = run(&["analyze", "--all", p.to_str().expect("utf-8 path")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains("/export"))
        .unwrap_or_default()
        .split('│')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>();
    assert_eq!(
        row,
        ["1", "GET", "/export", "200", "1.0 ms", "2.00 s", "33", "42", "complete"],
        "{text}"
    );
}

/// Live capture that sees nothing says so within seconds, and what to check, instead of
/// looking like a healthy backend until Ctrl-C. (Needs root to capture on lo; CI is root.)
#[test]
fn live_capture_that_sees_no_packets_says_what_to_check() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!ci(), "live capture on lo needs root, and CI runs as root");
        eprintln!("skipped: live capture on lo needs root");
        return;
    }
    // Port 9: nothing talks on it in the test run.
    let out = run(&["live", "-i", "lo", "-f", "tcp port 9", "--duration", "6s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no packets on 'lo' with filter 'tcp port 9' in 5 s: check"),
        "{err}"
    );
}

/// A filter (or a capture) with no TCP in it gives an empty report, which must not read as
/// a clean bill of health: the summary says nothing was analysed and what to check.
#[test]
fn a_capture_filter_that_matches_nothing_is_named_in_the_notes() {
    let demo = repo().join("captures/demo.pcap");
    let (code, recs, _) = analyze_json(&[&demo], &["-f", "tcp port 1"]);
    let notes = of_type(&recs, "summary")[0]["notes"].to_string();
    assert!(
        code == 0 && notes.contains("no TCP packets were read"),
        "exit {code}, notes {notes}"
    );
}

/// A backend refusing connections for a minute and a half (two captures, rotated): the
/// summary says when the refusals began and when they stopped — what lines them up with a
/// deploy or a restart — in the table and in the JSON summary.
#[test]
fn the_summary_says_when_each_kind_of_finding_began_and_ended() {
    // 2026-01-15T10:00:00Z.
    const T0: i64 = 1_768_471_200_000_000;
    let refused_at = |port: u16, micros: i64| {
        let mut c = gatescope::synth::Conversation::new(
            format!("10.0.0.1:{port}").parse().expect("addr"),
            "10.0.0.2:8080".parse().expect("addr"),
            micros,
        );
        c.refused();
        write_conversation(c)
    };
    let (_a, first) = refused_at(40001, T0);
    let (_b, last) = refused_at(40002, T0 + 90_000_000);
    let out = run(&["analyze", &first.to_string_lossy(), &last.to_string_lossy()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains("connect_refused"))
        .unwrap_or_default();
    assert!(row.contains("10:00:00–10:01:30"), "{text}");

    let (_, recs, _) = analyze_json(&[&first, &last], &[]);
    let times = &of_type(&recs, "summary")[0]["finding_times"]["connect_refused"];
    assert_eq!(
        (times["first"].as_str(), times["last"].as_str()),
        (
            // The refusing RST comes 210 µs after each SYN.
            Some("2026-01-15T10:00:00.000210Z"),
            Some("2026-01-15T10:01:30.000210Z")
        ),
        "{times}"
    );
}

/// A SYN from client port `port` refused by a RST, then answered by the backend's SYN-ACK
/// 300 µs later; the proxy's reply is the test's.
fn refused_then_syn_acked(port: u16) -> gatescope::synth::Conversation {
    let mut c = gatescope::synth::Conversation::new(
        format!("10.0.0.1:{port}").parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.refused().advance(300);
    c.raw_segment(false, 0, &[], TcpFlags::SYN | TcpFlags::ACK)
        .advance(50);
    c
}

/// A firewall (or conntrack) on the path answers the proxy's SYN with a RST, and the
/// backend's SYN-ACK follows: the proxy, already failed, resets it. The connection is
/// connect_refused, and the summary says the refusal did not come from the backend.
#[test]
fn a_syn_ack_after_the_refusal_says_the_reset_came_from_the_path() {
    let mut c = refused_then_syn_acked(40600);
    c.raw_segment(true, 0, &[], TcpFlags::RST);
    let (_d, path) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&path], &[]);
    let summary = &of_type(&recs, "summary")[0];
    let notes = summary["notes"].to_string();
    assert_eq!(
        (
            finding_set(&recs),
            &summary["tcp"]["synack_after_refusal"],
            &summary["tcp"]["refusal_ignored"],
            notes.contains("that RST did not come from the backend's listener"),
        ),
        (
            vec![("connect_refused".to_string(), 0)],
            &json!(1),
            &json!(0),
            true
        ),
        "{notes}"
    );
}

/// The same RST, but the proxy's stack did not take it (it did not match: an injected or
/// stale one) and went on: the summary owns up that what followed was not analysed.
#[test]
fn a_proxy_that_went_on_after_the_refusal_is_named_in_the_notes() {
    let mut c = refused_then_syn_acked(40601);
    c.raw_segment(true, 0, &[], TcpFlags::ACK).raw_segment(
        true,
        0,
        b"GET / HTTP/1.1\r\nHost: b\r\n\r\n",
        TcpFlags::ACK | TcpFlags::PSH,
    );
    let (_d, path) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&path], &[]);
    let summary = &of_type(&recs, "summary")[0];
    let notes = summary["notes"].to_string();
    assert_eq!(
        (
            &summary["tcp"]["refusal_ignored"],
            notes.contains("the proxy went on with"),
        ),
        (&json!(1), true),
        "{notes}"
    );
}
