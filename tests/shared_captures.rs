//! gatescope on captures it did not make: other projects' test suites, in `../shared/captures`
//! (present in CI; these tests pass silently without it, and say so).
//!
//! Expected outcomes are the other tools' opinions; where gatescope disagrees, the comment on
//! the case says why, from the bytes.

mod common;
use common::*;
use std::path::PathBuf;

fn shared_or_skip(test: &str) -> Option<PathBuf> {
    let s = shared();
    if s.is_none() {
        // CI always has ../shared beside the clone: there, a skip would hide a lost check.
        assert!(!ci(), "{test}: ../shared/captures missing under CI=true");
        eprintln!("{test}: ../shared/captures not present; skipped");
    }
    s
}

fn all_captures(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("captures")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "pcap" || x == "pcapng" || x == "cap")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn no_panic_and_a_summary_on_every_shared_capture() {
    let Some(root) = shared_or_skip("no_panic") else {
        return;
    };
    let files = all_captures(&root);
    assert!(
        files.len() > 100,
        "expected the whole shared set, found {}",
        files.len()
    );
    for f in &files {
        let (code, recs, err) = analyze_json(&[f], &[]);
        assert!(
            (0..=2).contains(&code),
            "{}: exit {code}: {err}",
            f.display()
        );
        assert_eq!(
            of_type(&recs, "summary").len(),
            1,
            "{}: no summary record",
            f.display()
        );
    }
}

/// Where tshark dissected every message (as many request frames as response frames, more
/// than zero, and no TCP expert warnings) and gatescope found nothing malformed, both count
/// the same requests and responses.
#[test]
fn exchange_counts_agree_with_tshark_where_it_saw_every_message() {
    let Some(root) = shared_or_skip("tshark counts") else {
        return;
    };
    let tsv = std::fs::read_to_string(root.join("captures/TSHARK_SUMMARY.tsv")).expect("tsv");
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (c_path, c_req, c_resp, c_warn, c_err) = (
        col("local_path"),
        col("http_request_frames_extports"),
        col("http_response_frames_extports"),
        col("tcp_expert_warnings"),
        col("tcp_expert_errors"),
    );
    let mut checked = 0;
    let mut disagree = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(u64::MAX);
        let (tq, tr) = (n(c_req), n(c_resp));
        if tq != tr || tq == 0 || n(c_warn) != 0 || n(c_err) != 0 {
            continue;
        }
        let path = root.join(f[c_path]);
        let (_, recs, _) = analyze_json(&[&path], &[]);
        let malformed = of_type(&recs, "finding").iter().any(|x| {
            x["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("malformed"))
        });
        if malformed {
            continue;
        }
        let ex = of_type(&recs, "exchange");
        let reqs = ex.iter().filter(|e| !e["request_start"].is_null()).count() as u64;
        let resps = ex.iter().filter(|e| !e["status"].is_null()).count() as u64;
        checked += 1;
        if (reqs, resps) != (tq, tr) {
            disagree.push(format!(
                "{}: ours {reqs}/{resps}, tshark {tq}/{tr}",
                f[c_path]
            ));
        }
    }
    assert!(checked >= 40, "only {checked} captures qualified");
    assert!(
        disagree.is_empty(),
        "disagreements:\n{}",
        disagree.join("\n")
    );
}

