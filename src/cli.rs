//! Command line: flags (clap derive), their validation, and the two commands, `analyze` and
//! `live`. Exit codes: 0 no error findings, 1 error findings, 2 the run itself failed.

use crate::capture;
use crate::flow::Backend;
use crate::limits::Limits;
use crate::pipeline::{Analyzer, Collector, Config, Output};
use crate::report::{json::JsonLines, table::TableReport};
use crate::summary::Summary;
use crate::time::{parse_duration, Ts};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "gatescope",
    version,
    about = "Why did the gateway answer 502/504? Reads the proxy↔backend wire (pcap or live) and reports, per connection and request, what went wrong, when, and with what evidence.",
    after_help = "Exit status: 0 no error findings, 1 error findings, 2 the run failed.\nExamples:\n  gatescope analyze capture.pcap\n  tcpdump -i any -w - 'tcp port 8080' | gatescope analyze -\n  sudo gatescope live -i any -f 'tcp port 8080' --backend 8080"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Analyse capture files (pcap/pcapng; `-` reads standard input). Several files are read
    /// as one continuous capture (e.g. rotated with tcpdump -G/-C).
    Analyze(AnalyzeArgs),
    /// Capture on an interface and analyse as packets arrive (needs root or CAP_NET_RAW).
    Live(LiveArgs),
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng); `-` for standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct LiveArgs {
    /// Interface to capture on (`any` for all, as Linux cooked capture).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interface: String,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Stop after this many packets.
    #[arg(long)]
    pub count: Option<u64>,
    /// Also save the raw packets to this pcap file (like tcpdump -w).
    #[arg(long, value_name = "FILE")]
    pub write: Option<String>,
    /// Kernel capture buffer in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub buffer_size: i32,
    /// Drop root privileges to this user once the capture is open (like tcpdump -Z).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Options shared by `analyze` and `live`.
#[derive(Args, Debug)]
pub struct Common {
    /// BPF filter (libpcap syntax), applied while reading.
    #[arg(short = 'f', long = "filter", value_name = "BPF")]
    pub filter: Option<String>,
    /// Which side is the server when the handshake is not in the capture: PORT or HOST:PORT.
    /// Repeatable.
    #[arg(long = "backend", value_name = "HOST:PORT|PORT", value_parser = Backend::parse)]
    pub backends: Vec<Backend>,
    /// First response byte later than this after the request's last byte is slow_first_byte.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub slow_first_byte: std::time::Duration,
    /// Response heads larger than this are head_too_large (nginx proxy_buffer_size: 4096 on x86).
    #[arg(long, default_value_t = 4096)]
    pub max_head_bytes: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show connections without findings too (table format).
    #[arg(long)]
    pub all: bool,
    /// Worker threads (connections are sharded by 4-tuple; output is identical for any value).
    /// Default: the number of cores.
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Add a field to every JSON line (e.g. --tag host=web1 --tag capture=eth0), for log
    /// pipelines.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Limit: connections tracked at once (the longest idle is evicted and reported).
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Limit: out-of-order bytes held per direction (beyond it the hole becomes a capture gap).
    #[arg(long, default_value_t = Limits::default().max_ooo_bytes)]
    pub max_ooo_bytes: usize,
    /// Limit: out-of-order segments held per direction.
    #[arg(long, default_value_t = Limits::default().max_ooo_segments)]
    pub max_ooo_segments: usize,
    /// Limit: out-of-order bytes held by all connections together.
    #[arg(long, default_value_t = Limits::default().max_ooo_total)]
    pub max_ooo_total: usize,
    /// Limit: bytes of heads still being collected, all connections together.
    #[arg(long, default_value_t = Limits::default().max_head_total)]
    pub max_head_total: usize,
    /// Limit: headers per message.
    #[arg(long, default_value_t = Limits::default().max_headers)]
    pub max_headers: usize,
    /// Limit: bytes buffered for one message head (heads beyond it cannot be parsed).
    #[arg(long, default_value_t = Limits::default().head_buffer_cap)]
    pub head_buffer_cap: usize,
    /// Limit: trailer bytes after the last chunk.
    #[arg(long, default_value_t = Limits::default().max_trailer_bytes)]
    pub max_trailer_bytes: usize,
    /// Limit: bytes of a chunk-size line including extensions.
    #[arg(long, default_value_t = Limits::default().max_chunk_line)]
    pub max_chunk_line: usize,
    /// Limit: requests awaiting responses on one connection.
    #[arg(long, default_value_t = Limits::default().max_pending)]
    pub max_pending: usize,
    /// Connections idle this long (packet time) are closed and reported.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Print the values of Authorization, Proxy-Authorization, Cookie and Set-Cookie headers in
    /// evidence (hidden by default).
    #[arg(long)]
    pub show_secrets: bool,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, _)) if crate::record::FIELDS.contains(&k) => Err(format!(
            "'{k}' is a field of gatescope's own records (a tag would overwrite it); pick another key, e.g. capture_{k}"
        )),
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// Worker threads: at least one, and not more than gatescope can usefully start.
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a thread count from 1 to {MAX_THREADS}"
        )),
    }
}

