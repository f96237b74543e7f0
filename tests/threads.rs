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
