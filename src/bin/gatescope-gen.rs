//! gatescope-gen: writes synthetic proxy<->backend captures.
//!
//! * `gatescope-gen samples DIR` regenerates the bundled sample captures (one small pcap per
//!   scenario, byte-for-byte deterministic); see `captures/README.md`.
//! * `gatescope-gen bulk --out FILE --size BYTES --seed N` writes a large, realistic keep-alive
//!   capture fast, for benchmarks, and prints on stderr how many faults it injected.
//! * `gatescope-gen adversarial KIND --out FILE [--count N]` writes hostile or broken traffic
//!   that pushes one of gatescope's bounds (`gatescope::synth::adversarial`).

use clap::{Parser, Subcommand};
use gatescope::synth::adversarial::Attack;
use gatescope::synth::{
    merge_by_time, push_ethernet_ipv4_tcp, Conversation, LinkType, PcapOptions, SplitMix64,
    Tcp4Segment, TcpFlags,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

/// 2026-01-15T10:00:00Z in microseconds: every sample starts here.
const T0: i64 = 1_768_471_200_000_000;
const MS: i64 = 1_000;
const SEC: i64 = 1_000_000;

#[derive(Parser)]
#[command(
    name = "gatescope-gen",
    version,
    about = "Writes synthetic proxy<->backend pcap captures"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Regenerate the bundled sample captures (one .pcap per scenario) into DIR.
    Samples {
        #[arg(required_unless_present = "list")]
        dir: Option<PathBuf>,
        /// Only write the scenarios whose name contains this string.
        #[arg(long)]
        only: Option<String>,
        /// List the scenarios and exit.
        #[arg(long)]
        list: bool,
    },
    /// Write a large keep-alive proxy<->backend capture for benchmarks.
    Bulk {
        /// Output pcap file.
        #[arg(long)]
        out: PathBuf,
        /// Target size in bytes (suffixes K, M, G, KiB, MiB, GiB). Connections open at that
        /// point are finished and closed, so the file ends a little past it.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// PRNG seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Connections open at any time.
        #[arg(long, default_value_t = 200)]
        connections_concurrent: usize,
        /// Fraction of connections that end in an injected fault: every (1/rate)-th
        /// connection, the four kinds in turn, so that every capture of some size has each.
        #[arg(long, default_value_t = 0.01)]
        fault_rate: f64,
    },
    /// Write hostile or broken traffic that pushes one of gatescope's bounds.
    Adversarial {
        /// syn-flood, ooo-flood, endless-head, tiny-chunks, huge-chunk, huge-content-length,
        /// many-pending, isn-churn or retry-flood (`--list` says what each is and what
        /// gatescope should report).
        #[arg(required_unless_present = "list", value_parser = parse_attack)]
        kind: Option<Attack>,
        /// Output pcap file.
        #[arg(long, required_unless_present = "list")]
        out: Option<PathBuf>,
        /// Size of the attack (SYNs, segments, bytes, chunks, requests or connections, by
        /// kind); the default is the full size.
        #[arg(long)]
        count: Option<u64>,
        /// List the kinds, their default counts and what gatescope should report, and exit.
        #[arg(long)]
        list: bool,
    },
    /// Print how long touching every page of FILE's mapping takes (ms per GB): the state of
    /// its page cache, on which benchmark figures depend (see benches/compare.sh).
    PageTouch { file: PathBuf },
    /// Run a command (COPIES copies at once) and write "WALL_S MAXRSS_KIB CPU_S" to OUT: the
    /// wall time from the first spawn to the last exit, the largest peak RSS and the median
    /// CPU time (user + system) of a copy, from wait4 as /usr/bin/time reads them. Exits
    /// with the largest exit code of the copies. benches/compare.sh times its runs with this:
    /// timing with `date` around `/usr/bin/time` added the ~5 ms of forking both to every
    /// run.
    Time {
        /// Where the figures go.
        #[arg(short, long)]
        out: PathBuf,
        /// Copies run at once (their output to /dev/null when more than one).
        #[arg(long, default_value_t = 1)]
        copies: usize,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
}

fn parse_attack(s: &str) -> Result<Attack, String> {
    Attack::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
        format!("unknown kind '{s}'; one of: {}", names.join(", "))
    })
}

fn adversarial(kind: Attack, out: &Path, count: Option<u64>) -> io::Result<()> {
    let started = Instant::now();
    let count = count.unwrap_or_else(|| kind.default_count());
    let file = BufWriter::with_capacity(1 << 20, File::create(out)?);
    let frames = gatescope::synth::adversarial::write_pcap(kind, count, file)?;
    eprintln!(
        "{}: count {count}, {frames} packets, {:.2} s; expect: {}",
        kind.name(),
        started.elapsed().as_secs_f64(),
        kind.expected()
    );
    Ok(())
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|e| format!("bad size {s:?}: {e}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Runs `copies` copies of `command` at once and writes their figures to `out` (see
/// [`Cmd::Time`]). Returns the largest exit code (128 + signal for a killed copy).
fn time_command(out: &Path, copies: usize, command: &[std::ffi::OsString]) -> io::Result<u8> {
    use std::process::{Command, Stdio};
    let Some((program, args)) = command.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no command"));
    };
    let started = Instant::now();
    let mut pids = Vec::with_capacity(copies);
    let mut spawn_error = None;
    for _ in 0..copies {
        let mut c = Command::new(program);
        c.args(args);
        if copies > 1 {
            c.stdout(Stdio::null());
        }
        match c.spawn() {
            Ok(child) => pids.push(child.id() as libc::pid_t),
            Err(e) => {
                spawn_error = Some(io::Error::new(
                    e.kind(),
                    format!("cannot run {}: {e}", program.to_string_lossy()),
                ));
                break;
            }
        }
    }
    let mut cpu = Vec::with_capacity(pids.len());
    let mut max_rss = 0i64;
    let mut code = 0u8;
    let mut left = pids.len();
    while left > 0 {
        let mut status = 0;
        // SAFETY: plain wait4 on our own children into locals it fills in.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut ru) };
        if pid < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if !pids.contains(&pid) {
            continue;
        }
        left -= 1;
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        cpu.push(secs(ru.ru_utime) + secs(ru.ru_stime));
        max_rss = max_rss.max(ru.ru_maxrss);
        let c = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        code = code.max(u8::try_from(c).unwrap_or(u8::MAX));
    }
    let wall = started.elapsed().as_secs_f64();
    if let Some(e) = spawn_error {
        return Err(e);
    }
    cpu.sort_by(f64::total_cmp);
    let median = cpu.get(cpu.len() / 2).copied().unwrap_or(0.0);
    std::fs::write(out, format!("{wall:.4} {max_rss} {median:.3}\n"))?;
    Ok(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Samples { dir, only, list } => match dir {
            Some(dir) if !list => write_samples(&dir, only.as_deref()),
            _ => {
                for s in SAMPLES {
                    println!("{}", s.name);
                }
                Ok(())
            }
        },
        Cmd::Bulk {
            connections_concurrent,
            ..
        } if connections_concurrent > MAX_CONCURRENT => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--connections-concurrent: at most {MAX_CONCURRENT} (client ports 32768..60767)"
            ),
        )),
        Cmd::Bulk {
            out,
            size,
            seed,
            connections_concurrent,
            fault_rate,
        } => bulk(&out, size, seed, connections_concurrent.max(1), fault_rate),
        Cmd::Adversarial {
            kind: Some(kind),
            out: Some(out),
            count,
            list: false,
        } => adversarial(kind, &out, count),
        Cmd::Adversarial { .. } => {
            for a in Attack::ALL {
                println!(
                    "{:<20} {:>10}  {}",
                    a.name(),
                    a.default_count(),
                    a.expected()
                );
            }
            Ok(())
        }
        Cmd::Time {
            out,
            copies,
            command,
        } => {
            return match time_command(&out, copies.max(1), &command) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("gatescope-gen time: {e}");
                    ExitCode::from(125)
                }
            };
        }
        Cmd::PageTouch { file } => gatescope::capture::page_touch_ms_per_gb(&file)
            .map(|ms| println!("{ms:.1}"))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatescope-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

