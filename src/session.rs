//! One connection's HTTP conversation: pairs requests with responses (FIFO, pipelining and
//! keep-alive included), times them from packet timestamps, and turns what the streams did
//! into findings.
//!
//! The session is fed by the flow layer with in-order stream events per side (data, gap,
//! close). It never sees packets and never reads a clock: every time is the `ts` of the packet
//! that carried the event.
//!
//! Findings are attached to the exchange they explain. An exchange gets at most one *error*
//! finding about how it ended: the first explanation wins (a keep-alive race explains the
//! reset that follows it; a proxy timeout explains the backend's close after it).

use crate::findings::{self, Confidence, GatewayHint, Kind, Severity};
use crate::h1::{self, escape, Framing, Parser, Position, Role, Step, Violation};
use crate::limits::Limits;
use crate::record::{self, ConnId, OrderKey, Outcome, Record, Side};
use crate::time::Ts;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Bytes of a status line quoted in evidence.
const STATUS_EVIDENCE_BYTES: usize = 120;

/// Where records go, and the packet that caused them.
pub struct Ctx<'a> {
    pub ts: Ts,
    pub frame: u64,
    /// The frame that orders the records produced now (see [`OrderKey`]).
    pub key_frame: u64,
    pub out: &'a mut Vec<(OrderKey, Record)>,
}

/// Builds records for one connection, numbering them in production order.
#[derive(Debug)]
pub struct Emitter {
    pub id: ConnId,
    pub client: SocketAddr,
    pub server: SocketAddr,
    seq: u32,
    pub findings: u32,
    pub errors: u32,
}

/// The exchange a finding belongs to, as the finding shows it.
#[derive(Clone, Debug, Default)]
pub struct ExRef {
    pub index: Option<u32>,
    pub method: Option<String>,
    pub target: Option<String>,
    pub status: Option<u16>,
    pub low_confidence: bool,
}

impl Emitter {
    pub fn new(id: ConnId, client: SocketAddr, server: SocketAddr) -> Emitter {
        Emitter {
            id,
            client,
            server,
            seq: 0,
            findings: 0,
            errors: 0,
        }
    }

    pub fn push(&mut self, ctx: &mut Ctx<'_>, record: Record) {
        let key = OrderKey {
            frame: ctx.key_frame,
            conn: self.id,
            seq: self.seq,
        };
        self.seq += 1;
        ctx.out.push((key, record));
    }

    /// Emits a finding. `at` overrides the packet time and frame (for findings about an
    /// earlier moment, e.g. the moment a wait became slow).
    #[allow(clippy::too_many_arguments)]
    pub fn finding(
        &mut self,
        ctx: &mut Ctx<'_>,
        kind: Kind,
        severity: Severity,
        ex: &ExRef,
        at: Option<(Ts, u64)>,
        message: String,
        evidence: Map<String, Value>,
    ) {
        self.finding_with_hint(ctx, kind, severity, ex, at, message, evidence, kind.hint());
    }

    /// [`Emitter::finding`] with a hint chosen from the evidence rather than the kind's
    /// default (what a gateway does can depend on the phase and the timing).
    #[allow(clippy::too_many_arguments)]
    pub fn finding_with_hint(
        &mut self,
        ctx: &mut Ctx<'_>,
        kind: Kind,
        severity: Severity,
        ex: &ExRef,
        at: Option<(Ts, u64)>,
        message: String,
        evidence: Map<String, Value>,
        hint: GatewayHint,
    ) {
        let (ts, frame) = at.unwrap_or((ctx.ts, ctx.frame));
        self.findings += 1;
        if severity == Severity::Error {
            self.errors += 1;
        }
        let f = record::Finding {
            kind,
            severity,
            confidence: if ex.low_confidence {
                Confidence::Low
            } else {
                Confidence::High
            },
            conn: self.id,
            exchange: ex.index,
            ts,
            frame,
            client: self.client,
            server: self.server,
            method: ex.method.clone(),
            target: ex.target.clone(),
            status: ex.status,
            message,
            evidence,
            hint,
            next_step: kind.next_step(),
        };
        self.push(ctx, Record::Finding(f));
    }
}

/// Turns a `json!({...})` object into evidence.
pub fn evidence(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[derive(Debug, Default)]
struct Exch {
    index: u32,
    method: Option<String>,
    target: Option<String>,
    status: Option<u16>,
    /// A response with no request (unsolicited).
    unsolicited: bool,
    req_start: Option<(Ts, u64)>,
    req_end: Option<(Ts, u64)>,
    /// Offset of the request's first byte in the client stream.
    req_offset: u64,
    req_bytes: u64,
    req_done: bool,
    /// The rest of the request was lost in a capture gap (the parser lost sync): it will
    /// never end, and the next request is a new exchange.
    req_lost: bool,
    /// Time since the previous exchange on this connection ended (keep-alive reuse).
    idle_before_us: Option<u64>,
    /// The backend had already closed (when, how) when this request started.
    after_server_close: Option<(Ts, CloseKind)>,
    resp_started: bool,
    resp_start: Option<(Ts, u64)>,
    resp_head_end: Option<Ts>,
    resp_end: Option<Ts>,
    resp_bytes: u64,
    resp_done: bool,
    framing: Option<Framing>,
    outcome: Option<Outcome>,
    /// An error finding explains how this exchange ended; no second one.
    explained: bool,
    slow_reported: bool,
    /// The request asked `Expect: 100-continue`: a final status before its body is the
    /// backend declining the body, as the protocol allows.
    expect_continue: bool,
    /// The backend answered before this request's body was sent ([`Kind::EarlyResponse`]):
    /// a reset from it before the body's end then breaks the proxy's write.
    answered_early: bool,
    /// A tick found the wait slow; the finding is written at the connection's next event (or
    /// tick), once that event's capture gaps are known: a gap that hides the response's first
    /// bytes makes the finding low confidence (when the byte came is then unknown).
    slow_due: bool,
    gap: bool,
    emitted: bool,
    /// The response completed after the proxy's FIN: written at the end, once it is known
    /// whether the proxy still wanted it (a later RST says it did not).
    held: bool,
}

impl Exch {
    fn exref(&self) -> ExRef {
        ExRef {
            index: Some(self.index),
            method: self.method.clone(),
            target: self.target.clone(),
            status: self.status,
            low_confidence: self.gap,
        }
    }
}

/// Bytes on the response side that no request explains.
#[derive(Debug)]
struct Excess {
    bytes: u64,
    at: (Ts, u64),
    preview: String,
    after: Option<u32>,
}

/// How a side ended its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    Fin,
    Rst,
}

