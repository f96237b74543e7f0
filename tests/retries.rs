//! Did the client see it? A failed request that the proxy sent again on another connection
//! and got answered there was, most likely, never a 502 for its client. Each test is one
//! capture and what the summary's `retries` (and the table) say about its failed requests.

mod common;
use common::*;
use gatescope::synth::Conversation;
use serde_json::Value;

const T0: i64 = 1_700_000_000_000_000;
const SEC: i64 = 1_000_000;
const BACKEND: &str = "10.0.0.2:3000";

fn conv(client: &str, server: &str, start: i64) -> Conversation {
    Conversation::new(
        client.parse().expect("addr"),
        server.parse().expect("addr"),
        start,
    )
}

/// A keep-alive connection from proxy port `port`: one exchange, 5 s idle, then the
/// backend's close crosses the proxy's `GET /b` and answers it with a reset (the race
/// nginx retries once on a cached connection). Returns the conversation, ended at the reset.
fn race(port: u16, start: i64) -> Conversation {
    keepalive_race(&format!("10.0.0.1:{port}"), BACKEND, start)
}

/// [`race`], and the proxy's retry of `GET /b` on a new connection to another backend
/// 0.2 ms after the reset, answered 200.
fn race_then_retry() -> Vec<Conversation> {
    let a = race(45_000, T0);
    let retry_at = a.now() + 200;
    let b = attempt("10.0.0.1:45001", "10.0.0.3:3000", retry_at, "/b", Some(200));
    vec![a, b]
}

