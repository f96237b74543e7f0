//! HTTP/1.x message framing over one reassembled stream, incrementally, without buffering
//! bodies.
//!
//! The parser is a pull state machine: [`Parser::step`] consumes a prefix of the input and
//! says what happened ([`Step`]). The caller (the `session`) owns pairing and time, so a
//! response's framing, which depends on the request it answers (HEAD, CONNECT), is set by the
//! caller right after [`Step::Head`] with [`Parser::set_framing`].
//!
//! Heads are parsed with `httparse` from a bounded buffer. When `httparse` rejects a head, a
//! line-by-line check names the offending line the way nginx would ("upstream sent invalid
//! header"). Bodies are framed per RFC 9112 §6.3 and only counted.

use crate::limits::Limits;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, requests without Content-Length/Transfer-Encoding).
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
    /// The connection leaves HTTP (101 Switching Protocols, 2xx to CONNECT).
    Tunnel,
}

impl Framing {
    pub fn describe(self) -> &'static str {
        match self {
            Framing::None => "none",
            Framing::Length(_) => "content-length",
            Framing::Chunked => "chunked",
            Framing::UntilClose => "close-delimited",
            Framing::Tunnel => "tunnel",
        }
    }
}

/// What a head said, kept small: bodies and most headers are not retained.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// Request method (requests only), length-capped and escaped like the target: it is
    /// wire bytes too, and goes into every finding and exchange record of its exchange.
    pub method: Option<String>,
    /// Request target, length-capped and escaped (requests only).
    pub target: Option<String>,
    /// Status code (responses only).
    pub status: Option<u16>,
    pub version_minor: u8,
    pub head_len: usize,
    pub content_length: Option<u64>,
    /// Transfer-Encoding present and its last coding is `chunked`.
    pub chunked: bool,
    pub transfer_encoding: Option<String>,
    pub connection_close: bool,
    pub expect_continue: bool,
    /// Problems found in the head, in the order a gateway would hit them.
    pub violations: Vec<Violation>,
}

/// A protocol violation, with evidence escaped for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    MalformedStatusLine {
        line: String,
    },
    MalformedHeader {
        reason: &'static str,
        line: String,
    },
    MalformedRequest {
        reason: &'static str,
        line: String,
    },
    HeadTooLarge {
        limit: usize,
    },
    InvalidContentLength {
        value: String,
    },
    DuplicateContentLength {
        first: String,
        second: String,
    },
    ContentLengthWithChunked {
        content_length: String,
        transfer_encoding: String,
    },
    UnsupportedTransferEncoding {
        value: String,
    },
    InvalidChunk {
        line: String,
    },
    /// The stream is TLS or HTTP/2, not HTTP/1.x: gatescope cannot read it. Told apart from
    /// a malformed message because the fix is a configuration one (the proxy and the backend
    /// disagree on the protocol, or the leg is simply encrypted), not a broken backend.
    ForeignProtocol {
        protocol: &'static str,
        first_bytes: String,
    },
    /// One of gatescope's own bounds was hit while parsing.
    Limit {
        which: &'static str,
        limit: usize,
    },
}

/// What one call to [`Parser::step`] did.
#[derive(Debug)]
pub enum Step {
    /// Everything given was consumed; nothing to report.
    NeedMore,
    /// A message begins at the first byte not yet consumed.
    MessageStart,
    /// The head is complete. For responses, call [`Parser::set_framing`] before the next step.
    Head(Box<Head>),
    /// Bytes of a body were consumed (counted, not kept).
    Body(u64),
    /// The message is complete.
    End,
    /// A violation that does not stop framing (the message continues).
    Violation(Violation),
    /// The stream cannot be framed any further (fatal violation or a resync failure): every
    /// following byte is skipped until the connection ends.
    Broken(Violation),
    /// Bytes skipped while looking for a message boundary after a mid-stream start or a gap.
    Skipped(u64),
}

/// Where a message stood when its stream ended or lost bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Between messages.
    Idle,
    /// In a head; `bytes` of it received.
    InHead { bytes: u64 },
    /// In a body. `expected` is `None` for chunked bodies (unknown total).
    InBody {
        framing: Framing,
        expected: Option<u64>,
        received: u64,
    },
    /// Looking for a message boundary, or past a fatal violation.
    Lost,
    /// Tunnelled: not HTTP any more.
    Tunnel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Request,
    Response,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line (its length so far).
    Size {
        line_len: usize,
    },
    Data {
        left: u64,
    },
    /// The CRLF after chunk data; `seen` bytes of it.
    DataEnd {
        seen: u8,
    },
    /// Trailer section after the last chunk; `line_len` bytes of the current line.
    Trailer {
        total: usize,
        line_len: usize,
    },
}

#[derive(Debug)]
enum State {
    Idle,
    /// Start of a message has been announced; head bytes accumulate in `buf`.
    Head,
    /// Head complete and buffered, a violation was reported; parse it on the next step.
    AwaitHeadParse,
    /// Head parsed; the caller must set the framing.
    AwaitFraming,
    Length {
        left: u64,
    },
    Chunked(Chunk),
    UntilClose,
    Tunnel,
    /// Looking for a message start (mid-stream pickup or after a gap), with the TLS records
    /// and HTTP/2 frames seen at segment starts meanwhile (see [`tls_records_at`],
    /// [`h2_frames_at`]).
    Resync {
        tls_records: u8,
        h2_frames: u8,
    },
    /// Unframeable; skip until the end.
    Broken,
}

/// Incremental HTTP/1.x parser for one direction.
#[derive(Debug)]
pub struct Parser {
    role: Role,
    state: State,
    buf: Vec<u8>,
    /// Body bytes of the current message so far.
    body: u64,
    /// Framing of the current message.
    framing: Framing,
    /// Bytes of the current chunk-size line (bounded).
    line: Vec<u8>,
    too_large_reported: bool,
    /// The response did not start with "HTTP/"; collecting its first line as evidence.
    bad_start: bool,
    /// An `End` is owed before anything else (a message whose body just completed).
    pending_end: bool,
    max_head_bytes: usize,
    head_buffer_cap: usize,
    max_headers: usize,
    max_trailer_bytes: usize,
    max_chunk_line: usize,
    show_secrets: bool,
}

/// Request-line starts recognised when looking for a message boundary.
pub const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Bytes of a non-HTTP response's first line kept as evidence.
const STATUS_EVIDENCE: usize = 64;

/// Shown instead of bytes that may be a request body (see [`Parser::head_preview`]).
pub const HIDDEN_BYTES: &str = "(not shown: they may be a request body; --show-secrets shows them)";

/// Max characters of evidence taken from the wire.
pub const EVIDENCE_CAP: usize = 200;

/// The HTTP/2 connection preface a client sends with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Which non-HTTP/1 protocol the first bytes of a stream are, if they are clearly one:
/// a TLS record header (content type 20-23, version 3.x: a ClientHello, ServerHello or
/// alert), the HTTP/2 client preface, or an HTTP/2 server's first frame (SETTINGS on
/// stream 0). None of these can start an HTTP/1.x message.
pub fn foreign_protocol(role: Role, start: &[u8]) -> Option<&'static str> {
    if starts_like_tls_record(start) {
        return Some("TLS");
    }
    let h2 = match role {
        Role::Request => start.starts_with(H2_PREFACE),
        Role::Response => match start {
            [0, _, _, 4, flags, rest @ ..] if *flags <= 1 => rest.iter().take(4).all(|&b| b == 0),
            _ => false,
        },
    };
    h2.then_some("HTTP/2")
}