impl CloseKind {
    fn as_str(self) -> &'static str {
        match self {
            CloseKind::Fin => "FIN",
            CloseKind::Rst => "RST",
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub em: Emitter,
    req: Parser,
    resp: Parser,
    pending: VecDeque<Exch>,
    next_index: u32,
    /// Exchange records written.
    pub exchanges: u32,
    client_off: u64,
    server_off: u64,
    client_closed: Option<(Ts, u64, CloseKind)>,
    server_closed: Option<(Ts, u64, CloseKind)>,
    /// End of the last complete response (for keep-alive idle time).
    last_response_end: Option<Ts>,
    /// The connection's first close (FIN or RST), when it came while the connection was
    /// idle between exchanges: who closed, and how long after the last response.
    idle_close: Option<(Side, f64)>,
    /// A head said the connection closes after its message (`Connection: close`, or
    /// HTTP/1.0): a close that follows is announced, not a keep-alive timeout.
    close_announced: bool,
    /// A continuation of a dormant connection that was between exchanges (its parsers
    /// start out looking for a message, not idle).
    resumed_idle: bool,
    /// The response in progress is an interim (1xx) one.
    interim: bool,
    /// Start of the response message in progress.
    msg_start: Option<(Ts, u64)>,
    excess: Option<Excess>,
    midstream: bool,
    /// The server sent bytes after the client's FIN: that FIN was a half-close, not an abort.
    server_spoke_after_client_fin: bool,
    /// The proxy reset after its FIN: its FIN was a full close (it had given up), not a
    /// half-close.
    client_reset_after_fin: bool,
    /// Packet time of the backend's latest byte: nginx's proxy_read_timeout (and HAProxy's
    /// `timeout server`) run between two reads, so a proxy timeout is measured from here.
    last_server_data: Option<Ts>,
    /// [`Session::last_server_data`] when the proxy first closed: what the proxy had been
    /// waiting since, even if the backend spoke again after the close.
    last_server_data_at_client_close: Option<Ts>,
    /// A capture gap on the client side may have swallowed whole requests since the last one
    /// seen.
    requests_lost: bool,
    slow_first_byte_us: u64,
    max_pending: usize,
    /// Some pending exchange has a slow wait to write ([`Exch::slow_due`]).
    slow_due: bool,
    /// The proxy opened the connection in this protocol (TLS, HTTP/2) and the backend has
    /// not answered yet: its first bytes tell whether the two agree.
    foreign_client: Option<&'static str>,
    /// A stream picked up mid-stream turned out to carry TLS records: said once.
    foreign_midstream: bool,
    pending_limit_hit: bool,
    /// gatescope stopped framing the response stream because of one of its own limits
    /// (`limit_reached`): from there on it does not know where responses start or end, so it
    /// gives no verdict that depends on it (no abandonment, no slow first byte).
    resp_unframed: bool,
    /// The same for the request stream: responses that follow answer requests gatescope did
    /// not parse, so they are not unsolicited.
    req_unframed: bool,
}

/// Whether a head says its connection ends after this message: `Connection: close`, or
/// HTTP/1.0 (whose keep-alive is the exception; one that asks for it is taken as closing
/// too, which only loses a keep-alive sample).
fn announces_close(h: &h1::Head) -> bool {
    h.connection_close || h.version_minor == 0
}

fn looks_like_response(data: &[u8]) -> bool {
    let n = data.len().min(5);
    data[..n] == b"HTTP/"[..n]
}

impl Session {
    pub fn new(
        em: Emitter,
        limits: &Limits,
        midstream_client: bool,
        midstream_server: bool,
    ) -> Session {
        let mut req = Parser::new(Role::Request, limits);
        let mut resp = Parser::new(Role::Response, limits);
        if midstream_client {
            req.resync();
        }
        if midstream_server {
            resp.resync();
        }
        Session {
            em,
            req,
            resp,
            pending: VecDeque::new(),
            next_index: 1,
            exchanges: 0,
            client_off: 0,
            server_off: 0,
            client_closed: None,
            server_closed: None,
            last_response_end: None,
            idle_close: None,
            close_announced: false,
            resumed_idle: false,
            interim: false,
            msg_start: None,
            excess: None,
            midstream: midstream_client || midstream_server,
            server_spoke_after_client_fin: false,
            client_reset_after_fin: false,
            last_server_data: None,
            last_server_data_at_client_close: None,
            requests_lost: false,
            slow_first_byte_us: limits.slow_first_byte_us,
            max_pending: limits.max_pending,
            slow_due: false,
            foreign_client: None,
            foreign_midstream: false,
            pending_limit_hit: false,
            resp_unframed: false,
            req_unframed: false,
        }
    }

    /// Index in `pending` of the exchange the response side is answering.
    fn answering(&self) -> Option<usize> {
        self.pending.iter().position(|e| !e.resp_done)
    }

    /// Index of the exchange whose request is being received.
    fn requesting(&self) -> Option<usize> {
        self.pending
            .iter()
            .rposition(|e| !e.req_done && !e.req_lost && !e.unsolicited)
    }

    /// What a connection finished for idleness leaves for its own continuation: its
    /// exchanges so far, when its last response ended, and whether it was between
    /// exchanges (a close that continues it is then an idle close).
    pub fn dormant(&self) -> (u32, Option<Ts>, bool) {
        (
            self.next_index - 1,
            self.last_response_end,
            self.between_exchanges(),
        )
    }

    /// Continues a connection that was finished for idleness (see [`Session::dormant`]):
    /// exchanges are numbered on from its last, the first request's idle time counts from
    /// its last response, and a response with no request is not the ordinary first
    /// response of a connection picked up mid-stream.
    pub fn resume(&mut self, exchanges: u32, last_response_end: Option<Ts>, idle: bool) {
        self.next_index = exchanges + 1;
        self.last_response_end = last_response_end;
        self.resumed_idle = idle;
        self.midstream = false;
    }

    /// Whether any response is owed (a request was seen and its response did not complete).
    pub fn response_owed(&self) -> bool {
        self.pending
            .iter()
            .any(|e| !e.resp_done && !e.unsolicited && e.req_start.is_some())
    }

    // ---------------------------------------------------------------- client side

    /// Bytes held by heads still being collected, in both directions.
    pub fn heads_in_progress(&self) -> usize {
        self.req.head_in_progress() + self.resp.head_in_progress()
    }

    /// All connections' heads together hold more than `limit`: this connection gives its
    /// up, and says so (`limit_reached max_head_total`); its streams are not framed further.
    pub fn shed_heads(&mut self, limit: usize, ctx: &mut Ctx<'_>) {
        if let Some(v) = self.req.shed_head(limit) {
            self.request_violation(&v, ctx);
        }
        if let Some(v) = self.resp.shed_head(limit) {
            self.response_violation(&v, true, ctx);
        }
    }

    pub fn client_data(&mut self, data: &[u8], ctx: &mut Ctx<'_>) {
        self.flush_slow(ctx);
        self.flush_excess(ctx);
        let mut d = data;
        while !d.is_empty() || self.req.owes_step() {
            let before = d.len();
            let resyncing = self.req.is_resyncing();
            let (n, step) = self.req.step(d);
            let offset = self.client_off + (data.len() - before) as u64;
            d = &d[n..];
            if let Some(i) = self.requesting() {
                if !matches!(step, Step::Skipped(_)) {
                    self.pending[i].req_bytes += n as u64;
                }
            }
            match step {
                Step::NeedMore => {
                    if d.is_empty() {
                        break;
                    }
                }
                Step::MessageStart => self.request_start(offset, ctx),
                Step::Head(mut h) => {
                    self.close_announced |= announces_close(&h);
                    if let Some(i) = self.requesting() {
                        let e = &mut self.pending[i];
                        // Moved, not copied: the head is dropped below.
                        e.method = h.method.take();
                        e.target = h.target.take();
                        e.expect_continue = h.expect_continue;
                        self.request_after_close(i, ctx);
                    }
                    for v in h.violations.iter() {
                        self.request_violation(v, ctx);
                    }
                }
                Step::Body(_) | Step::Skipped(_) => {}
                Step::End => {
                    if let Some(i) = self.requesting() {
                        let e = &mut self.pending[i];
                        e.req_end = Some((ctx.ts, ctx.frame));
                        e.req_done = true;
                    }
                    self.retire();
                }
                Step::Broken(Violation::ForeignProtocol {
                    protocol,
                    first_bytes,
                }) if resyncing => self.foreign_midstream(protocol, "proxy", first_bytes, ctx),
                Step::Broken(Violation::ForeignProtocol {
                    protocol,
                    first_bytes,
                }) => self.client_foreign(protocol, first_bytes, ctx),
                Step::Violation(v) | Step::Broken(v) => self.request_violation(&v, ctx),
            }
        }
        self.client_off += data.len() as u64;
    }

