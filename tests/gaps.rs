//! Capture gaps are a fact about the capture: what they hide gets no verdict.

mod common;
use common::*;
use gatescope::synth::{Conversation, LinkType, PcapWriter};

fn write(conv: Conversation) -> (tempfile::TempDir, std::path::PathBuf) {
    write_packets(&conv.into_packets())
}

fn write_packets(packets: &[(i64, Vec<u8>)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gap.pcap");
    let file = std::fs::File::create(&path).expect("create");
    let mut w = PcapWriter::new(file, LinkType::Ethernet).expect("pcap");
    w.write_packets(packets).expect("write");
    drop(w);
    (dir, path)
}

/// A proxy (10.0.0.1, from `port`) to backend (10.0.0.2:8080) conversation to script.
fn conversation(port: u16) -> Conversation {
    Conversation::new(
        format!("10.0.0.1:{port}").parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    )
}

const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn a_response_to_a_request_lost_in_a_gap_is_not_unsolicited() {
    let mut c = conversation(40000);
    c.handshake().client_send(REQ).server_send(RESP);
    // The second request never made it into the capture; the backend acknowledges it.
    c.advance(1000).skip(true, REQ.len() as u64).ack(false);
    c.server_send(RESP).advance(1000).client_fin().server_fin();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
    let outcomes: Vec<&str> = of_type(&recs, "exchange")
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, ["complete", "capture_gap"]);
}

#[test]
fn a_proxy_fin_acknowledging_a_response_the_capture_missed_is_not_abandonment() {
    let mut c = conversation(40001);
    c.handshake().client_send(REQ);
    // The whole response was dropped by the capture; the proxy got it and closes.
    c.advance(500).skip(false, RESP.len() as u64);
    c.advance(500).client_fin().server_fin();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
}

#[test]
fn a_response_lost_between_messages_does_not_shift_the_pairing() {
    let mut c = conversation(40002);
    c.handshake().client_send(REQ).server_send(RESP);
    // The second response is missing from the capture (the proxy ACKs it); two more follow.
    c.advance(1000)
        .client_send(REQ)
        .skip(false, RESP.len() as u64)
        .ack(true);
    for _ in 0..2 {
        c.advance(1000).client_send(REQ).server_send(RESP);
    }
    c.advance(1000).client_fin().server_fin();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
    let outcomes: Vec<&str> = of_type(&recs, "exchange")
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        outcomes,
        ["complete", "capture_gap", "complete", "complete"]
    );
}

/// A response segment split into IP fragments (a smaller MTU on the path): fragments are not
/// reassembled, so its bytes are a capture gap, and the summary says why — never a
/// truncated response.
#[test]
fn a_fragmented_response_is_a_capture_gap_the_summary_explains() {
    let mut c = conversation(40002);
    c.handshake().client_send(REQ).server_send(RESP);
    c.advance(500).client_fin().server_fin();
    let mut packets = Vec::new();
    for (ts, p) in c.into_packets() {
        let is_response = p.windows(8).any(|w| w == b"HTTP/1.1");
        let is_server = p.get(12..16) == Some(&[10, 0, 0, 2][..]);
        match gatescope::synth::fragment_ipv4(&p, 24).filter(|_| is_response && is_server) {
            Some((a, b)) => packets.extend([(ts, a), (ts, b)]),
            None => packets.push((ts, p)),
        }
    }
    let (_d, path) = write_packets(&packets);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
    let summary = of_type(&recs, "summary")[0];
    assert_eq!(summary["read"]["tcp_fragments"], 2);
    let notes = summary["notes"].to_string();
    assert!(
        notes.contains("2 packet(s) were IP fragments of TCP segments"),
        "{notes}"
    );
}

/// The packets of `conv` sent from `ip` only (IPv4 packets: the source address is at bytes
/// 12..16): what a capture of one direction holds.
fn one_direction(conv: Conversation, ip: [u8; 4]) -> Vec<(i64, Vec<u8>)> {
    conv.into_packets()
        .into_iter()
        .filter(|(_, p)| p.get(12..16) == Some(&ip[..]))
        .collect()
}

