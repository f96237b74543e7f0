//! What gatescope reports: the finding kinds, their severity and what each gateway makes of them.
//!
//! Kind names are part of the JSON schema and therefore stable. Each kind maps to one wire
//! condition; the wording of the gateway hints follows what nginx, HAProxy and Envoy themselves
//! log (see README "Findings"), so that an on-call engineer can match a finding to the line in
//! the gateway's own log.

use serde::Serialize;
use std::fmt;

/// How bad a finding is for the requests that crossed the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Context: nothing failed because of it.
    Info,
    /// Risky or slow, but the gateway would still have served a response.
    Warning,
    /// A gateway would have answered 502/504 or passed on a broken response.
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// How sure gatescope is. A finding in a direction that had a capture gap nearby is `Low`:
/// the missing bytes may hold the very thing that would have explained it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    High,
    Low,
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $sev:ident; )*) => {
        /// Every condition gatescope detects. The snake_case name is the stable `kind` field.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind { $( $(#[$doc])* $variant, )* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[ $( Kind::$variant, )* ];

            pub fn name(self) -> &'static str {
                match self { $( Kind::$variant => $name, )* }
            }

            pub fn severity(self) -> Severity {
                match self { $( Kind::$variant => Severity::$sev, )* }
            }

            pub fn from_name(s: &str) -> Option<Kind> {
                match s { $( $name => Some(Kind::$variant), )* _ => None }
            }
        }
    };
}

kinds! {
    /// SYN answered by RST.
    ConnectRefused => "connect_refused", Error;
    /// SYN never answered (retransmitted, or the capture ends).
    ConnectTimeout => "connect_timeout", Error;
    /// SYN answered by an ICMP destination unreachable (a firewall's reject, no route).
    ConnectUnreachable => "connect_unreachable", Error;
    /// The reset that ended a connection came with another TTL than its side's packets.
    MiddleboxReset => "middlebox_reset", Warning;
    /// SYN answered, but only after retransmissions or a second or more.
    SlowConnect => "slow_connect", Warning;
    /// Server RST after (part of) a request, before any response byte.
    ResetBeforeResponse => "reset_before_response", Error;
    /// Server FIN after a request, before any response byte.
    ClosedBeforeResponse => "closed_before_response", Error;
    /// Response head started, then FIN/RST before its end.
    TruncatedHead => "truncated_head", Error;
    /// Body shorter than its framing, ended by FIN or RST.
    TruncatedBody => "truncated_body", Error;
    /// The status line is not `HTTP/x.y NNN ...`.
    MalformedStatusLine => "malformed_status_line", Error;
    /// A header line nginx rejects as "upstream sent invalid header".
    MalformedHeader => "malformed_header", Error;
    /// Response head larger than `--max-head-bytes` (nginx proxy_buffer_size).
    HeadTooLarge => "head_too_large", Error;
    /// Content-Length that is not a plain decimal number.
    InvalidContentLength => "invalid_content_length", Error;
    /// Two Content-Length headers.
    DuplicateContentLength => "duplicate_content_length", Error;
    /// Content-Length together with Transfer-Encoding.
    ContentLengthWithChunked => "content_length_with_chunked", Error;
    /// A Transfer-Encoding other than exactly `chunked`.
    UnsupportedTransferEncoding => "unsupported_transfer_encoding", Error;
    /// A chunk size line that does not parse.
    InvalidChunk => "invalid_chunk", Error;
    /// Bytes after the end of a response that no request explains.
    ExcessData => "excess_data", Warning;
    /// A response with no request pending.
    UnsolicitedResponse => "unsolicited_response", Warning;
    /// A response while the proxy was still sending the request body.
    EarlyResponse => "early_response", Warning;
    /// After an early response, the backend reset the connection with the request body
    /// still being sent: the proxy's write fails.
    ResetDuringRequest => "reset_during_request", Error;
    /// First response byte later than `--slow-first-byte` after the request's last byte.
    SlowFirstByte => "slow_first_byte", Warning;
    /// The proxy closed or reset while a response was still owed (timeout 504 or abort 499).
    AbandonedByClient => "abandoned_by_client", Error;
    /// A request on a reused keep-alive connection that the server was closing.
    KeepaliveRace => "keepalive_race", Error;
    /// A receiver advertised a zero window.
    ZeroWindow => "zero_window", Warning;
    /// Bytes missing from the capture.
    CaptureGap => "capture_gap", Warning;
    /// The backend itself answered 502/503/504.
    BackendErrorStatus => "backend_error_status", Info;
    /// A malformed request head on the proxy->backend leg (the gateway's own fault, or a
    /// client's bytes passed through).
    MalformedRequest => "malformed_request", Warning;
    /// The connection is TLS or HTTP/2, which gatescope cannot read. An error when the
    /// backend answered an HTTP/1.x request that way (a protocol mismatch), else a warning.
    UnsupportedProtocol => "unsupported_protocol", Warning;
    /// A bounded resource of gatescope's own ran out; analysis of this connection is partial.
    LimitReached => "limit_reached", Warning;
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the gateways in front of this backend would have done. Taken from the gateways' own
/// source and docs: nginx error-log text and status, HAProxy termination state, Envoy flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayHint {
    /// The nginx error-log line (without the " while ..." tail where the phase says it).
    pub nginx: &'static str,
    /// The status nginx answers the client with (0: nginx makes no status of its own: the
    /// backend's response passes through, possibly truncated). 499 is what nginx logs for a
    /// request its client abandoned (the client gets nothing).
    pub nginx_status: u16,
    /// HAProxy's termination state (first two characters).
    pub haproxy: &'static str,
    /// Envoy's %RESPONSE_FLAGS%.
    pub envoy: &'static str,
}