    /// The proxy spoke TLS or HTTP/2 on this connection. It is not a malformed request:
    /// the whole connection is in a protocol gatescope cannot read, so it says that once,
    /// invents no exchange for it, and does not read the backend's answer as HTTP/1 either
    /// (its TLS records would otherwise be "excess data" or a "malformed status line").
    fn client_foreign(&mut self, protocol: &str, first_bytes: String, ctx: &mut Ctx<'_>) {
        if let Some(i) = self.requesting() {
            if i + 1 == self.pending.len() && !self.pending[i].resp_started {
                self.pending.pop_back();
                self.next_index -= 1;
            }
        }
        if self.pending.is_empty() {
            self.resp.tunnel();
        }
        self.foreign_client = Some(if protocol == "TLS" { "TLS" } else { "HTTP/2" });
        let what = if protocol == "TLS" {
            "a TLS handshake: this backend leg is encrypted"
        } else {
            "the HTTP/2 connection preface (prior knowledge)"
        };
        let msg = format!(
            "the proxy opened this connection with {what}; gatescope reads only cleartext HTTP/1.x, so its requests and responses are not analysed (capture where the leg is cleartext, or check that the backend expects {protocol})"
        );
        self.em.finding(
            ctx,
            Kind::UnsupportedProtocol,
            Severity::Warning,
            &ExRef::default(),
            None,
            msg,
            evidence(json!({"protocol": protocol, "side": "proxy", "first_bytes": first_bytes})),
        );
    }

    /// A stream picked up mid-stream (or resynchronising after a gap) carries TLS records
    /// (the leg is encrypted) or HTTP/2 frames. Said once for the connection, as a warning
    /// (nothing shows that the two ends disagree), with no exchange invented; neither
    /// direction is searched for HTTP any further, and no verdict rests on them.
    fn foreign_midstream(
        &mut self,
        protocol: &str,
        side: &str,
        first_bytes: String,
        ctx: &mut Ctx<'_>,
    ) {
        self.req.tunnel();
        self.resp.tunnel();
        self.req_unframed = true;
        self.resp_unframed = true;
        if std::mem::replace(&mut self.foreign_midstream, true) {
            return;
        }
        let msg = if protocol == "HTTP/2" {
            format!(
                "the {side}'s bytes on this connection are HTTP/2 frames (the capture began after the connection was opened): this backend leg speaks cleartext HTTP/2 (h2c), and gatescope reads only HTTP/1.x, so its requests and responses are not analysed (tshark -d tcp.port==PORT,http2 reads it; or capture a leg the proxy speaks HTTP/1.x on)"
            )
        } else {
            format!(
                "the {side}'s bytes on this connection are {protocol} records (the capture began after the connection was opened): this backend leg is encrypted, and gatescope reads only cleartext HTTP/1.x, so its requests and responses are not analysed (capture where the leg is cleartext, e.g. behind the TLS terminator)"
            )
        };
        self.em.finding(
            ctx,
            Kind::UnsupportedProtocol,
            Severity::Warning,
            &ExRef::default(),
            None,
            msg,
            evidence(json!({"protocol": protocol, "side": side, "midstream": true, "first_bytes": first_bytes})),
        );
    }

    /// The backend's first bytes on a connection the proxy opened in TLS or HTTP/2. A
    /// cleartext HTTP/1.x answer (typically `400 Bad Request`) means the two disagree on the
    /// protocol: the proxy expects TLS (`proxy_pass https://`) or HTTP/2 from a backend that
    /// speaks plain HTTP/1.x — a classic 502 (nginx: SSL_do_handshake() failed, wrong
    /// version number). Anything else is the leg working in a protocol gatescope cannot read.
    fn foreign_client_answer(&mut self, protocol: &str, data: &[u8], ctx: &mut Ctx<'_>) {
        if !data.starts_with(b"HTTP/1.") {
            return;
        }
        let line_end = data
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(data.len());
        let status_line = escape(&data[..line_end.min(STATUS_EVIDENCE_BYTES)]);
        let msg = format!(
            "the proxy spoke {protocol} and the backend answered in cleartext HTTP/1.x ({status_line}): they disagree on the protocol (e.g. proxy_pass https:// to a plain-HTTP port); the proxy fails the handshake and answers 502"
        );
        self.em.finding(
            ctx,
            Kind::UnsupportedProtocol,
            Severity::Error,
            &ExRef::default(),
            None,
            msg,
            evidence(json!({"protocol": protocol, "side": "backend", "answer": status_line})),
        );
    }

    fn request_start(&mut self, offset: u64, ctx: &mut Ctx<'_>) {
        if self.pending.len() >= self.max_pending {
            if !self.pending_limit_hit {
                self.pending_limit_hit = true;
                let msg = format!(
                    "more than {} requests waiting for responses on one connection; older ones are no longer tracked",
                    self.max_pending
                );
                self.em.finding(
                    ctx,
                    Kind::LimitReached,
                    Kind::LimitReached.severity(),
                    &ExRef::default(),
                    None,
                    msg,
                    evidence(json!({"limit": "max_pending", "value": self.max_pending})),
                );
            }
            // An exchange already written (its response came first) is only dropped.
            if let Some(old) = self.pending.pop_front().filter(|e| !e.emitted) {
                self.emit_exchange(old, Outcome::InFlight, ctx);
            }
        }
        let index = self.next_index;
        self.next_index += 1;
        self.requests_lost = false;
        let mut e = Exch {
            index,
            req_start: Some((ctx.ts, ctx.frame)),
            req_offset: offset,
            idle_before_us: self.last_response_end.map(|t| ctx.ts.micros_since(t)),
            ..Exch::default()
        };
        // The backend closed its side before this request was sent: decided once the head
        // says what the request was (see `request_after_close`).
        e.after_server_close = self.server_closed.map(|(t, _, how)| (t, how));
        self.pending.push_back(e);
    }

    /// A request that started after the backend had closed its side: the proxy reused a
    /// connection that was already going away (a keep-alive race), or, on a fresh connection,
    /// the backend closed before the first request.
    fn request_after_close(&mut self, i: usize, ctx: &mut Ctx<'_>) {
        let e = &mut self.pending[i];
        let Some((closed_ts, how)) = e.after_server_close else {
            return;
        };
        if e.explained {
            return;
        }
        e.explained = true;
        e.outcome = Some(Outcome::NoResponse);
        let index = e.index;
        let start = e.req_start.map_or(ctx.ts, |(t, _)| t);
        let at = e.req_start;
        let before_ms = start.ms_since(closed_ts);
        let reused = index > 1 || self.midstream;
        let ex = e.exref();
        if reused {
            let msg = format!(
                "request sent on a reused keep-alive connection {before_ms:.1} ms after the backend closed it ({}); the backend never saw it",
                how.as_str()
            );
            let ev = evidence(json!({
                "idle_before_request_ms": e.idle_before_us.map(|u| u as f64 / 1000.0),
                "server_close": how.as_str(),
                "server_close_before_request_ms": before_ms,
                "exchange_on_connection": index,
            }));
            self.em
                .finding(ctx, Kind::KeepaliveRace, Severity::Error, &ex, at, msg, ev);
        } else {
            let kind = if how == CloseKind::Rst {
                Kind::ResetBeforeResponse
            } else {
                Kind::ClosedBeforeResponse
            };
            let msg = format!(
                "backend closed the connection ({}) {before_ms:.1} ms before the first request was sent",
                how.as_str()
            );
            self.em.finding(
                ctx,
                kind,
                Severity::Error,
                &ex,
                at,
                msg,
                evidence(json!({"server_close": how.as_str(), "server_close_before_request_ms": before_ms})),
            );
        }
    }

    fn request_violation(&mut self, v: &Violation, ctx: &mut Ctx<'_>) {
        let ex = self
            .requesting()
            .or(self.pending.len().checked_sub(1))
            .map(|i| self.pending[i].exref())
            .unwrap_or_default();
        if matches!(v, Violation::Limit { .. }) {
            self.req_unframed = true;
        }
        let (kind, msg, ev) = match v {
            Violation::Limit { which, limit } => (
                Kind::LimitReached,
                format!("request exceeded gatescope's {which} limit ({limit}); the rest of this connection's requests are not parsed"),
                json!({"limit": which, "value": limit}),
            ),
            other => (
                Kind::MalformedRequest,
                format!("malformed request from the proxy: {}", describe_violation(other)),
                violation_evidence(other),
            ),
        };
        self.em
            .finding(ctx, kind, kind.severity(), &ex, None, msg, evidence(ev));
    }

