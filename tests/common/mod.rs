//! Helpers shared by the integration tests: run the built binary, parse its JSON Lines.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatescope")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository, when present (always in CI).
pub fn shared() -> Option<PathBuf> {
    let p = repo().join("..").join("shared");
    p.join("captures").is_dir().then_some(p)
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gatescope")
}

/// Runs `analyze --format json` on files; returns (exit code, records, stderr).
pub fn analyze_json(files: &[&Path], extra: &[&str]) -> (i32, Vec<Value>, String) {
    let mut args: Vec<String> = vec!["analyze".into(), "--format".into(), "json".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(files.iter().map(|p| p.display().to_string()));
    let out = Command::new(bin())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run gatescope");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "gatescope panicked on {files:?}: {stderr}"
    );
    let records = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), records, stderr)
}

pub fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

/// (kind, exchange index or 0) of every finding, sorted.
pub fn finding_set(records: &[Value]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = of_type(records, "finding")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_string(),
                f["exchange"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

/// A classic pcap file (raw IPv4 link type) from (timestamp µs, IP packet) pairs.
pub fn pcap_bytes(link: u32, packets: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&link.to_le_bytes());
    for (ts, p) in packets {
        out.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// A TCP/IPv4 packet.
pub fn tcp(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    ack: Option<u32>,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 65535);
    if let Some(a) = ack {
        b = b.ack(a);
    }
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => b,
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build packet");
    out
}

/// A small complete conversation: handshake, one GET, the given response, FIN both ways
/// (the client closes first).
pub fn simple_conversation(response: &[u8]) -> Vec<(i64, Vec<u8>)> {
    conversation(response, false)
}

/// As [`simple_conversation`], choosing who sends the first FIN.
pub fn conversation(response: &[u8], server_closes_first: bool) -> Vec<(i64, Vec<u8>)> {
    let c = ([10, 0, 0, 1], 40000);
    let s = ([10, 0, 0, 2], 8080);
    let req = b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n";
    let t = 1_700_000_000_000_000i64;
    let (ci, si) = (1000u32, 5000u32);
    let c_end = ci + 1 + req.len() as u32;
    let s_end = si + 1 + response.len() as u32;
    let mut v = vec![
        (t, tcp(c, s, ci, None, "S", b"")),
        (t + 100, tcp(s, c, si, Some(ci + 1), "S", b"")),
        (t + 200, tcp(c, s, ci + 1, Some(si + 1), "", b"")),
        (t + 300, tcp(c, s, ci + 1, Some(si + 1), "P", req)),
        (t + 5000, tcp(s, c, si + 1, Some(c_end), "P", response)),
    ];
    if server_closes_first {
        v.push((t + 6000, tcp(s, c, s_end, Some(c_end), "F", b"")));
        v.push((t + 7000, tcp(c, s, c_end, Some(s_end + 1), "F", b"")));
        v.push((t + 8000, tcp(s, c, s_end + 1, Some(c_end + 1), "", b"")));
    } else {
        v.push((t + 6000, tcp(c, s, c_end, Some(s_end), "F", b"")));
        v.push((t + 7000, tcp(s, c, s_end, Some(c_end + 1), "F", b"")));
        v.push((t + 8000, tcp(c, s, c_end + 1, Some(s_end + 1), "", b"")));
    }
    v
}

/// Running under CI (`.ci/run` sets `CI=true`), where every optional input is present and a
/// skipped check is a lost one.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Writes a synthetic conversation as an Ethernet pcap in a fresh temporary directory (kept
/// alive by the returned guard).
pub fn write_conversation(conv: gatescope::synth::Conversation) -> (tempfile::TempDir, PathBuf) {
    write_packets(conv.into_packets())
}

/// Writes (timestamp µs, IP packet) pairs — several conversations' packets, say — in time
/// order as an Ethernet pcap in a fresh temporary directory (kept alive by the returned
/// guard).
pub fn write_packets(mut packets: Vec<(i64, Vec<u8>)>) -> (tempfile::TempDir, PathBuf) {
    packets.sort_by_key(|p| p.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("conv.pcap");
    let file = std::fs::File::create(&path).expect("create");
    let mut w = gatescope::synth::PcapWriter::new(file, gatescope::synth::LinkType::Ethernet)
        .expect("pcap");
    w.write_packets(&packets).expect("write");
    drop(w);
    (dir, path)
}

/// A keep-alive race from `client` to `server` starting at `start` (µs): one exchange
/// (`GET /a`, 200), 5 s idle, then the backend closes the connection (FIN) and 300 µs
/// later — its FIN still in flight — the proxy reuses it for `GET /b`, which the backend
/// answers with a reset (at the sequence the proxy acknowledged, as Linux does). The
/// conversation ends at the reset.
pub fn keepalive_race(client: &str, server: &str, start: i64) -> gatescope::synth::Conversation {
    use gatescope::synth::{Conversation, TcpFlags};
    let mut c = Conversation::new(
        client.parse().expect("addr"),
        server.parse().expect("addr"),
        start,
    );
    c.handshake()
        .client_send(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
        .advance(2_000)
        .server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .advance(5_000_000);
    let req = b"GET /b HTTP/1.1\r\nHost: app\r\n\r\n";
    let fin_at = c.sent(false);
    c.fin(false, false).advance(300);
    let at = c.sent(true);
    c.raw_segment(true, at, req, TcpFlags::ACK | TcpFlags::PSH)
        .skip(true, req.len() as u64)
        .advance(150);
    c.raw_segment(false, fin_at, &[], TcpFlags::RST);
    c
}

/// The first finding of `kind`, or `Null`.
pub fn first_finding(records: &[Value], kind: &str) -> Value {
    of_type(records, "finding")
        .into_iter()
        .find(|f| f["kind"] == kind)
        .cloned()
        .unwrap_or_default()
}