// ==========================================================================================
// HTTP text helpers (shared by samples and bulk)
// ==========================================================================================

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, usize, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as usize, d)
}

/// IMF-fixdate (`Thu, 15 Jan 2026 10:00:00 GMT`) of a microsecond timestamp.
fn http_date(ts_micros: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ts_micros.div_euclid(SEC);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[m - 1],
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// A JSON document of exactly `n` bytes (padded with trailing whitespace).
fn json_body(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n);
    if n < 2 {
        out.resize(n, b' ');
        return out;
    }
    out.extend_from_slice(b"{\"items\":[");
    let mut first = true;
    loop {
        let id = rng.below(100_000);
        let item = format!(
            "{}{{\"id\":{id},\"name\":\"item-{id}\",\"price\":{}.{:02},\"in_stock\":{}}}",
            if first { "" } else { "," },
            rng.below(1000),
            rng.below(100),
            rng.below(2) == 1
        );
        if out.len() + item.len() + 2 > n {
            break;
        }
        out.extend_from_slice(item.as_bytes());
        first = false;
    }
    if out.len() + 2 > n {
        out.clear();
        out.extend_from_slice(b"{}");
    } else {
        out.extend_from_slice(b"]}");
    }
    if out.len() < n {
        out.push(b'\n');
    }
    out.resize(n, b' ');
    out
}

/// Text bytes (a web page) of exactly `n` bytes.
fn html_body(n: usize) -> Vec<u8> {
    let mut out = b"<!doctype html>\n<html><head><title>backend</title></head><body>\n".to_vec();
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(
            format!("<p>line {i}: the quick brown fox jumps over the lazy dog</p>\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

fn get(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: backend:8080\r\nX-Forwarded-For: 203.0.113.7\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

/// A response head: status line, Date, the given headers, blank line.
fn head(ts: i64, status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status}\r\nDate: {}\r\n", http_date(ts));
    for (k, v) in headers {
        h.push_str(k);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// A complete Content-Length response.
fn cl_response(ts: i64, status: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let len = body.len().to_string();
    let mut r = head(
        ts,
        status,
        &[("Content-Type", ctype), ("Content-Length", &len)],
    );
    r.extend_from_slice(body);
    r
}

fn json_ok(ts: i64, n: usize, seed: u64) -> Vec<u8> {
    cl_response(ts, "200 OK", "application/json", &json_body(n, seed))
}

/// Raw bytes in a response: head lines given verbatim (no Date), then body.
fn raw_response(lines: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    for l in lines {
        r.extend_from_slice(l.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

// ==========================================================================================
// Samples
// ==========================================================================================

struct Sample {
    opts: PcapOptions,
    packets: Vec<(i64, Vec<u8>)>,
}

struct Scenario {
    name: &'static str,
    build: fn(u16) -> Sample,
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        const SAMPLES: &[Scenario] = &[ $( Scenario { name: stringify!($name), build: $name }, )* ];
    };
}

scenarios![
    benign_keepalive,
    benign_chunked,
    benign_close_delimited,
    benign_head_204_304,
    benign_100_continue,
    benign_pipelined,
    benign_rst_after_response,
    benign_ooo_retrans,
    benign_seq_wrap,
    benign_ipv6,
    benign_vlan,
    benign_linux_sll,
    benign_linux_sll2,
    benign_raw_ip,
    benign_null_loopback,
    connect_refused,
    connect_timeout,
    reset_before_response,
    closed_before_response,
    truncated_head,
    truncated_body_cl,
    truncated_body_chunked,
    truncated_body_rst,
    malformed_status_line,
    http09_response,
    malformed_header_no_colon,
    malformed_header_space_before_colon,
    malformed_header_obs_fold,
    malformed_header_nul,
    head_too_large,
    invalid_content_length,
    duplicate_content_length,
    content_length_with_chunked,
    unsupported_transfer_encoding,
    invalid_chunk,
    excess_data,
    unsolicited_response,
    slow_first_byte,
    abandoned_by_client,
    keepalive_race,
    zero_window,
    capture_gap,
    backend_error_status,
    midstream_pickup,
    snaplen_truncated,
    port_reuse,
    demo,
    // Last, so that adding them left every other sample's client port (and bytes) unchanged.
    unsupported_protocol,
    slow_connect,
    early_response,
    reset_during_request,
    connect_unreachable,
    middlebox_reset,
    keepalive_race_retried,
];

fn write_samples(dir: &Path, only: Option<&str>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, s) in SAMPLES.iter().enumerate() {
        if only.is_some_and(|o| !s.name.contains(o)) {
            continue;
        }
        // Each scenario gets its own client port, so captures can be concatenated.
        let port = 40_000 + i as u16;
        let sample = (s.build)(port);
        let path = dir.join(format!("{}.pcap", s.name));
        let file = BufWriter::new(File::create(&path)?);
        let mut w = sample.opts.create(file)?;
        w.write_packets(&sample.packets)?;
        let (n, bytes) = (w.packets_written(), w.bytes_written());
        w.into_inner()?;
        println!("{:<40} {n:>4} packets {bytes:>6} bytes", path.display());
    }
    Ok(())
}

fn proxy() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
}

/// Ethernet, default snaplen, the proxy as the capturing host.
fn eth() -> PcapOptions {
    PcapOptions::new(LinkType::Ethernet).local_ip(proxy())
}

/// A fresh conversation 10.0.0.1:port -> 10.0.0.2:8080 starting at `start`.
fn conv_at(port: u16, start: i64) -> Conversation {
    Conversation::new(
        SocketAddr::new(proxy(), port),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080),
        start,
    )
}

fn conv(port: u16) -> Conversation {
    conv_at(port, T0)
}

fn sample(c: Conversation) -> Sample {
    Sample {
        opts: eth(),
        packets: c.into_packets(),
    }
}

/// Request, 1.5 ms of backend work, response.
fn exchange(c: &mut Conversation, req: &[u8], resp: impl FnOnce(i64) -> Vec<u8>) {
    c.client_send(req).advance(1_500);
    let r = resp(c.now());
    c.server_send(&r);
}

/// The proxy closes an idle keep-alive connection: client FIN first, then the server's.
fn proxy_closes(c: &mut Conversation) {
    c.advance(20 * MS).client_fin().advance(100).server_fin();
}

/// A connection whose only exchange gets the response `resp`, after which the proxy closes it.
fn one_response(port: u16, path: &str, resp: Vec<u8>) -> Sample {
    let mut c = conv(port);
    c.handshake();
    exchange(&mut c, &get(path), |_| resp);
    proxy_closes(&mut c);
    sample(c)
}

/// Two keep-alive exchanges then a clean close, on any conversation.
fn two_exchanges(c: &mut Conversation) {
    c.handshake();
    exchange(c, &get("/api/users/42"), |t| json_ok(t, 700, 1));
    c.advance(8 * MS);
    exchange(c, &get("/api/users/42/orders"), |t| json_ok(t, 2_200, 2));
    proxy_closes(c);
}

fn benign_keepalive(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    exchange(&mut c, &get("/api/users/1"), |t| json_ok(t, 612, 1));
    c.advance(5 * MS);
    exchange(&mut c, &get("/api/orders?page=2"), |t| json_ok(t, 2_900, 2));
    c.advance(12 * MS);
    exchange(&mut c, &get("/static/app.css"), |t| {
        cl_response(t, "200 OK", "text/css", &html_body(1_800))
    });
    proxy_closes(&mut c);
    sample(c)
}

fn benign_chunked(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(
        b"GET /stream/report HTTP/1.1\r\nHost: backend:8080\r\nTE: trailers\r\nAccept: text/plain\r\n\r\n",
    )
    .advance(2 * MS);
    let mut first = head(
        c.now(),
        "200 OK",
        &[
            ("Content-Type", "text/plain"),
            ("Transfer-Encoding", "chunked"),
            ("Trailer", "X-Checksum"),
        ],
    );
    first.extend_from_slice(b"1A;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n");
    c.server_send(&first).advance(3 * MS);
    let body = html_body(0x400);
    let mut second = b"400;ext-only\r\n".to_vec();
    second.extend_from_slice(&body);
    second.extend_from_slice(b"\r\n");
    let body2 = html_body(0x7d0);
    second.extend_from_slice(b"7d0\r\n");
    second.extend_from_slice(&body2);
    second.extend_from_slice(b"\r\n");
    c.server_send(&second).advance(2 * MS);
    c.server_send(b"0\r\nX-Checksum: 9f2c1e\r\n\r\n");
    proxy_closes(&mut c);
    sample(c)
}

fn benign_close_delimited(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(b"GET /legacy/page HTTP/1.0\r\nHost: backend:8080\r\n\r\n")
        .advance(2 * MS);
    let mut r =
        b"HTTP/1.0 200 OK\r\nServer: legacy/0.9\r\nContent-Type: text/html\r\n\r\n".to_vec();
    r.extend_from_slice(&html_body(3_000));
    c.server_send(&r).server_fin().advance(200).client_fin();
    sample(c)
}

fn benign_head_204_304(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(b"HEAD /files/report.pdf HTTP/1.1\r\nHost: backend:8080\r\n\r\n")
        .advance(MS);
    let r = head(
        c.now(),
        "200 OK",
        &[
            ("Content-Type", "application/pdf"),
            ("Content-Length", "1234"),
            ("ETag", "\"r-1234\""),
        ],
    );
    c.server_send(&r).advance(4 * MS);
    c.client_send(
        b"DELETE /api/items/7 HTTP/1.1\r\nHost: backend:8080\r\nContent-Length: 0\r\n\r\n",
    )
    .advance(2 * MS);
    let r = head(c.now(), "204 No Content", &[("X-Deleted", "7")]);
    c.server_send(&r).advance(4 * MS);
    c.client_send(
        b"GET /api/items HTTP/1.1\r\nHost: backend:8080\r\nIf-None-Match: \"v42\"\r\n\r\n",
    )
    .advance(MS);
    let r = head(
        c.now(),
        "304 Not Modified",
        &[("ETag", "\"v42\""), ("Cache-Control", "max-age=60")],
    );
    c.server_send(&r);
    proxy_closes(&mut c);
    sample(c)
}

fn benign_100_continue(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    let body = json_body(3_000, 7);
    c.client_send(
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: backend:8080\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .advance(500);
    c.server_send(b"HTTP/1.1 100 Continue\r\n\r\n").advance(200);
    c.client_send(&body).advance(3 * MS);
    let r = cl_response(
        c.now(),
        "201 Created",
        "application/json",
        b"{\"id\":981,\"status\":\"stored\"}",
    );
    c.server_send(&r);
    proxy_closes(&mut c);
    sample(c)
}

fn benign_pipelined(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    let mut reqs = get("/api/a");
    reqs.extend_from_slice(&get("/api/b"));
    reqs.extend_from_slice(&get("/api/c"));
    c.client_send(&reqs).advance(MS);
    for (i, n) in [300usize, 1_700, 450].into_iter().enumerate() {
        let r = json_ok(c.now(), n, 10 + i as u64);
        c.server_send(&r).advance(700);
    }
    proxy_closes(&mut c);
    sample(c)
}

fn benign_rst_after_response(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/health")).advance(MS);
    let body = b"{\"status\":\"ok\"}";
    let r = head(
        c.now(),
        "200 OK",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &body.len().to_string()),
            ("Connection", "close"),
        ],
    );
    let mut r = r;
    r.extend_from_slice(body);
    c.server_send(&r).advance(150).server_rst();
    sample(c)
}

fn benign_ooo_retrans(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    exchange(&mut c, &get("/api/warmup"), |t| json_ok(t, 400, 3));
    c.advance(5 * MS);
    c.client_send(&get("/api/catalog")).advance(2 * MS);
    let r = json_ok(c.now(), 5_000, 4);
    let base = c.sent(false);
    let m = 1448usize;
    let seg = |i: usize| &r[i * m..((i + 1) * m).min(r.len())];
    let (s0, s1, s2) = (seg(0), seg(1), seg(2));
    let a = TcpFlags::ACK;
    let off = |i: usize| base + (i * m) as u64;
    c.raw_segment(false, off(0), s0, a)
        .ack_upto(true, off(1))
        // segment 2 overtakes segment 1: a duplicate ACK
        .raw_segment(false, off(2), s2, a)
        .ack_upto(true, off(1))
        .advance(100)
        .raw_segment(false, off(1), s1, a)
        .ack_upto(true, off(3))
        .advance(200)
        // a spurious retransmission of segment 1
        .raw_segment(false, off(1), s1, a)
        .ack_upto(true, off(3))
        .advance(100);
    // the rest, starting 400 bytes back inside segment 2 (same bytes: an overlap)
    let from = 3 * m - 400;
    c.raw_segment(false, base + from as u64, &r[from..], a | TcpFlags::PSH);
    c.skip(false, r.len() as u64).ack(true);
    proxy_closes(&mut c);
    sample(c)
}

fn benign_seq_wrap(port: u16) -> Sample {
    // The client wraps inside its second request, the server 2,500 bytes into the first body.
    let mut c = conv(port).isn(u32::MAX - 100, u32::MAX - 2_500);
    c.handshake();
    exchange(&mut c, &get("/api/wrap/1"), |t| json_ok(t, 6_000, 5));
    c.advance(3 * MS);
    exchange(&mut c, &get("/api/wrap/2"), |t| json_ok(t, 3_000, 6));
    proxy_closes(&mut c);
    sample(c)
}

fn benign_ipv6(port: u16) -> Sample {
    let mut c = Conversation::new(
        SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)), 8080),
        T0,
    )
    .mss(1428);
    two_exchanges(&mut c);
    Sample {
        opts: PcapOptions::new(LinkType::Ethernet),
        packets: c.into_packets(),
    }
}

