//! End to end against real gateways: nginx and HAProxy in front of
//! `gatescope-faulty-backend`, with the proxy↔backend leg captured by gatescope.
//!
//! For every fault the backend can produce, one request goes through the gateway (fresh client
//! connection, sequential). The gateway is the oracle: its status, its error log and its
//! termination state say what went wrong, and gatescope must have said the same thing from the
//! wire. Per request:
//!
//! - the finding kinds the [`CASES`] table expects for that request are on the backend exchange
//!   whose `target` is the request target (connect failures, which have no request on the
//!   wire, are matched by the port the gateway tried to connect to);
//! - a request the gateway failed (502/504, a gateway-made 503, a truncated or non-HTTP
//!   response, or no response at all) has at least one `error` finding;
//! - a request the gateway served cleanly has no error finding unless the table says gatescope
//!   must flag it anyway (a malformed response a gateway chose to pass through).
//!
//! Then the capture file is analysed offline and must give the same (kind, target) set.
//! The measured behaviour of both gateways is written to `target/e2e-gateways.md`.
//!
//! Needs root (capture on `lo`), nginx and haproxy (installed with apt-get when missing and
//! root). Without them the test prints why and passes, unless `CI=true`, where it fails.
//!
//! Knobs (environment):
//! - `GATESCOPE_E2E_CAPTURE=live|tcpdump|none`: how the backend leg is captured (see
//!   [`CaptureTool`]); `none` runs the gateways only and checks nothing about gatescope (to
//!   measure gateway behaviour while the analyzer is being written).
//! - `GATESCOPE_E2E_ONLY=nginx|haproxy`: run one gateway.
//! - `GATESCOPE_E2E_KEEP=1`: keep each run's directory (capture, configs, logs); it is always
//!   kept when the run fails.
//!
//! Every process is started here and stopped by its PID, also when an assertion fails
//! ([`Proc`]'s `Drop`). All waits are bounded.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The expectations

/// Where gatescope's finding for a case is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    /// On the backend exchange whose request target is the case's target.
    Backend,
    /// On a connection to a port nobody listens on (the gateway's `/refused/` route).
    Refused,
    /// On a connection to a listener whose accept queue is full, so SYNs go unanswered
    /// (the gateway's `/unanswered/` route).
    Unanswered,
    /// On a connection to a listener whose accept queue is full until shortly after the
    /// gateway's first SYN, so that only its retransmission is answered (the gateway's
    /// `/slowaccept/` route; see [`SlowAccept`]).
    SlowAccept,
}

/// A case's request body, sent with Content-Length.
#[derive(Clone, Copy)]
enum Body {
    None,
    Text(&'static str),
    /// This many filler bytes.
    Filler(usize),
}

impl Body {
    fn bytes(self) -> Option<Vec<u8>> {
        match self {
            Body::None => None,
            Body::Text(t) => Some(t.as_bytes().to_vec()),
            Body::Filler(n) => Some(vec![b'u'; n]),
        }
    }
}

struct Case {
    /// The fault's name, as in the table and the backend's `/fault/<name>`.
    name: &'static str,
    method: &'static str,
    target: &'static str,
    body: Body,
    expect_continue: bool,
    /// Finding kinds gatescope must report for this request.
    expect: &'static [&'static str],
    /// Kinds that may appear as well (anything else of severity `error` fails the test).
    allow: &'static [&'static str],
    leg: Leg,
}

const fn get(name: &'static str, target: &'static str, expect: &'static [&'static str]) -> Case {
    Case {
        name,
        method: "GET",
        target,
        body: Body::None,
        expect_continue: false,
        expect,
        allow: &[],
        leg: Leg::Backend,
    }
}

/// One row per fault: what gatescope must say about the backend exchange. The keep-alive race
/// is not in here: it needs two requests and a paused gateway (see [`run_keepalive_race`]).
const CASES: &[Case] = &[
    // Clean traffic: no error finding allowed.
    get("ok", "/ok", &[]),
    Case {
        method: "HEAD",
        ..get("head", "/ok/head", &[])
    },
    get("chunked", "/chunked", &[]),
    get("close-delimited", "/close-delimited", &[]),
    get("204", "/204", &[]),
    get("304", "/304", &[]),
    Case {
        method: "POST",
        body: Body::Text("a request body that waits for 100-continue"),
        expect_continue: true,
        ..get("post-expect-100", "/ok/post-expect", &[])
    },
    // Faults.
    get(
        "rst-before-response",
        "/fault/rst-before-response",
        &["reset_before_response"],
    ),
    get("rst-mid-head", "/fault/rst-mid-head", &["truncated_head"]),
    get("rst-mid-body", "/fault/rst-mid-body", &["truncated_body"]),
    get(
        "fin-before-response",
        "/fault/fin-before-response",
        &["closed_before_response"],
    ),
    // Routed to a retrying upstream (see RETRY_ONCE_TARGET): the gateway sends it again and
    // the backend answers the second time.
    get(
        "fin-before-response, retried by the gateway",
        RETRY_ONCE_TARGET,
        &["closed_before_response"],
    ),
    get("fin-mid-head", "/fault/fin-mid-head", &["truncated_head"]),
    get("fin-mid-body", "/fault/fin-mid-body", &["truncated_body"]),
    get(
        "chunked-no-last-chunk",
        "/fault/chunked-no-last-chunk",
        &["truncated_body"],
    ),
    get(
        "bad-chunk-size",
        "/fault/bad-chunk-size",
        &["invalid_chunk"],
    ),
    get(
        "malformed-status-line",
        "/fault/malformed-status-line",
        &["malformed_status_line"],
    ),
    get("http09", "/fault/http09", &["malformed_status_line"]),
    get(
        "header-no-colon",
        "/fault/header-no-colon",
        &["malformed_header"],
    ),
    get(
        "header-space-before-colon",
        "/fault/header-space-before-colon",
        &["malformed_header"],
    ),
    get(
        "header-obs-fold",
        "/fault/header-obs-fold",
        &["malformed_header"],
    ),
    get("header-nul", "/fault/header-nul", &["malformed_header"]),
    get(
        "head-too-large",
        "/fault/head-too-large",
        &["head_too_large"],
    ),
    get(
        "cl-and-te",
        "/fault/cl-and-te",
        &["content_length_with_chunked"],
    ),
    get(
        "duplicate-cl",
        "/fault/duplicate-cl",
        &["duplicate_content_length"],
    ),
    get("excess-data", "/fault/excess-data", &["excess_data"]),
    // proxy_read_timeout / timeout server are 2 s.
    get(
        "slow-first-byte 3 s (> gateway timeout)",
        "/fault/slow-first-byte?ms=3000",
        &["abandoned_by_client", "slow_first_byte"],
    ),
    // Twice more (other paths, same fault): three give-ups at the gateway's read timeout,
    // which the summary must name as a timer of that length (see `check_timeouts`).
    get(
        "slow-first-byte 3 s, second request",
        "/fault/slow-first-byte/2?ms=3000",
        &["abandoned_by_client", "slow_first_byte"],
    ),
    get(
        "slow-first-byte 3 s, third request",
        "/fault/slow-first-byte/3?ms=3000",
        &["abandoned_by_client", "slow_first_byte"],
    ),
    // gatescope's default --slow-first-byte is 1 s.
    get(
        "slow-first-byte 1.5 s (< gateway timeout)",
        "/fault/slow-first-byte?ms=1500",
        &["slow_first_byte"],
    ),
    get(
        "backend-503",
        "/fault/backend-503",
        &["backend_error_status"],
    ),
    // 512 KiB: the gateway is still sending when the 413 and the reset come back (nginx's
    // client_max_body_size is 1m; above client_body_buffer_size, nginx sends the body from
    // a temporary file, as it does by default with any body over 16k). Which the gateway
    // sees first, the 413 or its failed write, is a race it runs itself (nginx with the
    // body in memory read the 413 first and passed it on): either way the reset is the
    // error.
    // The same upload, and a backend that resets while reading it (no answer).
    Case {
        method: "POST",
        body: Body::Filler(512 << 10),
        ..get(
            "RST while reading the request body",
            "/fault/rst-reading-body",
            &["reset_before_response"],
        )
    },
    Case {
        method: "POST",
        body: Body::Filler(512 << 10),
        ..get(
            "413 before the body, then RST",
            "/fault/early-response",
            &["early_response", "reset_during_request"],
        )
    },
    Case {
        leg: Leg::Refused,
        ..get(
            "connect refused (no listener)",
            "/refused/x",
            &["connect_refused"],
        )
    },
    Case {
        leg: Leg::Unanswered,
        ..get(
            "SYN unanswered (accept queue full)",
            "/unanswered/x",
            &["connect_timeout"],
        )
    },
    Case {
        leg: Leg::SlowAccept,
        ..get(
            "first SYN dropped (accept queue full for 0.5 s)",
            "/slowaccept/x",
            &["slow_connect"],
        )
    },
];