#[test]
fn a_capture_of_the_client_side_only_is_a_capture_gap_not_unanswered_syns() {
    let mut c = conversation(40002);
    c.handshake().client_send(REQ).server_send(RESP);
    c.advance(2_000_000).client_send(REQ).server_send(RESP);
    c.advance(1000).server_fin().client_fin();
    let (_d, path) = write_packets(&one_direction(c, [10, 0, 0, 1]));
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
    let gap = &of_type(&recs, "finding")[0];
    assert_eq!(gap["evidence"]["one_direction_only"], true);
    // Both responses, and nothing more: the server's FIN is not a missing byte.
    assert_eq!(gap["evidence"]["to_client"]["bytes"], 2 * RESP.len() as u64);
    let conn = &of_type(&recs, "connection")[0];
    assert_eq!(conn["close"]["fin"]["first"], "server");
}

#[test]
fn a_capture_of_the_server_side_only_is_a_capture_gap_not_unsolicited_responses() {
    let mut c = conversation(40003);
    c.handshake().client_send(REQ).server_send(RESP);
    c.advance(1000).client_fin().server_fin();
    let (_d, path) = write_packets(&one_direction(c, [10, 0, 0, 2]));
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
    let gap = &of_type(&recs, "finding")[0];
    assert_eq!(gap["evidence"]["to_server"]["bytes"], REQ.len() as u64);
}

/// The response was never captured (the proxy acknowledges it 5 s after the request): the
/// wait was slow as far as the capture shows, but its first byte may sit in the gap, so when
/// it came is unknown. The finding stays, touched by the gap: low confidence.
#[test]
fn a_slow_first_byte_whose_response_start_is_in_a_gap_is_low_confidence() {
    let mut c = conversation(40010);
    c.handshake().client_send(REQ);
    c.advance(5_000_000)
        .skip(false, RESP.len() as u64)
        .ack(true);
    c.advance(1000).client_fin().server_fin();
    let (_d, path) = write(c);
    let (_, recs, _) = analyze_json(&[&path], &[]);
    let slow: Vec<&serde_json::Value> = of_type(&recs, "finding")
        .into_iter()
        .filter(|f| f["kind"] == "slow_first_byte")
        .collect();
    assert!(
        !slow.is_empty() && slow.iter().all(|f| f["confidence"] == "low"),
        "{slow:?}"
    );
}

/// A RST is proof of what its sender sent, like a FIN: response bytes before its sequence
/// number that the capture never carried (a kernel drop) are a capture gap, not a body the
/// backend cut off.
#[test]
fn a_backend_reset_past_response_bytes_the_capture_missed_is_a_capture_gap_not_truncation() {
    let mut c = conversation(40004);
    c.handshake().client_send(REQ);
    // The response's last bytes are missing from the capture; the backend then resets.
    let (shown, lost) = RESP.split_at(RESP.len() - 3);
    c.advance(500)
        .server_send(shown)
        .skip(false, lost.len() as u64);
    c.advance(500).server_rst();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
}

#[test]
fn a_backend_reset_past_a_whole_response_the_capture_missed_is_not_a_reset_before_response() {
    let mut c = conversation(40005);
    c.handshake().client_send(REQ);
    c.advance(500).skip(false, RESP.len() as u64);
    c.advance(500).server_rst();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
}

#[test]
fn a_proxy_reset_acknowledging_a_response_the_capture_missed_is_not_abandonment() {
    let mut c = conversation(40006);
    c.handshake().client_send(REQ);
    // The proxy got the whole response (the capture did not) and resets, acknowledging it.
    c.advance(500).skip(false, RESP.len() as u64);
    c.advance(500).client_rst();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
}

#[test]
fn a_proxy_reset_past_request_bytes_the_capture_missed_is_a_capture_gap() {
    let mut c = conversation(40007);
    c.handshake().client_send(REQ).server_send(RESP);
    // A second request is missing from the capture; the proxy then resets.
    c.advance(500).skip(true, REQ.len() as u64);
    c.advance(500).client_rst();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("capture_gap".to_string(), 0)]);
    assert_eq!(code, 0);
}

/// A reset whose sequence number lies far beyond any send window (a middlebox's made-up
/// number) proves nothing about bytes sent: the body it cuts is truncated, no gap invented.
#[test]
fn a_reset_with_a_sequence_number_far_ahead_invents_no_gap() {
    let mut c = conversation(40020);
    c.handshake().client_send(REQ);
    let (shown, _) = RESP.split_at(RESP.len() - 3);
    c.advance(500).server_send(shown).ack(true);
    // 1 GiB "skipped": the reset carries a number no real window reaches.
    c.advance(500).skip(false, 1 << 30).server_rst();
    let (_d, path) = write(c);
    let (code, recs, _) = analyze_json(&[&path], &[]);
    assert_eq!(finding_set(&recs), vec![("truncated_body".to_string(), 1)]);
    assert_eq!(code, 1);
}