fn link_sample(port: u16, opts: PcapOptions) -> Sample {
    let mut c = conv(port);
    two_exchanges(&mut c);
    Sample {
        opts,
        packets: c.into_packets(),
    }
}

fn benign_vlan(port: u16) -> Sample {
    link_sample(port, eth().vlan(100))
}

fn benign_linux_sll(port: u16) -> Sample {
    link_sample(port, PcapOptions::new(LinkType::LinuxSll).local_ip(proxy()))
}

fn benign_linux_sll2(port: u16) -> Sample {
    link_sample(
        port,
        PcapOptions::new(LinkType::LinuxSll2).local_ip(proxy()),
    )
}

fn benign_raw_ip(port: u16) -> Sample {
    link_sample(port, PcapOptions::new(LinkType::Raw))
}

fn benign_null_loopback(port: u16) -> Sample {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut c = Conversation::new(SocketAddr::new(lo, port), SocketAddr::new(lo, 8080), T0)
        .rtt(20)
        .mss(16_344);
    two_exchanges(&mut c);
    Sample {
        opts: PcapOptions::new(LinkType::Null),
        packets: c.into_packets(),
    }
}

fn connect_refused(port: u16) -> Sample {
    let mut c = conv(port);
    c.refused();
    sample(c)
}

fn connect_unreachable(port: u16) -> Sample {
    let mut c = conv(port);
    // A firewall on the path rejects the connection the way firewalld does by default:
    // ICMP "communication administratively prohibited" (code 13). A Linux proxy's connect()
    // fails at once with EHOSTUNREACH; nginx answers 502.
    c.unreachable(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 254)), 13);
    sample(c)
}