/// The keep-alive race: the first request arms the backend to close its connection after
/// [`RACE_IDLE_MS`] idle; the second is sent while the gateway is paused (SIGSTOP) so that the
/// backend's FIN reaches the gateway's socket before the gateway can see it.
const RACE_ARM_TARGET: &str = "/fault/keepalive-race?ms=300";
const RACE_IDLE_MS: u64 = 300;
const RACE_TARGET: &str = "/ok/after-keepalive-race";
/// The race again behind nginx, with a GET on a location where nginx retries
/// (`proxy_next_upstream error timeout`, its default): the reset request is sent again on a
/// new connection and answered, and gatescope's retries must say so (see [`check_retries`]).
const RETRY_RACE_TARGET: &str = "/ok/after-keepalive-race-retried";
/// A backend that closes before answering, once: both gateways route this path to an
/// upstream that retries (nginx `proxy_next_upstream error timeout` over two entries of the
/// backend, HAProxy `retries 1` with `retry-on empty-response`), so the client gets the
/// second attempt's 200 and gatescope's retries must say `answered` 200.
const RETRY_ONCE_TARGET: &str = "/fault/fin-before-response-once";

/// The gateways' timeouts, as rendered into their configs.
const GATEWAY_READ_TIMEOUT: &str = "2s";
const GATEWAY_CONNECT_TIMEOUT_MS: u64 = 1500;

