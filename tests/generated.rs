//! The benchmark generator and the analyzer agree: the faults `gatescope-gen bulk` injects
//! into a large keep-alive capture are found, each on its own connection, and nothing else.

mod common;

use common::{analyze_json, of_type};
use std::collections::BTreeMap;
use std::process::Command;

/// What the generator says it injected: finding kind → count, from its
/// `fault NAME: N (gatescope: KIND)` lines.
fn injected(stderr: &str) -> (BTreeMap<String, u64>, usize) {
    let mut by_kind = BTreeMap::new();
    let mut kinds_used = 0;
    for line in stderr.lines().filter(|l| l.starts_with("fault ")) {
        let (Some(n), Some(kind)) = (
            line.split(": ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok()),
            line.split("(gatescope: ")
                .nth(1)
                .map(|k| k.trim_end_matches(')')),
        ) else {
            panic!("unexpected generator line: {line}");
        };
        if n > 0 {
            kinds_used += 1;
            *by_kind.entry(kind.to_string()).or_insert(0) += n;
        }
    }
    (by_kind, kinds_used)
}

#[test]
fn every_fault_injected_into_a_bulk_capture_is_found_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bulk.pcap");
    let gen = Command::new(env!("CARGO_BIN_EXE_gatescope-gen"))
        .args([
            "bulk",
            "--size",
            "20M",
            "--seed",
            "5",
            "--fault-rate",
            "0.05",
            "--out",
        ])
        .arg(&path)
        .output()
        .expect("run gatescope-gen");
    let said = String::from_utf8_lossy(&gen.stderr);
    assert!(gen.status.success(), "gatescope-gen failed: {said}");
    let (want, kinds_used) = injected(&said);
    assert_eq!(kinds_used, 4, "every fault kind is in the capture: {said}");

    for threads in ["1", "2"] {
        let (code, records, err) = analyze_json(&[&path], &["--threads", threads]);
        assert_eq!(code, 1, "error findings make exit code 1: {err}");
        let findings = of_type(&records, "finding");
        let mut found: BTreeMap<String, u64> = BTreeMap::new();
        for f in &findings {
            *found
                .entry(f["kind"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(found, want, "--threads {threads}");
        let mut conns: Vec<u64> = findings
            .iter()
            .map(|f| f["conn"].as_u64().unwrap_or(0))
            .collect();
        conns.sort_unstable();
        conns.dedup();
        assert_eq!(
            conns.len(),
            findings.len(),
            "--threads {threads}: one finding per faulty connection"
        );
    }
}