/// A TLS record header's first three bytes: content type 20-23 (change cipher spec, alert,
/// handshake, application data), version 3.0-3.4. No HTTP/1.x message starts so.
fn starts_like_tls_record(b: &[u8]) -> bool {
    matches!(b, [t, 3, minor, ..] if (20..=23).contains(t) && *minor <= 4)
}

/// TLS records chained from the start of `data`: each header (content type 20-23,
/// version 3.0-3.4, a length up to 2^14 + 2048) followed, where the record ends inside
/// `data`, by the next one. 0 if `data` does not start with one, or if a record ends inside
/// `data` where no record follows (a chance match, not a TLS stream).
fn tls_records_at(data: &[u8]) -> u8 {
    let mut at = 0usize;
    let mut n = 0u8;
    while let Some(h) = data.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if !(starts_like_tls_record(h) && (1..=18_432).contains(&len)) {
            return 0;
        }
        n = n.saturating_add(1);
        at += 5 + len;
        if n >= 2 {
            break;
        }
    }
    // A next header cut by the segment's end (fewer than 5 bytes left): too little to say
    // either way, so the records before it count.
    n
}

/// Whether `h` (at least 9 bytes) is the header of an HTTP/2 frame (RFC 9113 §4.1, §6) as a
/// proxy and its backend exchange them: a length up to the default maximum frame size
/// (16,384), a defined type (0-9) with only its defined flags, the reserved bit clear, the
/// connection-level frames (SETTINGS, PING, GOAWAY) on stream 0 with their fixed sizes, and
/// the others on a client-initiated (odd) stream below 2^24. Strict on purpose: a chance
/// match in a binary HTTP/1 body must be rare, and a missed HTTP/2 frame only delays the
/// verdict.
fn is_h2_frame_header(h: &[u8]) -> bool {
    let [l0, l1, l2, kind, flags, s0, s1, s2, s3, ..] = *h else {
        return false;
    };
    let len = u32::from_be_bytes([0, l0, l1, l2]);
    let stream = u32::from_be_bytes([s0, s1, s2, s3]);
    if len > 16_384 || stream >> 31 != 0 {
        return false;
    }
    let on_stream = stream != 0 && stream < 1 << 24 && !stream.is_multiple_of(2);
    let only = |allowed: u8| flags & !allowed == 0;
    match kind {
        // DATA: END_STREAM, PADDED.
        0 => on_stream && only(0x09),
        // HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY.
        1 => on_stream && only(0x2d) && len > 0,
        // PRIORITY, RST_STREAM.
        2 => on_stream && flags == 0 && len == 5,
        3 => on_stream && flags == 0 && len == 4,
        // SETTINGS: ACK (then empty).
        4 => stream == 0 && only(0x01) && len.is_multiple_of(6) && (flags == 0 || len == 0),
        // PUSH_PROMISE: END_HEADERS, PADDED.
        5 => on_stream && only(0x0c) && len >= 4,
        // PING: ACK.
        6 => stream == 0 && only(0x01) && len == 8,
        // GOAWAY.
        7 => stream == 0 && flags == 0 && len >= 8,
        // WINDOW_UPDATE: on the connection or a stream.
        8 => (stream == 0 || on_stream) && flags == 0 && len == 4,
        // CONTINUATION: END_HEADERS.
        9 => on_stream && only(0x04) && len > 0,
        _ => false,
    }
}

/// HTTP/2 frames chained from the start of `data` (see [`is_h2_frame_header`]), counted up
/// to 3; as [`tls_records_at`], 0 when a frame ends inside `data` where no frame follows.
fn h2_frames_at(data: &[u8]) -> u8 {
    let mut at = 0usize;
    let mut n = 0u8;
    while let Some(h) = data.get(at..at + 9) {
        if !is_h2_frame_header(h) {
            return 0;
        }
        n = n.saturating_add(1);
        at += 9 + usize::from(u16::from_be_bytes([h[1], h[2]])) + (usize::from(h[0]) << 16);
        if n >= 3 {
            break;
        }
    }
    n
}

/// Whether `data` starts like an HTTP/1.x request line.
pub fn looks_like_request(data: &[u8]) -> bool {
    METHODS.iter().any(|m| data.starts_with(m))
}

/// Escapes wire bytes for display: printable ASCII as is, everything else `\xNN`, capped.
/// Terminal control bytes from the wire never reach the user's terminal.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().min(EVIDENCE_CAP) + 8);
    for &b in bytes {
        if s.len() >= EVIDENCE_CAP {
            s.push('…');
            break;
        }
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Finds the end of a head (`\r\n\r\n` or `\n\n`) in `buf`, searching from `from`.
///
/// Every head goes through here once, so the line ends are found with `memchr`'s vector
/// search: a byte-at-a-time loop was 3-5 % of the whole analysis, and its speed moved with
/// where the compiler happened to place it.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    memchr::memchr_iter(b'\n', tail)
        .map(|p| from + p)
        .find(|&nl| {
            // "\n\n" or "\n\r\n"
            let before = |k: usize| nl.checked_sub(k).and_then(|i| buf.get(i)).copied();
            before(1) == Some(b'\n') || (before(1) == Some(b'\r') && before(2) == Some(b'\n'))
        })
        .map(|nl| nl + 1)
}

impl Parser {
    pub fn new(role: Role, limits: &Limits) -> Parser {
        Parser {
            role,
            state: State::Idle,
            buf: Vec::new(),
            body: 0,
            framing: Framing::None,
            line: Vec::new(),
            too_large_reported: false,
            pending_end: false,
            bad_start: false,
            max_head_bytes: limits.max_head_bytes,
            head_buffer_cap: limits.head_buffer_cap.max(limits.max_head_bytes),
            max_headers: limits.max_headers.clamp(1, 1024),
            max_trailer_bytes: limits.max_trailer_bytes,
            max_chunk_line: limits.max_chunk_line,
            show_secrets: limits.show_secrets,
        }
    }

    /// Starts in resync mode: the stream was picked up mid-way and the first message boundary
    /// is unknown.
    pub fn resync(&mut self) {
        self.state = State::Resync {
            tls_records: 0,
            h2_frames: 0,
        };
        self.buf = Vec::new();
    }

    /// Whether `step` has something to say even without more input (an `End` owed, or a
    /// buffered head to parse).
    pub fn owes_step(&self) -> bool {
        self.pending_end || matches!(self.state, State::AwaitHeadParse)
    }

    /// The connection left HTTP (101, CONNECT): everything from now on is tunnelled bytes.
    pub fn tunnel(&mut self) {
        self.state = State::Tunnel;
        self.pending_end = false;
    }

    /// Bytes of a head still being collected: what a head that never ends holds.
    pub fn head_in_progress(&self) -> usize {
        match self.state {
            State::Head | State::AwaitHeadParse => self.buf.len(),
            _ => 0,
        }
    }

    /// The first `n` bytes of the head being collected, escaped for display (empty when no
    /// head is in progress). Bytes that do not start like a request line may be a request
    /// body (a login form, a token) and are shown only with `--show-secrets`.
    pub fn head_preview(&self, n: usize) -> String {
        match self.state {
            State::Head | State::AwaitHeadParse
                if self.show_secrets || looks_like_request(&self.buf) =>
            {
                escape(&self.buf[..self.buf.len().min(n)])
            }
            State::Head | State::AwaitHeadParse => HIDDEN_BYTES.to_string(),
            _ => String::new(),
        }
    }

