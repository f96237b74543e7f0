//! `--threads N` shards connections over workers; the output must be byte-identical to one
//! thread's, in both formats.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn output(files: &[PathBuf], threads: &str, format: &str) -> (Option<i32>, Vec<u8>) {
    let out = Command::new(bin())
        .arg("analyze")
        .args(["--threads", threads, "--format", format, "--all"])
        .args(files)
        .output()
        .expect("run");
    (out.status.code(), out.stdout)
}

fn assert_same(files: &[PathBuf]) {
    for format in ["json", "table"] {
        let one = output(files, "1", format);
        for t in ["2", "3", "8"] {
            let many = output(files, t, format);
            assert!(
                one == many,
                "--threads {t} differs from --threads 1 ({format}) on {files:?}"
            );
        }
    }
}

fn pcaps_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"));
    v.sort();
    v
}

#[test]
fn bundled_captures_give_identical_output_for_any_thread_count() {
    let files = pcaps_in(&repo().join("captures"));
    assert!(!files.is_empty(), "no bundled captures");
    for f in &files {
        assert_same(std::slice::from_ref(f));
    }
    // All of them as one continuous capture: many connections interleaved across workers.
    assert_same(&files);
}

#[test]
fn shared_captures_give_identical_output_for_any_thread_count() {
    let Some(root) = shared() else {
        // CI always has ../shared beside the clone: there, a skip would hide a lost check.
        assert!(!ci(), "../shared missing under CI=true");
        eprintln!("../shared not present; skipped");
        return;
    };
    let mut files = Vec::new();
    for sub in [
        "suricata-verify/http-gap-simple",
        "zeek/http/pipelined-requests",
        "suricata-verify/tcp-rst-unacked-stream-10",
        "zeek/http/methods",
    ] {
        files.extend(pcaps_in(&root.join("captures").join(sub)));
    }
    assert!(files.len() >= 4);
    assert_same(&files);
}

/// The mapped reader cuts a file into windows of 512 KB, indexed by the workers in
/// parallel from guessed record boundaries; the bundled captures fit in one window.
fn generated(dir: &Path, size: u64, seed: u64) -> PathBuf {
    let path = dir.join(format!("bulk-{seed}.pcap"));
    let st = Command::new(env!("CARGO_BIN_EXE_gatescope-gen"))
        .args(["bulk", "--out"])
        .arg(&path)
        .args(["--size", &size.to_string(), "--seed", &seed.to_string()])
        .output()
        .expect("run gatescope-gen");
    assert!(st.status.success(), "gatescope-gen failed: {st:?}");
    path
}

/// Everything a run says: exit code, standard output, standard error.
fn said(file: &Path, threads: &str) -> (Option<i32>, Vec<u8>, String) {
    let out = Command::new(bin())
        .args(["analyze", "--format", "json", "--threads", threads])
        .arg(file)
        .output()
        .expect("run");
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_all_say_the_same(file: &Path) -> (Option<i32>, Vec<u8>, String) {
    let one = said(file, "1");
    for t in ["2", "3", "8"] {
        let many = said(file, t);
        assert!(
            one == many,
            "--threads {t} differs from --threads 1 on {file:?}:\n{}\nvs\n{}",
            one.2,
            many.2
        );
    }
    one
}

#[test]
fn a_capture_of_many_windows_gives_identical_output_for_any_thread_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = generated(dir.path(), 6_000_000, 11);
    let (_, out, _) = assert_all_say_the_same(&f);
    let exchanges = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.contains(r#""type":"exchange""#))
        .count();
    assert!(exchanges > 300, "only {exchanges} exchanges in 6 MB");
}

/// Offsets of the records of a little-endian classic pcap file.
fn record_offsets(b: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut p = 24;
    while p + 16 <= b.len() {
        v.push(p);
        let caplen = u32::from_le_bytes([b[p + 8], b[p + 9], b[p + 10], b[p + 11]]) as usize;
        p += 16 + caplen;
    }
    v
}

#[test]
fn a_cut_or_damaged_large_file_stops_at_the_same_record_for_any_thread_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = generated(dir.path(), 3_000_000, 12);
    let bytes = std::fs::read(&f).expect("read");
    let offsets = record_offsets(&bytes);
    // Cut in the middle of a record's captured bytes, in the fourth window.
    let cut = dir.path().join("cut.pcap");
    let at = offsets
        .iter()
        .position(|&o| o > 1_700_000)
        .expect("records");
    std::fs::write(&cut, &bytes[..offsets[at] + 16 + 7]).expect("write");
    let (code, _, err) = assert_all_say_the_same(&cut);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("stopped after record {at}: truncated dump file")),
        "{err}"
    );
    // An impossible captured length in a record header, in the third window.
    let bad = dir.path().join("damaged.pcap");
    let mut b = bytes.clone();
    let k = offsets
        .iter()
        .position(|&o| o > 1_200_000)
        .expect("records");
    b[offsets[k] + 8..offsets[k] + 12].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    std::fs::write(&bad, &b).expect("write");
    let (code, _, err) = assert_all_say_the_same(&bad);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "stopped after record {k}: invalid packet capture length"
        )),
        "{err}"
    );
}

#[test]
fn payloads_that_look_like_record_headers_do_not_fool_the_parallel_reader() {
    use gatescope::synth::{Conversation, LinkType, PcapWriter};
    // Response bodies made of fake capture records (plausible time, lengths): a worker
    // that guesses where a window's first record starts lands on them, and must find out.
    const SEC: u32 = 1_700_000_000;
    let mut fake = Vec::new();
    while fake.len() < 200_000 {
        fake.extend_from_slice(&SEC.to_le_bytes());
        fake.extend_from_slice(&5u32.to_le_bytes());
        fake.extend_from_slice(&40u32.to_le_bytes());
        fake.extend_from_slice(&40u32.to_le_bytes());
        fake.extend_from_slice(&[0u8; 40]);
    }
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", fake.len());
    let mut resp = head.into_bytes();
    resp.extend_from_slice(&fake);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fake-headers.pcap");
    let file = std::fs::File::create(&path).expect("create");
    let mut w = PcapWriter::new(file, LinkType::Ethernet).expect("pcap");
    for i in 0..16u16 {
        let mut c = Conversation::new(
            format!("10.0.0.1:{}", 41000 + i).parse().expect("addr"),
            "10.0.0.2:8080".parse().expect("addr"),
            i64::from(SEC) * 1_000_000 + i64::from(i) * 100_000,
        );
        c.handshake()
            .client_send(b"GET /f HTTP/1.1\r\nHost: b\r\n\r\n")
            .server_send(&resp)
            .client_fin()
            .server_fin();
        for (ts, p) in c.into_packets() {
            w.write_packet(ts, &p).expect("write");
        }
    }
    drop(w);
    let (code, out, err) = assert_all_say_the_same(&path);
    assert_eq!(code, Some(0), "{err}");
    let exchanges = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.contains(r#""type":"exchange""#) && l.contains(r#""status":200"#))
        .count();
    assert_eq!(exchanges, 16);
}
