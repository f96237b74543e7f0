//! Every input a fuzzer found a problem with, replayed through the same harness
//! (`gatescope::fuzzing`) in the normal test run. Inputs live in
//! `tests/fuzz-regressions/<target>/`, named for what they broke; a new crash from
//! `cargo fuzz run <target>` is added there by copying `fuzz/artifacts/<target>/crash-*`.
//!
//! `tests/fuzz-regressions/open/<target>/` holds inputs that still fail, waiting for a fix;
//! `cargo test --test fuzz_regressions -- --ignored` replays them (in a debug build: some fail
//! only with overflow checks, as under `cargo fuzz`). Once fixed, an input moves
//! up to its target's directory.

use gatescope::fuzzing;
use gatescope::limits::Limits;
use gatescope::record::{OrderKey, Record, Side};
use gatescope::session::{CloseKind, Ctx, Emitter, Session};
use gatescope::time::Ts;
use std::path::PathBuf;

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fuzz-regressions")
        .join(target)
}

/// Replays every input under `root/<target>/`; returns (inputs replayed, the ones that failed).
fn replay(root: &str) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for target in fuzzing::TARGETS {
        let Ok(entries) = std::fs::read_dir(dir(root).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("read a saved fuzz input");
            replayed += 1;
            let ok = std::panic::catch_unwind(|| fuzzing::run(target, &data));
            if !matches!(ok, Ok(true)) {
                failures.push(file.display().to_string());
            }
        }
    }
    (replayed, failures)
}

#[test]
fn every_saved_fuzz_input_passes_its_harness() {
    let (replayed, failures) = replay("");
    assert!(failures.is_empty(), "harness failed on: {failures:#?}");
    assert!(replayed > 0, "no saved fuzz inputs found");
}

/// Inputs found but not fixed yet (see the module doc); passes once they are all fixed.
#[test]
#[ignore = "inputs waiting for a fix"]
fn open_fuzz_inputs() {
    let (_, failures) = replay("open");
    assert!(failures.is_empty(), "still failing: {failures:#?}");
}

#[test]
fn saved_inputs_sit_under_a_known_target() {
    let root = dir("");
    for entry in std::fs::read_dir(&root).expect("tests/fuzz-regressions") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            name == "open" || fuzzing::TARGETS.contains(&name.as_ref()),
            "tests/fuzz-regressions/{name} is not a fuzz target"
        );
    }
}

/// A request whose end was lost in a capture gap must not stay at the head of the queue: with
/// it there, every later exchange on the keep-alive connection piled up behind it until
/// `max_pending` reported a limit that was never reached (and wrote the lost one twice).
#[test]
fn a_request_lost_in_a_gap_does_not_pin_the_pending_queue() {
    let limits = Limits::default();
    let mut s = Session::new(
        Emitter::new(
            1,
            "10.0.0.1:40000".parse().expect("addr"),
            "10.0.0.2:8080".parse().expect("addr"),
        ),
        &limits,
        false,
        false,
    );
    let mut out: Vec<(OrderKey, Record)> = Vec::new();
    let mut frame = 0u64;
    let mut step = |f: &mut dyn FnMut(&mut Session, &mut Ctx<'_>)| {
        frame += 1;
        let mut ctx = Ctx {
            ts: Ts(1_700_000_000_000_000 + frame as i64 * 1000),
            frame,
            key_frame: frame,
            out: &mut out,
        };
        f(&mut s, &mut ctx);
    };
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // The head of request 1 is cut by a gap; its response still arrives.
    step(&mut |s, c| s.client_data(b"GET /1 HTTP/1.1\r\nHost: b\r\n", c));
    step(&mut |s, c| s.gap(Side::Client, 10, c));
    step(&mut |s, c| s.server_data(resp, c));
    for i in 2..(limits.max_pending as u32 + 10) {
        let req = format!("GET /{i} HTTP/1.1\r\nHost: b\r\n\r\n");
        step(&mut |s, c| s.client_data(req.as_bytes(), c));
        step(&mut |s, c| s.server_data(resp, c));
    }
    step(&mut |s, c| s.client_close(CloseKind::Fin, c));
    step(&mut |s, c| s.server_close(CloseKind::Fin, None, c));
    let mut ctx = Ctx {
        ts: Ts(1_800_000_000_000_000),
        frame: frame + 1,
        key_frame: u64::MAX,
        out: &mut out,
    };
    s.finish(ctx.ts, &mut ctx);
    let limits_hit = out
        .iter()
        .filter(|(_, r)| matches!(r, Record::Finding(f) if f.kind.name() == "limit_reached"))
        .count();
    assert_eq!(limits_hit, 0, "no limit was reached");
    let mut indices: Vec<u32> = out
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Exchange(e) => Some(e.index),
            _ => None,
        })
        .collect();
    let n = indices.len();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), n, "an exchange was written twice");
    assert_eq!(n as u32, limits.max_pending as u32 + 9);
}

/// `--max-head-bytes 1 --head-buffer-cap 1` used to panic (the head scanner kept the last
/// three bytes of a full buffer, and a buffer of one byte has no three).
#[test]
fn head_buffers_smaller_than_a_line_end_do_not_panic() {
    use gatescope::h1::{Parser, Role, Step};
    for cap in 0..6 {
        let limits = Limits {
            max_head_bytes: cap,
            head_buffer_cap: cap,
            ..Limits::default()
        };
        for role in [Role::Request, Role::Response] {
            let mut p = Parser::new(role, &limits);
            let mut d: &[u8] =
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
            let mut broke = false;
            for _ in 0..1000 {
                if d.is_empty() {
                    break;
                }
                let (n, step) = p.step(d);
                d = &d[n..];
                broke |= matches!(step, Step::Broken(_));
            }
            assert!(d.is_empty(), "cap {cap}: stuck");
            assert!(
                broke || cap > 3,
                "cap {cap}: no head fits, so the stream breaks"
            );
        }
    }
}