    /// Whether the head being collected starts like a request line.
    pub fn head_looks_like_request(&self) -> bool {
        looks_like_request(&self.buf)
    }

    /// Gives up the head being collected because all connections' heads together are over
    /// `limit`: its buffer is freed and the stream is not framed further (like a head over
    /// `head_buffer_cap`). None if no head is being collected.
    pub fn shed_head(&mut self, limit: usize) -> Option<Violation> {
        if self.head_in_progress() == 0 {
            return None;
        }
        self.buf = Vec::new();
        self.state = State::Broken;
        self.bad_start = false;
        self.pending_end = false;
        Some(Violation::Limit {
            which: "max_head_total",
            limit,
        })
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    pub fn is_resyncing(&self) -> bool {
        matches!(self.state, State::Resync { .. })
    }

    /// Where the current message stands.
    pub fn position(&self) -> Position {
        match &self.state {
            State::Idle => Position::Idle,
            State::Head | State::AwaitHeadParse | State::AwaitFraming => Position::InHead {
                bytes: self.buf.len() as u64,
            },
            State::Length { left } => Position::InBody {
                framing: self.framing,
                expected: Some(self.body + left),
                received: self.body,
            },
            State::Chunked(_) => Position::InBody {
                framing: Framing::Chunked,
                expected: None,
                received: self.body,
            },
            State::UntilClose => Position::InBody {
                framing: Framing::UntilClose,
                expected: None,
                received: self.body,
            },
            State::Tunnel => Position::Tunnel,
            State::Resync { .. } | State::Broken => Position::Lost,
        }
    }

    /// Sets the body framing of the response whose head was just returned.
    pub fn set_framing(&mut self, framing: Framing) {
        self.framing = framing;
        self.body = 0;
        self.state = match framing {
            Framing::None => State::Idle,
            Framing::Length(0) => State::Idle,
            Framing::Length(n) => State::Length { left: n },
            Framing::Chunked => State::Chunked(Chunk::Size { line_len: 0 }),
            Framing::UntilClose => State::UntilClose,
            Framing::Tunnel => State::Tunnel,
        };
        // A message with no body ends right away: the caller sees End on the next step.
        if matches!(self.state, State::Idle) {
            self.pending_end = true;
        }
    }

    /// The stream lost `len` bytes. Returns true if the loss stayed inside a body whose
    /// framing absorbs it (the message can still complete); otherwise the parser resyncs.
    pub fn gap(&mut self, len: u64) -> bool {
        match &mut self.state {
            State::Length { left } if len <= *left => {
                *left -= len;
                self.body += len;
                if *left == 0 {
                    self.state = State::Idle;
                    self.pending_end = true;
                }
                true
            }
            State::Chunked(Chunk::Data { left }) if len <= *left => {
                *left -= len;
                self.body += len;
                if *left == 0 {
                    self.state = State::Chunked(Chunk::DataEnd { seen: 0 });
                }
                true
            }
            State::UntilClose => {
                self.body += len;
                true
            }
            State::Tunnel | State::Broken => true,
            _ => {
                self.state = State::Resync {
                    tls_records: 0,
                    h2_frames: 0,
                };
                self.buf.clear();
                false
            }
        }
    }

    /// Consumes a prefix of `data`. Returns how many bytes were consumed and what happened.
    /// Call again with the rest until it returns `(n, Step::NeedMore)` with all consumed.
    pub fn step(&mut self, data: &[u8]) -> (usize, Step) {
        let (n, step) = self.step_inner(data);
        if matches!(step, Step::NeedMore) && self.pending_end {
            self.pending_end = false;
            return (n, Step::End);
        }
        (n, step)
    }

    fn step_inner(&mut self, data: &[u8]) -> (usize, Step) {
        if self.pending_end {
            self.pending_end = false;
            return (0, Step::End);
        }
        if matches!(self.state, State::AwaitHeadParse) {
            return (0, self.finish_head());
        }
        if data.is_empty() {
            return (0, Step::NeedMore);
        }
        match &mut self.state {
            State::Idle => {
                self.buf.clear();
                self.too_large_reported = false;
                // A gap may have interrupted a bad start; this message starts afresh.
                self.bad_start = false;
                self.body = 0;
                self.framing = Framing::None;
                // Requests may be preceded by stray CRLFs (RFC 9112 §2.2).
                if self.role == Role::Request {
                    let skip = data
                        .iter()
                        .take_while(|&&b| b == b'\r' || b == b'\n')
                        .count();
                    if skip > 0 {
                        return (skip, Step::Skipped(skip as u64));
                    }
                }
                self.state = State::Head;
                (0, Step::MessageStart)
            }
            State::Head => self.step_head(data),
            State::AwaitHeadParse => (0, self.finish_head()),
            State::AwaitFraming => {
                // The caller did not set a framing: assume the RFC default for the role.
                let f = if self.role == Role::Request {
                    Framing::None
                } else {
                    Framing::UntilClose
                };
                self.set_framing(f);
                (0, Step::NeedMore)
            }
            State::Length { left } => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                self.body += n;
                if *left == 0 {
                    self.state = State::Idle;
                    self.pending_end = true;
                }
                (n as usize, Step::Body(n))
            }
            State::Chunked(_) => self.step_chunked(data),
            State::UntilClose => {
                self.body += data.len() as u64;
                (data.len(), Step::Body(data.len() as u64))
            }
            State::Tunnel | State::Broken => (data.len(), Step::Skipped(data.len() as u64)),
            State::Resync {
                tls_records,
                h2_frames,
            } => {
                // A connection picked up mid-stream on an encrypted or HTTP/2 leg never shows
                // a message start: its segments begin with TLS records or HTTP/2 frames. Two
                // TLS records (chained in one segment, or at two segment starts) make it TLS
                // beyond reasonable doubt — a cleartext body starting so by chance is ~1 in
                // 10^13 — and three HTTP/2 frames make it HTTP/2 (a frame header is looser:
                // binary bodies have runs of small numbers). Then the stream is not searched
                // any further.
                let tls = tls_records.saturating_add(tls_records_at(data));
                let h2 = h2_frames.saturating_add(h2_frames_at(data));
                let protocol = if tls >= 2 {
                    Some("TLS")
                } else if h2 >= 3 {
                    Some("HTTP/2")
                } else {
                    None
                };
                if let Some(protocol) = protocol {
                    self.state = State::Broken;
                    return (
                        data.len(),
                        Step::Broken(Violation::ForeignProtocol {
                            protocol,
                            first_bytes: escape(&data[..data.len().min(16)]),
                        }),
                    );
                }
                self.state = State::Resync {
                    tls_records: tls,
                    h2_frames: h2,
                };
                self.resync_step(data)
            }
        }
    }

    fn resync_step(&mut self, data: &[u8]) -> (usize, Step) {
        match self.find_message_start(data) {
            Some(0) => {
                self.state = State::Idle;
                (0, Step::Skipped(0))
            }
            Some(p) => {
                self.state = State::Idle;
                (p, Step::Skipped(p as u64))
            }
            None => (data.len(), Step::Skipped(data.len() as u64)),
        }
    }

