//! gatescope reads classic pcap files itself (large reads, no per-packet libpcap call) and
//! everything else through libpcap. Both readers must give the analysis the same frames: the
//! output for a file must equal the output for the same bytes on standard input (which always
//! goes through libpcap), whatever the byte order, time stamp precision, rotation into
//! several files, truncation or thread count.

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The JSON lines of a run but the summary (its input error line names the file).
fn body(o: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(o)
        .lines()
        .filter(|l| !l.contains("\"type\":\"summary\""))
        .map(str::to_string)
        .collect()
}

fn run_file(files: &[PathBuf], extra: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let out = Command::new(bin())
        .arg("analyze")
        .args(extra)
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code(), out.stdout, err)
}

fn run_stdin(bytes: &[u8], extra: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let mut child = Command::new(bin())
        .arg("analyze")
        .args(extra)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = feeder.join();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code(), out.stdout, err)
}

const FORMATS: [&[&str]; 2] = [
    &["--format", "json", "--all"],
    &["--format", "table", "--all"],
];

/// A classic little-endian microsecond pcap: global header and records (header, data).
struct Pcap {
    header: Vec<u8>,
    records: Vec<([u32; 4], Vec<u8>)>,
}

fn parse(bytes: &[u8]) -> Option<Pcap> {
    if bytes.get(..4)? != 0xa1b2_c3d4u32.to_le_bytes() {
        return None;
    }
    let header = bytes.get(..24)?.to_vec();
    let mut records = Vec::new();
    let mut pos = 24;
    while pos < bytes.len() {
        let h = bytes.get(pos..pos + 16)?;
        let f = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let hdr = [f(0), f(4), f(8), f(12)];
        let data = bytes.get(pos + 16..pos + 16 + hdr[2] as usize)?.to_vec();
        pos += 16 + hdr[2] as usize;
        records.push((hdr, data));
    }
    Some(Pcap { header, records })
}

impl Pcap {
    /// The same capture written big-endian and/or with nanosecond time stamps.
    fn write(&self, big_endian: bool, nanos: bool) -> Vec<u8> {
        let w32 = |out: &mut Vec<u8>, v: u32| {
            out.extend_from_slice(&if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        let h = &self.header;
        let f16 = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let f32 = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut out = Vec::new();
        w32(&mut out, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
        for v in [f16(4), f16(6)] {
            out.extend_from_slice(&if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            });
        }
        for i in [8, 12, 16, 20] {
            w32(&mut out, f32(i));
        }
        for (hdr, data) in &self.records {
            w32(&mut out, hdr[0]);
            // nanoseconds that scale back to the same microseconds
            w32(&mut out, if nanos { hdr[1] * 1000 + 999 } else { hdr[1] });
            w32(&mut out, hdr[2]);
            w32(&mut out, hdr[3]);
            out.extend_from_slice(data);
        }
        out
    }

    /// Records `range` as a file of their own.
    fn part(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut out = self.header.clone();
        for (hdr, data) in &self.records[range] {
            for v in hdr {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(data);
        }
        out
    }
}

fn classic_captures() -> Vec<PathBuf> {
    let mut dirs = vec![repo().join("captures")];
    if let Some(root) = shared() {
        for sub in [
            "suricata-verify/http-gap-simple",
            "zeek/http/pipelined-requests",
            "suricata-verify/tcp-rst-unacked-stream-10",
            "zeek/http/methods",
        ] {
            dirs.push(root.join("captures").join(sub));
        }
    }
    let mut v: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read(p)
                .ok()
                .and_then(|b| parse(&b))
                .is_some_and(|p| !p.records.is_empty())
        })
        .collect();
    v.sort();
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

#[test]
fn files_and_standard_input_give_the_same_output() {
    let files = classic_captures();
    assert!(files.len() >= 40, "{}", files.len());
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for extra in FORMATS {
            let file = run_file(std::slice::from_ref(f), extra);
            let stdin = run_stdin(&bytes, extra);
            assert!(file.0 == stdin.0 && file.1 == stdin.1, "{f:?} {extra:?}");
        }
    }
}

#[test]
fn byte_order_and_nanosecond_time_stamps_do_not_change_the_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in classic_captures().iter().step_by(3) {
        let pcap = parse(&std::fs::read(f).expect("read")).expect("classic pcap");
        let want = run_file(std::slice::from_ref(f), FORMATS[0]);
        for (be, ns) in [(true, false), (false, true), (true, true)] {
            let bytes = pcap.write(be, ns);
            let p = write(dir.path(), "variant.pcap", &bytes);
            let got = run_file(std::slice::from_ref(&p), FORMATS[0]);
            assert!(got.1 == want.1, "{f:?} big-endian {be} nanoseconds {ns}");
            let stdin = run_stdin(&bytes, FORMATS[0]);
            assert!(
                stdin.1 == want.1,
                "{f:?} via libpcap, big-endian {be} ns {ns}"
            );
        }
    }
}