impl Kind {
    /// What to look at next: the usual cause behind this kind, and the check or setting
    /// that settles it. The 502 checklist (is the backend up, is the network sound, are the
    /// proxy's timeouts right, what do the logs say) answered from the wire.
    pub fn next_step(self) -> &'static str {
        match self {
            Kind::ConnectRefused => "nothing accepted connections on that address: the backend is down, restarting (a rolling deploy still routed to), or listening elsewhere; check it is up (ss -ltnp on its host) and the proxy's upstream address",
            Kind::ConnectTimeout => "the SYNs got no answer: the backend host is down or unreachable, or a firewall drops the traffic; test from the proxy host (nc -vz HOST PORT) and check firewall rules",
            Kind::ConnectUnreachable => "a firewall or router rejected the proxy's connection for the backend: a REJECT rule on the backend's host or on the path (iptables or nftables reject, firewalld's default icmp-host-prohibited), or no route to the backend (its host down, a wrong address); the evidence says who sent the ICMP and why: check that host's firewall rules and routes (from the proxy host: traceroute -T -p PORT BACKEND)",
            Kind::MiddleboxReset => "find the device that sent the reset: a different TTL means a different hop (traceroute -T -p PORT BACKEND from the proxy host lists them); a load balancer's or firewall's idle timeout shorter than the proxy's keep-alive timeout for upstream connections resets idle pooled connections: make the proxy's shorter (nginx keepalive_timeout in the upstream block) or send TCP keepalives more often than that timeout",
            Kind::SlowConnect => "the first SYNs were dropped: the backend's accept queue overflows (nstat -az TcpExtListenOverflows on its host; raise its listen backlog and net.core.somaxconn, or add workers) or the path drops packets",
            Kind::ResetBeforeResponse => "the backend reset the connection instead of answering: a worker crashed or was killed (by its own timeout, such as Gunicorn's 30 s, or the OOM killer), a restart, or a socket closed with the request unread; check the backend's logs at that time",
            Kind::ClosedBeforeResponse => "the backend closed without answering: a worker crashed or was killed (by its own timeout, such as Gunicorn's 30 s, or the OOM killer), or the backend timed out reading the request; check its logs at that time",
            Kind::TruncatedHead => "the backend stopped in the middle of its response head: a crash or kill while answering; check the backend's logs and restarts at that time",
            Kind::TruncatedBody => "the backend stopped before the body it announced was complete: a crash or kill mid-response, a write timeout in the backend, or a wrong Content-Length; check its logs and the length it sets against the bytes it sends",
            Kind::MalformedStatusLine => "the answer is not HTTP/1.x: something other than an HTTP server answers on that port (another protocol, TLS), or the backend writes raw bytes before its status line",
            Kind::MalformedHeader => "fix the header the backend writes (the evidence shows the line): gateways reject it and answer 502",
            Kind::HeadTooLarge => "the response head is larger than the proxy's header buffer: raise nginx proxy_buffer_size (HAProxy tune.bufsize), or send fewer and shorter headers (large Set-Cookie)",
            Kind::InvalidContentLength => "fix the Content-Length the backend sends (the evidence shows it): it must be one decimal number",
            Kind::DuplicateContentLength => "the backend sends two different Content-Lengths: find the code or middleware that adds the second one",
            Kind::ContentLengthWithChunked => "the backend sends Content-Length and chunked encoding together: drop Content-Length when chunking (often a middleware adds it)",
            Kind::UnsupportedTransferEncoding => "the backend uses a transfer coding gateways reject (only chunked is accepted): send the body chunked or with a Content-Length",
            Kind::InvalidChunk => "the backend's chunked encoding is broken: a bug in its HTTP server or in code that writes chunks by hand",
            Kind::ExcessData => "the backend sent more than its framing announced: a Content-Length too small, or bytes written after the response",
            Kind::EarlyResponse => "the backend stopped reading the request before its end: its own limits on request bodies (408: a read timeout on a slow upload, such as nginx's client_body_timeout; 413: a size limit); raise the limit, or enforce it at the proxy (nginx client_max_body_size), so that the proxy answers 413 itself before sending a byte; a 502 in front comes with the backend's reset (reset_during_request)",
            Kind::ResetDuringRequest => "the backend closed the connection with the request body unread, and closing with unread bytes makes the kernel send a reset: have it read (or discard) the rest of the body before closing, or close gracefully with a lingering close, as nginx's lingering_close does; the early status says which of its limits ended the request (408: a body read timeout; 413: a size limit)",
            Kind::UnsolicitedResponse => "the backend answered with no request pending: a second response to one request (an error page written after the response)",
            Kind::SlowFirstByte => "the backend was slow to start its answer: find out why (its logs, load, slow dependencies), or raise the proxy's read timeout (nginx proxy_read_timeout, HAProxy timeout server) if such waits are expected",
            Kind::AbandonedByClient => "the proxy gave up (its read timeout: nginx proxy_read_timeout, HAProxy timeout server) or its client went away: compare the idle time in the evidence with the proxy's timeouts",
            Kind::KeepaliveRace => "the backend closes idle keep-alive connections while the proxy still reuses them (the evidence's idle time is about the backend's timeout): make the backend's keep-alive timeout (Node.js keepAliveTimeout, 5 s by default; Gunicorn --keep-alive) longer than the proxy's (nginx keepalive_timeout in the upstream block, 60 s by default)",
            Kind::ZeroWindow => "a receiver stopped reading: the side in the message was overloaded or blocked (a backend not reading an upload, a proxy buffering for a slow client)",
            Kind::CaptureGap => "not a backend fault: the capture missed packets; capture whole packets on the proxy host with a larger buffer (tcpdump -s 0 -B 16384) and a filter on the backend port",
            Kind::BackendErrorStatus => "the backend itself answered with an error status: the fault is behind it (its own upstreams or dependencies); check its logs",
            Kind::MalformedRequest => "the proxy sent a request the backend may reject: a client's malformed request passed through, or a rewrite in the proxy",
            Kind::UnsupportedProtocol => "make the proxy and the backend agree on the protocol (proxy_pass http:// for plain HTTP, https:// for TLS); to analyse a leg, capture where it is cleartext HTTP/1.x",
            Kind::LimitReached => "one of gatescope's own bounds was reached: rerun with the --max-… option named in the evidence raised",
        }
    }

    /// The gateway-side diagnosis for this kind.
    pub fn hint(self) -> GatewayHint {
        let h = |nginx, nginx_status, haproxy, envoy| GatewayHint {
            nginx,
            nginx_status,
            haproxy,
            envoy,
        };
        match self {
            Kind::ConnectRefused => h(
                "connect() failed (111: Connection refused) while connecting to upstream",
                502,
                "SC",
                "UF",
            ),
            Kind::ConnectTimeout => h(
                "upstream timed out (110: Connection timed out) while connecting to upstream",
                504,
                "sC",
                "UF",
            ),
            Kind::ConnectUnreachable => unreachable_hint("113: No route to host"),
            Kind::MiddleboxReset => h(
                "as for the backend's own reset in that phase, e.g. recv() failed (104: Connection reset by peer) while reading response header from upstream (see the reset's finding); on an idle pooled connection nothing: nginx drops it",
                502,
                "as for the backend's reset (SH, SD)",
                "UR",
            ),
            Kind::ResetBeforeResponse => h(
                "recv() failed (104: Connection reset by peer) while reading response header from upstream",
                502,
                "SH",
                "UR",
            ),
            Kind::ClosedBeforeResponse => h(
                "upstream prematurely closed connection while reading response header from upstream",
                502,
                "SH",
                "UC",
            ),
            Kind::TruncatedHead => h(
                "upstream prematurely closed connection while reading response header from upstream",
                502,
                "SH",
                "UC",
            ),
            // nginx has already sent the status line and headers to the client when the body
            // phase fails: the client gets the backend's status with a truncated body, not a 502
            // (the 502 is only nginx's internal finalize code; see GATEWAYS.md §4.1 and the e2e
            // run in README).
            Kind::TruncatedBody => h(
                "upstream prematurely closed connection while reading upstream (client gets a truncated response)",
                0,
                "SD",
                "UC",
            ),
            Kind::MalformedStatusLine => h(
                "upstream sent no valid HTTP/1.0 header while reading response header from upstream (passed through as HTTP/0.9)",
                0,
                "PH",
                "UPE",
            ),
            Kind::MalformedHeader => h(
                "upstream sent invalid header while reading response header from upstream (a line without a colon is skipped silently)",
                502,
                "PH",
                "UPE",
            ),
            Kind::HeadTooLarge => h(
                "upstream sent too big header while reading response header from upstream",
                502,
                "PH",
                "UPE",
            ),
            Kind::InvalidContentLength => h(
                "upstream sent invalid \"Content-Length\" header while reading response header from upstream",
                502,
                "PH",
                "UPE",
            ),
            Kind::DuplicateContentLength => h(
                "upstream sent duplicate header line: \"Content-Length\" while reading response header from upstream",
                502,
                "PH",
                "UPE",
            ),
            Kind::ContentLengthWithChunked => h(
                "upstream sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time (nginx >= 1.23; older nginx passes it on)",
                502,
                "-- (HAProxy drops Content-Length and closes)",
                "UPE",
            ),
            Kind::UnsupportedTransferEncoding => h(
                "upstream sent unknown \"Transfer-Encoding\" while reading response header from upstream",
                502,
                "PH",
                "UPE",
            ),
            // Body phase too: the header is already committed, so the client gets a truncated
            // response, or a closed connection with nothing when the bad chunk came in the
            // same read as the head (what the e2e run saw with nginx 1.22); never a 502 page.
            Kind::InvalidChunk => h(
                "upstream sent invalid chunked response while reading upstream (client gets a truncated response, or none when the bad chunk came with the head)",
                0,
                "PD",
                "UPE",
            ),
            Kind::ExcessData => h(
                "upstream sent more data than specified in \"Content-Length\" header (warning; keepalive disabled)",
                0,
                "--",
                "-",
            ),
            Kind::UnsolicitedResponse => h(
                "upstream sent more data than specified / data after final chunk (warning)",
                0,
                "--",
                "UPE",
            ),
            Kind::EarlyResponse => h(
                "passes the early response on; if the backend's close resets the connection while nginx still sends the body: writev() failed (104: Connection reset by peer) while sending request to upstream (502)",
                0,
                "-",
                "-",
            ),
            Kind::ResetDuringRequest => h(
                "writev() failed (104: Connection reset by peer) while sending request to upstream (unless nginx read the early response first: then it passes that on)",
                502,
                "SD, no response (or the early response passed on)",
                "-",
            ),
            Kind::SlowConnect => h(
                "upstream timed out (110: Connection timed out) while connecting to upstream, if proxy_connect_timeout is shorter",
                504,
                "sC",
                "UF",
            ),
            Kind::SlowFirstByte => h(
                "upstream timed out (110: Connection timed out) while reading response header from upstream, if proxy_read_timeout is shorter",
                504,
                "sH",
                "UT",
            ),
            Kind::AbandonedByClient => h(
                "upstream timed out (110: Connection timed out) while reading response header from upstream (504), or client prematurely closed connection (499)",
                504,
                "sH / CH",
                "UT / DC",
            ),
            Kind::KeepaliveRace => h(
                "upstream prematurely closed connection / recv() failed (104: Connection reset by peer) while reading response header from upstream (retried once if idempotent)",
                502,
                "SH, or a silent close",
                "UC",
            ),
            Kind::ZeroWindow => h("(no log; transfer stalls, may end in a timeout)", 0, "sD", "-"),
            Kind::CaptureGap => h("(not a gateway event: bytes missing from the capture)", 0, "-", "-"),
            Kind::BackendErrorStatus => h(
                "(no error log: nginx passes the backend's own status on; $upstream_status shows it)",
                0,
                "--",
                "-",
            ),
            Kind::MalformedRequest => h("(request built by the proxy; check the client side)", 0, "-", "-"),
            Kind::UnsupportedProtocol => h(
                "if the proxy and the backend disagree: proxy_pass http:// to a TLS or HTTP/2 port gives upstream sent no valid HTTP/1.0 header (passed through as HTTP/0.9); https:// to a plain-HTTP port gives SSL_do_handshake() failed while SSL handshaking to upstream (502)",
                502,
                "PH (plain HTTP to a TLS/HTTP/2 port) or SC/SH (TLS handshake failure)",
                "UPE or UF (TLS error)",
            ),
            Kind::LimitReached => h("(gatescope limit, not a gateway event)", 0, "-", "-"),
        }
    }
}