    /// Offset of the first plausible message start in `data` (at a line start).
    fn find_message_start(&self, data: &[u8]) -> Option<usize> {
        let matches_at = |i: usize| -> bool {
            let rest = &data[i..];
            match self.role {
                Role::Response => rest.starts_with(b"HTTP/1."),
                Role::Request => looks_like_request(rest),
            }
        };
        if matches_at(0) {
            return Some(0);
        }
        memchr::memchr_iter(b'\n', data)
            .map(|p| p + 1)
            .find(|&at| at < data.len() && matches_at(at))
    }

    fn step_head(&mut self, data: &[u8]) -> (usize, Step) {
        // A response must start with "HTTP/". Anything else is an HTTP/0.9-style response or
        // garbage; decide on the first bytes instead of waiting for a blank line that may
        // never come.
        if self.role == Role::Response && (self.bad_start || self.buf.len() < 5) {
            let have = self.buf.len().min(5);
            let want = &b"HTTP/"[have..];
            let n = want.len().min(data.len());
            if self.bad_start || data[..n] != want[..n] {
                // Collect the first line (up to a fixed length, so the evidence does not
                // depend on how the stream was segmented), then give up on the stream.
                self.bad_start = true;
                let room = STATUS_EVIDENCE.saturating_sub(self.buf.len());
                let nl = data.iter().position(|&b| b == b'\n');
                let take = nl.map_or(data.len(), |p| p + 1).min(room);
                self.buf.extend_from_slice(&data[..take]);
                if self.buf.len() >= STATUS_EVIDENCE || self.buf.ends_with(b"\n") {
                    return (take, Step::Broken(self.bad_start_verdict()));
                }
                return (take, Step::NeedMore);
            }
        }
        // A request cannot start with a control byte; when it is the first byte of a TLS
        // record, wait for the three bytes that say so instead of for a head end that an
        // encrypted stream never sends.
        if self.role == Role::Request
            && self.buf.len() < 3
            && self
                .buf
                .first()
                .or(data.first())
                .is_some_and(|b| (20..=23).contains(b))
        {
            let take = (3 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            if self.buf.len() < 3 {
                return (take, Step::NeedMore);
            }
            if let Some(protocol) = foreign_protocol(self.role, &self.buf) {
                self.state = State::Broken;
                return (
                    take,
                    Step::Broken(Violation::ForeignProtocol {
                        protocol,
                        first_bytes: escape(&self.buf),
                    }),
                );
            }
            return (take, Step::NeedMore);
        }
        if self.buf.len() < self.head_buffer_cap {
            let room = self.head_buffer_cap - self.buf.len();
            let search_from = self.buf.len().saturating_sub(3);
            // Usually the whole head is in this segment: copy the head only, not the rest of
            // the segment (copying ~1,400 bytes per head to drop most of them again showed in
            // profiles), and do not search it twice.
            let fresh = self.buf.is_empty();
            let (take, found) = match fresh.then(|| head_end(data, 0)).flatten() {
                Some(end) if end <= room => (end, Some(end)),
                _ => (room.min(data.len()), None),
            };
            self.buf.extend_from_slice(&data[..take]);
            let end = if fresh {
                found
            } else {
                head_end(&self.buf, search_from)
            };
            if let Some(end) = end {
                let consumed = take - (self.buf.len() - end);
                self.buf.truncate(end);
                if self.role == Role::Response
                    && end > self.max_head_bytes
                    && !self.too_large_reported
                {
                    // Report first; the head is parsed on the next step.
                    self.too_large_reported = true;
                    self.state = State::AwaitHeadParse;
                    return (
                        consumed,
                        Step::Violation(Violation::HeadTooLarge {
                            limit: self.max_head_bytes,
                        }),
                    );
                }
                return (consumed, self.finish_head());
            }
            if self.role == Role::Response
                && self.buf.len() > self.max_head_bytes
                && !self.too_large_reported
            {
                self.too_large_reported = true;
                return (
                    take,
                    Step::Violation(Violation::HeadTooLarge {
                        limit: self.max_head_bytes,
                    }),
                );
            }
            if self.buf.len() < self.head_buffer_cap {
                return (take, Step::NeedMore);
            }
            return (take, self.head_over_cap());
        }
        (0, self.head_over_cap())
    }

    /// A response that did not start with "HTTP/": what its first bytes are. Either another
    /// protocol (TLS, HTTP/2) or an HTTP/0.9-style reply / junk: a malformed status line.
    fn bad_start_verdict(&mut self) -> Violation {
        self.state = State::Broken;
        self.bad_start = false;
        match foreign_protocol(self.role, &self.buf) {
            Some(protocol) => Violation::ForeignProtocol {
                protocol,
                first_bytes: escape(&self.buf),
            },
            None => Violation::MalformedStatusLine {
                line: escape(&self.buf),
            },
        }
    }

    /// The stream ended (FIN, RST, end of capture). A response whose first bytes already
    /// ruled out "HTTP/" is a malformed status line (or another protocol) with the bytes
    /// collected so far, not a truncated head: no more bytes would have made it HTTP, and
    /// the gateway decided on those first bytes too.
    pub fn end_of_stream(&mut self) -> Option<Violation> {
        if self.role == Role::Response
            && self.bad_start
            && matches!(self.state, State::Head)
            && !self.buf.is_empty()
        {
            return Some(self.bad_start_verdict());
        }
        None
    }

    /// The buffer is full and the head has not ended: it cannot be parsed, nor the stream
    /// framed after it. Said when the cap is reached, not when (if ever) the head ends.
    fn head_over_cap(&mut self) -> Step {
        self.state = State::Broken;
        Step::Broken(Violation::Limit {
            which: "head_buffer_cap",
            limit: self.head_buffer_cap,
        })
    }

    /// The method token of a buffered request head: a run of token characters followed by a
    /// space, escaped. None for responses or when the line does not start that way.
    fn readable_method(&self) -> Option<String> {
        if self.role != Role::Request {
            return None;
        }
        let n = self.buf.iter().take_while(|&&b| is_tchar(b)).count();
        (n > 0 && self.buf.get(n) == Some(&b' ')).then(|| escape(&self.buf[..n]))
    }

    /// Parses the complete head in `buf`.
    fn finish_head(&mut self) -> Step {
        // Left uninitialised for httparse to fill (zeroing 128 headers per head, and
        // collecting them into a Vec, cost as much as the parse).
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let n = self.max_headers.min(storage.len());
        let headers = &mut storage[..n];
        let mut head = Head {
            head_len: self.buf.len(),
            ..Head::default()
        };
        if self.role == Role::Request && self.buf.starts_with(H2_PREFACE) {
            self.state = State::Broken;
            return Step::Broken(Violation::ForeignProtocol {
                protocol: "HTTP/2",
                first_bytes: escape(H2_PREFACE),
            });
        }
        let parsed: Result<&[httparse::Header<'_>], httparse::Error> = match self.role {
            Role::Response => {
                let mut r = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut r, &self.buf, headers)
                {
                    Ok(httparse::Status::Complete(_)) => {
                        head.status = r.code;
                        head.version_minor = r.version.unwrap_or(1);
                        Ok(r.headers)
                    }
                    Ok(httparse::Status::Partial) => Err(httparse::Error::NewLine),
                    Err(e) => Err(e),
                }
            }
            Role::Request => {
                let mut r = httparse::Request::new(&mut []);
                match r.parse_with_uninit_headers(&self.buf, headers) {
                    Ok(httparse::Status::Complete(_)) => {
                        head.method = r.method.map(|m| escape(m.as_bytes()));
                        head.target = r.path.map(|p| escape(p.as_bytes()));
                        head.version_minor = r.version.unwrap_or(1);
                        Ok(r.headers)
                    }
                    Ok(httparse::Status::Partial) => Err(httparse::Error::NewLine),
                    Err(e) => Err(e),
                }
            }
        };
        let fields = match parsed {
            Ok(f) => f,
            Err(httparse::Error::TooManyHeaders) => {
                self.state = State::Broken;
                return Step::Broken(Violation::Limit {
                    which: "max_headers",
                    limit: n,
                });
            }
            Err(e) => {
                let v = diagnose(self.role, &self.buf, e, self.show_secrets);
                self.state = State::Broken;
                // The response's framing depends on the method (HEAD: no body), so a request
                // whose line is malformed but whose method token is readable still says it;
                // the violation travels on the head, as for ambiguous framing below.
                if let Some(method) = self.readable_method() {
                    head.method = Some(method);
                    head.violations.push(v);
                    return Step::Head(Box::new(head));
                }
                return Step::Broken(v);
            }
        };
        for &httparse::Header { name, value } in fields {
            if name.eq_ignore_ascii_case("content-length") {
                let text = String::from_utf8_lossy(value);
                let trimmed = text.trim();
                let parsed = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
                    // Gateways hold lengths in a signed 64-bit off_t (nginx's ngx_atoof fails
                    // past it): a larger value is as invalid to them as a non-number.
                    trimmed.parse::<u64>().ok().filter(|&v| v <= MAX_LENGTH)
                } else {
                    None
                };
                match (head.content_length, parsed) {
                    (_, None) => head.violations.push(Violation::InvalidContentLength {
                        value: escape(value),
                    }),
                    (Some(prev), Some(_)) => {
                        head.violations.push(Violation::DuplicateContentLength {
                            first: prev.to_string(),
                            second: escape(value),
                        })
                    }
                    (None, Some(v)) => head.content_length = Some(v),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let te = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
                let joined = match head.transfer_encoding.take() {
                    Some(prev) => format!("{prev}, {te}"),
                    None => te,
                };
                head.chunked = joined
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim() == "chunked");
                head.transfer_encoding = Some(joined);
            } else if name.eq_ignore_ascii_case("connection") {
                let v = String::from_utf8_lossy(value).to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    head.connection_close = true;
                }
            } else if name.eq_ignore_ascii_case("expect") {
                head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        if let Some(te) = &head.transfer_encoding {
            if te != "chunked" {
                head.violations
                    .push(Violation::UnsupportedTransferEncoding {
                        value: escape(te.as_bytes()),
                    });
            }
            if let Some(cl) = head.content_length {
                head.violations.push(Violation::ContentLengthWithChunked {
                    content_length: cl.to_string(),
                    transfer_encoding: escape(te.as_bytes()),
                });
            }
        }
        if head.version_minor == 0 && head.content_length.is_none() {
            // HTTP/1.0 defaults to close.
            head.connection_close = true;
        }
        self.state = State::AwaitFraming;
        if self.role == Role::Request {
            // A request's framing does not depend on anything else (RFC 9112 §6.3). Requests
            // whose length is ambiguous (smuggling material) cannot be framed: stop here,
            // as a server answering 400 and closing would.
            let ambiguous = head.violations.iter().any(|v| match v {
                Violation::DuplicateContentLength { first, second } => first != second,
                Violation::ContentLengthWithChunked { .. }
                | Violation::InvalidContentLength { .. } => true,
                _ => false,
            }) || (head.transfer_encoding.is_some() && !head.chunked);
            if ambiguous {
                self.state = State::Broken;
                return Step::Head(Box::new(head));
            }
            let f = request_framing(&head);
            self.set_framing(f);
            // `End` for a bodiless request comes after the caller saw the head.
        }
        Step::Head(Box::new(head))
    }