    /// The backend answers bytes from the proxy that have not become a request head: a
    /// request body sent without Content-Length or Transfer-Encoding (the backend reads it
    /// as the next request and rejects it), junk, or a head the backend refused before its
    /// end. Without this the exchange showed only a status and no method.
    fn answer_to_unparsed_request(&mut self, i: usize, status: u16, ctx: &mut Ctx<'_>) {
        let bytes = self.req.head_in_progress();
        let preview = self.req.head_preview(48);
        let what = if self.req.head_looks_like_request() {
            "a request head that was not complete yet (the backend refused it early)"
        } else {
            "not an HTTP request: often a request body sent without Content-Length or Transfer-Encoding, which the backend reads as a new request"
        };
        let msg = format!(
            "the backend answered {status} to {bytes} byte(s) from the proxy that are {what}"
        );
        let ex = self.pending[i].exref();
        self.em.finding(
            ctx,
            Kind::MalformedRequest,
            Severity::Warning,
            &ex,
            None,
            msg,
            evidence(json!({"status": status, "request_bytes": bytes, "first_bytes": preview})),
        );
    }

    /// The backend answered while the proxy was still sending the request's body: it gave
    /// up on the request (408, a read timeout on a slow upload; 413, a size limit; a
    /// crash-and-answer) and usually closes next. The proxy passes the answer on — unless
    /// the close resets the connection while it is still sending, and then it answers 502
    /// (a load balancer in front of such a backend does).
    fn early_response(
        &mut self,
        i: usize,
        status: u16,
        expected: Option<u64>,
        received: u64,
        ctx: &mut Ctx<'_>,
    ) {
        let of = expected.map_or(String::from(" (chunked)"), |n| format!(" of {n}"));
        let msg = format!(
            "the backend answered {status} while the proxy was still sending the request body ({received}{of} bytes sent): it stopped reading the request before its end"
        );
        self.pending[i].answered_early = true;
        let ex = self.pending[i].exref();
        self.em.finding(
            ctx,
            Kind::EarlyResponse,
            Severity::Warning,
            &ex,
            None,
            msg,
            evidence(json!({"status": status, "request_body_sent": received, "request_body_expected": expected})),
        );
    }

    /// The backend reset the connection after answering early, with the request's body
    /// still being sent: the proxy's next write fails with ECONNRESET, and unless it read
    /// the early answer first it answers 502 (nginx: "writev() failed (104) while sending
    /// request to upstream"). A FIN instead would have let the proxy finish writing; a
    /// reset after the proxy's own close is the answer to that close, not a failed write.
    fn reset_during_request(&mut self, ctx: &mut Ctx<'_>) {
        if self.client_closed.is_some() {
            return;
        }
        let Some(i) = self.requesting() else {
            return;
        };
        let h1::Position::InBody {
            expected, received, ..
        } = self.req.position()
        else {
            return;
        };
        let e = &mut self.pending[i];
        if !e.answered_early || !e.resp_done {
            return;
        }
        e.answered_early = false;
        let status = e.status.unwrap_or(0);
        let after_ms = e.resp_end.map(|t| ctx.ts.ms_since(t));
        let of = expected.map_or(String::from(" (chunked)"), |n| format!(" of {n}"));
        let msg = format!(
            "the backend reset the connection after its early {status}, with the request body still being sent ({received}{of} bytes sent): the proxy's next write fails, and it answers 502 unless it read the {status} first"
        );
        let ex = e.exref();
        self.em.finding(
            ctx,
            Kind::ResetDuringRequest,
            Severity::Error,
            &ex,
            None,
            msg,
            evidence(json!({
                "status": status,
                "request_body_sent": received,
                "request_body_expected": expected,
                "after_response_ms": after_ms,
                "ended_by": "server RST",
            })),
        );
    }

    // ---------------------------------------------------------------- server side

    /// A segment carrying backend bytes was captured at `ts`. Kept apart from
    /// [`Session::server_data`] because bytes that wait behind a hole reach the session only
    /// when the hole is filled or declared a gap (at the close, perhaps much later); the
    /// proxy's read timer saw them arrive.
    pub fn server_segment(&mut self, ts: Ts) {
        self.last_server_data = Some(ts);
    }

    pub fn server_data(&mut self, data: &[u8], ctx: &mut Ctx<'_>) {
        self.flush_slow(ctx);
        if let Some(protocol) = self.foreign_client.take() {
            self.foreign_client_answer(protocol, data, ctx);
        }
        if self.client_closed.is_some() {
            self.server_spoke_after_client_fin = true;
        }
        let mut d = data;
        loop {
            if self.resp.is_idle()
                && !d.is_empty()
                && self.answering().is_none()
                && !looks_like_response(d)
            {
                self.excess_bytes(d, ctx);
                break;
            }
            let resyncing = self.resp.is_resyncing();
            let (n, step) = self.resp.step(d);
            d = &d[n..];
            if let Some(i) = self.answering() {
                if !matches!(step, Step::Skipped(_)) {
                    self.pending[i].resp_bytes += n as u64;
                }
            }
            match step {
                Step::NeedMore => {
                    if d.is_empty() {
                        break;
                    }
                }
                Step::MessageStart => self.response_start(ctx),
                Step::Head(h) => {
                    self.close_announced |= announces_close(&h);
                    self.response_head(*h, ctx)
                }
                Step::Body(_) | Step::Skipped(_) => {}
                Step::End => self.response_end(ctx),
                Step::Violation(v) => self.response_violation(&v, false, ctx),
                Step::Broken(Violation::ForeignProtocol {
                    protocol,
                    first_bytes,
                }) if resyncing => {
                    self.foreign_midstream(protocol, "backend", first_bytes, ctx);
                }
                Step::Broken(v) => self.response_violation(&v, true, ctx),
            }
            if d.is_empty() && !self.resp.owes_step() {
                break;
            }
        }
        self.server_off += data.len() as u64;
    }

    fn excess_bytes(&mut self, d: &[u8], ctx: &mut Ctx<'_>) {
        // Stray line ends between messages are tolerated by every parser (RFC 9112 §2.2 asks
        // recipients to ignore them before a request line); they explain nothing.
        if self.excess.is_none() && d.iter().all(|&b| b == b'\r' || b == b'\n') {
            return;
        }
        match &mut self.excess {
            Some(x) => x.bytes += d.len() as u64,
            None => {
                let after = self
                    .pending
                    .back()
                    .map(|e| e.index)
                    .or(if self.next_index > 1 {
                        Some(self.next_index - 1)
                    } else {
                        None
                    });
                self.excess = Some(Excess {
                    bytes: d.len() as u64,
                    at: (ctx.ts, ctx.frame),
                    preview: escape(&d[..d.len().min(48)]),
                    after,
                })
            }
        }
    }

    fn flush_excess(&mut self, ctx: &mut Ctx<'_>) {
        let Some(x) = self.excess.take() else {
            return;
        };
        let msg = format!(
            "backend sent {} byte(s) after the end of a response that no request explains",
            x.bytes
        );
        let ex = ExRef {
            index: x.after,
            ..ExRef::default()
        };
        self.em.finding(
            ctx,
            Kind::ExcessData,
            Severity::Warning,
            &ex,
            Some(x.at),
            msg,
            evidence(json!({"bytes": x.bytes, "first_bytes": x.preview})),
        );
    }

    fn response_start(&mut self, ctx: &mut Ctx<'_>) {
        self.msg_start = Some((ctx.ts, ctx.frame));
        if self.answering().is_none() {
            let index = self.next_index;
            self.next_index += 1;
            // With requests lost in a capture gap, this answers one of them: its outcome is
            // the gap, not a protocol fault.
            let lost = self.requests_lost;
            self.pending.push_back(Exch {
                index,
                unsolicited: !lost && !self.req_unframed,
                req_done: true,
                explained: true,
                gap: lost,
                outcome: lost.then_some(Outcome::CaptureGap),
                ..Exch::default()
            });
        }
        if let Some(i) = self.answering() {
            let e = &mut self.pending[i];
            if !e.resp_started {
                e.resp_started = true;
            }
        }
    }