/// Below this many milliseconds between the proxy's last reason to wait (the request, or the
/// backend's last byte) and its close, the close is not a timeout: no gateway is configured
/// that tight (nginx and HAProxy default to 60 s and tens of seconds, Envoy's route timeout to
/// 15 s; even aggressive per-try timeouts are a few hundred ms). It is the proxy aborting,
/// typically because its own client went away (nginx 499).
pub const MIN_PLAUSIBLE_TIMEOUT_MS: f64 = 100.0;

/// What the proxy's close means for an `abandoned_by_client` finding. The kind's static hint
/// ([`Kind::hint`]) is the common case (nothing received yet, a timeout possible); the phase and
/// the idle time change what nginx can have done: once the backend's status line reached the
/// client, nginx cannot answer 504 any more, and a close far below any timeout is an abort.
/// A backend reset while the proxy was still sending the request body, before any response
/// byte: the proxy's write fails, or its read if its last write had already returned (the
/// body in the socket's buffer, not yet on the wire). The e2e runs saw nginx log either line
/// (502 both times) and HAProxy close with `SD--` and no response.
/// What the gateways log for a connect failed by ICMP, whose error (`errno: text`, see
/// [`crate::decode::Unreachable::connect_error`]) depends on the ICMP code.
pub fn unreachable_hint(connect_error: &str) -> GatewayHint {
    let nginx = match connect_error {
        "101: Network is unreachable" => {
            "connect() failed (101: Network is unreachable) while connecting to upstream"
        }
        "111: Connection refused" => {
            "connect() failed (111: Connection refused) while connecting to upstream"
        }
        "112: Host is down" => "connect() failed (112: Host is down) while connecting to upstream",
        "13: Permission denied" => {
            "connect() failed (13: Permission denied) while connecting to upstream"
        }
        "92: Protocol not available" => {
            "connect() failed (92: Protocol not available) while connecting to upstream"
        }
        "95: Operation not supported" => {
            "connect() failed (95: Operation not supported) while connecting to upstream"
        }
        "64: Machine is not on the network" => {
            "connect() failed (64: Machine is not on the network) while connecting to upstream"
        }
        _ => "connect() failed (113: No route to host) while connecting to upstream",
    };
    GatewayHint {
        nginx,
        nginx_status: 502,
        haproxy: "SC",
        envoy: "UF",
    }
}

