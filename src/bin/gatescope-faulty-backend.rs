//! `gatescope-faulty-backend`: a deliberately broken HTTP/1.1 origin server.
//!
//! It exists to put every backend failure that makes nginx or HAProxy answer 502/504 on the
//! wire, on demand, so that gatescope's findings can be checked against what the gateways
//! themselves log (`tests/e2e_gateways.rs`). The request path picks the behaviour:
//!
//! ```text
//! /ok[/anything]          200 with Content-Length (GET, HEAD, POST; POST bodies are read,
//!                         Expect: 100-continue is answered)
//! /chunked                200, chunked body
//! /close-delimited        HTTP/1.0-style 200 without length, ended by closing (FIN)
//! /204, /304              responses that never carry a body
//! /fault/<name>[/...]     one broken behaviour per name; `--list` prints them
//! ```
//!
//! Everything else is a 404. Connections are kept alive (HTTP/1.1 rules, `Connection: close`
//! honoured) and pipelined requests are answered in order. `--idle-close-ms N` closes a kept-alive
//! connection after N ms without a request: a backend keep-alive timeout shorter than the
//! proxy's, the setting that produces the keep-alive race.
//!
//! Only std plus one `setsockopt(SO_LINGER)` through libc: std cannot make the kernel send a
//! RST (`TcpStream::set_linger` is unstable), and "the backend reset the connection" is half
//! of what this server is for. One thread per connection, bounded by [`MAX_CONNECTIONS`];
//! every blocking read has a timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Connections served at once; more are closed right after accept.
const MAX_CONNECTIONS: usize = 1024;
/// Largest request head accepted (431 beyond).
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Largest request body read (413 beyond); bodies are counted, not stored.
const MAX_REQUEST_BODY: u64 = 64 << 20;
/// How long a kept-alive connection may sit idle when `--idle-close-ms` is not given.
const DEFAULT_IDLE: Duration = Duration::from_secs(120);
/// How long a started request (head or body) may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between the part of a response that is sent and the close that cuts it, so that the
/// proxy has read the part before the FIN/RST arrives: the cut is then "mid-head" or
/// "mid-body" on the wire and in the gateway's state, not a race.
const CUT_PAUSE: Duration = Duration::from_millis(50);
/// After a malformed response, how long the backend waits for the proxy to close first (a
/// gateway that rejects the response closes the upstream connection at once).
const LINGER_AFTER_MALFORMED: Duration = Duration::from_millis(300);
/// Upper bound for `slow-first-byte?ms=N` and `keepalive-race?ms=N`.
const MAX_DELAY_MS: u64 = 60_000;
/// Body length announced by the `*-mid-body` faults, and how much of it is sent.
const CUT_BODY_ANNOUNCED: usize = 10_000;
const CUT_BODY_SENT: usize = 3_000;
/// Size of the header sent by `head-too-large`: above nginx's proxy_buffer_size (4k/8k) and
/// HAProxy's default tune.bufsize (16k, minus tune.maxrewrite).
const BIG_HEADER_BYTES: usize = 16 * 1024;