/// Far beyond any core count this runs on: each worker holds its own flow table and
/// buffers, so thousands would cost memory and startup for nothing.
const MAX_THREADS: usize = 256;

impl Common {
    fn config(&self) -> Config {
        let limits = Limits {
            max_connections: self.max_connections.max(1),
            max_ooo_bytes: self.max_ooo_bytes,
            max_ooo_segments: self.max_ooo_segments,
            max_ooo_total: self.max_ooo_total,
            max_head_total: self.max_head_total,
            max_head_bytes: self.max_head_bytes,
            head_buffer_cap: self.head_buffer_cap.max(self.max_head_bytes),
            max_headers: self.max_headers,
            max_trailer_bytes: self.max_trailer_bytes,
            max_chunk_line: self.max_chunk_line.max(3),
            max_pending: self.max_pending.max(1),
            idle_timeout_us: self.idle_timeout.as_micros() as u64,
            slow_first_byte_us: self.slow_first_byte.as_micros() as u64,
            show_secrets: self.show_secrets,
        };
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        Config {
            limits: Arc::new(limits),
            backends: Arc::new(self.backends.clone()),
            threads: threads.clamp(1, MAX_THREADS),
        }
    }

    fn output(&self, live: bool) -> Box<dyn Output> {
        let stdout = io::stdout();
        match self.format {
            Format::Json => {
                let extra = self
                    .tags
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                Box::new(JsonLines::new(
                    io::BufWriter::with_capacity(1 << 16, stdout),
                    extra,
                    live,
                ))
            }
            Format::Table => {
                let t = TableReport::new(io::BufWriter::new(stdout), self.all);
                if live {
                    Box::new(t.with_feed(Box::new(io::stderr())))
                } else {
                    Box::new(t)
                }
            }
        }
    }
}

/// What `main` turns into an exit code.
pub enum Outcome {
    Clean,
    Findings,
    Failed,
}

fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

fn conclude(summary: &Summary, err: Option<io::Error>, run_failed: bool) -> Outcome {
    if let Some(e) = err {
        if is_broken_pipe(&e) {
            return Outcome::Clean;
        }
        eprintln!("gatescope: cannot write the report: {e}");
        return Outcome::Failed;
    }
    if run_failed {
        Outcome::Failed
    } else if summary.errors() > 0 {
        Outcome::Findings
    } else {
        Outcome::Clean
    }
}