fn middlebox_reset(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    exchange(&mut c, &get("/api/items/7"), |t| json_ok(t, 300, 5));
    // Idle in the proxy's keep-alive pool until a firewall between them drops the
    // connection at its idle timeout (120 s here) and resets it, in the backend's name but
    // with its own TTL.
    c.advance(120 * SEC).set_ttl(249).server_rst();
    sample(c)
}

fn connect_timeout(port: u16) -> Sample {
    let mut c = conv(port);
    // Linux retransmits an unanswered SYN after 1 s, then 2 s later.
    c.syn_only()
        .advance(SEC)
        .syn_retransmit()
        .advance(2 * SEC)
        .syn_retransmit();
    sample(c)
}

fn reset_before_response(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/report"))
        .advance(15 * MS)
        .server_rst();
    sample(c)
}

fn closed_before_response(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/report"))
        .advance(300)
        .server_fin()
        .advance(100)
        .client_fin();
    sample(c)
}

fn truncated_head(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/report")).advance(2 * MS);
    let h = head(c.now(), "200 OK", &[("Content-Type", "application/json")]);
    // half the head: cut in the middle of the header section
    let half = h.len() / 2;
    c.server_send(&h[..half])
        .server_fin()
        .advance(100)
        .client_fin();
    sample(c)
}

fn truncated_body_cl(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/export")).advance(2 * MS);
    let mut r = head(
        c.now(),
        "200 OK",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", "5000"),
        ],
    );
    r.extend_from_slice(&json_body(5_000, 8)[..2_000]);
    c.server_send(&r).server_fin().advance(100).client_fin();
    sample(c)
}

fn truncated_body_chunked(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/stream/events")).advance(2 * MS);
    let mut r = head(
        c.now(),
        "200 OK",
        &[
            ("Content-Type", "text/plain"),
            ("Transfer-Encoding", "chunked"),
        ],
    );
    r.extend_from_slice(b"800\r\n");
    r.extend_from_slice(&html_body(0x800));
    r.extend_from_slice(b"\r\n");
    c.server_send(&r).advance(5 * MS);
    let mut more = b"400\r\n".to_vec();
    more.extend_from_slice(&html_body(0x400));
    more.extend_from_slice(b"\r\n");
    // no last chunk: the backend closes
    c.server_send(&more).server_fin().advance(100).client_fin();
    sample(c)
}

fn truncated_body_rst(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/export")).advance(2 * MS);
    let mut r = head(
        c.now(),
        "200 OK",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", "5000"),
        ],
    );
    r.extend_from_slice(&json_body(5_000, 9)[..2_000]);
    c.server_send(&r).advance(50).server_rst();
    sample(c)
}

fn malformed_status_line(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 abc OK",
                "Content-Type: text/plain",
                "Content-Length: 5",
            ],
            b"hello",
        ),
    )
}

fn http09_response(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/"))
        .advance(MS)
        .server_send(b"hello world\n")
        .server_fin()
        .advance(100)
        .client_fin();
    sample(c)
}

/// `proxy_pass http://` to a TLS port: the backend answers the cleartext GET with a TLS
/// alert record (fatal, protocol_version) and closes.
fn unsupported_protocol(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/"))
        .advance(MS)
        .server_send(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])
        .server_fin()
        .advance(100)
        .client_fin();
    sample(c)
}

fn slow_connect(port: u16) -> Sample {
    let mut c = conv(port);
    // The first SYN is dropped (a full listen queue); Linux retransmits it after 1 s and the
    // backend answers that one. Then an ordinary exchange.
    c.syn_only().advance(SEC).handshake();
    exchange(&mut c, &get("/api/users/1"), |t| json_ok(t, 800, 1));
    proxy_closes(&mut c);
    sample(c)
}

fn early_response(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    // A slow upload: the head and the first 3,000 of 10,000 body bytes, then nothing for
    // the backend's body read timeout; it answers 408 and closes before the rest.
    let head = "POST /api/upload HTTP/1.1\r\nHost: backend\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000\r\n\r\n";
    c.client_send(head.as_bytes())
        .client_send(&[b'u'; 3000])
        .advance(60 * SEC);
    c.server_send(&raw_response(
        &[
            "HTTP/1.1 408 Request Timeout",
            "Content-Length: 0",
            "Connection: close",
        ],
        b"",
    ))
    .server_fin()
    .advance(MS)
    .client_fin();
    sample(c)
}

fn reset_during_request(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    // An upload over the backend's size limit: it answers 413 after the head and closes
    // with the body unread, which resets the connection while the proxy is still sending
    // (what nginx turns into a 502: writev() failed (104) while sending request to upstream).
    let head = "POST /api/upload HTTP/1.1\r\nHost: backend\r\nContent-Type: application/octet-stream\r\nContent-Length: 600000\r\n\r\n";
    c.client_send(head.as_bytes())
        .client_send(&[b'u'; 60_000])
        .advance(MS);
    c.server_send(&raw_response(
        &[
            "HTTP/1.1 413 Content Too Large",
            "Content-Length: 0",
            "Connection: close",
        ],
        b"",
    ))
    .server_rst();
    sample(c)
}

fn malformed_header_no_colon(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "X-Broken-Header",
                "Content-Length: 5",
            ],
            b"hello",
        ),
    )
}

fn malformed_header_space_before_colon(port: u16) -> Sample {
    one_response(
        port,
        "/",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type : text/html",
                "Content-Length: 5",
            ],
            b"hello",
        ),
    )
}

fn malformed_header_obs_fold(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "X-Long-Header: first part",
                "  continued on a folded line",
                "Content-Length: 5",
            ],
            b"hello",
        ),
    )
}

fn malformed_header_nul(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "X-Token: abc\0def",
                "Content-Length: 5",
            ],
            b"hello",
        ),
    )
}

fn head_too_large(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/login")).advance(2 * MS);
    let mut cookie = String::from("session=");
    let mut rng = SplitMix64::new(11);
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    while cookie.len() < 10_240 {
        cookie.push(B64[rng.below(64) as usize] as char);
    }
    cookie.push_str("; Path=/; HttpOnly");
    let r = {
        let mut r = head(
            c.now(),
            "200 OK",
            &[
                ("Content-Type", "application/json"),
                ("Set-Cookie", &cookie),
                ("Content-Length", "11"),
            ],
        );
        r.extend_from_slice(b"{\"ok\":true}");
        r
    };
    c.server_send(&r);
    proxy_closes(&mut c);
    sample(c)
}

fn invalid_content_length(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "Content-Length: 12abc",
            ],
            b"hello world!",
        ),
    )
}

fn duplicate_content_length(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "Content-Length: 5",
                "Content-Length: 7",
            ],
            b"hello",
        ),
    )
}

fn content_length_with_chunked(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "Content-Length: 42",
                "Transfer-Encoding: chunked",
            ],
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
    )
}

fn unsupported_transfer_encoding(port: u16) -> Sample {
    // a gzip member (header, stored bytes as they would be) inside one chunk
    let gz: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcbH\xcd\xc9\xc9\x07\x00\x86\xa6\x106\x05\x00\x00\x00";
    let mut body = format!("{:x}\r\n", gz.len()).into_bytes();
    body.extend_from_slice(gz);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "Transfer-Encoding: gzip, chunked",
            ],
            &body,
        ),
    )
}

fn invalid_chunk(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "Transfer-Encoding: chunked",
            ],
            b"zz\r\nhello\r\n0\r\n\r\n",
        ),
    )
}

fn excess_data(port: u16) -> Sample {
    one_response(
        port,
        "/api/x",
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: text/plain",
                "Content-Length: 5",
            ],
            b"hello world!",
        ),
    )
}

fn unsolicited_response(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    exchange(&mut c, &get("/api/users/1"), |t| json_ok(t, 500, 12));
    c.advance(SEC);
    let r = json_ok(c.now(), 300, 13);
    c.server_send(&r);
    proxy_closes(&mut c);
    sample(c)
}

