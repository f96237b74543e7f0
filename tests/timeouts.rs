//! A timer behind the failures: when most of the backend's early closes (or the proxy's
//! give-ups) come the same time after the request, the summary names that time and the
//! setting it most likely is. Each test is one capture of several connections and what the
//! summary says.

mod common;
use common::*;
use gatescope::synth::Conversation;
use std::path::PathBuf;

const T0: i64 = 1_700_000_000_000_000;
const SEC: i64 = 1_000_000;

/// One connection from client port `port`, starting `start` µs after T0: a GET, then
/// `after` µs of silence, then `end` closes it.
fn failing(port: u16, start: i64, after: i64, end: fn(&mut Conversation)) -> Conversation {
    failing_at("10.0.0.2:8000", port, start, after, end)
}

/// [`failing`], to backend `server`.
fn failing_at(
    server: &str,
    port: u16,
    start: i64,
    after: i64,
    end: fn(&mut Conversation),
) -> Conversation {
    let mut c = Conversation::new(
        format!("10.0.0.1:{port}").parse().expect("addr"),
        server.parse().expect("addr"),
        T0 + start,
    );
    c.handshake()
        .client_send(b"GET /report HTTP/1.1\r\nHost: app\r\n\r\n")
        .advance(after);
    end(&mut c);
    c
}

fn backend_closes(c: &mut Conversation) {
    c.server_fin().advance(1_000).client_fin();
}

fn proxy_gives_up(c: &mut Conversation) {
    c.client_fin().advance(1_000).server_rst();
}

/// The conversations, interleaved by time, as one pcap.
fn capture(convs: Vec<Conversation>) -> (tempfile::TempDir, PathBuf) {
    write_packets(convs.into_iter().flat_map(|c| c.into_packets()).collect())
}