    fn step_chunked(&mut self, data: &[u8]) -> (usize, Step) {
        let State::Chunked(chunk) = &mut self.state else {
            return (0, Step::NeedMore);
        };
        match chunk {
            Chunk::Size { line_len } => {
                let nl = data.iter().position(|&b| b == b'\n');
                let take = nl.map_or(data.len(), |p| p + 1);
                let keep = take.min(self.max_chunk_line.saturating_sub(self.line.len()));
                self.line.extend_from_slice(&data[..keep]);
                *line_len += take;
                if *line_len > self.max_chunk_line {
                    self.state = State::Broken;
                    return (
                        take,
                        Step::Broken(Violation::Limit {
                            which: "max_chunk_line",
                            limit: self.max_chunk_line,
                        }),
                    );
                }
                if nl.is_none() {
                    return (take, Step::NeedMore);
                }
                let line = std::mem::take(&mut self.line);
                match parse_chunk_size(&line) {
                    Some(0) => {
                        self.state = State::Chunked(Chunk::Trailer {
                            total: 0,
                            line_len: 0,
                        })
                    }
                    Some(n) => self.state = State::Chunked(Chunk::Data { left: n }),
                    None => {
                        self.state = State::Broken;
                        return (
                            take,
                            Step::Broken(Violation::InvalidChunk {
                                line: escape(&line),
                            }),
                        );
                    }
                }
                (take, Step::NeedMore)
            }
            Chunk::Data { left } => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                self.body += n;
                if *left == 0 {
                    *chunk = Chunk::DataEnd { seen: 0 };
                }
                (n as usize, Step::Body(n))
            }
            Chunk::DataEnd { seen } => {
                // Expect CRLF (a bare LF is tolerated, as nginx does).
                let b = data[0];
                match (*seen, b) {
                    (0, b'\r') => {
                        *seen = 1;
                        (1, Step::NeedMore)
                    }
                    (_, b'\n') => {
                        *chunk = Chunk::Size { line_len: 0 };
                        (1, Step::NeedMore)
                    }
                    _ => {
                        let shown = &data[..data.len().min(16)];
                        self.state = State::Broken;
                        (
                            0,
                            Step::Broken(Violation::InvalidChunk {
                                line: format!("missing CRLF after chunk data: {}", escape(shown)),
                            }),
                        )
                    }
                }
            }
            Chunk::Trailer { total, line_len } => {
                let nl = data.iter().position(|&b| b == b'\n');
                let take = nl.map_or(data.len(), |p| p + 1);
                *total += take;
                if *total > self.max_trailer_bytes {
                    self.state = State::Broken;
                    return (
                        take,
                        Step::Broken(Violation::Limit {
                            which: "max_trailer_bytes",
                            limit: self.max_trailer_bytes,
                        }),
                    );
                }
                match nl {
                    None => {
                        *line_len += take;
                        (take, Step::NeedMore)
                    }
                    Some(_) => {
                        // An empty line ("\r\n" or "\n") ends the trailer section.
                        let this_line = *line_len + take;
                        let empty = this_line <= 2
                            && data[..take].iter().all(|&b| b == b'\r' || b == b'\n');
                        if empty {
                            self.state = State::Idle;
                            self.pending_end = true;
                        } else {
                            *line_len = 0;
                        }
                        (take, Step::NeedMore)
                    }
                }
            }
        }
    }
}