/// Every fault, its path name and what it puts on the wire.
const FAULTS: &[(&str, &str)] = &[
    (
        "rst-before-response",
        "read the request, then close with SO_LINGER 0 (RST), no response byte",
    ),
    (
        "rst-mid-head",
        "send part of the status line and headers, then RST",
    ),
    (
        "rst-mid-body",
        "Content-Length: 10000, send 3000 body bytes, then RST",
    ),
    (
        "fin-before-response",
        "read the request, then close (FIN), no response byte",
    ),
    (
        "fin-mid-head",
        "send part of the status line and headers, then FIN",
    ),
    (
        "fin-mid-body",
        "Content-Length: 10000, send 3000 body bytes, then FIN",
    ),
    (
        "chunked-no-last-chunk",
        "chunked body without the terminating 0-size chunk, then FIN",
    ),
    (
        "bad-chunk-size",
        "chunked body whose second chunk-size line is not hex",
    ),
    (
        "malformed-status-line",
        "status line without a status code (`HTTP/1.1 OK`)",
    ),
    (
        "http09",
        "raw body, no status line and no headers, ended by FIN (HTTP/0.9 style)",
    ),
    ("header-no-colon", "a header line without a colon"),
    (
        "header-space-before-colon",
        "a header name followed by a space before the colon",
    ),
    (
        "header-obs-fold",
        "a header value continued on the next line (obs-fold)",
    ),
    ("header-nul", "a NUL byte inside a header value"),
    (
        "head-too-large",
        "a 16 KiB header (nginx proxy_buffer_size is 4k/8k)",
    ),
    (
        "cl-and-te",
        "Content-Length and Transfer-Encoding: chunked together",
    ),
    (
        "duplicate-cl",
        "two Content-Length headers with different values (5 and 7)",
    ),
    ("excess-data", "Content-Length: 5, then 20 body bytes"),
    (
        "slow-first-byte",
        "?ms=N: wait N ms before the response (a 200)",
    ),
    ("backend-503", "the backend's own 503 with Retry-After"),
    (
        "rst-reading-body",
        "read the head and up to 16 KiB of the body, then RST, no response byte",
    ),
    (
        "early-response",
        "answer 413 right after the request head, body unread, then RST (a body size limit)",
    ),
    (
        "keepalive-race",
        "?ms=N (default 200): a normal 200, then close the connection after N ms idle",
    ),
    (
        "fin-before-response-once",
        "the first request for this exact target: close (FIN) without a response byte; later ones: 200 (a backend that fails once, for a proxy's retry)",
    ),
];

/// Targets `fin-before-response-once` has failed, so that it answers the next request for
/// them (bounded: the oldest are forgotten).
static FAILED_ONCE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
const FAILED_ONCE_KEPT: usize = 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return,
        Err(msg) => {
            eprintln!("gatescope-faulty-backend: {msg}\n\n{}", usage());
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&cfg.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "gatescope-faulty-backend: cannot listen on {}: {e}",
                cfg.listen
            );
            std::process::exit(2);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gatescope-faulty-backend: local_addr: {e}");
            std::process::exit(2);
        }
    };
    // The test harness waits for this line (and then connects) before it starts a gateway.
    println!("listening on {addr}");
    let _ = io::stdout().flush();

    let cfg = Arc::new(cfg);
    let active = Arc::new(AtomicUsize::new(0));
    let ids = AtomicU64::new(1);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            log(&cfg, id, "too many connections; closed");
            continue;
        }
        let cfg = Arc::clone(&cfg);
        let active = Arc::clone(&active);
        let spawned = thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string());
                log(&cfg, id, &format!("accepted from {peer}"));
                let mut conn = Conn {
                    stream,
                    buf: Vec::new(),
                    id,
                    idle: cfg.idle_close,
                    cfg: &cfg,
                };
                let end = conn.serve();
                log(&cfg, id, &format!("closed: {end}"));
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("spawn: {e}");
        }
    }
}

struct Config {
    listen: String,
    idle_close: Option<Duration>,
    quiet: bool,
}

fn usage() -> String {
    let mut s = String::from(
        "usage: gatescope-faulty-backend [--listen ADDR] [--idle-close-ms N] [--quiet] [--list]\n\
         \n  --listen ADDR       address to listen on (default 127.0.0.1:0; the bound address is\n\
         \x20                     printed as `listening on ADDR`)\n\
         \x20 --idle-close-ms N   close kept-alive connections idle for N ms (FIN)\n\
         \x20 --quiet             no per-connection log on stderr\n\
         \x20 --list              print the fault names and exit\n\
         \npaths: /ok[/...], /chunked, /close-delimited, /204, /304, /fault/<name>[/...]\n",
    );
    s.push_str("faults:\n");
    for (name, what) in FAULTS {
        s.push_str(&format!("  {name:<26} {what}\n"));
    }
    s
}

