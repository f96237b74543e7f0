//! When did it happen? The summary counts errors, warnings and exchanges per time bucket
//! and the table draws them, so that a burst (a deploy, a restart) reads differently from
//! a steady trickle.

mod common;
use common::*;
use gatescope::synth::Conversation;
use serde_json::Value;

/// On a 10 s boundary.
const T0: i64 = 1_700_000_000_000_000;
const SEC: i64 = 1_000_000;

/// A connection at `start` with one GET; the backend answers 200, or (`fail`) closes
/// without answering.
fn request(port: u16, start: i64, fail: bool) -> Conversation {
    let mut c = Conversation::new(
        format!("10.0.0.1:{port}").parse().expect("addr"),
        "10.0.0.2:8000".parse().expect("addr"),
        start,
    );
    c.handshake()
        .client_send(format!("GET /r/{port} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .advance(1_000);
    if fail {
        c.server_fin().advance(100).client_fin();
    } else {
        c.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .advance(500)
            .client_fin()
            .advance(100)
            .server_fin();
    }
    c
}

/// Ten minutes of one request every 5 s; the backend fails every request of minute 4
/// (a bad deploy rolled back). The summary has 10 s buckets, the twelve failures all in
/// the six buckets of that minute, and the table draws them there.
#[test]
fn a_burst_of_errors_shows_where_it_happened() {
    let convs: Vec<Conversation> = (0..120u16)
        .map(|i| {
            let at = i64::from(i) * 5 * SEC;
            request(40_000 + i, T0 + at, (240 * SEC..300 * SEC).contains(&at))
        })
        .collect();
    let (_d, p) = write_packets(convs.into_iter().flat_map(|c| c.into_packets()).collect());
    let (_, recs, _) = analyze_json(&[&p], &[]);
    let t = &of_type(&recs, "summary")[0]["timeline"];
    let errors: Vec<u64> = t["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let burst: Vec<usize> = (0..errors.len()).filter(|&i| errors[i] > 0).collect();
    assert_eq!(
        (
            &t["bucket_s"],
            errors.len(),
            burst,
            errors.iter().sum::<u64>()
        ),
        (&Value::from(10), 60, (24..30).collect::<Vec<_>>(), 12)
    );
    let table = run(&["analyze", &p.display().to_string()]);
    let text = String::from_utf8_lossy(&table.stdout);
    let errors_line = format!(
        "  errors    │{}{}{}│ max 2 per column",
        " ".repeat(24),
        "█".repeat(6),
        " ".repeat(30)
    );
    assert!(
        text.contains("timeline (10 s per column, 22:13:20 → 22:23:20):")
            && text.contains(&errors_line),
        "{text}"
    );
}