/// Client-side limits.
const CLIENT_DEADLINE: Duration = Duration::from_secs(8);
const PAUSE_BETWEEN_REQUESTS: Duration = Duration::from_millis(60);

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn gateways_end_to_end() {
    let Some(env) = preflight() else { return };
    let only = std::env::var("GATESCOPE_E2E_ONLY").unwrap_or_default();
    let mut runs = Vec::new();
    for gw in [Gateway::Nginx, Gateway::Haproxy] {
        if !only.is_empty() && only != gw.name() {
            continue;
        }
        match run_gateway(gw, &env) {
            Ok(run) => runs.push(run),
            Err(Skip(reason)) => {
                if ci() {
                    panic!("{}: cannot run under CI=true: {reason}", gw.name());
                }
                eprintln!("e2e_gateways: skipping {}: {reason}", gw.name());
            }
        }
    }
    if runs.is_empty() {
        // Only reachable with GATESCOPE_E2E_ONLY naming no gateway; under CI that would pass
        // having checked nothing.
        assert!(
            !ci(),
            "GATESCOPE_E2E_ONLY={only:?} names no gateway (nginx, haproxy)"
        );
        return;
    }
    let md = markdown(&runs, env.tool);
    let out = target_dir().join("e2e-gateways.md");
    fs::write(&out, &md).expect("write e2e-gateways.md");
    eprintln!("{md}\n(written to {})", out.display());

    let mut failures = Vec::new();
    for run in &runs {
        failures.extend(
            run.failures
                .iter()
                .map(|f| format!("{}: {f}", run.gateway.name())),
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatch(es) between the gateways and gatescope:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

struct Env {
    tool: CaptureTool,
    nginx: PathBuf,
    haproxy: PathBuf,
    tcpdump: Option<PathBuf>,
}

/// Raised when the environment (not the code) prevents a run.
struct Skip(String);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Checks root and tools; installs the gateways when missing. `None`: skip.
fn preflight() -> Option<Env> {
    let skip = |reason: String| -> Option<Env> {
        assert!(!ci(), "e2e_gateways cannot run under CI=true: {reason}");
        eprintln!("e2e_gateways: skipped: {reason}");
        None
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tool = capture_tool();
    let mut wanted = vec!["nginx", "haproxy"];
    if tool == CaptureTool::Tcpdump {
        wanted.push("tcpdump");
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !missing.is_empty() {
        let line = format!("sudo apt-get install -y {}", missing.join(" "));
        if !root {
            return skip(format!("{} missing; run: {line}", missing.join(", ")));
        }
        eprintln!(
            "e2e_gateways: {} missing; installing with apt-get",
            missing.join(", ")
        );
        if !apt_install(&missing) {
            return skip(format!(
                "{} missing and apt-get failed; run: {line}",
                missing.join(", ")
            ));
        }
    }
    if !root {
        return skip(
            "needs root to capture on lo and to pause the gateway (run the test as root)".into(),
        );
    }
    let (Some(nginx), Some(haproxy)) = (find_tool("nginx"), find_tool("haproxy")) else {
        return skip(
            "nginx/haproxy still missing; run: sudo apt-get install -y nginx haproxy".into(),
        );
    };
    Some(Env {
        tool,
        nginx,
        haproxy,
        tcpdump: find_tool("tcpdump"),
    })
}

/// `apt-get install -y PKGS`, with one `apt-get update` and retry when the first try fails.
fn apt_install(pkgs: &[&str]) -> bool {
    let install = || {
        run_bounded(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(240),
        )
    };
    install()
        || (run_bounded(
            Command::new("apt-get").arg("update"),
            Duration::from_secs(120),
        ) && install())
}

// ---------------------------------------------------------------------------------------------
// One gateway run

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gateway {
    Nginx,
    Haproxy,
}

impl Gateway {
    fn name(self) -> &'static str {
        match self {
            Gateway::Nginx => "nginx",
            Gateway::Haproxy => "haproxy",
        }
    }
}

/// What one request looked like from every side.
struct Observed {
    name: String,
    method: &'static str,
    target: String,
    got: Got,
    /// Gateway log: nginx access-log status/upstream status, or HAProxy status + %tsc.
    gw_status: String,
    /// nginx error-log lines for this request (level and text), or the HAProxy log line.
    gw_log: Vec<String>,
    /// HAProxy termination state (4 chars).
    tsc: Option<String>,
    /// gatescope: kind → severity, for this request.
    kinds: BTreeMap<String, String>,
    /// gatescope messages, for the report.
    messages: Vec<String>,
}

struct Run {
    gateway: Gateway,
    observed: Vec<Observed>,
    failures: Vec<String>,
    notes: Vec<String>,
}

fn run_gateway(gw: Gateway, env: &Env) -> Result<Run, Skip> {
    let dir = Evidence(Some(
        tempfile::Builder::new()
            .prefix(&format!("gatescope-e2e-{}-", gw.name()))
            .tempdir()
            .expect("tempdir"),
    ));
    let d = dir.path().to_path_buf();
    let d = d.as_path();

    let backend = start_backend(d);
    let backend_port = backend.port;
    let refused_port = free_port();
    let blackhole = Blackhole::new();
    let slow_accept = SlowAccept::new();
    let gw_port = free_port();
    let ups = Upstreams {
        backend: backend.port,
        refused: refused_port,
        unanswered: blackhole.as_ref().map_or(refused_port, |b| b.port),
        slow: slow_accept.as_ref().map_or(refused_port, |s| s.port),
    };
    let gateway = start_gateway(gw, env, d, gw_port, &ups);
    wait_connect(gw_port, &gateway.proc, Duration::from_secs(10));

    let mut notes = Vec::new();
    let unanswered_port = blackhole.as_ref().map(|b| b.port);
    if blackhole.is_none() {
        notes.push(
            "SYN-unanswered case not run: no iptables/nft here and the full-accept-queue listener did not drop SYNs"
                .to_string(),
        );
    }
    let slow_port = slow_accept.as_ref().map(|s| s.port);
    if slow_accept.is_none() {
        notes.push(
            "slow-accept case not run: the full-accept-queue listener did not drop SYNs"
                .to_string(),
        );
    }
    let mut filter = format!("tcp port {} or tcp port {}", backend.port, refused_port);
    for p in [unanswered_port, slow_port].into_iter().flatten() {
        let _ = write!(filter, " or tcp port {p}");
    }
    let capture = match env.tool {
        CaptureTool::None => None,
        tool => Some(start_capture(tool, env, &filter, d)?),
    };

    // Requests. The race goes first, while the gateway's keep-alive pool is empty, so that
    // the armed connection is the one the gateway reuses.
    let mut sent: Vec<(String, &'static str, String, Leg, Got)> = Vec::new();
    for (name, method, target, got) in
        run_keepalive_race(gw_port, &gateway, &backend, "POST", RACE_TARGET)
    {
        sent.push((name, method, target, Leg::Backend, got));
    }
    if gw == Gateway::Nginx {
        thread::sleep(PAUSE_BETWEEN_REQUESTS);
        for (name, method, target, got) in
            run_keepalive_race(gw_port, &gateway, &backend, "GET", RETRY_RACE_TARGET)
        {
            sent.push((name, method, target, Leg::Backend, got));
        }
    }
    for case in CASES {
        if case.leg == Leg::Unanswered && blackhole.is_none() {
            continue;
        }
        if case.leg == Leg::SlowAccept && slow_accept.is_none() {
            continue;
        }
        thread::sleep(PAUSE_BETWEEN_REQUESTS);
        if case.leg == Leg::SlowAccept {
            // Right before the request: the gateway's first SYN goes out within
            // milliseconds, half a second before the queue frees, and its retransmission
            // half a second after.
            if let Some(s) = &slow_accept {
                s.open_soon();
            }
        }
        let req = Req {
            method: case.method,
            target: case.target.to_string(),
            body: case.body.bytes(),
            expect_continue: case.expect_continue,
        };
        let got = send_request(gw_port, &req);
        sent.push((
            case.name.to_string(),
            case.method,
            case.target.to_string(),
            case.leg,
            got,
        ));
    }
    // Let the last packets reach the capture.
    thread::sleep(Duration::from_millis(300));

    let records = match capture {
        Some(c) => Some(c.stop()?),
        None => None,
    };
    let offline = match (&records, env.tool) {
        (Some(_), CaptureTool::GatescopeLive) => Some(analyze(&d.join("leg.pcap"))),
        _ => None,
    };
    let mut gateway = gateway;
    let stop = gateway.proc.stop_signal;
    gateway.proc.stop(stop, Duration::from_secs(5));
    drop(backend);
    drop(blackhole);
    drop(slow_accept);

    // The gateway's side of the story.
    let logs = GatewayLogs::read(gw, d);

    let mut run = Run {
        gateway: gw,
        observed: Vec::new(),
        failures: Vec::new(),
        notes,
    };
    let findings = records.as_deref().map(Findings::from_records);
    for (name, method, target, leg, got) in sent {
        let (gw_status, gw_log, tsc) = logs.for_request(method, &target);
        let mut obs = Observed {
            name,
            method,
            target,
            got,
            gw_status,
            gw_log,
            tsc,
            kinds: BTreeMap::new(),
            messages: Vec::new(),
        };
        if let Some(f) = &findings {
            let port = match leg {
                Leg::Backend => backend_port,
                Leg::Refused => refused_port,
                Leg::Unanswered => unanswered_port.unwrap_or(0),
                Leg::SlowAccept => slow_port.unwrap_or(0),
            };
            for fd in f.for_request(leg, &obs.target, port) {
                obs.kinds.insert(fd.kind.clone(), fd.severity.clone());
                obs.messages.push(format!("{}: {}", fd.kind, fd.message));
            }
        }
        run.observed.push(obs);
    }

    if let (Some(records), Some(f)) = (&records, &findings) {
        check(&mut run, f, records);
        check_timeouts(&mut run, records);
        check_idle_close(&mut run, records);
        check_retries(&mut run, f, records);
    }
    if let (Some(live), Some(offline)) = (&findings, &offline) {
        let a = live.kind_keys();
        let b = Findings::from_records(offline).kind_keys();
        if a != b {
            run.failures.push(format!(
                "live and offline analysis disagree: only live {:?}; only offline {:?}",
                a.difference(&b).collect::<Vec<_>>(),
                b.difference(&a).collect::<Vec<_>>()
            ));
        }
    }
    if !run.failures.is_empty() || keep_evidence() {
        let kept = dir.keep();
        run.notes
            .push(format!("evidence kept in {}", kept.display()));
    }
    Ok(run)
}

fn keep_evidence() -> bool {
    std::env::var("GATESCOPE_E2E_KEEP").is_ok_and(|v| v == "1")
}

/// The run's directory (capture, configs, gateway and backend logs): deleted after a clean
/// run, kept (and its path printed) after a failure or a panic, or with `GATESCOPE_E2E_KEEP=1`.
struct Evidence(Option<tempfile::TempDir>);

impl Evidence {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("evidence dir").path()
    }

    fn keep(mut self) -> PathBuf {
        let kept = self.0.take().expect("evidence dir").keep();
        eprintln!("e2e_gateways: evidence kept in {}", kept.display());
        kept
    }
}

impl Drop for Evidence {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("e2e_gateways: evidence kept in {}", d.keep().display());
            }
        }
    }
}

/// The per-request assertions (see the module doc).
fn check(run: &mut Run, findings: &Findings, records: &[Value]) {
    let gw = run.gateway;
    for obs in &run.observed {
        let case = CASES.iter().find(|c| c.name == obs.name);
        let (expect, allow): (Vec<&str>, Vec<&str>) = match case {
            Some(c) => (c.expect.to_vec(), c.allow.to_vec()),
            None => race_expectation(obs, findings),
        };
        let failed = obs.got.gateway_failed(obs.tsc.as_deref());
        let errors: Vec<&String> = obs
            .kinds
            .iter()
            .filter(|(_, s)| s.as_str() == "error")
            .map(|(k, _)| k)
            .collect();
        let what = format!(
            "{} {} ({}; client got {}; gateway log: {}{})",
            obs.method,
            obs.target,
            obs.name,
            obs.got.describe(),
            obs.gw_status,
            obs.gw_log
                .first()
                .map_or(String::new(), |l| format!(", {l}")),
        );
        for k in &expect {
            if !obs.kinds.contains_key(*k) {
                run.failures.push(format!(
                    "{what}: expected finding {k}, gatescope reported {:?}",
                    obs.messages
                ));
            }
        }
        for k in &errors {
            if !expect.contains(&k.as_str()) && !allow.contains(&k.as_str()) {
                run.failures
                    .push(format!("{what}: unexpected error finding {k}"));
            }
        }
        if failed && errors.is_empty() {
            run.failures.push(format!(
                "{what}: {} failed this request but gatescope has no error finding for it ({:?})",
                gw.name(),
                obs.kinds
            ));
        }
    }
    // Error findings that belong to no request we sent.
    let known: BTreeSet<&str> = run.observed.iter().map(|o| o.target.as_str()).collect();
    for f in &findings.all {
        if f.severity != "error" || f.leg_port_match {
            continue;
        }
        match &f.target {
            Some(t) if known.contains(t.as_str()) => {}
            _ => run.failures.push(format!(
                "error finding {} on no request of this run (target {:?}): {}",
                f.kind, f.target, f.message
            )),
        }
    }
    if !records.iter().any(|r| r["type"] == "summary") {
        run.failures
            .push("gatescope printed no summary record".to_string());
    }
}

/// The three requests that outwait the gateway's read timeout: gatescope's summary must name
/// a proxy timer of that length (2 s), as the gateway's configuration has it — behind nginx,
/// which closes the upstream connection when its timer fires. HAProxy answers its 504 at
/// the timeout too, but may close the server connection much later (15 s after the request
/// in one CI run, `Ta=2009` in its log): the wire then shows no 2 s timer, and gatescope
/// rightly names none; for HAProxy the result is a note.
fn check_timeouts(run: &mut Run, records: &[Value]) {
    let want_ms = GATEWAY_READ_TIMEOUT
        .trim_end_matches('s')
        .parse::<f64>()
        .unwrap_or(0.0)
        * 1000.0;
    let timeouts = records
        .iter()
        .find(|r| r["type"] == "summary")
        .map(|s| s["timeouts"].clone())
        .unwrap_or_default();
    let named = timeouts.as_array().and_then(|a| {
        a.iter().find(|t| {
            t["timer"] == "proxy_gave_up"
                && t["median_ms"]
                    .as_f64()
                    .is_some_and(|m| (m - want_ms).abs() <= want_ms * 0.05)
        })
    });
    if let Some(t) = named {
        run.notes.push(format!(
            "summary timeouts: {}",
            t["message"].as_str().unwrap_or("")
        ));
    } else if run.gateway == Gateway::Haproxy {
        run.notes.push(format!(
            "summary timeouts: no proxy timer of {want_ms} ms on the wire this run (HAProxy closed some server connections later than its 504): {timeouts}"
        ));
    } else {
        run.failures.push(format!(
            "the summary names no proxy timer of {want_ms} ms (the gateway's read timeout): timeouts {timeouts}"
        ));
    }
}

/// Did the client see the race? gatescope's `retries` against what the client got and
/// nginx's `$upstream_status` (one status per attempt): the POST race, where nginx retries
/// nothing (`proxy_next_upstream off`), must be `not_retried` and the client's answer the
/// gateway's error; the GET race on the retrying location must be `answered` 200 by a
/// later attempt, the client must have got that 200, and nginx must have logged two
/// attempts. A race that did not happen (the gateway saw the close in time) is a note.
/// Behind both gateways, the backend that fails once ([`RETRY_ONCE_TARGET`]) must be
/// `answered` 200 too.
fn check_retries(run: &mut Run, findings: &Findings, records: &[Value]) {
    let chains = records
        .iter()
        .find(|r| r["type"] == "summary")
        .and_then(|s| s["retries"]["chains"].as_array().cloned())
        .unwrap_or_default();
    // (target, the failure's kind, the fate it must have, whether the failure must be
    // on the wire — a race depends on the gateway's timing, the backend's fault does not)
    for (target, kind, want_fate, sure) in [
        (RACE_TARGET, "keepalive_race", "not_retried", false),
        (RETRY_RACE_TARGET, "keepalive_race", "answered", false),
        (
            RETRY_ONCE_TARGET,
            "closed_before_response",
            "answered",
            true,
        ),
    ] {
        let Some(obs) = run.observed.iter().find(|o| o.target == target) else {
            continue;
        };
        let race = records
            .iter()
            .find(|r| r["type"] == "finding" && r["kind"] == kind && r["target"] == target);
        let Some(race) = race else {
            let what = format!(
                "{target}: no {kind} on the wire this run (client got {}, gateway log {}; {} exchange(s))",
                obs.got.describe(),
                obs.gw_status,
                findings.exchanges_for(target)
            );
            if sure {
                run.failures.push(what);
            } else {
                run.notes.push(what);
            }
            continue;
        };
        // The chain of that finding, naming the request the gateway sent.
        let chain = chains.iter().find(|c| {
            c["conn"] == race["conn"]
                && c["exchange"] == race["exchange"]
                && c["method"] == obs.method
                && c["target"] == target
        });
        let fate = chain.map(|c| {
            (
                c["fate"].clone(),
                c["status"].clone(),
                c["attempts"].clone(),
            )
        });
        let what = format!(
            "{} {target}: client got {}, gateway log {}; gatescope's chain {fate:?}",
            obs.method,
            obs.got.describe(),
            obs.gw_status
        );
        let ok = match (want_fate, &fate) {
            ("not_retried", Some((f, _, _))) => {
                f == "not_retried" && obs.got.gateway_failed(obs.tsc.as_deref())
            }
            (_, Some((f, status, attempts))) => {
                f == "answered"
                    && *status == 200
                    && attempts.as_array().is_some_and(|a| a.len() == 1)
                    && matches!(obs.got, Got::Complete { status: 200, .. })
                    // nginx logs one upstream status per attempt; HAProxy its final one.
                    && (run.gateway == Gateway::Haproxy || obs.gw_status.contains(", "))
            }
            _ => false,
        };
        if ok {
            run.notes.push(format!("retries: {what}"));
        } else {
            run.failures
                .push(format!("retries: want {want_fate}: {what}"));
        }
    }
}

/// The connection the race's first request armed: the backend closes it after
/// [`RACE_IDLE_MS`] without a request (its log says "will close after 300 ms idle"), so its
/// connection record must say the server closed it while idle, that long after the response
/// (plus the backend's timer and scheduling slack; before its own timer it never closes).
fn check_idle_close(run: &mut Run, records: &[Value]) {
    let conn = records
        .iter()
        .find(|r| r["type"] == "exchange" && r["target"] == RACE_ARM_TARGET)
        .map(|r| r["conn"].clone());
    let record = conn.and_then(|id| {
        records
            .iter()
            .find(|r| r["type"] == "connection" && r["id"] == id)
    });
    let close = record.map(|r| {
        (
            r["idle_close"]["by"].as_str().unwrap_or("").to_string(),
            r["idle_close"]["idle_ms"].as_f64(),
        )
    });
    let want = RACE_IDLE_MS as f64;
    match close {
        Some((by, Some(ms))) if by == "server" && (want - 2.0..=want + 400.0).contains(&ms) => {
            run.notes.push(format!(
                "the armed connection: idle_close by the server after {ms:.1} ms (the backend's timer: {RACE_IDLE_MS} ms)"
            ))
        }
        other => run.failures.push(format!(
            "the armed connection's record should say the server closed it idle after ~{RACE_IDLE_MS} ms: {other:?} in {record:?}"
        )),
    }
}

/// What the race's second request must show: a `keepalive_race` when the gateway failed it; when
/// the gateway served it (it saw the close in time, or retried), no error on its last exchange.
fn race_expectation(obs: &Observed, findings: &Findings) -> (Vec<&'static str>, Vec<&'static str>) {
    if obs.target != RACE_TARGET && obs.target != RETRY_RACE_TARGET {
        return (Vec::new(), Vec::new());
    }
    let attempts = findings.exchanges_for(&obs.target);
    if obs.got.gateway_failed(obs.tsc.as_deref()) || attempts > 1 {
        (vec!["keepalive_race"], vec![])
    } else {
        (vec![], vec![])
    }
}

// ---------------------------------------------------------------------------------------------
// The keep-alive race

/// Arms a backend connection to idle-close, pauses the gateway (SIGSTOP), sends the next
/// request (it waits in the gateway's listen queue), lets the backend's FIN arrive, and resumes
/// the gateway (SIGCONT). If the gateway then reuses the connection whose close it has not
/// processed yet, the wire shows the real race: backend FIN, then the request, then the
/// backend's RST.
///
/// - nginx races every time, given `listen ... deferred`: the accepted connection is read in
///   the same event-loop pass, before the upstream connection's read event (the FIN), and the
///   keep-alive cache hands out the most recently released connection. 502, "upstream
///   prematurely closed connection while reading response header from upstream". POST, so
///   nginx would not retry it even with `proxy_next_upstream` on.
/// - HAProxy (2.6) handles the idle connection's FIN before the new stream picks a
///   connection, so it opens a new one and answers 200; when it was paused before it had
///   settled, it sometimes raced (502, `SH--`). The settle pause keeps the outcome stable.
///
/// Either way, [`race_expectation`] asserts what the wire shows.
fn run_keepalive_race(
    gw_port: u16,
    gateway: &GatewayProc,
    backend: &Backend,
    method: &'static str,
    target: &str,
) -> Vec<(String, &'static str, String, Got)> {
    let mut out = Vec::new();
    let arm = Req {
        method: "POST",
        target: RACE_ARM_TARGET.to_string(),
        body: Some(b"arm".to_vec()),
        expect_continue: false,
    };
    let armed = send_request(gw_port, &arm);
    out.push((
        format!("keepalive-race (arming request for {target})"),
        "POST",
        RACE_ARM_TARGET.to_string(),
        armed,
    ));
    let idle_closes_before = backend.log().matches("idle timeout").count();

    // Let the gateway settle (client close processed, backend connection back in the pool).
    // Pausing it mid-way makes HAProxy's outcome timing-dependent.
    thread::sleep(Duration::from_millis(100));
    let pids = gateway.event_loop_pids();
    let paused = Paused::new(&pids);
    let mut client = TcpStream::connect_timeout(&addr(gw_port), Duration::from_secs(2));
    if let Ok(c) = &mut client {
        let head = match method {
            "POST" => format!(
                "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw_port}\r\nContent-Length: 4\r\nUser-Agent: gatescope-e2e\r\n\r\nrace"
            ),
            _ => format!(
                "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw_port}\r\nUser-Agent: gatescope-e2e\r\n\r\n"
            ),
        };
        let _ = c.write_all(head.as_bytes());
    }
    // Wait for the backend to log its idle close (bounded), then a little for the FIN to land.
    let deadline = Instant::now() + Duration::from_millis(RACE_IDLE_MS + 2000);
    while Instant::now() < deadline
        && backend.log().matches("idle timeout").count() <= idle_closes_before
    {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(50));
    drop(paused);
    let got = match client {
        Ok(mut c) => read_response(&mut c, method, Instant::now() + CLIENT_DEADLINE, None),
        Err(e) => Got::ConnectFailed(e.to_string()),
    };
    let name = if method == "POST" {
        "keepalive-race"
    } else {
        "keepalive-race (retried by the gateway)"
    };
    out.push((name.to_string(), method, target.to_string(), got));
    out
}

/// SIGSTOP on creation, SIGCONT on drop (also when a test panics in between).
struct Paused(Vec<i32>);

impl Paused {
    fn new(pids: &[i32]) -> Paused {
        for &p in pids {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        // SIGSTOP is asynchronous: wait (bounded) until every process shows state T.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !pids.iter().all(|p| proc_state(*p) == Some('T')) {
            thread::sleep(Duration::from_millis(1));
        }
        Paused(pids.to_vec())
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process stopped by PID when dropped: `stop_signal` first, SIGKILL after a grace
/// period. `extra` holds PIDs the child forked that must not outlive it (nginx workers).
struct Proc {
    name: String,
    child: Child,
    stop_signal: i32,
    extra: Vec<(i32, String)>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, stop_signal: i32) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stop_signal,
            extra: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `sig`, waits up to `grace`, then SIGKILLs (the child and `extra`).
    fn stop(&mut self, sig: i32, grace: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exited() {
            self.kill_extra();
            return Some(st);
        }
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.pid(), sig) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                self.kill_extra();
                return Some(st);
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "e2e_gateways: {} did not stop in {grace:?}; SIGKILL",
            self.name
        );
        let _ = self.child.kill();
        let st = self.child.wait().ok();
        self.kill_extra();
        st
    }

    /// Kills forked helpers that are still alive and still what we started (checked by name,
    /// so a recycled PID is left alone).
    fn kill_extra(&mut self) {
        for (pid, marker) in self.extra.drain(..) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                // SAFETY: a process forked by our child, identified above.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for (pid, _) in &self.extra {
            // SAFETY: as in kill_extra; a stopped process cannot handle the stop signal.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
        // SAFETY: our own child.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        self.stop(self.stop_signal, Duration::from_secs(3));
    }
}