pub fn analyze(args: &AnalyzeArgs) -> Outcome {
    let cfg = args.common.config();
    let mut analyzer = Analyzer::new(&cfg, Collector::new(args.common.output(false)));
    let mut errors = Vec::new();
    for f in &args.files {
        if let Err(e) = capture::read_file(f, args.common.filter.as_deref(), &mut analyzer) {
            eprintln!("gatescope: {e}");
            errors.push(e);
        }
        if analyzer.output_failed() {
            break;
        }
    }
    analyzer.read_stats().files = args.files.len() as u64;
    let failed = !errors.is_empty();
    let (summary, err) = analyzer.finish(errors);
    conclude(&summary, err, failed)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// What live capture says on stderr while it runs, so that a silent capture is never
/// mistaken for a healthy backend: once, if no packet came in the first seconds (a wrong
/// interface or filter), how to check; and on a terminal, every few seconds, the packets
/// read and the kernel's drops so far.
struct LiveStatus {
    started: std::time::Instant,
    last: std::time::Instant,
    warned: bool,
    progress: bool,
    what: String,
}

/// No packet in this long is worth a word.
const LIVE_QUIET_WARN: std::time::Duration = std::time::Duration::from_secs(5);
/// Progress lines on a terminal, this far apart.
const LIVE_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl LiveStatus {
    fn new(interface: &str, filter: Option<&str>) -> LiveStatus {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        LiveStatus {
            started: now,
            last: now,
            warned: false,
            progress: io::stderr().is_terminal(),
            what: match filter {
                Some(f) => format!("on '{interface}' with filter '{f}'"),
                None => format!("on '{interface}'"),
            },
        }
    }

    fn tick(&mut self, packets: u64, cap: &mut pcap::Capture<pcap::Active>) {
        let now = std::time::Instant::now();
        if packets == 0 && !self.warned && now - self.started >= LIVE_QUIET_WARN {
            self.warned = true;
            eprintln!(
                "gatescope: no packets {} in {} s: check that the proxy's backend traffic crosses this interface (ip route get BACKEND_IP) and that the filter matches it (try -i any, or no -f)",
                self.what,
                LIVE_QUIET_WARN.as_secs()
            );
        }
        if self.progress && now - self.last >= LIVE_PROGRESS_EVERY {
            self.last = now;
            let drops = cap
                .stats()
                .map(|st| format!(", {} dropped by the kernel", st.dropped))
                .unwrap_or_default();
            eprintln!(
                "gatescope: {} s: {packets} packets{drops}",
                (now - self.started).as_secs()
            );
        }
    }
}

fn drop_privileges(user: &str) -> Result<(), String> {
    let name = std::ffi::CString::new(user).map_err(|_| format!("bad user name '{user}'"))?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we read it at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            return Err(format!("no such user '{user}'"));
        }
        let (uid, gid) = ((*pw).pw_uid, (*pw).pw_gid);
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(format!(
                "cannot switch to user '{user}': {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Waits until `fd` is readable or `ms` milliseconds pass (or a signal arrives).
fn wait_readable(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut p, 1, ms);
    }
}

fn open_live(args: &LiveArgs) -> Result<pcap::Capture<pcap::Active>, String> {
    let explain = |e: pcap::Error| {
        let msg = e.to_string();
        if msg.contains("ermission") || msg.contains("not permitted") {
            format!(
                "cannot capture on '{}': {msg}. Live capture needs root or the CAP_NET_RAW and CAP_NET_ADMIN capabilities: run it with sudo, or `sudo setcap cap_net_raw,cap_net_admin=eip $(command -v gatescope)`",
                args.interface
            )
        } else if msg.contains("No such device")
            || msg.contains("doesn't exist")
            || msg.contains("no such")
        {
            let names: Vec<String> = pcap::Device::list()
                .map(|v| v.into_iter().map(|d| d.name).collect())
                .unwrap_or_default();
            format!(
                "no interface '{}' ({msg}); available: {}",
                args.interface,
                names.join(", ")
            )
        } else {
            format!("cannot capture on '{}': {msg}", args.interface)
        }
    };
    // Not immediate mode: on Linux that makes libpcap use TPACKET_V2, whose ring has one
    // slot per packet, each as large as the snaplen (256 KiB), so a 64 MiB buffer held only
    // ~250 packets and bursts were dropped. TPACKET_V3 packs packets into blocks; the kernel
    // hands a block over when it is full or after the timeout, so findings are at most
    // LIVE_TIMEOUT_MS late. Non-blocking so the read loop wakes up on its own (poll with a
    // timeout) to advance packet time and to stop.
    let cap = pcap::Capture::from_device(args.interface.as_str())
        .map_err(explain)?
        .snaplen(262_144)
        .promisc(false)
        .immediate_mode(false)
        .timeout(LIVE_TIMEOUT_MS)
        .buffer_size(args.buffer_size)
        .open()
        .map_err(explain)?
        .setnonblock()
        .map_err(explain)?;
    Ok(cap)
}

/// The longest a captured packet waits in the kernel before gatescope sees it (ms).
const LIVE_TIMEOUT_MS: i32 = 50;

pub fn live(args: &LiveArgs) -> Outcome {
    let mut cap = match open_live(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatescope: {e}");
            return Outcome::Failed;
        }
    };
    if let Some(f) = &args.common.filter {
        if let Err(e) = capture::apply_filter(&mut cap, f) {
            eprintln!("gatescope: invalid filter '{f}': {e}");
            return Outcome::Failed;
        }
    }
    let link = cap.get_datalink().0;
    if !crate::decode::linktype::supported(link) {
        eprintln!(
            "gatescope: interface '{}' has link type {link}, which gatescope cannot decode",
            args.interface
        );
        return Outcome::Failed;
    }
    let mut save = match &args.write {
        Some(path) => match cap.savefile(path) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("gatescope: cannot write '{path}': {e}");
                return Outcome::Failed;
            }
        },
        None => None,
    };
    if let Some(u) = &args.user {
        if let Err(e) = drop_privileges(u) {
            eprintln!("gatescope: {e}");
            return Outcome::Failed;
        }
    }
    install_signal_handlers();
    let cfg = args.common.config();
    let mut analyzer = Analyzer::new(&cfg, Collector::new(args.common.output(true)));
    eprintln!("gatescope: capturing on {}", args.interface);
    let started = std::time::Instant::now();
    // Packet time, advanced between packets by the read loop's own clock so waits are
    // reported while they last.
    let mut last_packet: Option<(Ts, std::time::Instant)> = None;
    let mut packets = 0u64;
    let mut idle_reads = 0u32;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&cap);
    let mut errors = Vec::new();
    let mut status = LiveStatus::new(&args.interface, args.common.filter.as_deref());
    while !STOP.load(Ordering::SeqCst) && !analyzer.output_failed() {
        status.tick(packets, &mut cap);
        if args.duration.is_some_and(|d| started.elapsed() >= d)
            || args.count.is_some_and(|n| packets >= n)
        {
            break;
        }
        match cap.next_packet() {
            Ok(p) => {
                idle_reads = 0;
                packets += 1;
                let ts = Ts::from_timeval(p.header.ts.tv_sec, p.header.ts.tv_usec);
                if let Some(s) = save.as_mut() {
                    s.write(&p);
                }
                analyzer.packet(link, ts, p.data, p.header.len);
                last_packet = Some((ts, std::time::Instant::now()));
            }
            Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => {
                // Nothing to read: wait for the descriptor (at most 100 ms), and let packet
                // time move on by the loop's own clock.
                idle_reads += 1;
                if idle_reads > 1 {
                    wait_readable(fd, 100);
                }
                if let Some((ts, at)) = last_packet {
                    analyzer.advance(Ts(ts.0 + at.elapsed().as_micros() as i64));
                }
            }
            Err(e) => {
                let msg = format!("capture on '{}' failed: {e}", args.interface);
                eprintln!("gatescope: {msg}");
                errors.push(msg);
                break;
            }
        }
    }
    if let Some(mut s) = save.take() {
        let _ = s.flush();
    }
    if let Ok(st) = cap.stats() {
        let r = analyzer.read_stats();
        r.kernel_received = Some(u64::from(st.received));
        r.kernel_dropped = Some(u64::from(st.dropped));
        r.interface_dropped = Some(u64::from(st.if_dropped));
        // libpcap skips the outgoing copy of every loopback packet itself, after the
        // kernel has counted both copies.
        let twice = if args.interface == "lo" {
            " (on lo the kernel counts each packet twice, as sent and as received)"
        } else {
            ""
        };
        eprintln!(
            "gatescope: {} packets received by the filter{twice}, {} dropped by the kernel, {} dropped by the interface",
            st.received, st.dropped, st.if_dropped
        );
    }
    let failed = !errors.is_empty();
    let (summary, err) = analyzer.finish(errors);
    conclude(&summary, err, failed)
}