/// RFC 9112 §6.3 for requests: chunked, else Content-Length, else no body.
pub fn request_framing(head: &Head) -> Framing {
    if head.transfer_encoding.is_some() {
        if head.chunked {
            Framing::Chunked
        } else {
            // A request with a non-chunked TE cannot be framed (the server answers 400).
            Framing::UntilClose
        }
    } else if let Some(n) = head.content_length {
        Framing::Length(n)
    } else {
        Framing::None
    }
}

/// RFC 9112 §6.3 for responses, given the method of the request it answers.
pub fn response_framing(head: &Head, request_method: Option<&str>) -> Framing {
    let status = head.status.unwrap_or(0);
    if request_method == Some("HEAD") || (100..200).contains(&status) && status != 101 {
        return Framing::None;
    }
    if status == 204 || status == 304 {
        return Framing::None;
    }
    if status == 101 || (request_method == Some("CONNECT") && (200..300).contains(&status)) {
        return Framing::Tunnel;
    }
    if head.transfer_encoding.is_some() {
        return if head.chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
    }
    let duplicate_conflict = head.violations.iter().any(
        |v| matches!(v, Violation::DuplicateContentLength { first, second } if first != second),
    );
    let invalid = head
        .violations
        .iter()
        .any(|v| matches!(v, Violation::InvalidContentLength { .. }));
    if duplicate_conflict || invalid {
        // Unknowable: the gateway rejects it; read to the close.
        return Framing::UntilClose;
    }
    match head.content_length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    }
}

/// The largest body or chunk length a gateway accepts: a signed 64-bit off_t's maximum.
const MAX_LENGTH: u64 = i64::MAX as u64;