    fn response_head(&mut self, h: h1::Head, ctx: &mut Ctx<'_>) {
        let Some(i) = self.answering() else {
            return;
        };
        let status = h.status.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            self.interim = true;
            self.resp.set_framing(Framing::None);
            return;
        }
        if self.requesting() == Some(i) {
            if self.pending[i].method.is_none() && self.req.head_in_progress() > 0 {
                self.answer_to_unparsed_request(i, status, ctx);
            } else if let h1::Position::InBody {
                expected, received, ..
            } = self.req.position()
            {
                if !self.pending[i].expect_continue {
                    self.early_response(i, status, expected, received, ctx);
                }
            }
        }
        let start = self.msg_start.unwrap_or((ctx.ts, ctx.frame));
        let slow_us = self.slow_first_byte_us;
        let e = &mut self.pending[i];
        e.status = h.status;
        e.resp_start.get_or_insert(start);
        e.resp_head_end = Some(ctx.ts);
        let framing = h1::response_framing(&h, e.method.as_deref());
        e.framing = Some(framing);
        self.resp.set_framing(framing);
        if framing == Framing::Tunnel {
            e.outcome = Some(Outcome::Upgraded);
            // The request side leaves HTTP too (WebSocket frames, a CONNECT tunnel).
            self.req.tunnel();
        }
        // Slow first byte: measured from the request's last byte to the response's first.
        if let (Some((req_end, req_frame)), false) = (e.req_end, e.slow_reported) {
            if start.0.micros_since(req_end) > slow_us {
                e.slow_reported = true;
                let ex = e.exref();
                self.slow_finding(ex, req_end, req_frame, ctx);
            }
        }
        // The exchange's reference (method and target copied) only for a finding: this runs
        // for every response.
        let unsolicited = self.pending[i].unsolicited;
        if unsolicited {
            let ex = self.pending[i].exref();
            let first_ever = self.midstream && self.exchanges == 0;
            let sev = if first_ever {
                Severity::Info
            } else {
                Severity::Warning
            };
            let msg = if first_ever {
                format!("response {status} with no request seen (the connection was picked up mid-stream)")
            } else {
                format!("backend sent a response ({status}) with no request pending")
            };
            self.em.finding(
                ctx,
                Kind::UnsolicitedResponse,
                sev,
                &ex,
                Some(start),
                msg,
                evidence(json!({"status": status, "midstream": self.midstream})),
            );
        }
        // Taken before the violations, which may end the exchange.
        let error_status = (502..=504)
            .contains(&status)
            .then(|| self.pending[i].exref());
        for v in &h.violations {
            self.response_violation(v, false, ctx);
        }
        if let Some(ex) = error_status {
            self.em.finding(
                ctx,
                Kind::BackendErrorStatus,
                Severity::Info,
                &ex,
                None,
                format!("the backend itself answered {status}; the gateway only passed it on"),
                evidence(json!({"status": status})),
            );
        }
    }

    fn slow_finding(&mut self, ex: ExRef, req_end: Ts, req_frame: u64, ctx: &mut Ctx<'_>) {
        let threshold = self.slow_first_byte_us;
        let at = Ts(req_end.0.saturating_add(threshold as i64));
        self.em.finding(
            ctx,
            Kind::SlowFirstByte,
            Severity::Warning,
            &ex,
            Some((at, req_frame)),
            format!(
                "no response byte within {:.0} ms of the request's last byte",
                threshold as f64 / 1000.0
            ),
            evidence(json!({"threshold_ms": threshold as f64 / 1000.0, "request_end": req_end.to_string()})),
        );
    }

    fn response_end(&mut self, ctx: &mut Ctx<'_>) {
        self.msg_start = None;
        if std::mem::take(&mut self.interim) {
            return;
        }
        let Some(i) = self.answering() else {
            return;
        };
        let proxy_closed = self.client_closed.is_some();
        let e = &mut self.pending[i];
        e.resp_end = Some(ctx.ts);
        e.resp_done = true;
        if proxy_closed && !e.explained && !e.unsolicited {
            // The proxy closed before this response completed; whether it still read it is
            // known only at the end (see `finish`).
            e.held = true;
            self.last_response_end = Some(ctx.ts);
            return;
        }
        let outcome = match e.outcome {
            Some(o) => o,
            None if e.gap => Outcome::CaptureGap,
            None => Outcome::Complete,
        };
        e.outcome = Some(outcome);
        self.last_response_end = Some(ctx.ts);
        self.emit_at(i, ctx);
        self.retire();
    }

    fn response_violation(&mut self, v: &Violation, fatal: bool, ctx: &mut Ctx<'_>) {
        let Some(i) = self.answering().or_else(|| {
            // A broken start with nothing pending: attach to a new unsolicited exchange.
            self.response_start(ctx);
            self.answering()
        }) else {
            return;
        };
        let e = &mut self.pending[i];
        // The proxy sent an HTTP/1.x request that this response answers.
        let answers_request = e.req_start.is_some() && !e.unsolicited;
        let (kind, msg) = match v {
            Violation::MalformedStatusLine { .. } => (
                Kind::MalformedStatusLine,
                "response does not start with a valid status line (HTTP/x.y NNN)".to_string(),
            ),
            Violation::MalformedHeader { reason, .. } => {
                (Kind::MalformedHeader, format!("invalid response header: {reason}"))
            }
            Violation::HeadTooLarge { limit } => (
                Kind::HeadTooLarge,
                format!("response head larger than {limit} bytes (the proxy's header buffer)"),
            ),
            Violation::InvalidContentLength { value } => (
                Kind::InvalidContentLength,
                format!("invalid Content-Length: {value}"),
            ),
            Violation::DuplicateContentLength { first, second } => (
                Kind::DuplicateContentLength,
                format!("two Content-Length headers: {first} and {second}"),
            ),
            Violation::ContentLengthWithChunked { .. } => (
                Kind::ContentLengthWithChunked,
                "Content-Length and Transfer-Encoding in the same response".to_string(),
            ),
            Violation::UnsupportedTransferEncoding { value } => (
                Kind::UnsupportedTransferEncoding,
                format!("Transfer-Encoding \"{value}\" (only \"chunked\" is accepted)"),
            ),
            Violation::InvalidChunk { .. } => {
                (Kind::InvalidChunk, "invalid chunk in a chunked body".to_string())
            }
            Violation::MalformedRequest { reason, .. } => {
                (Kind::MalformedRequest, format!("malformed message: {reason}"))
            }
            Violation::Limit { which, limit } => (
                Kind::LimitReached,
                format!("response exceeded gatescope's {which} limit ({limit}); the rest of this connection is not parsed"),
            ),
            Violation::ForeignProtocol { protocol, .. } if answers_request => (
                Kind::UnsupportedProtocol,
                format!("the backend answered the proxy's cleartext HTTP/1.x request in {protocol}: the proxy and the backend disagree on the protocol (e.g. proxy_pass http:// to a TLS or HTTP/2 port); gatescope cannot read the rest"),
            ),
            Violation::ForeignProtocol { protocol, .. } => (
                Kind::UnsupportedProtocol,
                format!("the backend sent {protocol}; gatescope reads only cleartext HTTP/1.x, so this connection is not analysed"),
            ),
        };
        // Another protocol in answer to an HTTP/1.x request is the proxy/backend protocol
        // mismatch behind a 502; without a request seen, it only says the leg is unreadable.
        let severity = match v {
            Violation::ForeignProtocol { .. } if !answers_request => Severity::Warning,
            Violation::ForeignProtocol { .. } => Severity::Error,
            _ => kind.severity(),
        };
        if severity == Severity::Error || kind == Kind::UnsupportedProtocol {
            e.explained = true;
            if fatal {
                e.outcome = Some(Outcome::Invalid);
            }
        }
        if fatal && kind == Kind::LimitReached {
            e.outcome.get_or_insert(Outcome::Invalid);
            // Not a verdict on the backend: what follows in this stream is unknown to us,
            // including whether this response completed (see `resp_unframed`).
            e.explained = true;
            self.resp_unframed = true;
        }
        let ex = e.exref();
        self.em.finding(
            ctx,
            kind,
            severity,
            &ex,
            None,
            msg,
            evidence(violation_evidence(v)),
        );
    }