fn slow_first_byte(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/slow-report")).advance(3 * SEC);
    let r = json_ok(c.now(), 900, 14);
    c.server_send(&r);
    proxy_closes(&mut c);
    sample(c)
}

fn abandoned_by_client(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    // the proxy gives up after 5 s of silence (its read timeout) and closes; the backend,
    // still busy, resets when it notices
    c.client_send(&get("/api/slow-report"))
        .advance(5 * SEC)
        .client_fin()
        .advance(2 * MS)
        .server_rst();
    sample(c)
}

fn keepalive_race(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    exchange(&mut c, &get("/api/users/1"), |t| json_ok(t, 800, 15));
    // 4.9 s idle: the backend's 5 s keep-alive timeout is about to fire
    c.advance(4_900 * MS);
    let fin_rel = c.sent(false);
    // the backend closes; its FIN is still in flight when the proxy reuses the connection
    c.fin(false, false).advance(300);
    let req = get("/api/users/2");
    let at = c.sent(true);
    c.raw_segment(true, at, &req, TcpFlags::ACK | TcpFlags::PSH)
        .skip(true, req.len() as u64)
        .advance(150);
    // Linux answers data on a closed socket with a RST at the sequence the proxy acknowledged
    c.raw_segment(false, fin_rel, &[], TcpFlags::RST);
    sample(c)
}

/// [`keepalive_race`], and what nginx does next with an idempotent request that failed on a
/// kept-alive connection: it sends it again at once, on a new connection (here from port
/// `port + 10000`, so that it is unique among the samples), and gets a 200.
fn keepalive_race_retried(port: u16) -> Sample {
    let mut race = keepalive_race(port).packets;
    let reset_at = race.last().map_or(T0, |p| p.0);
    let mut c = conv_at(port + 10_000, reset_at + 80);
    c.handshake();
    exchange(&mut c, &get("/api/users/2"), |t| json_ok(t, 640, 16));
    proxy_closes(&mut c);
    race.extend(c.into_packets());
    race.sort_by_key(|p| p.0);
    Sample {
        opts: eth(),
        packets: race,
    }
}

fn zero_window(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/export/orders.csv")).advance(2 * MS);
    let r = cl_response(c.now(), "200 OK", "text/csv", &html_body(20_000));
    let cut = 10_000;
    c.server_send(&r[..cut])
        .zero_window(true)
        .advance(2 * SEC)
        .window_update(true)
        .advance(100)
        .server_send(&r[cut..]);
    proxy_closes(&mut c);
    sample(c)
}

fn capture_gap(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    exchange(&mut c, &get("/api/a"), |t| json_ok(t, 1_200, 16));
    c.advance(4 * MS);
    c.client_send(&get("/api/b")).advance(1_500);
    let r = json_ok(c.now(), 4_000, 17);
    // 1,000 bytes of the body never reach the capture; the proxy's ACK covers them
    c.server_send(&r[..1_600])
        .skip(false, 1_000)
        .server_send(&r[2_600..]);
    c.advance(4 * MS);
    exchange(&mut c, &get("/api/c"), |t| json_ok(t, 900, 18));
    proxy_closes(&mut c);
    sample(c)
}

fn backend_error_status(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    c.client_send(&get("/api/checkout")).advance(MS);
    let body = b"{\"error\":\"service unavailable\",\"retry_after\":30}";
    let mut r = head(
        c.now(),
        "503 Service Unavailable",
        &[
            ("Content-Type", "application/json"),
            ("Retry-After", "30"),
            ("Content-Length", &body.len().to_string()),
        ],
    );
    r.extend_from_slice(body);
    c.server_send(&r);
    proxy_closes(&mut c);
    sample(c)
}

fn midstream_pickup(port: u16) -> Sample {
    let mut c = conv(port);
    // Before the capture started: a request, and the head plus 3,000 bytes of its response.
    let r = json_ok(T0 - 3 * MS, 8_000, 19);
    let seen_from = 3_000;
    c.skip(true, 120).skip(false, seen_from as u64);
    c.server_send(&r[seen_from..]);
    c.advance(6 * MS);
    exchange(&mut c, &get("/api/next/1"), |t| json_ok(t, 1_000, 20));
    c.advance(6 * MS);
    exchange(&mut c, &get("/api/next/2"), |t| json_ok(t, 1_500, 21));
    proxy_closes(&mut c);
    sample(c)
}

fn snaplen_truncated(port: u16) -> Sample {
    let mut c = conv(port);
    c.handshake();
    // heads stay under 146 bytes so they fit the first 200 bytes of their frame
    exchange(&mut c, &get("/api/big/1"), |_| {
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: application/json",
                "Content-Length: 4000",
            ],
            &json_body(4_000, 22),
        )
    });
    c.advance(5 * MS);
    exchange(&mut c, &get("/api/big/2"), |_| {
        raw_response(
            &[
                "HTTP/1.1 200 OK",
                "Content-Type: application/json",
                "Content-Length: 3000",
            ],
            &json_body(3_000, 23),
        )
    });
    proxy_closes(&mut c);
    Sample {
        opts: eth().snaplen(200),
        packets: c.into_packets(),
    }
}

fn port_reuse(port: u16) -> Sample {
    let mut a = conv_at(port, T0);
    a.handshake();
    exchange(&mut a, &get("/api/first"), |t| json_ok(t, 600, 24));
    proxy_closes(&mut a);
    // the same 4-tuple, two seconds later, with a fresh ISN
    let mut b = conv_at(port, a.now() + 2 * SEC);
    b.handshake();
    exchange(&mut b, &get("/api/second"), |t| json_ok(t, 650, 25));
    proxy_closes(&mut b);
    Sample {
        opts: eth(),
        packets: merge_by_time(vec![a, b]),
    }
}

/// `make demo`: a few concurrent connections, some healthy, some failing, on one link.
fn demo(port: u16) -> Sample {
    type Part = (u16, i64, fn(u16) -> Sample);
    let parts: [Part; 6] = [
        (0, 0, benign_keepalive),
        (1, 3 * MS, keepalive_race),
        (2, 7 * MS, truncated_body_cl),
        (3, 11 * MS, benign_chunked),
        (4, 40 * MS, slow_first_byte),
        (5, 90 * MS, connect_refused),
    ];
    let mut packets = Vec::new();
    for (i, offset, build) in parts {
        // ports far from the other samples' so that the demo can be concatenated with them
        let s = build(port + 100 + i);
        packets.extend(s.packets.into_iter().map(|(ts, p)| (ts + offset, p)));
    }
    packets.sort_by_key(|(ts, _)| *ts);
    Sample {
        opts: eth(),
        packets,
    }
}

// ==========================================================================================
// Bulk
// ==========================================================================================

/// Faults the bulk generator injects; each maps to one finding gatescope must report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Server RST in the middle of a Content-Length body → truncated_body.
    RstMidBody,
    /// Server FIN after the request of a new connection, no response → closed_before_response.
    FinBeforeResponse,
    /// Content-Length body cut short by the server's FIN → truncated_body.
    TruncatedCl,
    /// Chunked body without its last chunk, then FIN → truncated_body.
    ChunkedNoLast,
}