/// `1a;ext=v\r\n` → 26. None if the size is not hex or exceeds [`MAX_LENGTH`] (HAProxy and
/// nginx both reject sizes that do not fit).
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let digits = &line[..end];
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let rest = &line[end..];
    if !rest.is_empty() && !rest.iter().all(|&b| b == b' ' || b == b'\t') && !rest.contains(&b';') {
        return None;
    }
    let mut v: u64 = 0;
    for &b in digits {
        let d = (b as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    (v <= MAX_LENGTH).then_some(v)
}

/// Headers whose values are credentials: never shown unless `--show-secrets`.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Whether a header name (any case) carries credentials.
fn is_secret_name(name: &[u8]) -> bool {
    SECRET_HEADERS
        .iter()
        .any(|s| s.as_bytes().eq_ignore_ascii_case(name))
}

/// The header name a line starts with, if it is a credential header: its leading run of
/// token characters. Taken this way rather than up to the colon so that a malformed line
/// (`Set-Cookie sid=…` without a colon, `Set-Cookie : …`, a NUL before the colon) is still
/// recognised: those are exactly the lines that end up quoted in evidence.
fn secret_name_len(line: &[u8]) -> Option<usize> {
    let n = line.iter().take_while(|&&b| is_tchar(b)).count();
    (n > 0 && is_secret_name(&line[..n])).then_some(n)
}

/// A header line for evidence: escaped, with credential values replaced by their length.
pub fn evidence_line(line: &[u8], show_secrets: bool) -> String {
    if !show_secrets {
        if let Some(n) = secret_name_len(line) {
            let rest = &line[n..];
            let ws = rest
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            return match rest.get(ws) {
                Some(b':') => format!(
                    "{}: <{} bytes hidden; --show-secrets to print>",
                    escape(&line[..n + ws]),
                    rest.len() - ws - 1
                ),
                _ => format!(
                    "{} <{} bytes hidden; --show-secrets to print>",
                    escape(&line[..n]),
                    rest.len()
                ),
            };
        }
    }
    escape(line)
}

/// A continuation (obs-fold) line of a credential header: its bytes are part of the secret
/// value, so only their length is shown.
fn hidden_continuation(line: &[u8], show_secrets: bool) -> String {
    if show_secrets {
        return escape(line);
    }
    format!(
        "<{} bytes hidden: continues a credential header; --show-secrets to print>",
        line.len()
    )
}

/// Names the offending line of a head `httparse` rejected, in nginx's terms.
fn diagnose(role: Role, head: &[u8], err: httparse::Error, show_secrets: bool) -> Violation {
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    if role == Role::Response && matches!(err, httparse::Error::Status | httparse::Error::Version) {
        return Violation::MalformedStatusLine {
            line: escape(first),
        };
    }
    if role == Role::Request && matches!(err, httparse::Error::Token | httparse::Error::Version) {
        return Violation::MalformedRequest {
            reason: "invalid request line",
            line: escape(first),
        };
    }
    // Whether the last field line (not a continuation) was a credential header: its folded
    // continuation lines carry the rest of the secret.
    let mut in_secret = false;
    for raw in lines {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        let folded = line[0] == b' ' || line[0] == b'\t';
        if !folded {
            in_secret = secret_name_len(line).is_some();
        }
        let reason = if folded {
            Some("obsolete line folding (line starts with whitespace)")
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = &line[..colon];
            let value = &line[colon + 1..];
            if name.is_empty() {
                Some("empty header name")
            } else if name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
                Some("whitespace before colon")
            } else if !name.iter().all(|&b| is_tchar(b)) {
                Some("invalid character in header name")
            } else if value.contains(&0) {
                Some("NUL in header value")
            } else if value.contains(&b'\r') {
                Some("bare CR in header value")
            } else if value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
                Some("control character in header value")
            } else {
                None
            }
        } else {
            Some("missing colon")
        };
        if let Some(reason) = reason {
            let line = if folded && in_secret {
                hidden_continuation(raw, show_secrets)
            } else {
                evidence_line(raw, show_secrets)
            };
            return match role {
                Role::Response => Violation::MalformedHeader { reason, line },
                Role::Request => Violation::MalformedRequest { reason, line },
            };
        }
    }
    let reason = match err {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        _ => "unparsable head",
    };
    // No single line to blame: show the start of the head, minus credentials.
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = evidence_line(first_line, show_secrets);
    match role {
        Role::Response => Violation::MalformedHeader { reason, line },
        Role::Request => Violation::MalformedRequest { reason, line },
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// Runs a whole stream through a parser, splitting it at `split` byte boundaries, and
    /// returns a compact trace: `S` start, `H<status|method>`, `B<n>` (merged), `E` end,
    /// `!<violation>`, `~<n>` skipped.
    fn trace(role: Role, stream: &[u8], split: usize, method: Option<&str>) -> String {
        let limits = Limits::default();
        let mut p = Parser::new(role, &limits);
        let mut out = String::new();
        let mut body = 0u64;
        let mut skipped = 0u64;
        let flush = |out: &mut String, body: &mut u64, skipped: &mut u64| {
            if *body > 0 {
                out.push_str(&format!("B{body} "));
                *body = 0;
            }
            if *skipped > 0 {
                out.push_str(&format!("~{skipped} "));
                *skipped = 0;
            }
        };
        for piece in stream.chunks(split.max(1)) {
            let mut data = piece;
            loop {
                let (n, step) = p.step(data);
                data = &data[n..];
                match step {
                    Step::NeedMore if data.is_empty() => break,
                    Step::NeedMore => {}
                    Step::Body(n) => body += n,
                    Step::Skipped(n) => skipped += n,
                    other => {
                        flush(&mut out, &mut body, &mut skipped);
                        match other {
                            Step::MessageStart => out.push_str("S "),
                            Step::Head(h) => {
                                match role {
                                    Role::Response => {
                                        out.push_str(&format!("H{} ", h.status.unwrap_or(0)));
                                        p.set_framing(response_framing(&h, method));
                                    }
                                    Role::Request => out.push_str(&format!(
                                        "H{} ",
                                        h.method.as_deref().unwrap_or("?")
                                    )),
                                }
                                for v in &h.violations {
                                    out.push_str(&format!("!{v:?} "));
                                }
                            }
                            Step::End => out.push_str("E "),
                            Step::Violation(v) | Step::Broken(v) => {
                                out.push_str(&format!("!{v:?} "))
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        flush(&mut out, &mut body, &mut skipped);
        out.trim_end().to_string()
    }

    fn every_split(role: Role, stream: &[u8], method: Option<&str>) -> String {
        let whole = trace(role, stream, stream.len(), method);
        for split in 1..stream.len().min(40) {
            assert_eq!(trace(role, stream, split, method), whole, "split {split}");
        }
        whole
    }

    #[test]
    fn content_length_responses_back_to_back() {
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(every_split(Role::Response, s, None), "S H200 B5 E S H404 E");
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(every_split(Role::Response, s, None), "S H200 B11 E");
    }

    #[test]
    fn head_response_has_no_body() {
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            every_split(Role::Response, s, Some("HEAD")),
            "S H200 E S H204 E"
        );
    }

    #[test]
    fn interim_100_then_final() {
        let s = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(every_split(Role::Response, s, None), "S H100 E S H200 B2 E");
    }

    #[test]
    fn close_delimited_body_counts_until_the_end() {
        let s = b"HTTP/1.0 200 OK\r\n\r\nabcdef";
        assert_eq!(every_split(Role::Response, s, None), "S H200 B6");
    }

    #[test]
    fn requests_with_and_without_bodies() {
        let s =
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(every_split(Role::Request, s, None), "S HGET E S HPOST B3 E");
    }

    #[test]
    fn bad_chunk_size_breaks_the_stream() {
        let s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello";
        let t = every_split(Role::Response, s, None);
        assert!(t.starts_with("S H200 !InvalidChunk"), "{t}");
    }

    #[test]
    fn chunk_size_past_a_signed_64_bit_length_is_invalid() {
        assert_eq!(
            parse_chunk_size(b"7fffffffffffffff\r\n"),
            Some(i64::MAX as u64)
        );
        assert_eq!(parse_chunk_size(b"8000000000000000\r\n"), None);
        assert_eq!(parse_chunk_size(b"ffffffffffffffff\r\n"), None);
        assert_eq!(parse_chunk_size(b"10000000000000000\r\n"), None);
        assert_eq!(parse_chunk_size(b"8 \r\n"), Some(8));
        assert_eq!(parse_chunk_size(b"a;name=value\r\n"), Some(10));
    }

    #[test]
    fn http09_response_is_a_malformed_status_line() {
        let t = every_split(Role::Response, b"hello world\n", None);
        assert!(t.starts_with("S !MalformedStatusLine"), "{t}");
    }

    #[test]
    fn header_problems_are_named_like_nginx() {
        let cases: &[(&[u8], &str)] = &[
            (b"HTTP/1.1 200 OK\r\nBadHeader\r\n\r\n", "missing colon"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type : x\r\n\r\n",
                "whitespace before colon",
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
                "obsolete line folding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: b\x00c\r\n\r\n",
                "NUL in header value",
            ),
        ];
        for (head, reason) in cases {
            let t = trace(Role::Response, head, head.len(), None);
            assert!(
                t.contains("MalformedHeader") && t.contains(reason),
                "{reason}: {t}"
            );
        }
        let t = trace(Role::Response, b"HTTP/1.1 abc OK\r\n\r\n", 100, None);
        assert!(t.contains("MalformedStatusLine"), "{t}");
    }

    #[test]
    fn credentials_in_evidence_are_hidden_unless_asked() {
        let head = b"HTTP/1.1 200 OK\r\nSet-Cookie : session=s3cr3t\r\n\r\n";
        let t = trace(Role::Response, head, head.len(), None);
        assert!(t.contains("whitespace before colon"), "{t}");
        assert!(!t.contains("s3cr3t"), "{t}");
        assert!(evidence_line(b"Cookie: a=b", true).contains("a=b"));
        assert!(!evidence_line(b"authorization: Basic xyz", false).contains("xyz"));
    }

    #[test]
    fn a_huge_request_method_is_capped_like_the_target() {
        let mut req = vec![b'X'; 60_000];
        req.extend_from_slice(b" / HTTP/1.1\r\nHost: x\r\n\r\n");
        let t = trace(Role::Request, &req, req.len(), None);
        assert!(
            t.len() < EVIDENCE_CAP + 20,
            "method not capped: {} bytes",
            t.len()
        );
    }

    #[test]
    fn credentials_on_malformed_lines_are_hidden_too() {
        let cases: &[(Role, &[u8])] = &[
            (
                Role::Response,
                b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=\r\n s3cr3t\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                Role::Response,
                b"HTTP/1.1 200 OK\r\nSet-Cookie sid=s3cr3t\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                Role::Request,
                b"GET / HTTP/1.1\r\nAuthorization: Bearer\r\n\ts3cr3t\r\nHost: x\r\n\r\n",
            ),
        ];
        let leaks: Vec<String> = cases
            .iter()
            .map(|(role, head)| trace(*role, head, head.len(), None))
            .filter(|t| t.contains("s3cr3t"))
            .collect();
        assert!(leaks.is_empty(), "{leaks:?}");
    }

    #[test]
    fn junk_ended_before_a_line_end_is_a_malformed_status_line() {
        let mut p = Parser::new(Role::Response, &Limits::default());
        let mut data: &[u8] = b"xzscxc#$#AzMTax4wGxA5";
        while !data.is_empty() {
            let (n, _) = p.step(data);
            data = &data[n..];
        }
        assert!(
            matches!(
                p.end_of_stream(),
                Some(Violation::MalformedStatusLine { .. })
            ),
            "{:?}",
            p.position()
        );
    }

    #[test]
    fn tls_and_http2_are_named_not_taken_for_malformed_messages() {
        let mut client_hello = vec![0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0];
        client_hello.extend_from_slice(&[0; 40]);
        let mut server_hello = vec![0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76];
        server_hello.extend_from_slice(b"\x03\x03\n rest of the random");
        let cases: &[(Role, &[u8])] = &[
            (Role::Request, &client_hello),
            (
                Role::Request,
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
            ),
            (Role::Response, &server_hello),
            (
                Role::Response,
                b"\0\0\x12\x04\0\0\0\0\0\0\x03\0\0\0\x64\0\x04\0\x01\0\0\n",
            ),
        ];
        let misread: Vec<String> = cases
            .iter()
            .map(|(role, s)| every_split(*role, s, None))
            .filter(|t| !t.starts_with("S !ForeignProtocol"))
            .collect();
        assert!(misread.is_empty(), "{misread:?}");
    }

    #[test]
    fn a_gap_after_a_bad_start_does_not_spoil_the_next_response() {
        let mut p = Parser::new(Role::Response, &Limits::default());
        let mut data: &[u8] = b"junk";
        while !data.is_empty() {
            let (n, _) = p.step(data);
            data = &data[n..];
        }
        assert!(!p.gap(10));
        let t: Vec<String> = [&b"tail\r\n"[..], b"HTTP/1.1 204 No Content\r\n\r\n"]
            .iter()
            .flat_map(|chunk| {
                let mut out = Vec::new();
                let mut data: &[u8] = chunk;
                loop {
                    let (n, step) = p.step(data);
                    data = &data[n..];
                    match step {
                        Step::NeedMore if data.is_empty() => break,
                        Step::Head(h) => out.push(format!("H{}", h.status.unwrap_or(0))),
                        Step::Broken(v) => out.push(format!("{v:?}")),
                        _ => {}
                    }
                }
                out
            })
            .collect();
        assert_eq!(t, ["H204"]);
    }

    #[test]
    fn a_malformed_request_line_keeps_its_method() {
        let t = trace(
            Role::Request,
            b"HEAD /HTTP/1.1\r\nHost: x\r\n\r\n",
            100,
            None,
        );
        assert!(t.starts_with("S HHEAD !MalformedRequest"), "{t}");
    }

    #[test]
    fn terminal_control_bytes_never_reach_the_output() {
        let s = escape(b"\x1b[2J\x07ok\xff");
        assert_eq!(s, "\\x1b[2J\\x07ok\\xff");
        assert!(escape(&[b'a'; 1000]).chars().count() <= EVIDENCE_CAP + 1);
    }

    #[test]
    fn framing_violations_are_reported_on_the_head() {
        let t = trace(
            Role::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            1000,
            None,
        );
        assert!(t.contains("ContentLengthWithChunked"), "{t}");
        assert!(t.ends_with('E'), "TE wins over CL: {t}");
        let t = trace(
            Role::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
            1000,
            None,
        );
        assert!(t.contains("InvalidContentLength"), "{t}");
        // Past what a signed 64-bit length holds: invalid to the gateway, not a long body.
        let t = trace(
            Role::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n",
            1000,
            None,
        );
        assert!(t.contains("InvalidContentLength"), "{t}");
        let t = trace(
            Role::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            1000,
            None,
        );
        assert!(t.contains("DuplicateContentLength"), "{t}");
        let t = trace(
            Role::Response,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            1000,
            None,
        );
        assert!(t.contains("UnsupportedTransferEncoding"), "{t}");
    }

    #[test]
    fn head_larger_than_the_limit_is_reported_once() {
        let mut s = b"HTTP/1.1 200 OK\r\nSet-Cookie: ".to_vec();
        s.extend(std::iter::repeat_n(b'a', 6000));
        s.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let t = every_split(Role::Response, &s, None);
        assert_eq!(t.matches("HeadTooLarge").count(), 1, "{t}");
        assert!(t.ends_with("H200 E"), "{t}");
    }

    #[test]
    fn gap_inside_a_known_length_body_is_absorbed() {
        let mut p = Parser::new(Role::Response, &Limits::default());
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab";
        let mut data: &[u8] = head;
        while !data.is_empty() {
            let (n, step) = p.step(data);
            data = &data[n..];
            if let Step::Head(h) = step {
                p.set_framing(response_framing(&h, None));
            }
        }
        assert!(p.gap(5));
        assert_eq!(
            p.position(),
            Position::InBody {
                framing: Framing::Length(10),
                expected: Some(10),
                received: 7
            }
        );
        assert!(!p.gap(100), "a gap past the body loses sync");
        assert_eq!(p.position(), Position::Lost);
    }

    #[test]
    fn resync_finds_the_next_response() {
        let mut p = Parser::new(Role::Response, &Limits::default());
        p.resync();
        let (n, step) = p.step(b"tail of a body\r\nHTTP/1.1 200 OK\r\n");
        assert!(matches!(step, Step::Skipped(16)), "{step:?}");
        assert_eq!(n, 16);
    }

    fn tls_record(len: u16) -> Vec<u8> {
        let mut r = vec![0x17, 3, 3];
        r.extend_from_slice(&len.to_be_bytes());
        r.resize(5 + usize::from(len), 0xa5);
        r
    }

    #[test]
    fn tls_records_are_counted_only_while_they_chain() {
        let one = tls_record(100);
        let two = [tls_record(10), tls_record(30)].concat();
        let broken = [tls_record(10), b"HTTP/1.1 200 OK\r\n".to_vec()].concat();
        let cut = [tls_record(10), vec![0x17, 3]].concat();
        let counts = [
            &one[..],
            &two,
            &broken,
            &cut,
            b"GET / HTTP/1.1\r\n",
            &one[..40],
        ]
        .map(tls_records_at);
        assert_eq!(counts, [1, 2, 0, 1, 0, 1]);
    }

    /// An HTTP/2 frame: `len` bytes of payload (filled with 0x5a) on `stream`.
    fn h2_frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(9 + len, 0x5a);
        f
    }

    #[test]
    fn h2_frames_are_counted_only_while_they_chain_and_look_like_a_proxys() {
        let headers = h2_frame(1, 0x04, 5, 40);
        let chain = [headers.clone(), h2_frame(0, 0x01, 5, 300)].concat();
        let three = [h2_frame(8, 0, 0, 4), h2_frame(6, 0, 0, 8), headers.clone()].concat();
        let broken = [headers.clone(), b"HTTP/1.1 200 OK\r\n".to_vec()].concat();
        let cases: [(&[u8], u8); 9] = [
            (&headers, 1),
            (&chain, 2),
            (&three, 3),
            (&broken, 0),
            // A DATA frame spanning segments: its start counts.
            (&h2_frame(0, 0, 7, 16_384)[..1448], 1),
            // On an even (server-initiated) stream, on stream 0, or with an undefined flag.
            (&h2_frame(1, 0x04, 4, 40), 0),
            (&h2_frame(0, 0, 0, 40), 0),
            (&h2_frame(3, 0x01, 5, 4), 0),
            // Zeros and text are not frames.
            (&[0u8; 64], 0),
        ];
        for (data, want) in cases {
            assert_eq!(
                h2_frames_at(data),
                want,
                "{:02x?}",
                &data[..9.min(data.len())]
            );
        }
        assert_eq!(h2_frames_at(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    }

    #[test]
    fn a_resyncing_stream_of_h2_frames_is_foreign_after_three() {
        let mut p = Parser::new(Role::Response, &Limits::default());
        p.resync();
        let (_, first) = p.step(&[h2_frame(1, 0x04, 9, 60), h2_frame(0, 0, 9, 500)].concat());
        let (_, second) = p.step(&h2_frame(8, 0, 0, 4));
        assert!(matches!(first, Step::Skipped(_)), "{first:?}");
        assert!(
            matches!(
                second,
                Step::Broken(Violation::ForeignProtocol {
                    protocol: "HTTP/2",
                    ..
                })
            ),
            "{second:?}"
        );
    }

    #[test]
    fn a_resyncing_stream_of_tls_records_is_foreign_after_two() {
        let mut p = Parser::new(Role::Response, &Limits::default());
        p.resync();
        let (_, first) = p.step(&tls_record(1200));
        let (_, second) = p.step(&tls_record(300));
        assert!(matches!(first, Step::Skipped(1205)), "{first:?}");
        assert!(
            matches!(
                second,
                Step::Broken(Violation::ForeignProtocol {
                    protocol: "TLS",
                    ..
                })
            ),
            "{second:?}"
        );
    }
}