/// The 13 teaching captures of START_HERE.tsv: what gatescope reports and why.
/// Each entry: path, expected (kind, exchange) set, expected exchange count.
#[test]
fn teaching_captures_give_the_described_outcome() {
    let Some(root) = shared_or_skip("teaching") else {
        return;
    };
    type Case<'a> = (&'a str, &'a [(&'a str, u64)], usize);
    let cases: &[Case] = &[
        // 3 GETs; a segment inside the 3rd... (the 2nd in wire order of bodies) response
        // body is missing: a capture gap, never a truncated response. The exchange it touches
        // has outcome capture_gap.
        ("captures/suricata-verify/http-gap-simple/input.pcap", &[("capture_gap", 0)], 3),
        // Half a header block, then FIN: the response head was cut off.
        ("captures/suricata-verify/http-close-headers/input.pcap", &[("truncated_head", 1)], 1),
        // Request in 4 segments, then the server's RST before any response byte.
        (
            "captures/suricata-verify/tcp-rst-unacked-stream-05-http-nogap/input.pcap",
            &[("reset_before_response", 1)],
            1,
        ),
        // Two conflicting Content-Lengths in the request: malformed (warning; it is the
        // proxy's side) and the request stream is not framed further, so the smuggled second
        // request is not invented as an exchange.
        ("captures/suricata-verify/http-multiple-cl/input.pcap", &[("malformed_request", 1)], 1),
        // Chunked request with an extension and bare-LF line ends: accepted, one exchange.
        ("captures/suricata-verify/http-event-chunk/input.pcap", &[], 1),
        // The chunked body stops inside a chunk, but the client sent its FIN first (16 µs
        // after the last byte) and the server sent nothing more: on the wire the client gave
        // up on an incomplete response (abandoned_by_client), the server's FIN only answered.
        (
            "captures/suricata-verify/http-evader/http-evader-099/input.pcap",
            &[("abandoned_by_client", 1)],
            1,
        ),
        // Picked up mid-stream with a response first: reported as an unsolicited response
        // (info, as the capture started mid-stream), then a normal exchange.
        (
            "captures/suricata-verify/tcp-stream-after-swap/http-start-from-response.pcap",
            &[("unsolicited_response", 1)],
            2,
        ),
        // A real download: the SYN answered only after its retransmission, 7 s after the first
        // (slow connect), the first response byte 12 s after the request (slow), then lost
        // segments (capture gaps) and the client's RST before the body completed.
        (
            "captures/suricata-verify/tcp-rst-unacked-stream-10/TLPW1-tcp-174.56.47.59-10.3.11.101-tcp-80-49309.pcap",
            &[
                ("abandoned_by_client", 1),
                ("capture_gap", 0),
                ("slow_connect", 0),
                ("slow_first_byte", 1),
            ],
            1,
        ),
        // TE + CL in the request (smuggling): malformed request; the client closed right after
        // sending and no response came.
        (
            "captures/zeek/http/261/variant-04-te_cl_desync/variant-04-te_cl_desync.pcap",
            &[("abandoned_by_client", 1), ("malformed_request", 1)],
            1,
        ),
        // 100-continue: the interim 100 does not consume the request; one exchange, status 200.
        ("captures/zeek/http/100-continue/100-continue.pcap", &[], 1),
        // Five pipelined GETs answered in order: five exchanges, nothing wrong.
        ("captures/zeek/http/pipelined-requests/pipelined-requests.pcap", &[], 5),
        // The whole response was never captured (only the FIN at seq 2903): a capture gap, and
        // no response seen for 10 s (slow_first_byte), but no invented truncation.
        (
            "captures/zeek/tcp/miss_end_data/miss_end_data.pcap",
            &[("capture_gap", 0), ("slow_first_byte", 1)],
            1,
        ),
        // pcapng, no SYN (only the SYN-ACK): one clean exchange.
        (
            "captures/zeek/tcp/http-on-irc-port-missing-syn/http-on-irc-port-missing-syn.pcapng",
            &[],
            1,
        ),
    ];
    let mut failures = Vec::new();
    for (path, expected, exchanges) in cases {
        let (_, recs, _) = analyze_json(&[&root.join(path)], &[]);
        let got = finding_set(&recs);
        let want: Vec<(String, u64)> = expected.iter().map(|(k, i)| (k.to_string(), *i)).collect();
        let n = of_type(&recs, "exchange").len();
        if got != want || n != *exchanges {
            failures.push(format!(
                "{path}: findings {got:?} (want {want:?}), exchanges {n} (want {exchanges})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn teaching_capture_details() {
    let Some(root) = shared_or_skip("details") else {
        return;
    };
    // The gap lands in the second response body; that exchange's outcome says so.
    let (_, recs, _) = analyze_json(
        &[&root.join("captures/suricata-verify/http-gap-simple/input.pcap")],
        &[],
    );
    let outcomes: Vec<String> = of_type(&recs, "exchange")
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(outcomes, ["complete", "capture_gap", "complete"]);
    // 100-continue folds into one exchange with the final status.
    let (_, recs, _) = analyze_json(
        &[&root.join("captures/zeek/http/100-continue/100-continue.pcap")],
        &[],
    );
    assert_eq!(of_type(&recs, "exchange")[0]["status"], 200);
    // pcapng without the client's SYN (HTTP from the IRC port 6669): the SYN-ACK alone says
    // who the server is.
    let (_, recs, _) = analyze_json(
        &[&root.join(
            "captures/zeek/tcp/http-on-irc-port-missing-syn/http-on-irc-port-missing-syn.pcapng",
        )],
        &[],
    );
    let c = &of_type(&recs, "connection")[0];
    assert_eq!(c["midstream"], false);
    assert!(
        c["server"].as_str().is_some_and(|s| s.ends_with(":80")),
        "{c}"
    );
    // An HTTP request carried in 11 IPv4 fragments (PcapPlusPlus' reassembly test): not
    // reassembled, so no exchange is invented from it, and the summary says why.
    let (_, recs, _) = analyze_json(
        &[&root.join("captures/pcapplusplus/frag_http_req/frag_http_req.pcap")],
        &[],
    );
    let summary = of_type(&recs, "summary")[0];
    assert_eq!(summary["read"]["tcp_fragments"], 11);
    assert_eq!(finding_set(&recs), Vec::<(String, u64)>::new());
    assert!(
        summary["notes"]
            .to_string()
            .contains("11 packet(s) were IP fragments of TCP segments"),
        "{summary}"
    );
}
