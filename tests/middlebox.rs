//! A reset sent in the backend's name by something between proxy and backend (a load
//! balancer's or firewall's idle timeout, conntrack): its TTL is not that of the backend's
//! own packets. Each test is one conversation and what the user sees for it.

mod common;
use common::*;
use gatescope::synth::Conversation;
use serde_json::json;

fn conn(port: u16) -> Conversation {
    Conversation::new(
        format!("10.0.0.1:{port}").parse().expect("addr"),
        "10.0.0.2:8080".parse().expect("addr"),
        1_700_000_000_000_000,
    )
}

/// A request, then a reset in the backend's name with another TTL: the request fails as
/// any reset would make it (reset_before_response) and the reset is named as the path's,
/// with both TTLs.
#[test]
fn a_reset_with_another_ttl_is_named_as_the_paths() {
    let mut c = conn(42_000);
    c.handshake()
        .client_send(b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n")
        .advance(2_000)
        .set_ttl(52)
        .server_rst();
    let (_d, p) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    let f = first_finding(&recs, "middlebox_reset");
    assert_eq!(
        (finding_set(&recs), f["evidence"].clone()),
        (
            vec![
                ("middlebox_reset".to_string(), 0),
                ("reset_before_response".to_string(), 1)
            ],
            json!({"side": "server", "rst_ttl": 52, "ttl": 64})
        )
    );
}

/// The backend's own reset carries its TTL: only the reset's effect is reported.
#[test]
fn the_backends_own_reset_is_not_the_paths() {
    let mut c = conn(42_001);
    c.handshake()
        .client_send(b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n")
        .advance(2_000)
        .server_rst();
    let (_d, p) = write_conversation(c);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    assert_eq!(
        finding_set(&recs),
        vec![("reset_before_response".to_string(), 1)]
    );
}