fn timeouts(convs: Vec<Conversation>) -> Vec<String> {
    let (_d, p) = capture(convs);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    of_type(&recs, "summary")[0]["timeouts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t["message"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The summary names exactly one timer: its message starts so and names that default.
fn names_one_timer(convs: Vec<Conversation>, starts: &str, default: &str) {
    let t = timeouts(convs);
    assert!(
        t.len() == 1 && t[0].starts_with(starts) && t[0].contains(default),
        "{t:?}"
    );
}

/// Gunicorn kills a worker 30 s into a request (its default --timeout): five requests, five
/// closes, 30 s after each request.
#[test]
fn backend_closes_30_s_after_each_request_are_named_as_a_worker_timeout() {
    let convs = (0..5)
        .map(|i| {
            failing(
                41_000 + i,
                i64::from(i) * 7 * SEC,
                30 * SEC + i64::from(i) * 20_000,
                backend_closes,
            )
        })
        .collect();
    names_one_timer(
        convs,
        "5 of 5 backend closes before any response byte (closed_before_response, reset_before_response, at 10.0.0.2:8000) came 30.0 s after their request",
        "Gunicorn's default --timeout",
    );
}

/// nginx gives up after 60 s without a byte (its default proxy_read_timeout).
#[test]
fn proxy_closes_60_s_into_each_wait_are_named_as_its_read_timeout() {
    let convs = (0..4)
        .map(|i| failing(42_000 + i, i64::from(i) * 5 * SEC, 60 * SEC, proxy_gives_up))
        .collect();
    names_one_timer(
        convs,
        "4 of 4 proxy give-ups (abandoned_by_client, at 10.0.0.2:8000) came 60.0 s after",
        "nginx's default proxy_read_timeout",
    );
}

/// A Node.js backend closes keep-alive connections idle for 5 s (its default
/// keepAliveTimeout) just as nginx reuses them: three races, each close 5 s after the
/// connection's previous exchange.
#[test]
fn keepalive_races_at_5_s_of_idle_are_named_as_the_backends_keepalive_timeout() {
    let convs = (0..3u16)
        .map(|i| {
            keepalive_race(
                &format!("10.0.0.1:{}", 45_000 + i),
                "10.0.0.2:3000",
                T0 + i64::from(i) * 11 * SEC,
            )
        })
        .collect();
    names_one_timer(convs, "3 of 3 backend closes of idle keep-alive connections (connections' idle_close, keepalive_race, at 10.0.0.2:3000) came 5.0 s after the connection's last exchange", "Node.js's keepAliveTimeout");
}

/// Which side closes an idle connection.
#[derive(Clone, Copy, PartialEq)]
enum Closer {
    Backend,
    Proxy,
}

/// One keep-alive connection to `server` from client port `port`, starting `start` µs after
/// T0: one exchange (the response says `Connection: close` if `announced`), then `idle` µs
/// of silence, then `by` closes it.
fn idle_closed(
    server: &str,
    port: u16,
    start: i64,
    idle: i64,
    by: Closer,
    announced: bool,
) -> Conversation {
    let mut c = Conversation::new(
        format!("10.0.0.1:{port}").parse().expect("addr"),
        server.parse().expect("addr"),
        T0 + start,
    );
    let response: &[u8] = if announced {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    };
    c.handshake()
        .client_send(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
        .advance(3_000)
        .server_send(response)
        .advance(idle);
    if by == Closer::Backend {
        c.server_fin().advance(200).client_fin();
    } else {
        c.client_fin().advance(200).server_fin();
    }
    c
}

/// `n` such connections to `server`, a second apart, from client ports `port`, `port + 1`,
/// …, each idle `idle` µs and a few ms more per connection (timers never fire exactly).
fn idle_closes(
    n: u16,
    server: &str,
    port: u16,
    idle: i64,
    by: Closer,
    announced: bool,
) -> Vec<Conversation> {
    (0..n)
        .map(|i| {
            let jitter = i64::from(i) * 7_000;
            idle_closed(
                server,
                port + i,
                i64::from(i) * SEC,
                idle + jitter,
                by,
                announced,
            )
        })
        .collect()
}

/// A Node.js backend closes every keep-alive connection that idles 5 s, and the proxy never
/// got to reuse one: no race in this capture, but the backend closes idle connections
/// before the proxy does, which is what races need — the summary says so ahead of the 502s.
#[test]
fn backend_closes_of_idle_connections_at_5_s_are_named_before_any_race() {
    let convs = idle_closes(4, "10.0.0.2:3000", 48_000, 5 * SEC, Closer::Backend, false);
    names_one_timer(
        convs,
        "4 of 4 backend closes of idle keep-alive connections (connections' idle_close, keepalive_race, at 10.0.0.2:3000) came 5.0 s after the connection's last exchange: the backend's keep-alive timeout is this long, and it closes idle connections before the proxy does",
        "Node.js's keepAliveTimeout",
    );
}

/// nginx closes upstream connections idle for 60 s (its default keepalive_timeout there).
#[test]
fn proxy_closes_of_idle_connections_at_60_s_are_named_as_its_keepalive_timeout() {
    let convs = idle_closes(3, "10.0.0.2:8000", 49_000, 60 * SEC, Closer::Proxy, false);
    names_one_timer(
        convs,
        "3 of 3 proxy closes of idle keep-alive connections (connections' idle_close, at 10.0.0.2:8000) came 60.0 s after the connection's last exchange",
        "nginx's default keepalive_timeout for upstream connections",
    );
}

/// A backend that said `Connection: close` and closed a little later (a lingering close)
/// did what it announced: that is no keep-alive timeout.
#[test]
fn closes_announced_by_connection_close_name_no_keepalive_timeout() {
    let convs = idle_closes(4, "10.0.0.2:3000", 50_000, 5 * SEC, Closer::Backend, true);
    assert_eq!(timeouts(convs), Vec::<String>::new());
}

/// The connection record says who closed the idle connection and after how long.
#[test]
fn the_connection_record_says_who_closed_it_idle_and_after_how_long() {
    let convs = vec![idle_closed(
        "10.0.0.2:3000",
        51_000,
        0,
        5 * SEC,
        Closer::Backend,
        false,
    )];
    let (_d, p) = capture(convs);
    let (_, recs, _) = analyze_json(&[&p], &[]);
    let conn = &of_type(&recs, "connection")[0];
    // Rounded to the millisecond: the synthetic packets are microseconds apart.
    let idle_ms = conn["idle_close"]["idle_ms"].as_f64().map(f64::round);
    assert_eq!(
        (conn["idle_close"]["by"].as_str(), idle_ms),
        (Some("server"), Some(5000.0)),
        "{conn}"
    );
}

/// Two pools with different worker timeouts, 30 s (Gunicorn's default) and 60 s (Puma's
/// and Unicorn's), three kills each: together neither is three in four of the runs, so each
/// is named for its own backend.
#[test]
fn two_backends_with_different_timeouts_each_get_theirs() {
    let convs = (0..6u16)
        .map(|i| {
            let (server, after) = if i % 2 == 0 {
                ("10.0.0.2:8000", 30 * SEC)
            } else {
                ("10.0.0.3:8000", 60 * SEC)
            };
            failing_at(
                server,
                46_000 + i,
                i64::from(i) * 3 * SEC,
                after,
                backend_closes,
            )
        })
        .collect();
    let t = timeouts(convs);
    let named = |at: &str, secs: &str, default: &str| {
        t.iter()
            .any(|m| m.contains(at) && m.contains(secs) && m.contains(default))
    };
    assert!(
        t.len() == 2
            && named(
                "at 10.0.0.2:8000)",
                "came 30.0 s",
                "Gunicorn's default --timeout"
            )
            && named("at 10.0.0.3:8000)", "came 60.0 s", "Unicorn's timeout"),
        "{t:?}"
    );
}

/// A pool of backends behind one proxy timeout (15 s, Envoy's default): three backends
/// with three give-ups each, three with one: one timer for all six, not one per backend.
#[test]
fn one_timeout_across_a_pool_of_backends_is_named_once() {
    let convs = (0..12u16)
        .map(|i| {
            let server = format!("10.0.1.{}:8000", 1 + i.min(9) / 3 + i.saturating_sub(9));
            let start = i64::from(i) * SEC;
            failing_at(&server, 47_000 + i, start, 15 * SEC, proxy_gives_up)
        })
        .collect();
    names_one_timer(
        convs,
        "12 of 12 proxy give-ups (abandoned_by_client, at 6 backends) came 15.0 s after",
        "Envoy's default route timeout",
    );
}

/// Crashes come whenever: no timer to name.
#[test]
fn backend_closes_at_scattered_times_name_no_timer() {
    let convs = [1_200_000, 7 * SEC, 15 * SEC, 22 * SEC, 41 * SEC]
        .into_iter()
        .enumerate()
        .map(|(i, after)| failing(43_000 + i as u16, i as i64 * SEC, after, backend_closes))
        .collect();
    assert_eq!(timeouts(convs), Vec::<String>::new());
}

/// The table prints the same under "timeouts:".
#[test]
fn the_table_lists_the_timer_above_what_to_check_next() {
    let convs = (0..3)
        .map(|i| failing(44_000 + i, i64::from(i) * SEC, 30 * SEC, backend_closes))
        .collect();
    let (_d, p) = capture(convs);
    let out = run(&["analyze", &p.to_string_lossy()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let timeouts = text.find("\ntimeouts:\n  3 of 3 backend closes before any response byte");
    let next = text.find("what to check next:");
    assert!(
        matches!((timeouts, next), (Some(a), Some(b)) if a < b),
        "{text}"
    );
}

/// The table's connection line says it too (`--all`: the connection has no finding).
#[test]
fn the_table_says_which_side_closed_the_idle_connection() {
    let convs = vec![idle_closed(
        "10.0.0.2:3000",
        52_000,
        0,
        5 * SEC,
        Closer::Backend,
        false,
    )];
    let (_d, p) = capture(convs);
    let out = run(&["analyze", "--all", &p.to_string_lossy()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("── connection")
            && l.ends_with("FIN (server first)  (backend closed it after 5.0 s idle)")),
        "{text}"
    );
}