/// A new connection from `client` to `server` at `start` with one request for `target`,
/// answered `status` (or, with `None`, closed by the backend before any response byte).
fn attempt(
    client: &str,
    server: &str,
    start: i64,
    target: &str,
    status: Option<u16>,
) -> Conversation {
    let mut c = conv(client, server, start);
    c.handshake()
        .client_send(format!("GET {target} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .advance(1_000);
    match status {
        Some(s) => {
            c.server_send(format!("HTTP/1.1 {s} X\r\nContent-Length: 2\r\n\r\nok").as_bytes())
                .advance(1_000)
                .client_fin()
                .advance(100)
                .server_fin();
        }
        None => {
            c.server_fin().advance(100).client_fin();
        }
    }
    c
}

/// The conversations, interleaved by time, as one pcap.
fn capture(convs: Vec<Conversation>) -> (tempfile::TempDir, std::path::PathBuf) {
    write_packets(convs.into_iter().flat_map(|c| c.into_packets()).collect())
}

/// The JSON records for the conversations.
fn records(convs: Vec<Conversation>) -> Vec<Value> {
    let (_d, p) = capture(convs);
    analyze_json(&[&p], &[]).1
}

/// The summary's `retries` for the conversations, and the table report.
fn retries(convs: Vec<Conversation>) -> (Value, String) {
    let (_d, p) = capture(convs);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    let table = run(&["analyze", &p.display().to_string()]);
    (
        of_type(&recs, "summary")[0]["retries"].clone(),
        String::from_utf8_lossy(&table.stdout).into_owned(),
    )
}

/// Each listed chain: its first failure's kind, its fate, the status that answered it, and
/// the servers of its later attempts.
fn chains(r: &Value) -> Vec<(String, String, Value, Vec<String>)> {
    r["chains"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["kind"].as_str().unwrap_or("").to_string(),
                        c["fate"].as_str().unwrap_or("").to_string(),
                        c["status"].clone(),
                        c["attempts"]
                            .as_array()
                            .map(|v| {
                                v.iter()
                                    .map(|a| a["server"].as_str().unwrap_or("").to_string())
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn s(v: &str) -> String {
    v.to_string()
}

/// nginx's mitigation of the keep-alive race: the reset request goes out again on a new
/// connection (here to the next backend) 0.2 ms later and is answered 200. The race is an
/// error on the wire; the client most likely got the 200.
#[test]
fn a_race_the_proxy_sent_again_and_got_answered_is_answered() {
    let (r, table) = retries(race_then_retry());
    assert_eq!(
        chains(&r),
        [(
            s("keepalive_race"),
            s("answered"),
            Value::from(200),
            vec![s("10.0.0.3:3000")]
        )]
    );
    let message = r["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("1 failed request(s) that a proxy can retry")
            && message.contains("1 was sent again by the proxy on another connection and answered (200): its client most likely got that answer"),
        "{message}"
    );
    assert!(
        table.contains("retry:   sent again 0.6 ms later on connection 11 exchange 1 to 10.0.0.3:3000: answered 200: the client most likely got that"),
        "{table}"
    );
}

/// For log pipelines: each failed request's fate is a `retry` record, written right after
/// the record that settled it — here the exchange of the attempt that was answered.
#[test]
fn the_fate_is_a_retry_record_right_after_the_answering_exchange() {
    let recs = records(race_then_retry());
    let at = recs.iter().position(|r| r["type"] == "retry");
    let before = at.and_then(|i| recs.get(i.checked_sub(1)?));
    assert_eq!(
        (
            of_type(&recs, "retry").len(),
            before.map(|r| (r["type"].clone(), r["server"].clone())),
            at.map(|i| (recs[i]["fate"].clone(), recs[i]["exchange"].clone()))
        ),
        (
            1,
            Some((Value::from("exchange"), Value::from("10.0.0.3:3000"))),
            Some((Value::from("answered"), Value::from(2)))
        )
    );
}

/// A `retry` record stands alone in a log pipeline: it names the failed request (who sent
/// it, to which backend, what it asked for) without a join with the finding record.
#[test]
fn a_retry_record_names_the_failed_request() {
    let recs = records(race_then_retry());
    let retry = of_type(&recs, "retry").into_iter().next().cloned();
    assert_eq!(
        retry.map(|r| [
            r["client"].clone(),
            r["server"].clone(),
            r["method"].clone(),
            r["target"].clone()
        ]),
        Some([
            Value::from("10.0.0.1:45000"),
            Value::from(BACKEND),
            Value::from("GET"),
            Value::from("/b")
        ])
    );
}

/// The same race, and nothing after it: the client got the gateway's error.
#[test]
fn a_failure_nothing_followed_is_not_retried() {
    let (r, table) = retries(vec![race(45_000, T0)]);
    assert_eq!(
        chains(&r),
        [(s("keepalive_race"), s("not_retried"), Value::Null, vec![])]
    );
    assert!(
        table.contains("retry:   not sent again on any connection in the capture: this failure reached the client"),
        "{table}"
    );
}

/// The same request from another proxy address, or one that went out before the failure,
/// is some other client's request, not a retry.
#[test]
fn the_same_request_from_elsewhere_or_before_the_failure_is_no_retry() {
    let a = race(45_000, T0);
    let reset_at = a.now();
    let other_proxy = attempt("10.0.0.9:45001", BACKEND, reset_at + 200, "/b", Some(200));
    // Its request goes out a few ms before the failing one.
    let before = attempt("10.0.0.1:45002", BACKEND, reset_at - 5_000, "/b", Some(200));
    let (r, _) = retries(vec![a, other_proxy, before]);
    assert_eq!(
        chains(&r),
        [(s("keepalive_race"), s("not_retried"), Value::Null, vec![])]
    );
}

/// A request sent again more than the retry window after its failure is a new request.
#[test]
fn the_same_request_seconds_later_is_no_retry() {
    let a = race(45_000, T0);
    let late = attempt(
        "10.0.0.1:45001",
        BACKEND,
        a.now() + 3 * SEC,
        "/b",
        Some(200),
    );
    let (r, _) = retries(vec![a, late]);
    assert_eq!(r["not_retried"], 1, "{r}");
}

/// A backend that closes before answering, retried on the next backend which does the
/// same, then on a third that answers 503: one failed request, two attempts after it,
/// answered 503 — what the client got.
#[test]
fn a_chain_of_attempts_ends_with_the_last_ones_answer() {
    let first = attempt("10.0.0.1:46000", BACKEND, T0, "/c", None);
    let second = attempt(
        "10.0.0.1:46001",
        "10.0.0.3:3000",
        first.now() + 300,
        "/c",
        None,
    );
    let third = attempt(
        "10.0.0.1:46002",
        "10.0.0.4:3000",
        second.now() + 300,
        "/c",
        Some(503),
    );
    let (r, table) = retries(vec![first, second, third]);
    assert_eq!(
        (chains(&r), &r["failed_requests"], &r["retry_attempts"]),
        (
            vec![(
                s("closed_before_response"),
                s("answered"),
                Value::from(503),
                vec![s("10.0.0.3:3000"), s("10.0.0.4:3000")]
            )],
            &Value::from(1),
            &Value::from(2)
        )
    );
    assert!(
        table.contains(
            "attempt 2 of the request that failed first on connection 1 exchange 1; sent again"
        ),
        "{table}"
    );
}

/// Retried, and failed on every attempt: the client got the gateway's error.
#[test]
fn a_request_that_failed_on_every_attempt_failed_again() {
    let first = attempt("10.0.0.1:46000", BACKEND, T0, "/d", None);
    let second = attempt(
        "10.0.0.1:46001",
        "10.0.0.3:3000",
        first.now() + 300,
        "/d",
        None,
    );
    let (r, _) = retries(vec![first, second]);
    assert_eq!(
        chains(&r),
        [(
            s("closed_before_response"),
            s("failed_again"),
            Value::Null,
            vec![s("10.0.0.3:3000")]
        )]
    );
}