/// A bulk capture of several megabytes: many chunks, records cut by chunk boundaries.
fn bulk(dir: &Path) -> PathBuf {
    let p = dir.join("bulk.pcap");
    let st = Command::new(env!("CARGO_BIN_EXE_gatescope-gen"))
        .args([
            "bulk",
            "--size",
            "6M",
            "--seed",
            "3",
            "--connections-concurrent",
            "40",
        ])
        .arg("--out")
        .arg(&p)
        .stderr(Stdio::null())
        .status()
        .expect("gatescope-gen");
    assert!(st.success());
    p
}

#[test]
fn a_large_capture_read_in_chunks_matches_libpcap_for_any_thread_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = bulk(dir.path());
    let bytes = std::fs::read(&p).expect("read");
    let want = run_stdin(&bytes, &["--format", "json", "--threads", "1"]);
    // The generator injects a few faults: error findings, exit code 1.
    assert_eq!(want.0, Some(1), "{}", want.2);
    for t in ["1", "2", "3"] {
        let got = run_file(
            std::slice::from_ref(&p),
            &["--format", "json", "--threads", t],
        );
        assert!(got.1 == want.1, "--threads {t}");
        let got = run_stdin(&bytes, &["--format", "json", "--threads", t]);
        assert!(got.1 == want.1, "stdin --threads {t}");
    }
}

#[test]
fn rotated_files_are_one_capture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = bulk(dir.path());
    let pcap = parse(&std::fs::read(&p).expect("read")).expect("classic pcap");
    let n = pcap.records.len();
    let cuts = [0, n / 5, n / 5 + 1, n / 2, n];
    let parts: Vec<PathBuf> = cuts
        .windows(2)
        .enumerate()
        .map(|(i, w)| write(dir.path(), &format!("part{i}.pcap"), &pcap.part(w[0]..w[1])))
        .collect();
    for extra in [
        &["--format", "json"][..],
        &["--format", "table", "--all"][..],
    ] {
        let whole = run_file(std::slice::from_ref(&p), extra);
        for t in ["1", "2"] {
            let mut args = extra.to_vec();
            args.extend(["--threads", t]);
            let rotated = run_file(&parts, &args);
            // The summary counts the files; everything before it must be equal.
            let cut = |o: &[u8]| {
                let s = String::from_utf8_lossy(o).into_owned();
                s.lines()
                    .filter(|l| !l.contains("\"type\":\"summary\"") && !l.contains("files"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(cut(&rotated.1), cut(&whole.1), "{extra:?} --threads {t}");
        }
    }
}

#[test]
fn a_cut_record_is_reported_alike_by_both_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = bulk(dir.path());
    let mut bytes = std::fs::read(&p).expect("read");
    // Cut in the middle of a record somewhere past the first chunks, and in a record header.
    for cut in [bytes.len() * 2 / 3, 24 + 16 + 7] {
        bytes.truncate(cut);
        let f = write(dir.path(), "cut.pcap", &bytes);
        for t in ["1", "2"] {
            let file = run_file(
                std::slice::from_ref(&f),
                &["--format", "json", "--threads", t],
            );
            let stdin = run_stdin(&bytes, &["--format", "json", "--threads", t]);
            assert_eq!(file.0, Some(2));
            assert_eq!(stdin.0, Some(2));
            let record = |e: &str| {
                e.split("stopped after record ")
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .map(str::to_string)
            };
            assert!(record(&file.2).is_some(), "{}", file.2);
            assert_eq!(
                record(&file.2),
                record(&stdin.2),
                "{} / {}",
                file.2,
                stdin.2
            );
            // Everything but the summary's input error line (it names the file) is equal.
            assert_eq!(body(&file.1), body(&stdin.1), "cut at {cut}, --threads {t}");
        }
    }
}

#[test]
fn a_damaged_record_stops_every_reader_at_the_same_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = bulk(dir.path());
    let pristine = std::fs::read(&p).expect("read");
    let pcap = parse(&pristine).expect("classic pcap");
    // Record offsets, to damage the captured length of a record here and there (in the first
    // chunk, near chunk boundaries, near the end).
    let mut offsets = Vec::new();
    let mut pos = 24;
    for (hdr, _) in &pcap.records {
        offsets.push(pos);
        pos += 16 + hdr[2] as usize;
    }
    let n = offsets.len();
    let mb = |m: usize| offsets.iter().position(|&o| o >= m << 20).unwrap_or(n - 1);
    for at in [3, mb(1), mb(1) + 1, mb(3), n - 2] {
        let mut bytes = pristine.clone();
        let o = offsets[at] + 8;
        bytes[o..o + 4].copy_from_slice(&0x0100_0000u32.to_le_bytes());
        let f = write(dir.path(), "damaged.pcap", &bytes);
        let stdin = run_stdin(&bytes, &["--format", "json", "--threads", "1"]);
        for t in ["1", "2", "3"] {
            let file = run_file(
                std::slice::from_ref(&f),
                &["--format", "json", "--threads", t],
            );
            assert_eq!(file.0, Some(2), "{}", file.2);
            let why = |e: &str| {
                e.lines()
                    .find(|l| l.contains("stopped after record"))
                    .and_then(|l| l.split("stopped after").nth(1))
                    .map(str::to_string)
            };
            assert_eq!(why(&file.2), why(&stdin.2), "record {at}, --threads {t}");
            assert!(
                why(&file.2).is_some_and(|w| w.contains(&format!("record {at}:"))),
                "{}",
                file.2
            );
            assert!(
                body(&file.1) == body(&stdin.1),
                "record {at}, --threads {t}"
            );
        }
    }
}