const FAULTS: [Fault; 4] = [
    Fault::RstMidBody,
    Fault::FinBeforeResponse,
    Fault::TruncatedCl,
    Fault::ChunkedNoLast,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::RstMidBody => "server_rst_mid_body",
            Fault::FinBeforeResponse => "fin_before_response",
            Fault::TruncatedCl => "truncated_content_length_body",
            Fault::ChunkedNoLast => "chunked_without_last_chunk",
        }
    }

    fn index(self) -> usize {
        match self {
            Fault::RstMidBody => 0,
            Fault::FinBeforeResponse => 1,
            Fault::TruncatedCl => 2,
            Fault::ChunkedNoLast => 3,
        }
    }

    fn finding(self) -> &'static str {
        match self {
            Fault::FinBeforeResponse => "closed_before_response",
            _ => "truncated_body",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqKind {
    Get,
    GetChunked,
    Post,
    Head,
    Conditional,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Syn,
    SynAck,
    HsAck,
    /// Build the next request and send its first segment.
    Request,
    /// Next segment of `msg` from `from_client`.
    Data,
    /// The receiver ACKs what `from_client` sent.
    Ack,
    /// Build the response (or act out the fault) and send its first segment.
    Response,
    /// Close handshake: 0 closer FIN, 1 peer ACK, 2 peer FIN, 3 closer ACK.
    Close(u8),
    Rst,
}

struct Conn {
    client: SocketAddrV4,
    server: SocketAddrV4,
    port: u16,
    c_isn: u32,
    s_isn: u32,
    /// Sequence space used after the ISN (payload + FIN), per side.
    c_next: u64,
    s_next: u64,
    c_ipid: u16,
    s_ipid: u16,
    step: Step,
    from_client: bool,
    msg: Vec<u8>,
    pos: usize,
    segs: u32,
    requests_left: u32,
    one_shot: bool,
    kind: ReqKind,
    fault: Option<Fault>,
    /// 1-based request index the fault hits (the last one the connection makes).
    fault_at: u32,
    req_no: u32,
    closer_client: bool,
    seg_gap: i64,
    id: u64,
}

#[derive(Default)]
struct BulkStats {
    packets: u64,
    connections: u64,
    requests: u64,
    responses: u64,
    chunked: u64,
    posts: u64,
    heads: u64,
    not_modified: u64,
    one_shot: u64,
    faults: [u64; 4],
}

struct Bulk {
    rng: SplitMix64,
    pool: Vec<u8>,
    scratch: Vec<u8>,
    frame: Vec<u8>,
    stats: BulkStats,
    /// Every this many connections, one ends in a fault (0: none).
    fault_every: u64,
    ports: VecDeque<u16>,
    next_conn_id: u64,
    draining: bool,
}

/// Client ports come from a pool 1.5x the concurrency within 32768..60767, so that no two open
/// connections share a 4-tuple.
const MAX_CONCURRENT: usize = 18_000;

/// Bulk JSON bodies are cut from a pool of fixed-size records, so that any run of whole
/// records is a valid JSON array element list.
const RECORD: usize = 64;
const POOL_RECORDS: usize = 8_192;

/// `POOL_RECORDS` records of exactly `RECORD` bytes, each ending with a comma, twice over (so
/// that a body can start anywhere in the first half).
fn json_pool(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let mut pool = Vec::with_capacity(2 * POOL_RECORDS * RECORD);
    for _ in 0..POOL_RECORDS {
        let id = rng.below(1_000_000);
        let start = pool.len();
        let _ = write!(
            pool,
            "{{\"id\":{id},\"name\":\"item-{id}\",\"price\":{}.{:02},\"stock\":{}}}",
            rng.below(1_000),
            rng.below(100),
            rng.below(500)
        );
        pool.resize(start + RECORD - 1, b' ');
        pool.push(b',');
    }
    pool.extend_from_within(..);
    pool
}

/// Appends exactly `n` bytes of valid JSON: an array of pool records padded with whitespace.
fn json_into(pool: &[u8], rng: &mut SplitMix64, out: &mut Vec<u8>, n: usize) {
    let start = out.len();
    let k = (n.saturating_sub(1) / RECORD).min(POOL_RECORDS);
    if k == 0 {
        out.extend_from_slice(&b"{}"[..n.min(2)]);
    } else {
        let first = rng.below(POOL_RECORDS as u64) as usize * RECORD;
        out.push(b'[');
        out.extend_from_slice(&pool[first..first + k * RECORD - 1]);
        out.push(b']');
    }
    let written = out.len() - start;
    if written < n {
        // whitespace after the value is still valid JSON
        out.resize(start + n - 1, b' ');
        out.push(b'\n');
    }
}

const MSS: usize = 1460;
const RTT: i64 = 150;
const ACK_DELAY: i64 = 25;
const BACKENDS: u8 = 4;
const MSS_OPTION: [u8; 4] = [2, 4, (MSS >> 8) as u8, (MSS & 0xff) as u8];

impl Bulk {
    /// A new connection on the oldest free client port.
    fn open(&mut self, now: i64) -> Option<(i64, Conn)> {
        let port = self.ports.pop_front()?;
        let backend = Ipv4Addr::new(10, 0, 0, 2 + (port % u16::from(BACKENDS)) as u8);
        let one_shot = self.rng.chance(200_000);
        let requests = if one_shot {
            1
        } else {
            self.rng.range(1, 100) as u32
        };
        // The middle connection of every `fault_every`, the kinds in turn.
        let n = self.next_conn_id;
        let every = self.fault_every;
        let fault = (every > 0 && n % every == every / 2)
            .then(|| FAULTS[((n / every.max(1)) % FAULTS.len() as u64) as usize]);
        let fault_at = match fault {
            // on a fresh connection, so that it cannot pass for a keep-alive race
            Some(Fault::FinBeforeResponse) => 1,
            Some(_) => self.rng.range(1, u64::from(requests)) as u32,
            None => 0,
        };
        let requests = if fault.is_some() { fault_at } else { requests };
        self.stats.connections += 1;
        if one_shot {
            self.stats.one_shot += 1;
        }
        self.next_conn_id += 1;
        let conn = Conn {
            client: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port),
            server: SocketAddrV4::new(backend, 8080),
            port,
            c_isn: self.rng.next_u32(),
            s_isn: self.rng.next_u32(),
            c_next: 0,
            s_next: 0,
            c_ipid: self.rng.next_u64() as u16,
            s_ipid: self.rng.next_u64() as u16,
            step: Step::Syn,
            from_client: true,
            msg: Vec::new(),
            pos: 0,
            segs: 0,
            requests_left: requests,
            one_shot,
            kind: ReqKind::Get,
            fault,
            fault_at,
            req_no: 0,
            closer_client: true,
            seg_gap: self.rng.range(20, 60) as i64,
            id: self.next_conn_id,
        };
        Some((now + self.rng.range(0, 2_000) as i64, conn))
    }

    /// Log-uniform integer in lo..=hi.
    fn log_uniform(&mut self, lo: u64, hi: u64) -> usize {
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        let u = self.rng.below(1 << 30) as f64 / f64::from(1u32 << 30);
        (l + u * (h - l)).exp() as usize
    }

    fn body_size(&mut self) -> usize {
        match self.rng.below(10) {
            0..=5 => self.log_uniform(300, 4_000),
            6..=8 => self.log_uniform(4_000, 64_000),
            _ => self.log_uniform(64_000, 250_000),
        }
    }

    /// Writes the next request into `c.msg`.
    fn build_request(&mut self, c: &mut Conn) {
        c.req_no += 1;
        self.stats.requests += 1;
        c.kind = match self.rng.below(100) {
            0..=59 => ReqKind::Get,
            60..=77 => ReqKind::GetChunked,
            78..=89 => ReqKind::Post,
            90..=92 => ReqKind::Head,
            _ => ReqKind::Conditional,
        };
        if c.fault == Some(Fault::ChunkedNoLast) && c.req_no == c.fault_at {
            c.kind = ReqKind::GetChunked;
        }
        if matches!(c.fault, Some(Fault::RstMidBody | Fault::TruncatedCl)) && c.req_no == c.fault_at
        {
            c.kind = ReqKind::Get;
        }
        let id = self.rng.below(1_000_000);
        let xff = self.rng.range(1, 254);
        let rid = self.rng.next_u64();
        let (method, path) = match c.kind {
            ReqKind::Get => ("GET", "/api/v1/items/"),
            ReqKind::GetChunked => ("GET", "/api/v1/stream/"),
            ReqKind::Post => ("POST", "/api/v1/orders/"),
            ReqKind::Head => ("HEAD", "/downloads/file-"),
            ReqKind::Conditional => ("GET", "/api/v1/catalog/"),
        };
        let m = &mut c.msg;
        m.clear();
        let _ = write!(
            m,
            "{method} {path}{id} HTTP/1.1\r\nHost: backend.internal:8080\r\nX-Real-IP: 198.51.100.{xff}\r\nX-Forwarded-For: 198.51.100.{xff}\r\nX-Forwarded-Proto: https\r\nX-Request-ID: {rid:016x}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: application/json\r\n"
        );
        if c.one_shot {
            m.extend_from_slice(b"Connection: close\r\n");
        }
        match c.kind {
            ReqKind::Post => {
                let n = self.log_uniform(100, 20_000);
                let _ = write!(
                    c.msg,
                    "Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
                );
                json_into(&self.pool, &mut self.rng, &mut c.msg, n);
                self.stats.posts += 1;
            }
            ReqKind::Conditional => {
                let _ = write!(c.msg, "If-None-Match: \"{:08x}\"\r\n\r\n", id);
            }
            _ => c.msg.extend_from_slice(b"\r\n"),
        }
    }

    /// Writes the response into `c.msg` (cut short for a fault).
    fn build_response(&mut self, c: &mut Conn, now: i64) {
        let faulty = c.fault.filter(|_| c.req_no == c.fault_at);
        self.stats.responses += u64::from(faulty.is_none());
        let date = http_date(now);
        let conn_hdr = if c.one_shot { "close" } else { "keep-alive" };
        c.msg.clear();
        match c.kind {
            ReqKind::Head => {
                let n = self.body_size();
                let _ = write!(
                    c.msg,
                    "HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: {date}\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: {conn_hdr}\r\n\r\n"
                );
                self.stats.heads += 1;
            }
            ReqKind::Conditional => {
                let _ = write!(
                    c.msg,
                    "HTTP/1.1 304 Not Modified\r\nServer: gunicorn\r\nDate: {date}\r\nETag: \"{:08x}\"\r\nConnection: {conn_hdr}\r\n\r\n",
                    c.req_no
                );
                self.stats.not_modified += 1;
            }
            ReqKind::GetChunked => {
                let n = self.body_size();
                let _ = write!(
                    c.msg,
                    "HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: {date}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n"
                );
                let mut body = std::mem::take(&mut self.scratch);
                body.clear();
                json_into(&self.pool, &mut self.rng, &mut body, n);
                let chunks: Vec<&[u8]> = body.chunks(8_192).collect();
                // a faulty response stops before its last data chunk and has no last-chunk
                let keep = if faulty.is_some() {
                    chunks.len().saturating_sub(1).max(1)
                } else {
                    chunks.len()
                };
                for ch in &chunks[..keep] {
                    let _ = write!(c.msg, "{:x}\r\n", ch.len());
                    c.msg.extend_from_slice(ch);
                    c.msg.extend_from_slice(b"\r\n");
                }
                if faulty.is_none() {
                    c.msg.extend_from_slice(b"0\r\n\r\n");
                }
                self.scratch = body;
                self.stats.chunked += 1;
            }
            ReqKind::Get | ReqKind::Post => {
                let (status, n) = if c.kind == ReqKind::Post {
                    ("201 Created", self.log_uniform(300, 2_000))
                } else if faulty.is_some() {
                    ("200 OK", self.log_uniform(4_000, 250_000))
                } else {
                    ("200 OK", self.body_size())
                };
                let _ = write!(
                    c.msg,
                    "HTTP/1.1 {status}\r\nServer: gunicorn\r\nDate: {date}\r\nContent-Type: application/json\r\nContent-Length: {n}\r\nConnection: {conn_hdr}\r\n\r\n"
                );
                let head_len = c.msg.len();
                json_into(&self.pool, &mut self.rng, &mut c.msg, n);
                if faulty.is_some() {
                    // the backend dies halfway through the body
                    c.msg.truncate(head_len + n / 2);
                }
            }
        }
    }

    /// Appends one frame to the output.
    #[allow(clippy::too_many_arguments)]
    fn packet<W: Write>(
        &mut self,
        w: &mut gatescope::synth::PcapWriter<W>,
        ts: i64,
        c: &mut Conn,
        from_client: bool,
        flags: TcpFlags,
        payload_range: Option<std::ops::Range<usize>>,
        options: &[u8],
    ) -> io::Result<()> {
        let (src, dst, isn, next, peer_isn, peer_next) = if from_client {
            (c.client, c.server, c.c_isn, c.c_next, c.s_isn, c.s_next)
        } else {
            (c.server, c.client, c.s_isn, c.s_next, c.c_isn, c.c_next)
        };
        let seq = if flags.contains(TcpFlags::SYN) {
            isn
        } else {
            isn.wrapping_add(1).wrapping_add(next as u32)
        };
        let ip_id = if from_client {
            c.c_ipid = c.c_ipid.wrapping_add(1);
            c.c_ipid
        } else {
            c.s_ipid = c.s_ipid.wrapping_add(1);
            c.s_ipid
        };
        let seg = Tcp4Segment {
            src,
            dst,
            ip_id,
            ttl: 64,
            seq,
            ack: peer_isn.wrapping_add(1).wrapping_add(peer_next as u32),
            flags,
            window: 65_535,
        };
        let payload = match payload_range {
            Some(r) => &c.msg[r],
            None => &[][..],
        };
        self.frame.clear();
        push_ethernet_ipv4_tcp(&mut self.frame, &seg, options, payload)?;
        w.write_frame(ts, &self.frame)?;
        self.stats.packets += 1;
        Ok(())
    }

    /// Emits the connection's next packet at `ts`; returns when its next one is due, or None
    /// when the connection is over.
    fn step<W: Write>(
        &mut self,
        w: &mut gatescope::synth::PcapWriter<W>,
        ts: i64,
        c: &mut Conn,
    ) -> io::Result<Option<i64>> {
        match c.step {
            Step::Syn => {
                self.packet(w, ts, c, true, TcpFlags::SYN, None, &MSS_OPTION)?;
                c.step = Step::SynAck;
                Ok(Some(ts + RTT))
            }
            Step::SynAck => {
                self.packet(
                    w,
                    ts,
                    c,
                    false,
                    TcpFlags::SYN | TcpFlags::ACK,
                    None,
                    &MSS_OPTION,
                )?;
                c.step = Step::HsAck;
                Ok(Some(ts + 10))
            }
            Step::HsAck => {
                self.packet(w, ts, c, true, TcpFlags::ACK, None, &[])?;
                c.step = Step::Request;
                Ok(Some(ts + self.rng.range(20, 200) as i64))
            }
            Step::Request => {
                self.build_request(c);
                c.from_client = true;
                c.pos = 0;
                c.segs = 0;
                c.step = Step::Data;
                self.step(w, ts, c)
            }
            Step::Response => {
                if c.fault == Some(Fault::FinBeforeResponse) && c.req_no == c.fault_at {
                    self.stats.faults[Fault::FinBeforeResponse.index()] += 1;
                    c.closer_client = false;
                    c.step = Step::Close(0);
                    return self.step(w, ts, c);
                }
                self.build_response(c, ts);
                c.from_client = false;
                c.pos = 0;
                c.segs = 0;
                c.step = Step::Data;
                self.step(w, ts, c)
            }
            Step::Data => {
                let end = (c.pos + MSS).min(c.msg.len());
                let last = end == c.msg.len();
                let flags = if last {
                    TcpFlags::ACK | TcpFlags::PSH
                } else {
                    TcpFlags::ACK
                };
                let from = c.from_client;
                self.packet(w, ts, c, from, flags, Some(c.pos..end), &[])?;
                let n = (end - c.pos) as u64;
                if from {
                    c.c_next += n;
                } else {
                    c.s_next += n;
                }
                c.pos = end;
                c.segs += 1;
                if last || c.segs.is_multiple_of(2) {
                    c.step = Step::Ack;
                    Ok(Some(ts + ACK_DELAY))
                } else {
                    Ok(Some(ts + c.seg_gap))
                }
            }
            Step::Ack => {
                let from = !c.from_client;
                self.packet(w, ts, c, from, TcpFlags::ACK, None, &[])?;
                if c.pos < c.msg.len() {
                    c.step = Step::Data;
                    return Ok(Some(ts + c.seg_gap));
                }
                if c.from_client {
                    // request done: backend think time
                    c.step = Step::Response;
                    return Ok(Some(ts + self.log_uniform(300, 30_000) as i64));
                }
                c.requests_left = c.requests_left.saturating_sub(1);
                let faulty = c.fault.filter(|_| c.req_no == c.fault_at);
                if let Some(f) = faulty {
                    self.stats.faults[f.index()] += 1;
                }
                match faulty {
                    Some(Fault::RstMidBody) => {
                        c.step = Step::Rst;
                        return Ok(Some(ts + self.rng.range(50, 2_000) as i64));
                    }
                    Some(_) => {
                        c.closer_client = false;
                        c.step = Step::Close(0);
                        return Ok(Some(ts + self.rng.range(50, 2_000) as i64));
                    }
                    None => {}
                }
                if c.one_shot {
                    c.closer_client = false;
                    c.step = Step::Close(0);
                    Ok(Some(ts + 30))
                } else if c.requests_left > 0 && !self.draining {
                    c.step = Step::Request;
                    Ok(Some(ts + self.log_uniform(100, 50_000) as i64))
                } else {
                    c.closer_client = true;
                    c.step = Step::Close(0);
                    Ok(Some(ts + self.log_uniform(1_000, 100_000) as i64))
                }
            }
            Step::Close(stage) => {
                // 0: closer FIN, 1: peer ACK, 2: peer FIN, 3: closer ACK
                let from = if stage == 0 || stage == 3 {
                    c.closer_client
                } else {
                    !c.closer_client
                };
                let fin = stage % 2 == 0;
                let flags = if fin {
                    TcpFlags::FIN | TcpFlags::ACK
                } else {
                    TcpFlags::ACK
                };
                self.packet(w, ts, c, from, flags, None, &[])?;
                if fin {
                    if from {
                        c.c_next += 1;
                    } else {
                        c.s_next += 1;
                    }
                }
                if stage == 3 {
                    return Ok(None);
                }
                c.step = Step::Close(stage + 1);
                Ok(Some(ts + if stage == 1 { 40 } else { ACK_DELAY }))
            }
            Step::Rst => {
                self.packet(w, ts, c, false, TcpFlags::RST | TcpFlags::ACK, None, &[])?;
                Ok(None)
            }
        }
    }
}