    // ---------------------------------------------------------------- gaps and closes

    pub fn gap(&mut self, side: Side, len: u64, ctx: &mut Ctx<'_>) {
        match side {
            Side::Client => {
                self.flush_slow(ctx);
                let requesting = self.requesting();
                if let Some(i) = requesting {
                    self.pending[i].gap = true;
                }
                if !self.req.gap(len) {
                    match requesting {
                        Some(i) => self.pending[i].req_lost = true,
                        // Whole requests may have been in the gap: their responses are not
                        // unsolicited.
                        None => self.requests_lost = true,
                    }
                    self.retire();
                }
                self.client_off += len;
                // A gap that completed a body leaves an `End` owed.
                if self.req.owes_step() {
                    self.client_data(&[], ctx);
                }
            }
            Side::Server => {
                let in_message = !self.resp.is_idle();
                if let Some(i) = self.answering() {
                    if in_message || self.pending[i].req_start.is_some() {
                        self.pending[i].gap = true;
                    }
                }
                // A slow wait found by a tick whose response start may be in this gap.
                self.flush_slow(ctx);
                if !self.resp.gap(len) {
                    // The response (or its start) is lost: what happened to it is unknown.
                    // It is a capture gap, never a truncation or a missing response.
                    // The next response found after resync answers the *next* request, so
                    // this exchange is over: written now with its outcome, keeping the pairing
                    // of the rest of the connection in step.
                    if let Some(i) = self.answering() {
                        let e = &mut self.pending[i];
                        if in_message || e.req_start.is_some() {
                            e.outcome = Some(Outcome::CaptureGap);
                            e.explained = true;
                            e.resp_started = true;
                            self.emit_at(i, ctx);
                            self.retire();
                        }
                    }
                    self.interim = false;
                    self.msg_start = None;
                }
                self.server_off += len;
                if self.resp.owes_step() {
                    self.server_data(&[], ctx);
                }
            }
        }
    }

    /// The client (proxy) side ended its stream.
    pub fn client_close(&mut self, how: CloseKind, ctx: &mut Ctx<'_>) {
        self.flush_slow(ctx);
        self.note_idle_close(Side::Client, ctx.ts);
        if how == CloseKind::Rst && matches!(self.client_closed, Some((_, _, CloseKind::Fin))) {
            self.client_reset_after_fin = true;
        }
        if self.client_closed.is_none() {
            self.client_closed = Some((ctx.ts, ctx.frame, how));
            self.last_server_data_at_client_close = self.last_server_data;
        }
        if how == CloseKind::Rst && self.server_closed.is_none() {
            self.abandon(how, ctx);
        }
    }

    /// Notes a first close that came while the connection was idle between exchanges: at
    /// least one response complete, nothing of a next request or response begun, no head
    /// that announced the close, and both streams framed throughout (after a gap or a
    /// parser limit, "nothing begun" is not known).
    #[cold]
    #[inline(never)]
    fn note_idle_close(&mut self, by: Side, now: Ts) {
        if self.client_closed.is_some() || self.server_closed.is_some() {
            return;
        }
        if let (Some(last), true) = (self.last_response_end, self.between_exchanges()) {
            self.idle_close = Some((by, now.ms_since(last)));
        }
    }

    /// At least one response complete, nothing of a next request or response begun (or,
    /// on a continuation, no byte since a dormant connection that was between exchanges),
    /// no head that announced the close, both streams framed throughout.
    fn between_exchanges(&self) -> bool {
        let parsers_idle = (self.req.is_idle() && self.resp.is_idle())
            || (self.resumed_idle && self.client_off == 0 && self.server_off == 0);
        self.last_response_end.is_some()
            && parsers_idle
            && !self.close_announced
            && self.pending.is_empty()
            && !self.requests_lost
            && !self.req_unframed
            && !self.resp_unframed
    }

    /// See [`Session::note_idle_close`].
    pub fn idle_close(&self) -> Option<(Side, f64)> {
        self.idle_close
    }

    /// The proxy gave up on owed responses.
    fn abandon(&mut self, how: CloseKind, ctx: &mut Ctx<'_>) {
        if self.resp_unframed {
            // Whether the owed responses had arrived is unknown: the stream was not framed.
            return;
        }
        let (close_ts, _, _) = self.client_closed.unwrap_or((ctx.ts, ctx.frame, how));
        let at = self.client_closed.map(|(t, f, _)| (t, f));
        for i in 0..self.pending.len() {
            let e = &self.pending[i];
            // Bytes that never became a request head (garbage, a cut head) owed no response:
            // the proxy cannot have given up waiting for one.
            if e.resp_done || e.unsolicited || e.explained || e.req_start.is_none() {
                continue;
            }
            if e.method.is_none() && !e.resp_started {
                let e = &mut self.pending[i];
                e.explained = true;
                e.outcome.get_or_insert(Outcome::NoResponse);
                continue;
            }
            let started = e.resp_started;
            let bytes = e.resp_bytes;
            let extra = json!({"response_bytes": bytes});
            self.abandoned_finding(i, how, close_ts, at, started, extra, ctx);
        }
    }

    /// Writes the `abandoned_by_client` finding for `pending[i]`: the proxy closed (`how`, at
    /// `close_ts`) while that response was owed. What it means depends on the phase and on how
    /// long the proxy had heard nothing: a timeout before the head is nginx's 504, a timeout
    /// in the body can only cut the response short, and a close far below any timeout is the
    /// proxy aborting (nginx 499), not a timeout.
    #[allow(clippy::too_many_arguments)]
    fn abandoned_finding(
        &mut self,
        i: usize,
        how: CloseKind,
        close_ts: Ts,
        at: Option<(Ts, u64)>,
        started: bool,
        extra: Value,
        ctx: &mut Ctx<'_>,
    ) {
        let last_server = self.last_server_data_at_client_close;
        let e = &mut self.pending[i];
        let request = e.req_end.or(e.req_start).map(|(t, _)| t);
        let since_request = request.map_or(0.0, |t| close_ts.ms_since(t));
        // The proxy's read timer restarts at every byte it reads from the backend.
        let (idle_from, idle_what) = match (request, last_server) {
            (Some(r), Some(b)) if b > r => (Some(b), "the backend's last byte"),
            (r, _) => (r, "the request"),
        };
        let idle = idle_from.map_or(since_request, |t| close_ts.ms_since(t));
        let hint = findings::abandoned_hint(started, idle);
        let phase = if started {
            "while the response was arriving"
        } else {
            "before any response byte"
        };
        let how_s = how.as_str();
        let meaning = if idle < findings::MIN_PLAUSIBLE_TIMEOUT_MS {
            "far too soon for a timeout: the proxy aborted (its own client went away, nginx 499)"
                .to_string()
        } else if started {
            "a proxy read timeout (the client gets a truncated response: the status was already sent) or a client abort (499)".to_string()
        } else {
            "a proxy timeout (504) or a client abort (499)".to_string()
        };
        let msg = if idle_what == "the request" {
            format!("the proxy closed the connection ({how_s}) {phase}, {idle:.1} ms after the request: {meaning}")
        } else {
            format!(
                "the proxy closed the connection ({how_s}) {phase}, {idle:.1} ms after {idle_what} ({since_request:.1} ms after the request): {meaning}"
            )
        };
        e.explained = true;
        e.outcome = Some(Outcome::Abandoned);
        let ex = e.exref();
        let mut ev = evidence(json!({
            "client_close": how_s,
            "since_request_ms": since_request,
            "idle_before_close_ms": idle,
            "idle_since": if idle_what == "the request" { "request" } else { "backend_last_byte" },
            "response_started": started,
        }));
        if let Value::Object(m) = extra {
            ev.extend(m);
        }
        self.em.finding_with_hint(
            ctx,
            Kind::AbandonedByClient,
            Severity::Error,
            &ex,
            at,
            msg,
            ev,
            hint,
        );
    }