pub fn reset_while_sending_hint() -> GatewayHint {
    GatewayHint {
        nginx: "writev() failed (104: Connection reset by peer) while sending request to upstream, or, if nginx had handed the whole body to its socket already, recv() failed (104: Connection reset by peer) while reading response header from upstream",
        nginx_status: 502,
        haproxy: "SD (no response)",
        envoy: "UR",
    }
}

pub fn abandoned_hint(response_started: bool, idle_ms: f64) -> GatewayHint {
    let h = |nginx, nginx_status, haproxy, envoy| GatewayHint {
        nginx,
        nginx_status,
        haproxy,
        envoy,
    };
    if idle_ms < MIN_PLAUSIBLE_TIMEOUT_MS {
        return if response_started {
            h(
                "client prematurely closed connection while reading upstream (the proxy aborted: its client went away; logged as 499)",
                499,
                "CD",
                "DC",
            )
        } else {
            h(
                "client prematurely closed connection (the proxy aborted: its client went away; logged as 499)",
                499,
                "CH",
                "DC",
            )
        };
    }
    if response_started {
        // proxy_read_timeout runs between two reads; in the body phase nginx logs it "while
        // reading upstream" and can only cut the response it has started to pass on.
        h(
            "upstream timed out (110: Connection timed out) while reading upstream (the client gets a truncated response), or client prematurely closed connection (499)",
            0,
            "sD / CD",
            "UT / DC",
        )
    } else {
        Kind::AbandonedByClient.hint()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_round_trip_and_are_snake_case() {
        for &k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
            assert!(k.name().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