/// Capture files are mapped: one that another process truncates while it is being read (a
/// `tcpdump -C -W` ring reusing the name) must end the run with a message, not a bare
/// SIGBUS. gatescope is held still by a full stdout pipe while the file shrinks.
#[test]
fn a_file_truncated_while_it_is_read_ends_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    for threads in ["1", "2"] {
        // Large enough that, with the writing thread stuck on the pipe, the workers' queues
        // (a few batches of records each) fill before they reach the end of the file.
        let path = dir.path().join(format!("shrinking-{threads}.pcap"));
        let gen = Command::new(env!("CARGO_BIN_EXE_gatescope-gen"))
            .args(["bulk", "--out"])
            .arg(&path)
            .args(["--size", "150000000", "--seed", "21"])
            .output()
            .expect("run gatescope-gen");
        assert!(gen.status.success());
        let child = Command::new(bin())
            .args(["analyze", "--format", "json", "--threads", threads])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Megabytes of JSON Lines: the pipe fills long before the end of the file.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(100_000).expect("truncate");
        let out = child.wait_with_output().expect("wait");
        let _ = std::fs::remove_file(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--threads {threads}: {err}");
        assert!(
            err.contains("shrank while it was being read") && err.contains("cat FILE |"),
            "--threads {threads}: {err}"
        );
    }
}

#[test]
fn a_large_non_capture_on_stdin_is_refused_without_hanging() {
    // More than a pipe holds (64 KiB): libpcap refuses it after reading the first bytes.
    let garbage: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut child = Command::new(bin())
        .args(["analyze", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&garbage);
    });
    // Bounded wait: a hang fails the test instead of stalling the suite.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = feeder.join();
    let status = status.expect("gatescope hung on a large non-capture input on stdin");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("not a readable pcap"), "{err}");
}

/// One pcapng block: type, body (padded to 4 bytes), lengths around it.
fn ng_block(kind: u32, body: &[u8]) -> Vec<u8> {
    let pad = (4 - body.len() % 4) % 4;
    let len = (12 + body.len() + pad) as u32;
    let mut b = Vec::new();
    b.extend(kind.to_le_bytes());
    b.extend(len.to_le_bytes());
    b.extend(body);
    b.extend(std::iter::repeat_n(0u8, pad));
    b.extend(len.to_le_bytes());
    b
}

#[test]
fn a_pcapng_with_interfaces_of_different_link_types_says_how_to_split_it() {
    let mut shb = Vec::new();
    shb.extend(0x1a2b_3c4du32.to_le_bytes());
    shb.extend(1u16.to_le_bytes());
    shb.extend(0u16.to_le_bytes());
    shb.extend((-1i64).to_le_bytes());
    let idb = |link: u16| {
        let mut b = Vec::new();
        b.extend(link.to_le_bytes());
        b.extend(0u16.to_le_bytes());
        b.extend(65535u32.to_le_bytes());
        b
    };
    let mut file = ng_block(0x0a0d_0d0a, &shb);
    file.extend(ng_block(1, &idb(1))); // Ethernet
    file.extend(ng_block(1, &idb(101))); // raw IP, as from a tun interface
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("two-links.pcapng");
    std::fs::write(&p, &file).expect("write");
    let (code, _, err) = run_file(&[p], &["--format", "json"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("different link types") && err.contains("frame.interface_id"),
        "{err}"
    );
}