fn parse_args(args: &[String]) -> Result<Option<Config>, String> {
    let mut cfg = Config {
        listen: "127.0.0.1:0".to_string(),
        idle_close: None,
        quiet: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => cfg.listen = it.next().ok_or("--listen needs an address")?.clone(),
            "--idle-close-ms" => {
                let v = it.next().ok_or("--idle-close-ms needs a number")?;
                let ms: u64 = v.parse().map_err(|_| format!("bad --idle-close-ms: {v}"))?;
                cfg.idle_close = Some(Duration::from_millis(ms.clamp(1, MAX_DELAY_MS)));
            }
            "--quiet" => cfg.quiet = true,
            "--list" => {
                for (name, what) in FAULTS {
                    println!("{name}\t{what}");
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(None);
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(Some(cfg))
}

fn log(cfg: &Config, id: u64, msg: &str) {
    if !cfg.quiet {
        eprintln!("[conn {id}] {msg}");
    }
}

/// A parsed request head.
struct Request {
    method: String,
    target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor: u8,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// `ms=N` from the query string.
    fn query_ms(&self) -> Option<u64> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .map(|ms: u64| ms.min(MAX_DELAY_MS))
    }

    fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.minor == 0 {
            !conn.contains("keep-alive")
        } else {
            conn.split(',').any(|t| t.trim() == "close")
        }
    }

    fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// How a connection's handler wants the connection to continue.
enum Next {
    KeepAlive,
    /// Close with FIN (shutdown + close).
    Fin,
    /// Close with RST (SO_LINGER 0).
    Rst,
    /// Wait (bounded) for the proxy to close first, then close with FIN.
    FinAfterPeer,
}

struct Conn<'a> {
    stream: TcpStream,
    /// Bytes read but not yet consumed (the start of a pipelined request, say).
    buf: Vec<u8>,
    id: u64,
    /// Idle limit between requests.
    idle: Option<Duration>,
    cfg: &'a Config,
}

enum ReadHead {
    Head(Vec<u8>),
    /// The peer closed (or reset) between requests.
    Eof,
    /// No request within the idle limit.
    Idle,
    Failed(String),
}

impl Conn<'_> {
    /// Serves requests until the connection ends; returns how it ended.
    fn serve(&mut self) -> String {
        loop {
            let head = match self.read_head() {
                ReadHead::Head(h) => h,
                ReadHead::Eof => return "peer closed".into(),
                ReadHead::Idle => {
                    let _ = self.stream.shutdown(Shutdown::Write);
                    return "idle timeout (FIN)".into();
                }
                ReadHead::Failed(msg) => return msg,
            };
            let req = match parse_request(&head) {
                Some(r) => r,
                None => {
                    let _ = self.send(&simple(400, "Bad Request", "bad request\n", true));
                    return "bad request".into();
                }
            };
            log(
                self.cfg,
                self.id,
                &format!("{} {} HTTP/1.{}", req.method, req.target, req.minor),
            );
            // The early-response fault answers before the body, as a backend with a body
            // size limit or a body read timeout does.
            let early = matches!(
                req.path(),
                "/fault/early-response" | "/fault/rst-reading-body"
            );
            if !early {
                if let Err(msg) = self.read_body(&req) {
                    return msg;
                }
            }
            let next = match self.respond(&req) {
                Ok(n) => n,
                Err(e) => return format!("write failed: {e}"),
            };
            match next {
                Next::KeepAlive if !req.wants_close() => continue,
                Next::KeepAlive | Next::Fin => {
                    let _ = self.stream.shutdown(Shutdown::Write);
                    return "closed by backend (FIN)".into();
                }
                Next::Rst => {
                    set_linger_zero(&self.stream);
                    return "closed by backend (RST)".into();
                }
                Next::FinAfterPeer => {
                    let who = self.wait_for_peer_close(LINGER_AFTER_MALFORMED);
                    let _ = self.stream.shutdown(Shutdown::Write);
                    return format!("closed after malformed response ({who})");
                }
            }
        }
    }

    /// Reads until a complete request head is buffered; returns it (without the blank line)
    /// and leaves any following bytes in `self.buf`.
    fn read_head(&mut self) -> ReadHead {
        let started = Instant::now();
        loop {
            // Tolerate empty lines before a request (RFC 9112 §2.2).
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = self.buf[..end].to_vec();
                self.buf.drain(..end + 4);
                return ReadHead::Head(head);
            }
            if self.buf.len() > MAX_REQUEST_HEAD {
                let _ = self.send(&simple(431, "Request Header Fields Too Large", "", true));
                return ReadHead::Failed("request head too large".into());
            }
            let idle_wait = self.buf.is_empty();
            let limit = if idle_wait {
                self.idle.unwrap_or(DEFAULT_IDLE)
            } else {
                REQUEST_TIMEOUT
            };
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return if idle_wait {
                    ReadHead::Idle
                } else {
                    ReadHead::Failed("request head timed out".into())
                };
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return if idle_wait {
                        ReadHead::Eof
                    } else {
                        ReadHead::Failed("peer closed inside a request head".into())
                    }
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if idle_wait => {
                    let _ = e;
                    return ReadHead::Eof;
                }
                Err(e) => return ReadHead::Failed(format!("read failed: {e}")),
            }
        }
    }

    /// Reads one more chunk of bytes into `self.buf` (bounded by `REQUEST_TIMEOUT`).
    fn fill(&mut self) -> Result<(), String> {
        let _ = self.stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let mut chunk = [0u8; 16384];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("peer closed inside a request body".into()),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err("request body timed out".into()),
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// Consumes the request body (Content-Length or chunked), answering
    /// `Expect: 100-continue` first when the body has not started to arrive.
    fn read_body(&mut self, req: &Request) -> Result<u64, String> {
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let length = match req.header("content-length") {
            Some(v) if !chunked => match v.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    let _ = self.send(&simple(400, "Bad Request", "bad content-length\n", true));
                    return Err("bad request content-length".into());
                }
            },
            _ => 0,
        };
        if length > MAX_REQUEST_BODY {
            let _ = self.send(&simple(413, "Content Too Large", "", true));
            return Err("request body too large".into());
        }
        let expects = req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects && (chunked || length > 0) && self.buf.is_empty() {
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| format!("write failed: {e}"))?;
            log(self.cfg, self.id, "sent 100 Continue");
        }
        if !chunked {
            let mut left = length;
            while left > 0 {
                if self.buf.is_empty() {
                    self.fill()?;
                }
                let take = (self.buf.len() as u64).min(left) as usize;
                self.buf.drain(..take);
                left -= take as u64;
            }
            return Ok(length);
        }
        // Chunked request body: size lines, data, CRLF; then trailers up to a blank line.
        let mut total = 0u64;
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad request chunk size {size_text:?}"))?;
            if size == 0 {
                // Trailer section.
                loop {
                    if self.read_line()?.is_empty() {
                        return Ok(total);
                    }
                }
            }
            total += size;
            if total > MAX_REQUEST_BODY {
                return Err("request body too large".into());
            }
            let mut left = size + 2; // data + CRLF
            while left > 0 {
                if self.buf.is_empty() {
                    self.fill()?;
                }
                let take = (self.buf.len() as u64).min(left) as usize;
                self.buf.drain(..take);
                left -= take as u64;
            }
        }
    }

    fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err("request chunk line too long".into());
            }
            self.fill()?;
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Waits up to `max` for the proxy to close its side; says who closed first.
    fn wait_for_peer_close(&mut self, max: Duration) -> &'static str {
        let deadline = Instant::now() + max;
        let mut sink = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return "proxy kept the connection; backend closed";
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut sink) {
                Ok(0) => return "proxy closed first",
                Ok(_) => continue,
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return "proxy reset the connection",
            }
        }
    }

    /// Writes the response the path asks for.
    fn respond(&mut self, req: &Request) -> io::Result<Next> {
        let path = req.path().to_string();
        if path == "/ok" || path.starts_with("/ok/") {
            let body = if req.method == "POST" || req.method == "PUT" {
                "ok (body received)\n"
            } else {
                "ok\n"
            };
            let resp = response(
                "200 OK",
                &[("Content-Type", "text/plain")],
                body.as_bytes(),
                req.is_head(),
            );
            self.send(&resp)?;
            return Ok(Next::KeepAlive);
        }
        match path.as_str() {
            "/chunked" => {
                let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                if !req.is_head() {
                    r.extend_from_slice(b"6\r\nhello \r\n6\r\nchunks\r\n1\r\n\n\r\n0\r\n\r\n");
                }
                self.send(&r)?;
                return Ok(Next::KeepAlive);
            }
            "/close-delimited" => {
                let mut r = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
                if !req.is_head() {
                    r.extend_from_slice(b"a body without a length, ended by closing\n");
                }
                self.send(&r)?;
                return Ok(Next::Fin);
            }
            "/204" => {
                self.send(b"HTTP/1.1 204 No Content\r\nX-Backend: faulty\r\n\r\n")?;
                return Ok(Next::KeepAlive);
            }
            "/304" => {
                self.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")?;
                return Ok(Next::KeepAlive);
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/fault/") else {
            self.send(&simple(404, "Not Found", "no such path\n", false))?;
            return Ok(Next::KeepAlive);
        };
        let name = rest.split('/').next().unwrap_or("");
        self.fault(name, req)
    }

    fn fault(&mut self, name: &str, req: &Request) -> io::Result<Next> {
        let cut_body_head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {CUT_BODY_ANNOUNCED}\r\n\r\n"
        );
        const PARTIAL_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Le";
        let next = match name {
            "rst-before-response" => Next::Rst,
            "fin-before-response" => Next::Fin,
            "fin-before-response-once" => {
                let mut seen = FAILED_ONCE.lock().unwrap_or_else(|e| e.into_inner());
                if seen.contains(&req.target) {
                    drop(seen);
                    self.send(&response(
                        "200 OK",
                        &[("Content-Type", "text/plain")],
                        b"ok after a failure\n",
                        req.is_head(),
                    ))?;
                    Next::KeepAlive
                } else {
                    if seen.len() >= FAILED_ONCE_KEPT {
                        seen.remove(0);
                    }
                    seen.push(req.target.clone());
                    Next::Fin
                }
            }
            "rst-mid-head" | "fin-mid-head" => {
                self.send(PARTIAL_HEAD)?;
                thread::sleep(CUT_PAUSE);
                if name.starts_with("rst") {
                    Next::Rst
                } else {
                    Next::Fin
                }
            }
            "rst-mid-body" | "fin-mid-body" => {
                let mut r = cut_body_head.into_bytes();
                r.extend(std::iter::repeat_n(b'x', CUT_BODY_SENT));
                self.send(&r)?;
                thread::sleep(CUT_PAUSE);
                if name.starts_with("rst") {
                    Next::Rst
                } else {
                    Next::Fin
                }
            }
            "chunked-no-last-chunk" => {
                self.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n6\r\nchunks\r\n")?;
                thread::sleep(CUT_PAUSE);
                Next::Fin
            }
            "bad-chunk-size" => {
                self.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\nzz\r\nnot a chunk\r\n0\r\n\r\n")?;
                Next::FinAfterPeer
            }
            "malformed-status-line" => {
                self.send(b"HTTP/1.1 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")?;
                Next::FinAfterPeer
            }
            "http09" => {
                self.send(b"a raw HTTP/0.9-style body: no status line, no headers\n")?;
                thread::sleep(CUT_PAUSE);
                Next::Fin
            }
            "header-no-colon" => {
                self.send(&malformed_head("X-Header-Without-Colon\r\n"))?;
                Next::FinAfterPeer
            }
            "header-space-before-colon" => {
                self.send(&malformed_head("X-Space-Before-Colon : yes\r\n"))?;
                Next::FinAfterPeer
            }
            "header-obs-fold" => {
                self.send(&malformed_head(
                    "X-Folded: first line\r\n continued line\r\n",
                ))?;
                Next::FinAfterPeer
            }
            "header-nul" => {
                self.send(&malformed_head("X-Nul: before\0after\r\n"))?;
                Next::FinAfterPeer
            }
            "head-too-large" => {
                let big = format!("X-Big: {}\r\n", "a".repeat(BIG_HEADER_BYTES));
                self.send(&malformed_head(&big))?;
                Next::FinAfterPeer
            }
            "cl-and-te" => {
                self.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")?;
                Next::FinAfterPeer
            }
            "duplicate-cl" => {
                self.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhello")?;
                Next::FinAfterPeer
            }
            "excess-data" => {
                self.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello, and 15 more")?;
                Next::KeepAlive
            }
            "slow-first-byte" => {
                let ms = req.query_ms().unwrap_or(3000);
                log(self.cfg, self.id, &format!("sleeping {ms} ms"));
                thread::sleep(Duration::from_millis(ms));
                let body = format!("slow by {ms} ms\n");
                let r = response(
                    "200 OK",
                    &[("Content-Type", "text/plain")],
                    body.as_bytes(),
                    req.is_head(),
                );
                // The proxy may have given up already: the write then fails or is answered
                // with a RST, as with any backend that is too slow.
                self.send(&r)?;
                Next::KeepAlive
            }
            "backend-503" => {
                let r = response(
                    "503 Service Unavailable",
                    &[("Content-Type", "text/plain"), ("Retry-After", "1")],
                    b"backend overloaded\n",
                    req.is_head(),
                );
                self.send(&r)?;
                Next::KeepAlive
            }
            // Answers 413 without reading the body (see `serve`), then closes: with the body
            // unread, the close is a reset (as the kernel makes it when a backend closes with
            // bytes unread; SO_LINGER 0 makes it certain), and the proxy's write fails.
            // Reads some of the body, then resets without a response byte: a worker that
            // dies (or gives up) while the proxy is still sending.
            "rst-reading-body" => {
                let mut sink = [0u8; 16 * 1024];
                let _ = self.stream.set_read_timeout(Some(REQUEST_TIMEOUT));
                let _ = self.stream.read(&mut sink);
                Next::Rst
            }
            "early-response" => {
                self.send(&simple(
                    413,
                    "Content Too Large",
                    "request body too large\n",
                    true,
                ))?;
                Next::Rst
            }
            "keepalive-race" => {
                let ms = req.query_ms().unwrap_or(200).max(1);
                let r = response(
                    "200 OK",
                    &[("Content-Type", "text/plain")],
                    b"ok; idle-closing soon\n",
                    req.is_head(),
                );
                self.send(&r)?;
                log(self.cfg, self.id, &format!("will close after {ms} ms idle"));
                self.idle = Some(Duration::from_millis(ms));
                Next::KeepAlive
            }
            _ => {
                self.send(&simple(404, "Not Found", "no such fault\n", false))?;
                Next::KeepAlive
            }
        };
        Ok(next)
    }
}

/// A response head with one broken header line in the middle, a 5-byte body and
/// `Connection: close` (so a gateway that accepts it does not try to reuse the connection).
fn malformed_head(bad_line: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{bad_line}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    .into_bytes()
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8], head_only: bool) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    if !head_only {
        r.extend_from_slice(body);
    }
    r
}

fn simple(code: u16, reason: &str, body: &str, close: bool) -> Vec<u8> {
    let status = format!("{code} {reason}");
    let mut headers = vec![("Content-Type", "text/plain")];
    if close {
        headers.push(("Connection", "close"));
    }
    response(&status, &headers, body.as_bytes(), false)
}

fn parse_request(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let version = first.next()?;
    if first.next().is_some() || method.is_empty() || !target.starts_with('/') {
        return None;
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return None,
    };
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Some(Request {
        method,
        target,
        minor,
        headers,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Makes the next close send a RST instead of a FIN (SO_LINGER on, timeout 0).
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid, open socket fd and a correctly sized `linger` value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("setsockopt(SO_LINGER): {}", io::Error::last_os_error());
    }
}
