//! A backend that answers before the request body is in (a 413 size limit, a 408 body read
//! timeout), and what its close then does to the proxy: a FIN lets the proxy finish writing
//! and pass the answer on; a reset while the body is still being sent breaks the proxy's
//! write, and nginx answers 502 ("writev() failed (104: Connection reset by peer) while
//! sending request to upstream"). Each test is one such conversation and the findings the
//! user sees for it.

mod common;
use common::*;
use gatescope::synth::Conversation;

const HEAD: &[u8] = b"POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: 100000\r\n\r\n";
const ANSWER_413: &[u8] =
    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn upload() -> Conversation {
    let mut c = Conversation::new(
        "10.0.0.1:40500".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.handshake()
        .client_send(HEAD)
        .client_send(&[b'u'; 20_000])
        .advance(500);
    c
}

fn findings(c: Conversation) -> (i32, Vec<(String, String)>) {
    let (_d, p) = write_conversation(c);
    let (code, recs, _) = analyze_json(&[&p], &[]);
    let kinds = of_type(&recs, "finding")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").to_string(),
                f["severity"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (code, kinds)
}

fn pair(kind: &str, severity: &str) -> (String, String) {
    (kind.to_string(), severity.to_string())
}

/// The early answer, and the write it broke: exit 1.
fn early_answer_and_broken_write() -> (i32, Vec<(String, String)>) {
    (
        1,
        vec![
            pair("early_response", "warning"),
            pair("reset_during_request", "error"),
        ],
    )
}

#[test]
fn an_early_413_then_a_reset_with_the_body_unsent_is_an_error() {
    let mut c = upload();
    c.server_send(ANSWER_413).advance(50).server_rst();
    assert_eq!(findings(c), early_answer_and_broken_write());
}

/// The backend drained what had arrived and closed (FIN); the proxy writes on, and the
/// backend's kernel answers those bytes with a reset: the proxy's write fails all the same.
#[test]
fn an_early_413_then_a_fin_and_the_kernels_reset_to_the_next_bytes_is_an_error() {
    let mut c = upload();
    c.server_send(ANSWER_413).server_fin().advance(50);
    c.client_send(&[b'u'; 3_000]).server_rst();
    assert_eq!(findings(c), early_answer_and_broken_write());
}

/// The proxy read the 413, stopped sending and closed: the reset that answers its close
/// broke nothing.
#[test]
fn a_reset_after_the_proxy_gave_up_on_the_body_is_only_the_early_answer() {
    let mut c = upload();
    c.server_send(ANSWER_413)
        .advance(50)
        .client_fin()
        .server_rst();
    assert_eq!(findings(c), (0, vec![pair("early_response", "warning")]));
}

/// The whole body went through after the early answer; the reset that follows breaks no
/// write.
#[test]
fn a_reset_after_the_whole_body_was_sent_is_only_the_early_answer() {
    let mut c = upload();
    c.server_send(ANSWER_413).advance(50);
    c.client_send(&[b'u'; 80_000]).advance(50).server_rst();
    assert_eq!(findings(c), (0, vec![pair("early_response", "warning")]));
}

/// `Expect: 100-continue` declined with a final status: the proxy never sends the body, as
/// the protocol says, and the reset breaks nothing.
#[test]
fn a_declined_100_continue_then_a_reset_is_no_finding() {
    let mut c = Conversation::new(
        "10.0.0.1:40501".parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    );
    c.handshake()
        .client_send(
            b"POST /upload HTTP/1.1\r\nHost: backend\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n",
        )
        .advance(500);
    c.server_send(ANSWER_413).advance(50).server_rst();
    assert_eq!(findings(c), (0, vec![]));
}

/// No answer at all: a backend that dies reading the body. The finding says the proxy was
/// still sending, which is where nginx's error log puts it.
#[test]
fn a_reset_in_the_middle_of_the_body_without_an_answer_says_the_body_was_being_sent() {
    let mut c = upload();
    c.server_rst();
    let (_d, p) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    let f = first_finding(&recs, "reset_before_response");
    let msg = f["message"].as_str().unwrap_or("");
    let nginx = f["hint"]["nginx"].as_str().unwrap_or("");
    assert!(
        msg.contains("while the proxy was still sending its body (20000 of 100000 bytes sent)")
            && nginx.starts_with(
                "writev() failed (104: Connection reset by peer) while sending request to upstream"
            ),
        "{f}"
    );
}