/// A `Write` that hands full buffers to a writer thread, so that building packets and the
/// kernel's copy into the page cache overlap.
struct ThreadedWriter {
    buf: Vec<u8>,
    full: Option<mpsc::SyncSender<Vec<u8>>>,
    empty: mpsc::Receiver<Vec<u8>>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl ThreadedWriter {
    const BUF: usize = 4 << 20;
    const BUFFERS: usize = 4;

    fn new(mut out: File) -> ThreadedWriter {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(Self::BUFFERS);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 1..Self::BUFFERS {
            let _ = empty_tx.send(Vec::with_capacity(Self::BUF));
        }
        let thread = thread::spawn(move || -> io::Result<()> {
            for mut b in full_rx {
                out.write_all(&b)?;
                b.clear();
                // the generator may already be gone
                let _ = empty_tx.send(b);
            }
            out.flush()
        });
        ThreadedWriter {
            buf: Vec::with_capacity(Self::BUF),
            full: Some(full_tx),
            empty: empty_rx,
            thread: Some(thread),
        }
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.empty.recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.buf, next);
        let sent = self.full.as_ref().map(|tx| tx.send(full));
        match sent {
            Some(Ok(())) => Ok(()),
            // the writer thread stopped: its error is reported by finish()
            _ => self
                .finish_inner()
                .and(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn finish_inner(&mut self) -> io::Result<()> {
        self.full = None;
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked"))),
            None => Ok(()),
        }
    }

    /// Writes what is buffered and waits for the writer thread.
    fn finish(mut self) -> io::Result<()> {
        self.hand_over()?;
        self.finish_inner()
    }
}

impl Write for ThreadedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::BUF {
            self.hand_over()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn bulk(out: &Path, size: u64, seed: u64, concurrent: usize, fault_rate: f64) -> io::Result<()> {
    let started = Instant::now();
    let file = ThreadedWriter::new(File::create(out)?);
    let mut w = PcapOptions::new(LinkType::Ethernet)
        .snaplen(65_535)
        .create(file)?;
    let mut b = Bulk {
        rng: SplitMix64::new(seed),
        pool: json_pool(seed),
        scratch: Vec::new(),
        frame: Vec::with_capacity(2_048),
        stats: BulkStats::default(),
        fault_every: if fault_rate > 0.0 {
            (1.0 / fault_rate.min(1.0)).round() as u64
        } else {
            0
        },
        // client ports cycle through a pool 1.5x the concurrency: a 4-tuple comes back soon
        // after its connection closed
        ports: (0..(concurrent + concurrent / 2).max(2))
            .map(|i| 32_768 + (i % 28_000) as u16)
            .collect(),
        next_conn_id: 0,
        draining: false,
    };
    let mut conns: Vec<Option<Conn>> = Vec::with_capacity(concurrent);
    let mut heap = BinaryHeap::with_capacity(concurrent);
    let start = T0;
    for slot in 0..concurrent {
        match b.open(start + slot as i64 * 50) {
            Some((ts, c)) => {
                heap.push(Reverse((ts, c.id, slot)));
                conns.push(Some(c));
            }
            None => conns.push(None),
        }
    }
    while let Some(Reverse((ts, _, slot))) = heap.pop() {
        let Some(mut c) = conns[slot].take() else {
            continue;
        };
        let next = b.step(&mut w, ts, &mut c)?;
        if !b.draining && w.bytes_written() >= size {
            b.draining = true;
        }
        match next {
            Some(t) => {
                heap.push(Reverse((t, c.id, slot)));
                conns[slot] = Some(c);
            }
            None => {
                b.ports.push_back(c.port);
                // keep the message buffer for the connection that takes over the slot
                let msg = c.msg;
                if !b.draining {
                    let at = ts + b.rng.range(100, 5_000) as i64;
                    if let Some((t, mut nc)) = b.open(at) {
                        nc.msg = msg;
                        heap.push(Reverse((t, nc.id, slot)));
                        conns[slot] = Some(nc);
                    }
                }
            }
        }
    }
    let bytes = w.bytes_written();
    w.into_inner()?.finish()?;
    let secs = started.elapsed().as_secs_f64();
    let s = &b.stats;
    eprintln!("bytes: {bytes}");
    eprintln!("packets: {}", s.packets);
    eprintln!("connections: {}", s.connections);
    eprintln!("requests: {}", s.requests);
    eprintln!("complete_responses: {}", s.responses);
    eprintln!(
        "mix: one_shot_connections={} chunked={} post={} head={} not_modified={}",
        s.one_shot, s.chunked, s.posts, s.heads, s.not_modified
    );
    let mut by_finding: Vec<(&str, u64)> = Vec::new();
    for (i, f) in FAULTS.iter().enumerate() {
        eprintln!(
            "fault {}: {} (gatescope: {})",
            f.name(),
            s.faults[i],
            f.finding()
        );
        match by_finding.iter_mut().find(|(k, _)| *k == f.finding()) {
            Some(e) => e.1 += s.faults[i],
            None => by_finding.push((f.finding(), s.faults[i])),
        }
    }
    let expected: Vec<String> = by_finding.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("expected_findings: {}", expected.join(" "));
    eprintln!(
        "elapsed: {secs:.2} s ({:.0} MB/s)",
        bytes as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}