    /// The server side ended its stream. `ack` is the server's acknowledgement of the client
    /// stream at that moment (as a client-stream offset), if the segment carried one.
    pub fn server_close(&mut self, how: CloseKind, ack: Option<u64>, ctx: &mut Ctx<'_>) {
        self.flush_slow(ctx);
        self.note_idle_close(Side::Server, ctx.ts);
        // Also after the backend's FIN: its kernel resets when the proxy writes on.
        if how == CloseKind::Rst {
            self.reset_during_request(ctx);
        }
        if self.server_closed.is_some() {
            return;
        }
        self.server_closed = Some((ctx.ts, ctx.frame, how));
        self.flush_excess(ctx);
        // Bytes that could never start "HTTP/" were received before this close: they, not
        // the close, explain the exchange.
        if let Some(v) = self.resp.end_of_stream() {
            self.response_violation(&v, true, ctx);
        }
        if self.client_closed.is_some()
            && !self.server_spoke_after_client_fin
            && self.response_owed()
        {
            let how_client = self.client_closed.map_or(CloseKind::Fin, |c| c.2);
            self.abandon(how_client, ctx);
        }
        let pos = self.resp.position();
        // A close-delimited body ends normally with FIN.
        if let (
            Position::InBody {
                framing: Framing::UntilClose,
                ..
            },
            CloseKind::Fin,
        ) = (pos, how)
        {
            self.response_end(ctx);
            return;
        }
        let Some(i) = self.answering() else {
            return;
        };
        if self.pending[i].explained || self.pending[i].unsolicited {
            if matches!(pos, Position::InBody { .. } | Position::InHead { .. }) {
                self.pending[i]
                    .outcome
                    .get_or_insert(Outcome::TruncatedBody);
            }
            return;
        }
        // The request's body still being sent (by this exchange's request): the close breaks
        // the proxy's write, not its wait for a response.
        let sending = match (self.requesting() == Some(i), self.req.position()) {
            (
                true,
                h1::Position::InBody {
                    expected, received, ..
                },
            ) => Some((expected, received)),
            _ => None,
        };
        let e = &mut self.pending[i];
        let ended_by = format!("server {}", how.as_str());
        match pos {
            Position::Idle => {
                if e.req_start.is_none() {
                    return;
                }
                e.explained = true;
                e.outcome = Some(Outcome::NoResponse);
                let reused = e.index > 1 || self.midstream;
                // The close did not acknowledge any byte of the request: it was sent before
                // the backend saw the request, i.e. it crossed the request on the wire.
                let crossed = ack.is_some_and(|a| a <= e.req_offset);
                let since_req = e.req_start.map_or(0.0, |(t, _)| ctx.ts.ms_since(t));
                let ex = e.exref();
                if reused && crossed {
                    let msg = format!(
                        "the backend closed ({}) an idle keep-alive connection just as the proxy reused it; the close crossed the request on the wire",
                        how.as_str()
                    );
                    let ev = evidence(json!({
                        "idle_before_request_ms": e.idle_before_us.map(|u| u as f64 / 1000.0),
                        "server_close": how.as_str(),
                        "server_close_after_request_ms": since_req,
                        "request_acknowledged": false,
                        "exchange_on_connection": e.index,
                    }));
                    self.em.finding(
                        ctx,
                        Kind::KeepaliveRace,
                        Severity::Error,
                        &ex,
                        None,
                        msg,
                        ev,
                    );
                } else {
                    let kind = match how {
                        CloseKind::Rst => Kind::ResetBeforeResponse,
                        CloseKind::Fin => Kind::ClosedBeforeResponse,
                    };
                    let what = match how {
                        CloseKind::Rst => "reset the connection",
                        CloseKind::Fin => "closed the connection",
                    };
                    let msg = match sending {
                        Some((expected, received)) => {
                            let of = expected.map_or(String::from(" (chunked)"), |n| format!(" of {n}"));
                            format!(
                                "backend {what} {since_req:.0} ms after the request started, while the proxy was still sending its body ({received}{of} bytes sent), before sending any response byte{}",
                                if how == CloseKind::Rst {
                                    ": the proxy's write fails (or its read, if the body had all left the proxy's socket buffer)"
                                } else {
                                    ""
                                }
                            )
                        }
                        None => format!(
                            "backend {what} {since_req:.0} ms after the request, before sending any response byte"
                        ),
                    };
                    let ev = evidence(json!({
                        "ended_by": ended_by,
                        "after_request_ms": since_req,
                        "request_complete": e.req_done,
                        "exchange_on_connection": e.index,
                        "idle_before_request_ms": e.idle_before_us.map(|u| u as f64 / 1000.0),
                    }));
                    // A reset while the proxy still sends fails its write, not its read:
                    // the gateways say so in other words.
                    let hint = match (sending, how) {
                        (Some(_), CloseKind::Rst) => findings::reset_while_sending_hint(),
                        _ => kind.hint(),
                    };
                    self.em
                        .finding_with_hint(ctx, kind, Severity::Error, &ex, None, msg, ev, hint);
                }
            }
            Position::InHead { bytes } => {
                e.explained = true;
                e.outcome = Some(Outcome::TruncatedHead);
                let ex = e.exref();
                let msg = format!(
                    "response head cut off after {bytes} byte(s) by a {}",
                    how.as_str()
                );
                self.em.finding(
                    ctx,
                    Kind::TruncatedHead,
                    Severity::Error,
                    &ex,
                    None,
                    msg,
                    evidence(json!({"head_bytes": bytes, "ended_by": ended_by})),
                );
            }
            Position::InBody {
                framing,
                expected,
                received,
            } => {
                e.explained = true;
                e.outcome = Some(Outcome::TruncatedBody);
                let ex = e.exref();
                let msg = match (framing, expected) {
                    (Framing::Length(_), Some(exp)) => format!(
                        "body cut off by a {} after {received} of {exp} bytes (Content-Length)",
                        how.as_str()
                    ),
                    (Framing::Chunked, _) => format!(
                        "chunked body cut off by a {} after {received} bytes, before the last chunk",
                        how.as_str()
                    ),
                    _ => format!(
                        "close-delimited body ended by a {} after {received} bytes",
                        how.as_str()
                    ),
                };
                let ev = evidence(json!({
                    "framing": framing.describe(),
                    "expected": expected,
                    "received": received,
                    "ended_by": ended_by,
                }));
                self.em.finding(
                    ctx,
                    Kind::TruncatedBody,
                    Severity::Error,
                    &ex,
                    None,
                    msg,
                    ev,
                );
            }
            Position::Lost | Position::Tunnel => {}
        }
    }

    /// Packet time advanced to `now` with no event on this connection: report waits that have
    /// become slow, so that live mode shows them while the response is still missing.
    pub fn tick(&mut self, now: Ts, ctx: &mut Ctx<'_>) {
        self.flush_slow(ctx);
        if self.resp_unframed {
            // Response starts are no longer seen: silence proves nothing.
            return;
        }
        let slow_us = self.slow_first_byte_us;
        for e in self.pending.iter_mut() {
            if e.resp_started || e.slow_reported || e.unsolicited {
                continue;
            }
            if let Some((req_end, _)) = e.req_end {
                if now.micros_since(req_end) > slow_us {
                    e.slow_reported = true;
                    e.slow_due = true;
                    self.slow_due = true;
                }
            }
        }
    }