/// Runs a command to completion within `limit`; true on exit status 0.
fn run_bounded(cmd: &mut Command, limit: Duration) -> bool {
    let Ok(child) = cmd.stdin(Stdio::null()).spawn() else {
        return false;
    };
    let mut p = Proc {
        name: "helper".into(),
        child,
        stop_signal: libc::SIGTERM,
        extra: Vec::new(),
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(st) = p.exited() {
            return st.success();
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"])
        .collect();
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Waits until `port` accepts a connection; fails early if `proc` died.
fn wait_connect(port: u16, proc: &Proc, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if TcpStream::connect_timeout(&addr(port), Duration::from_millis(200)).is_ok() {
            return;
        }
        // try_wait needs &mut; a dead child is seen through /proc instead.
        let state = fs::read_to_string(format!("/proc/{}/stat", proc.pid())).unwrap_or_default();
        let zombie = state.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'));
        assert!(
            !zombie && !state.is_empty(),
            "{} exited before it listened on {port}",
            proc.name
        );
        assert!(
            Instant::now() < deadline,
            "{} not listening on {port} after {limit:?}",
            proc.name
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a line from a child's pipe with a deadline (a thread does the blocking read).
fn lines_of<R: Read + Send + 'static>(r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// The backend

struct Backend {
    port: u16,
    log_path: PathBuf,
    _proc: Proc,
}

impl Backend {
    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn start_backend(dir: &Path) -> Backend {
    let log_path = dir.join("backend.log");
    let log = fs::File::create(&log_path).expect("backend.log");
    let mut proc = Proc::spawn(
        "gatescope-faulty-backend",
        Command::new(env!("CARGO_BIN_EXE_gatescope-faulty-backend"))
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log),
        libc::SIGTERM,
    );
    let rx = lines_of(proc.child.stdout.take().expect("stdout"));
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("backend did not print `listening on ADDR`");
    let port: u16 = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .unwrap_or_else(|| panic!("unexpected backend output: {line}"));
    wait_connect(port, &proc, Duration::from_secs(5));
    Backend {
        port,
        log_path,
        _proc: proc,
    }
}

/// A listener whose accept queue is full, so that the kernel drops further SYNs (no
/// iptables/nft needed): backlog 0 and connections that are never accepted.
struct Blackhole {
    port: u16,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    fn new() -> Option<Blackhole> {
        let listener = TcpListener::bind("127.0.0.1:0").ok()?;
        let port = listener.local_addr().ok()?.port();
        // listen() again only changes the backlog of a listening socket.
        // SAFETY: a valid listening socket.
        if unsafe { libc::listen(listener.as_raw_fd(), 0) } != 0 {
            return None;
        }
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match TcpStream::connect_timeout(&addr(port), Duration::from_millis(400)) {
                Ok(s) => fillers.push(s),
                // The SYN went unanswered: the queue is full.
                Err(_) => {
                    return Some(Blackhole {
                        port,
                        _listener: listener,
                        _fillers: fillers,
                    })
                }
            }
        }
        None
    }
}

/// A listener whose accept queue is full (as [`Blackhole`]) until [`SlowAccept::open_soon`]
/// frees it 0.5 s later: the gateway's first SYN is dropped, its retransmission (1 s later,
/// within the gateway's connect timeout) is answered, and a thread serves the request with a
/// small 200. The backend whose listen queue overflows for a moment.
struct SlowAccept {
    port: u16,
    go: Option<mpsc::Sender<()>>,
    server: Option<thread::JoinHandle<()>>,
}

impl SlowAccept {
    fn new() -> Option<SlowAccept> {
        let Blackhole {
            port,
            _listener: listener,
            _fillers: fillers,
        } = Blackhole::new()?;
        let (go, wait) = mpsc::channel::<()>();
        let server = thread::spawn(move || {
            let _fillers = fillers;
            if wait.recv().is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(500));
            // Every accept is bounded: the listener is non-blocking and polled until a
            // deadline, so a gateway that never retries cannot hang the test.
            let _ = listener.set_nonblocking(true);
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut queued = Vec::new();
            while Instant::now() < deadline {
                // The fillers' connections come out of the queue first; the gateway's is
                // the one that sends a request.
                match listener.accept() {
                    Ok((conn, _)) => queued.push(conn),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
                for conn in queued.iter_mut() {
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(5)));
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = conn.read(&mut buf) {
                        if n > 0 && buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            let _ = conn.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                            );
                            return;
                        }
                    }
                }
            }
        });
        Some(SlowAccept {
            port,
            go: Some(go),
            server: Some(server),
        })
    }

    /// Frees the accept queue 0.5 s from now.
    fn open_soon(&self) {
        if let Some(go) = &self.go {
            let _ = go.send(());
        }
    }
}