    /// Writes the slow waits a tick found (see [`Exch::slow_due`]). Called at the start of
    /// every event of this connection, and after a server-side gap has been attributed.
    fn flush_slow(&mut self, ctx: &mut Ctx<'_>) {
        // Called at every event: nearly always nothing is due, and the pending exchanges
        // need not be looked at.
        if !std::mem::take(&mut self.slow_due) {
            return;
        }
        for i in 0..self.pending.len() {
            let e = &mut self.pending[i];
            if !std::mem::take(&mut e.slow_due) {
                continue;
            }
            if let Some((req_end, frame)) = e.req_end {
                let ex = e.exref();
                self.slow_finding(ex, req_end, frame, ctx);
            }
        }
    }

    /// The connection is over: report what is still open and write the remaining exchanges.
    pub fn finish(&mut self, now: Ts, ctx: &mut Ctx<'_>) {
        self.flush_slow(ctx);
        self.flush_excess(ctx);
        if let Some(v) = self.resp.end_of_stream() {
            self.response_violation(&v, true, ctx);
        }
        for i in 0..self.pending.len() {
            self.request_after_close(i, ctx);
        }
        // Responses that completed after the proxy's FIN: if the proxy then reset the
        // connection, its FIN was a full close and the response went nowhere (the signature of
        // nginx's proxy_read_timeout: FIN at the timeout, RST when the late response arrives).
        for i in 0..self.pending.len() {
            if !self.pending[i].held {
                continue;
            }
            self.pending[i].held = false;
            if self.client_reset_after_fin {
                let (fin_ts, fin_frame, _) =
                    self.client_closed
                        .unwrap_or((now, ctx.frame, CloseKind::Fin));
                let started_before_fin =
                    self.pending[i].resp_start.is_some_and(|(t, _)| t < fin_ts);
                // The response arrived after the FIN and was refused (RST): the FIN was a
                // full close.
                let extra = json!({"response_completed_after_close": true});
                self.abandoned_finding(
                    i,
                    CloseKind::Fin,
                    fin_ts,
                    Some((fin_ts, fin_frame)),
                    started_before_fin,
                    extra,
                    ctx,
                );
            }
            let e = &mut self.pending[i];
            if e.outcome.is_none() && e.gap {
                e.outcome = Some(Outcome::CaptureGap);
            }
            self.emit_at(i, ctx);
        }
        self.tick(now, ctx);
        self.flush_slow(ctx);
        if self.client_closed.is_some()
            && self.server_closed.is_none()
            && !self.server_spoke_after_client_fin
            && self.response_owed()
        {
            let how = self.client_closed.map_or(CloseKind::Fin, |c| c.2);
            self.abandon(how, ctx);
        }
        while let Some(e) = self.pending.pop_front() {
            if e.emitted {
                continue;
            }
            let outcome = e.outcome.unwrap_or(if e.gap {
                Outcome::CaptureGap
            } else if self.resp_unframed {
                // Its response, if any, went by unframed: not a missing response.
                Outcome::Invalid
            } else if e.resp_started {
                Outcome::InFlight
            } else if self.server_closed.is_some() || self.client_closed.is_some() {
                Outcome::NoResponse
            } else {
                Outcome::InFlight
            });
            self.emit_exchange(e, outcome, ctx);
        }
    }

    fn emit_at(&mut self, i: usize, ctx: &mut Ctx<'_>) {
        let e = std::mem::take(&mut self.pending[i]);
        let outcome = e.outcome.unwrap_or(Outcome::Complete);
        let (index, req_done, req_lost) = (e.index, e.req_done, e.req_lost);
        // An early answer to a request still streaming: a reset before its end is reported
        // on this exchange (see `reset_during_request`), so the placeholder names it.
        let early = (e.answered_early && !req_done)
            .then(|| (e.method.clone(), e.target.clone(), e.status, e.resp_end));
        self.emit_exchange(e, outcome, ctx);
        // Keep a placeholder so request-side bookkeeping of a still-streaming request holds.
        let p = &mut self.pending[i];
        p.index = index;
        p.req_done = req_done;
        p.req_lost = req_lost;
        p.resp_done = true;
        p.emitted = true;
        if let Some((method, target, status, resp_end)) = early {
            p.answered_early = true;
            p.method = method;
            p.target = target;
            p.status = status;
            p.resp_end = resp_end;
        }
    }

    /// Drops exchanges that are done on both sides from the front of the queue.
    fn retire(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|e| e.emitted && (e.req_done || e.req_lost))
        {
            self.pending.pop_front();
        }
    }

    fn emit_exchange(&mut self, e: Exch, outcome: Outcome, ctx: &mut Ctx<'_>) {
        self.exchanges += 1;
        let ttfb_ms = match (e.req_end, e.resp_start) {
            (Some((a, _)), Some((b, _))) => Some(b.ms_since(a)),
            _ => None,
        };
        let total_ms = match (e.req_start, e.resp_end) {
            (Some((a, _)), Some(b)) => Some(b.ms_since(a)),
            _ => None,
        };
        let rec = record::Exchange {
            conn: self.em.id,
            index: e.index,
            client: self.em.client,
            server: self.em.server,
            method: e.method,
            target: e.target,
            status: e.status,
            request_start: e.req_start.map(|x| x.0),
            request_end: e.req_end.map(|x| x.0),
            response_start: e.resp_start.map(|x| x.0),
            response_head_end: e.resp_head_end,
            response_end: e.resp_end,
            ttfb_ms,
            total_ms,
            request_bytes: e.req_bytes,
            response_bytes: e.resp_bytes,
            outcome,
        };
        self.em.push(ctx, Record::Exchange(rec));
    }
}

/// One line for a violation, for messages.
pub fn describe_violation(v: &Violation) -> String {
    match v {
        Violation::MalformedStatusLine { line } => format!("bad status line \"{line}\""),
        Violation::MalformedHeader { reason, line }
        | Violation::MalformedRequest { reason, line } => {
            format!("{reason}: \"{line}\"")
        }
        Violation::HeadTooLarge { limit } => format!("head larger than {limit} bytes"),
        Violation::InvalidContentLength { value } => format!("invalid Content-Length \"{value}\""),
        Violation::DuplicateContentLength { first, second } => {
            format!("duplicate Content-Length {first} / {second}")
        }
        Violation::ContentLengthWithChunked {
            content_length,
            transfer_encoding,
        } => format!("Content-Length {content_length} with Transfer-Encoding {transfer_encoding}"),
        Violation::UnsupportedTransferEncoding { value } => {
            format!("unsupported Transfer-Encoding \"{value}\"")
        }
        Violation::InvalidChunk { line } => format!("invalid chunk \"{line}\""),
        Violation::Limit { which, limit } => format!("{which} limit {limit} reached"),
        Violation::ForeignProtocol { protocol, .. } => format!("{protocol}, not HTTP/1.x"),
    }
}

fn violation_evidence(v: &Violation) -> Value {
    match v {
        Violation::MalformedStatusLine { line } => json!({"line": line}),
        Violation::MalformedHeader { reason, line }
        | Violation::MalformedRequest { reason, line } => {
            json!({"reason": reason, "line": line})
        }
        Violation::HeadTooLarge { limit } => json!({"limit_bytes": limit}),
        Violation::InvalidContentLength { value } => json!({"content_length": value}),
        Violation::DuplicateContentLength { first, second } => {
            json!({"first": first, "second": second})
        }
        Violation::ContentLengthWithChunked {
            content_length,
            transfer_encoding,
        } => json!({"content_length": content_length, "transfer_encoding": transfer_encoding}),
        Violation::UnsupportedTransferEncoding { value } => json!({"transfer_encoding": value}),
        Violation::InvalidChunk { line } => json!({"line": line}),
        Violation::Limit { which, limit } => json!({"limit": which, "value": limit}),
        Violation::ForeignProtocol {
            protocol,
            first_bytes,
        } => json!({"protocol": protocol, "side": "backend", "first_bytes": first_bytes}),
    }
}