impl Drop for SlowAccept {
    fn drop(&mut self) {
        // Unblocks the thread if it never got the signal; otherwise it ends by itself
        // within its deadline.
        self.go.take();
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateways

struct GatewayProc {
    gw: Gateway,
    proc: Proc,
}

impl GatewayProc {
    /// The processes that run the event loop (nginx's worker, HAProxy itself).
    fn event_loop_pids(&self) -> Vec<i32> {
        match self.gw {
            Gateway::Nginx => self.proc.extra.iter().map(|(p, _)| *p).collect(),
            Gateway::Haproxy => vec![self.proc.pid()],
        }
    }
}

/// The ports the gateway routes to: the backend, and the connect-failure legs.
struct Upstreams {
    backend: u16,
    refused: u16,
    /// Where SYNs are dropped (without a blackhole, the refused port).
    unanswered: u16,
    /// Where only a retransmitted SYN is answered (without one, the refused port).
    slow: u16,
}

fn start_gateway(gw: Gateway, env: &Env, dir: &Path, port: u16, ups: &Upstreams) -> GatewayProc {
    let out = fs::File::create(dir.join(format!("{}.stdout", gw.name()))).expect("stdout file");
    let err = fs::File::create(dir.join(format!("{}.stderr", gw.name()))).expect("stderr file");
    match gw {
        Gateway::Nginx => {
            fs::create_dir_all(dir.join("tmp")).expect("tmp dir");
            let conf = nginx_conf(dir, port, ups);
            fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
            let mut proc = Proc::spawn(
                "nginx",
                Command::new(&env.nginx)
                    .arg("-p")
                    .arg(dir)
                    .args(["-c", "nginx.conf", "-g", "daemon off;"])
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err),
                // Graceful: lets the worker close its upstream keep-alive connections.
                libc::SIGQUIT,
            );
            wait_connect(port, &proc, Duration::from_secs(10));
            // The single worker, so that it is stopped with the master and can be paused.
            let deadline = Instant::now() + Duration::from_secs(5);
            while proc.extra.is_empty() && Instant::now() < deadline {
                proc.extra = children(proc.pid())
                    .into_iter()
                    .filter(|p| cmdline(*p).contains("nginx: worker"))
                    .map(|p| (p, "nginx: worker".to_string()))
                    .collect();
                thread::sleep(Duration::from_millis(20));
            }
            assert!(!proc.extra.is_empty(), "no nginx worker process found");
            GatewayProc { gw, proc }
        }
        Gateway::Haproxy => {
            let cfg = haproxy_cfg(port, ups);
            fs::write(dir.join("haproxy.cfg"), cfg).expect("haproxy.cfg");
            let proc = Proc::spawn(
                "haproxy",
                Command::new(&env.haproxy)
                    .arg("-f")
                    .arg(dir.join("haproxy.cfg"))
                    .arg("-db")
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err),
                // Hard stop: a soft stop (SIGUSR1) waits for idle server connections.
                libc::SIGTERM,
            );
            GatewayProc { gw, proc }
        }
    }
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// The state letter from /proc/PID/stat (R, S, T, Z, ...).
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

fn nginx_conf(dir: &Path, port: u16, ups: &Upstreams) -> String {
    let d = dir.display();
    let Upstreams {
        backend,
        refused,
        unanswered,
        slow,
    } = ups;
    format!(
        r#"# Rendered by tests/e2e_gateways.rs.
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format e2e '$status "$upstream_status" "$request" bytes=$body_bytes_sent upstream_bytes=$upstream_bytes_received urt=$upstream_response_time';
    access_log {d}/access.log e2e;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    upstream backend {{ server 127.0.0.1:{backend}; keepalive 8; }}
    upstream refused {{ server 127.0.0.1:{refused}; }}
    upstream unanswered {{ server 127.0.0.1:{unanswered}; }}
    upstream slowaccept {{ server 127.0.0.1:{slow}; }}
    # The same backend twice: nginx retries on the next entry.
    upstream retrying {{ server 127.0.0.1:{backend}; server 127.0.0.1:{backend}; }}

    server {{
        # deferred: the request is read in the accept pass (the keep-alive race case).
        listen 127.0.0.1:{port} deferred;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_read_timeout {GATEWAY_READ_TIMEOUT};
        proxy_connect_timeout {GATEWAY_CONNECT_TIMEOUT_MS}ms;
        # One backend attempt per request: the one-to-one match with the capture.
        proxy_next_upstream off;
        location / {{ proxy_pass http://backend; }}
        # nginx's defaults: a request that fails on a kept-alive connection goes out again.
        location = {RETRY_RACE_TARGET} {{ proxy_pass http://backend; proxy_next_upstream error timeout; }}
        location = {RETRY_ONCE_TARGET} {{ proxy_pass http://retrying; proxy_next_upstream error timeout; }}
        location /refused/ {{ proxy_pass http://refused; }}
        location /unanswered/ {{ proxy_pass http://unanswered; }}
        location /slowaccept/ {{ proxy_pass http://slowaccept; }}
    }}
}}
"#
    )
}

fn haproxy_cfg(port: u16, ups: &Upstreams) -> String {
    let Upstreams {
        backend,
        refused,
        unanswered,
        slow,
    } = ups;
    format!(
        r#"# Rendered by tests/e2e_gateways.rs.
global
    log stdout format raw local0 info
    nbthread 1

defaults
    mode http
    log global
    # The readiness probe connects and closes without a request.
    option dontlognull
    log-format "%ST %tsc %HM %HU B=%B Tc=%Tc Tr=%Tr Ta=%Ta"
    timeout connect {GATEWAY_CONNECT_TIMEOUT_MS}ms
    timeout client 10s
    timeout server {GATEWAY_READ_TIMEOUT}
    retries 0
    http-reuse always

frontend fe
    # As nginx's `deferred` (see run_keepalive_race).
    bind 127.0.0.1:{port} defer-accept
    use_backend refused if {{ path_beg /refused/ }}
    use_backend unanswered if {{ path_beg /unanswered/ }}
    use_backend slowaccept if {{ path_beg /slowaccept/ }}
    use_backend retrying if {{ path {RETRY_ONCE_TARGET} }}
    default_backend be

backend be
    server s1 127.0.0.1:{backend}

backend refused
    server s1 127.0.0.1:{refused}

backend unanswered
    server s1 127.0.0.1:{unanswered}

backend slowaccept
    server s1 127.0.0.1:{slow}

backend retrying
    retries 1
    retry-on empty-response
    server s1 127.0.0.1:{backend}
"#
    )
}

/// The gateways' logs, parsed per request.
struct GatewayLogs {
    gw: Gateway,
    access: Vec<String>,
    error: Vec<String>,
}

impl GatewayLogs {
    fn read(gw: Gateway, dir: &Path) -> GatewayLogs {
        let lines = |name: &str| -> Vec<String> {
            fs::read_to_string(dir.join(name))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        match gw {
            Gateway::Nginx => GatewayLogs {
                gw,
                access: lines("access.log"),
                error: lines("error.log"),
            },
            Gateway::Haproxy => GatewayLogs {
                gw,
                access: lines("haproxy.stdout"),
                error: lines("haproxy.stderr"),
            },
        }
    }

    /// (status summary, log lines, HAProxy termination state) for one request.
    fn for_request(&self, method: &str, target: &str) -> (String, Vec<String>, Option<String>) {
        match self.gw {
            Gateway::Nginx => {
                let req = format!("\"{method} {target} HTTP/1.1\"");
                let status = self
                    .access
                    .iter()
                    .find(|l| l.contains(&req))
                    .map(|l| {
                        // `200 "502, 200" "GET …`: one upstream status per attempt.
                        let st = l.split(' ').next().unwrap_or("?");
                        let up = l.split('"').nth(1).unwrap_or("");
                        format!("{st} (upstream {up})")
                    })
                    .unwrap_or_else(|| "no access-log line".to_string());
                let tag = format!("request: {req}");
                let log = self
                    .error
                    .iter()
                    .filter(|l| l.contains(&tag))
                    .map(|l| nginx_error_text(l))
                    .collect();
                (status, log, None)
            }
            Gateway::Haproxy => {
                let line = self.access.iter().find(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    f.len() > 3 && f[2] == method && f[3] == target
                });
                match line {
                    Some(l) => {
                        let f: Vec<&str> = l.split(' ').collect();
                        (f[0].to_string(), vec![l.clone()], Some(f[1].to_string()))
                    }
                    None => ("no log line".to_string(), Vec::new(), None),
                }
            }
        }
    }
}

/// `2026/01/01 00:00:00 [error] 12#12: *3 TEXT, client: ...` → `[error] TEXT`.
fn nginx_error_text(line: &str) -> String {
    let level_at = line.find(" [").map_or(0, |i| i + 1);
    let rest = &line[level_at..];
    let (level, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    // Skip "PID#TID: *CONN ".
    let mut text = rest;
    if let Some((_, after)) = text.split_once(": ") {
        text = after;
    }
    if text.starts_with('*') {
        text = text.split_once(' ').map_or(text, |(_, t)| t);
    }
    let text = text.split(", client: ").next().unwrap_or(text);
    format!("{level} {text}")
}

// ---------------------------------------------------------------------------------------------
// Capture and analysis

/// How the backend leg is captured. Switching to `gatescope live` once it exists is this one
/// function (or `GATESCOPE_E2E_CAPTURE=...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CaptureTool {
    /// `gatescope live -i lo ... --format json --write leg.pcap`; records from its stdout, then
    /// `gatescope analyze leg.pcap` must agree.
    GatescopeLive,
    /// `tcpdump -w leg.pcap`, then `gatescope analyze leg.pcap` (no live/offline comparison).
    Tcpdump,
    /// No capture, no gatescope: measure the gateways only.
    None,
}

fn capture_tool() -> CaptureTool {
    match std::env::var("GATESCOPE_E2E_CAPTURE").as_deref() {
        Ok("tcpdump") => CaptureTool::Tcpdump,
        // Measuring the gateways alone checks nothing of gatescope: not under CI.
        Ok("none") if !ci() => CaptureTool::None,
        _ => CaptureTool::GatescopeLive,
    }
}

struct Capture {
    tool: CaptureTool,
    proc: Proc,
    pcap: PathBuf,
    stdout: Option<thread::JoinHandle<Vec<String>>>,
    stderr: mpsc::Receiver<String>,
}

/// How long a capture may take to say it is capturing.
const CAPTURE_READY: Duration = Duration::from_secs(10);

fn start_capture(tool: CaptureTool, env: &Env, filter: &str, dir: &Path) -> Result<Capture, Skip> {
    let pcap = dir.join("leg.pcap");
    let (mut cmd, ready) = match tool {
        CaptureTool::GatescopeLive => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_gatescope"));
            c.args([
                "live", "-i", "lo", "-f", filter, "--format", "json", "--write",
            ])
            .arg(&pcap);
            (c, "capturing on lo")
        }
        CaptureTool::Tcpdump => {
            let mut c = Command::new(env.tcpdump.as_ref().expect("tcpdump"));
            c.args(["-i", "lo", "-n", "-U", "--immediate-mode", "-s", "0", "-w"])
                .arg(&pcap)
                .arg(filter);
            (c, "listening on lo")
        }
        CaptureTool::None => unreachable!(),
    };
    let mut proc = Proc::spawn(
        "capture",
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        libc::SIGINT,
    );
    let stdout = proc.child.stdout.take().expect("stdout");
    let stdout = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let stderr = lines_of(proc.child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + CAPTURE_READY;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stderr.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) if line.contains(ready) => break,
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
            Err(_) => {
                let status = proc.stop(libc::SIGINT, Duration::from_secs(2));
                let text = seen.join("\n");
                let env_problem = ["ermission", "not permitted", "socket:", "No such device"]
                    .iter()
                    .any(|m| text.contains(m));
                let msg = format!("capture did not start ({status:?}): {text}");
                if env_problem {
                    return Err(Skip(msg));
                }
                panic!("{msg}");
            }
        }
    }
    // The line is printed once the capture handle is active; a little slack for the kernel.
    thread::sleep(Duration::from_millis(100));
    Ok(Capture {
        tool,
        proc,
        pcap,
        stdout: Some(stdout),
        stderr,
    })
}

impl Capture {
    /// SIGINT, collect what was printed, and (tcpdump) analyse the file. Returns gatescope's
    /// records.
    fn stop(mut self) -> Result<Vec<Value>, Skip> {
        let status = self.proc.stop(libc::SIGINT, Duration::from_secs(15));
        let lines = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let errs: Vec<String> = self.stderr.try_iter().collect();
        match self.tool {
            CaptureTool::GatescopeLive => {
                let code = status.and_then(|s| s.code());
                assert!(
                    matches!(code, Some(0) | Some(1)),
                    "gatescope live exited with {status:?}; stderr:\n{}",
                    errs.join("\n")
                );
                Ok(parse_jsonl(&lines, "gatescope live"))
            }
            CaptureTool::Tcpdump => Ok(analyze(&self.pcap)),
            CaptureTool::None => unreachable!(),
        }
    }
}

/// `gatescope analyze PCAP --format json`: exit 0 or 1, JSON Lines on stdout.
fn analyze(pcap: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_gatescope"))
        .arg("analyze")
        .arg(pcap)
        .args(["--format", "json"])
        .stdin(Stdio::null())
        .output()
        .expect("run gatescope analyze");
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "gatescope analyze {} failed ({}):\n{}",
        pcap.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    parse_jsonl(&lines, "gatescope analyze")
}

fn parse_jsonl(lines: &[String], what: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("{what} printed a line that is not JSON ({e}): {l}"))
        })
        .collect()
}

/// One gatescope finding, reduced to what the test matches on.
struct Finding {
    kind: String,
    severity: String,
    target: Option<String>,
    server_port: u16,
    message: String,
    /// Set when the finding is matched to a connect-failure leg by port.
    leg_port_match: bool,
}

struct Findings {
    all: Vec<Finding>,
    /// Exchange records: target → count.
    exchanges: BTreeMap<String, usize>,
}

impl Findings {
    fn from_records(records: &[Value]) -> Findings {
        // (conn, index) → target, for findings that name the exchange but not the target.
        let mut targets: BTreeMap<(u64, u64), String> = BTreeMap::new();
        let mut exchanges = BTreeMap::new();
        for r in records.iter().filter(|r| r["type"] == "exchange") {
            if let (Some(c), Some(i), Some(t)) = (
                r["conn"].as_u64(),
                r["index"].as_u64(),
                r["target"].as_str(),
            ) {
                targets.insert((c, i), t.to_string());
                *exchanges.entry(t.to_string()).or_insert(0) += 1;
            }
        }
        let all = records
            .iter()
            .filter(|r| r["type"] == "finding")
            .map(|r| {
                let target = r["target"].as_str().map(str::to_string).or_else(|| {
                    let key = (r["conn"].as_u64()?, r["exchange"].as_u64()?);
                    targets.get(&key).cloned()
                });
                let server_port = r["server"]
                    .as_str()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .map_or(0, |a| a.port());
                Finding {
                    kind: r["kind"].as_str().unwrap_or("?").to_string(),
                    severity: r["severity"].as_str().unwrap_or("?").to_string(),
                    target,
                    server_port,
                    message: r["message"].as_str().unwrap_or("").to_string(),
                    leg_port_match: false,
                }
            })
            .collect();
        let mut f = Findings { all, exchanges };
        f.mark_port_legs();
        f
    }

    /// Findings without a target on a server port other than the backend's belong to a
    /// connect-failure leg; they are matched by port.
    fn mark_port_legs(&mut self) {
        let backend_ports: BTreeSet<u16> = self
            .all
            .iter()
            .filter(|f| f.target.is_some())
            .map(|f| f.server_port)
            .collect();
        for f in &mut self.all {
            if f.target.is_none() && !backend_ports.contains(&f.server_port) {
                f.leg_port_match = true;
            }
        }
    }

    fn for_request(&self, leg: Leg, target: &str, port: u16) -> Vec<&Finding> {
        self.all
            .iter()
            .filter(|f| match leg {
                Leg::Backend => f.target.as_deref() == Some(target),
                Leg::Refused | Leg::Unanswered => f.server_port == port && f.target.is_none(),
                Leg::SlowAccept => f.server_port == port,
            })
            .collect()
    }

    fn exchanges_for(&self, target: &str) -> usize {
        self.exchanges.get(target).copied().unwrap_or(0)
    }

    /// (kind, target-or-port) for the live/offline comparison.
    fn kind_keys(&self) -> BTreeSet<(String, String)> {
        self.all
            .iter()
            .map(|f| {
                let at = f
                    .target
                    .clone()
                    .unwrap_or_else(|| format!("port {}", f.server_port));
                (f.kind.clone(), at)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The client

struct Req {
    method: &'static str,
    target: String,
    body: Option<Vec<u8>>,
    expect_continue: bool,
}

/// What the client got from the gateway.
#[derive(Clone, Debug)]
enum Got {
    Complete {
        status: u16,
        body: u64,
    },
    /// The head arrived, the body did not (all of it).
    Truncated {
        status: u16,
        got: u64,
        expected: Option<u64>,
    },
    /// The head started and never ended.
    PartialHead {
        bytes: u64,
    },
    /// Connection closed (or reset) before any byte.
    Closed {
        reset: bool,
    },
    /// Bytes that are not an HTTP/1.x response (an HTTP/0.9 passthrough).
    NotHttp {
        bytes: u64,
        first_line: String,
    },
    Timeout {
        bytes: u64,
    },
    ConnectFailed(String),
}

impl Got {
    /// Did the gateway fail this request? `tsc`: HAProxy's termination state, when known (a
    /// 503 is the gateway's own when the state is not `--`).
    fn gateway_failed(&self, tsc: Option<&str>) -> bool {
        match self {
            Got::Complete { status, .. } => {
                matches!(status, 502 | 504)
                    || (*status == 503 && tsc.is_some_and(|t| !t.starts_with('-')))
            }
            _ => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Got::Complete { status, body } => format!("{status} ({body} body bytes)"),
            Got::Truncated {
                status,
                got,
                expected,
            } => match expected {
                Some(n) => format!("{status}, truncated: {got} of {n} body bytes"),
                None => format!("{status}, truncated chunked body after {got} bytes"),
            },
            Got::PartialHead { bytes } => format!("closed mid-head after {bytes} bytes"),
            Got::Closed { reset: true } => "connection reset, no response".into(),
            Got::Closed { reset: false } => "connection closed, no response".into(),
            Got::NotHttp { bytes, first_line } => {
                format!("{bytes} bytes without a status line ({first_line:?})")
            }
            Got::Timeout { bytes } => {
                format!("no complete response in {CLIENT_DEADLINE:?} ({bytes} bytes)")
            }
            Got::ConnectFailed(e) => format!("connect failed: {e}"),
        }
    }
}

fn send_request(port: u16, req: &Req) -> Got {
    let mut s = match TcpStream::connect_timeout(&addr(port), Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return Got::ConnectFailed(e.to_string()),
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: gatescope-e2e\r\n",
        req.method, req.target
    );
    if let Some(b) = &req.body {
        let _ = write!(head, "Content-Length: {}\r\n", b.len());
        if req.expect_continue {
            head.push_str("Expect: 100-continue\r\n");
        }
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    let mut pending_body = None;
    match (&req.body, req.expect_continue) {
        (Some(b), false) => bytes.extend_from_slice(b),
        (Some(b), true) => pending_body = Some(b.clone()),
        _ => {}
    }
    if s.write_all(&bytes).is_err() {
        // The gateway answered and closed before taking the whole body: what it answered
        // may still be readable.
        return read_response(&mut s, req.method, Instant::now() + CLIENT_DEADLINE, None);
    }
    read_response(
        &mut s,
        req.method,
        Instant::now() + CLIENT_DEADLINE,
        pending_body,
    )
}

/// Reads one final response. `pending_body` is sent on `100 Continue` (or after 1 s without one,
/// as curl does).
fn read_response(
    s: &mut TcpStream,
    method: &str,
    deadline: Instant,
    mut pending_body: Option<Vec<u8>>,
) -> Got {
    let mut r = Reader {
        s,
        buf: Vec::new(),
        total: 0,
        deadline,
        reset: false,
    };
    let continue_by = Instant::now() + Duration::from_secs(1);
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = find(&r.buf, b"\r\n\r\n") {
                break i;
            }
            if r.buf.len() >= 5 && !r.buf.starts_with(b"HTTP/") {
                return r.not_http();
            }
            let limit = if pending_body.is_some() {
                continue_by.min(deadline)
            } else {
                deadline
            };
            match r.fill(limit) {
                Fill::Data => {}
                Fill::Timeout if pending_body.is_some() && Instant::now() < deadline => {
                    let b = pending_body.take().unwrap_or_default();
                    let _ = r.s.write_all(&b);
                }
                Fill::Timeout => return Got::Timeout { bytes: r.total },
                Fill::Eof if r.total == 0 => return Got::Closed { reset: r.reset },
                Fill::Eof if r.buf.starts_with(b"HTTP/") || r.buf.is_empty() => {
                    return Got::PartialHead { bytes: r.total }
                }
                Fill::Eof => return r.not_http(),
            }
        };
        let head = String::from_utf8_lossy(&r.buf[..head_end]).into_owned();
        r.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let Some(status) = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
        else {
            return Got::NotHttp {
                bytes: r.total,
                first_line: status_line.to_string(),
            };
        };
        if (100..200).contains(&status) {
            if status == 100 {
                if let Some(b) = pending_body.take() {
                    let _ = r.s.write_all(&b);
                }
            }
            continue;
        }
        let mut length = None;
        let mut chunked = false;
        for l in lines {
            if let Some((n, v)) = l.split_once(':') {
                let v = v.trim();
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.parse::<u64>().ok();
                } else if n.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        if method == "HEAD" || status == 204 || status == 304 {
            return Got::Complete { status, body: 0 };
        }
        return if chunked {
            r.chunked_body(status)
        } else if let Some(n) = length {
            r.sized_body(status, n)
        } else {
            r.body_until_close(status)
        };
    }
}

enum Fill {
    Data,
    Eof,
    Timeout,
}

struct Reader<'a> {
    s: &'a mut TcpStream,
    buf: Vec<u8>,
    total: u64,
    deadline: Instant,
    reset: bool,
}

impl Reader<'_> {
    fn fill(&mut self, until: Instant) -> Fill {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Fill::Timeout;
        }
        let _ = self.s.set_read_timeout(Some(left));
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.total += n as u64;
                Fill::Data
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Fill::Timeout
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Fill::Data,
            Err(_) => {
                self.reset = true;
                Fill::Eof
            }
        }
    }

    fn not_http(mut self) -> Got {
        let first_line = String::from_utf8_lossy(&self.buf[..self.buf.len().min(60)])
            .split(['\r', '\n'])
            .next()
            .unwrap_or("")
            .to_string();
        while let Fill::Data = self.fill(self.deadline) {}
        Got::NotHttp {
            bytes: self.total,
            first_line,
        }
    }

    fn sized_body(mut self, status: u16, n: u64) -> Got {
        while (self.buf.len() as u64) < n {
            match self.fill(self.deadline) {
                Fill::Data => {}
                Fill::Eof => {
                    return Got::Truncated {
                        status,
                        got: self.buf.len() as u64,
                        expected: Some(n),
                    }
                }
                Fill::Timeout => return Got::Timeout { bytes: self.total },
            }
        }
        Got::Complete { status, body: n }
    }

    fn body_until_close(mut self, status: u16) -> Got {
        loop {
            match self.fill(self.deadline) {
                Fill::Data => {}
                Fill::Eof if self.reset => {
                    return Got::Truncated {
                        status,
                        got: self.buf.len() as u64,
                        expected: None,
                    }
                }
                Fill::Eof => {
                    return Got::Complete {
                        status,
                        body: self.buf.len() as u64,
                    }
                }
                Fill::Timeout => return Got::Timeout { bytes: self.total },
            }
        }
    }

    fn chunked_body(mut self, status: u16) -> Got {
        let mut body = 0u64;
        let truncated = |body| Got::Truncated {
            status,
            got: body,
            expected: None,
        };
        loop {
            let Some(line) = self.line() else {
                return truncated(body);
            };
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16);
            let Ok(size) = size else {
                return truncated(body);
            };
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    match self.line() {
                        Some(l) if l.is_empty() => return Got::Complete { status, body },
                        Some(_) => {}
                        None => return truncated(body),
                    }
                }
            }
            while (self.buf.len() as u64) < size + 2 {
                if !matches!(self.fill(self.deadline), Fill::Data) {
                    return truncated(body + self.buf.len() as u64);
                }
            }
            self.buf.drain(..(size + 2) as usize);
            body += size;
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(l);
            }
            if !matches!(self.fill(self.deadline), Fill::Data) {
                return None;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The report

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map_or_else(|| tmp.to_path_buf(), Path::to_path_buf)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The README table: one row per request, both gateways side by side.
fn markdown<'a>(runs: &'a [Run], tool: CaptureTool) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "<!-- generated by tests/e2e_gateways.rs (capture: {tool:?}); nginx proxy_read_timeout {GATEWAY_READ_TIMEOUT}, proxy_next_upstream off (error timeout for {RETRY_RACE_TARGET} and {RETRY_ONCE_TARGET}), keepalive 8; HAProxy timeout server {GATEWAY_READ_TIMEOUT}, retries 0 (1, retry-on empty-response, for {RETRY_ONCE_TARGET}), http-reuse always -->\n"
    );
    md.push_str("| fault | nginx: status · error log | HAProxy: status · termination state | gatescope finding(s) |\n");
    md.push_str("|---|---|---|---|\n");
    let nginx = runs.iter().find(|r| r.gateway == Gateway::Nginx);
    let haproxy = runs.iter().find(|r| r.gateway == Gateway::Haproxy);
    let mut names: Vec<(String, String)> = Vec::new();
    for r in runs {
        for o in &r.observed {
            let key = (o.name.clone(), o.target.clone());
            if !names.contains(&key) {
                names.push(key);
            }
        }
    }
    for (name, target) in names {
        let find = |run: Option<&'a Run>| -> Option<&'a Observed> {
            run.and_then(|r| {
                r.observed
                    .iter()
                    .find(|o| o.name == name && o.target == target)
            })
        };
        let (n, h) = (find(nginx), find(haproxy));
        let nginx_cell = n.map_or("(not run)".to_string(), |o| {
            let client = client_summary(&o.got);
            let log = o
                .gw_log
                .iter()
                .find(|l| l.starts_with("[error]") || l.starts_with("[crit]"))
                .or_else(|| o.gw_log.iter().find(|l| l.starts_with("[warn]")))
                .or_else(|| o.gw_log.first())
                .map_or("(no error-log line)".to_string(), |l| format!("`{l}`"));
            format!("{client}; access log {} · {log}", o.gw_status)
        });
        let haproxy_cell = h.map_or("(not run)".to_string(), |o| {
            let client = client_summary(&o.got);
            match &o.tsc {
                Some(t) => format!("{client} · `{t}` (log status {})", o.gw_status),
                None => format!("{client} · no log line"),
            }
        });
        let kinds = |o: Option<&Observed>| {
            o.map(|o| {
                if o.kinds.is_empty() {
                    "—".to_string()
                } else {
                    o.kinds
                        .iter()
                        .map(|(k, s)| format!("`{k}` ({s})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            })
        };
        let gs = if tool == CaptureTool::None {
            "(not run)".to_string()
        } else {
            match (kinds(n), kinds(h)) {
                (Some(a), Some(b)) if a == b => a,
                (Some(a), Some(b)) => format!("nginx leg: {a}; HAProxy leg: {b}"),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => String::new(),
            }
        };
        let _ = writeln!(
            md,
            "| {} `{}` | {} | {} | {} |",
            cell(&name),
            cell(&target),
            cell(&nginx_cell),
            cell(&haproxy_cell),
            cell(&gs)
        );
    }
    for r in runs {
        for n in &r.notes {
            let _ = writeln!(md, "\nNote ({}): {n}", r.gateway.name());
        }
    }
    md
}

fn client_summary(got: &Got) -> String {
    match got {
        Got::Complete { status, .. } => format!("**{status}**"),
        Got::Truncated { status, .. } => format!("**{status} truncated** ({})", got.describe()),
        other => format!("**{}**", other.describe()),
    }
}

#[test]
fn nginx_error_text_strips_prefix_and_context() {
    let l = r#"2026/01/02 03:04:05 [error] 12#12: *7 upstream prematurely closed connection while reading upstream, client: 127.0.0.1, server: , request: "GET /x HTTP/1.1", upstream: "http://127.0.0.1:1/x", host: "h""#;
    assert_eq!(
        nginx_error_text(l),
        "[error] upstream prematurely closed connection while reading upstream"
    );
}
